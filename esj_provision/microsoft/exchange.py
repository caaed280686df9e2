"""Exchange Online cmdlets over the admin ``InvokeCommand`` endpoint: the ONLY module that knows it.

``POST {exchange}/adminapi/beta/{tenant}/InvokeCommand`` is what the ExchangeOnlineManagement V3
module itself uses to run cmdlets. Microsoft does not document it for third parties and can change
it at any time, which is why everything about it lives here: the URL, the headers, the envelope,
paging, warnings and the error shapes (see shared/reference/exchange-and-graph.md §3-§4).

Retries, throttling, tokens and pacing belong to :mod:`esj_provision.microsoft.http`; this module only marks
writes (so the transport never repeats one after a 5xx or a timeout) and turns answers into the
project's errors and models.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from .. import hints
from ..errors import (
    AccessDeniedError,
    AmbiguousWriteError,
    EsjProvisionError,
    NotFoundError,
    ServiceError,
    ThrottledError,
    TransientError,
    UsageError,
)
from ..models import (
    CasMailbox,
    EwsOrgPolicy,
    ExchangeMailbox,
    ManagementScope,
    PermissionRow,
    RecipientPermissionRow,
    Right,
    SendAsGrant,
    TransportConfig,
    WriteResult,
    is_address,
    is_guid,
)
from .http import WRITE_EXTENSION

if TYPE_CHECKING:
    import httpx

    from .http import MicrosoftHttp

log = logging.getLogger(__name__)

# The arbitration mailbox the EXO module anchors organisation-level calls on.
SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"

# A runaway guard, not a coverage limit: 1000 rows a page makes this a million rows.
MAX_PAGES = 1000

# Verbs whose cmdlets change nothing; any other verb (and an unknown one) is treated as a write,
# so that a forgotten ``write=True`` can never make the transport repeat a change.
READ_VERBS = ("Get-", "Test-", "Search-")

# Idempotency markers (reference §4.3, §4.5). Exchange words them slightly differently across
# cmdlets, hence substrings rather than whole sentences.
_ALREADY_PRESENT = ("already present", "already exists", "already has")
_NOT_PRESENT = ("doesn't exist", "does not exist", "isn't present", "is not present")

_RBAC_DENIED = ("cmdletaccessdenied", "isn't supported in this scenario", "is not supported in this scenario")

# "Ex6F9304|Microsoft.Exchange...ManagementObjectNotFoundException|text" or "|Type.Name|text".
_DETAIL_PREFIX = re.compile(r"^[^|\s]*\|([\w.`]+)\|")
_DIAG_REASON = re.compile(r'reason="([^"]*)"')


@dataclass(frozen=True)
class InvokeResult:
    """Every row of every page, the cmdlet warnings, and Microsoft's request id (first page)."""

    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    request_id: str | None = None


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------


