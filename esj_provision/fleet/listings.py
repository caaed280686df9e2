"""Organisation-wide listings that save bulk and audit one Exchange call per row, or two.

Exchange's admin endpoint is the scarce resource: every call a row needs divides the throughput.
Two listings answer for every row at once (updates-2026-11.md §4):

* ``Get-RecipientPermission -Trustee X`` without ``-Identity`` (one paged call per trustee) lists
  every recipient X can send as, by its Exchange ``Identity``;
* ``Get-Mailbox -RecipientTypeDetails SharedMailbox`` (one request per 1,000 mailboxes) gives each
  shared mailbox's ``Identity`` with its addresses and Entra object id, to join the two.

``bulk`` and ``audit`` also take a listed mailbox's type from the listing instead of one Graph
``mailboxSettings`` read per row (an Outlook read: four in flight per app at most), and its Entra
object id, so Graph reads listed mailboxes 15 to a batch item (``/users?$filter=id in (...)``)
instead of one item each: lookups stay ahead of Exchange even when Graph is the slower service.
A plain ``Get-Mailbox`` lists no inactive or soft-deleted mailbox (those need
``-InactiveMailboxOnly``, ``-IncludeInactiveMailbox`` or ``-SoftDeletedMailbox``) and an
on-premises one is a MailUser in Exchange Online, so a listed SharedMailbox is one Graph can read.
``audit`` still asks Graph the type of rows ESJ reads over GRAPH: a mailbox Graph cannot read over
REST is drift there, whatever the listing says.

Full Access has no such listing (``Get-MailboxPermission`` needs ``-Identity``): it is still read
per mailbox. Send As falls back to the per-mailbox read whenever the listing cannot be trusted:

* the trustee was ever synced from an on-premises directory (Graph ``onPremisesSyncEnabled`` not
  null): it may have SID history, and ``-Trustee`` matches one SID only (Microsoft's note on
  Get-RecipientPermission);
* the listing failed, or the mailbox is not in the shared-mailbox listing (its Identity unknown),
  or two listed mailboxes share an Identity.

Joining the two listings by ``Identity`` assumes both cmdlets name a recipient the same way, as
they do in PowerShell (unconfirmed over InvokeCommand). A wrong join can only make the index say
"absent": bulk then sends a grant that Exchange answers "already present" (harmless), and audit
confirms every "absent" with the per-mailbox read before calling it drift, so a broken join costs
calls, never a wrong answer. "Present" is only said for a mailbox the listing named.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import AccessDeniedError, AuthError, EsjProvisionError
from ..models import Outcome, Right, State, UserTrustee

if TYPE_CHECKING:
    from ..microsoft.session import Session
    from ..models import DirectoryUser
    from ..provision.onboard import Plan

log = logging.getLogger(__name__)
SHARED = "SharedMailbox"


class FleetListings:
    """The shared-mailbox listing and each trustee's Send As listing, read once per run.

    Memory grows with the tenant's shared mailboxes (an address and an Identity each, about
    200 bytes), not with the manifest; the trustees' listings hold one Identity per grant.
    """

    def __init__(
        self, session: Session, *, confirm_absent: bool, kinds: tuple[str, ...] = (SHARED,), keep: bool = False
    ) -> None:
        self._session = session
        # audit: an "absent" from the listing is read again per mailbox before it is reported.
        self.confirm_absent = confirm_absent
        # audit --unlisted: the mailbox kinds its search lists; both listings read here are kept
        # for it (``keep``) instead of being read again.
        # Only the shared mailboxes among them are indexed (the rows' type and Send As join).
        self._kinds = kinds
        self._keep = keep
        self._by_address: dict[str, str] = {}  # casefolded SMTP address -> Identity (casefolded)
        self._by_object_id: dict[str, str] = {}  # Entra object id -> Identity
        self._object_id: dict[str, str] = {}  # Identity -> Entra object id (the reverse)
        self._ambiguous: set[str] = set()
        self._shared_loaded = False
        self._grants: dict[str, asyncio.Future[frozenset[str] | None]] = {}
        self.pages: dict[str, int] = {}  # pages of each trustee's last listing, for the verify batch size
        self.notes: list[str] = []  # why a listing is not used, for the run's warnings

    # -- shared mailboxes ------------------------------------------------------------------------

    async def load_shared(self) -> None:
        """Read the shared-mailbox listing; on failure every row reads its Send As per mailbox."""
        try:
            mailboxes = await self._session.mailbox_listing(self._kinds, keep=self._keep)
        except (AccessDeniedError, AuthError):
            raise  # every per-row read would fail the same way: stop and say so
        except EsjProvisionError as exc:
            self.notes.append(f"shared-mailbox listing failed ({exc.message}); each mailbox was read on its own")
            return
        seen: set[str] = set()
        for m in mailboxes:
            if len(self._kinds) > 1 and m.recipient_type_details.casefold() != SHARED.casefold():
                continue
            name = m.identity.casefold()
            if not name:
                continue
            if name in seen:
                self._ambiguous.add(name)
            seen.add(name)
            addresses = {m.primary_smtp_address}
            addresses |= {a.split(":", 1)[1] for a in m.email_addresses if a.lower().startswith("smtp:")}
            for address in addresses:
                if address:
                    self._by_address[address.casefold()] = name
            if m.external_directory_object_id:
                self._by_object_id[m.external_directory_object_id.casefold()] = name
                self._object_id[name] = m.external_directory_object_id
        self._shared_loaded = True

    def is_shared(self, address: str) -> bool:
        """The address is a listed shared mailbox (bulk then does not ask Graph its type)."""
        return address.strip().casefold() in self._by_address

    def object_id_of(self, address: str) -> str | None:
        """The listed mailbox's Entra object id (``ExternalDirectoryObjectId``), so Graph can read
        many of them with one ``id in (...)`` filter; None when the listing cannot name it for sure."""
        name = self._by_address.get(address.strip().casefold())
        if name is None or name in self._ambiguous:
            return None
        return self._object_id.get(name)

    def identity_of(self, user: DirectoryUser | None, address: str) -> str | None:
        """The mailbox's Exchange Identity, or None when the listing cannot name it for sure."""
        name = None
        if user is not None and user.id:
            name = self._by_object_id.get(user.id.casefold())
        if name is None:
            name = self._by_address.get(address.strip().casefold())
        if name is None or name in self._ambiguous:
            return None
        return name

    # -- Send As per trustee ---------------------------------------------------------------------

    def trusted_for(self, trustee: DirectoryUser | None) -> bool:
        """Whether this trustee's Send As listing can be relied on (no possible SID history)."""
        return self._shared_loaded and trustee is not None and trustee.on_premises_sync_enabled is None

    async def _list(self, upn: str, *, fresh: bool = False) -> frozenset[str] | None:
        try:
            grants = await self._session.send_as_listing(upn, fresh=fresh, keep=self._keep)
        except (AccessDeniedError, AuthError):
            raise
        except EsjProvisionError as exc:
            self.notes.append(f"Send As listing of {upn} failed ({exc.message}); read per mailbox instead")
            return None
        names = frozenset(
            g.mailbox.casefold()
            for g in grants
            if g.allow and not g.is_inherited and Right.SEND_AS.value.casefold() in {r.casefold() for r in g.access_rights}
        )
        self.pages[upn.casefold()] = max(1, -(-len(grants) // 1000))
        return names

    async def grants_of(self, trustee: DirectoryUser) -> frozenset[str] | None:
        """Identities the trustee can send as (listed once per run), or None: read per mailbox."""
        if not self.trusted_for(trustee):
            return None
        key = trustee.user_principal_name.casefold()
        read = self._grants.get(key)
        if read is None:
            read = self._grants[key] = asyncio.ensure_future(self._list(trustee.user_principal_name))
        return await asyncio.shield(read)

    async def relist(self, trustee: DirectoryUser) -> frozenset[str] | None:
        """A fresh listing (verification after grants); it also replaces the cached one."""
        key = trustee.user_principal_name.casefold()
        read = self._grants[key] = asyncio.ensure_future(self._list(trustee.user_principal_name, fresh=True))
        return await asyncio.shield(read)

    def covers(self, plan: Plan) -> bool:
        """The row's Send As can be read and verified through its trustee's listing."""
        return (
            isinstance(plan.request.trustee, UserTrustee)
            and self.trusted_for(plan.trustee)
            and self.identity_of(plan.mailbox, plan.mailbox_id) is not None
        )

    async def send_as_state(self, plan: Plan) -> State | None:
        """Send As from the trustee's listing; None when it must be read per mailbox."""
        if not self.covers(plan):
            return None
        assert plan.trustee is not None
        names = await self.grants_of(plan.trustee)
        if names is None:
            return None
        if self.identity_of(plan.mailbox, plan.mailbox_id) in names:
            return State.PRESENT
        return None if self.confirm_absent else State.ABSENT


async def verify_send_as(session: Session, listings: FleetListings, plans: list[Plan]) -> None:
    """Read back the Send As grants of many rows with one fresh listing per trustee, instead of
    one read per mailbox. A grant the listing does not show is read per mailbox before it is called
    failed (the listing may lag, or the Identity join may not hold)."""
    from ..provision.onboard import gather_all, read_state

    trustees: dict[str, DirectoryUser] = {}
    for plan in plans:
        if plan.trustee is not None:
            trustees.setdefault(plan.trustee.user_principal_name.casefold(), plan.trustee)
    listed = dict(zip(trustees, await gather_all(*(listings.relist(t) for t in trustees.values()))))
    confirm: list[Plan] = []
    for plan in plans:
        assert plan.trustee is not None
        names = listed.get(plan.trustee.user_principal_name.casefold())
        if names is not None and listings.identity_of(plan.mailbox, plan.mailbox_id) in names:
            for d in plan.verify_deferred:
                d.verified = State.PRESENT
        else:
            confirm.append(plan)
    states = await gather_all(*(read_state(session, plan, Right.SEND_AS) for plan in confirm))
    for plan, (state, error) in zip(confirm, states):
        for d in plan.verify_deferred:
            d.verified = state
            if state is State.UNKNOWN:
                d.error = error
            elif state is not d.desired:
                d.outcome = Outcome.FAILED
                d.error = f"read back {state.value} after the write; Exchange did not keep the change"
    for plan in plans:
        plan.verify_deferred = []


def verify_batch_size(listings: FleetListings, floor: int) -> int:
    """Rows whose Send As waits for one verifying listing: enough that the listing's pages cost
    at most about one call per hundred rows."""
    return max(floor, 100 * max(listings.pages.values(), default=1))
