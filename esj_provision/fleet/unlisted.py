"""Who else can ESJ's trustees open? Full Access and Send As grants the manifest does not list.

``audit`` asks "is every mailbox of the manifest connected?"; a security review asks the other way
round: which mailboxes can ESJ's service account (or ESJ's app) open or send as that nobody listed.
Mailboxes leave ESJ, grants stay. This module finds those grants, read-only; :mod:`.prune` removes
them.

What is read, and what it costs (reference updates-2026-11 §4):

* **Send As**: one paged ``Get-RecipientPermission -Trustee X -ResultSize Unlimited`` per trustee,
  without ``-Identity`` (Microsoft's Example 1): every Send As grant of X in the organisation. When
  that listing fails (or cannot be trusted, see ``ExchangeClient.send_as_grants_of``), Send As of
  that trustee is read per mailbox instead, and the report says so.
* **Full Access**: ``Get-MailboxPermission`` has a mandatory ``-Identity``: there is no
  organisation-wide listing, so it is one call per mailbox, over the paged ``Get-Mailbox
  -RecipientTypeDetails SharedMailbox`` listing (plus ``UserMailbox`` on request). Every row of a
  mailbox comes back in that one call, whatever the number of trustees looked for. A mailbox the
  manifest lists for the only trustee there is cannot hold an unlisted grant and is not read.

A grant counts only from an explicit, allowing row that names the trustee: ``NT AUTHORITY\\SELF``,
inherited rows, Deny rows and other principals' rows never do (:func:`holds`). A (mailbox, trustee)
pair is *listed* when the manifest's row for that mailbox names that trustee; anything else the
trustee holds is unlisted, including a mailbox the manifest lists for another trustee (ESJ moved
it from the service account to its app, say, and the account kept its grant).

Exchange's permission rows name a group, not its members, and nothing here expands group
membership (Microsoft does not document that ``-Trustee`` does): a trustee's access *through* a
group is therefore not seen; every grant found is ``direct``, and the row's principal is shown as
Exchange wrote it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import AccessDeniedError, AppLookupError, AuthError, EsjProvisionError, NotFoundError
from ..microsoft.exchange import holds
from ..models import DirectoryUser, ExchangeMailbox, PermissionRow, RecipientPermissionRow, Right, SendAsGrant, is_guid
from .listings import SHARED

if TYPE_CHECKING:
    from ..microsoft.session import Session
    from ..provision.esj_app import AppIdentity
    from .manifest import ManifestRow

USER = "UserMailbox"
RIGHT_TEXT = {Right.FULL_ACCESS: "Full Access", Right.SEND_AS: "Send As"}


@dataclass
class TrusteeRef:
    """A trustee looked for: a service account, or an ESJ app's Exchange service principal."""

    ref: str  # as the admin gave it (address or client id)
    kind: Literal["user", "app"]
    exchange_id: str = ""  # what Exchange takes as -User / -Trustee: the UPN, or the SP's identity
    aliases: frozenset[str] = frozenset()  # every form a permission row may show it as (lower-case)
    registered: bool = True  # an app without an Exchange service principal can hold nothing
    send_as_listed: bool = False  # its Send As came from the trustee-wide listing
    user: DirectoryUser | None = None  # user trustee: the directory user, for the writes
    app: AppIdentity | None = None  # the AppIdentity (app trustee), for the writes
    other_refs: set[str] = field(default_factory=set)  # other spellings in the manifest

    @property
    def key(self) -> str:
        return (self.exchange_id or self.ref).casefold()

    def names(self, ref: str) -> bool:
        r = ref.casefold()
        return r == self.ref.casefold() or r in {o.casefold() for o in self.other_refs} or r in self.aliases


