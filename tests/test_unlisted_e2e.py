"""``audit --unlisted`` and ``audit --trustee`` end to end: the real CLI against the sandbox tenant.

The tenant holds, besides what the manifest lists: the sample tenant's forgotten grant (returns@),
an explicit Deny (legacy@) and a retired account's grant (billing@), then grants the service
account kept on mailboxes that left the manifest (Full Access and Send As, Full Access only, Send As only), a grant of the
ESJ app's service principal on a mailbox no longer listed, a Deny entry for the service account,
another user's grants, the service account's Full Access on a *user* mailbox, and on every mailbox
``NT AUTHORITY\\SELF`` and the inherited administrator entries. The audit must report exactly the
unlisted grants, in every format; ``--trustee`` exactly what the tenant's own state holds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import SandboxClient
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.sandbox import ESJ_APP_ID, Sandbox
from esj_provision.sandbox.tenant import Tenant

SVC = "esj-svc@contoso.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}


def q(i: int) -> str:
    return f"queue{i:04d}@contoso.com"


MANIFEST = "\n".join(
    [
        "mailbox,trustee,inbound,outbound,send_as",
        f"{q(1)},{SVC},imap,graph,true",
        f"{q(2)},{SVC},imap,graph,false",
        f"help@contoso.com,{SVC},imap,graph,true",  # support@, by its alias
        f"{q(10)},{ESJ_APP_ID},graph,graph,",
    ]
)
# The unlisted grants the tenant holds: (mailbox, trustee as in the manifest) -> rights.
UNLISTED = {
    ("returns@contoso.com", SVC): {"FullAccess", "SendAs"},  # the sample tenant's forgotten grant
    ("billing@contoso.com", SVC): {"FullAccess", "SendAs"},
    (q(5), SVC): {"FullAccess"},
    (q(6), SVC): {"SendAs"},
    (q(9), ESJ_APP_ID): {"FullAccess"},
}
USER_MAILBOX_GRANT = {("adele@contoso.com", SVC): {"FullAccess"}}


def cli(sb: Sandbox, *args: str, journal: Path | None = None) -> Result:
    env = {**sb.env, "ESJ_PROVISION_JOURNAL": str(journal or Path("/nonexistent/journal.jsonl"))}
    return CliRunner().invoke(app, list(args), env=env)


def prepare(sb: Sandbox, tmp: Path) -> Path:
    """The tenant above, built through the tool itself where the tool can (bulk onboarding of the
    manifest, onboarding the ESJ app), and behind its back for the rest."""
    manifest = tmp / "m.csv"
    manifest.write_text(MANIFEST + "\n", encoding="utf-8")
    r = cli(sb, "bulk", str(manifest), "--out-dir", str(tmp / "out"), journal=tmp / "setup.jsonl")
    assert r.exit_code == 0, r.stdout + r.stderr
    r = cli(sb, "onboard", q(9), "--trustee-app", ESJ_APP_ID, "--inbound", "graph", "--outbound", "graph",
            "--format", "json", journal=tmp / "setup.jsonl")  # fmt: skip
    assert r.exit_code == 0, r.stdout + r.stderr
    for mailbox, right in (("billing@contoso.com", "FullAccess"), ("billing@contoso.com", "SendAs"),
                           (q(5), "FullAccess"), (q(6), "SendAs"), ("adele@contoso.com", "FullAccess")):  # fmt: skip
        sb.mutate("add-grant", mailbox=mailbox, trustee=SVC, right=right, automapping=False)
    for right in ("FullAccess", "SendAs"):
        sb.mutate("add-grant", mailbox=q(8), trustee="adele@contoso.com", right=right)
    client = SandboxClient(sb)
    try:  # a Deny entry for the service account: it grants nothing
        r2 = client.invoke("Add-MailboxPermission", {"Identity": q(7), "User": SVC, "AccessRights": ["FullAccess"],
                                                    "Deny": True, "AutoMapping": False})  # fmt: skip
        assert r2.status_code == 200, r2.text
    finally:
        client.close()
    return manifest


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, Path]]:
    tmp = tmp_path_factory.mktemp("unlisted")
    with Sandbox(mailboxes=12, latency_ms="0-2") as sb:
        manifest = prepare(sb, tmp)
        sb.reset_calls()
        yield sb, manifest


def grants_in(data: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for g in data["grants"]:
        out.setdefault((g["mailbox"], g["trustee"]), set()).add(g["right"])
    return out


def test_audit_unlisted_reports_exactly_the_grants_outside_the_manifest(tenant: tuple[Sandbox, Path]) -> None:
    sb, manifest = tenant
    before = sb.state()
    r = cli(sb, "audit", str(manifest), "--unlisted", "--format", "json")
    assert r.exit_code == 3, r.stdout + r.stderr  # drift
    data = json.loads(r.stdout)
    assert grants_in(data["unlisted"]) == UNLISTED
    assert data["unlisted"]["summary"]["complete"] is True and data["unlisted"]["errors"] == []
    # The manifest's own rows are audited as ever, and the audit wrote nothing.
    assert [row["status"] for row in data["rows"]] == ["in-sync"] * 4
    assert not [c for c in sb.calls() if c.get("cmdlet") in WRITES]
    assert sb.state() == before
    # Every grant is direct, shown as Exchange names the principal; never SELF.
    shown = {g["shown_as"] for g in data["unlisted"]["grants"]}
    assert "NT AUTHORITY\\SELF" not in shown and all(g["via"] == "direct" for g in data["unlisted"]["grants"])


def test_audit_unlisted_in_every_format(tenant: tuple[Sandbox, Path], tmp_path: Path) -> None:
    sb, manifest = tenant
    r = cli(sb, "audit", str(manifest), "--unlisted", "--format", "csv")
    assert r.exit_code == 3
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    unlisted = {(x["mailbox"], x["trustee"]): x for x in rows if x["status"] == "unlisted"}
    assert set(unlisted) == set(UNLISTED)
    assert unlisted[("billing@contoso.com", SVC)]["full_access"] == "present"
    assert unlisted[("billing@contoso.com", SVC)]["send_as"] == "present"
    assert unlisted[(q(6), SVC)]["full_access"] == "-" and unlisted[(q(6), SVC)]["send_as"] == "present"
    assert sum(1 for x in rows if x["status"] == "in-sync") == 4

    r = cli(sb, "audit", str(manifest), "--unlisted", "--format", "markdown")
    assert r.exit_code == 3
    assert "## Grants outside the manifest" in r.stdout
    section = r.stdout.split("## Grants outside the manifest", 1)[1]
    mailboxes = (q(5), q(6), q(7), q(8), q(9), "billing@contoso.com", "returns@contoso.com", "legacy@contoso.com")
    assert {m for m, _ in UNLISTED} == {m for m in mailboxes if f"| {m} |" in section}

    out = tmp_path / "report.txt"
    r = cli(sb, "audit", str(manifest), "--unlisted", "--out", str(out))
    assert r.exit_code == 3
    text = out.read_text(encoding="utf-8")
    assert "Grants outside the manifest" in text and all(m in text for m, _ in UNLISTED)
    assert "grant(s) outside the manifest" in r.stderr


def test_user_mailboxes_only_on_request(tenant: tuple[Sandbox, Path]) -> None:
    sb, manifest = tenant
    r = cli(sb, "audit", str(manifest), "--unlisted", "--include-user-mailboxes", "--format", "json")
    assert r.exit_code == 3
    data = json.loads(r.stdout)
    assert grants_in(data["unlisted"]) == {**UNLISTED, **USER_MAILBOX_GRANT}
    assert data["unlisted"]["summary"]["mailbox_kinds"] == ["SharedMailbox", "UserMailbox"]


def held_by(sb: Sandbox, principal: str, kinds: tuple[str, ...] = ("SharedMailbox",)) -> dict[str, set[str]]:
    """What the tenant's own state says the principal holds, explicit and allowing, per mailbox."""
    t = Tenant.from_json(sb.state())
    found = t.find_principals(principal)
    assert len(found) == 1
    sid = found[0].sid
    out: dict[str, set[str]] = {}
    for rid, aces in t.mailbox_permissions.items():
        mbx = t.find_recipient(rid)
        assert mbx is not None
        if mbx.recipient_type in kinds and any(a.sid == sid and "FullAccess" in a.rights and not a.deny for a in aces):
            out.setdefault(mbx.mail, set()).add("FullAccess")
    for rid, sids in t.recipient_permissions.items():
        mbx = t.find_recipient(rid)
        assert mbx is not None
        if mbx.recipient_type in kinds and sid in sids:
            out.setdefault(mbx.mail, set()).add("SendAs")
    return out


