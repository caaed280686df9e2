"""Exchange Online cmdlets as the InvokeCommand gateway runs them: parameters, rows, warnings, errors.

Pure functions over :class:`~.tenant.Tenant`; the HTTP layer (auth, paging links, faults) is in
``server.py``. Row and error shapes follow ../shared/reference/exchange-and-graph.md §3–§4; where
Microsoft's wording is not known (e.g. the RBAC-denied message) the wording is ours and says so.
``SHAPES.md`` beside this file lists every output property name with its source, and which ones
stay unconfirmed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .tenant import (
    MAILBOX_RIGHTS,
    SELF_SID,
    Ace,
    ExoServicePrincipal,
    ManagementScope,
    Principal,
    Recipient,
    RoleAssignment,
    Tenant,
)

SERVER = "AM0PR01A001"
_COLLECTION = "#Collection(String)"
TRUNCATION_WARNING = (
    "There are more results available than are currently displayed. To view them, increase the "
    "value for the ResultSize parameter."
)
INHERITANCE_TYPES = ("None", "All", "Children", "Descendents", "SelfAndChildren")

# RBAC for Applications roles (exchange-and-graph.md §6) and the permissions each grants.
APP_RBAC_ROLES: dict[str, str] = {
    "Application Mail.Read": "Mail.Read",
    "Application Mail.ReadBasic": "Mail.ReadBasic",
    "Application Mail.ReadWrite": "Mail.ReadWrite",
    "Application Mail.Send": "Mail.Send",
    "Application MailboxSettings.Read": "MailboxSettings.Read",
    "Application MailboxSettings.ReadWrite": "MailboxSettings.ReadWrite",
    "Application Calendars.Read": "Calendars.Read",
    "Application Calendars.ReadWrite": "Calendars.ReadWrite",
    "Application Contacts.Read": "Contacts.Read",
    "Application Contacts.ReadWrite": "Contacts.ReadWrite",
    "Application Mail Full Access": "Mail.ReadWrite, Mail.Send",
    "Application Exchange Full Access": (
        "Mail.ReadWrite, Mail.Send, MailboxSettings.ReadWrite, Calendars.ReadWrite, Contacts.ReadWrite"
    ),
    "Application EWS.AccessAsApp": "EWS.AccessAsApp",
    "Application SMTP.SendAsApp": "SMTP.SendAsApp",
}

T = TypeVar("T")


# --- errors -----------------------------------------------------------------------------------


class CmdletError(Exception):
    def __init__(self, status: int, code: str, ex_code: str, type_name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.ex_code = ex_code
        self.type_name = type_name
        self.message = message

    def body(self) -> dict[str, Any]:
        """The §3 error envelope, byte-for-byte in structure with the captured one."""
        return {
            "error": {
                "code": self.code,
                "message": "Error executing cmdlet",
                "details": [
                    {"code": "Client", "target": "", "message": f"{self.ex_code}|{self.type_name}|{self.message}"}
                ],
                "innererror": {
                    "message": "Error executing cmdlet",
                    "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                    "internalexception": {
                        "message": self.message,
                        "type": "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeCmdletExecutionException",
                    },
                },
            },
            "adminapi.warnings@odata.type": _COLLECTION,
            "@adminapi.warnings": [],
        }


def not_found(obj: str) -> CmdletError:
    return CmdletError(
        404, "NotFound", "Ex6F9304", "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
        f"The operation couldn't be performed because object '{obj}' couldn't be found on "
        f"'{SERVER}.PROD.OUTLOOK.COM'.",
    )


def _ambiguous(obj: str) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex4B1C02",
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectAmbiguousException",
        f"The operation couldn't be performed because '{obj}' matches multiple entries.",
    )


def _bad_parameter(name: str) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex9A0E1B",
        "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeParameterBindingException",
        f"A parameter cannot be found that matches parameter name '{name}'.",
    )


def _unknown_cmdlet(name: str) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex2C5D7A",
        "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeCmdletNotFoundException",
        f"The term '{name}' is not recognized as a name of a cmdlet, function, script file, or "
        "executable program.",
    )


def _missing(cmdlet: str, names: list[str]) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex9A0E1C",
        "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeParameterBindingException",
        f"Cannot process command '{cmdlet}' because of one or more missing mandatory parameters: "
        f"{' '.join(names)}.",
    )


def _invalid(message: str) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex9A0E1D",
        "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeParameterBindingException", message,
    )


def _enum_error(param: str, value: str, type_name: str, valid: tuple[str, ...]) -> CmdletError:
    # PowerShell's own wording for a bad enum value, which lists the valid names.
    return _invalid(
        f"Cannot process argument transformation on parameter '{param}'. Cannot convert value "
        f'"{value}" to type "{type_name}". Error: "Unable to match the identifier name {value} to a '
        f"valid enumerator name. Specify one of the following enumerator names and try again: "
        f'{", ".join(valid)}"'
    )


def _exists(what: str) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex5D1E3F", "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException",
        f"The object '{what}' already exists.",
    )


def access_denied(caller: str, cmdlet: str) -> CmdletError:
    # Wording ours: the role exists but does not include this cmdlet (e.g. Recipient Administrator
    # calling New-ServicePrincipal, which needs Role Management / Organization Management).
    return CmdletError(
        403, "Forbidden", "Ex3D7A2E", "Microsoft.Exchange.Configuration.Tasks.CmdletAccessDeniedException",
        f'The user "{caller}" isn\'t assigned to any management roles that include the cmdlet "{cmdlet}".',
    )


# --- paging -----------------------------------------------------------------------------------


class Pager(Protocol):
    def page(self, start: int, size: int) -> tuple[list[dict[str, Any]], int | None]: ...


class ListPager:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def page(self, start: int, size: int) -> tuple[list[dict[str, Any]], int | None]:
        end = start + size
        return self.rows[start:end], (end if end < len(self.rows) else None)


_STRIDE = 4096  # > rows one recipient can produce (Exchange caps a mailbox at 500 ACEs)


class RecipientPager:
    """Rows computed per recipient on demand, so listing 100k generated mailboxes never builds
    them all. A position is ``recipient_position * _STRIDE + row_offset``."""

    def __init__(self, tenant: Tenant, rows_for: Callable[[Recipient], list[dict[str, Any]]]) -> None:
        self.tenant = tenant
        self.rows_for = rows_for

    def page(self, start: int, size: int) -> tuple[list[dict[str, Any]], int | None]:
        count = self.tenant.recipient_count
        pos, off = divmod(start, _STRIDE)
        out: list[dict[str, Any]] = []
        while pos < count:
            rows = self.rows_for(self.tenant.at(pos))
            while off < len(rows):
                if len(out) == size:
                    return out, pos * _STRIDE + off
                out.append(rows[off])
                off += 1
            pos, off = pos + 1, 0
            if len(out) == size:
                # Only promise another page if one really exists (no trailing empty page).
                while pos < count:
                    if self.rows_for(self.tenant.at(pos)):
                        return out, pos * _STRIDE
                    pos += 1
        return out, None


@dataclass
class Result:
    rows: list[dict[str, Any]] | Pager
    warnings: list[str] = field(default_factory=list)
    applied: bool = False  # the tenant changed
    result_size: int | None = None  # ResultSize, when given and not Unlimited

    def pager(self) -> Pager:
        return ListPager(self.rows) if isinstance(self.rows, list) else self.rows


# --- parameters -------------------------------------------------------------------------------


class Params:
    """Cmdlet parameters: names case-insensitive (as in PowerShell), values type-checked."""

    def __init__(self, cmdlet: str, given: dict[str, Any], spec: Spec) -> None:
        self.cmdlet = cmdlet
        allowed = {p.lower(): p for p in (*spec.params, *COMMON_PARAMS)}
        allowed.update({a.lower(): target for a, target in spec.aliases.items()})
        if spec.result_size:
            allowed["resultsize"] = "ResultSize"
        self.values: dict[str, Any] = {}
        for key, value in given.items():
            canon = allowed.get(str(key).lower())
            if canon is None:
                raise _bad_parameter(str(key))
            self.values[canon] = value
        missing = [p for p in spec.required if self.values.get(p) in (None, "", [])]
        if missing:
            raise _missing(cmdlet, missing)

    def text(self, name: str) -> str | None:
        v = self.values.get(name)
        if v is None:
            return None
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return str(v)
        raise _invalid(f"Cannot convert the value of parameter '{name}' to type 'System.String'.")

    def flag(self, name: str, default: bool) -> bool:
        v = self.values.get(name, default)
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower().lstrip("$") in ("true", "false"):
            return v.strip().lower().lstrip("$") == "true"
        raise _invalid(f"Cannot convert the value of parameter '{name}' to type 'System.Boolean'.")

    def items(self, name: str) -> list[str]:
        v = self.values.get(name)
        items = v if isinstance(v, list) else [] if v is None else [v]
        out: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise _invalid(f"Cannot convert the value of parameter '{name}' to type 'System.String[]'.")
            out += [p.strip() for p in item.split(",") if p.strip()]
        return out

    def result_size(self) -> int | None:
        v = self.values.get("ResultSize")
        if v is None or (isinstance(v, str) and v.strip().lower() == "unlimited"):
            return None
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise _invalid("Cannot convert the value of parameter 'ResultSize' to type 'Unlimited'.") from None
        if n < 1:
            raise _invalid("The value of parameter 'ResultSize' must be at least 1.")
        return n


COMMON_PARAMS = ("Confirm", "WhatIf", "ErrorAction", "WarningAction", "Verbose", "Debug")


@dataclass(frozen=True)
class Spec:
    fn: Callable[[Tenant, Params], Result]
    params: tuple[str, ...]
    required: tuple[str, ...] = ()
    write: bool = False
    level: str = "read"  # read / recipient / org: which Exchange roles may run it
    result_size: bool = False
    aliases: dict[str, str] = field(default_factory=dict)


# --- lookups and rows -------------------------------------------------------------------------


def _only(found: list[T], key: str) -> T:
    """The one object ``key`` names: Exchange's not-found or ambiguous error otherwise."""
    if not found:
        raise not_found(key)
    if len(found) > 1:
        raise _ambiguous(key)
    return found[0]