@dataclass(frozen=True)
class Grant:
    """One right a trustee holds on a mailbox, found in Exchange."""

    mailbox: str  # the mailbox's primary SMTP address (what the removal names)
    mailbox_kind: str  # RecipientTypeDetails
    trustee: str  # the trustee as the admin gave it
    trustee_kind: str  # user | app
    exchange_id: str  # the trustee as Exchange takes it (-User / -Trustee)
    right: Right
    shown_as: str  # the principal as Exchange's row names it
    via: str = "direct"
    listed_for: str | None = None  # the manifest's trustee for this mailbox, when it lists another one

    def to_dict(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "mailbox_kind": self.mailbox_kind,
            "trustee": self.trustee,
            "trustee_kind": self.trustee_kind,
            "right": self.right.value,
            "via": self.via,
            "shown_as": self.shown_as,
            "listed_for": self.listed_for,
        }


@dataclass
class Discovery:
    """What the trustees hold outside the manifest (everything they hold, without one)."""

    trustees: list[TrusteeRef] = field(default_factory=list)
    kinds: tuple[str, ...] = (SHARED,)
    mailboxes_listed: int = 0  # mailboxes of those kinds in the tenant
    mailboxes_read: int = 0  # of them, read for Full Access
    grants: list[Grant] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what could not be read: the answer is incomplete
    notes: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # Exchange cmdlets sent, by name

    @property
    def complete(self) -> bool:
        return not self.errors

    def count(self, cmdlet: str) -> None:
        self.calls[cmdlet] = self.calls.get(cmdlet, 0) + 1

    def by_pair(self) -> list[tuple[str, str, list[Grant]]]:
        """Grants grouped per (mailbox, trustee), in a stable order."""
        pairs: dict[tuple[str, str], list[Grant]] = {}
        for g in sorted(self.grants, key=lambda g: (g.mailbox.lower(), g.trustee.lower(), g.right.value)):
            pairs.setdefault((g.mailbox, g.trustee), []).append(g)
        return [(m, t, gs) for (m, t), gs in pairs.items()]

    def summary(self) -> dict[str, Any]:
        return {
            "trustees": [t.ref for t in self.trustees],
            "mailbox_kinds": list(self.kinds),
            "mailboxes_listed": self.mailboxes_listed,
            "mailboxes_read": self.mailboxes_read,
            "grants": len(self.grants),
            "mailboxes_with_grants": len({g.mailbox.lower() for g in self.grants}),
            "complete": self.complete,
            "exchange_calls": dict(sorted(self.calls.items())),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "grants": [g.to_dict() for g in sorted(self.grants, key=_grant_order)],
            "errors": self.errors,
            "notes": self.notes,
        }


def _grant_order(g: Grant) -> tuple[str, str, str]:
    return (g.mailbox.lower(), g.trustee.lower(), g.right.value)


# --------------------------------------------------------------------------------------------
# Trustees
# --------------------------------------------------------------------------------------------


@dataclass
class Trustees:
    found: list[TrusteeRef] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # could not be read: their grants are unknown
    notes: list[str] = field(default_factory=list)  # gone: nothing to look for


