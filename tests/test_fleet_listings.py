"""Send As and mailbox types from organisation-wide listings (fleet/listings.py).

Unit tests with a stand-in Exchange client decide when a listing is trusted and when a row falls
back to its own read; the end-to-end tests count, from the sandbox's call log, what a new mailbox,
an unchanged one and an audited row cost in Exchange calls.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from esj_provision.errors import AccessDeniedError, ServiceError
from esj_provision.fleet.listings import FleetListings, verify_batch_size, verify_send_as
from esj_provision.microsoft.session import Session
from esj_provision.models import (
    AppTrustee,
    DirectoryUser,
    ExchangeMailbox,
    RecipientPermissionRow,
    Right,
    SendAsGrant,
    State,
    UserTrustee,
)
from esj_provision.provision.onboard import Delegation, OnboardRequest, Plan
from esj_provision.sandbox import Sandbox

TRUSTEE = DirectoryUser("t-id", "esj-svc@contoso.onmicrosoft.com", "esj-svc@contoso.com", "ESJ", True)
SYNCED = DirectoryUser("s-id", "synced@contoso.com", "synced@contoso.com", "Synced", True, on_premises_sync_enabled=True)


def mailbox(n: int, name: str | None = None) -> ExchangeMailbox:
    return ExchangeMailbox(
        identity=name or f"queue{n}",
        primary_smtp_address=f"queue{n}@contoso.com",
        recipient_type_details="SharedMailbox",
        external_directory_object_id=f"oid-{n}",
        email_addresses=(f"SMTP:queue{n}@contoso.com", f"smtp:alias{n}@contoso.com", f"X500:/o=x/cn=q{n}"),
    )


def grant(name: str, *, allow: bool = True, inherited: bool = False, rights: tuple[str, ...] = ("SendAs",)) -> SendAsGrant:
    return SendAsGrant(name, TRUSTEE.user_principal_name, frozenset(rights), allow, "S-1-5-21-1", inherited)


class FakeExchange:
    def __init__(self, mailboxes: list[ExchangeMailbox], grants: list[SendAsGrant]) -> None:
        self.mailboxes, self.grants = mailboxes, grants
        self.calls: Counter[str] = Counter()
        self.fail: dict[str, Exception] = {}
        self.per_mailbox: dict[str, list[RecipientPermissionRow]] = {}

    async def list_mailboxes(self, kinds: Any = ("SharedMailbox",)) -> list[ExchangeMailbox]:
        self.calls["list_mailboxes"] += 1
        if "list_mailboxes" in self.fail:
            raise self.fail["list_mailboxes"]
        return self.mailboxes

    async def send_as_grants_of(self, trustee: str) -> list[SendAsGrant]:
        self.calls["send_as_grants_of"] += 1
        if "send_as_grants_of" in self.fail:
            raise self.fail["send_as_grants_of"]
        return self.grants

    async def get_recipient_permissions(self, identity: str, trustee: str | None = None) -> list[RecipientPermissionRow]:
        self.calls["get_recipient_permissions"] += 1
        return self.per_mailbox.get(identity, [])


class FakeSession:
    """The session's once-a-run reads over a fake Exchange."""

    _once = Session._once
    mailbox_listing = Session.mailbox_listing
    send_as_listing = Session.send_as_listing

    def __init__(self, exchange: FakeExchange) -> None:
        self.exchange = exchange
        self._reads: dict[tuple[str, ...], Any] = {}


def plan_for(n: int, trustee: DirectoryUser = TRUSTEE, *, oid: str | None = None) -> Plan:
    plan = Plan(mode="onboard", request=OnboardRequest(mailbox=f"queue{n}@contoso.com", trustee=UserTrustee(trustee.mail or "")))
    plan.mailbox = DirectoryUser(oid or f"oid-{n}", f"queue{n}@contoso.com", f"queue{n}@contoso.com", None, False)
    plan.trustee = trustee
    return plan


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def listings_with(ex: FakeExchange, *, confirm_absent: bool = False) -> FleetListings:
    listings = FleetListings(FakeSession(ex), confirm_absent=confirm_absent)  # type: ignore[arg-type]
    run(listings.load_shared())
    return listings


