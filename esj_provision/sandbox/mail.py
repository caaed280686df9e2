"""What Exchange enforces on the mail protocols (IMAP, SMTP, EWS, Graph mail), shared by their
stand-ins: grant propagation, who may open or send from which mailbox, XOAUTH2 parsing, and the
record of sent mail.

Pure logic over :class:`~.tenant.Tenant`, no sockets; everything runs on the server's event-loop
thread. The wire facts and their sources are in ../shared/reference/probe-protocols.md.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .exchange import APP_RBAC_ROLES, evaluate, parse_filter
from .tenant import EXCHANGE_APP_ID, EXCHANGE_RESOURCE, ExoServicePrincipal, Recipient, Tenant
from .tokens import TokenMint, TokenProblem

# The Exchange resource as client-credentials and ROPC tokens name it. ESJ's default scope is
# https://outlook.office.com/.default; that IMAP/SMTP accept a token for that audience is
# unconfirmed (probe-protocols.md §1.3), EWS has been seen to (🔶 EWSMA-245).
OUTLOOK_OFFICE = "https://outlook.office.com"
MAIL_AUDIENCES = frozenset({EXCHANGE_RESOURCE, OUTLOOK_OFFICE, EXCHANGE_APP_ID})

# How a protocol stand-in names itself in replies ("[host]" in 535, the IMAP greeting). Real
# Exchange shows a front-end server name here; clients must not parse it.
HOST = "SBX0PR01CA0001.esj-sandbox.invalid"

Key = tuple[str, ...]


# --- propagation --------------------------------------------------------------------------------


def mailbox_keys(t: Tenant, mbx_id: str) -> set[Key]:
    """The Full Access and Send As grants on one mailbox, as comparable keys."""
    keys: set[Key] = {
        ("FullAccess", mbx_id, a.sid)
        for a in t.mailbox_permissions.get(mbx_id, []) if "FullAccess" in a.rights and not a.deny
    }
    keys.update(("SendAs", mbx_id, sid) for sid in t.recipient_permissions.get(mbx_id, []))
    return keys


def org_keys(t: Tenant) -> set[Key]:
    """Organisation-wide grants. A key that changes (a scope's filter rewritten, a service principal
    re-registered) counts as a new grant."""
    keys: set[Key] = {("ServicePrincipal", sp.app_id.lower(), sp.object_id.lower(), sp.sid) for sp in t.exo_sps}
    filters = {s.name.lower(): s.filter for s in t.scopes}
    for ra in t.assignments:
        scope = (ra.scope or "").lower()
        keys.add(("RoleAssignment", ra.name.lower(), ra.role, ra.app_sid, scope, filters.get(scope, "")))
    keys.update(("EwsAllowedAppId", app_id.lower()) for app_id in t.ews_allowed_app_ids)
    return keys


_PER_MAILBOX = ("FullAccess", "SendAs")


class Propagation:
    """When each grant appeared, so the mail protocols honour it only ``delay`` seconds later while
    the admin cmdlets show it at once (Exchange: up to 60 minutes for mailbox permissions, 30 min to
    2 h for RBAC, 24 h for EwsAllowedAppIDs; probe-protocols.md §6). A removed grant is forgotten,
    so it stops at once: Microsoft publishes no delay for removals, and failing closed is what a
    client must cope with anyway.

    The server calls :meth:`refresh` after every change, naming the mailboxes a grant cmdlet
    touched so a bulk run of 10k grants rescans one mailbox per write, not the whole tenant."""

    def __init__(self, delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay = delay
        self.clock = clock
        self.by_mailbox: dict[str, dict[Key, float]] = {}
        self.org: dict[Key, float] = {}

    def settle(self, t: Tenant) -> None:
        """Everything in ``t`` counts as long effective (the seed, a loaded state, ``propagate``)."""
        ids = set(t.mailbox_permissions) | set(t.recipient_permissions)
        self.by_mailbox = {i: dict.fromkeys(mailbox_keys(t, i), -math.inf) for i in ids}
        self.org = dict.fromkeys(org_keys(t), -math.inf)

    def refresh(self, t: Tenant, mailboxes: set[str] | None = None) -> None:
        """Record new grants as of now and forget removed ones: in ``mailboxes`` (by id) and the
        organisation's, or everywhere when ``mailboxes`` is None."""
        now = self.clock()
        ids = set(t.mailbox_permissions) | set(t.recipient_permissions) | set(self.by_mailbox) if mailboxes is None else mailboxes
        for i in ids:
            old = self.by_mailbox.get(i, {})
            keys = mailbox_keys(t, i)
            if keys:
                self.by_mailbox[i] = {k: old.get(k, now) for k in keys}
            else:
                self.by_mailbox.pop(i, None)
        self.org = {k: self.org.get(k, now) for k in org_keys(t)}

    def state(self, key: Key) -> str:
        """``effective``, ``pending`` or ``absent``."""
        seen = (self.by_mailbox.get(key[1], {}) if key[0] in _PER_MAILBOX else self.org).get(key)
        if seen is None:
            return "absent"
        return "effective" if self.clock() - seen >= self.delay else "pending"

    def pending(self) -> list[Key]:
        every = [*self.org, *(k for keys in self.by_mailbox.values() for k in keys)]
        return [k for k in every if self.state(k) == "pending"]


