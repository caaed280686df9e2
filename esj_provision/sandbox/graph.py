"""Microsoft Graph v1.0, the part esj-provision touches: users, mailboxSettings, mailFolders,
servicePrincipals, applications, and JSON batching (reference §5).

Pure request -> (status, body, headers) functions; auth happens in ``server.py`` and arrives
here as the token's claims. Error bodies carry ``innerError`` with ``date``, ``request-id`` and
``client-request-id`` like Graph's.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from yarl import URL

from .exchange import rbac_permissions
from .tenant import (
    EXCHANGE_RESOURCE,
    GRAPH_RESOURCE,
    MICROSOFT_TENANT_ID,
    RESOURCE_SPS,
    App,
    Recipient,
    ResourceSp,
    Tenant,
)

JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
MAX_BATCH = 20
VERSIONS = ("v1.0", "beta")

_READ_USERS = {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
_READ_APPS = {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
_READ_SETTINGS = {"MailboxSettings.Read", "MailboxSettings.ReadWrite"}
_READ_MAIL = {"Mail.Read", "Mail.ReadBasic", "Mail.ReadBasic.All", "Mail.ReadWrite"}

Response = tuple[int, "dict[str, Any] | None", dict[str, str]]


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str, request_id: str, client_request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }


@dataclass
class Ctx:
    tenant: Tenant
    claims: dict[str, Any]
    base: str  # https://127.0.0.1:PORT/graph
    request_id: str
    client_request_id: str
    # The mail stand-ins' view of RBAC for Applications (only assignments that have propagated) and
    # where sendMail records what it accepted; without them, every assignment counts at once.
    rbac: Callable[[str, Recipient], set[str]] | None = None
    record_sent: Callable[[Recipient, dict[str, Any]], None] | None = None
    body: bytes = b""

    @property
    def roles(self) -> set[str]:
        return set(self.claims.get("roles") or [])


def _not_found(key: str) -> GraphError:
    return GraphError(
        404, "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


def _segment_error(seg: str) -> GraphError:
    return GraphError(400, "BadRequest", f"Resource not found for the segment '{seg}'.")


def _need_directory(ctx: Ctx, roles: set[str]) -> None:
    if not ctx.roles & roles:
        raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def _need_mailbox(ctx: Ctx, roles: set[str], mbx: Recipient | None = None) -> None:
    if ctx.roles & roles:
        return
    # RBAC for Applications (Exchange-side role assignment scoped to mailboxes) also grants access.
    app_id = str(ctx.claims.get("appid", ""))
    if mbx is not None and (ctx.rbac or (lambda a, m: rbac_permissions(ctx.tenant, a, m)))(app_id, mbx) & roles:
        return
    raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")


# --- objects ----------------------------------------------------------------------------------

_USER_DEFAULT = (
    "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation",
    "preferredLanguage", "surname", "userPrincipalName", "id",
)
_USER_EXTRA = ("accountEnabled", "userType", "mailNickname", "proxyAddresses", "otherMails", "onPremisesSyncEnabled")


def _user_json(r: Recipient) -> dict[str, Any]:
    given, _, surname = r.display_name.partition(" ") if r.recipient_type == "UserMailbox" else ("", "", "")
    return {
        "businessPhones": [], "displayName": r.display_name, "givenName": given or None, "jobTitle": None,
        "mail": r.mail, "mobilePhone": None, "officeLocation": None, "preferredLanguage": "en-US",
        "surname": surname or None, "userPrincipalName": r.upn, "id": r.id,
        "accountEnabled": r.account_enabled, "userType": r.user_type, "mailNickname": r.name,
        "proxyAddresses": r.email_addresses, "otherMails": [],
        # Cloud-only tenant: never synced from an on-premises directory (Graph sends null then).
        "onPremisesSyncEnabled": None,
    }


def _select(ctx: Ctx, obj: dict[str, Any], query: dict[str, str], type_name: str,
            default: tuple[str, ...] | None = None) -> tuple[dict[str, Any], list[str] | None]:
    """Apply ``$select``. Without it, ``default`` (Graph's default property set) or everything.

    Note that Graph leaves ``accountEnabled`` out of a user unless it is selected: a client that
    forgets ``$select`` reads it as missing here too.
    """
    raw = query.get("$select", query.get("select"))
    if raw is None:
        keys = default or tuple(obj)
        return {k: obj[k] for k in keys}, None
    by_lower = {k.lower(): k for k in obj}
    picked: list[str] = []
    for name in (p.strip() for p in raw.split(",")):
        if not name:
            continue
        canon = by_lower.get(name.lower())
        if canon is None:
            raise GraphError(400, "BadRequest", f"Could not find a property named '{name}' on type '{type_name}'.")
        if canon not in picked:
            picked.append(canon)
    return {k: obj[k] for k in picked}, picked


def _app_sp_json(t: Tenant, app: App) -> dict[str, Any]:
    return {
        "id": app.sp_object_id, "appId": app.client_id, "displayName": app.display_name,
        "servicePrincipalType": "Application", "accountEnabled": True, "appOwnerOrganizationId": t.tenant_id,
        "servicePrincipalNames": [app.client_id], "appRoles": [],
    }


def _resource_sp_json(sp: ResourceSp) -> dict[str, Any]:
    uri = GRAPH_RESOURCE if sp.display_name == "Microsoft Graph" else EXCHANGE_RESOURCE
    return {
        "id": sp.sp_object_id, "appId": sp.app_id, "displayName": sp.display_name,
        "servicePrincipalType": "Application", "accountEnabled": True,
        "appOwnerOrganizationId": MICROSOFT_TENANT_ID, "servicePrincipalNames": [sp.app_id, uri],
        "appRoles": [
            {
                "allowedMemberTypes": ["Application"], "description": value, "displayName": value,
                "id": rid, "isEnabled": True, "origin": "Application", "value": value,
            }
            for value, rid in sp.roles.items()
        ],
    }


def _all_sps(t: Tenant) -> list[dict[str, Any]]:
    return [*(_app_sp_json(t, a) for a in t.apps.values()), *(_resource_sp_json(sp) for sp in RESOURCE_SPS)]


def _application_json(app: App) -> dict[str, Any]:
    graph, exo = RESOURCE_SPS
    required = []
    for res, names in ((graph, app.graph_roles), (exo, app.exchange_roles)):
        if names:
            required.append(
                {"resourceAppId": res.app_id,
                 "resourceAccess": [{"id": res.roles[n], "type": "Role"} for n in names if n in res.roles]}
            )
    return {
        "id": app.app_object_id, "appId": app.client_id, "displayName": app.display_name,
        "signInAudience": "AzureADMyOrg", "requiredResourceAccess": required,
    }


def _assignments_json(t: Tenant, sp_id: str) -> list[dict[str, Any]]:
    app = t.app_by_sp(sp_id)
    if app is None:
        if any(sp.sp_object_id == sp_id.lower() for sp in RESOURCE_SPS):
            return []
        raise _not_found(sp_id)
    graph, exo = RESOURCE_SPS
    out = []
    for res, names in ((graph, app.graph_roles), (exo, app.exchange_roles)):
        for n in names:
            if n not in res.roles:
                continue  # a role whose id is not modelled (tenant.TOKEN_ONLY_EXCHANGE_ROLES)
            out.append(
                {
                    "id": f"{app.sp_object_id[:8]}{res.roles[n][:8]}", "deletedDateTime": None,
                    "appRoleId": res.roles[n], "createdDateTime": "2026-01-01T00:00:00Z",
                    "principalDisplayName": app.display_name, "principalId": app.sp_object_id,
                    "principalType": "ServicePrincipal", "resourceDisplayName": res.display_name,
                    "resourceId": res.sp_object_id,
                }
            )
    return out


_LITERAL_RE = r"'((?:[^']|'')*)'"
_LITERAL = re.compile(_LITERAL_RE)
_EQ = re.compile(rf"(\w+)\s+eq\s+{_LITERAL_RE}", re.IGNORECASE)
_IN = re.compile(r"(\w+)\s+in\s+\(\s*((?:'(?:[^']|'')*'\s*,?\s*)+)\)", re.IGNORECASE)
# `proxyAddresses/any(x:x eq 'smtp:a')`, as in `mail eq 'a' or proxyAddresses/any(...)`: a user by
# any of its SMTP addresses (the form of Microsoft's B2B invitation docs; 🔶 whether Graph needs
# advanced query parameters for it, ❓ whether it ignores the prefix's case: here it does).
_ANY = re.compile(rf"(\w+)/any\((\w+):\s*\2\s+eq\s+{_LITERAL_RE}\)", re.IGNORECASE)
# `or` outside quotes: an even number of quotes (a doubled one counts two) follows it.
_OR = re.compile(r"\s+or\s+(?=(?:[^']*'[^']*')*[^']*$)", re.IGNORECASE)
# Values an `in` filter takes without advanced query parameters (filter-query-parameter docs: "15
# items by default"). The 400's text is the one a Graph docs issue quotes (#21098), not Microsoft's page.
IN_LIMIT = 15


def _filter(
    query: dict[str, str], allowed: tuple[str, ...], collections: tuple[str, ...] = ()
) -> list[tuple[str, list[str]]] | None:
    """The clauses of ``$filter``, joined by ``or``: ``prop eq 'v'``, ``prop in ('a','b')`` or, for
    one of ``collections``, ``prop/any(x:x eq 'v')``; each as (property, values), quotes undoubled."""
    raw = query.get("$filter", query.get("filter"))
    if raw is None:
        return None
    clauses: list[tuple[str, list[str]]] = []
    for part in _OR.split(raw.strip()):
        if m := _EQ.fullmatch(part.strip()):
            name, values = m.group(1), [m.group(2)]
        elif m := _IN.fullmatch(part.strip()):
            name, values = m.group(1), _LITERAL.findall(m.group(2))
            if len(values) > IN_LIMIT:
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    "Too many child clauses specified in search filter expression containing 'OR' operators: "
                    f"{len(values)}. Max allowed: {IN_LIMIT}.",
                )
        elif m := _ANY.fullmatch(part.strip()):
            name, values = m.group(1), [m.group(3)]
        else:
            raise GraphError(400, "Request_UnsupportedQuery", "Unsupported query.")
        prop = next((a for a in (*allowed, *collections) if a.lower() == name.lower()), None)
        if prop is None or (prop in collections) != (m.re is _ANY):
            raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported or invalid query filter clause specified for property '{name}' of resource.")
        clauses.append((prop, [v.replace("''", "'") for v in values]))
    return clauses


def _matches(obj: dict[str, Any], clauses: list[tuple[str, list[str]]]) -> bool:
    """Whether an object's JSON meets any clause (a collection: any of its items), ignoring case."""
    for prop, values in clauses:
        have = obj.get(prop)
        have_all = {str(h).lower() for h in have} if isinstance(have, list) else {str(have).lower()}
        if have_all & {v.lower() for v in values}:
            return True
    return False


def _collection(ctx: Ctx, version: str, entity: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@odata.context": f"{ctx.base}/{version}/$metadata#{entity}", "value": items}


# --- routing ----------------------------------------------------------------------------------

_KEYED = re.compile(r"^([A-Za-z$]+)\((.*)\)$", re.DOTALL)


def _key_segment(seg: str) -> tuple[str, str | None, str | None]:
    """``users('x@y')`` -> (users, None, x@y); ``servicePrincipals(appId='g')`` -> (..., appId, g)."""
    m = _KEYED.match(seg)
    if not m:
        return seg, None, None
    inner = m.group(2)
    prop = None
    if "=" in inner and not inner.startswith("'"):
        prop, _, inner = inner.partition("=")
    if len(inner) >= 2 and inner[0] == inner[-1] == "'":
        inner = inner[1:-1].replace("''", "'")
    return m.group(1), prop, inner


def split_path(raw_path: str) -> list[str]:
    """Path segments, URL-decoded one by one (so an encoded ``/`` cannot split a key); empty
    segments dropped, which is how a doubled slash (``/v1.0//users``) is tolerated."""
    return [unquote(s) for s in raw_path.split("/") if s]


def dispatch(ctx: Ctx, method: str, segments: list[str], query: dict[str, str]) -> Response:
    """One request; a POST's body travels in ``ctx.body``."""
    try:
        return _route(ctx, method.upper(), segments, query)
    except GraphError as e:
        return e.status, error_body(e.code, e.message, ctx.request_id, ctx.client_request_id), e.headers


def _route(ctx: Ctx, method: str, segs: list[str], query: dict[str, str]) -> Response:
    if not segs:
        raise _segment_error("")
    version = segs[0]
    if version not in VERSIONS:
        raise GraphError(400, "BadRequest", f"Invalid version: {version}")
    if len(segs) < 2:
        raise _segment_error(version)
    name, prop, key = _key_segment(segs[1])
    if method == "POST" and name == "users" and segs[-1] == "sendMail" and len(segs) == (3 if key else 4):
        return _send_mail(ctx, key or segs[2])
    if method != "GET":
        raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
    rest = segs[2:]
    if name == "users":
        if key is None and rest:
            key, rest = rest[0], rest[1:]
        if key is None:
            return _list_users(ctx, version, query)
        return _user(ctx, version, key, rest, query)
    if name in ("servicePrincipals", "applications"):
        _need_directory(ctx, _READ_APPS)
        return _apps(ctx, version, name, prop, key, rest, query)
    raise _segment_error(segs[1])


def _find_user(ctx: Ctx, key: str, *, directory: bool = False) -> Recipient:
    """The user a path names. A directory read (``/users/{key}``) takes its id or its UPN only
    (✅ "GET /users/{id | userPrincipalName}"; an address that is not the UPN is 404, as
    camerondwyer.com 2023-07 shows). Outlook resources (mailboxSettings, mailFolders, sendMail)
    also find a mailbox by an SMTP address (🔶 the same article: Exchange resolves the address)."""
    r = ctx.tenant.find_recipient(key)
    if r is None or (directory and key.strip().lower() not in {r.id.lower(), r.upn.lower()}):
        raise _not_found(key)
    return r


def _user(ctx: Ctx, version: str, key: str, rest: list[str], query: dict[str, str]) -> Response:
    if not rest:
        _need_directory(ctx, _READ_USERS)
        r = _find_user(ctx, key, directory=True)
        body, picked = _select(ctx, _user_json(r), query, "microsoft.graph.user", _USER_DEFAULT)
        entity = f"users({','.join(picked)})" if picked else "users"
        return 200, {"@odata.context": f"{ctx.base}/{version}/$metadata#{entity}/$entity", **body}, {}
    ctx_user = f"{ctx.base}/{version}/$metadata#users('{quote(key, safe='')}')"
    if rest[0] == "mailboxSettings":
        r = _find_user(ctx, key)
        _need_mailbox(ctx, _READ_SETTINGS, r)
        _rest_enabled(r)
        settings = _mailbox_settings(r, version)
        if len(rest) == 1:
            return 200, {"@odata.context": f"{ctx_user}/mailboxSettings", **settings}, {}
        if len(rest) == 2 and rest[1] in settings:
            value = settings[rest[1]]
            if rest[1] == "userPurpose" and isinstance(value, dict):
                value = value["value"]  # the property endpoint answers the plain string
            if isinstance(value, dict):
                return 200, {"@odata.context": f"{ctx_user}/mailboxSettings/{rest[1]}", **value}, {}
            return 200, {"@odata.context": f"{ctx_user}/mailboxSettings/{rest[1]}", "value": value}, {}
        raise _segment_error(rest[-1])
    if rest[0] == "mailFolders" and len(rest) == 2:
        r = _find_user(ctx, key)
        _need_mailbox(ctx, _READ_MAIL, r)
        _rest_enabled(r)
        folder = _FOLDERS.get(rest[1].lower())
        if folder is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        obj = {
            "id": f"AAMkAD{r.id.replace('-', '')[:16]}{folder}", "displayName": folder,
            "parentFolderId": f"AAMkAD{r.id.replace('-', '')[:16]}Root", "childFolderCount": 0,
            "unreadItemCount": 0, "totalItemCount": 0, "sizeInBytes": 0, "isHidden": False,
        }
        body, _ = _select(ctx, obj, query, "microsoft.graph.mailFolder")
        return 200, {"@odata.context": f"{ctx_user}/mailFolders/$entity", **body}, {}
    raise _segment_error(rest[0])


_SEND = {"Mail.Send"}


def _send_mail(ctx: Ctx, key: str) -> Response:
    """POST /users/{id}/sendMail: 202 with no body (✅ GRAPH-SEND). Authorisation is checked before
    the message is validated (❓: probe-protocols.md §5 says verify on a tenant)."""
    r = _find_user(ctx, key)
    _need_mailbox(ctx, _SEND, r)
    _rest_enabled(r)
    try:
        payload = json.loads(ctx.body or b"null")
        message = payload["message"]
        if not isinstance(message, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        # Graph's wording for an unreadable body is not in the reference: ours.
        raise GraphError(400, "ErrorInvalidRequest", "The request body must be JSON with a 'message' object.") from None
    recipients = [
        str((x.get("emailAddress") or {}).get("address") or "")
        for field in ("toRecipients", "ccRecipients", "bccRecipients")
        for x in (message.get(field) or []) if isinstance(x, dict)
    ]
    if not [a for a in recipients if a]:
        raise GraphError(400, "ErrorInvalidRecipients",
                         "A message can't be sent because it contains no recipients.")
    if ctx.record_sent is not None:
        ctx.record_sent(r, {"to": [a for a in recipients if a], "subject": str(message.get("subject") or "")})
    return 202, None, {}


_FOLDERS = {
    "inbox": "Inbox", "drafts": "Drafts", "sentitems": "Sent Items", "deleteditems": "Deleted Items",
    "junkemail": "Junk Email", "archive": "Archive", "outbox": "Outbox",
}


def _rest_enabled(r: Recipient) -> None:
    if not r.rest_enabled:
        raise GraphError(
            404, "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )


def _mailbox_settings(r: Recipient, version: str) -> dict[str, Any]:
    # userPurpose: a plain enum string in v1.0 (the mailboxSettings resource's JSON representation),
    # an object {"value": ...} in beta and in older examples; clients must read both.
    purpose: Any = r.user_purpose if version == "v1.0" else {"value": r.user_purpose}
    return {
        "archiveFolder": f"AAMkAD{r.id.replace('-', '')[:16]}Archive",
        "timeZone": "UTC",
        "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
        "dateFormat": "yyyy-MM-dd",
        "timeFormat": "HH:mm",
        "userPurpose": purpose,
        "automaticRepliesSetting": {
            "status": "disabled", "externalAudience": "all", "internalReplyMessage": "",
            "externalReplyMessage": "",
        },
        "language": {"locale": "en-US", "displayName": "English (United States)"},
        "workingHours": {
            "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
            "startTime": "08:00:00.0000000", "endTime": "17:00:00.0000000",
            "timeZone": {"name": "UTC"},
        },
    }


def _list_users(ctx: Ctx, version: str, query: dict[str, str]) -> Response:
    _need_directory(ctx, _READ_USERS)
    t = ctx.tenant
    clauses = _filter(query, ("mail", "userPrincipalName", "id", "displayName", "mailNickname"), ("proxyAddresses",))
    raw_top = query.get("$top", "100")
    if not raw_top.isdigit() or not 1 <= int(raw_top) <= 999:
        raise GraphError(
            400, "Request_BadRequest", f"Invalid page size specified: '{raw_top}'. Must be between 1 and 999 inclusive."
        )
    top = int(raw_top)
    if clauses is not None:
        # Candidates by any value a clause names (an `smtp:` address without its prefix), then checked.
        keys = {v.split(":", 1)[1] if p == "proxyAddresses" and ":" in v else v for p, vs in clauses for v in vs}
        found = {r.id: r for k in keys for r in t.find_recipients(k) if _matches(_user_json(r), clauses)}
        items = [_select(ctx, _user_json(r), query, "microsoft.graph.user", _USER_DEFAULT)[0] for r in found.values()]
        body = _collection(ctx, version, "users", items)
        if query.get("$count", "").lower() == "true":
            body["@odata.count"] = len(items)
        return 200, body, {}
    start = int(query.get("$skiptoken", "0") or 0) if query.get("$skiptoken", "0").isdigit() else 0
    end = min(start + top, t.recipient_count)
    items = [_select(ctx, _user_json(t.at(i)), query, "microsoft.graph.user", _USER_DEFAULT)[0] for i in range(start, end)]
    body = _collection(ctx, version, "users", items)
    if end < t.recipient_count:
        q = {k: v for k, v in query.items() if k != "$skiptoken"}
        q["$skiptoken"] = str(end)
        body["@odata.nextLink"] = str(URL(f"{ctx.base}/{version}/users").with_query(q))
    return 200, body, {}


def _apps(ctx: Ctx, version: str, name: str, prop: str | None, key: str | None, rest: list[str],
          query: dict[str, str]) -> Response:
    t = ctx.tenant
    is_sp = name == "servicePrincipals"
    type_name = "microsoft.graph.servicePrincipal" if is_sp else "microsoft.graph.application"
    objs = _all_sps(t) if is_sp else [_application_json(a) for a in t.apps.values()]
    if key is None and rest:
        key, rest, prop = rest[0], rest[1:], None
    if key is None:
        clauses = _filter(query, ("appId", "displayName", "id"))
        if clauses is not None:
            objs = [o for o in objs if _matches(o, clauses)]
        items = [_select(ctx, o, query, type_name)[0] for o in objs]
        return 200, _collection(ctx, version, name, items), {}
    field = "appId" if (prop or "").lower() == "appid" else "id"
    obj = next((o for o in objs if str(o[field]).lower() == key.lower()), None)
    if obj is None:
        raise _not_found(key)
    if not rest:
        body, _ = _select(ctx, obj, query, type_name)
        return 200, {"@odata.context": f"{ctx.base}/{version}/$metadata#{name}/$entity", **body}, {}
    if is_sp and rest == ["appRoleAssignments"]:
        items = _assignments_json(t, obj["id"])
        return 200, _collection(ctx, version, f"servicePrincipals('{obj['id']}')/appRoleAssignments", items), {}
    raise _segment_error(rest[0])


# --- Outlook concurrency ----------------------------------------------------------------------

# Outlook resources in Graph: a user's mail, mailbox settings, folders, calendar and contacts.
_OUTLOOK_SEGMENTS = frozenset({
    "mailboxsettings", "mailfolders", "messages", "sendmail", "events", "calendar", "calendars",
    "contacts", "contactfolders", "inferenceclassification",
})
OUTLOOK_BATCH_WAVE = 4  # Graph dispatches a batch's Outlook items four at a time (Q&A 1660054)
THROTTLED_MESSAGE = "Application is over its MailboxConcurrency limit."
# Unconfirmed: Microsoft says a Retry-After comes with the 429 but publishes no value for this case.
OUTLOOK_RETRY_AFTER = 1


def is_outlook(segments: list[str]) -> bool:
    """``[version,] users, {id}, mailboxSettings, ...`` (or ``users('x')/...``): an Outlook resource."""
    segs = [s for s in segments if s not in VERSIONS]
    if not segs:
        return False
    name, _, key = _key_segment(segs[0])
    rest = segs[1:] if key is not None else segs[2:]
    return name == "users" and bool(rest) and rest[0].lower() in _OUTLOOK_SEGMENTS


@dataclass
class OutlookLimit:
    """Microsoft's Outlook concurrency limit: at most ``limit`` Outlook requests of one app id in
    flight at once, "regardless of whether the requests all access the same mailbox" (throttling
    limits, Outlook service). ``limit`` 0 turns it off."""

    limit: int
    in_flight: dict[str, int] = field(default_factory=dict)

    def free(self, app_id: str) -> int:
        if not self.limit:
            return 1 << 30
        return max(0, self.limit - self.in_flight.get(app_id, 0))

    def take(self, app_id: str, n: int = 1) -> bool:
        if self.limit and self.free(app_id) < n:
            return False
        self.in_flight[app_id] = self.in_flight.get(app_id, 0) + n
        return True

    def give(self, app_id: str, n: int = 1) -> None:
        left = self.in_flight.get(app_id, 0) - n
        if left > 0:
            self.in_flight[app_id] = left
        else:
            self.in_flight.pop(app_id, None)


def throttled_body(ctx_request_id: str, client_request_id: str) -> dict[str, Any]:
    return error_body("ApplicationThrottled", THROTTLED_MESSAGE, ctx_request_id, client_request_id)


def outlook_items(raw: bytes) -> int:
    """How many of a batch's items are Outlook requests (0 for a body that does not parse; the
    batch itself then answers 400)."""
    try:
        reqs = json.loads(raw or b"null").get("requests")
        return sum(
            1 for item in reqs
            if isinstance(item, dict) and isinstance(item.get("url"), str)
            and is_outlook(split_path(URL(item["url"]).raw_path))
        )
    except (ValueError, AttributeError, TypeError):
        return 0


# --- batching ---------------------------------------------------------------------------------


def _batch_error(ctx: Ctx, message: str) -> Response:
    return 400, error_body("BadRequest", message, ctx.request_id, ctx.client_request_id), {}


def batch(
    ctx: Ctx, version: str, raw: bytes, take: Callable[[], int | None], rng: random.Random,
    log: Callable[[str, str, str, int, bool], None], outlook_slots: int | None = None,
) -> Response:
    """JSON batching (§5.4): at most 20 requests, unique ids, relative urls, per-item status; each
    item is throttled on its own (``take`` returns a Retry-After when the bucket is empty), and
    the responses come back in a shuffled order because Graph does not guarantee one.

    Outlook items go out in waves of four; ``outlook_slots`` is how many of each wave the app's
    Outlook concurrency admits (None: no limit). The rest of a wave answers 429
    ApplicationThrottled, item by item, as Graph does when other requests of the app are in flight.
    """
    try:
        payload = json.loads(raw or b"null")
    except ValueError:
        return _batch_error(ctx, "Invalid batch payload format.")
    reqs = payload.get("requests") if isinstance(payload, dict) else None
    if not isinstance(reqs, list) or not reqs:
        return _batch_error(ctx, "Invalid batch payload format.")
    if len(reqs) > MAX_BATCH:
        return _batch_error(ctx, f"The number of requests in the batch exceeds the limit of {MAX_BATCH}.")
    seen: dict[str, dict[str, Any]] = {}
    for item in reqs:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            return _batch_error(ctx, "Every batch request needs a string 'id'.")
        if item["id"] in seen:
            return _batch_error(ctx, "Batch request contains duplicate request ids.")
        if not isinstance(item.get("method"), str) or not isinstance(item.get("url"), str):
            return _batch_error(ctx, "Every batch request needs a 'method' and a 'url'.")
        if URL(item["url"]).is_absolute():
            return _batch_error(ctx, "Batch request urls must be relative, e.g. /users/{id}.")
        if "body" in item:
            headers = item.get("headers")
            if not isinstance(headers, dict) or not any(k.lower() == "content-type" for k in headers):
                return _batch_error(ctx, "A batch request with a body needs a Content-Type header.")
        seen[item["id"]] = item
    for item in reqs:
        deps = item.get("dependsOn", [])
        if not isinstance(deps, list) or any(d not in seen or d == item["id"] for d in deps):
            return _batch_error(ctx, "dependsOn must name other request ids of this batch.")

    done: dict[str, dict[str, Any]] = {}
    outlook_seen = 0

    def admit(item: dict[str, Any]) -> bool:
        nonlocal outlook_seen
        if outlook_slots is None or not is_outlook(split_path(URL(item["url"]).raw_path)):
            return True
        position = outlook_seen % OUTLOOK_BATCH_WAVE
        outlook_seen += 1
        return position < outlook_slots

    pending = list(reqs)
    while pending:
        ready = [i for i in pending if all(d in done for d in i.get("dependsOn", []))]
        if not ready:
            return _batch_error(ctx, "dependsOn forms a cycle.")
        for item in ready:
            pending.remove(item)
            done[item["id"]] = _batch_item(ctx, version, item, done, take, log, admit)
    responses = [done[i["id"]] for i in reqs]
    rng.shuffle(responses)
    return 200, {"responses": responses}, {}


def _batch_item(
    ctx: Ctx, version: str, item: dict[str, Any], done: dict[str, dict[str, Any]],
    take: Callable[[], int | None], log: Callable[[str, str, str, int, bool], None],
    admit: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    method = item["method"].upper()
    url = URL(item["url"] if item["url"].startswith("/") else "/" + item["url"])
    headers: dict[str, str] = {"Content-Type": JSON_TYPE, "Cache-Control": "no-cache"}
    body: dict[str, Any] | None
    if any(done[d]["status"] >= 400 for d in item.get("dependsOn", [])):
        status, body = 424, error_body(
            "FailedDependency", "The request could not be completed due to a failed dependency.",
            ctx.request_id, ctx.client_request_id,
        )
    elif not admit(item):
        status, body = 429, throttled_body(ctx.request_id, ctx.client_request_id)
        headers["Retry-After"] = str(OUTLOOK_RETRY_AFTER)
    elif (retry := take()) is not None:
        status = 429
        body = error_body("TooManyRequests", "Too many requests.", ctx.request_id, ctx.client_request_id)
        headers["Retry-After"] = str(retry)
    else:
        status, body, extra = dispatch(
            ctx, method, [version, *split_path(url.raw_path)], dict(url.query)
        )
        headers.update(extra)
    log(item["id"], method, str(url), status, status == 429)
    return {"id": item["id"], "status": status, "headers": headers, "body": body}
