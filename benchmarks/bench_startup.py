"""Start-up benchmark: how much `esj-provision --help` and `emit` cost over `import typer`.

Measures, interleaved in one run, the median wall time of fresh processes:
``python -c pass`` (interpreter floor), ``python -c "import typer"`` (framework floor),
``esj-provision --help`` and a sample ``esj-provision emit``. Then checks, with
``python -X importtime``, that neither `--help` nor `emit` imports a heavy package (httpx, azure,
msal, msgraph, aiohttp): those belong inside the commands that talk to Microsoft.

Then, side by side, the same `--help` and `emit` of the package at ``--baseline`` (default 535dc19,
before issue 11's redesign) and of this tree, both as ``python -m esj_provision`` by this interpreter
(benchlib's ``Side``): ``--pairs`` rounds of before, now, each round's ratio now ÷ before, and which
packages one side imports and the other does not (``-X importtime``, to find the cause of a change).

With ``--instructions`` (needs valgrind; about half a minute per run under callgrind) it also
counts the instructions each side executes, once per command: a count that the machine's load
does not change, where the times above only approach the truth as rounds add up.

Writes benchmarks/results/startup.md; exits 1 if a heavy package is imported.
Usage: python benchmarks/bench_startup.py [--repeat N] [--pairs N] [--baseline COMMIT | --no-baseline]
       [--instructions]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    DEFAULT_BASELINE,
    RATIO_HEADER,
    Side,
    alternate,
    clean_env,
    interleaved,
    load_line,
    machine,
    median_ms,
    ratio_row,
    sides,
    today,
    wall_and_cpu,
    write_section,
)

HEAVY = ("httpx", "azure", "msal", "msgraph", "aiohttp")
EMIT_ARGS = [
    "emit", "support@contoso.com", "--trustee", "svc-genesys@contoso.com",
    "--inbound", "graph", "--outbound", "graph", "--auto-response",
]


def import_lines(argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> list[str]:
    """The ``-X importtime`` report of one run of ``argv`` (a ``python -m esj_provision`` command)."""
    proc = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return [line for line in proc.stderr.splitlines()
            if line.startswith("import time:") and not line.endswith("imported package")]


def import_profile(args: Sequence[str], env: dict[str, str]) -> tuple[list[str], list[tuple[str, float]]]:
    """For `python -X importtime -m esj_provision ARGS`: the HEAVY packages it imports, and the
    five costliest top-level imports (module, cumulative ms) to show where the time goes."""
    found: set[str] = set()
    costs: list[tuple[str, float]] = []
    for line in import_lines([sys.executable, "-m", "esj_provision", *args], env):
        _, cumulative, name = line.split("|", 2)
        module = name.strip()
        if module.split(".")[0] in HEAVY:
            found.add(module.split(".")[0])
        if name.startswith(" ") and not name.startswith("  "):  # imported directly, not nested
            costs.append((module, int(cumulative) / 1000))
    costs.sort(key=lambda item: -item[1])
    return sorted(found), costs[:5]


def self_ms_by_package(lines: Sequence[str]) -> dict[str, tuple[float, int]]:
    """Import self time (ms) and module count per top-level package, from an importtime report."""
    out: dict[str, tuple[float, int]] = {}
    for line in lines:
        self_us, _, name = line.removeprefix("import time:").split("|", 2)
        top = name.strip().split(".")[0]
        ms, n = out.get(top, (0.0, 0))
        out[top] = (ms + int(self_us) / 1000, n + 1)
    return out


def import_diff(before: Sequence[str], now: Sequence[str]) -> str:
    """What one side imports and the other does not (top-level packages, with their self time), and
    the project's own modules' import time on each side: where a start-up change comes from."""
    b, n = self_ms_by_package(before), self_ms_by_package(now)

    def listing(mine: dict[str, tuple[float, int]], other: dict[str, tuple[float, int]]) -> str:
        extra = sorted(((ms, pkg, k) for pkg, (ms, k) in mine.items() if pkg not in other), reverse=True)
        return ", ".join(f"`{pkg}` {ms:.1f} ms ({k} modules)" for ms, pkg, k in extra) or "none"

    own_b, own_n = b.get("esj_provision", (0.0, 0)), n.get("esj_provision", (0.0, 0))
    return (
        f"only now: {listing(n, b)}; only before: {listing(b, n)}; `esj_provision`'s own modules "
        f"{own_b[0]:.1f} ms ({own_b[1]}) before, {own_n[0]:.1f} ms ({own_n[1]}) now"
    )


def _fmt(costs: list[tuple[str, float]]) -> str:
    return ", ".join(f"`{module}` {ms:.0f}" for module, ms in costs)


def instructions(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> int:
    """Instructions executed by one run of ``argv`` under valgrind's callgrind (hash seed fixed)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind on PATH")
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env={**env, "PYTHONHASHSEED": "0"}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        check=False,
    )
    found = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"valgrind {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def side_by_side(baseline: str, pairs: int, env: Mapping[str, str], scratch: str, count: bool) -> str:
    """`--help` and `emit` of the package at ``baseline`` and of this tree, alternated: the
    comparison's Markdown (a table of per-pair ratios and the import difference)."""
    before, now = sides(baseline)
    for side in (before, now):
        side.check(env, scratch)
    commands = {"`--help`": ["--help"], "`emit` (the sample above)": EMIT_ARGS}

    def run(side: Side) -> dict[str, tuple[float, float]]:
        return {name: wall_and_cpu(side.argv(*args), side.env(env), cwd=scratch) for name, args in commands.items()}

    print(f"  startup: {pairs} rounds of before ({baseline}) and now", file=sys.stderr)
    alternate(2, run, before, now)  # warm-up: .pyc files of both trees, page cache
    rounds = alternate(pairs, run, before, now)
    load = load_line()
    rows = "\n".join(
        ratio_row(f"{name}, {what}", [(b[name][i] * 1000, n[name][i] * 1000) for b, n in rounds], "ms")
        for name in commands
        for i, what in enumerate(("wall", "CPU"))
    )
    diffs = "\n".join(
        f"- {name}: "
        + import_diff(import_lines(before.argv(*args), before.env(env), scratch),
                      import_lines(now.argv(*args), now.env(env), scratch))
        + "."
        for name, args in commands.items()
    )
    counted = ""
    if count:
        print("  startup: counting instructions under valgrind", file=sys.stderr)
        lines = []
        for name, args in commands.items():
            b = instructions(before.argv(*args), before.env(env), scratch)
            n = instructions(now.argv(*args), now.env(env), scratch)
            lines.append(f"| {name} | {b / 1e6:,.1f} M | {n / 1e6:,.1f} M | **{n / b:.3f}** |")
        counted = (
            "\nInstructions executed, one run of each side under valgrind's callgrind (`PYTHONHASHSEED=0`): a\n"
            "count the machine's load does not change.\n\n"
            "| Command | Before | Now | Now ÷ before |\n|---|---:|---:|---:|\n" + "\n".join(lines) + "\n"
        )
    return f"""
### Before and after the redesign (issue 11)

*before* = the package at commit `{baseline}`, *now* = this tree; both run as
`python -m esj_provision ...` by the same interpreter and dependencies (`PYTHONPATH` selects the
package; the benchmark checks which one the child imported), from a scratch directory. {pairs} rounds,
each *before* then *now* for both commands, after 2 warm-up rounds; each round gives one ratio, so load
that drifts during the run weighs on both sides of it alike. *CPU* = the child's user + system time,
which waits less on a loaded machine than the wall time does. Measured at {load}: absolute times
are inflated by the load, the ratios are what to read. *Verdict*: a sign test over the rounds
(slower or faster only when the rounds lean one way, p < 0.05).

{RATIO_HEADER}
{rows}
{counted}
Imports, one `-X importtime` run of each side (top-level packages imported by one side only, with
their self time; the project's own modules on each side):

{diffs}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--pairs", type=int, default=20, help="before/now rounds (default 20)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help=f"the earlier commit to compare with (default {DEFAULT_BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="skip the before/now comparison")
    parser.add_argument("--instructions", action="store_true",
                        help="also count each side's instructions under valgrind (slow, load-proof)")
    opts = parser.parse_args()

    py = sys.executable
    cli = str(Path(py).parent / "esj-provision")
    commands = {
        "python -c pass": [py, "-c", "pass"],
        'python -c "import typer"': [py, "-c", "import typer"],
        "esj-provision --help": [cli, "--help"],
        "esj-provision emit … (graph/graph, cfg)": [cli, *EMIT_ARGS],
    }
    compared = ""
    with tempfile.TemporaryDirectory(prefix="esj-bench-pycache-") as pycache:
        env = clean_env(pycache)
        samples = interleaved(commands, opts.repeat, env)
        heavy_help, top_help = import_profile(["--help"], env)
        heavy_emit, top_emit = import_profile(EMIT_ARGS, env)
        if not opts.no_baseline:
            compared = side_by_side(opts.baseline, opts.pairs, env, pycache, opts.instructions)
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
Measured {today()} on {machine()}, {load_line()}.

| Command | Median (ms) | Min (ms) | Max (ms) | × `import typer` | vs `python -c pass` (ms) |
|---|---:|---:|---:|---:|---:|
{rows}

- **`--help` / `import typer` = {help_ratio:.2f}×**, **`emit` / `import typer` = {emit_ratio:.2f}×**.
- Heavy packages ({heavy_line}) imported by `--help`: {", ".join(heavy_help) or "none"};
  by `emit`: {", ".join(heavy_emit) or "none"} (checked with `python -X importtime`).
- Costliest top-level imports (one `-X importtime` run, cumulative ms):
  `--help`: {_fmt(top_help)}; `emit`: {_fmt(top_emit)}.
- The sample `emit` is `esj-provision {" ".join(EMIT_ARGS)}`.
{compared}
Reproduce: `scripts/bench startup` (this section only) or `scripts/bench` (every benchmark), or
`.venv/bin/python benchmarks/bench_startup.py --repeat {opts.repeat} --pairs {opts.pairs} --baseline {opts.baseline}{" --instructions" if opts.instructions else ""}`.
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
