"""Start-up benchmark: how much `esj-provision --help` and `emit` cost over `import typer`.

Measures, interleaved in one run, the median wall time of fresh processes:
``python -c pass`` (interpreter floor), ``python -c "import typer"`` (framework floor),
``esj-provision --help`` and a sample ``esj-provision emit``. Then checks, with
``python -X importtime``, that neither `--help` nor `emit` imports a heavy package (httpx, azure,
msal, msgraph, aiohttp): those belong inside the commands that talk to Microsoft.

Writes benchmarks/results/startup.md; exits 1 if a heavy package is imported.
Usage: python benchmarks/bench_startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import clean_env, interleaved, machine, median_ms, today, write_section

HEAVY = ("httpx", "azure", "msal", "msgraph", "aiohttp")
EMIT_ARGS = [
    "emit", "support@contoso.com", "--trustee", "svc-genesys@contoso.com",
    "--inbound", "graph", "--outbound", "graph", "--auto-response",
]


def import_profile(args: Sequence[str], env: dict[str, str]) -> tuple[list[str], list[tuple[str, float]]]:
    """For `python -X importtime -m esj_provision ARGS`: the HEAVY packages it imports, and the
    five costliest top-level imports (module, cumulative ms) to show where the time goes."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "esj_provision", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"esj-provision {' '.join(args)} failed:\n{proc.stderr}")
    found: set[str] = set()
    costs: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or line.endswith("imported package"):
            continue
        _, cumulative, name = line.split("|", 2)
        module = name.strip()
        if module.split(".")[0] in HEAVY:
            found.add(module.split(".")[0])
        if name.startswith(" ") and not name.startswith("  "):  # imported directly, not nested
            costs.append((module, int(cumulative) / 1000))
    costs.sort(key=lambda item: -item[1])
    return sorted(found), costs[:5]


def _fmt(costs: list[tuple[str, float]]) -> str:
    return ", ".join(f"`{module}` {ms:.0f}" for module, ms in costs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per command (default 15)")
    opts = parser.parse_args()

    py = sys.executable
    cli = str(Path(py).parent / "esj-provision")
    commands = {
        "python -c pass": [py, "-c", "pass"],
        'python -c "import typer"': [py, "-c", "import typer"],
        "esj-provision --help": [cli, "--help"],
        "esj-provision emit … (graph/graph, cfg)": [cli, *EMIT_ARGS],
    }
    with tempfile.TemporaryDirectory(prefix="esj-bench-pycache-") as pycache:
        env = clean_env(pycache)
        samples = interleaved(commands, opts.repeat, env)
        heavy_help, top_help = import_profile(["--help"], env)
        heavy_emit, top_emit = import_profile(EMIT_ARGS, env)
    med = {name: median_ms(values) for name, values in samples.items()}
    typer_ms = med['python -c "import typer"']
    base_ms = med["python -c pass"]

    rows = "\n".join(
        f"| `{name}` | {med[name]:.1f} | {min(samples[name]) * 1000:.1f} | {max(samples[name]) * 1000:.1f} "
        f"| {med[name] / typer_ms:.2f}× | {med[name] - base_ms:+.1f} |"
        for name in commands
    )
    help_ratio = med["esj-provision --help"] / typer_ms
    emit_ratio = med["esj-provision emit … (graph/graph, cfg)"] / typer_ms
    heavy_line = ", ".join(f"`{m}`" for m in HEAVY)
    found = sorted(set(heavy_help) | set(heavy_emit))
    section = f"""## Start-up

Median wall time of a fresh process; {opts.repeat} runs per command, interleaved (round-robin,
rotating order) after 2 warm-up rounds, with bytecode caching on (as for an installed CLI).
Measured {today()} on {machine()}.

| Command | Median (ms) | Min (ms) | Max (ms) | × `import typer` | vs `python -c pass` (ms) |
|---|---:|---:|---:|---:|---:|
{rows}

- **`--help` / `import typer` = {help_ratio:.2f}×**, **`emit` / `import typer` = {emit_ratio:.2f}×**.
- Heavy packages ({heavy_line}) imported by `--help`: {", ".join(heavy_help) or "none"};
  by `emit`: {", ".join(heavy_emit) or "none"} (checked with `python -X importtime`).
- Costliest top-level imports (one `-X importtime` run, cumulative ms):
  `--help`: {_fmt(top_help)}; `emit`: {_fmt(top_emit)}.
- The sample `emit` is `esj-provision {" ".join(EMIT_ARGS)}`.

Reproduce: `scripts/bench startup` (this section only) or `scripts/bench` (every benchmark).
"""
    path = write_section("startup", section)
    print(section)
    print(f"wrote {path}", file=sys.stderr)
    if found:
        print(f"FAIL: heavy packages imported at start-up: {', '.join(found)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
