"""Bulk benchmark: `esj-provision bulk` against the sandbox's throttling limit.

Each run gets a fresh sandbox tenant (in this process, on its own thread) that throttles Graph and
Exchange at ``--throttle-rps`` each (a token bucket: 429 with Retry-After beyond it) and adds
``--latency-ms`` to every request. The CLI runs as a subprocess (so client and sandbox do not share
a GIL), exactly as an admin runs it: ``bulk MANIFEST --format json`` on a manifest of generated
shared mailboxes, one service-account trustee, IMAP/SMTP (the pair with the most calls).

Measured per run, from the sandbox's call log: Exchange calls admitted per second over the span
Exchange was busy, divided by the limit (how well the adaptive pacing uses the tenant's budget);
the same for Graph batch items; calls per mailbox; 429s; wall time and mailboxes per second.
Then the same sandbox settings with ``--concurrency 1`` (one mailbox at a time, like a PowerShell
loop over the manifest) on fewer rows, and the ratio of mailboxes per second. Everything runs once
again at an Exchange-like latency (150-300 ms), where one-at-a-time is latency-bound, not
throttle-bound (skip with ``--no-slow``).

Then, side by side, the same bulk run (``--compare-rows``, the first latency, the default
concurrency) by the package at ``--baseline`` (default 535dc19, before issue 11's redesign) and by
this tree, both as ``python -m esj_provision`` (benchlib's ``Side``), each on a fresh sandbox with
the same seed: ``--pairs`` rounds of before, now; per round the ratio now ÷ before of the wall time
and of the client's CPU time (user + system, from ``os.wait4``: throttling hides client cost from
the wall time, not from the CPU time), and both sides' calls per mailbox and 429s.

Writes benchmarks/results/bulk.md; exits 1 if a row fails.
Usage: python benchmarks/bench_bulk.py [--rows N] [--baseline-rows N] [--throttle-rps R]
       [--latency-ms MIN-MAX] [--slow-latency-ms MIN-MAX] [--no-slow] [--concurrency N]
       [--pairs N] [--compare-rows N] [--baseline COMMIT | --no-baseline]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BENCH_TENANT,
    DEFAULT_BASELINE,
    RATIO_HEADER,
    Side,
    alternate,
    call_start,
    cli_path,
    http_calls,
    load_line,
    machine,
    ratio_row,
    run_child,
    sandbox_env,
    sides,
    today,
    write_manifest,
    write_section,
)

DEFAULT_CONCURRENCY = 8  # the CLI's default --concurrency


@dataclass
class Run:
    label: str
    rows: int
    concurrency: int
    latency: str
    limit: float
    wall_s: float
    elapsed_s: float  # run_bulk's own time, from the summary (no interpreter start)
    summary: dict[str, Any]
    calls: list[dict[str, Any]]
    started_at: float  # epoch seconds, just before the process started
    cpu_s: float  # the client's user + system time

    def _svc(self, service: str) -> list[dict[str, Any]]:
        return [dict(c) for c in http_calls(self.calls) if c["service"] == service]

    @property
    def exchange_ok(self) -> list[dict[str, Any]]:
        return [c for c in self._svc("exchange") if c["status"] != 429]

    @property
    def exchange_429(self) -> int:
        return sum(1 for c in self._svc("exchange") if c["status"] == 429)

    @property
    def batches(self) -> list[dict[str, Any]]:
        return self._svc("graph")

    @property
    def items_ok(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if "batch" in c and c["status"] != 429]

    @property
    def items_429(self) -> int:
        return sum(1 for c in self.calls if "batch" in c and c["status"] == 429)

    @staticmethod
    def _span(calls: list[dict[str, Any]]) -> float:
        if not calls:
            return 0.0
        first = min(call_start(c) for c in calls)
        last = max(call_start(c) + float(c.get("duration_ms") or 0) / 1000 for c in calls)
        return last - first

    def _use(self, admitted: int, span: float) -> float:
        """Admitted calls ÷ the most the sandbox's bucket can admit in ``span`` seconds: its
        one-second burst plus the limit times the span. 1.0 = every slot the limit allows used."""
        return admitted / (max(1.0, self.limit) + self.limit * span)

    @property
    def exchange_rate(self) -> float:
        """Admitted Exchange calls per second while Exchange was busy (first call to last answer)."""
        span = self._span(self.exchange_ok)
        return len(self.exchange_ok) / span if span else 0.0

    @property
    def exchange_use(self) -> float:
        return self._use(len(self.exchange_ok), self._span(self.exchange_ok))

    @property
    def exchange_use_whole(self) -> float:
        return self._use(len(self.exchange_ok), self.elapsed_s)

    @property
    def graph_rate(self) -> float:
        """Admitted Graph batch items per second while Graph was busy."""
        span = self._span(self.batches)
        return len(self.items_ok) / span if span else 0.0

    @property
    def graph_use(self) -> float:
        return self._use(len(self.items_ok), self._span(self.batches))

    @property
    def first_exchange_s(self) -> float:
        """From process start to the first Exchange call: sign-in and the first chunk's lookups."""
        return min(call_start(c) for c in self._svc("exchange")) - self.started_at

    @property
    def per_second(self) -> float:
        return self.rows / self.wall_s

    @property
    def serial_s(self) -> float:
        """Modeled: the same admitted calls strictly one after another (a loop that never overlaps
        two calls), but no faster than the limit allows on either service."""
        server = sum(float(c.get("duration_ms") or 0) for c in http_calls(self.calls) if c["status"] != 429) / 1000
        return max(server, len(self.exchange_ok) / self.limit, len(self.items_ok) / self.limit)


