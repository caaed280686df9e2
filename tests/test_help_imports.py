"""`esj-provision --help` loads the command-line layer only: the core's modules (option rules,
models, Microsoft clients, fleet, provisioning) are imported inside the commands that use them, so
every start-up does not pay for them (see BENCHMARKS.md, Start-up)."""

from __future__ import annotations

import os
import subprocess
import sys

# Run in a fresh interpreter: the test process itself may already hold any module.
CODE = """
import sys
from esj_provision.cli import app
try:
    app(["--help"])
except SystemExit as exc:
    assert not exc.code, exc.code
core = sorted(m for m in sys.modules if m.startswith("esj_provision.") and not m.startswith("esj_provision.cli"))
print(" ".join(core), file=sys.stderr)
"""


def test_help_imports_no_core_module_but_the_errors() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESJ_PROVISION_", "AZURE_"))}
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env)
    assert "Usage" in proc.stdout  # the help was printed
    # errors.py holds the exit statuses every command maps to; nothing else of the core is needed.
    assert proc.stderr.split() == ["esj_provision.errors"]