def _printable(text: str, limit: int = 500) -> str:
    """Drop NULs and control characters (a 403 body is a run of NULs), collapse spaces, cap length."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def error_message(payload: Mapping[str, Any]) -> tuple[str, str]:
    """The useful text of an InvokeCommand error body, and the .NET exception type(s) it names.

    Precedence (reference §3): ``error.innererror.internalexception.message``, then
    ``error.details[0].message`` without its ``Ex…|Type.Name|`` prefix, then ``error.message``,
    which is often only "Invalid Operation" or "Error executing cmdlet".
    """
    err = payload.get("error")
    if not isinstance(err, dict):
        return "", ""
    types: list[str] = []
    inner = err.get("innererror") or err.get("innerError") or {}
    internal = inner.get("internalexception") if isinstance(inner, dict) else None
    internal_msg = ""
    if isinstance(internal, dict):
        internal_msg = str(internal.get("message") or "").strip()
        types.append(str(internal.get("type") or ""))
    detail_msg = ""
    details = err.get("details")
    if isinstance(details, list) and details and isinstance(details[0], dict):
        raw = str(details[0].get("message") or "")
        m = _DETAIL_PREFIX.match(raw)
        if m:
            types.append(m.group(1))
            raw = raw[m.end() :]
        detail_msg = raw.strip()
    message = internal_msg or detail_msg or str(err.get("message") or "").strip()
    return message, " ".join(t for t in types if t)


def _request_id(headers: httpx.Headers) -> str | None:
    return headers.get("request-id") or headers.get("x-ms-request-id") or None


def _diagnostics(headers: httpx.Headers) -> str:
    """The reason Exchange puts in ``x-ms-diagnostics`` (``2000003;reason="...";error_category=...``)."""
    raw = headers.get("x-ms-diagnostics") or ""
    m = _DIAG_REASON.search(raw)
    return _printable(m.group(1) if m else raw, 300)


def map_error(
    status: int,
    headers: httpx.Headers,
    body: bytes,
    cmdlet: str,
    *,
    write: bool,
) -> EsjProvisionError:
    """The one mapping from a failed InvokeCommand answer to the project's errors.

    Long on purpose (design review: "a long but honest table"): one ordered list of Exchange's
    error shapes, checked top to bottom, is what a reader compares with Microsoft's answers."""
    request_id = _request_id(headers)
    payload = _json_object(body)
    message, types = error_message(payload) if payload else ("", "")
    message = _printable(message)
    err = payload.get("error") if payload else None
    code = str(err.get("code") or "") if isinstance(err, dict) else ""
    haystack = f"{code} {types} {message}".lower()
    diag = _diagnostics(headers)
    kw: dict[str, Any] = {"request_id": request_id, "status_code": status}
    said = message or diag or "access denied"

    if status == 401:
        return AccessDeniedError(
            f"{cmdlet}: Exchange refused the app's token (401): the app has no Exchange.ManageAsApp "
            f"permission (or admin consent is missing){f': {diag}' if diag else ''}",
            hint=hints.EXCHANGE_CONSENT,
            **kw,
        )
    if status == 403:
        if payload is None:
            # Live-measured: app role without an Exchange admin role answers 403 with NUL bytes
            # instead of JSON; the only reason given is in x-ms-diagnostics.
            return AccessDeniedError(
                f"{cmdlet}: Exchange refused the call (403): the app has the Exchange.ManageAsApp "
                "permission but no Exchange admin role" + (f" ({diag})" if diag else ""),
                hint=hints.EXCHANGE_ROLE,
                **kw,
            )
        if any(marker in haystack for marker in _RBAC_DENIED):
            return AccessDeniedError(
                f"{cmdlet}: the app's Exchange role does not allow this cmdlet (missing RBAC role): {said}",
                hint=hints.EXCHANGE_ROLE,
                **kw,
            )
        return AccessDeniedError(f"{cmdlet}: Exchange denied access (403): {said}", hint=hints.EXCHANGE_ROLE, **kw)
    not_found = "managementobjectnotfound" in haystack or "couldn't be found on" in haystack
    if status == 404 or (status == 400 and not_found):
        if payload is None or not (message or not_found):
            # A bare 404 is the URL, not the mailbox: usually a wrong tenant segment or endpoint.
            return ServiceError(
                f"{cmdlet}: Exchange answered 404 without details",
                hint="check AZURE_TENANT_ID (tenant id or initial *.onmicrosoft.com domain) and the "
                "Exchange endpoint",
                **kw,
            )
        return NotFoundError(
            f"{cmdlet}: {message}",
            hint="check the address: Exchange has no recipient with that identity in this tenant",
            **kw,
        )
    if status == 429:
        return ThrottledError(
            f"{cmdlet}: Exchange is still throttling the app after the retries",
            hint="wait a few minutes and run again",
            **kw,
        )
    if status >= 500:
        if write:
            return AmbiguousWriteError(
                f"{cmdlet}: Exchange failed ({status}) after the change was sent; it may or may not "
                f"have been applied{f': {message}' if message else ''}",
                hint="the state is read again before anything is repeated",
                **kw,
            )
        return TransientError(
            f"{cmdlet}: Exchange failed ({status}){f': {message}' if message else ''}",
            hint="Microsoft's service had a problem; try again later",
            **kw,
        )
    text = message or (_printable(body.decode("utf-8", "replace"), 200) if body else "") or "no details"
    return ServiceError(f"{cmdlet} failed ({status}): {text}", hint=_hint_for_400(haystack), **kw)


def _hint_for_400(haystack: str) -> str:
    if "parameter" in haystack:
        return "Exchange rejected a parameter; the endpoint may have changed (it is not a supported API)"
    return "see Microsoft's message; quote the request id to Microsoft support if it persists"


# --------------------------------------------------------------------------------------------
# Row parsing and matching (pure)
# --------------------------------------------------------------------------------------------


def split_rights(value: Any) -> frozenset[str]:
    """AccessRights arrive as a list whose elements may be comma-joined ("FullAccess, ReadPermission"),
    or as a plain string."""
    items = [value] if isinstance(value, str) else list(value or [])
    return frozenset(part.strip() for item in items for part in str(item).split(",") if part.strip())


