"""Onboarding benchmark: one `onboard` against the sandbox with realistic latency, against the
round trips it had to make one after another.

A sandbox tenant (in this process, on its own thread) adds a fixed latency to every request
(Entra ID, Graph, Exchange: default 75 ms). Each round onboards a fresh mailbox twice, first
(the grants: reads, two writes, read-back) and second (nothing to write), both in-process
(``provision.onboard.run`` on a fresh ``Session``, as ``onboard`` does, without interpreter start and
imports) and as the CLI subprocess end to end; the two paths are interleaved, rotating order.

From the sandbox's call log (every request with its start and server time) it derives, per run:
the HTTP calls by service, the *sequential round trips* (calls whose intervals overlap went out
together; one that starts after all earlier ones ended had to wait for them), the critical path
(the longest call of each round trip, summed: about round trips x latency) and the naive serial
baseline (every call's server time, one after another).

Then, side by side on the same sandbox, the CLI of the package at ``--baseline`` (default 535dc19,
before issue 11's redesign) and of this tree, both as ``python -m esj_provision`` (benchlib's
``Side``): ``--pairs`` rounds of before, now, each onboarding a fresh mailbox twice; per round the
ratio now ÷ before of the wall time, and both sides' calls, round trips and critical path.

Writes benchmarks/results/onboard.md; exits 1 if an onboarding fails or calls a write on the
second run. Usage: python benchmarks/bench_onboard.py [--repeat N] [--pairs N] [--latency-ms MS]
       [--baseline COMMIT | --no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BENCH_TENANT,
    DEFAULT_BASELINE,
    RATIO_HEADER,
    TRUSTEE,
    Side,
    alternate,
    call_label,
    cli_path,
    critical_path_ms,
    http_calls,
    load_line,
    machine,
    ratio_row,
    round_trips,
    sandbox_env,
    serial_ms,
    sides,
    today,
    wall_and_cpu,
    write_section,
)

WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}
INBOUND, OUTBOUND = "imap", "smtp"  # SMTP adds the SMTP AUTH check: the most calls of any pair
RUNS = ("first (grants)", "second (no writes)")
PATHS = ("in-process", "CLI")


class Sample:
    def __init__(self, wall_s: float, calls: list[dict[str, Any]], cpu_s: float = float("nan")) -> None:
        self.wall_ms = wall_s * 1000
        self.cpu_ms = cpu_s * 1000  # the CLI child's user + system time (not measured in-process)
        self.calls = calls
        self.http = http_calls(calls)
        self.groups = round_trips(calls)
        self.critical_ms = critical_path_ms(self.groups)
        self.serial_ms = serial_ms(calls)

    def count(self, service: str) -> int:
        return sum(1 for c in self.http if c["service"] == service)

    @property
    def batch_items(self) -> int:
        return sum(1 for c in self.calls if "batch" in c)

    @property
    def writes(self) -> int:
        return sum(1 for c in self.calls if c.get("cmdlet") in WRITES)

    def chain(self) -> str:
        """The round trips in order, e.g. ``Entra discovery → Entra token → Graph $batch → ...``."""
        parts = []
        for group in self.groups:
            labels = Counter(call_label(c) for c in group)
            parts.append(" + ".join(f"{n}× {lbl}" if n > 1 else lbl for lbl, n in labels.items()))
        return " → ".join(f"({i}) {p}" for i, p in enumerate(parts, 1))


def in_process(sb: Any, mailbox: str, journal: Path, scratch: Path) -> float:
    """One onboarding as `esj-provision onboard` does it, in this interpreter: settings, a fresh
    Session (so its own sign-in), the journal, provision.onboard.run. Wall seconds."""
    from esj_provision.config import load_settings
    from esj_provision.microsoft.session import Session
    from esj_provision.models import Inbound, Outbound, UserTrustee
    from esj_provision.provision.journal import Journal
    from esj_provision.provision.onboard import run
    from esj_provision.provision.request import OnboardRequest

    async def go() -> Any:
        settings = load_settings(environ=sb.env, dotenv_path=scratch / "no.env")
        request = OnboardRequest(mailbox, UserTrustee(TRUSTEE), Inbound(INBOUND), Outbound(OUTBOUND))
        async with Session(settings) as session:
            with Journal(journal, secrets=settings.secrets) as j:
                j.write("run-start", command="onboard", mailbox=mailbox, trustee=TRUSTEE)
                plan = await run(session, request, mode="onboard", dry_run=False, journal=j)
                j.write("run-end", command="onboard", mailbox=plan.mailbox_id, failed=plan.failed)
                return plan

    start = time.perf_counter()
    plan = asyncio.run(go())
    elapsed = time.perf_counter() - start
    if plan.failed or plan.refused:
        raise SystemExit(f"in-process onboarding of {mailbox} failed: {plan.to_dict()}")
    return elapsed


def onboard_args(mailbox: str) -> list[str]:
    return ["onboard", mailbox, "--trustee", TRUSTEE, "--inbound", INBOUND, "--outbound", OUTBOUND, "--format", "json"]


def cli(mailbox: str, env: Mapping[str, str], cwd: Path, side: Side | None = None) -> tuple[float, float]:
    """One onboarding by a CLI subprocess: the console script, or ``side``'s ``python -m``.
    Wall and CPU seconds."""
    if side is None:
        cmd, env = [cli_path(), *onboard_args(mailbox)], env
    else:
        cmd, env = side.argv(*onboard_args(mailbox)), side.env(env)
    return wall_and_cpu(cmd, env, cwd=cwd)


def compare_section(
    rounds: Sequence[tuple[dict[str, Sample], dict[str, Sample]]], baseline: str, lat_text: str, load: str
) -> str:
    """The before/now comparison's Markdown: per-round ratios of the wall time, then each side's
    calls, round trips and critical path (these come from the call log, so load does not move them)."""
    rows = "\n".join(
        [ratio_row(f"{run}, wall", [(b[run].wall_ms, n[run].wall_ms) for b, n in rounds], "ms", ".0f") for run in RUNS]
        + [ratio_row(f"{run}, CPU", [(b[run].cpu_ms, n[run].cpu_ms) for b, n in rounds], "ms", ".0f") for run in RUNS]
    )

    def shape(side: int, run: str) -> str:
        """HTTP calls, round trips and median critical path of one side's runs; 'varies' if they differ."""
        runs = [r[side][run] for r in rounds]
        calls = sorted({len(x.http) for x in runs})
        trips = sorted({len(x.groups) for x in runs})
        crit = statistics.median(x.critical_ms for x in runs)
        return (f"{'/'.join(map(str, calls))} | {'/'.join(map(str, trips))} | {crit:.0f}")

    def canonical(sample: Sample) -> str:
        """The chain of round trips with each trip's calls in a fixed order (they went out together)."""
        return " → ".join(
            f"({i}) " + " + ".join(sorted(call_label(c) for c in group)) for i, group in enumerate(sample.groups, 1)
        )

    def chains(run: str) -> str:
        same = all(Counter(call_label(c) for c in r[0][run].http) == Counter(call_label(c) for c in r[1][run].http)
                   for r in rounds)
        calls = "the same calls on both sides" if same else "DIFFERENT calls"
        # The run with the fewest round trips shows the client's design; load only splits trips.
        b, n = (canonical(min((r[i][run] for r in rounds), key=lambda x: len(x.groups))) for i in (0, 1))
        if b == n:
            return f"{calls}; fewest round trips, on both sides: {n}"
        return f"{calls}; fewest round trips, before: {b}; now: {n}"

    shapes = "\n".join(
        f"| {run} | {label} | {shape(i, run)} |" for run in RUNS for i, label in enumerate(("before", "now"))
    )
    notes = "\n".join(f"- {run}: {chains(run)}." for run in RUNS)
    return f"""
### Before and after the redesign (issue 11)

The CLI end to end against the same sandbox ({lat_text} per request): *before* = the package at commit
`{baseline}`, *now* = this tree, both as `python -m esj_provision onboard ...` by the same interpreter and
dependencies (`PYTHONPATH` selects the package; the benchmark checks which one the child imported).
{len(rounds)} rounds after a warm-up round, each *before* then *now*, each onboarding a fresh mailbox twice;
each round gives one ratio per run, so load that drifts during the run weighs on both sides alike.
*CPU* = the client process's user + system time (the sandbox runs in the benchmark's process, apart).
Measured at {load}: absolute times are inflated by the load, the ratios are what to read.
*Verdict*: a sign test over the rounds (slower or faster only when they lean one way, p < 0.05).

{RATIO_HEADER}
{rows}

| Run | Side | HTTP calls | Sequential round trips | Critical path (ms, median) |
|---|---|---:|---:|---:|
{shapes}

(*a/b*: the count varied between rounds; under load, calls that overlap on a quiet machine sometimes
do not, e.g. the second token request and the Graph $batch, which also lengthens the critical path.)

{notes}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="onboardings per path and run (default 5)")
    parser.add_argument("--latency-ms", default="75", help="sandbox latency per request: N or MIN-MAX (default 75)")
    parser.add_argument("--pairs", type=int, default=6, help="before/now rounds of the CLI (default 6)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help=f"the earlier commit to compare with (default {DEFAULT_BASELINE})")
    parser.add_argument("--no-baseline", action="store_true", help="skip the before/now comparison")
    opts = parser.parse_args()

    from esj_provision.sandbox import Sandbox

    latency = opts.latency_ms
    samples: dict[tuple[str, str], list[Sample]] = {(p, r): [] for p in PATHS for r in RUNS}
    next_box = iter(range(1, 10_000))
    pairs = 0 if opts.no_baseline else opts.pairs
    rounds: list[tuple[dict[str, Sample], dict[str, Sample]]] = []
    load = ""
    with tempfile.TemporaryDirectory(prefix="esj-bench-onboard-") as tmp, Sandbox(
        mailboxes=2 * (opts.repeat + 2) + 2 * (pairs + 1), latency_ms=latency, seed=7, **BENCH_TENANT
    ) as sb:
        scratch = Path(tmp)
        env = sandbox_env(str(scratch / "pycache"), sb.env, ESJ_PROVISION_JOURNAL=str(scratch / "journal.jsonl"))

        def onboard_twice(path: str, side: Side | None = None) -> dict[str, Sample]:
            """A fresh mailbox onboarded twice (RUNS) by ``path``: in-process, or the CLI (``side``'s)."""
            mailbox = f"queue{next(next_box):04d}@contoso.com"
            out = {}
            for run in RUNS:
                log = sb.calls()
                seq = log[-1]["seq"] if log else 0
                if path == "in-process":
                    wall, cpu = in_process(sb, mailbox, scratch / "journal.jsonl", scratch), float("nan")
                else:
                    wall, cpu = cli(mailbox, env, scratch, side)
                sample = Sample(wall, sb.calls(since=seq), cpu)
                if run == RUNS[1] and sample.writes:
                    raise SystemExit(f"the second onboarding of {mailbox} made {sample.writes} write call(s)")
                out[run] = sample
            return out

        def once(path: str, record: bool) -> None:
            for run, sample in onboard_twice(path).items():
                if record:
                    samples[(path, run)].append(sample)

        for path in PATHS:  # warm-up: imports, .pyc files, page cache
            once(path, record=False)
        for i in range(opts.repeat):
            order = PATHS[i % 2 :] + PATHS[: i % 2]
            for path in order:
                once(path, record=True)
        if pairs:
            before, now = sides(opts.baseline)
            for side in (before, now):
                side.check(env, scratch)
            print(f"  onboard: {pairs} rounds of before ({opts.baseline}) and now", file=sys.stderr)
            alternate(1, lambda side: onboard_twice("CLI", side), before, now)  # warm-up: both trees' .pyc files
            rounds = alternate(pairs, lambda side: onboard_twice("CLI", side), before, now)
            load = load_line()

    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    rows = []
    for run in RUNS:
        for path in PATHS:
            s = samples[(path, run)]
            wall = med([x.wall_ms for x in s])
            crit = med([x.critical_ms for x in s])
            serial = med([x.serial_ms for x in s])
            ref = s[0]
            rows.append(
                f"| {run} | {path} | {wall:.0f} | {min(x.wall_ms for x in s):.0f}–{max(x.wall_ms for x in s):.0f} "
                f"| {len(ref.http)} ({ref.count('entra')}/{ref.count('graph')}/{ref.count('exchange')}) "
                f"| {len(ref.groups)} | {crit:.0f} | {serial:.0f} | {wall / crit:.2f}× | {serial / wall:.2f}× |"
            )
    table = "\n".join(rows)

    # Calls per onboarding, by service (identical on both paths: checked below).
    def by_service(s: Sample) -> dict[str, str]:
        ex = Counter(str(c.get("cmdlet")) for c in s.http if c["service"] == "exchange")
        entra = Counter(call_label(c) for c in s.http if c["service"] == "entra")
        return {
            "Entra ID (token endpoint)": str(entra.get("Entra token", 0)),
            "Entra ID (metadata discovery)": str(entra.get("Entra discovery", 0)),
            "Graph HTTP requests ($batch)": str(s.count("graph")),
            "Graph batch items (users, mailbox purpose)": str(s.batch_items),
            "Exchange InvokeCommand": str(s.count("exchange")),
            **{f"  Exchange {k}": str(v) for k, v in sorted(ex.items())},
        }

    first, second = samples[("in-process", RUNS[0])][0], samples[("in-process", RUNS[1])][0]
    svc_first, svc_second = by_service(first), by_service(second)
    keys = list(dict.fromkeys([*svc_first, *svc_second]))
    svc_table = "\n".join(f"| {k} | {svc_first.get(k, '0')} | {svc_second.get(k, '0')} |" for k in keys)
    same_calls = all(
        Counter(call_label(c) for c in a.http) == Counter(call_label(c) for c in b.http)
        for run in RUNS
        for a in samples[("in-process", run)]
        for b in samples[("CLI", run)]
    )

    def median_wall(path: str, run: str) -> float:
        return med([x.wall_ms for x in samples[(path, run)]])

    ip1, ip2 = median_wall("in-process", RUNS[0]), median_wall("in-process", RUNS[1])
    cli1, cli2 = median_wall("CLI", RUNS[0]), median_wall("CLI", RUNS[1])
    crit1 = med([x.critical_ms for x in samples[("in-process", RUNS[0])]])
    crit2 = med([x.critical_ms for x in samples[("in-process", RUNS[1])]])
    ser1 = med([x.serial_ms for x in samples[("in-process", RUNS[0])]])
    ser2 = med([x.serial_ms for x in samples[("in-process", RUNS[1])]])
    lat_text = f"{latency} ms" if "-" not in str(latency) else f"{latency} ms (uniform)"

    section = f"""## Onboarding (one mailbox, {lat_text} per request)

Median wall time of one `esj-provision onboard MAILBOX --trustee {TRUSTEE} --inbound {INBOUND}
--outbound {OUTBOUND}` against the sandbox tenant, which adds {lat_text} to every request (Entra ID,
Graph, Exchange). {opts.repeat} onboardings per path, each of a fresh mailbox and run twice: *first*
grants Full Access and Send As (reads, writes, read-back), *second* finds both in place and writes
nothing. *in-process*: `provision.onboard.run` on a fresh `Session` (its own sign-in) in a warm interpreter;
*CLI*: the console script as a subprocess, end to end. Paths interleaved after a warm-up round.
Measured {today()} on {machine()}, {load_line()}.

Round trips and server times come from the sandbox's call log: calls whose intervals overlap went out
together; a call that starts after every earlier one ended had to wait for them. *Critical path* =
the longest call of each round trip, summed (≈ round trips × latency): no client can beat it without
removing a round trip. *Serial* = every call's server time one after another (a client that never
overlaps two calls, like a PowerShell script).

| Run | Path | Median (ms) | Range (ms) | HTTP calls (Entra/Graph/Exchange) | Sequential round trips | Critical path (ms) | Serial Σ calls (ms) | Wall / critical path | Serial / wall |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

Calls per onboarding, by service (the same on both paths: {"yes" if same_calls else "NO"}):

| Calls | First run | Second run |
|---|---:|---:|
{svc_table}

- **First run: {ip1:.0f} ms in-process = {ip1 / crit1:.2f}× its critical path** ({len(first.groups)} sequential round
  trips, {crit1:.0f} ms of server time); the same {len(first.http)} calls one after another would take {ser1:.0f} ms
  (**{ser1 / ip1:.2f}× the wall time**). Second run: {ip2:.0f} ms = {ip2 / crit2:.2f}× its critical path
  ({len(second.groups)} round trips), serial {ser2:.0f} ms ({ser2 / ip2:.2f}×).
- CLI end to end: first {cli1:.0f} ms, second {cli2:.0f} ms, i.e. **+{cli1 - ip1:.0f} / +{cli2 - ip2:.0f} ms** over
  in-process: interpreter start, imports (httpx, azure-identity, msgraph) and output (see Start-up).
- Round trips, first run: {first.chain()}.
- Round trips, second run: {second.chain()}.
- Wall time above the critical path is client work (TLS handshakes of new connections, token
  acquisition in a worker thread, JSON, the journal's fsync per write) and the sandbox's own time.

{compare_section(rounds, opts.baseline, lat_text, load) if rounds else ""}
Reproduce: `scripts/bench onboard` (or `.venv/bin/python benchmarks/bench_onboard.py --repeat {opts.repeat} --latency-ms {latency}
--pairs {opts.pairs} --baseline {opts.baseline}`).
"""
    written = write_section("onboard", section)
    print(section)
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
