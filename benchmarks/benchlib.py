"""Helpers shared by the ``bench_*.py`` benchmarks (this file is not one: scripts/bench skips it).

Each benchmark writes one Markdown section to ``benchmarks/results/<name>.md``; scripts/bench
joins every section into BENCHMARKS.md, so benchmarks can be added or re-run one at a time.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line describing where the numbers come from."""
    try:
        cpus = len(os.sched_getaffinity(0))  # what `nproc` prints: the CPUs this process may use
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 0
    return (
        f"{platform.system()} {platform.machine()}, nproc={cpus}, "
        f"Python {platform.python_version()} ({Path(sys.executable).parent.parent.name}/)"
    )


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def clean_env(pycache_dir: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without anything that would change what the CLI does.

    Bytecode caching is forced on, into ``pycache_dir`` (outside the source tree): an installed
    CLI runs from .pyc files, and PYTHONDONTWRITEBYTECODE (set in some sandboxes and CI images)
    would otherwise make every run recompile the project's modules and skew the figures.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESJ_PROVISION_", "AZURE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({
        "NO_COLOR": "1",
        "COLUMNS": "80",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPYCACHEPREFIX": pycache_dir,
    })
    env.update(extra or {})
    return env


def time_once(cmd: Sequence[str], env: Mapping[str, str]) -> float:
    """Wall time in seconds of one fresh process, output discarded; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return elapsed


def interleaved(
    commands: Mapping[str, Sequence[str]], repeat: int, env: Mapping[str, str], warmup: int = 2
) -> dict[str, list[float]]:
    """Run every command ``repeat`` times, round-robin, rotating the order each round.

    Interleaving spreads machine noise (other jobs, CPU frequency) evenly over the commands, so
    their ratios stay meaningful even when absolute times drift during the run.
    """
    names = list(commands)
    for _ in range(warmup):  # fill the page cache and write .pyc files before measuring
        for name in names:
            time_once(commands[name], env)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            samples[name].append(time_once(commands[name], env))
    return samples


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def write_section(name: str, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