def test_present_and_absent_come_from_one_listing_per_trustee() -> None:
    ex = FakeExchange([mailbox(1), mailbox(2), mailbox(3)], [grant("queue1"), grant("QUEUE3")])
    listings = listings_with(ex)

    async def states() -> list[State | None]:
        return [await listings.send_as_state(plan_for(n)) for n in (1, 2, 3)]

    assert run(states()) == [State.PRESENT, State.ABSENT, State.PRESENT]
    assert ex.calls == Counter({"list_mailboxes": 1, "send_as_grants_of": 1})


def test_the_mailbox_is_found_by_object_id_or_by_any_smtp_address() -> None:
    listings = listings_with(FakeExchange([mailbox(1)], [grant("queue1")]))
    assert listings.identity_of(None, "Alias1@Contoso.com") == "queue1"
    assert listings.identity_of(None, "queue1@contoso.com") == "queue1"
    assert listings.identity_of(None, "/o=x/cn=q1") is None and listings.identity_of(None, "queue2@contoso.com") is None
    renamed = DirectoryUser("oid-1", "x@contoso.com", "x@contoso.com", None, False)  # address changed since
    assert listings.identity_of(renamed, "x@contoso.com") == "queue1"


def test_rows_the_listing_cannot_answer_are_read_per_mailbox() -> None:
    ex = FakeExchange([mailbox(1), mailbox(2, "dup"), mailbox(3, "dup")], [grant("queue1"), grant("dup")])
    listings = listings_with(ex)

    async def states() -> list[State | None]:
        return [
            await listings.send_as_state(plan_for(4, oid="oid-4")),  # not a listed shared mailbox
            await listings.send_as_state(plan_for(2)),  # two mailboxes share its Identity
            await listings.send_as_state(plan_for(1, SYNCED)),  # trustee may have SID history
        ]

    assert run(states()) == [None, None, None]
    assert not listings.covers(plan_for(1, SYNCED))
    app_plan = plan_for(1)
    app_plan.request.trustee = AppTrustee("2db3fd6d-47fc-4750-ace0-99b31d4ba2de")
    assert not listings.covers(app_plan)


def test_denied_inherited_and_other_rights_do_not_count() -> None:
    grants = [grant("queue1", allow=False), grant("queue2", inherited=True), grant("queue3", rights=("ReadPermission",))]
    listings = listings_with(FakeExchange([mailbox(1), mailbox(2), mailbox(3)], grants))

    async def states() -> list[State | None]:
        return [await listings.send_as_state(plan_for(n)) for n in (1, 2, 3)]

    assert run(states()) == [State.ABSENT, State.ABSENT, State.ABSENT]


def test_audit_never_takes_an_absent_from_the_listing() -> None:
    listings = listings_with(FakeExchange([mailbox(1), mailbox(2)], [grant("queue1")]), confirm_absent=True)

    async def states() -> list[State | None]:
        return [await listings.send_as_state(plan_for(n)) for n in (1, 2)]

    assert run(states()) == [State.PRESENT, None]  # None: confirmed by the row's own read


def test_a_failed_listing_means_per_mailbox_reads_and_a_warning() -> None:
    ex = FakeExchange([mailbox(1)], [grant("queue1")])
    ex.fail["send_as_grants_of"] = ServiceError("Exchange answered 500")
    listings = listings_with(ex)

    async def states() -> list[State | None]:
        return [await listings.send_as_state(plan_for(1)) for _ in range(3)]

    assert run(states()) == [None, None, None]
    assert ex.calls["send_as_grants_of"] == 1  # not tried again for every row
    assert any("Send As listing" in n and "500" in n for n in listings.notes)