def run_bulk(
    label: str, rows: int, concurrency: int, latency: str, limit: float, seed: int, side: Side | None = None
) -> Run:
    """One bulk run on a fresh sandbox: the console script, or ``side``'s ``python -m esj_provision``."""
    from esj_provision.sandbox import Sandbox

    with tempfile.TemporaryDirectory(prefix="esj-bench-bulk-") as tmp, Sandbox(
        mailboxes=rows, throttle_rps=limit, latency_ms=latency, seed=seed, **BENCH_TENANT
    ) as sb:
        scratch = Path(tmp)
        manifest = write_manifest(scratch / "manifest.csv", rows)
        env = sandbox_env(str(scratch / "pycache"), sb.env, ESJ_PROVISION_JOURNAL=str(scratch / "journal.jsonl"))
        args = ["bulk", str(manifest), "--format", "json", "--out-dir", str(scratch / "out"),
                "--concurrency", str(concurrency)]
        cmd = [cli_path(), *args]
        if side is not None:
            side.check(env, scratch)
            cmd, env = side.argv(*args), side.env(env)
        print(f"  {label}: {rows} rows, --concurrency {concurrency}, latency {latency} ms, limit {limit:g}/s",
              file=sys.stderr)
        out_path = scratch / "stdout.jsonl"
        with out_path.open("wb") as out:
            started_at = time.time()
            wall, usage, status, err = run_child(cmd, env, cwd=scratch, stdout=out, usage=True)
        lines = out_path.read_text(encoding="utf-8").splitlines()
        if status != 0 or not lines:
            raise SystemExit(f"benchmark command failed ({status}): {' '.join(cmd)}\n{err}")
        summary = json.loads(lines[-1])["summary"]
        if summary["ok"] != rows:
            raise SystemExit(f"{label}: {summary['ok']} of {rows} rows ok: {summary['failures'][:5]}")
        calls = sb.calls()
    cpu = usage.cpu_s if usage else float("nan")
    return Run(label, rows, concurrency, latency, limit, wall, float(summary["elapsed_s"]), summary, calls, started_at, cpu)


def _lat(latency: str) -> str:
    return f"{latency} ms"


