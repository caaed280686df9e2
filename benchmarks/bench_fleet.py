"""Fleet benchmark: bulk and audit at Exchange's limit, this tree against an earlier design, in one run.

Issue 14's measurements, side by side. For each tenant below, the same three commands run against a
fresh sandbox tenant, first with the earlier design (``--baseline``, default commit 9b8986e) and then
with this tree: ``bulk`` on new mailboxes, ``bulk`` again (every mailbox unchanged), ``audit``.

* The earlier design is the package at that commit, exported with ``git archive`` (cached under
  .venv/bench-baseline-<commit>/) and run by the same interpreter and dependencies with
  ``PYTHONPATH`` pointing at it (``python -m esj_provision``; the benchmark checks which package
  the child imported). This tree runs the same way without ``PYTHONPATH``.
* Tenants: Exchange throttled at ``--exchange-rps`` (8/s) with ``--latency-ms`` (40 ms) on every
  request, Graph's Outlook concurrency limit on (4 in flight per app; a batch's Outlook items four
  at a time; 429 ApplicationThrottled beyond). *Graph as documented*: no other Graph limit. *Graph
  slower*: Graph throttled at ``--graph-rps`` (8 items/s) too.

Measured from the sandbox's call log: Exchange calls admitted per row, Exchange ÷ limit over the
whole run (the process's first call to its last answer, sign-in included), the longest time
Exchange sat idle, Graph batch items and Outlook items per row, 429s.

Writes benchmarks/results/fleet.md; exits 1 if a command fails.
Usage: python benchmarks/bench_fleet.py [--rows N] [--exchange-rps R] [--graph-rps R] [--latency-ms MS]
       [--baseline COMMIT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BENCH_TENANT,
    Side,
    baseline_tree,
    call_start,
    http_calls,
    machine,
    sandbox_env,
    today,
    write_manifest,
    write_section,
)

COMMANDS = ("bulk, new mailboxes", "bulk again, unchanged", "audit")


@dataclass
class Measured:
    version: str
    tenant: str
    command: str
    rows: int
    limit: float
    wall_s: float
    calls: list[dict[str, Any]]

    def _exchange(self) -> list[dict[str, Any]]:
        return [c for c in http_calls(self.calls) if c["service"] == "exchange"]

    @property
    def exchange_ok(self) -> int:
        return sum(1 for c in self._exchange() if c["status"] != 429)

    @property
    def exchange_429(self) -> int:
        return sum(1 for c in self._exchange() if c["status"] == 429)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if "batch" in c]

    @property
    def items_ok(self) -> int:
        return sum(1 for c in self.items if c["status"] != 429)

    @property
    def items_429(self) -> int:
        return sum(1 for c in self.items if c["status"] == 429)

    @property
    def outlook_ok(self) -> int:
        return sum(1 for c in self.items if "mailboxSettings" in str(c["path"]) and c["status"] != 429)

    @property
    def outlook_429(self) -> int:
        """Outlook requests Graph refused for the app's concurrency (batch items or single GETs)."""
        singles = [c for c in http_calls(self.calls) if c.get("fault") == "outlook-concurrency"]
        return singles.__len__() + sum(
            1 for c in self.items if "mailboxSettings" in str(c["path"]) and c["status"] == 429
        )

    def _span(self) -> tuple[float, float]:
        calls = http_calls(self.calls)
        first = min(call_start(c) for c in calls)
        last = max(call_start(c) + float(c.get("duration_ms") or 0) / 1000 for c in calls)
        return first, last

    @property
    def exchange_use_whole(self) -> float:
        """Admitted Exchange calls ÷ the most the bucket admits from the run's first call to its
        last answer (its 1 s burst + limit × span): 1.00 = no slot left unused."""
        first, last = self._span()
        return self.exchange_ok / (max(1.0, self.limit) + self.limit * (last - first))

    @property
    def longest_idle_s(self) -> float:
        """The longest time no Exchange call was in flight, between the first and the last."""
        spans = sorted(
            (call_start(c), call_start(c) + float(c.get("duration_ms") or 0) / 1000) for c in self._exchange()
        )
        idle, end = 0.0, spans[0][1] if spans else 0.0
        for start, stop in spans[1:]:
            idle = max(idle, start - end)
            end = max(end, stop)
        return idle