def test_a_failed_shared_listing_means_no_listing_is_trusted() -> None:
    ex = FakeExchange([mailbox(1)], [grant("queue1")])
    ex.fail["list_mailboxes"] = ServiceError("timeout")
    listings = listings_with(ex)
    assert listings.identity_of(None, "queue1@contoso.com") is None
    assert run(listings.send_as_state(plan_for(1))) is None
    assert ex.calls["send_as_grants_of"] == 0
    assert any("shared-mailbox listing failed" in n for n in listings.notes)


def test_access_denied_on_a_listing_stops_the_run() -> None:
    ex = FakeExchange([mailbox(1)], [])
    ex.fail["list_mailboxes"] = AccessDeniedError("403")
    with pytest.raises(AccessDeniedError):
        listings_with(ex)


def _written(plan: Plan) -> Plan:
    d = Delegation(right=Right.SEND_AS, desired=State.PRESENT, current=State.ABSENT, outcome="applied")
    plan.delegations = [d]
    plan.verify_deferred = [d]
    return plan


def test_verification_reads_one_listing_and_confirms_only_what_it_misses() -> None:
    ex = FakeExchange([mailbox(n) for n in (1, 2, 3)], [grant("queue1"), grant("queue2")])
    listings = listings_with(ex)
    plans = [_written(plan_for(n)) for n in (1, 2, 3)]
    ex.per_mailbox["queue3@contoso.com"] = []  # the row's own read: really absent
    run(verify_send_as(FakeSession(ex), listings, plans))  # type: ignore[arg-type]
    assert ex.calls["send_as_grants_of"] == 1 and ex.calls["get_recipient_permissions"] == 1
    assert [p.delegations[0].verified for p in plans] == [State.PRESENT, State.PRESENT, State.ABSENT]
    assert [p.delegations[0].outcome for p in plans] == ["applied", "applied", "failed"]
    assert "did not keep the change" in (plans[2].delegations[0].error or "")
    assert all(p.verify_deferred == [] for p in plans)


def test_a_grant_the_listing_lags_behind_is_confirmed_per_mailbox_not_failed() -> None:
    ex = FakeExchange([mailbox(1)], [])
    listings = listings_with(ex)
    plan = _written(plan_for(1))
    ex.per_mailbox["queue1@contoso.com"] = [
        RecipientPermissionRow(TRUSTEE.user_principal_name, frozenset({"SendAs"}), True, "S-1-5-21-1")
    ]
    run(verify_send_as(FakeSession(ex), listings, [plan]))  # type: ignore[arg-type]
    assert plan.delegations[0].verified is State.PRESENT and plan.delegations[0].outcome == "applied"


def test_the_verify_batch_grows_with_the_listing_so_its_pages_stay_cheap() -> None:
    ex = FakeExchange([mailbox(1)], [grant(f"queue{n}") for n in range(2500)])
    listings = listings_with(ex)
    assert verify_batch_size(listings, 200) == 200
    run(listings.grants_of(TRUSTEE))
    assert listings.pages == {TRUSTEE.user_principal_name.casefold(): 3}
    assert verify_batch_size(listings, 200) == 300


# -- end to end: what each row costs in Exchange calls ----------------------------------------------


