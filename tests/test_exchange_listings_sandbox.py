"""The organisation-wide listings bulk and audit build on (issues 14 and 15), against the sandbox
tenant: Send As of a trustee in one paged call, mailboxes by type in pages, and the seeded
forgotten grant (the ESJ account still holding returns@, which no manifest lists)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from esj_provision.config import load_settings
from esj_provision.microsoft.exchange import ExchangeClient, holds
from esj_provision.microsoft.session import Session
from esj_provision.sandbox import Sandbox

T = TypeVar("T")
SVC = "esj-svc@contoso.com"


def with_exchange(sb: Sandbox, tmp_path: Path, fn: Callable[[ExchangeClient], Awaitable[T]]) -> T:
    settings = load_settings(environ=sb.env, dotenv_path=tmp_path / "none")

    async def go() -> T:
        async with Session(settings) as session:
            return await fn(session.exchange)

    return asyncio.run(go())


def test_send_as_of_the_esj_account_is_one_paged_call_and_finds_the_forgotten_grant(tmp_path: Path) -> None:
    with Sandbox(page_size=1) as sb:  # one row a page: the listing must follow nextLink
        with_exchange(sb, tmp_path, lambda ex: ex.add_recipient_permission("support@contoso.com", SVC))
        mark = len(sb.calls())
        grants = with_exchange(sb, tmp_path, lambda ex: ex.send_as_grants_of(SVC))
        calls = [c for c in sb.calls()[mark:] if c["service"] == "exchange"]
    assert sorted(g.mailbox for g in grants) == ["returns", "support"]
    assert all(holds([g.row], [SVC, "esj-svc@contoso.onmicrosoft.com"]) for g in grants)
    # adele's Send As on sales is another trustee's: not listed. Two pages, no Identity.
    assert [c["cmdlet"] for c in calls] == ["Get-RecipientPermission"] * 2
    assert all("Identity" not in c["parameters"] and c["parameters"]["ResultSize"] == "Unlimited" for c in calls)


def test_list_mailboxes_pages_shared_and_user_mailboxes(tmp_path: Path) -> None:
    with Sandbox(mailboxes=1500) as sb:  # two pages of 1,000
        mark = len(sb.calls())
        shared = with_exchange(sb, tmp_path, lambda ex: ex.list_mailboxes())
        pages = [c for c in sb.calls()[mark:] if c["cmdlet"] == "Get-Mailbox"]
        both = with_exchange(sb, tmp_path, lambda ex: ex.list_mailboxes(("SharedMailbox", "UserMailbox")))
    assert len(pages) == 2
    addresses = [m.primary_smtp_address for m in shared]
    assert len(addresses) == len(set(addresses)) == 1505  # 5 seeded shared mailboxes + 1,500 generated
    assert {"support@contoso.com", "returns@contoso.com", "queue1500@contoso.com"} <= set(addresses)
    assert {m.recipient_type_details for m in shared} == {"SharedMailbox"}
    assert all(m.external_directory_object_id for m in shared)
    users = {m.primary_smtp_address for m in both if m.recipient_type_details == "UserMailbox"}
    assert users == {"adele@contoso.com", "esj-svc@contoso.com", "old-svc@contoso.com"}
    assert "room1@contoso.com" not in {m.primary_smtp_address for m in both}


def test_the_sample_tenant_holds_exactly_one_unlisted_grant_for_the_esj_account(tmp_path: Path) -> None:
    """The traps of the unlisted-grant search: SELF, inherited (Allow and Deny), an explicit Deny
    for the ESJ account, other trustees' grants. Only returns@ is the ESJ account's."""
    aliases = [SVC, "esj-svc@contoso.onmicrosoft.com"]
    with Sandbox() as sb:

        async def scan(ex: ExchangeClient) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for mbx in await ex.list_mailboxes():
                rows = await ex.get_mailbox_permissions(mbx.primary_smtp_address)
                out[mbx.primary_smtp_address] = rows
            return out

        rows = with_exchange(sb, tmp_path, scan)
    full_access = sorted(m for m, r in rows.items() if holds(r, aliases))
    assert full_access == ["returns@contoso.com"]
    legacy = rows["legacy@contoso.com"]
    assert any(r.deny and r.user == "esj-svc@contoso.onmicrosoft.com" for r in legacy)  # named, but denied
    for mbx_rows in rows.values():
        assert any(r.user == "NT AUTHORITY\\SELF" for r in mbx_rows)
        assert any(r.is_inherited and r.deny for r in mbx_rows) and any(r.is_inherited and not r.deny for r in mbx_rows)
    assert holds(rows["sales@contoso.com"], ["adele@contoso.com", "adele@contoso.onmicrosoft.com"])
    assert holds(rows["billing@contoso.com"], ["old-svc@contoso.onmicrosoft.com"])
