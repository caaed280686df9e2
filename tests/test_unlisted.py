"""Finding grants outside a manifest (fleet/unlisted.py), against an Exchange stand-in that answers
the rows a real tenant carries: ``NT AUTHORITY\\SELF`` with comma-joined rights, inherited entries,
Deny entries, other principals, and the trustee shown by UPN, by SID or by display name.

The end-to-end tests (test_unlisted_e2e.py) run the same against the sandbox; these pin the rules
on rows the sandbox cannot produce (an inherited or a Deny entry naming the trustee itself).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from esj_provision.errors import NotFoundError, ServiceError
from esj_provision.fleet.manifest import ManifestRow
from esj_provision.fleet.unlisted import Listing, discover, resolve_trustees
from esj_provision.microsoft.exchange import parse_permission_row, parse_recipient_permission_row
from esj_provision.microsoft.graph import LookupResult
from esj_provision.microsoft.session import Session
from esj_provision.models import DirectoryUser, ExchangeMailbox, Inbound, Outbound, SendAsGrant, UserTrustee

SVC = DirectoryUser("6ef40935-0000-0000-0000-000000000001", "esj-svc@contoso.onmicrosoft.com",
                    "esj-svc@contoso.com", "ESJ Service Account", True)  # fmt: skip
SVC_SID = "S-1-5-21-1-2-3-1105"


def mbx(name: str, kind: str = "SharedMailbox", oid: str | None = None) -> ExchangeMailbox:
    return ExchangeMailbox(
        name, f"{name}@contoso.com", kind, oid or f"oid-{name}",
        (f"SMTP:{name}@contoso.com", f"smtp:{name}@contoso.onmicrosoft.com"),
    )  # fmt: skip


def perm(user: str, rights: str, *, deny: bool = False, inherited: bool = False, sid: str = "") -> dict[str, Any]:
    return {"User": user, "AccessRights": [rights], "Deny": deny, "IsInherited": inherited, "UserSid": sid}


SELF = perm("NT AUTHORITY\\SELF", "FullAccess, ReadPermission", sid="S-1-5-10")
ADMINS = perm("NAMPR01\\Domain Admins", "FullAccess", inherited=True, sid="S-1-5-21-9-512")

# Per mailbox: its Get-MailboxPermission rows.
ROWS: dict[str, list[dict[str, Any]]] = {
    "support": [SELF, perm("esj-svc@contoso.onmicrosoft.com", "FullAccess", sid=SVC_SID), ADMINS],  # listed
    "billing": [SELF, perm("esj-svc@contoso.onmicrosoft.com", "FullAccess, ReadPermission", sid=SVC_SID)],  # forgotten
    "archive": [SELF, perm(SVC_SID, "FullAccess", sid=SVC_SID)],  # shown by SID only (orphan-like rendering)
    "inherit": [SELF, perm("esj-svc@contoso.onmicrosoft.com", "FullAccess", inherited=True, sid=SVC_SID)],
    "denied": [SELF, perm("esj-svc@contoso.onmicrosoft.com", "FullAccess", deny=True, sid=SVC_SID)],
    "readonly": [SELF, perm("esj-svc@contoso.onmicrosoft.com", "ReadPermission", sid=SVC_SID)],
    "others": [SELF, perm("adele@contoso.onmicrosoft.com", "FullAccess", sid="S-1-5-21-1-2-3-1104"), ADMINS],
    "named": [SELF, perm("ESJ Service Account", "FullAccess")],  # display name, no SID
    "selfonly": [SELF],
}
MAILBOXES = [mbx(n) for n in ROWS]
SEND_AS = [  # Get-RecipientPermission -Trustee esj-svc (what Exchange could return, SELF never)
    {"Identity": "billing", "Trustee": "esj-svc@contoso.onmicrosoft.com", "AccessRights": ["SendAs"],
     "AccessControlType": "Allow", "TrusteeSidString": SVC_SID, "IsInherited": False},
    {"Identity": "support", "Trustee": "esj-svc@contoso.onmicrosoft.com", "AccessRights": ["SendAs"],
     "AccessControlType": "Allow", "TrusteeSidString": SVC_SID, "IsInherited": False},
    {"Identity": "denied", "Trustee": "esj-svc@contoso.onmicrosoft.com", "AccessRights": ["SendAs"],
     "AccessControlType": "Deny", "TrusteeSidString": SVC_SID, "IsInherited": False},
    {"Identity": "inherit", "Trustee": "esj-svc@contoso.onmicrosoft.com", "AccessRights": ["SendAs"],
     "AccessControlType": "Allow", "TrusteeSidString": SVC_SID, "IsInherited": True},
    {"Identity": "dl-all-staff", "Trustee": "esj-svc@contoso.onmicrosoft.com", "AccessRights": ["SendAs"],
     "AccessControlType": "Allow", "TrusteeSidString": SVC_SID, "IsInherited": False},
]  # fmt: skip


class FakeExchange:
    def __init__(self, *, send_as_fails: bool = False, failing: set[str] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.send_as_fails = send_as_fails
        self.failing = failing or set()

    async def list_mailboxes(self, kinds: Any = ("SharedMailbox",)) -> list[ExchangeMailbox]:
        self.calls.append(("Get-Mailbox", ",".join(kinds)))
        return [m for m in MAILBOXES if m.recipient_type_details in kinds]

    async def send_as_grants_of(self, trustee: str) -> list[SendAsGrant]:
        self.calls.append(("Get-RecipientPermission", trustee))
        if self.send_as_fails:
            raise ServiceError("Get-RecipientPermission failed (400): the listing names 2 trustees")
        out = []
        for raw in SEND_AS:
            r = parse_recipient_permission_row(raw)
            out.append(SendAsGrant(raw["Identity"], r.trustee, r.access_rights, r.allow, r.trustee_sid, r.is_inherited))
        return out

    async def get_mailbox_permissions(self, identity: str, user: str | None = None) -> Any:
        self.calls.append(("Get-MailboxPermission", identity))
        name = identity.split("@")[0]
        if name in self.failing:
            raise ServiceError(f"Get-MailboxPermission failed (500) for {identity}")
        return [parse_permission_row(r) for r in ROWS[name]]

    async def get_recipient_permissions(self, identity: str, trustee: str | None = None) -> Any:
        self.calls.append(("Get-RecipientPermission", identity))
        name = identity.split("@")[0]
        self_row = {"Trustee": "NT AUTHORITY\\SELF", "AccessRights": ["SendAs"], "AccessControlType": "Allow"}
        rows = [self_row] + [r for r in SEND_AS if r["Identity"] == name]
        return [parse_recipient_permission_row(r) for r in rows]


class FakeGraph:
    def __init__(self, users: dict[str, DirectoryUser], broken: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.users, self.broken = users, broken

    async def lookup_many(self, refs: Any, with_purpose: bool = False) -> dict[str, LookupResult]:
        out = {}
        for ref in refs:
            if ref in self.broken:
                out[ref] = LookupResult(ref, error=ServiceError("Graph failed (503)"))
            elif ref.lower() in self.users:
                out[ref] = LookupResult(ref, user=self.users[ref.lower()])
            else:
                out[ref] = LookupResult(ref, error=NotFoundError(f"{ref} not found"))
        return out


class FakeSession:
    """The session's once-a-run reads over a fake Exchange and Graph."""

    _once = Session._once
    mailbox_listing = Session.mailbox_listing
    send_as_listing = Session.send_as_listing

    def __init__(self, **kw: Any) -> None:
        self._reads: dict[tuple[str, ...], Any] = {}
        self.exchange = FakeExchange(**kw)
        self.graph = FakeGraph({"esj-svc@contoso.com": SVC, "esj-svc@contoso.onmicrosoft.com": SVC})
        self.app_cache: dict[str, Any] = {}


