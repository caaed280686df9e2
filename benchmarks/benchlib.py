"""Helpers shared by the ``bench_*.py`` benchmarks (this file is not one: scripts/bench skips it).

Each benchmark writes one Markdown section to ``benchmarks/results/<name>.md``; scripts/bench
joins every section into BENCHMARKS.md, so benchmarks can be added or re-run one at a time.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


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


def time_once(cmd: Sequence[str], env: Mapping[str, str], cwd: str | Path | None = None) -> float:
    """Wall time in seconds of one fresh process, output discarded; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return elapsed


def wall_and_cpu(cmd: Sequence[str], env: Mapping[str, str], cwd: str | Path | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one fresh process, output discarded; a failure stops
    the benchmark. CPU time comes from this process's children's rusage before and after, so it is
    that command's alone as long as no other child ends meanwhile (the benchmarks run one at a
    time). On a loaded machine the wall time waits for a CPU; the CPU time mostly does not."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


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


# -- against the sandbox tenant (bench_onboard, bench_bulk, bench_memory) -------------------------

TRUSTEE = "esj-svc@contoso.com"  # the sandbox's seeded service account


def cli_path() -> str:
    """The installed `esj-provision` next to this interpreter (the venv's console script)."""
    return str(Path(sys.executable).parent / "esj-provision")


# The benchmarks' tenant: every UPN is the primary address, as in most tenants. The earlier designs
# read a user with /users/{address}, which Graph answers only when the address is the UPN (and the
# sandbox, like Graph, since 2026-12); where it is not, this tree reads the user by primary address,
# one Graph round trip more, and the earlier designs fail.
BENCH_TENANT: dict[str, Any] = {"upn_domain": "contoso.com"}