def _mailbox(t: Tenant, key: str) -> Recipient:
    return _only(t.find_recipients(key), key)


def _principal(t: Tenant, key: str) -> Principal:
    return _only(t.find_principals(key), key)


def _exo_sp(t: Tenant, key: str) -> ExoServicePrincipal:
    return _only(t.find_exo_sps(key), key)


def _render_principal(p: Principal) -> str:
    return p.upn if isinstance(p, Recipient) else p.identity


def _collections(row: dict[str, Any]) -> dict[str, Any]:
    """Add the ``X@odata.type`` annotation the gateway puts before every string-list property."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, list):
            out[f"{k}@odata.type"] = _COLLECTION
        out[k] = v
    return out


def mailbox_row(r: Recipient) -> dict[str, Any]:
    return _collections(
        {
            "Identity": r.name, "Name": r.name, "DisplayName": r.display_name, "Alias": r.name,
            "UserPrincipalName": r.upn, "PrimarySmtpAddress": r.mail, "WindowsEmailAddress": r.mail,
            "RecipientType": "UserMailbox", "RecipientTypeDetails": r.recipient_type,
            "ExternalDirectoryObjectId": r.id, "Guid": r.exchange_guid,
            "EmailAddresses": r.email_addresses, "GrantSendOnBehalfTo": [],
            "AccountDisabled": not r.account_enabled, "IsMailboxEnabled": True,
            "HiddenFromAddressListsEnabled": False,
        }
    )


def _perm_row(mbx: Recipient, user: str, sid: str, rights: list[str], *, deny: bool = False,
              inherited: bool = False, inheritance: str = "All") -> dict[str, Any]:
    # Rights come back comma-joined in ONE array element, as the live gateway sends them.
    # InheritanceType is unconfirmed over REST (SHAPES.md).
    return _collections(
        {
            "Identity": mbx.name, "User": user, "AccessRights": [", ".join(rights)],
            "IsInherited": inherited, "Deny": deny, "InheritanceType": inheritance,
            "UserSid": sid, "PrimarySmtpAddress": "",
        }
    )


_ALL_RIGHTS = ["FullAccess", "DeleteItem", "ReadPermission", "ChangePermission", "ChangeOwner"]
_INHERITED = (
    ("NAMPR01A001\\Administrator", "S-1-5-21-2115529163-2284512536-1218216307-500", ["FullAccess"], True),
    ("NAMPR01A001\\Domain Admins", "S-1-5-21-2115529163-2284512536-1218216307-512", ["FullAccess"], True),
    ("NAMPR01A001\\Organization Management", "S-1-5-21-2115529163-2284512536-1218216307-1131", _ALL_RIGHTS,
     False),
)


def _mailbox_permission_rows(t: Tenant, mbx: Recipient, sid: str | None) -> list[dict[str, Any]]:
    explicit = [
        _perm_row(mbx, t.render(a.sid), a.sid, a.rights, deny=a.deny, inheritance=a.inheritance)
        for a in t.mailbox_permissions.get(mbx.id, [])
        if sid is None or a.sid == sid
    ]
    if sid is not None:
        return explicit
    self_row = _perm_row(mbx, "NT AUTHORITY\\SELF", SELF_SID, ["FullAccess", "ReadPermission"])
    inherited = [
        _perm_row(mbx, user, usid, rights, deny=deny, inherited=True) for user, usid, rights, deny in _INHERITED
    ]
    return [self_row, *explicit, *inherited]


def _recipient_perm_row(mbx: Recipient, trustee: str, sid: str) -> dict[str, Any]:
    return _collections(
        {
            "Identity": mbx.name, "Trustee": trustee, "AccessControlType": "Allow",
            "AccessRights": ["SendAs"], "IsInherited": False, "InheritanceType": "None",
            "TrusteeSidString": sid, "TrusteeWithPrimarySmtpAddress": "",
        }
    )


def _recipient_perm_rows(t: Tenant, mbx: Recipient, sid: str | None) -> list[dict[str, Any]]:
    rows = [
        _recipient_perm_row(mbx, t.render(s), s)
        for s in t.recipient_permissions.get(mbx.id, [])
        if sid is None or s == sid
    ]
    if sid is None:
        rows.insert(0, _recipient_perm_row(mbx, "NT AUTHORITY\\SELF", SELF_SID))
    return rows


def _cas_row(r: Recipient) -> dict[str, Any]:
    return {
        "Identity": r.name, "Name": r.name, "DisplayName": r.display_name, "PrimarySmtpAddress": r.mail,
        "ExternalDirectoryObjectId": r.id, "Guid": r.exchange_guid,
        "SmtpClientAuthenticationDisabled": r.smtp_auth_disabled, "ImapEnabled": True, "PopEnabled": True,
        "EwsEnabled": r.ews_enabled, "OWAEnabled": True, "MAPIEnabled": True, "ActiveSyncEnabled": True,
    }


def _sp_row(sp: ExoServicePrincipal) -> dict[str, Any]:
    # AppId/ObjectId/DisplayName/Identity and ServiceId are seen in public material; Name, and the
    # values of Identity and Name (the object id here), are unconfirmed (SHAPES.md).
    return {
        "AppId": sp.app_id, "ObjectId": sp.object_id, "DisplayName": sp.display_name,
        "Identity": sp.identity, "Name": sp.object_id, "ServiceId": sp.object_id,
    }


def _scope_row(s: ManagementScope) -> dict[str, Any]:
    # The filter is the property RecipientFilter (Exchange's ManagementScope class; Microsoft365DSC
    # reads $scope.RecipientFilter). RecipientRestrictionFilter is only the New-/Set- parameter.
    return {
        "Name": s.name, "Identity": s.name, "RecipientFilter": s.filter, "RecipientRoot": None,
        "ScopeRestrictionType": "RecipientScope", "Exclusive": False,
    }


def _assignment_row(t: Tenant, a: RoleAssignment) -> dict[str, Any]:
    # Names from a 2026 capture and Microsoft365DSC; RecipientWriteScope's values for an app
    # assignment are unconfirmed (SHAPES.md).
    assignee = t.render(a.app_sid)
    return {
        "Name": a.name, "Identity": a.name, "Role": a.role, "RoleAssignee": assignee,
        "RoleAssigneeName": assignee, "RoleAssigneeType": "ServicePrincipal",
        "CustomResourceScope": a.scope, "RecipientWriteScope": "CustomRecipientScope" if a.scope else "Organization",
        "Enabled": True,
    }


# --- OPATH filters (management scopes) --------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(\(|\)|-and\b|-or\b|-not\b|-eq\b|-ne\b|-like\b|-notlike\b|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[A-Za-z][A-Za-z0-9]*)",
    re.IGNORECASE,
)
_FILTER_PROPS = {
    "primarysmtpaddress", "userprincipalname", "alias", "name", "displayname", "recipienttypedetails",
    "emailaddresses", "memberofgroup", "windowsemailaddress",
    *(f"customattribute{i}" for i in range(1, 16)),
}
Filter = tuple[Any, ...]


def _filter_error(text: str) -> CmdletError:
    return CmdletError(
        400, "BadRequest", "Ex7E8F21", "Microsoft.Exchange.Data.InvalidFilterException",
        f"Invalid filter syntax. For a description of the filter parameter syntax see the command help. "
        f'"{text}"',
    )


def parse_filter(text: str) -> Filter:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise _filter_error(text)
        tokens.append(m.group(1))
        pos = m.end()
    i = 0

    def peek() -> str:
        return tokens[i].lower() if i < len(tokens) else ""

    def expr() -> Filter:
        nonlocal i
        node = term()
        while peek() == "-or":
            i += 1
            node = ("or", node, term())
        return node

    def term() -> Filter:
        nonlocal i
        node = factor()
        while peek() == "-and":
            i += 1
            node = ("and", node, factor())
        return node

    def factor() -> Filter:
        nonlocal i
        if peek() == "-not":
            i += 1
            return ("not", factor())
        if peek() == "(":
            i += 1
            node = expr()
            if peek() != ")":
                raise _filter_error(text)
            i += 1
            return node
        if i + 3 > len(tokens):
            raise _filter_error(text)
        prop, op, value = tokens[i], tokens[i + 1].lower(), tokens[i + 2]
        if prop.lower() not in _FILTER_PROPS or op not in ("-eq", "-ne", "-like", "-notlike"):
            raise _filter_error(text)
        if value[:1] not in ("'", '"'):
            raise _filter_error(text)
        quote = value[0]
        i += 3
        return ("cmp", prop.lower(), op, value[1:-1].replace(quote * 2, quote))

    node = expr()
    if i != len(tokens):
        raise _filter_error(text)
    return node


def _props(r: Recipient) -> dict[str, list[str]]:
    return {
        "primarysmtpaddress": [r.mail], "windowsemailaddress": [r.mail], "userprincipalname": [r.upn],
        "alias": [r.name], "name": [r.name], "displayname": [r.display_name],
        "recipienttypedetails": [r.recipient_type],
        "emailaddresses": [*r.email_addresses, *(a.split(":", 1)[1] for a in r.email_addresses)],
        "memberofgroup": [],  # groups are not modelled: a group scope matches no mailbox
    }


def evaluate(node: Filter, r: Recipient) -> bool:
    kind = node[0]
    if kind == "or":
        return evaluate(node[1], r) or evaluate(node[2], r)
    if kind == "and":
        return evaluate(node[1], r) and evaluate(node[2], r)
    if kind == "not":
        return not evaluate(node[1], r)
    _, prop, op, value = node
    values = [v.lower() for v in _props(r).get(prop, [""])]
    v = value.lower()
    hit = any(fnmatch.fnmatchcase(x, v) for x in values) if op in ("-like", "-notlike") else v in values
    return hit if op in ("-eq", "-like") else not hit


def _in_scope(t: Tenant, a: RoleAssignment, r: Recipient) -> bool:
    if a.scope is None:
        return True
    scope = next((s for s in t.scopes if s.name.lower() == a.scope.lower()), None)
    return scope is not None and evaluate(parse_filter(scope.filter), r)


def rbac_permissions(t: Tenant, app_id: str, mailbox: Recipient) -> set[str]:
    """Permissions RBAC for Applications grants ``app_id`` on ``mailbox`` (for Graph's checks)."""
    sps = [sp for sp in t.exo_sps if sp.app_id.lower() == app_id.lower()]
    out: set[str] = set()
    for sp in sps:
        for a in t.assignments:
            if a.app_sid == sp.sid and _in_scope(t, a, mailbox):
                out |= {p.strip() for p in APP_RBAC_ROLES.get(a.role, "").split(",") if p.strip()}
    return out


# --- cmdlets ----------------------------------------------------------------------------------


# Get-Mailbox -RecipientTypeDetails values (Microsoft's Get-Mailbox page).
MAILBOX_TYPES = (
    "DiscoveryMailbox", "EquipmentMailbox", "GroupMailbox", "LegacyMailbox", "LinkedMailbox", "LinkedRoomMailbox",
    "RoomMailbox", "SchedulingMailbox", "SharedMailbox", "TeamMailbox", "UserMailbox",
)


def _get_mailbox(t: Tenant, p: Params) -> Result:
    given = p.items("RecipientTypeDetails")
    types = {x.lower() for x in given}
    for bad in (x for x in given if x.lower() not in {m.lower() for m in MAILBOX_TYPES}):
        raise _enum_error(
            "RecipientTypeDetails", bad, "Microsoft.Exchange.Data.Directory.Recipient.RecipientTypeDetails[]",
            MAILBOX_TYPES,
        )
    identity = p.text("Identity")
    if identity is not None:
        mbx = _mailbox(t, identity)
        rows = [mailbox_row(mbx)] if not types or mbx.recipient_type.lower() in types else []
        return Result(rows, result_size=p.result_size())

    def rows_for(r: Recipient) -> list[dict[str, Any]]:
        return [mailbox_row(r)] if not types or r.recipient_type.lower() in types else []

    return Result(RecipientPager(t, rows_for), result_size=p.result_size())


def _get_mailbox_permission(t: Tenant, p: Params) -> Result:
    mbx = _mailbox(t, p.text("Identity") or "")
    user = p.text("User")
    sid = _principal(t, user).sid if user else None
    return Result(_mailbox_permission_rows(t, mbx, sid), result_size=p.result_size())


def _rights(p: Params, valid: tuple[str, ...], type_name: str) -> list[str]:
    by_lower = {v.lower(): v for v in valid}
    out = []
    for r in p.items("AccessRights"):
        canon = by_lower.get(r.lower())
        if canon is None:
            raise _enum_error("AccessRights", r, type_name, valid)
        if canon not in out:
            out.append(canon)
    if not out:
        raise _missing(p.cmdlet, ["AccessRights"])
    return out


def _already_present(mbx: Recipient, trustee: str) -> str:
    return (
        f'The appropriate access control entry is already present on the object "{mbx.upn}" for '
        f'account "{trustee}".'
    )


def _ace_missing(mbx: Recipient, trustee: str) -> str:
    return (
        f'Can\'t remove the access control entry on the object "{mbx.upn}" for account "{trustee}" '
        "because the ACE doesn't exist on the object."
    )


_MAILBOX_RIGHTS_TYPE = "Microsoft.Exchange.Management.RecipientTasks.MailboxRights[]"


def _inheritance(p: Params, default: str | None) -> str | None:
    value = p.text("InheritanceType")
    if value is None:
        return default
    canon = {v.lower(): v for v in INHERITANCE_TYPES}.get(value.lower())
    if canon is None:
        raise _enum_error(
            "InheritanceType", value, "System.DirectoryServices.ActiveDirectorySecurityInheritance",
            INHERITANCE_TYPES,
        )
    return canon


def _add_mailbox_permission(t: Tenant, p: Params) -> Result:
    mbx = _mailbox(t, p.text("Identity") or "")
    who = _principal(t, p.text("User") or "")
    rights = _rights(p, MAILBOX_RIGHTS, _MAILBOX_RIGHTS_TYPE)
    inheritance = _inheritance(p, "All") or "All"
    automapping = p.flag("AutoMapping", True)
    deny = p.flag("Deny", False)
    if p.flag("WhatIf", False):
        return Result([])
    aces = t.mailbox_permissions.setdefault(mbx.id, [])
    have = {r for a in aces if a.sid == who.sid and a.deny == deny for r in a.rights}
    missing = [r for r in rights if r not in have]
    if not missing:
        return Result([], [_already_present(mbx, _render_principal(who))])
    same = next(
        (a for a in aces if a.sid == who.sid and a.deny == deny and a.inheritance == inheritance), None
    )
    if same is not None:
        # AutoMapping is fixed when the ACE is first written; Exchange cannot change it in place.
        same.rights += missing
    else:
        aces.append(Ace(who.sid, list(missing), inheritance, automapping, deny))
    row = _perm_row(mbx, _render_principal(who), who.sid, missing, deny=deny, inheritance=inheritance)
    return Result([row], applied=True)


def _remove_mailbox_permission(t: Tenant, p: Params) -> Result:
    mbx = _mailbox(t, p.text("Identity") or "")
    who = _principal(t, p.text("User") or "")
    rights = _rights(p, MAILBOX_RIGHTS, _MAILBOX_RIGHTS_TYPE)
    inheritance = _inheritance(p, None)
    deny = p.flag("Deny", False)
    if p.flag("WhatIf", False):
        return Result([])
    aces = t.mailbox_permissions.get(mbx.id, [])
    removed = False
    for a in aces:
        if a.sid == who.sid and a.deny == deny and inheritance in (None, a.inheritance):
            kept = [r for r in a.rights if r not in rights]
            removed |= len(kept) != len(a.rights)
            a.rights = kept
    if not removed:
        return Result([], [_ace_missing(mbx, _render_principal(who))])
    t.mailbox_permissions[mbx.id] = [a for a in aces if a.rights]
    return Result([], applied=True)


def _sendas(p: Params) -> None:
    _rights(p, ("SendAs",), "Microsoft.Exchange.Management.RecipientTasks.RecipientAccessRight[]")


def _get_recipient_permission(t: Tenant, p: Params) -> Result:
    if p.values.get("AccessRights") is not None:
        _sendas(p)  # SendAs is the only right these rows carry; anything else is a binding error
    trustee = p.text("Trustee")
    sid = _principal(t, trustee).sid if trustee else None
    identity = p.text("Identity")
    if identity is not None:
        return Result(_recipient_perm_rows(t, _mailbox(t, identity), sid), result_size=p.result_size())
    if sid is not None:
        # Only mailboxes with explicit Send As grants can match a trustee: no full directory scan.
        rows = []
        for mbx_id, sids in t.recipient_permissions.items():
            mbx = t.find_recipient(mbx_id)
            if mbx is not None and sid in sids:
                rows += _recipient_perm_rows(t, mbx, sid)
        return Result(rows, result_size=p.result_size())
    return Result(RecipientPager(t, lambda r: _recipient_perm_rows(t, r, None)), result_size=p.result_size())


def _add_recipient_permission(t: Tenant, p: Params) -> Result:
    mbx = _mailbox(t, p.text("Identity") or "")
    who = _principal(t, p.text("Trustee") or "")
    _sendas(p)
    if p.flag("WhatIf", False):
        return Result([])
    sids = t.recipient_permissions.setdefault(mbx.id, [])
    if who.sid in sids:
        return Result([], [_already_present(mbx, _render_principal(who))])
    sids.append(who.sid)
    return Result([_recipient_perm_row(mbx, _render_principal(who), who.sid)], applied=True)


def _remove_recipient_permission(t: Tenant, p: Params) -> Result:
    mbx = _mailbox(t, p.text("Identity") or "")
    who = _principal(t, p.text("Trustee") or "")
    _sendas(p)
    if p.flag("WhatIf", False):
        return Result([])
    sids = t.recipient_permissions.get(mbx.id, [])
    if who.sid not in sids:
        return Result([], [_ace_missing(mbx, _render_principal(who))])
    sids.remove(who.sid)
    return Result([], applied=True)


def _get_cas_mailbox(t: Tenant, p: Params) -> Result:
    identity = p.text("Identity")
    if identity is not None:
        return Result([_cas_row(_mailbox(t, identity))], result_size=p.result_size())
    return Result(RecipientPager(t, lambda r: [_cas_row(r)]), result_size=p.result_size())


def _get_transport_config(t: Tenant, p: Params) -> Result:
    return Result(
        [
            {
                "Identity": "Transport Settings", "Name": "Transport Settings",
                "SmtpClientAuthenticationDisabled": t.transport_smtp_auth_disabled,
                "ExternalDsnReportingAuthority": t.domain,
            }
        ]
    )


def _get_organization_config(t: Tenant, p: Params) -> Result:
    """Property names from the OrganizationConfig class reference (EwsEnabled, EwsAllowList ... are
    Nullable<bool> / MultiValuedProperty<string>) and "Control access to EWS in Exchange" (2025-04):
    ``EwsAllowedAppIDs`` is read only with -RetrieveEwsOperationAccessPolicy. That it is absent
    otherwise, and comes back as ONE comma-joined string (a one-element list), is third-party
    report (updates-2026-11.md §1), unconfirmed."""
    row: dict[str, Any] = {
        "Identity": t.name, "Name": t.name, "DisplayName": t.name, "Guid": t.tenant_id,
        "EwsEnabled": t.ews_enabled, "EwsApplicationAccessPolicy": None, "EwsAllowList": None,
        "EwsBlockList": None, "EwsAllowOutlook": None, "EwsAllowMacOutlook": None, "EwsAllowEntourage": None,
    }
    if p.flag("RetrieveEwsOperationAccessPolicy", False):
        ids = t.ews_allowed_app_ids
        row["EwsAllowedAppIDs"] = [",".join(ids)] if ids else []
    return Result([_collections(row)])


def _set_organization_config(t: Tenant, p: Params) -> Result:
    enabled: bool | None = None
    if "EwsEnabled" in p.values:
        enabled = None if p.values["EwsEnabled"] is None else p.flag("EwsEnabled", False)
    ids: list[str] | None = None
    if "EwsAllowedAppIDs" in p.values:
        ids = [i.lower() for i in p.items("EwsAllowedAppIDs")]
        bad = [i for i in ids if not _GUID.match(i)]
        if bad:
            raise _invalid(f"Cannot bind parameter 'EwsAllowedAppIDs'. Cannot convert value \"{bad[0]}\" to type \"System.Guid\".")
    if p.flag("WhatIf", False):
        return Result([])
    if "EwsEnabled" in p.values:
        t.ews_enabled = enabled
    if ids is not None:
        t.ews_allowed_app_ids = list(dict.fromkeys(ids))  # the whole list is replaced, never merged
    return Result([], applied=True)


_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _guid(p: Params, name: str) -> str:
    value = (p.text(name) or "").strip().lower()
    if not _GUID.match(value):
        raise _invalid(f"Cannot bind parameter '{name}'. Cannot convert value \"{value}\" to type \"System.Guid\".")
    return value


def _get_service_principal(t: Tenant, p: Params) -> Result:
    identity = p.text("Identity")
    sps = [_exo_sp(t, identity)] if identity else list(t.exo_sps)
    return Result([_sp_row(sp) for sp in sps])


def _new_service_principal(t: Tenant, p: Params) -> Result:
    app_id = _guid(p, "AppId")
    object_id = _guid(p, "ObjectId")
    display = p.text("DisplayName") or ""
    if p.flag("WhatIf", False):
        return Result([])
    if any(sp.app_id == app_id for sp in t.exo_sps):
        raise _exists(app_id)
    # Recorded as given: Exchange cannot tell an App-registration object id from the Enterprise
    # application's, which is exactly the mistake the client must avoid (reference §6).
    sp = ExoServicePrincipal(app_id, object_id, display, t.allocate_sid())
    t.exo_sps.append(sp)
    return Result([_sp_row(sp)], applied=True)


def _remove_service_principal(t: Tenant, p: Params) -> Result:
    sp = _exo_sp(t, p.text("Identity") or "")
    if p.flag("WhatIf", False):
        return Result([])
    t.exo_sps.remove(sp)
    # Mailbox ACEs keep the SID (Get-MailboxPermission then shows it raw); assignments go.
    t.assignments = [a for a in t.assignments if a.app_sid != sp.sid]
    return Result([], applied=True)


def _new_management_scope(t: Tenant, p: Params) -> Result:
    name = p.text("Name") or ""
    text = p.text("RecipientRestrictionFilter") or ""
    parse_filter(text)
    if p.flag("WhatIf", False):
        return Result([])
    if any(s.name.lower() == name.lower() for s in t.scopes):
        raise _exists(name)
    scope = ManagementScope(name, text)
    t.scopes.append(scope)
    return Result([_scope_row(scope)], applied=True)


def _set_management_scope(t: Tenant, p: Params) -> Result:
    name = p.text("Identity") or ""
    scope = next((s for s in t.scopes if s.name.lower() == name.lower()), None)
    if scope is None:
        raise not_found(name)
    text = p.text("RecipientRestrictionFilter")
    if text is not None:
        parse_filter(text)
    if p.flag("WhatIf", False):
        return Result([])
    if text is not None:
        scope.filter = text
    # Set-* cmdlets return nothing on success, like the real one.
    return Result([], applied=True)


def _get_management_scope(t: Tenant, p: Params) -> Result:
    identity = p.text("Identity")
    scopes = t.scopes
    if identity:
        scopes = [s for s in scopes if s.name.lower() == identity.lower()]
        if not scopes:
            raise not_found(identity)
    return Result([_scope_row(s) for s in scopes])


def _new_management_role_assignment(t: Tenant, p: Params) -> Result:
    sp = _exo_sp(t, p.text("App") or "")
    role = p.text("Role") or ""
    canon = next((r for r in APP_RBAC_ROLES if r.lower() == role.lower()), None)
    if canon is None:
        raise not_found(role)
    scope_name = p.text("CustomResourceScope")
    if scope_name is not None:
        scope = next((s for s in t.scopes if s.name.lower() == scope_name.lower()), None)
        if scope is None:
            raise not_found(scope_name)
        scope_name = scope.name
    name = p.text("Name") or f"{canon}-{sp.object_id}"
    if p.flag("WhatIf", False):
        return Result([])
    if any(a.name.lower() == name.lower() for a in t.assignments):
        raise _exists(name)
    a = RoleAssignment(name, canon, sp.sid, scope_name)
    t.assignments.append(a)
    return Result([_assignment_row(t, a)], applied=True)


def _get_management_role_assignment(t: Tenant, p: Params) -> Result:
    rows = list(t.assignments)
    identity = p.text("Identity")
    if identity:
        rows = [a for a in rows if a.name.lower() == identity.lower()]
        if not rows:
            raise not_found(identity)
    assignee = p.text("RoleAssignee") or p.text("App")
    if assignee:
        sid = _exo_sp(t, assignee).sid
        rows = [a for a in rows if a.app_sid == sid]
    role = p.text("Role")
    if role:
        rows = [a for a in rows if a.role.lower() == role.lower()]
    return Result([_assignment_row(t, a) for a in rows])


def _test_service_principal_authorization(t: Tenant, p: Params) -> Result:
    sp = _exo_sp(t, p.text("Identity") or "")
    resource = p.text("Resource")
    mbx = _mailbox(t, resource) if resource else None
    rows = []
    for a in t.assignments:
        if a.app_sid != sp.sid:
            continue
        in_scope: bool | str = "Not Run" if mbx is None else _in_scope(t, a, mbx)
        rows.append(
            {
                "RoleName": a.role, "GrantedPermissions": APP_RBAC_ROLES.get(a.role, ""),
                "AllowedResourceScope": a.scope or "Organization",
                "ScopeType": "CustomRecipientScope" if a.scope else "Organization", "InScope": in_scope,
            }
        )
    return Result(rows)


_PERM = ("Identity", "User", "AccessRights", "InheritanceType", "Deny")
CMDLETS: dict[str, Spec] = {
    "Get-Mailbox": Spec(_get_mailbox, ("Identity", "RecipientTypeDetails"), result_size=True),
    "Get-MailboxPermission": Spec(
        _get_mailbox_permission,
        ("Identity", "User", "IncludeUnresolvedPermissions", "IncludeSoftDeletedUserPermissions",
         "IncludeUserWithDisplayName"),
        ("Identity",), result_size=True,
    ),
    "Add-MailboxPermission": Spec(
        _add_mailbox_permission, (*_PERM, "AutoMapping", "GroupMailbox"), ("Identity", "User", "AccessRights"),
        write=True, level="recipient",
    ),
    "Remove-MailboxPermission": Spec(
        _remove_mailbox_permission, (*_PERM, "BypassMasterAccountSid", "GroupMailbox"),
        ("Identity", "User", "AccessRights"), write=True, level="recipient",
    ),
    "Get-RecipientPermission": Spec(
        _get_recipient_permission, ("Identity", "Trustee", "AccessRights"), result_size=True
    ),
    "Add-RecipientPermission": Spec(
        _add_recipient_permission, ("Identity", "Trustee", "AccessRights"), ("Identity", "Trustee", "AccessRights"),
        write=True, level="recipient",
    ),
    "Remove-RecipientPermission": Spec(
        _remove_recipient_permission, ("Identity", "Trustee", "AccessRights"),
        ("Identity", "Trustee", "AccessRights"), write=True, level="recipient",
    ),
    "Get-CASMailbox": Spec(_get_cas_mailbox, ("Identity",), result_size=True),
    "Get-TransportConfig": Spec(_get_transport_config, ()),
    "Get-OrganizationConfig": Spec(_get_organization_config, ("RetrieveEwsOperationAccessPolicy",)),
    "Set-OrganizationConfig": Spec(
        _set_organization_config, ("EwsEnabled", "EwsAllowedAppIDs"), write=True, level="org",
    ),
    "Get-ServicePrincipal": Spec(_get_service_principal, ("Identity", "Organization")),
    "New-ServicePrincipal": Spec(
        _new_service_principal, ("AppId", "ObjectId", "DisplayName", "Organization"), ("AppId", "ObjectId"),
        write=True, level="org", aliases={"ServiceId": "ObjectId"},
    ),
    "Remove-ServicePrincipal": Spec(
        _remove_service_principal, ("Identity",), ("Identity",), write=True, level="org"
    ),
    "New-ManagementScope": Spec(
        _new_management_scope, ("Name", "RecipientRestrictionFilter"), ("Name", "RecipientRestrictionFilter"),
        write=True, level="org",
    ),
    "Set-ManagementScope": Spec(
        _set_management_scope, ("Identity", "RecipientRestrictionFilter"), ("Identity",), write=True, level="org",
    ),
    "Get-ManagementScope": Spec(_get_management_scope, ("Identity",)),
    "New-ManagementRoleAssignment": Spec(
        _new_management_role_assignment, ("App", "Role", "CustomResourceScope", "Name"), ("App", "Role"),
        write=True, level="org",
    ),
    "Get-ManagementRoleAssignment": Spec(
        _get_management_role_assignment, ("Identity", "RoleAssignee", "App", "Role")
    ),
    "Test-ServicePrincipalAuthorization": Spec(
        _test_service_principal_authorization, ("Identity", "Resource"), ("Identity",)
    ),
}
_BY_LOWER = {k.lower(): k for k in CMDLETS}


def lookup(name: str) -> tuple[str, Spec]:
    """Canonical cmdlet name and spec (names are case-insensitive, as in PowerShell)."""
    canon = _BY_LOWER.get((name or "").strip().lower())
    if canon is None:
        raise _unknown_cmdlet(name)
    return canon, CMDLETS[canon]


def exported_cmdlets(levels: frozenset[str]) -> list[str]:
    """What EXOModuleFile lists for an app whose roles give these levels: every cmdlet served
    here that the roles allow (the real list holds hundreds more; clients look for theirs)."""
    return sorted(name for name, spec in CMDLETS.items() if spec.level in levels)


def execute(t: Tenant, name: str, params: dict[str, Any], levels: frozenset[str], caller: str) -> Result:
    """Run one cmdlet. Raises :class:`CmdletError`; the tenant changes only when ``applied``."""
    canon, spec = lookup(name)
    if spec.level not in levels:
        raise access_denied(caller, canon)
    p = Params(canon, params, spec)
    result = spec.fn(t, p)
    if spec.result_size and result.result_size is None:
        result.result_size = p.result_size()
    return result


def select(row: dict[str, Any], props: list[str] | None) -> dict[str, Any]:
    """InvokeCommand's ``?$select=A,B``: keep those properties (and their annotations)."""
    if not props:
        return row
    keep = {p.lower() for p in props}
    return {k: v for k, v in row.items() if k.split("@", 1)[0].lower() in keep}