async def resolve_trustees(session: Session, refs: Iterable[str], *, strict: bool) -> Trustees:
    """Each distinct trustee, with what Exchange calls it and how rows may show it.

    ``strict`` (``audit --trustee``): a trustee that does not exist or cannot be read is an error
    raised at once. Otherwise (a manifest's trustees) a trustee that is gone is a note (the row
    audit reports "trustee gone"; Exchange shows a deleted principal's entries by SID only, and no
    removal could name it), and one that could not be read an error: its grants are unknown.
    """
    from ..provision.esj_app import cached_app

    distinct = list(dict.fromkeys(r.strip() for r in refs if r and r.strip()))
    users = [r for r in distinct if not is_guid(r)]
    apps = [r.lower() for r in distinct if is_guid(r)]
    result_set = Trustees()
    out: dict[str, TrusteeRef] = {}
    found = await session.graph.lookup_many(users, with_purpose=False) if users else {}
    for ref in users:
        result = found.get(ref)
        if result is None or result.user is None:
            err = result.error if result else None
            if strict:
                if err is None or isinstance(err, NotFoundError):
                    raise NotFoundError(f"account {ref} was not found in the tenant", hint="check the address")
                raise err
            if err is None or isinstance(err, NotFoundError):
                result_set.notes.append(f"trustee {ref} was not found in the tenant: it holds nothing by name")
            else:
                result_set.errors.append(f"trustee {ref}: {err.message}; its grants were not looked for")
            continue
        user = result.user
        aliases = {v.lower() for v in (ref, user.user_principal_name, user.mail, user.id, user.display_name) if v}
        t = TrusteeRef(ref, "user", user.user_principal_name, frozenset(aliases), user=user)
        _merge(out, t)
    for ref in apps:
        try:
            ident = await cached_app(session, ref)
        except (AccessDeniedError, AuthError):
            raise
        except (AppLookupError, EsjProvisionError) as exc:
            if strict:
                raise
            result_set.errors.append(f"ESJ app {ref}: {exc.message}; its grants were not looked for")
            continue
        if ident.sp is None:
            msg = f"ESJ app {ref} has no enterprise application (service principal) in this tenant"
            if strict:
                raise NotFoundError(msg, hint="check the client id")
            result_set.notes.append(msg + ": it holds nothing in Exchange")
            continue
        t = TrusteeRef(
            ref, "app", ident.exchange_identity, frozenset(ident.aliases()), registered=ident.exo is not None, app=ident
        )
        _merge(out, t)
    result_set.found = list(out.values())
    return result_set


def _merge(out: dict[str, TrusteeRef], t: TrusteeRef) -> None:
    """Two spellings of one account in a manifest (its address, its UPN) are one trustee."""
    have = out.get(t.key)
    if have is None:
        out[t.key] = t
    else:
        have.other_refs.add(t.ref)


# --------------------------------------------------------------------------------------------
# Which (mailbox, trustee) pairs the manifest lists
# --------------------------------------------------------------------------------------------


class Listing:
    """The manifest's (mailbox, trustee) pairs, matched to Exchange's mailboxes.

    A manifest names a mailbox by an address: its primary address, one of its proxy addresses, or
    its UPN. Exchange's listing gives every proxy address; an address matching none (a UPN that is
    no proxy address) is resolved through Graph to the object id, which Exchange shows as
    ExternalDirectoryObjectId. A manifest address that cannot be resolved at all (Graph failed)
    leaves the listing unknown: nothing may then be called unlisted, let alone removed.
    """

    def __init__(self, rows: Iterable[ManifestRow] = ()) -> None:
        self.trustee_of: dict[str, str] = {}  # manifest mailbox address (casefold) -> trustee ref
        for row in rows:
            self.trustee_of[row.mailbox.casefold()] = row.trustee.ref
        self._by_object_id: dict[str, str] = {}  # Entra object id -> manifest address (casefold)
        self.unresolved: list[str] = []

    def __len__(self) -> int:
        return len(self.trustee_of)

    def trustee_refs(self) -> list[str]:
        return list(dict.fromkeys(self.trustee_of.values()))

    async def resolve(self, session: Session, mailboxes: list[ExchangeMailbox]) -> None:
        """Match every manifest address to Exchange's mailboxes; look up in Graph those that match
        no proxy address (usually none: one batch of 20 per 20 such addresses)."""
        known = {k for mb in mailboxes for k in _mailbox_keys(mb)}
        missing = [a for a in self.trustee_of if a not in known]
        if not missing:
            return
        found = await session.graph.lookup_many(missing, with_purpose=False)
        for address in missing:
            result = found.get(address)
            if result is not None and result.user is not None:
                self._by_object_id[result.user.id.casefold()] = address
            elif result is not None and not isinstance(result.error, NotFoundError):
                # Not "gone": unreadable. Which mailbox it is stays unknown.
                self.unresolved.append(address)

    def listed_trustees(self, mb: ExchangeMailbox) -> tuple[str, ...]:
        """The manifest's trustees for this mailbox (none when the manifest does not list it). More
        than one when the manifest names the mailbox twice, by two of its addresses."""
        addresses = [k for k in _mailbox_keys(mb) if k in self.trustee_of]
        oid = (mb.external_directory_object_id or "").casefold()
        if oid and oid in self._by_object_id:
            addresses.append(self._by_object_id[oid])
        return tuple(dict.fromkeys(self.trustee_of[a] for a in sorted(addresses)))