def row(mailbox: str, trustee: str = "esj-svc@contoso.com", line: int = 2) -> ManifestRow:
    return ManifestRow(line, mailbox, UserTrustee(trustee), Inbound.IMAP, Outbound.SMTP)


def run(session: FakeSession, listing: Listing, refs: list[str]) -> Any:
    async def go() -> Any:
        trustees = await resolve_trustees(session, refs, strict=False)  # type: ignore[arg-type]
        assert trustees.errors == trustees.notes == []
        return await discover(session, trustees.found, listing, concurrency=3)  # type: ignore[arg-type]

    return asyncio.run(go())


def found_set(found: Any) -> set[tuple[str, str]]:
    return {(g.mailbox.split("@")[0], g.right.value) for g in found.grants}


def test_only_explicit_allowing_rows_of_the_trustee_count() -> None:
    session = FakeSession()
    found = run(session, Listing([row("support@contoso.com")]), ["esj-svc@contoso.com"])
    # billing: Full Access (comma-joined rights) and Send As; archive: shown by SID; named: by display name.
    # Never: SELF, the inherited or Deny entries, a ReadPermission-only entry, Adele's grant, the listed
    # mailbox, a Send As on a recipient that is no listed mailbox kind (a distribution group).
    assert found_set(found) == {("billing", "FullAccess"), ("billing", "SendAs"), ("archive", "FullAccess"),
                                ("named", "FullAccess")}  # fmt: skip
    assert found.complete and found.errors == []
    assert any("dl-all-staff" in n for n in found.notes)
    # One listing of mailboxes, one Send As listing, one read per mailbox but the listed one.
    assert session.exchange.calls.count(("Get-Mailbox", "SharedMailbox")) == 1
    assert [c for c in session.exchange.calls if c[0] == "Get-RecipientPermission"] == [
        ("Get-RecipientPermission", SVC.user_principal_name)
    ]
    read = {c[1].split("@")[0] for c in session.exchange.calls if c[0] == "Get-MailboxPermission"}
    assert read == set(ROWS) - {"support"}
    assert found.mailboxes_read == len(ROWS) - 1 and found.mailboxes_listed == len(ROWS)