def _cli(sb: Sandbox, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_PROVISION_"))}
    env.update(sb.env)
    env["ESJ_PROVISION_JOURNAL"] = str(cwd / "journal.jsonl")
    return subprocess.run(
        [sys.executable, "-m", "esj_provision", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _exchange(sb: Sandbox, since: int) -> Counter[tuple[str, bool]]:
    """(cmdlet, with -Identity) of every Exchange call since ``since``."""
    return Counter(
        (c["cmdlet"], bool((c.get("parameters") or {}).get("Identity")))
        for c in sb.calls()[since:]
        if c["service"] == "exchange"
    )


def _user_reads(graph: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """How many users each ``id in (...)`` batch item asked for, and the single ``/users/{x}`` reads."""
    by_id = [unquote(c["path"]).count("'") // 2 for c in graph if unquote(c["path"]).startswith("/users?$filter=id in (")]
    singles = [unquote(c["path"]).split("?")[0] for c in graph if unquote(c["path"]).startswith("/users/")]
    return by_id, singles


def _assert_listed_users_read_by_id(graph: list[dict[str, Any]], rows: int) -> None:
    by_id, singles = _user_reads(graph)
    assert sum(by_id) == rows and max(by_id) <= 15  # every listed mailbox once, 15 to an item at most
    # The trustee, once a run: by key (its address is not its UPN here: 404), then by primary address.
    assert [s.lower() for s in singles] == ["/users/esj-svc@contoso.com"]
    by_mail = [c for c in graph if unquote(c["path"]).startswith("/users?$filter=mail eq 'esj-svc@contoso.com'")]
    assert len(by_mail) == 1
    assert len(graph) == len(by_id) + 2 < rows / 3


def test_each_row_costs_four_exchange_calls_new_one_unchanged_and_one_audited(tmp_path: Path) -> None:
    rows = 25
    with Sandbox(mailboxes=rows + 5, seed=3, outlook_concurrency=4) as sb:
        mailboxes = [f"queue{i:04d}@contoso.com" for i in range(1, rows + 1)]
        (tmp_path / "m.csv").write_text(
            "mailbox,trustee,inbound,outbound\n" + "".join(f"{m},esj-svc@contoso.com,imap,smtp\n" for m in mailboxes)
        )
        once = {("Get-Mailbox", False): 1, ("Get-TransportConfig", False): 1, ("Get-CASMailbox", True): 1}

        mark = len(sb.calls())
        r = _cli(sb, tmp_path, "bulk", "m.csv", "--out-dir", "out", "--format", "json")
        assert r.returncode == 0, r.stderr
        # Per row: read Full Access, grant it, grant Send As, read Full Access back. Per run: the
        # shared mailboxes, the trustee's Send As before and after, SMTP AUTH of tenant and trustee.
        assert _exchange(sb, mark) == Counter(
            {
                ("Get-MailboxPermission", True): 2 * rows,
                ("Add-MailboxPermission", True): rows,
                ("Add-RecipientPermission", True): rows,
                ("Get-RecipientPermission", False): 2,
                **once,
            }
        )
        graph = [c for c in sb.calls()[mark:] if c["service"] == "graph" and "batch" in c]
        assert not any("mailboxSettings" in c["path"] for c in graph)  # types from the shared listing
        _assert_listed_users_read_by_id(graph, rows)  # the listing's object ids: 15 users per item
        results = [line for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines() if line]
        assert len(results) == rows
        assert all(line.count('"verified": "present"') == 2 for line in results)  # Full Access and Send As

        for command in (["bulk", "m.csv", "--out-dir", "out"], ["audit", "m.csv", "--format", "json"]):
            mark = len(sb.calls())
            r = _cli(sb, tmp_path, *command)
            assert r.returncode in (0, 3), r.stderr  # 3: the sandbox's tenant has SMTP AUTH off (drift)
            assert _exchange(sb, mark) == Counter(
                {("Get-MailboxPermission", True): rows, ("Get-RecipientPermission", False): 1, **once}
            )
            graph = [c for c in sb.calls()[mark:] if c["service"] == "graph" and "batch" in c]
            # IMAP/SMTP rows take their type from the shared-mailbox listing in audit too: no Outlook read
            assert not any("mailboxSettings" in c["path"] for c in graph)
            _assert_listed_users_read_by_id(graph, rows)
            assert not any(c["status"] == 429 for c in graph)


def test_audit_asks_graph_the_mailbox_type_only_where_esj_uses_graph(tmp_path: Path) -> None:
    """A GRAPH row needs Graph itself to reach the mailbox (404 MailboxNotEnabledForRESTAPI is drift):
    its type comes from Graph, one Outlook batch at a time; an IMAP/SMTP row's from the listing."""
    with Sandbox(mailboxes=10, seed=3, outlook_concurrency=4) as sb:
        graph_rows = [f"queue{i:04d}@contoso.com" for i in range(1, 5)]
        imap_rows = [f"queue{i:04d}@contoso.com" for i in range(5, 11)]
        (tmp_path / "m.csv").write_text(
            "mailbox,trustee,inbound,outbound\n"
            + "".join(f"{m},esj-svc@contoso.com,graph,graph\n" for m in graph_rows)
            + "".join(f"{m},esj-svc@contoso.com,imap,smtp\n" for m in imap_rows)
        )
        mark = len(sb.calls())
        r = _cli(sb, tmp_path, "audit", "m.csv", "--format", "json")
        assert r.returncode in (0, 3), r.stderr
        graph = [c for c in sb.calls()[mark:] if c["service"] == "graph" and "batch" in c]
        read = {c["path"].split("/")[2].lower() for c in graph if "mailboxSettings" in c["path"]}
        assert read == set(graph_rows)
        assert not any(c["status"] == 429 for c in graph)


def test_audit_reads_a_send_as_the_listing_lacks_before_calling_it_drift(tmp_path: Path) -> None:
    with Sandbox(mailboxes=5) as sb:
        mailboxes = [f"queue{i:04d}@contoso.com" for i in range(1, 4)]
        (tmp_path / "m.csv").write_text(
            "mailbox,trustee,inbound,outbound\n" + "".join(f"{m},esj-svc@contoso.com,imap,ews\n" for m in mailboxes)
        )
        assert _cli(sb, tmp_path, "bulk", "m.csv", "--out-dir", "out").returncode == 0
        sb.mutate("remove-grant", mailbox=mailboxes[1], trustee="esj-svc@contoso.com", right="SendAs")
        mark = len(sb.calls())
        r = _cli(sb, tmp_path, "audit", "m.csv", "--format", "csv")
        assert r.returncode == 3, r.stderr
        report = {row["mailbox"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
        assert report[mailboxes[1]]["send_as"] == "absent" and "SendAs missing" in report[mailboxes[1]]["drift"]
        assert report[mailboxes[0]]["send_as"] == report[mailboxes[2]]["send_as"] == "present"
        per_mailbox = _exchange(sb, mark)[("Get-RecipientPermission", True)]
        assert per_mailbox == 1  # only the row the listing did not name


# -- the session's once-a-run reads ---------------------------------------------------------------


def test_a_kept_listing_is_read_once_for_every_reader_and_fresh_reads_again() -> None:
    ex = FakeExchange([mailbox(1)], [grant("queue1")])
    session = FakeSession(ex)
    sent: list[str] = []

    async def go() -> None:
        first, second = await asyncio.gather(
            session.mailbox_listing(("SharedMailbox",), keep=True, on_send=lambda: sent.append("a")),
            session.mailbox_listing(["sharedmailbox"], on_send=lambda: sent.append("b")),  # same kinds, any case
        )
        assert first == second == ex.mailboxes
        await session.send_as_listing("SVC@contoso.com", keep=True)
        await session.send_as_listing("svc@contoso.com")
        await session.send_as_listing("svc@contoso.com", fresh=True)  # verification after writes

    run(go())
    assert sent == ["a"]  # only the read that went out is counted by its caller
    assert ex.calls == Counter({"list_mailboxes": 1, "send_as_grants_of": 2})


def test_a_listing_not_kept_is_read_again_and_a_failed_one_is_forgotten() -> None:
    ex = FakeExchange([mailbox(1)], [])
    session = FakeSession(ex)

    async def go() -> None:
        await session.mailbox_listing(("SharedMailbox",))
        await session.mailbox_listing(("SharedMailbox",))  # not kept: a tenant's listing is large
        ex.fail["send_as_grants_of"] = ServiceError("busy")
        with pytest.raises(ServiceError):
            await session.send_as_listing("svc@contoso.com", keep=True)
        del ex.fail["send_as_grants_of"]
        assert await session.send_as_listing("svc@contoso.com", keep=True) == []  # tried again

    run(go())
    assert ex.calls == Counter({"list_mailboxes": 2, "send_as_grants_of": 2})
