"""Unlisted-grant benchmark: `audit MANIFEST --unlisted` (and `audit --trustee`) over 1,000 shared mailboxes.

A fresh sandbox tenant (in this process, on its own thread) with ``--mailboxes`` generated shared
mailboxes (plus the sample tenant's own), ``--latency-ms`` on every request and ``--throttle-rps``
per service. The service account holds Full Access and Send As on the manifest's ``--listed``
mailboxes and on ``--forgotten`` more that the manifest does not list. The CLI runs as a
subprocess, as an admin runs it.

Measured from the sandbox's call log: Exchange requests per cmdlet, split into the row audit's
(per manifest row) and the search for unlisted grants (everything else), and those per mailbox of
the tenant; wall time; and the grants found (which must be exactly the forgotten ones plus the
sample tenant's). For comparison, the naive search (per mailbox, Get-MailboxPermission and
Get-RecipientPermission) is counted, not run: 2 requests per mailbox.

Writes benchmarks/results/unlisted.md; exits 1 if the grants found are not exactly the planted ones.
Usage: python benchmarks/bench_unlisted.py [--mailboxes N] [--listed N] [--forgotten N]
       [--latency-ms MIN-MAX] [--throttle-rps R] [--concurrency N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BENCH_TENANT,
    TRUSTEE,
    cli_path,
    http_calls,
    machine,
    run_child,
    sandbox_env,
    today,
    write_manifest,
    write_section,
)

SEEDED_FORGOTTEN = {"returns@contoso.com"}  # the sample tenant's own forgotten grant


def _discovery(call: dict[str, Any]) -> bool:
    """Whether an Exchange call belongs to the unlisted search rather than the row audit: the row
    audit reads one trustee on one mailbox (-User / -Trustee with -Identity); the search lists
    mailboxes, lists Send As by trustee without -Identity, and reads each mailbox's every row."""
    p = call.get("parameters") or {}
    cmdlet = call.get("cmdlet")
    if cmdlet == "Get-Mailbox":
        return "RecipientTypeDetails" in p
    if cmdlet == "Get-MailboxPermission":
        return "User" not in p
    if cmdlet == "Get-RecipientPermission":
        return "Identity" not in p
    return False