def split_app_ids(value: Any) -> tuple[str, ...]:
    """EwsAllowedAppIDs as ids, lower-case, in order, without duplicates: accepts a list of
    comma-joined strings, a plain string, or None."""
    items = [value] if isinstance(value, str) else list(value or [])
    ids = (part.strip().lower() for item in items for part in str(item).split(",") if part.strip())
    return tuple(dict.fromkeys(ids))


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _opt_bool(value: Any) -> bool | None:
    return None if value is None or value == "" else _bool(value)


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def parse_permission_row(row: Mapping[str, Any]) -> PermissionRow:
    return PermissionRow(
        user=str(row.get("User") or ""),
        access_rights=split_rights(row.get("AccessRights")),
        deny=_bool(row.get("Deny")),
        is_inherited=_bool(row.get("IsInherited")),
        user_sid=_text(row.get("UserSid")),
    )


def parse_recipient_permission_row(row: Mapping[str, Any]) -> RecipientPermissionRow:
    return RecipientPermissionRow(
        trustee=str(row.get("Trustee") or ""),
        access_rights=split_rights(row.get("AccessRights")),
        allow=str(row.get("AccessControlType") or "Allow").lower() != "deny",
        trustee_sid=_text(row.get("TrusteeSidString")),
        is_inherited=_bool(row.get("IsInherited")),
    )


def row_matches(row: PermissionRow | RecipientPermissionRow, aliases: Iterable[str]) -> bool:
    """Whether a row names the trustee: any alias (UPN, address, object id, SID, SP identity)
    equals the row's principal or SID, ignoring case. Rows show a user as UPN, display name or SID,
    and a service principal in a form not yet confirmed, so callers pass every identifier they know."""
    wanted = {a.strip().casefold() for a in aliases if a and a.strip()}
    names = (row.user, row.user_sid) if isinstance(row, PermissionRow) else (row.trustee, row.trustee_sid)
    return any(n and n.strip().casefold() in wanted for n in names)


def holds(
    rows: Iterable[PermissionRow | RecipientPermissionRow],
    aliases: Iterable[str],
    right: str | None = None,
) -> bool:
    """True when an explicit, allowing row grants ``right`` to the trustee.

    ``right`` defaults to FullAccess for mailbox rows and SendAs for recipient rows. Inherited,
    deny and NT AUTHORITY\\SELF rows never count.
    """
    names = list(aliases)
    for row in rows:
        if isinstance(row, PermissionRow):
            effective = row.is_delegation
            want = right or Right.FULL_ACCESS.value
        else:
            effective = row.allow and not row.is_inherited
            want = right or Right.SEND_AS.value
        if (
            effective
            and want.casefold() in {r.casefold() for r in row.access_rights}
            and row_matches(row, names)
        ):
            return True
    return False