def test_a_listed_mailbox_is_matched_by_any_of_its_addresses() -> None:
    # The manifest names support by its onmicrosoft.com proxy address: still listed.
    found = run(FakeSession(), Listing([row("support@contoso.onmicrosoft.com")]), ["esj-svc@contoso.com"])
    assert ("support", "FullAccess") not in found_set(found) and ("support", "SendAs") not in found_set(found)


def test_without_a_manifest_everything_the_trustee_holds_is_reported() -> None:
    found = run(FakeSession(), Listing(), ["esj-svc@contoso.com"])
    assert {("support", "FullAccess"), ("support", "SendAs")} <= found_set(found)
    assert all(g.via == "direct" and g.listed_for is None for g in found.grants)


def test_send_as_is_read_per_mailbox_when_the_trustee_wide_listing_fails() -> None:
    session = FakeSession(send_as_fails=True)
    found = run(session, Listing([row("support@contoso.com")]), ["esj-svc@contoso.com"])
    # Without the listing, nothing taught the trustee's SID: the SID-only row stays unattributed.
    assert found_set(found) == {("billing", "FullAccess"), ("billing", "SendAs"), ("named", "FullAccess")}
    per_mailbox = [c for c in session.exchange.calls if c[0] == "Get-RecipientPermission" and "@contoso.com" in c[1]]
    assert len(per_mailbox) == len(ROWS) - 1
    assert any("read per mailbox instead" in n for n in found.notes)


def test_an_unreadable_mailbox_makes_the_answer_incomplete_never_silent() -> None:
    found = run(FakeSession(failing={"archive"}), Listing([row("support@contoso.com")]), ["esj-svc@contoso.com"])
    assert not found.complete
    assert any("archive@contoso.com" in e for e in found.errors)
    assert ("archive", "FullAccess") not in found_set(found)  # not invented either way


def test_a_mailbox_listed_for_another_trustee_is_unlisted_for_this_one() -> None:
    listing = Listing([row("support@contoso.com"), row("billing@contoso.com", "adele@contoso.com", 3)])
    found = run(FakeSession(), listing, ["esj-svc@contoso.com"])
    billing = [g for g in found.grants if g.mailbox.startswith("billing")]
    assert {g.right.value for g in billing} == {"FullAccess", "SendAs"}
    assert {g.listed_for for g in billing} == {"adele@contoso.com"}


def test_a_mailbox_named_twice_in_a_manifest_is_listed_for_both_trustees() -> None:
    # billing by its address for Adele, and by its onmicrosoft.com address for the service account.
    listing = Listing([row("billing@contoso.com", "adele@contoso.com", 2),
                       row("billing@contoso.onmicrosoft.com", "esj-svc@contoso.com", 3)])  # fmt: skip
    found = run(FakeSession(), listing, ["esj-svc@contoso.com"])
    assert not any(g.mailbox.startswith("billing") for g in found.grants)


def test_two_spellings_of_one_account_are_one_trustee() -> None:
    listing = Listing([row("support@contoso.com"), row("billing@contoso.com", "esj-svc@contoso.onmicrosoft.com", 3)])
    found = run(FakeSession(), listing, listing.trustee_refs())
    assert len(found.trustees) == 1
    assert ("billing", "FullAccess") not in found_set(found)  # listed under its UPN


def test_a_manifest_mailbox_graph_cannot_read_leaves_the_listing_unknown() -> None:
    session = FakeSession()
    session.graph.broken = {"gone@contoso.com"}
    listing = Listing([row("support@contoso.com"), row("gone@contoso.com", line=3)])
    found = run(session, listing, ["esj-svc@contoso.com"])
    assert listing.unresolved == ["gone@contoso.com"]
    assert not found.complete


