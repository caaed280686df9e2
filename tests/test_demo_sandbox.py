"""scripts/demo leaves nothing running (defect 5): its sandbox start/stop logic, run for real.

The demo once backgrounded a shell function: `$!` was the subshell, and the cleanup killed that,
not the Python server. Each case below starts the sandbox through scripts/lib/sandbox.sh (what the
demo sources), ends the script in a different way, and checks that the server process is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "scripts" / "lib" / "sandbox.sh"

pytestmark = pytest.mark.e2e

ENDINGS = {
    "success": "true",
    "error under set -e": "false",
    "SIGINT (Ctrl-C)": "kill -INT $$; sleep 30",
    "SIGTERM": "kill -TERM $$; sleep 30",
}


def survivors(marker: Path) -> list[int]:
    """Live processes whose command line names ``marker`` (the test's own directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(") ", 1)[1][:1]
        except OSError:
            continue
        if str(marker) in cmdline and "sandbox" in cmdline and state != "Z":  # a zombie is dead
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_no_sandbox_survives_the_script(tmp_path: Path, ending: str) -> None:
    script = f"""
set -euo pipefail
esj_cmd=({sys.executable} -m esj_provision)
. {LIB}
sandbox_start {tmp_path}
{ENDINGS[ending]}
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_"))}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    left = survivors(tmp_path)
    deadline = time.monotonic() + 5  # sandbox_stop waits for it; this only covers process-table lag
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = survivors(tmp_path)
    for pid in left:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"the sandbox outlived the script ({ending}); stderr: {proc.stderr}"
    expected = {"success": 0, "error under set -e": 1, "SIGINT (Ctrl-C)": 130, "SIGTERM": 143}[ending]
    assert proc.returncode == expected, proc.stderr
    # It stopped cleanly (SIGTERM), not killed: it removes its env file on the way out.
    assert not (tmp_path / "sandbox.env").exists()


def test_the_demo_uses_the_library_and_no_backgrounded_function() -> None:
    demo = (ROOT / "scripts" / "demo").read_text()
    assert ". scripts/lib/sandbox.sh" in demo and "sandbox_start" in demo
    assert "esj sandbox" not in demo  # the shell function, backgrounded, was the defect
