"""``bulk MANIFEST --prune`` end to end against the sandbox: dry run first, then exactly the unlisted
grants removed, each once, under faults and across ``kill -9``; a re-run removes nothing.

What must survive every run: the manifest's own grants, other principals' grants (a user's Full
Access and Send As, a retired account's leftover), the service account's explicit Deny, and the
``NT AUTHORITY\\SELF`` and inherited entries (never written to at all).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_reliability import (
    _subprocess_env,
    applied_writes,
    assert_journal_complete,
    tenant_delegations,
)
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.provision.journal import open_intents, read_journal
from esj_provision.sandbox import Sandbox
from esj_provision.sandbox.tenant import Tenant

SVC = "esj-svc@contoso.com"
SVC_UPN = "esj-svc@contoso.onmicrosoft.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}
REMOVE = {"FullAccess": "Remove-MailboxPermission", "SendAs": "Remove-RecipientPermission"}
LISTED = 4


def q(i: int) -> str:
    return f"queue{i:04d}@contoso.com"


def prepare(sb: Sandbox, tmp: Path, forgotten: int) -> set[tuple[str, str, str]]:
    """queue0001..0004 listed and granted; ``forgotten`` more queues granted but not listed (Full
    Access and Send As, every third Full Access only); Adele on two of them. Returns the unlisted
    grants as (mailbox, right, principal shown), the sample tenant's returns@ included."""
    lines = ["mailbox,trustee,inbound,outbound"] + [f"{q(i)},{SVC},imap,graph" for i in range(1, LISTED + 1)]
    (tmp / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    unlisted = {("returns@contoso.com", "FullAccess", SVC_UPN), ("returns@contoso.com", "SendAs", SVC_UPN)}
    for i in range(1, LISTED + forgotten + 1):
        rights = ["FullAccess"] if i % 3 == 0 else ["FullAccess", "SendAs"]
        for right in rights:
            sb.mutate("add-grant", mailbox=q(i), trustee=SVC, right=right, automapping=False)
            if i > LISTED:
                unlisted.add((q(i), right, SVC_UPN))
    for i in (2, LISTED + 1):
        for right in ("FullAccess", "SendAs"):
            sb.mutate("add-grant", mailbox=q(i), trustee="adele@contoso.com", right=right)
    return unlisted


def prune(sb: Sandbox, tmp: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        app,
        ["bulk", str(tmp / "m.csv"), "--prune", *extra],
        env={**sb.env, "ESJ_PROVISION_JOURNAL": str(tmp / "journal.jsonl")},
        catch_exceptions=False,
    )


def json_lines(r: Result) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    return lines[:-1], lines[-1]["summary"]


def removals_wanted(unlisted: set[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    return Counter((REMOVE[right], mailbox, who) for mailbox, right, who in unlisted)


def untouchable(sb: Sandbox) -> dict[str, Any]:
    """What no prune may change: Deny entries and every grant of anyone but the service account."""
    t = Tenant.from_json(sb.state())
    svc = t.find_principals(SVC)[0].sid
    return {
        "deny": sorted((rid, a.sid) for rid, aces in t.mailbox_permissions.items() for a in aces if a.deny),
        "others": sorted(
            (rid, a.sid, tuple(a.rights)) for rid, aces in t.mailbox_permissions.items() for a in aces
            if a.sid != svc and not a.deny
        ),
        "others_send_as": sorted((rid, s) for rid, sids in t.recipient_permissions.items() for s in sids if s != svc),
    }  # fmt: skip


def test_dry_run_and_powershell_write_nothing(make_sandbox: Any, tmp_path: Path) -> None:
    sb, _ = make_sandbox(mailboxes=12)
    unlisted = prepare(sb, tmp_path, 5)
    before = sb.state()
    r = prune(sb, tmp_path, "--dry-run", "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    removals, summary = json_lines(r)
    assert {(x["mailbox"], x["right"], SVC_UPN) for x in removals} == unlisted
    assert {x["outcome"] for x in removals} == {"planned"} and summary["planned"] == len(unlisted)

    r = prune(sb, tmp_path, "--dry-run", "--as-powershell")
    assert r.exit_code == 0, r.stdout + r.stderr
    commands = [x for x in r.stdout.splitlines() if x.startswith("Remove-")]
    assert len(commands) == len(unlisted)
    for mailbox, right, who in unlisted:
        flag = "-User" if right == "FullAccess" else "-Trustee"
        assert f"{REMOVE[right]} -Identity '{mailbox}' {flag} '{who}' -AccessRights {right}" in r.stdout
    assert "NT AUTHORITY" not in r.stdout and "adele" not in r.stdout and "legacy" not in r.stdout

    r = prune(sb, tmp_path, "--dry-run")
    assert r.exit_code == 0 and "dry run" in r.stdout
    assert not [c for c in sb.calls() if c.get("cmdlet") in WRITES]
    assert sb.state() == before
    assert not (tmp_path / "journal.jsonl").exists()


def test_prune_removes_exactly_the_unlisted_grants_and_a_rerun_nothing(make_sandbox: Any, tmp_path: Path) -> None:
    sb, _ = make_sandbox(mailboxes=15)
    unlisted = prepare(sb, tmp_path, 8)
    before, keep = tenant_delegations(sb), untouchable(sb)
    r = prune(sb, tmp_path, "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    removals, summary = json_lines(r)
    assert summary["removed"] == len(unlisted) and summary["failed"] == summary["unknown"] == 0
    assert all(x["outcome"] == "removed" and x["request_id"] for x in removals)
    assert tenant_delegations(sb) == before - unlisted
    assert untouchable(sb) == keep
    assert applied_writes(sb.calls()) == removals_wanted(unlisted)
    records = assert_journal_complete(tmp_path / "journal.jsonl")
    results = [x for x in records if x["event"] == "result"]
    assert len(results) == len(unlisted) and all(x["request_id"] for x in results)
    assert {x["op"] for x in results} == {"remove-full-access", "remove-send-as"}

    seq = sb.calls()[-1]["seq"]
    r = prune(sb, tmp_path, "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    removals, summary = json_lines(r)
    assert removals == [] and summary["unlisted_grants"] == 0
    assert not [c for c in sb.calls(since=seq) if c.get("cmdlet") in WRITES]
    assert tenant_delegations(sb) == before - unlisted


def _lost_answers(sb: Sandbox) -> None:
    for cmdlet in REMOVE.values():
        sb.queue_fault("504-after-apply", service="exchange", cmdlet=cmdlet, count=4)
        sb.queue_fault("reset-after-apply", service="exchange", cmdlet=cmdlet, count=2)


def _refused_then_ok(sb: Sandbox) -> None:
    for cmdlet in REMOVE.values():
        sb.queue_fault("503", service="exchange", cmdlet=cmdlet, count=3)
        sb.queue_fault("reset-before", service="exchange", cmdlet=cmdlet, count=2)


def _reads_fail(sb: Sandbox) -> None:
    sb.queue_fault("503", service="exchange", cmdlet="Get-MailboxPermission", count=6)
    sb.queue_fault("504-after-apply", service="exchange", cmdlet="Get-RecipientPermission", count=2)


@pytest.mark.parametrize("fault", [_lost_answers, _refused_then_ok, _reads_fail])
def test_faults_end_in_exactly_the_unlisted_grants_removed_each_once(
    fault: Any, make_sandbox: Any, tmp_path: Path
) -> None:
    sb, _ = make_sandbox(mailboxes=16, latency_ms="1-3")
    unlisted = prepare(sb, tmp_path, 9)
    before, keep = tenant_delegations(sb), untouchable(sb)
    fault(sb)
    r = prune(sb, tmp_path, "--format", "json", "--concurrency", "4")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert tenant_delegations(sb) == before - unlisted
    assert untouchable(sb) == keep
    assert applied_writes(sb.calls()) == removals_wanted(unlisted)
    records = assert_journal_complete(tmp_path / "journal.jsonl")
    if fault is _lost_answers:  # the lost answers were read back, never resent blindly
        assert any(x["event"] == "ambiguous" for x in records)
        assert any(x["event"] == "reconciled" and x.get("outcome") == "removed" for x in records)


# --------------------------------------------------------------------------- kill -9 and resume

KILL_SANDBOX: dict[str, Any] = {"mailboxes": 60, "latency_ms": "15-40", "fault_rate": 0.02, "seed": 11}


def _argv() -> list[str]:
    return [sys.executable, "-m", "esj_provision", "bulk", "m.csv", "--prune", "--format", "json", "--concurrency", "4"]


def _kill_when(sb: Sandbox, cwd: Path, journal: Path, kill_at: int) -> bool:
    """Run the prune as a real process; SIGKILL it once the journal holds ``kill_at`` results and a
    removal is in flight. False if it finished first."""
    proc = subprocess.Popen(_argv(), cwd=cwd, env=_subprocess_env(sb, journal), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            data = journal.read_bytes() if journal.exists() else b""
            results = data.count(b'"event": "result"')
            open_ = data.count(b'"event": "intent"') - results - data.count(b'"event": "reconciled"')
            if results >= kill_at and (open_ > 0 or results >= kill_at + 20):
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return True
            time.sleep(0.003)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_killed_prunes_resume_removing_nothing_twice_or_wrongly(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with Sandbox(**KILL_SANDBOX) as sb:
        unlisted = prepare(sb, tmp_path, 50)
        before, keep = tenant_delegations(sb), untouchable(sb)
        killed: list[dict[str, Any]] = []
        for kill_at in (10, 45):
            assert _kill_when(sb, tmp_path, journal, kill_at), f"the prune finished before {kill_at} removals"
            killed.append(open_intents(journal))
        final = subprocess.run(_argv(), cwd=tmp_path, env=_subprocess_env(sb, journal), capture_output=True,
                               text=True, timeout=120)  # fmt: skip
        assert final.returncode == 0, final.stderr + final.stdout[-2000:]
        assert "Traceback" not in final.stderr
        summary = json.loads(final.stdout.splitlines()[-1])["summary"]

        # Exactly the unlisted grants are gone, each removed once, nothing else touched.
        assert tenant_delegations(sb) == before - unlisted
        assert untouchable(sb) == keep
        assert applied_writes(sb.calls()) == removals_wanted(unlisted)

        # Every removal left in flight by a kill was read back and recorded.
        records = assert_journal_complete(journal)
        left_open = {k for still_open in killed for k in still_open}
        assert left_open, "no kill landed while a removal was in flight: the test proves nothing"
        final_run = records[-1]["run"]
        reconciled = [x for x in records if x["event"] == "reconciled" and x.get("run_of_intent")]
        assert {x["key"] for x in reconciled if x["run"] == final_run} >= set(killed[-1])
        assert summary["reconciled_in_flight_removals"] == sum(1 for x in reconciled if x["run"] == final_run)
        assert sum(1 for x in read_journal(journal) if x["event"] == "run-end") == 1

        # A further run finds nothing to remove and sends no write.
        seq = sb.calls()[-1]["seq"]
        again = subprocess.run(_argv(), cwd=tmp_path, env=_subprocess_env(sb, journal), capture_output=True,
                               text=True, timeout=120)  # fmt: skip
        assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["summary"]["unlisted_grants"] == 0
        assert not [c for c in sb.calls(since=seq) if c.get("cmdlet") in WRITES]


def test_an_esj_apps_unlisted_grant_is_removed_through_its_service_principal(make_sandbox: Any, tmp_path: Path) -> None:
    """ESJ signed in as its app on queue0009, which left ESJ; the manifest still lists the app on
    queue0010: the app's Full Access on queue0009 goes, named by its Exchange service principal."""
    from esj_provision.sandbox import ESJ_APP_ID

    sb, _ = make_sandbox(mailboxes=12)
    setup = CliRunner().invoke(
        app,
        ["onboard", q(9), "--trustee-app", ESJ_APP_ID, "--inbound", "graph", "--outbound", "graph", "--format", "json"],
        env={**sb.env, "ESJ_PROVISION_JOURNAL": str(tmp_path / "setup.jsonl")},
    )
    assert setup.exit_code == 0, setup.stdout + setup.stderr
    (tmp_path / "m.csv").write_text(f"mailbox,trustee,inbound,outbound\n{q(10)},{ESJ_APP_ID},graph,graph\n")
    t = Tenant.from_json(sb.state())
    sp = t.exo_sps[0]
    assert any(a.sid == sp.sid for a in t.mailbox_permissions[t.find_recipient(q(9)).id])  # type: ignore[union-attr]

    r = prune(sb, tmp_path, "--dry-run", "--as-powershell")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert f"Remove-MailboxPermission -Identity '{q(9)}' -User '{sp.object_id}' -AccessRights FullAccess" in r.stdout
    assert "Remove-RecipientPermission" not in r.stdout and "returns@" not in r.stdout  # not the account's grant

    keep = untouchable(sb)
    r = prune(sb, tmp_path, "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    removals, _ = json_lines(r)
    assert [(x["mailbox"], x["trustee"], x["right"], x["outcome"]) for x in removals] == [
        (q(9), ESJ_APP_ID, "FullAccess", "removed")
    ]
    t = Tenant.from_json(sb.state())
    assert not any(a.sid == sp.sid for a in t.mailbox_permissions.get(t.find_recipient(q(9)).id, []))  # type: ignore[union-attr]
    # Everything else stays, the service account's returns@ grant included: it is no trustee of this manifest.
    keep["others"] = [x for x in keep["others"] if x[1] != sp.sid]
    assert untouchable(sb) == keep
    assert ("returns@contoso.com", "FullAccess", SVC_UPN) in tenant_delegations(sb)


def test_a_grant_exchange_will_not_remove_is_a_failure_never_done(make_sandbox: Any, tmp_path: Path) -> None:
    """An entry made with another inheritance type than the removal names: Exchange answers "the ACE
    doesn't exist", the grant stays. Read back, it is reported (and journalled) as failed, exit 4."""
    from sandbox_fixtures import SandboxClient

    sb, _ = make_sandbox(mailboxes=8)
    (tmp_path / "m.csv").write_text(f"mailbox,trustee,inbound,outbound\n{q(1)},{SVC},imap,graph\n")
    client = SandboxClient(sb)
    try:
        r0 = client.invoke("Add-MailboxPermission", {"Identity": q(5), "User": SVC, "AccessRights": ["FullAccess"],
                                                     "InheritanceType": "SelfAndChildren", "AutoMapping": False})  # fmt: skip
        assert r0.status_code == 200, r0.text
    finally:
        client.close()
    r = prune(sb, tmp_path, "--format", "json")
    assert r.exit_code == 4, r.stdout + r.stderr
    removals, summary = json_lines(r)
    assert summary["failed"] == 1
    outcome = {(x["mailbox"], x["right"]): x for x in removals}
    assert outcome[(q(5), "FullAccess")]["outcome"] == "failed"
    assert "still there" in outcome[(q(5), "FullAccess")]["error"]
    assert outcome[("returns@contoso.com", "FullAccess")]["outcome"] == "removed"  # the others go on
    assert (q(5), "FullAccess", SVC_UPN) in tenant_delegations(sb)
    records = list(read_journal(tmp_path / "journal.jsonl"))
    assert any(x["event"] == "verified" and x["mailbox"] == q(5) and x["outcome"] == "failed" for x in records)