def _mailbox_keys(mb: ExchangeMailbox) -> set[str]:
    keys = {mb.primary_smtp_address.casefold()} if mb.primary_smtp_address else set()
    for a in mb.email_addresses:
        scheme, _, address = a.partition(":")
        if address and scheme.lower() == "smtp":
            keys.add(address.casefold())
    return keys


def _mailbox_id(mb: ExchangeMailbox) -> str:
    return mb.primary_smtp_address or mb.identity


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def _first_match(rows: Iterable[PermissionRow | RecipientPermissionRow], t: TrusteeRef, right: Right) -> str | None:
    """The principal as the first effective row granting ``right`` to ``t`` names it, else None.
    :func:`holds` decides what counts (never SELF, inherited, Deny or another principal)."""
    for row in rows:
        if holds([row], t.aliases, right.value):
            return row.user if isinstance(row, PermissionRow) else row.trustee
    return None


async def _send_as_listings(
    session: Session, trustees: list[TrusteeRef], found: Discovery
) -> dict[str, list[tuple[str, str]]]:
    """Per trustee key: (recipient identity, principal shown) of every effective Send As grant,
    from the trustee-wide listing. A trustee whose listing fails is left out (read per mailbox)."""

    async def one(t: TrusteeRef) -> tuple[TrusteeRef, list[tuple[str, str]] | EsjProvisionError]:
        try:
            # Read once a run: audit --unlisted has read it already for the manifest's rows.
            grants = await session.send_as_listing(t.exchange_id, on_send=lambda: found.count("Get-RecipientPermission"))
        except (AccessDeniedError, AuthError):
            raise
        except EsjProvisionError as exc:
            return t, exc
        _learn_sid(t, grants)
        return t, [(g.mailbox, g.trustee) for g in grants if holds([g.row], t.aliases, Right.SEND_AS.value)]

    out: dict[str, list[tuple[str, str]]] = {}
    listable = []
    for t in trustees:
        if t.registered and _may_have_sid_history(t):
            found.notes.append(
                f"Send As of {t.ref}: read per mailbox (the account is synced from an on-premises directory and "
                "may have SID history, which the organisation-wide listing does not match)"
            )
        elif t.registered:
            listable.append(t)
    for t, result in await asyncio.gather(*(one(t) for t in listable)):
        if isinstance(result, EsjProvisionError):
            found.notes.append(
                f"Send As of {t.ref}: the organisation-wide listing failed ({result.message}); read per mailbox instead"
            )
            continue
        t.send_as_listed = True
        out[t.key] = result
    return out


def _may_have_sid_history(t: TrusteeRef) -> bool:
    """``Get-RecipientPermission -Trustee`` matches one SID: Microsoft notes that a trustee with SID
    history can be missed. Only an account synced from an on-premises directory can have one
    (Graph ``onPremisesSyncEnabled`` not null; the /users lookups select it)."""
    return t.kind == "user" and t.user is not None and t.user.on_premises_sync_enabled is not None