def _has_marker(texts: Iterable[str], markers: tuple[str, ...]) -> bool:
    return any(m in t.lower() for t in texts for m in markers)


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class ExchangeClient:
    """Runs Exchange cmdlets app-only through InvokeCommand, over the shared :class:`MicrosoftHttp`."""

    def __init__(self, http: MicrosoftHttp, tenant: str) -> None:
        if not tenant:
            raise ValueError("tenant is required (tenant id or initial domain)")
        self._http = http
        self.tenant = tenant
        self.url = f"{http.settings.exchange_endpoint}/adminapi/beta/{tenant}/InvokeCommand"

    # -- low level ----------------------------------------------------------------------------

    def anchor_for(self, mailbox: str | None) -> str:
        """X-AnchorMailbox routes the call to the server holding the mailbox.

        Per-mailbox cmdlets anchor on the mailbox's UPN (as CIPP does for Add-MailboxPermission);
        organisation-level ones on the system mailbox: ``UPN:SystemMailbox{…}@<domain>`` like the
        EXO module, or ``APP:SystemMailbox{…}@<tenant guid>`` like CIPP when only the GUID is known.
        An identity that is not an address (a GUID, an alias) gets the organisation anchor, since
        the anchor is only a routing hint and a wrong one costs more than none.
        """
        if mailbox and is_address(mailbox):
            return f"UPN:{mailbox}"
        if is_guid(self.tenant):
            return f"APP:{SYSTEM_MAILBOX}@{self.tenant}"
        return f"UPN:{SYSTEM_MAILBOX}@{self.tenant}"

    def _next_url(self, link: str, cmdlet: str) -> str:
        """Where the next page lives. The bearer token goes only to the configured endpoint: a link
        on another origin (Exchange has been seen writing outlook.office.com into its OData context
        while serving outlook.office365.com) is re-based onto it when it is the same API path, and
        refused otherwise."""
        absolute = urljoin(self.url, link)
        base = urlsplit(self._http.settings.exchange_endpoint)
        target = urlsplit(absolute)
        if (target.scheme, target.netloc) == (base.scheme, base.netloc):
            return absolute
        if target.path.startswith("/adminapi/"):
            log.debug("%s: nextLink on %s re-based onto %s", cmdlet, target.netloc, base.netloc)
            return target._replace(scheme=base.scheme, netloc=base.netloc).geturl()
        raise ServiceError(
            f"{cmdlet}: Exchange returned a next-page link to another host ({target.netloc}); "
            "refusing to follow it with the admin token",
            hint="report this: the InvokeCommand endpoint may have changed",
        )

    async def invoke(
        self,
        cmdlet: str,
        parameters: Mapping[str, Any],
        *,
        anchor: str | None = None,
        write: bool | None = None,
    ) -> InvokeResult:
        """Run one cmdlet and return every row of every page.

        ``anchor`` is the mailbox the cmdlet acts on (``None``: an organisation-level cmdlet).
        ``write`` marks a change so that the transport never repeats it after a 5xx or timeout;
        left as ``None`` it is derived from the verb (only Get-/Test-/Search- are reads).
        """
        rows: list[dict[str, Any]] = []
        warnings: list[str] = []
        request_id: str | None = None
        async for page in self.pages(cmdlet, parameters, anchor=anchor, write=write):
            request_id = request_id or page.request_id
            rows.extend(page.rows)
            warnings.extend(w for w in page.warnings if w not in warnings)
        for w in warnings:
            log.debug("%s warning: %s", cmdlet, w)
        return InvokeResult(rows=rows, warnings=warnings, request_id=request_id)

    async def pages(
        self,
        cmdlet: str,
        parameters: Mapping[str, Any],
        *,
        anchor: str | None = None,
        write: bool | None = None,
    ) -> AsyncIterator[InvokeResult]:
        """Run one cmdlet and yield each page as it arrives (its rows and warnings; the request id
        is the first page's), so a long listing is parsed page by page and never held whole.

        Paging re-POSTs the same body to ``@odata.nextLink`` (it is not a GET) without pausing,
        since the link expires within minutes. A page that fails after others were read raises:
        a short list must never pass for a full one.

        Kept as one function, though long: building the envelope, paging and mapping each page's
        errors are the one place that knows InvokeCommand, and reading them together is the check.
        """
        is_write = write if write is not None else not cmdlet.startswith(READ_VERBS)
        body = json.dumps(
            {"CmdletInput": {"CmdletName": cmdlet, "Parameters": dict(parameters)}}, separators=(",", ":")
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-ResponseFormat": "json",
            "Prefer": "odata.maxpagesize=1000",
            "X-CmdletName": cmdlet,
            "X-AnchorMailbox": self.anchor_for(anchor),
        }
        extensions = {WRITE_EXTENSION: True} if is_write else {}
        request_id: str | None = None
        url = self.url
        for page in range(1, MAX_PAGES + 1):
            response = await self._http.exchange_client.post(url, content=body, headers=headers, extensions=extensions)
            if page == 1:
                request_id = _request_id(response.headers)
            if not response.is_success:
                error = map_error(response.status_code, response.headers, response.content, cmdlet, write=is_write)
                if page > 1 and isinstance(error, NotFoundError):
                    # Pages were read already: "not found" now means the continuation broke, not
                    # that the object is absent, and a short list must never pass for a full one.
                    error = ServiceError(
                        f"{cmdlet}: page {page} failed ({error.message}); refusing to return a "
                        "truncated list",
                        hint="run the command again",
                        request_id=error.request_id,
                        status_code=error.status_code,
                    )
                raise error
            payload = _json_object(response.content) if response.content.strip() else {}
            if payload is None:
                raise ServiceError(
                    f"{cmdlet}: Exchange answered {response.status_code} with a body that is not JSON",
                    hint="the InvokeCommand endpoint may have changed; quote the request id to Microsoft",
                    request_id=_request_id(response.headers),
                    status_code=response.status_code,
                )
            value = payload.get("value")
            rows: list[dict[str, Any]] = []
            if isinstance(value, list):
                rows = [r for r in value if isinstance(r, dict)]
            elif isinstance(value, dict):
                rows = [value]
            warnings: list[str] = []
            for w in [*_warnings_from(payload), *_warnings_header(response.headers)]:
                if w not in warnings:
                    warnings.append(w)
            yield InvokeResult(rows=rows, warnings=warnings, request_id=request_id)
            link = payload.get("@odata.nextLink")
            if not link:
                return
            url = self._next_url(str(link), cmdlet)
        raise ServiceError(
            f"{cmdlet}: more than {MAX_PAGES} pages; refusing to return a truncated list",
            hint="narrow the query",
            request_id=request_id,
        )

    async def _write(
        self,
        cmdlet: str,
        parameters: Mapping[str, Any],
        *,
        anchor: str | None,
        done_markers: tuple[str, ...] = (),
    ) -> WriteResult:
        """A change. A warning (or a plain 4xx message) saying it is already in place is success
        with ``already_done``: re-adding an existing ACE warns "already present", removing a missing
        one "doesn't exist". Not-found, access and server errors are never swallowed."""
        try:
            result = await self.invoke(cmdlet, parameters, anchor=anchor, write=True)
        except ServiceError as exc:
            if type(exc) is ServiceError and done_markers and _has_marker([exc.message], done_markers):
                return WriteResult(cmdlet, exc.request_id, (exc.message,), already_done=True)
            raise
        done = bool(done_markers) and _has_marker(result.warnings, done_markers)
        return WriteResult(cmdlet, result.request_id, tuple(result.warnings), already_done=done)

    # -- mailboxes ----------------------------------------------------------------------------

    async def get_cas_mailbox(self, identity: str) -> CasMailbox:
        result = await self.invoke("Get-CASMailbox", {"Identity": identity}, anchor=identity)
        if not result.rows:
            raise NotFoundError(
                f"Get-CASMailbox: no mailbox {identity!r}", hint="check the address", request_id=result.request_id
            )
        row = result.rows[0]
        return CasMailbox(
            identity=str(row.get("Identity") or identity),
            smtp_client_authentication_disabled=_opt_bool(row.get("SmtpClientAuthenticationDisabled")),
            ews_enabled=_opt_bool(row.get("EwsEnabled")),
        )

    # -- what the app may run ------------------------------------------------------------------

    async def exported_cmdlets(self, module_version: str = "3.9.2") -> frozenset[str] | None:
        """The cmdlets Exchange exports to this app (its RBAC roles decide), or None when the
        listing is not available. UNDOCUMENTED: ``GET {exchange}/adminapi/v1.0/{tenant}/EXOModuleFile
        ?Version=...`` with header ``CommandName: *`` answers ``value[].exportedCmdlets``, a
        comma-separated string; that is how the EXO module builds its session and how CIPP
        (New-ExoRequest, AvailableCmdlets) lists them (updates-2026-11.md §3). Some tenants answer
        with a redirect to a tenant-specific host (ScubaGear); that, and any error, is "not
        available" here, so callers fall back to the directory role."""
        url = f"{self._http.settings.exchange_endpoint}/adminapi/v1.0/{self.tenant}/EXOModuleFile"
        headers = {"Accept": "application/json", "CommandName": "*", "X-AnchorMailbox": self.anchor_for(None)}
        try:
            response = await self._http.exchange_client.get(url, params={"Version": module_version}, headers=headers)
        except EsjProvisionError as exc:
            log.debug("EXOModuleFile not available: %s", exc.message)
            return None
        payload = _json_object(response.content) if response.is_success else None
        value = payload.get("value") if payload else None
        if not isinstance(value, list):
            log.debug("EXOModuleFile not available: HTTP %s", response.status_code)
            return None
        names: set[str] = set()
        for item in value:
            if isinstance(item, dict):
                names.update(p.strip() for p in str(item.get("exportedCmdlets") or "").split(",") if p.strip())
        return frozenset(names) if names else None

    # -- EWS organisation policy (updates-2026-11.md §1) ----------------------------------------

    async def get_ews_policy(self) -> EwsOrgPolicy:
        """``EwsEnabled`` and ``EwsAllowedAppIDs``. The list is returned only with
        -RetrieveEwsOperationAccessPolicy (Microsoft's EWS troubleshooting page); it reads back as
        one comma-joined string inside a one-element list (third-party reports, unconfirmed), so
        any mix of strings, lists and commas is split into ids here."""
        result = await self.invoke("Get-OrganizationConfig", {"RetrieveEwsOperationAccessPolicy": True})
        row = result.rows[0] if result.rows else {}
        ids: tuple[str, ...] | None = None
        if "EwsAllowedAppIDs" in row:
            ids = split_app_ids(row.get("EwsAllowedAppIDs"))
        return EwsOrgPolicy(ews_enabled=_opt_bool(row.get("EwsEnabled")), allowed_app_ids=ids)

    async def set_ews_allowed_app_ids(self, app_ids: Iterable[str], *, enable: bool = False) -> WriteResult:
        """Set-OrganizationConfig -EwsAllowedAppIDs "<id>,<id>" (one comma-joined string, as
        Microsoft's examples write it): it REPLACES the whole list, so callers pass the list read
        just before plus what they add (read-modify-write). ``enable`` adds -EwsEnabled $true."""
        params: dict[str, Any] = {"EwsAllowedAppIDs": ",".join(app_ids)}
        if enable:
            params = {"EwsEnabled": True, **params}
        return await self._write("Set-OrganizationConfig", params, anchor=None)

    async def get_transport_config(self) -> TransportConfig:
        result = await self.invoke("Get-TransportConfig", {})
        row = result.rows[0] if result.rows else {}
        return TransportConfig(
            smtp_client_authentication_disabled=_bool(row.get("SmtpClientAuthenticationDisabled"))
        )

    # -- Full Access --------------------------------------------------------------------------

    async def get_mailbox_permissions(self, identity: str, user: str | None = None) -> list[PermissionRow]:
        """Every row, SELF/inherited/deny included; ``PermissionRow.is_delegation`` tells them apart."""
        params: dict[str, Any] = {"Identity": identity}
        if user:
            params["User"] = user
        result = await self.invoke("Get-MailboxPermission", params, anchor=identity)
        return [parse_permission_row(r) for r in result.rows]

    async def add_mailbox_permission(self, identity: str, user: str) -> WriteResult:
        # AutoMapping off: ESJ reads the mailbox itself, and an automapped mailbox would appear in
        # the service account's Outlook (it cannot be changed later without remove and re-add).
        return await self._write(
            "Add-MailboxPermission",
            {
                "Identity": identity,
                "User": user,
                "AccessRights": [Right.FULL_ACCESS.value],
                "InheritanceType": "All",
                "AutoMapping": False,
                "Confirm": False,
            },
            anchor=identity,
            done_markers=_ALREADY_PRESENT,
        )

    async def remove_mailbox_permission(self, identity: str, user: str) -> WriteResult:
        return await self._write(
            "Remove-MailboxPermission",
            {
                "Identity": identity,
                "User": user,
                "AccessRights": [Right.FULL_ACCESS.value],
                "InheritanceType": "All",
                "Confirm": False,
            },
            anchor=identity,
            done_markers=_NOT_PRESENT,
        )

    # -- Send As ------------------------------------------------------------------------------

    async def get_recipient_permissions(
        self, identity: str, trustee: str | None = None
    ) -> list[RecipientPermissionRow]:
        params: dict[str, Any] = {"Identity": identity}
        if trustee:
            params["Trustee"] = trustee
        result = await self.invoke("Get-RecipientPermission", params, anchor=identity)
        return [parse_recipient_permission_row(r) for r in result.rows]

    async def add_recipient_permission(self, identity: str, trustee: str) -> WriteResult:
        # Confirm false: Add-RecipientPermission pauses for confirmation otherwise.
        return await self._write(
            "Add-RecipientPermission",
            {"Identity": identity, "Trustee": trustee, "AccessRights": [Right.SEND_AS.value], "Confirm": False},
            anchor=identity,
            done_markers=_ALREADY_PRESENT,
        )

    async def remove_recipient_permission(self, identity: str, trustee: str) -> WriteResult:
        return await self._write(
            "Remove-RecipientPermission",
            {"Identity": identity, "Trustee": trustee, "AccessRights": [Right.SEND_AS.value], "Confirm": False},
            anchor=identity,
            done_markers=_NOT_PRESENT,
        )

    # -- organisation-wide listings (bulk, audit) ----------------------------------------------

    async def list_mailboxes(self, kinds: Sequence[str] = ("SharedMailbox",)) -> list[ExchangeMailbox]:
        """Every mailbox whose RecipientTypeDetails is one of ``kinds``: one paged
        ``Get-Mailbox -RecipientTypeDetails ... -ResultSize Unlimited`` (one request per 1,000 rows).

        A list, not an iterator: callers join it with the Send As listing by identity. Each page is
        reduced to :class:`ExchangeMailbox` (Identity, PrimarySmtpAddress, RecipientTypeDetails,
        ExternalDirectoryObjectId, EmailAddresses) as it arrives, so only one page of Exchange's
        wide rows (a couple of hundred properties each) is held at a time. No ``$select``: Microsoft
        does not document it for InvokeCommand (it is only seen in the module's own traffic).
        A failed page or a truncation warning raises; a short list never passes for a full one.
        """
        wanted = [k.strip() for k in kinds if k and k.strip()]
        bad = [k for k in wanted if k.casefold() not in _MAILBOX_KINDS]
        if not wanted or bad:
            raise UsageError(
                f"list_mailboxes: {', '.join(bad) if bad else 'no mailbox kind given'}",
                hint=f"give RecipientTypeDetails values, e.g. {', '.join(sorted(_MAILBOX_KIND_NAMES))}",
            )
        params = {"RecipientTypeDetails": wanted, "ResultSize": "Unlimited"}
        out: list[ExchangeMailbox] = []
        async for page in self.pages("Get-Mailbox", params):
            _refuse_truncated("Get-Mailbox", page)
            out.extend(_mailbox(row) for row in page.rows)
        return out

    async def send_as_grants_of(self, trustee: str) -> list[SendAsGrant]:
        """Every Send As grant of ``trustee`` in the organisation: one paged
        ``Get-RecipientPermission -Trustee X -ResultSize Unlimited`` without ``-Identity``
        (Microsoft's Example 1), instead of one read per mailbox.

        When this listing cannot be trusted, callers fall back to per-mailbox
        :meth:`get_recipient_permissions`:

        - the trustee has SID history: Exchange matches ``-Trustee`` by SID, and Microsoft notes
          that grants made under another of its SIDs are missed;
        - the call or any page failed (this raises; it never returns a partial list);
        - the trustee is a service principal, which is not a documented ``-Trustee``.

        Rows naming more than one trustee SID mean Exchange did not filter by this trustee, and
        raise rather than attribute other principals' grants to it.
        """
        if not trustee or not trustee.strip():
            raise UsageError("send_as_grants_of: no trustee given")
        params = {"Trustee": trustee.strip(), "ResultSize": "Unlimited"}
        out: list[SendAsGrant] = []
        sids: set[str] = set()
        async for page in self.pages("Get-RecipientPermission", params):
            _refuse_truncated("Get-RecipientPermission", page)
            for raw in page.rows:
                row = parse_recipient_permission_row(raw)
                if row.trustee_sid:
                    sids.add(row.trustee_sid.upper())
                out.append(
                    SendAsGrant(str(raw.get("Identity") or ""), row.trustee, row.access_rights, row.allow,
                                row.trustee_sid, row.is_inherited)
                )
        if len(sids) > 1:
            raise ServiceError(
                f"Get-RecipientPermission -Trustee {trustee}: the listing names {len(sids)} different "
                "trustees; refusing to attribute them to one",
                hint="read Send As per mailbox instead",
            )
        return out

    # -- service principals and RBAC for Applications (org-level) -----------------------------

    async def get_service_principal(self, identity: str) -> dict[str, Any] | None:
        """Exchange's own service-principal object (New-ServicePrincipal), or None if not registered."""
        try:
            result = await self.invoke("Get-ServicePrincipal", {"Identity": identity})
        except NotFoundError:
            return None
        return result.rows[0] if result.rows else None

    async def new_service_principal(self, app_id: str, object_id: str, display_name: str) -> WriteResult:
        """``object_id`` must be the enterprise application's object id, not the app registration's.
        An app id is registered once, so "already exists" (e.g. on a repeat after a lost answer)
        is ``already_done``."""
        return await self._write(
            "New-ServicePrincipal",
            {"AppId": app_id, "ObjectId": object_id, "DisplayName": display_name},
            anchor=None,
            done_markers=("already exists",),
        )

    async def test_service_principal_authorization(self, identity: str, resource: str) -> list[dict[str, Any]]:
        """Rows RoleName, GrantedPermissions, AllowedResourceScope, ScopeType, InScope; bypasses the
        RBAC cache, so it reflects a new assignment at once."""
        result = await self.invoke("Test-ServicePrincipalAuthorization", {"Identity": identity, "Resource": resource})
        return result.rows

    async def new_management_scope(self, name: str, recipient_filter: str) -> WriteResult:
        return await self._write(
            "New-ManagementScope", {"Name": name, "RecipientRestrictionFilter": recipient_filter}, anchor=None
        )

    async def get_management_scope(self, name: str) -> ManagementScope | None:
        """The scope named ``name``, or None if there is none.

        Its filter is read from ``RecipientFilter``: that is the property Get-ManagementScope
        returns (Exchange's ManagementScope class; Microsoft365DSC's EXOManagementScope reads it
        too). ``RecipientRestrictionFilter`` is only the parameter name of New-/Set-ManagementScope;
        reading it found nothing and made a second mailbox replace the first (issue 11, defect 2).
        Only a row with that name counts: Microsoft warns that a Get- cmdlet may answer an identity
        it does not know with every object.
        """
        try:
            result = await self.invoke("Get-ManagementScope", {"Identity": name})
        except NotFoundError:
            return None
        for row in result.rows:
            if str(row.get("Name") or row.get("Identity") or "").casefold() == name.casefold():
                return ManagementScope(str(row.get("Name") or name), str(row.get("RecipientFilter") or ""))
        return None

    async def set_management_scope(self, name: str, recipient_filter: str) -> WriteResult:
        return await self._write(
            "Set-ManagementScope", {"Identity": name, "RecipientRestrictionFilter": recipient_filter}, anchor=None
        )

    async def new_management_role_assignment(
        self, app: str, role: str, scope: str, name: str | None = None
    ) -> WriteResult:
        """``name`` makes the assignment findable and unique per scope: Exchange's generated name is
        per app and role, so a second, scoped assignment beside an organisation-wide one would clash."""
        params: dict[str, Any] = {"App": app, "Role": role, "CustomResourceScope": scope}
        if name:
            params["Name"] = name
        return await self._write("New-ManagementRoleAssignment", params, anchor=None)

    async def get_management_role_assignments(self, app: str) -> list[dict[str, Any]]:
        try:
            result = await self.invoke("Get-ManagementRoleAssignment", {"RoleAssignee": app})
        except NotFoundError:
            return []
        return result.rows