@pytest.mark.parametrize("who", [SVC, "adele@contoso.com", ESJ_APP_ID])
def test_audit_trustee_lists_exactly_what_the_tenant_holds(tenant: tuple[Sandbox, Path], who: str) -> None:
    sb, _ = tenant
    r = cli(sb, "audit", "--trustee", who, "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    got = {m: rights for (m, _), rights in grants_in(data).items()}
    principal = who
    if who == ESJ_APP_ID:
        principal = Tenant.from_json(sb.state()).exo_sps[0].object_id
    assert got == held_by(sb, principal)
    assert got, "the tenant holds grants for each of them: the test would prove nothing"
    assert data["summary"]["complete"] is True


def test_audit_trustee_in_every_format(tenant: tuple[Sandbox, Path]) -> None:
    sb, _ = tenant
    want = held_by(sb, SVC)
    r = cli(sb, "audit", "--trustee", SVC, "--format", "csv")
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {x["mailbox"] for x in rows} == set(want)
    assert all(x["via"] == "direct" and x["trustee"] == SVC for x in rows)
    r = cli(sb, "audit", "--trustee", SVC, "--format", "markdown")
    assert r.exit_code == 0 and r.stdout.startswith(f"# What {SVC} can open or send as")
    assert all(f"| {m} |" in r.stdout for m in want)
    r = cli(sb, "audit", "--trustee", SVC)
    assert r.exit_code == 0 and all(m in r.stdout for m in want)
    r = cli(sb, "audit", "--trustee", SVC, "--include-user-mailboxes", "--format", "json")
    got = {m for (m, _) in grants_in(json.loads(r.stdout))}
    assert got == set(held_by(sb, SVC, ("SharedMailbox", "UserMailbox"))) and "adele@contoso.com" in got


def test_calls_per_mailbox(tenant: tuple[Sandbox, Path]) -> None:
    """One mailbox listing, one Send As listing per trustee, one Full Access read per mailbox:
    nothing per mailbox for Send As."""
    sb, _ = tenant
    sb.reset_calls()
    r = cli(sb, "audit", "--trustee", SVC, "--format", "json")
    assert r.exit_code == 0
    calls = [c for c in sb.calls() if c.get("cmdlet")]
    shared = sum(1 for rcp in Tenant.from_json(sb.state()).seeded if rcp.recipient_type == "SharedMailbox") + 12
    per_cmdlet: dict[str, int] = {}
    for c in calls:  # fewer mailboxes than a page: one request per call
        per_cmdlet[c["cmdlet"]] = per_cmdlet.get(c["cmdlet"], 0) + 1
    assert per_cmdlet.get("Get-MailboxPermission") == shared
    assert per_cmdlet.get("Get-RecipientPermission") == 1
    assert per_cmdlet.get("Get-Mailbox") == 1


def test_an_unreadable_mailbox_is_never_reported_in_sync(make_sandbox: Any, tmp_path: Path) -> None:
    sb, _ = make_sandbox(mailboxes=12)
    manifest = prepare(sb, tmp_path)
    sb.queue_fault("503", service="exchange", cmdlet="Get-MailboxPermission", count=200)
    r = cli(sb, "audit", str(manifest), "--unlisted", "--format", "json")
    assert r.exit_code == 1, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["unlisted"]["summary"]["complete"] is False and data["unlisted"]["errors"]


@pytest.mark.parametrize(
    "args",
    [
        ["audit"],  # neither a manifest nor --trustee
        ["audit", "m.csv", "--trustee", SVC],
        ["audit", "--trustee", SVC, "--unlisted"],
        ["audit", "--trustee", SVC, "--esj-app", ESJ_APP_ID],
        ["audit", "m.csv", "--include-user-mailboxes"],
        ["audit", "--trustee", "not an address"],
        ["audit", "--trustee", SVC, "--format", "xml"],
        ["bulk", "m.csv", "--as-powershell"],
        ["bulk", "m.csv", "--prune", "--as-powershell"],
        ["bulk", "m.csv", "--include-user-mailboxes"],
    ],
)
def test_bad_combinations_are_usage_errors_before_any_call(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(MANIFEST + "\n", encoding="utf-8")
    args = [str(tmp_path / a) if a == "m.csv" else a for a in args]
    env = {"AZURE_TENANT_ID": "contoso.onmicrosoft.com", "AZURE_CLIENT_ID": "x", "AZURE_CLIENT_SECRET": "y",
           "ESJ_PROVISION_GRAPH_ENDPOINT": "https://127.0.0.1:9", "ESJ_PROVISION_EXCHANGE_ENDPOINT": "https://127.0.0.1:9",
           "AZURE_AUTHORITY_HOST": "https://127.0.0.1:9", "ESJ_PROVISION_JOURNAL": str(tmp_path / "j.jsonl")}  # fmt: skip
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 2, r.stdout + r.stderr
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "j.jsonl").exists()


def test_an_unknown_trustee_is_an_error(tenant: tuple[Sandbox, Path]) -> None:
    sb, _ = tenant
    r = cli(sb, "audit", "--trustee", "nobody@contoso.com")
    assert r.exit_code == 1 and "nobody@contoso.com" in r.stderr and "not found" in r.stderr


@pytest.mark.parametrize("extra", [[], ["--include-user-mailboxes"]])
def test_audit_unlisted_reads_each_listing_once(tenant: tuple[Sandbox, Path], extra: list[str]) -> None:
    """The manifest's rows and the search share one mailbox listing and one Send As listing per
    trustee: read once a run, not once for each."""
    sb, manifest = tenant
    sb.reset_calls()
    r = cli(sb, "audit", str(manifest), "--unlisted", *extra, "--format", "json")
    assert r.exit_code == 3, r.stdout + r.stderr
    calls = [c for c in sb.calls() if c.get("cmdlet")]
    listings = [c for c in calls if c["cmdlet"] == "Get-Mailbox"]
    assert len(listings) == 1
    kinds = listings[0]["parameters"]["RecipientTypeDetails"]
    assert sorted(kinds) == (["SharedMailbox", "UserMailbox"] if extra else ["SharedMailbox"])
    trustee_wide = [c for c in calls if c["cmdlet"] == "Get-RecipientPermission" and not c["parameters"].get("Identity")]
    listed = [c["parameters"]["Trustee"].lower() for c in trustee_wide]
    assert len(listed) == len(set(listed)) and "esj-svc@contoso.onmicrosoft.com" in listed  # each trustee once
    data = json.loads(r.stdout)
    assert grants_in(data["unlisted"]) == ({**UNLISTED, **USER_MAILBOX_GRANT} if extra else UNLISTED)
    assert [row["status"] for row in data["rows"]] == ["in-sync"] * 4