def _learn_sid(t: TrusteeRef, grants: list[SendAsGrant]) -> None:
    """Exchange shows a principal it cannot resolve by its SID alone. The listing's rows that name
    the trustee by its UPN or address carry its SID: that SID is the trustee too. (A display name
    is not unique, so a row matched only by it teaches nothing.)"""
    strong = {v.casefold() for v in (t.exchange_id, t.ref, getattr(t.user, "mail", None)) if v}
    sids = {g.trustee_sid.casefold() for g in grants if g.trustee_sid and g.trustee.casefold() in strong}
    if len(sids) == 1:
        t.aliases = t.aliases | sids


class _Scope:
    """The mailboxes looked at, and for each what the manifest lists there."""

    def __init__(self, mailboxes: list[ExchangeMailbox], listing: Listing) -> None:
        self.mailboxes = mailboxes
        self._listed = {id(mb): listing.listed_trustees(mb) for mb in mailboxes}
        # Send As rows name the recipient by its Identity (Exchange's Name, as Get-Mailbox's
        # Identity; unconfirmed that the two always agree), so every name a mailbox has leads to it.
        self._by_name: dict[str, ExchangeMailbox | None] = {}
        for mb in mailboxes:
            names = {mb.identity.casefold(), *_mailbox_keys(mb)}
            if mb.external_directory_object_id:
                names.add(mb.external_directory_object_id.casefold())
            for k in names - {""}:
                # A name two mailboxes share is ambiguous: never guess which one.
                self._by_name[k] = None if k in self._by_name and self._by_name[k] is not mb else mb

    def unlisted(self, mb: ExchangeMailbox, t: TrusteeRef) -> bool:
        return not any(t.names(ref) for ref in self._listed[id(mb)])

    def listed_for(self, mb: ExchangeMailbox) -> str | None:
        return "; ".join(self._listed[id(mb)]) or None

    def recipient(self, identity: str) -> tuple[bool, ExchangeMailbox | None]:
        """(known, mailbox): unknown outside the listing; known but None when ambiguous."""
        key = identity.casefold()
        return key in self._by_name, self._by_name.get(key)

    def grant(self, mb: ExchangeMailbox, t: TrusteeRef, right: Right, shown: str) -> Grant:
        return Grant(_mailbox_id(mb), mb.recipient_type_details, t.ref, t.kind, t.exchange_id, right, shown,
                     listed_for=self.listed_for(mb))  # fmt: skip