def run(label: str, args: list[str], opts: argparse.Namespace) -> dict[str, Any]:
    from esj_provision.sandbox import Sandbox

    with tempfile.TemporaryDirectory(prefix="esj-bench-unlisted-") as tmp, Sandbox(
        mailboxes=opts.mailboxes, throttle_rps=opts.throttle_rps or None, latency_ms=opts.latency_ms, seed=5, **BENCH_TENANT
    ) as sb:
        scratch = Path(tmp)
        manifest = write_manifest(scratch / "manifest.csv", opts.listed, outbound="graph")
        planted = set(SEEDED_FORGOTTEN)
        for i in range(1, opts.listed + opts.forgotten + 1):
            for right in ("FullAccess", "SendAs"):
                sb.mutate("add-grant", mailbox=f"queue{i:04d}@contoso.com", trustee=TRUSTEE, right=right)
            if i > opts.listed:
                planted.add(f"queue{i:04d}@contoso.com")
        from esj_provision.sandbox.tenant import Tenant

        shared = sum(1 for m in Tenant.from_json(sb.state()).seeded if m.recipient_type == "SharedMailbox")
        shared += opts.mailboxes
        sb.reset_calls()
        env = sandbox_env(str(scratch / "pycache"), sb.env, ESJ_PROVISION_JOURNAL=str(scratch / "journal.jsonl"))
        cmd = [cli_path(), "audit", *[str(manifest) if a == "MANIFEST" else a for a in args], "--format", "json",
               "--concurrency", str(opts.concurrency)]  # fmt: skip
        print(f"  {label}: {' '.join(args)} over {shared} shared mailboxes", file=sys.stderr)
        out_path = scratch / "out.json"
        with out_path.open("wb") as out:
            wall, _, status, err = run_child(cmd, env, cwd=scratch, stdout=out)
        if status not in (0, 3):
            raise SystemExit(f"benchmark command failed ({status}): {' '.join(cmd)}\n{err}")
        data = json.loads(out_path.read_text(encoding="utf-8"))
        found_part = data.get("unlisted", data)
        found = {g["mailbox"] for g in found_part["grants"]}
        want = planted if "--unlisted" in args else planted | {f"queue{i:04d}@contoso.com" for i in range(1, opts.listed + 1)}
        calls = [c for c in http_calls(sb.calls()) if c["service"] == "exchange" and c.get("cmdlet")]
    search = Counter(c["cmdlet"] for c in calls if _discovery(c) and c["status"] != 429)
    rows = Counter(c["cmdlet"] for c in calls if not _discovery(c) and c["status"] != 429)
    return {
        "label": label,
        "shared": shared,
        "wall_s": wall,
        "search": search,
        "rows": rows,
        "throttled": sum(1 for c in calls if c["status"] == 429),
        "exact": found == want,
        "found": len(found),
        "want": len(want),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=1000, help="generated shared mailboxes (default 1000)")
    parser.add_argument("--listed", type=int, default=100, help="mailboxes the manifest lists (default 100)")
    parser.add_argument("--forgotten", type=int, default=20, help="unlisted mailboxes with grants (default 20)")
    parser.add_argument("--latency-ms", default="20-60", help="sandbox latency, N or MIN-MAX (default 20-60)")
    parser.add_argument("--throttle-rps", type=float, default=50.0, help="sandbox limit per service (default 50)")
    parser.add_argument("--concurrency", type=int, default=8, help="audit --concurrency (default 8)")
    parser.add_argument("--repeat", type=int, default=1, help="accepted for scripts/bench; each run is made once")
    opts = parser.parse_args()

    results = [
        run("audit --unlisted", ["MANIFEST", "--unlisted"], opts),
        run("audit --trustee", ["--trustee", TRUSTEE], opts),
    ]
    lines = [
        "## Grants outside the manifest (`audit --unlisted`, `audit --trustee`)",
        "",
        f"{today()}; {machine()}. `python benchmarks/bench_unlisted.py`: sandbox tenant with "
        f"{opts.mailboxes} generated shared mailboxes plus the sample tenant's, latency {opts.latency_ms} ms, "
        f"{opts.throttle_rps:g} requests/s per service (429 beyond), `--concurrency {opts.concurrency}`; the manifest "
        f"lists {opts.listed} of them for the service account, which also holds Full Access and Send As on "
        f"{opts.forgotten} more (and on the sample tenant's returns@).",
        "",
        "| command | shared mailboxes | wall s | search: Get-Mailbox | search: Get-RecipientPermission "
        "| search: Get-MailboxPermission | **search requests per mailbox** | row audit requests | 429s | found exactly |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ok = True
    for r in results:
        s = r["search"]
        per = sum(s.values()) / r["shared"]
        lines.append(
            f"| `{r['label']}` | {r['shared']} | {r['wall_s']:.1f} | {s['Get-Mailbox']} | {s['Get-RecipientPermission']} "
            f"| {s['Get-MailboxPermission']} | **{per:.3f}** | {sum(r['rows'].values())} | {r['throttled']} "
            f"| {'yes' if r['exact'] else 'NO'} ({r['found']} of {r['want']}) |"
        )
        ok = ok and r["exact"]
    lines += [
        "",
        "Read cost: one `Get-Mailbox -RecipientTypeDetails SharedMailbox` per 1,000 mailboxes, one "
        "`Get-RecipientPermission -Trustee` per trustee (Send As for the whole organisation), and one "
        "`Get-MailboxPermission` per mailbox (Exchange has no organisation-wide Full Access listing), except "
        "mailboxes the manifest lists for the only trustee there, which cannot hold an unlisted grant. "
        "About 1 request per mailbox, against 2 for the naive per-mailbox Full Access + Send As reads "
        f"({2 * results[0]['shared']} here). The row audit's own requests (per manifest row) come on top.",
    ]
    write_section("unlisted", "\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