def _run(cmd: list[str], env: dict[str, str], cwd: Path, ok: tuple[int, ...]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode not in ok:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def measure(version: str, pythonpath: Path | None, tenant: str, sandbox: dict[str, Any], rows: int) -> list[Measured]:
    from esj_provision.sandbox import Sandbox

    out: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="esj-bench-fleet-") as tmp, Sandbox(mailboxes=rows, **sandbox, **BENCH_TENANT) as sb:
        scratch = Path(tmp)
        manifest = write_manifest(scratch / "manifest.csv", rows)
        side = Side(version, pythonpath)
        env = side.env(sandbox_env(str(scratch / "pycache"), sb.env, ESJ_PROVISION_JOURNAL=str(scratch / "journal.jsonl")))
        side.check(env, scratch)
        cli = side.argv()
        bulk = [*cli, "bulk", str(manifest), "--format", "json", "--out-dir", str(scratch / "out")]
        argvs = [(bulk, (0,)), (bulk, (0,)), ([*cli, "audit", str(manifest), "--format", "json"], (0, 3))]
        for command, (argv, ok) in zip(COMMANDS, argvs):
            print(f"  {tenant}, {version}: {command} ({rows} rows)", file=sys.stderr)
            mark = len(sb.calls())
            wall, stdout = _run(argv, env, scratch, ok)
            if argv is bulk:
                summary = json.loads(stdout.splitlines()[-1])["summary"]
                if summary["ok"] != rows:
                    raise SystemExit(f"{version} {command}: {summary['ok']} of {rows} ok: {summary['failures'][:3]}")
            limit = float(sandbox["exchange_rps"])
            out.append(Measured(version, tenant, command, rows, limit, wall, sb.calls()[mark:]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60, help="manifest rows (default 60)")
    parser.add_argument("--exchange-rps", type=float, default=8.0, help="Exchange's limit (default 8/s)")
    parser.add_argument("--graph-rps", type=float, default=8.0, help="Graph's limit when slower (default 8/s)")
    parser.add_argument("--latency-ms", default="40", help="sandbox latency, N or MIN-MAX (default 40)")
    parser.add_argument("--baseline", default="9b8986e", help="the earlier design's commit (default 9b8986e)")
    parser.add_argument("--repeat", type=int, default=1, help="accepted for scripts/bench; each run is made once")
    opts = parser.parse_args()

    old = baseline_tree(opts.baseline)
    load_before = os.getloadavg()[0]
    common = {"exchange_rps": opts.exchange_rps, "latency_ms": opts.latency_ms, "outlook_concurrency": 4, "seed": 5}
    tenants = {
        "Graph as documented": common,
        f"Graph slower ({opts.graph_rps:g}/s)": {**common, "graph_rps": opts.graph_rps},
    }
    results: list[Measured] = []
    for tenant, sandbox in tenants.items():
        results += measure(f"before ({opts.baseline})", old, tenant, sandbox, opts.rows)
        results += measure("now", None, tenant, sandbox, opts.rows)

    def line(m: Measured) -> str:
        return (
            f"| {m.tenant} | {m.command} | {m.version} | {m.wall_s:.1f} | **{m.exchange_ok / m.rows:.2f}** "
            f"| **{m.exchange_use_whole:.2f}** | {m.longest_idle_s:.1f} | {m.items_ok / m.rows:.2f} "
            f"| {m.outlook_ok / m.rows:.2f} | {m.exchange_429} | {m.items_429} | {m.outlook_429} |"
        )

    table = "\n".join(line(m) for m in results)
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    by = {(m.tenant, m.command, m.version.split()[0]): m for m in results}

    def pick(tenant: str, command: str, version: str) -> Measured:
        return by[(tenant, command, version)]

    doc, slow = list(tenants)
    cmdline = (
        f".venv/bin/python benchmarks/bench_fleet.py --rows {opts.rows} --exchange-rps {opts.exchange_rps:g} "
        f"--graph-rps {opts.graph_rps:g} --latency-ms {opts.latency_ms} --baseline {opts.baseline}"
    )
    new_doc, new_slow = pick(doc, COMMANDS[0], "now"), pick(slow, COMMANDS[0], "now")
    old_doc, old_slow = pick(doc, COMMANDS[0], "before"), pick(slow, COMMANDS[0], "before")
    goals = "; ".join(
        f"{t.split(' (')[0].lower()}, {c}: {pick(t, c, 'now').exchange_use_whole:.2f} "
        f"({'met' if pick(t, c, 'now').exchange_use_whole >= (0.9 if t == doc else 0.8) else 'NOT met'})"
        for t in (doc, slow)
        for c in COMMANDS
    )
    section = f"""## Fleet: bulk and audit at Exchange's limit, before and now ({opts.rows} rows)

Issue 14's measurements, side by side in one run: each command against a fresh sandbox tenant that
throttles Exchange at **{opts.exchange_rps:g} requests/s**, adds {opts.latency_ms} ms to every request and applies Graph's
Outlook concurrency limit (4 requests in flight per app; a batch's Outlook items four at a time;
429 ApplicationThrottled beyond). *Graph slower*: Graph also throttled at {opts.graph_rps:g} requests/s (each batch
item counts). *before* = the package at commit {opts.baseline} (the earlier design), *now* = this tree; both
run as `python -m esj_provision` by the same interpreter and dependencies (`PYTHONPATH` selects the
package; the benchmark checks which one the child imported). Per tenant and version: `bulk` on
{opts.rows} new mailboxes (one trustee, IMAP/SMTP), `bulk` again (all unchanged), `audit`. Each run made once.
Measured {today()} on {machine()}, {load} (wall times stretch
with the machine's load; the call counts do not, and the ratios to the limit little).

*Exchange ÷ limit, whole run* = admitted Exchange calls ÷ the most the limit admits from the
process's first call (sign-in) to its last answer (1 s burst + limit × span); *longest idle* = the
longest time no Exchange call was in flight between the first and the last. *Outlook 429s* =
Outlook requests (`mailboxSettings`) answered 429: with Graph as documented there is no other Graph
limit, so each is the app's Outlook concurrency overrun; in the slower tenant they also count the
rate limit's 429s (the call log does not tell the two apart).

| Tenant | Command | Version | Wall (s) | Exchange calls / row | Exchange ÷ limit, whole run | Longest Exchange idle (s) | Graph items / row | Outlook items / row | Exchange 429s | Graph item 429s | Outlook 429s |
|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

- New mailboxes: **{old_doc.exchange_ok / opts.rows:.2f} → {new_doc.exchange_ok / opts.rows:.2f} Exchange calls per row**; wall time
  {old_doc.wall_s:.1f} s → {new_doc.wall_s:.1f} s ({old_doc.wall_s / new_doc.wall_s:.2f}× faster) with Graph as documented,
  {old_slow.wall_s:.1f} s → {new_slow.wall_s:.1f} s with Graph slower.
- Unchanged mailboxes: {pick(doc, COMMANDS[1], "before").exchange_ok / opts.rows:.2f} → **{pick(doc, COMMANDS[1], "now").exchange_ok / opts.rows:.2f}** per row;
  audit: {pick(doc, COMMANDS[2], "before").exchange_ok / opts.rows:.2f} → **{pick(doc, COMMANDS[2], "now").exchange_ok / opts.rows:.2f}** per row.
  Above the per-row figure (4, 1, 1) are the per-run calls: the shared-mailbox listing, the trustee's
  Send As listing (and, after grants, the verifying one), and the SMTP AUTH settings of tenant and
  trustee, {opts.rows} rows sharing them.
- Exchange ÷ limit over the whole run, new mailboxes: {old_doc.exchange_use_whole:.2f} → **{new_doc.exchange_use_whole:.2f}** (Graph as
  documented), {old_slow.exchange_use_whole:.2f} → **{new_slow.exchange_use_whole:.2f}** (Graph slower). With few calls per row, a
  short run's fixed costs (interpreter start, sign-in, the listings before the first row) weigh more
  in the whole-run ratio.
- Graph: `bulk` and `audit` take a listed mailbox's type from the shared-mailbox listing (no
  Outlook read) and its Entra object id, so Graph reads listed mailboxes 15 to a batch item
  (`/users?$filter=id in (...)`): {pick(doc, COMMANDS[1], "before").items_ok / opts.rows:.2f} → {pick(doc, COMMANDS[1], "now").items_ok / opts.rows:.2f} Graph items per row (the trustee and each
  chunk's remainder included). `audit` still asks Graph where ESJ uses GRAPH: a mailbox Graph
  cannot read over REST is drift there; those Outlook reads go one batch at a time.
- Exchange ÷ limit over the whole run, now (goal ≥ 0.9 with Graph as documented, ≥ 0.8 with Graph
  slower): {goals}.

Reproduce: `scripts/bench fleet` (or `{cmdline}`).
"""
    path = write_section("fleet", section)
    print(section)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if os.environ.get("PYTHONPATH"):
        print("bench_fleet: unset PYTHONPATH (it selects the package under test)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