# --- who may do what --------------------------------------------------------------------------


@dataclass
class Decision:
    """Why a principal may or may not open a mailbox: ``state`` is effective/pending/absent."""

    state: str
    why: str

    @property
    def ok(self) -> bool:
        return self.state == "effective"


def full_access(t: Tenant, prop: Propagation, mbx: Recipient, sid: str) -> Decision:
    if sid == mbx.sid:
        return Decision("effective", "own mailbox")
    aces = t.mailbox_permissions.get(mbx.id, [])
    if any(a.sid == sid and a.deny and "FullAccess" in a.rights for a in aces):
        return Decision("absent", "Full Access denied by a Deny entry")
    state = prop.state(("FullAccess", mbx.id, sid))
    return Decision(state, {"effective": "Full Access", "pending": "Full Access granted, not yet effective",
                            "absent": "no Full Access"}[state])


def send_as(t: Tenant, prop: Propagation, mbx: Recipient, sid: str) -> Decision:
    if sid == mbx.sid:
        return Decision("effective", "own address")
    state = prop.state(("SendAs", mbx.id, sid))
    return Decision(state, {"effective": "Send As", "pending": "Send As granted, not yet effective",
                            "absent": "no Send As"}[state])


def exchange_sp(t: Tenant, prop: Propagation, app_id: str) -> tuple[ExoServicePrincipal | None, str]:
    """The app's Exchange service principal, if it was registered with the Enterprise application's
    object id and has propagated. Registered with the App-registration object id it "will cause an
    authentication failure" (probe-protocols.md §1.3): Exchange then has no principal for the token."""
    app = t.find_app(app_id)
    for sp in t.exo_sps:
        if sp.app_id.lower() != app_id.lower():
            continue
        if app is None or sp.object_id.lower() != app.sp_object_id.lower():
            return None, "Exchange service principal registered with the wrong object id"
        state = prop.state(("ServicePrincipal", sp.app_id.lower(), sp.object_id.lower(), sp.sid))
        if state != "effective":
            return None, f"Exchange service principal {state}"
        return sp, "Exchange service principal"
    return None, "no Exchange service principal"


def _in_scope(t: Tenant, scope_name: str | None, mbx: Recipient) -> bool:
    """Evaluated from the scope's stored filter (whatever property name the cmdlets show it under)."""
    if scope_name is None:
        return True
    scope = next((s for s in t.scopes if s.name.lower() == scope_name.lower()), None)
    return scope is not None and evaluate(parse_filter(scope.filter), mbx)


def rbac(t: Tenant, prop: Propagation, app_id: str, mbx: Recipient) -> dict[str, str]:
    """Permission -> effective/pending, from RBAC for Applications assignments whose scope covers
    ``mbx``. The strongest state wins when two assignments grant the same permission."""
    filters = {s.name.lower(): s.filter for s in t.scopes}
    out: dict[str, str] = {}
    for sp in (sp for sp in t.exo_sps if sp.app_id.lower() == app_id.lower()):
        for a in t.assignments:
            if a.app_sid != sp.sid or not _in_scope(t, a.scope, mbx):
                continue
            scope = (a.scope or "").lower()
            state = prop.state(("RoleAssignment", a.name.lower(), a.role, a.app_sid, scope, filters.get(scope, "")))
            for perm in (x.strip() for x in APP_RBAC_ROLES.get(a.role, "").split(",") if x.strip()):
                if out.get(perm) != "effective":
                    out[perm] = state
    return out