async def discover(
    session: Session,
    trustees: list[TrusteeRef],
    listing: Listing,
    *,
    kinds: tuple[str, ...] = (SHARED,),
    concurrency: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> Discovery:
    """Every Full Access and Send As grant of ``trustees`` on mailboxes of ``kinds`` that
    ``listing`` does not list. Read-only. Errors of single reads are collected in ``errors``;
    a refused app (401/403) stops the whole discovery."""
    found = Discovery(trustees=list(trustees), kinds=kinds)
    active = [t for t in trustees if t.registered]
    for t in trustees:
        if not t.registered:
            found.notes.append(f"ESJ app {t.ref} is not registered in Exchange: it can hold no grant")
    mailboxes, send_as = await asyncio.gather(
        session.mailbox_listing(kinds, on_send=lambda: found.count("Get-Mailbox")),
        _send_as_listings(session, active, found),
    )
    found.mailboxes_listed = len(mailboxes)
    await listing.resolve(session, mailboxes)
    found.errors += [f"manifest mailbox {a}: could not be resolved in Graph" for a in listing.unresolved]
    scope = _Scope(mailboxes, listing)
    _send_as_grants(scope, active, send_as, found)
    # Full Access (and Send As of trustees without a listing), per mailbox that can hold an
    # unlisted grant of some trustee.
    to_read = [mb for mb in mailboxes if any(scope.unlisted(mb, t) for t in active)]
    found.mailboxes_read = len(to_read)
    await _read_mailboxes(session, scope, to_read, active, found, concurrency=concurrency, on_progress=on_progress)
    found.grants.sort(key=_grant_order)
    return found


def _send_as_grants(
    scope: _Scope, trustees: list[TrusteeRef], send_as: dict[str, list[tuple[str, str]]], found: Discovery
) -> None:
    """The listings' Send As grants on unlisted mailboxes of the scope; those on other recipients
    (a distribution group, a mailbox kind not looked at) are named in a note."""
    outside: list[str] = []
    for t in trustees:
        for identity, shown in send_as.get(t.key, []):
            known, mb = scope.recipient(identity)
            if not known:
                outside.append(f"{identity} ({t.ref})")
            elif mb is None:
                found.errors.append(f"Send As of {t.ref} on {identity}: more than one mailbox has that name")
            elif scope.unlisted(mb, t):
                found.grants.append(scope.grant(mb, t, Right.SEND_AS, shown))
    if outside:
        found.notes.append(
            f"{len(outside)} Send As grant(s) on recipients outside the {'/'.join(found.kinds)} listing, not "
            "reported: " + ", ".join(sorted(outside)[:20]) + (" ..." if len(outside) > 20 else "")
        )


async def _read_mailboxes(
    session: Session,
    scope: _Scope,
    mailboxes: list[ExchangeMailbox],
    trustees: list[TrusteeRef],
    found: Discovery,
    *,
    concurrency: int,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """One Get-MailboxPermission per mailbox (every row: one call serves every trustee), plus one
    Get-RecipientPermission where some trustee's Send As listing failed; ``concurrency`` at once,
    paced by the transport like every bulk read."""
    send_as_trustees = [t for t in trustees if not t.send_as_listed]

    async def read(mb: ExchangeMailbox) -> None:
        ident = _mailbox_id(mb)
        try:
            found.count("Get-MailboxPermission")
            rows = await session.exchange.get_mailbox_permissions(ident)
            rrows: list[RecipientPermissionRow] = []
            if send_as_trustees:
                found.count("Get-RecipientPermission")
                rrows = await session.exchange.get_recipient_permissions(ident)
        except (AccessDeniedError, AuthError):
            raise
        except NotFoundError:
            found.notes.append(f"{ident}: gone since the mailbox listing; nothing to report")
            return
        except EsjProvisionError as exc:
            found.errors.append(f"{ident}: {exc.message}")
            return
        for t in trustees:
            if not scope.unlisted(mb, t):
                continue
            shown = _first_match(rows, t, Right.FULL_ACCESS)
            if shown is not None:
                found.grants.append(scope.grant(mb, t, Right.FULL_ACCESS, shown))
            if t in send_as_trustees:
                shown = _first_match(rrows, t, Right.SEND_AS)
                if shown is not None:
                    found.grants.append(scope.grant(mb, t, Right.SEND_AS, shown))

    await _each(mailboxes, read, concurrency=concurrency, on_progress=on_progress)


async def _each(
    items: list[ExchangeMailbox],
    fn: Callable[[ExchangeMailbox], Awaitable[None]],
    *,
    concurrency: int,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """``fn`` on every item, ``concurrency`` at once, reporting (done, total) after each. An error
    stops every worker, and each is awaited, so nothing runs on a client about to close."""
    queue: asyncio.Queue[ExchangeMailbox] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    done, total = 0, len(items)
    if on_progress is not None:
        on_progress(0, total)

    async def worker() -> None:
        nonlocal done
        while not queue.empty():
            await fn(queue.get_nowait())
            done += 1
            if on_progress is not None:
                on_progress(done, total)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(concurrency, total or 1)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# Entry points and reports
# --------------------------------------------------------------------------------------------


async def trustee_access(
    session: Session,
    trustee: str,
    *,
    kinds: tuple[str, ...] = (SHARED,),
    concurrency: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> Discovery:
    """``audit --trustee``: every mailbox of ``kinds`` the trustee can open or send as."""
    trustees = await resolve_trustees(session, [trustee], strict=True)
    return await discover(
        session, trustees.found, Listing(), kinds=kinds, concurrency=concurrency, on_progress=on_progress
    )


async def find_unlisted(
    session: Session,
    path: Path,
    *,
    kinds: tuple[str, ...] = (SHARED,),
    concurrency: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> Discovery:
    """``audit MANIFEST --unlisted``: the manifest trustees' grants the manifest does not list.
    A trustee that cannot be resolved is an error of the discovery (the row audit says why)."""
    from .manifest import rows

    listing = Listing(rows(path))
    trustees = await resolve_trustees(session, listing.trustee_refs(), strict=False)
    found = await discover(
        session, trustees.found, listing, kinds=kinds, concurrency=concurrency, on_progress=on_progress
    )
    found.errors[:0] = trustees.errors
    found.notes[:0] = trustees.notes
    return found


def audit_csv_rows(found: Discovery) -> list[list[str]]:
    """The unlisted pairs in the audit CSV's columns (line, mailbox, trustee, inbound, outbound,
    full_access, send_as, status, drift, errors): no line, no protocols, status ``unlisted``."""
    out = []
    for row in pair_rows(found):
        why = f"listed for {row['listed_for']}" if row["listed_for"] else "mailbox not in the manifest"
        out.append(
            ["", row["mailbox"], row["trustee"], "", "", row["full_access"], row["send_as"], "unlisted", why, ""]
        )
    out += [["", "", "", "", "", "", "", "unknown", "", e] for e in found.errors]
    return out


PAIR_COLUMNS = ("mailbox", "mailbox_kind", "trustee", "full_access", "send_as", "via", "shown_as", "listed_for")


def pair_rows(found: Discovery) -> list[dict[str, str]]:
    """One row per (mailbox, trustee): which of the two rights it holds, and how Exchange shows it."""
    out = []
    for mailbox, trustee, grants in found.by_pair():
        rights = {g.right for g in grants}
        out.append(
            {
                "mailbox": mailbox,
                "mailbox_kind": grants[0].mailbox_kind,
                "trustee": trustee,
                "full_access": "present" if Right.FULL_ACCESS in rights else "-",
                "send_as": "present" if Right.SEND_AS in rights else "-",
                "via": grants[0].via,
                "shown_as": "; ".join(dict.fromkeys(g.shown_as for g in grants)),
                "listed_for": grants[0].listed_for or "",
            }
        )
    return out


def render_json(found: Discovery) -> str:
    import json

    return json.dumps(found.to_dict(), indent=2, ensure_ascii=False) + "\n"


def render_csv(found: Discovery) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PAIR_COLUMNS)
    for row in pair_rows(found):
        writer.writerow([row[c] for c in PAIR_COLUMNS])
    return buf.getvalue()


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_section(found: Discovery, title: str, level: str = "##") -> list[str]:
    s = found.summary()
    lines = [
        f"{level} {title}",
        "",
        f"{s['grants']} grant(s) on {s['mailboxes_with_grants']} mailbox(es); {s['mailboxes_listed']} "
        f"{'/'.join(found.kinds)} mailbox(es) in the tenant, {s['mailboxes_read']} read for Full Access."
        + ("" if found.complete else " **Incomplete**: some reads failed (below)."),
        "",
        "| " + " | ".join(PAIR_COLUMNS) + " |",
        "|" + "---|" * len(PAIR_COLUMNS),
    ]
    lines += ["| " + " | ".join(_esc(row[c]) for c in PAIR_COLUMNS) + " |" for row in pair_rows(found)]
    lines += [""] + [f"- error: {_esc(e)}" for e in found.errors] + [f"- note: {_esc(n)}" for n in found.notes]
    return lines


def render_markdown(found: Discovery) -> str:
    who = ", ".join(t.ref for t in found.trustees) or "(nobody)"
    return "\n".join(markdown_section(found, f"What {who} can open or send as", level="#")).rstrip() + "\n"