def test_a_manifest_address_that_is_no_proxy_address_is_matched_by_object_id(tmp_path: Path) -> None:
    session = FakeSession()
    # Graph knows billing's UPN-like alias; Exchange lists no such proxy address.
    session.graph.users["ops-billing@contoso.com"] = DirectoryUser(
        "oid-billing", "ops-billing@contoso.com", "billing@contoso.com", "Billing", False
    )
    found = run(session, Listing([row("support@contoso.com"), row("ops-billing@contoso.com", line=3)]),
                ["esj-svc@contoso.com"])  # fmt: skip
    assert not any(g.mailbox.startswith("billing") for g in found.grants)


def test_an_unknown_trustee_is_refused_for_audit_trustee() -> None:
    with pytest.raises(NotFoundError):
        asyncio.run(resolve_trustees(FakeSession(), ["nobody@contoso.com"], strict=True))  # type: ignore[arg-type]
    trustees = asyncio.run(resolve_trustees(FakeSession(), ["nobody@contoso.com"], strict=False))  # type: ignore[arg-type]
    assert trustees.found == [] and trustees.errors == [] and "nobody@contoso.com" in trustees.notes[0]
    session = FakeSession()
    session.graph.broken = {"esj-svc@contoso.com"}
    trustees = asyncio.run(resolve_trustees(session, ["esj-svc@contoso.com"], strict=False))  # type: ignore[arg-type]
    assert trustees.found == [] and "esj-svc@contoso.com" in trustees.errors[0]


def test_a_trustee_that_may_have_sid_history_gets_its_send_as_read_per_mailbox() -> None:
    """-Trustee matches one SID: for an account synced from on-premises (possible SID history) the
    organisation-wide listing could miss grants, so Send As is read per mailbox instead."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class SyncedUser(DirectoryUser):
        on_premises_sync_enabled: bool | None = True

    session = FakeSession()
    synced = SyncedUser(SVC.id, SVC.user_principal_name, SVC.mail, SVC.display_name, True)
    session.graph.users = {"esj-svc@contoso.com": synced}
    found = run(session, Listing([row("support@contoso.com")]), ["esj-svc@contoso.com"])
    assert ("Get-RecipientPermission", SVC.user_principal_name) not in session.exchange.calls
    assert ("billing", "SendAs") in found_set(found)
    assert any("SID history" in n for n in found.notes)


def test_prune_stops_before_any_removal_when_a_manifest_mailbox_cannot_be_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gone@ matches no proxy address and Graph fails on it: which mailbox it is stays unknown, so
    bulk --prune removes nothing at all (the stand-in has no write cmdlet: any write would raise)."""
    from esj_provision.fleet import prune as prune_mod
    from esj_provision.provision.journal import Journal

    async def no_warm_up(session: Any) -> None:
        return None

    monkeypatch.setattr(prune_mod, "warm_up", no_warm_up)
    manifest = tmp_path / "m.csv"
    manifest.write_text("mailbox,trustee,inbound,outbound\nsupport@contoso.com,esj-svc@contoso.com,imap,ews\n"
                        "gone@contoso.com,esj-svc@contoso.com,imap,ews\n")  # fmt: skip
    session = FakeSession()
    session.graph.broken = {"gone@contoso.com"}
    journal = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(ServiceError, match="nothing was removed"):
        asyncio.run(prune_mod.run_prune(session, manifest, journal=journal, dry_run=False, concurrency=2))  # type: ignore[arg-type]
    assert not (tmp_path / "journal.jsonl").exists()
    assert {c[0] for c in session.exchange.calls} <= {"Get-Mailbox", "Get-MailboxPermission", "Get-RecipientPermission"}


def test_the_progress_bar_starts_once_the_total_is_known_and_ends_complete(capsys: pytest.CaptureFixture[str]) -> None:
    from esj_provision.cli.render import Progress

    with Progress(None, enabled=False, label="mailboxes") as off:
        off.update(0, 3)  # not a terminal: nothing at all
    assert off._progress is None
    with Progress(None, enabled=True, label="mailboxes") as bar:
        assert not bar._progress.tasks  # no bar before the mailboxes are listed
        for done in range(4):
            bar.update(done, 3)
        (task,) = bar._progress.tasks
        assert (task.completed, task.total) == (3, 3)
    assert "mailboxes" in capsys.readouterr().err


def test_rows_and_a_search_share_one_display(capsys: pytest.CaptureFixture[str]) -> None:
    """audit --unlisted counts manifest rows and the mailbox search at once: rich allows one live
    display, so both are bars of the same one."""
    from esj_provision.cli.render import Progress

    with Progress(2, enabled=True, label="audit") as bar:
        bar.advance()
        bar.update(5, 10)
        bar.advance()
        rows, search = bar._progress.tasks
        assert (rows.description, rows.completed, rows.total) == ("audit", 2, 2)
        assert (search.description, search.completed, search.total) == ("mailboxes", 5, 10)