def rbac_effective(t: Tenant, prop: Propagation, app_id: str, mbx: Recipient) -> set[str]:
    return {p for p, s in rbac(t, prop, app_id, mbx).items() if s == "effective"}


# --- tokens and XOAUTH2 -----------------------------------------------------------------------

_XOAUTH2 = re.compile(r"^user=([^\x01]*)\x01auth=Bearer ([^\x01]+)\x01\x01$", re.DOTALL)


def parse_xoauth2(data: bytes | str) -> tuple[str, str] | None:
    """``(user, token)`` from the base64 XOAUTH2 initial response, or None when malformed."""
    try:
        raw = base64.b64decode(data.strip() if isinstance(data, bytes) else data.strip().encode("ascii"), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        return None
    m = _XOAUTH2.match(text)
    return (m.group(1), m.group(2)) if m else None


def parse_xoauth2_raw(raw: bytes) -> tuple[str, str] | None:
    """The same for bytes that are already base64-decoded (aiosmtpd decodes the 334 answer)."""
    try:
        m = _XOAUTH2.match(raw.decode("utf-8"))
    except UnicodeError:
        return None
    return (m.group(1), m.group(2)) if m else None


@dataclass
class Caller:
    """A validated token, reduced to what the mail protocols look at."""

    claims: dict[str, Any]
    app_only: bool
    app_id: str
    roles: set[str]
    scopes: set[str]
    user: Recipient | None  # the signed-in account (delegated tokens)


def caller(t: Tenant, mint: TokenMint, token: str, audiences: frozenset[str] = MAIL_AUDIENCES) -> Caller:
    """Raises :class:`TokenProblem` for a token Exchange would refuse."""
    claims = mint.validate(f"Bearer {token}", audiences)
    scp = str(claims.get("scp") or "")
    app_only = not scp and claims.get("idtyp") != "user"
    user = None if app_only else t.find_recipient(str(claims.get("oid") or ""))
    if not app_only and user is None:
        raise TokenProblem("malformed", "The token's user does not exist.")
    return Caller(claims, app_only, str(claims.get("appid") or ""), set(claims.get("roles") or []),
                  set(scp.split()), user)


def same_mailbox(t: Tenant, address: str, r: Recipient) -> bool:
    found = t.find_recipient(address)
    return found is not None and found.id == r.id


# --- what a protocol session did, and what was sent ---------------------------------------------


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class SentMail:
    protocol: str  # smtp / graph
    sender: str  # the From address
    to: list[str]
    subject: str
    principal: str  # who authenticated: an account's UPN or "app <id>"
    app_id: str
    mailbox: str  # the mailbox it was submitted through
    message_id: str = field(default_factory=lambda: f"<{uuid.uuid4()}@esj-sandbox.invalid>")
    time: str = field(default_factory=now_iso)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "from": self.sender, "to": list(self.to), "subject": self.subject,
                "principal": self.principal, "app_id": self.app_id, "mailbox": self.mailbox,
                "message_id": self.message_id, "time": self.time}


@dataclass
class MailContext:
    """What the protocol stand-ins share with the HTTPS server (same loop, same tenant)."""

    tenant: Tenant
    mint: TokenMint
    prop: Propagation
    log: Callable[[dict[str, Any]], None]  # appends to the call log; never give it a token
    sent: list[SentMail] = field(default_factory=list)

    def refresh(self) -> None:
        """Cheap: only the organisation's grants are rescanned (mailbox grants are recorded by the
        server when they change)."""
        self.prop.refresh(self.tenant, set())

    def record_call(self, service: str, method: str, status: int | str, **details: Any) -> None:
        self.log({
            "time": now_iso(), "service": service, "method": method, "path": "", "query": "", "cmdlet": None,
            "parameters": details or None, "identity": None, "status": status, "applied": False, "write": False,
            "fault": None, "app_id": details.get("app_id"), "request_id": str(uuid.uuid4()),
            "client_request_id": None,
        })