def sandbox_env(pycache_dir: str, sandbox_env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """clean_env() pointed at a sandbox (its AZURE_* and ESJ_PROVISION_* variables) plus ``extra``."""
    return clean_env(pycache_dir, {**sandbox_env, **extra})


def write_manifest(path: Path, rows: int, *, trustee: str = TRUSTEE, inbound: str = "imap",
                   outbound: str = "smtp") -> Path:
    """A CSV manifest of the sandbox's generated shared mailboxes queue0001@contoso.com, ..."""
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("mailbox,trustee,inbound,outbound\n")
        for i in range(1, rows + 1):
            f.write(f"queue{i:04d}@contoso.com,{trustee},{inbound},{outbound}\n")
    return path


# Forks and execs the measured command from a small process, then reports that command's own
# rusage. Measured straight from the benchmark instead, ru_maxrss would count the parent's RSS:
# Linux charges a child the memory it shares with the parent until exec (fork, and vfork too).
_RUSAGE_WRAPPER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d %r %r" % (ru.ru_maxrss, ru.ru_utime, ru.ru_stime))
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class ChildUsage:
    maxrss_kib: int  # the command's peak resident set (Linux: KiB)
    cpu_s: float  # user + system


def run_child(
    cmd: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | Path | None = None,
    stdout: Any = subprocess.DEVNULL,
    usage: bool = False,
) -> tuple[float, ChildUsage | None, int, str]:
    """Run one process: (wall seconds, with ``usage`` its own peak RSS and CPU, exit status, stderr).

    With ``usage`` the command runs under a tiny wrapper (``python -S``, about 8 MiB) that forks it
    and reads its rusage with ``os.wait4``: peak RSS of that command alone, not the benchmark's.
    """
    report = None
    argv = list(cmd)
    if usage:
        fd, report = tempfile.mkstemp(prefix="esj-bench-rusage-")
        os.close(fd)
        argv = [sys.executable, "-S", "-c", _RUSAGE_WRAPPER, report, *argv]
    try:
        start = time.perf_counter()
        proc = subprocess.run(argv, env=dict(env), cwd=cwd, stdout=stdout, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        measured = None
        if report is not None:
            text = Path(report).read_text().split()
            if len(text) == 3:
                measured = ChildUsage(int(text[0]), float(text[1]) + float(text[2]))
    finally:
        if report is not None:
            os.unlink(report)
    return elapsed, measured, proc.returncode, proc.stderr.decode(errors="replace")


def call_start(call: Mapping[str, Any]) -> float:
    """A sandbox call's start (epoch seconds; ms resolution), taken before its added latency."""
    return _dt.datetime.fromisoformat(str(call["time"]).replace("Z", "+00:00")).timestamp()


def http_calls(calls: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The HTTP requests the sandbox served, without the per-item entries of Graph $batch requests
    (each item is logged too, but travels inside its $batch POST)."""
    return [c for c in calls if "batch" not in c]


def call_label(call: Mapping[str, Any]) -> str:
    if call["service"] == "entra":
        return "Entra token" if str(call["path"]).endswith("/token") else "Entra discovery"
    if call["service"] == "graph":
        return "Graph $batch" if str(call["path"]).rstrip("/").endswith("$batch") else f"Graph {call['method']}"
    return str(call.get("cmdlet") or call["path"])


def round_trips(calls: Sequence[Mapping[str, Any]], slack_ms: float = 2.0) -> list[list[Mapping[str, Any]]]:
    """The HTTP calls grouped into sequential round trips: calls whose [start, start + duration]
    intervals overlap went out together; a call that starts after every earlier one has ended had
    to wait for them. ``slack_ms`` absorbs the log's millisecond rounding of start times."""
    spans = sorted(
        ((call_start(c), call_start(c) + float(c.get("duration_ms") or 0.0) / 1000, c) for c in http_calls(calls)),
        key=lambda s: s[0],
    )
    groups: list[list[Mapping[str, Any]]] = []
    end = float("-inf")
    for start, stop, call in spans:
        if groups and start < end - slack_ms / 1000:
            groups[-1].append(call)
            end = max(end, stop)
        else:
            groups.append([call])
            end = stop
    return groups


def critical_path_ms(groups: Sequence[Sequence[Mapping[str, Any]]]) -> float:
    """Server time on the critical path: the longest call of each sequential round trip, summed."""
    return sum(max(float(c.get("duration_ms") or 0.0) for c in g) for g in groups)


def serial_ms(calls: Sequence[Mapping[str, Any]]) -> float:
    """The naive serial baseline: every HTTP call's server time, one after another."""
    return sum(float(c.get("duration_ms") or 0.0) for c in http_calls(calls))


# -- side by side: this tree against an earlier commit, in one run --------------------------------
#
# The earlier code is the package at that commit, exported with `git archive` and run by this same
# interpreter and dependencies with PYTHONPATH pointing at it; this tree runs the same way without
# PYTHONPATH. Both sides run as `python -m esj_provision` (the console script's entry point may move
# between commits) from a scratch directory: `-m` puts the working directory first on sys.path, so
# from the repository's root the child would import this tree whatever PYTHONPATH says. Runs
# alternate (before, now, before, now, ...) and each pair's ratio is taken, so the machine's load,
# which drifts over minutes, weighs on both sides of a ratio alike.

DEFAULT_BASELINE = "535dc19"  # the last commit before issue 11's redesign


def resolve_commit(commit: str) -> str:
    """The full hash of ``commit`` (a hash, tag or branch) in this repository; SystemExit if unknown."""
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"--baseline {commit}: no such commit in {ROOT}")
    return proc.stdout.strip()


def baseline_tree(commit: str, cache: Path | None = None) -> Path:
    """The package at ``commit``, exported once under ``cache`` (default .venv/) as
    bench-baseline-<hash>/ (git archive: no worktree, no checkout of ours). The directory holds
    ``esj_provision/``: put it on PYTHONPATH.

    Exported into a temporary directory and renamed into place, so an interrupted export never
    leaves a half tree that a later run would take for the whole package."""
    full = resolve_commit(commit)
    dest = (cache or ROOT / ".venv") / f"bench-baseline-{full[:12]}"
    if (dest / "esj_provision" / "__init__.py").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", full, "esj_provision"],
            check=True, capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        try:
            os.rename(tmp, dest)
        except OSError:  # another run exported it meanwhile: theirs is as good as ours
            if not (dest / "esj_provision" / "__init__.py").exists():
                raise SystemExit(f"{dest} holds an incomplete export; remove it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


@dataclass(frozen=True)
class Side:
    """One version of the package under test: ``label`` for tables, ``tree`` the directory put on
    PYTHONPATH (None: this tree, as installed in the venv)."""

    label: str
    tree: Path | None

    @property
    def package_dir(self) -> Path:
        return (self.tree or ROOT) / "esj_provision"

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with PYTHONPATH selecting this side's package (and nothing else)."""
        env = dict(base)
        env.pop("PYTHONPATH", None)
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "esj_provision", *args]

    def check(self, base: Mapping[str, str], cwd: str | Path) -> None:
        """Stop unless a child started like this side's commands imports this side's package."""
        where = subprocess.run(
            [sys.executable, "-c", "import esj_provision, os; print(os.path.dirname(esj_provision.__file__))"],
            env=self.env(base), cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
        if Path(where).resolve() != self.package_dir.resolve():
            raise SystemExit(f"{self.label}: the child imported {where}, not {self.package_dir}")


def sides(baseline: str) -> tuple[Side, Side]:
    """(before, now): the package at ``baseline`` and this tree."""
    return Side(f"before ({baseline})", baseline_tree(baseline)), Side("now", None)


def alternate(pairs: int, run: Callable[[Side], T], before: Side, now: Side) -> list[tuple[T, T]]:
    """``pairs`` rounds of ``run(before)`` then ``run(now)``: A B A B ..., results paired by round."""
    return [(run(before), run(now)) for _ in range(pairs)]


@dataclass(frozen=True)
class Ratios:
    """Per-pair ratios now ÷ before of one measurement (above 1: now takes more)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, float]]) -> Ratios:
        if not pairs or any(b <= 0 for b, _ in pairs):
            raise ValueError("ratios need at least one pair and a positive 'before' in each")
        return cls(tuple(n / b for b, n in pairs))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def sign_p(self) -> float:
        """Two-sided sign test: the chance of pairs this lopsided (ratios above 1 against below 1,
        ties dropped) if neither side were faster. Robust to the load's outliers, as it counts
        directions only; it needs 6 pairs or more to ever fall below 0.05."""
        above = sum(1 for v in self.values if v > 1.0)
        below = sum(1 for v in self.values if v < 1.0)
        n = above + below
        if n == 0:
            return 1.0
        tail: float = sum(math.comb(n, k) for k in range(min(above, below) + 1)) / 2**n
        return min(1.0, 2 * tail)

    def verdict(self, tolerance: float = 0.0) -> str:
        """'now slower'/'now faster' when the sign test says the pairs lean one way (p < 0.05) and
        the median moved by more than ``tolerance``; otherwise 'within noise', or, when every pair
        agrees but there are too few of them for the test, says so."""
        moved = abs(self.median - 1.0) > tolerance
        direction = "now slower" if self.median > 1.0 else "now faster"
        if moved and self.sign_p() < 0.05:
            return f"{direction} (sign test p = {self.sign_p():.3f})"
        if moved and (self.low > 1.0 or self.high < 1.0):
            n = len(self.values)
            return f"{direction.removeprefix('now ')} in {n} of {n} rounds: too few rounds for the sign test"
        return "within noise"


def ratio_row(name: str, pairs: Sequence[tuple[float, float]], unit: str, fmt: str = ".1f",
              tolerance: float = 0.0) -> str:
    """One row of a before/now table: medians of each side, then the per-pair ratios' median,
    min and max, and the verdict."""
    r = Ratios.of(pairs)
    before = statistics.median(b for b, _ in pairs)
    now = statistics.median(n for _, n in pairs)
    fastest = min(n for _, n in pairs) / min(b for b, _ in pairs)
    return (
        f"| {name} | {before:{fmt}} {unit} | {now:{fmt}} {unit} | **{r.median:.3f}** | {r.low:.3f} | {r.high:.3f} "
        f"| {fastest:.3f} | {len(pairs)} | {r.verdict(tolerance)} |"
    )


# "Fastest now ÷ fastest before": load only ever adds time, so each side's fastest run is the
# closest to its cost on an idle machine; a second reading beside the per-round ratios.
RATIO_HEADER = (
    "| Measurement | Before (median) | Now (median) | Now ÷ before, median of rounds | Lowest | Highest "
    "| Fastest now ÷ fastest before | Rounds | Verdict |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def load_line() -> str:
    """The load averages while measuring, with the CPU count to read them against."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # pragma: no cover - not available
        return "load average unknown"
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {len(os.sched_getaffinity(0))} CPUs"