def compare(opts: argparse.Namespace, limit: float) -> str:
    """Bulk by the package at ``opts.baseline`` and by this tree, alternated, each on a fresh sandbox
    with the same seed: the comparison's Markdown."""
    before, now = sides(opts.baseline)
    rows, latency = opts.compare_rows, opts.latency_ms

    def run(side: Side) -> Run:
        return run_bulk(side.label, rows, opts.concurrency, latency, limit, seed=23, side=side)

    rounds = alternate(opts.pairs, run, before, now)
    load = load_line()
    table = "\n".join([
        ratio_row("wall time", [(b.wall_s, n.wall_s) for b, n in rounds], "s", ".1f"),
        ratio_row("client CPU (user + system)", [(b.cpu_s, n.cpu_s) for b, n in rounds], "s", ".2f"),
    ])

    def side_row(i: int) -> str:
        runs = [r[i] for r in rounds]
        med = statistics.median
        return (
            f"| {runs[0].label} | {med(r.per_second for r in runs):.2f} | {med(r.exchange_use_whole for r in runs):.2f} "
            f"| {med(len(r.exchange_ok) / r.rows for r in runs):.2f} | {med(len(r.items_ok) / r.rows for r in runs):.2f} "
            f"| {med(r.exchange_429 for r in runs):.0f} | {med(r.items_429 for r in runs):.0f} "
            f"| {med(1000 * r.cpu_s / r.rows for r in runs):.1f} |"
        )

    return f"""
### Before and after the redesign (issue 11)

The same bulk run ({rows} rows, `--concurrency {opts.concurrency}`, {_lat(latency)}, {limit:g} requests/s per
service) by *before* = the package at commit `{opts.baseline}` and *now* = this tree, both as
`python -m esj_provision bulk ...` by the same interpreter and dependencies (`PYTHONPATH` selects the
package; the benchmark checks which one the child imported), each on a fresh sandbox with the same seed.
{len(rounds)} rounds, each *before* then *now*; each round gives one ratio. Measured at {load}: absolute
times are inflated by the load, the ratios are what to read. The wall time is bound by the throttle
limit, which hides client cost; the client's CPU time (`os.wait4`) does not. *Verdict*: a sign test over
the rounds (slower or faster only when they lean one way, p < 0.05; with fewer than 6 rounds it can
only say that every round agreed).

{RATIO_HEADER}
{table}

| Side | Mailboxes/s | Exchange ÷ limit, whole run | Exchange calls / mailbox | Graph batch items / mailbox | Exchange 429s | Graph item 429s | Client CPU / mailbox (ms) |
|---|---:|---:|---:|---:|---:|---:|---:|
{side_row(0)}
{side_row(1)}

(Medians over the rounds.)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Sizes keep the whole benchmark near 3 minutes on a 2-core machine, the comparison included.
    parser.add_argument("--rows", type=int, default=100, help="manifest rows for our run (default 100)")
    parser.add_argument("--baseline-rows", type=int, default=25, help="rows for --concurrency 1 (default 25)")
    parser.add_argument("--throttle-rps", type=float, default=20.0, help="sandbox limit per service (default 20)")
    parser.add_argument("--latency-ms", default="20-60", help="sandbox latency, N or MIN-MAX (default 20-60)")
    parser.add_argument("--slow-latency-ms", default="150-300", help="the Exchange-like latency (default 150-300)")
    parser.add_argument("--slow-rows", type=int, default=45, help="rows for our run at that latency (default 45)")
    parser.add_argument("--slow-baseline-rows", type=int, default=10, help="rows for its --concurrency 1 (default 10)")
    parser.add_argument("--no-slow", action="store_true", help="skip the Exchange-like latency runs")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="our --concurrency (default 8)")
    parser.add_argument("--repeat", type=int, default=1, help="accepted for scripts/bench; each run is made once")
    parser.add_argument("--pairs", type=int, default=3, help="before/now rounds (default 3)")
    parser.add_argument("--compare-rows", type=int, default=30, help="rows of each before/now run (default 30)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help=f"the earlier commit to compare with (default {DEFAULT_BASELINE}; not --baseline-rows)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the before/now comparison")
    opts = parser.parse_args()

    limit = opts.throttle_rps
    regimes = [(opts.latency_ms, opts.rows, opts.baseline_rows)]
    if not opts.no_slow:
        regimes.append((opts.slow_latency_ms, opts.slow_rows, opts.slow_baseline_rows))
    pairs: list[tuple[Run, Run]] = []
    for n, (latency, rows, base_rows) in enumerate(regimes):
        ours = run_bulk("ours", rows, opts.concurrency, latency, limit, seed=11 + n)
        base = run_bulk("one at a time", base_rows, 1, latency, limit, seed=11 + n)
        pairs.append((ours, base))
    compared = "" if opts.no_baseline else compare(opts, limit)

    def row(r: Run) -> str:
        return (
            f"| {_lat(r.latency)} | {r.label} | {r.rows} | {r.concurrency} | {r.wall_s:.1f} | {r.per_second:.2f} "
            f"| {r.exchange_rate:.1f} | **{r.exchange_use:.2f}** | {r.exchange_use_whole:.2f} "
            f"| {r.graph_rate:.1f} ({r.graph_use:.2f}) | {r.first_exchange_s:.1f} |"
        )

    def calls_row(r: Run) -> str:
        client = r.summary.get("calls") or {}
        return (
            f"| {_lat(r.latency)} | {r.label} | {len(r.exchange_ok) / r.rows:.2f} | {len(r.items_ok) / r.rows:.2f} "
            f"| {len(r.batches) / r.rows:.2f} | {r.exchange_429} | {r.items_429} "
            f"| {sum(1 for c in r.batches if c['status'] == 429)} | {client.get('throttled')} / {client.get('retries')} |"
        )

    table = "\n".join(row(r) for pair in pairs for r in pair)
    calls_table = "\n".join(calls_row(r) for pair in pairs for r in pair)
    def ceiling(r: Run) -> float:
        """Mailboxes per second if every Exchange slot the limit allows were used by this run's calls."""
        return r.limit / (len(r.exchange_ok) / r.rows)

    ratio_rows = "\n".join(
        f"| {_lat(o.latency)} | {o.per_second:.2f} | {b.per_second:.2f} | **{o.per_second / b.per_second:.2f}×** "
        f"| {b.rows / b.serial_s:.2f} | {o.per_second / (b.rows / b.serial_s):.2f}× "
        f"| {ceiling(o):.2f} | {o.per_second / ceiling(o):.2f} |"
        for o, b in pairs
    )
    ours0, base0 = pairs[0]
    cmdline = (
        f".venv/bin/python benchmarks/bench_bulk.py --rows {opts.rows} --baseline-rows {opts.baseline_rows} "
        f"--throttle-rps {limit:g} --latency-ms {opts.latency_ms}"
        + (" --no-slow" if opts.no_slow else f" --slow-latency-ms {opts.slow_latency_ms} --slow-rows {opts.slow_rows} "
           f"--slow-baseline-rows {opts.slow_baseline_rows}")
        + (" --no-baseline" if opts.no_baseline else f" --pairs {opts.pairs} --compare-rows {opts.compare_rows} "
           f"--baseline {opts.baseline}")
    )
    per_mbx_ex = len(ours0.exchange_ok) / ours0.rows
    section = f"""## Bulk (throttled tenant: {limit:g} requests/s per service)

`esj-provision bulk MANIFEST --format json` as a subprocess against a fresh sandbox tenant per run,
which throttles Graph and Exchange at **{limit:g} requests/s each** (token bucket, 1 s burst; 429 with
Retry-After beyond it) and adds the latency shown to every request. Manifest: generated shared
mailboxes, one service-account trustee, IMAP/SMTP, so each row is: Graph lookups (in $batch requests,
looked up ahead in chunks of up to 100 rows), a read of Full Access (Send As comes from the trustee's
listing; SMTP AUTH is read once per trustee), two grants, a read-back of Full Access (Send As is
verified by a second listing). *ours* = the default
`--concurrency {opts.concurrency}`; *one at a time* = `--concurrency 1` (a PowerShell-style loop over the
manifest; it still overlaps the independent calls of one mailbox). Each run made once (minutes long:
the ratios come from runs made back to back). Measured {today()} on {machine()}, {load_line()}.

Rates from the sandbox's call log: calls admitted (not 429) per second over the span the service was
busy (first call to last answer). *÷ limit* = calls admitted ÷ the most the bucket admits in that span
(its 1 s burst + limit × span), so 1.00 means no slot left unused; *whole run* uses `run_bulk`'s whole
time instead (sign-in and the first chunk's Graph lookups come before any Exchange call).

| Latency | Run | Rows | Concurrency | Wall (s) | Mailboxes/s | Exchange calls/s | Exchange ÷ limit | Exchange ÷ limit, whole run | Graph items/s (÷ limit) | First Exchange call after (s) |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

| Latency | Run | Exchange calls / mailbox | Graph batch items / mailbox | Graph $batch / mailbox | Exchange 429s | Graph item 429s | Graph $batch 429s | Client: throttled / retries |
|---|---|---:|---:|---:|---:|---:|---:|---:|
{calls_table}

| Latency | Ours (mailboxes/s) | One at a time (mailboxes/s) | Ours ÷ one at a time | Strictly serial, modeled (mailboxes/s) | Ours ÷ serial | Limit's ceiling (mailboxes/s) | Ours ÷ ceiling |
|---|---:|---:|---:|---:|---:|---:|---:|
{ratio_rows}

- **Exchange at {ours0.exchange_use:.2f} of the limit** while busy ({ours0.exchange_rate:.1f} of {limit:g} calls/s, latency
  {_lat(ours0.latency)}), {ours0.exchange_use_whole:.2f} over the whole run; {ours0.exchange_429} Exchange 429s for
  {len(ours0.exchange_ok)} admitted calls ({100 * ours0.exchange_429 / max(1, len(ours0.exchange_ok)):.1f}%).
- **{per_mbx_ex:.2f} Exchange calls per mailbox**: read Full Access, grant Full Access and Send As, read
  Full Access back (4), plus per run the shared-mailbox listing, the trustee's Send As listing before
  and after the grants, and the SMTP AUTH settings of trustee and tenant (see the Fleet section).
- One at a time: {base0.per_second:.2f} mailboxes/s at {_lat(base0.latency)}, so ours is **{ours0.per_second / base0.per_second:.2f}×**
  faster; at that latency even one mailbox at a time runs Exchange at {base0.exchange_use:.2f} of the limit, so the
  limit, not concurrency, sets the pace.{"" if len(pairs) < 2 else f'''
- At {_lat(pairs[1][0].latency)} (closer to Exchange Online's admin API), ours {pairs[1][0].per_second:.2f} mailboxes/s
  ({pairs[1][0].exchange_use:.2f} of the limit) vs one at a time {pairs[1][1].per_second:.2f}: **{pairs[1][0].per_second / pairs[1][1].per_second:.2f}×**.'''}
- *Strictly serial, modeled*: the one-at-a-time run's calls made one after another (their server
  times summed, no client time: optimistic), but no faster than the limit allows: what a loop of
  cmdlets would take. *Limit's ceiling* = limit ÷ Exchange calls per mailbox: no client can do better
  with these calls; ours reaches {ours0.per_second / ceiling(ours0):.2f} of it end to end (process start, sign-in and
  the first lookups included).
- Graph is never the bottleneck here ({len(ours0.items_ok) / ours0.rows:.0f} batch items per mailbox against Exchange's {per_mbx_ex:.0f} calls,
  looked up ahead in chunks); the first Exchange call comes {ours0.first_exchange_s:.1f} s after the process starts
  (interpreter, sign-in, the first chunk's lookups). {ours0.items_429} Graph batch items were throttled and sent again
  ({100 * ours0.items_429 / max(1, len(ours0.items_ok)):.0f}% of the {len(ours0.items_ok)} served): items beyond the bucket's burst inside concurrent
  $batch requests, answered 429 one by one; they cost retries, not time on the critical path.

{compared}
Reproduce: `scripts/bench bulk` (or `{cmdline}`).
"""
    path = write_section("bulk", section)
    print(section)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
