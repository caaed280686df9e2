"""What Exchange holds for ESJ, read with the provisioning app: the probe's :class:`GrantReader`.

The probe itself never talks to Exchange's admin endpoint; when a mail protocol refuses, it asks
this reader whether the grant exists, to tell "missing" from "granted, not applied yet". The admin
endpoint shows a grant at once, while IMAP/SMTP/EWS/Graph honour it only after propagation
(probe-protocols.md §6), and Test-ServicePrincipalAuthorization bypasses the RBAC cache.
Every read that fails answers ``None`` (unknown): the probe then says it cannot tell.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from ..errors import EsjProvisionError
from ..microsoft.exchange import holds
from ..models import AppGrant
from .esj_app import Registration, cached_app

if TYPE_CHECKING:
    from ..microsoft.session import Session

log = logging.getLogger(__name__)


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def parse_authorization(rows: list[dict[str, Any]]) -> list[AppGrant]:
    """Test-ServicePrincipalAuthorization rows. ``GrantedPermissions`` is a comma-separated text in
    the rows seen so far (unconfirmed); the role name ``Application X`` also names permission X."""
    out = []
    for row in rows:
        role = str(row.get("RoleName") or "")
        raw = row.get("GrantedPermissions") or ""
        perms = {p for p in re.split(r"[,\s]+", " ".join(raw) if isinstance(raw, list) else str(raw)) if p}
        if role.startswith("Application "):
            perms.add(role.removeprefix("Application ").strip())
        out.append(AppGrant(role, frozenset(perms), _truthy(row.get("InScope"))))
    return out


class ExchangeGrantReader:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._aliases: dict[str, set[str]] = {}

    async def _account_aliases(self, account: str) -> set[str]:
        key = account.lower()
        if key not in self._aliases:
            names = {account}
            try:
                user = await self.session.graph.get_user(account)
                names |= {v for v in (user.id, user.user_principal_name, user.mail, user.display_name) if v}
            except EsjProvisionError as exc:
                log.debug("cannot resolve %s: %s", account, exc.message)
            self._aliases[key] = names
        return self._aliases[key]

    async def full_access(self, mailbox: str, *, account: str | None, app_id: str | None) -> bool | None:
        try:
            if app_id:
                app = await cached_app(self.session, app_id)
                if app.exo is None:
                    return False  # not registered in Exchange: nothing can name it
                rows = await self.session.exchange.get_mailbox_permissions(mailbox)
                return holds(rows, app.aliases(), "FullAccess")
            assert account
            aliases = await self._account_aliases(account)
            rows = await self.session.exchange.get_mailbox_permissions(mailbox)
            return holds(rows, aliases)
        except EsjProvisionError as exc:
            log.debug("cannot read Full Access on %s: %s", mailbox, exc.message)
            return None

    async def send_as(self, mailbox: str, account: str) -> bool | None:
        try:
            aliases = await self._account_aliases(account)
            rows = await self.session.exchange.get_recipient_permissions(mailbox)
            return holds(rows, aliases)
        except EsjProvisionError as exc:
            log.debug("cannot read Send As on %s: %s", mailbox, exc.message)
            return None

    async def app_grants(self, app_id: str, mailbox: str) -> list[AppGrant] | None:
        try:
            app = await cached_app(self.session, app_id)
            if app.exo is None:
                return []  # no Exchange service principal: no RBAC assignment can exist
            rows = await self.session.exchange.test_service_principal_authorization(app.exchange_identity, mailbox)
        except EsjProvisionError as exc:
            log.debug("cannot test the ESJ app's authorization on %s: %s", mailbox, exc.message)
            return None
        return parse_authorization(rows)

    async def app_registration_problem(self, app_id: str) -> tuple[str, str] | None:
        try:
            app = await cached_app(self.session, app_id)
        except EsjProvisionError as exc:
            log.debug("cannot read the ESJ app's registration: %s", exc.message)
            return None
        if app.registration in (Registration.APP_REGISTRATION_ID, Registration.OTHER_ID):
            return app.mismatch()
        return None