# Get-Mailbox -RecipientTypeDetails values (Microsoft's Get-Mailbox page).
_MAILBOX_KIND_NAMES = (
    "DiscoveryMailbox", "EquipmentMailbox", "GroupMailbox", "LegacyMailbox", "LinkedMailbox",
    "LinkedRoomMailbox", "RoomMailbox", "SchedulingMailbox", "SharedMailbox", "TeamMailbox", "UserMailbox",
)
_MAILBOX_KINDS = frozenset(k.casefold() for k in _MAILBOX_KIND_NAMES)
# The warning Exchange adds when ResultSize cut a listing short.
_TRUNCATED = ("more results available",)


def _mailbox(row: Mapping[str, Any]) -> ExchangeMailbox:
    addresses = row.get("EmailAddresses") or []
    return ExchangeMailbox(
        identity=str(row.get("Identity") or ""),
        primary_smtp_address=str(row.get("PrimarySmtpAddress") or ""),
        recipient_type_details=str(row.get("RecipientTypeDetails") or ""),
        external_directory_object_id=_text(row.get("ExternalDirectoryObjectId")),
        email_addresses=tuple(str(a) for a in ([addresses] if isinstance(addresses, str) else addresses)),
    )


def _refuse_truncated(cmdlet: str, page: InvokeResult) -> None:
    if _has_marker(page.warnings, _TRUNCATED):
        raise ServiceError(
            f"{cmdlet}: Exchange cut the listing short ({page.warnings[0]}); refusing to return a truncated list",
            hint="report this: ResultSize Unlimited should return every row",
            request_id=page.request_id,
        )


def _warnings_from(payload: Mapping[str, Any]) -> list[str]:
    raw = payload.get("@adminapi.warnings")
    if isinstance(raw, str):
        raw = [raw]
    return [_printable(str(w)) for w in raw or [] if str(w).strip()]


def _warnings_header(headers: httpx.Headers) -> list[str]:
    """The EXO module also reads an ``X-Warnings`` header; its format is not documented, so accept a
    JSON array or plain text."""
    raw = headers.get("x-warnings")
    if not raw or not raw.strip():
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return [_printable(raw)]
    items = data if isinstance(data, list) else [data]
    return [_printable(str(w)) for w in items if str(w).strip()]
