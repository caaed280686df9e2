"""Microsoft Graph: resolve users and mailboxes, classify them (userPurpose), find service principals.

msgraph-sdk builds every request (URL templates, escaping, query options), but responses are read
as raw JSON (``send_primitive_async(..., "bytes")`` + ``json.loads``): the SDK's model parsing
costs about 5 ms per entity (shared/reference/dependencies.md §6). The SDK is imported only when a
:class:`GraphClient` first needs it, never at module import, so ``--help`` stays fast.

The SDK is given the project's shared httpx client as is, without kiota's middleware: retries,
throttling, pacing and tokens live in :mod:`esj_provision.microsoft.http` alone.

JSON batching (``$batch``) is sent as plain JSON through the same client: the SDK's batch API
would parse every item into models, and per-item throttling needs handling here anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import (
    AccessDeniedError,
    EsjProvisionError,
    MailboxNotEnabledForRestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
    TransientError,
)
from ..models import DirectoryUser, ServicePrincipal
from .http import RETRYABLE_STATUS, WEIGHT_EXTENSION, parse_retry_after

if TYPE_CHECKING:
    import httpx

    from .http import MicrosoftHttp

log = logging.getLogger(__name__)

USER_SELECT = ("id", "userPrincipalName", "mail", "displayName", "accountEnabled", "onPremisesSyncEnabled")
SP_SELECT = ("id", "appId", "displayName")
BATCH_LIMIT = 20  # Graph's hard limit of requests in one $batch
# Values in one `in` filter without advanced query parameters: "15 items by default"
# (learn.microsoft.com/graph/filter-query-parameter; over it Graph answers 400 "Too many child
# clauses specified in search filter expression containing 'OR' operators: 16. Max allowed: 15",
# microsoft-graph-docs issue #21098). A user's id supports `in` by default (user resource page).
ID_FILTER_LIMIT = 15
MAX_PAGES = 50  # app roles, applications: a handful of items; this only guards against a paging loop
# Graph answers 429 ApplicationThrottled to an app with more than 4 Outlook requests (mail,
# mailboxSettings) in flight, and dispatches a batch's Outlook items four at a time
# (updates-2026-11.md §5; learn.microsoft.com/graph/throttling-limits#outlook-service-limits).
# So one batch holding Outlook items is in flight per client at a time: it alone keeps 4 busy.
OUTLOOK_BATCHES_IN_FLIGHT = 1
# Background reads (bulk lookups, audit) ask Graph to throttle them before interactive traffic:
# learn.microsoft.com/graph/throttling ("x-ms-throttle-priority": low, normal, high). Whether
# Graph reads it from a $batch's outer request or from each item is not documented, so both
# carry it (unconfirmed).
PRIORITY_HEADER = "x-ms-throttle-priority"

# What each operation reads, and the application permission it needs.
_OPS: dict[str, tuple[str, str]] = {
    "user": ("the user", "User.Read.All"),
    "purpose": ("the mailbox settings", "MailboxSettings.Read"),
    "service_principal": ("service principals", "Application.Read.All"),
}


@dataclass(frozen=True)
class LookupResult:
    """One reference's outcome in :meth:`GraphClient.lookup_many`: errors are values, not raised.

    ``error`` is why the user could not be read (then ``user`` is None); ``purpose_error`` why its
    userPurpose could not (with_purpose only; e.g. MailboxNotEnabledForRestError for a user that
    exists but whose mailbox Graph cannot read).
    """

    ref: str
    user: DirectoryUser | None = None
    purpose: str | None = None
    error: EsjProvisionError | None = None
    purpose_error: EsjProvisionError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.purpose_error is None


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------


def graph_error(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    *,
    op: str,
    ref: str | None = None,
) -> EsjProvisionError:
    """The one mapping from a Graph error (single call or batch item) to the project's errors.

    Longer than most functions on purpose: one ordered table of Graph's error shapes, read top
    to bottom, is easier to check against Microsoft's documentation than a split one."""
    what, permission = _OPS.get(op, ("the object", "User.Read.All"))
    subject = f"{ref}: " if ref else ""
    detail = f" ({message})" if message else ""
    kw: dict[str, Any] = {"request_id": request_id, "status_code": status}
    if status == 404 and code.lower() in {"mailboxnotenabledforrestapi", "mailboxnotsupportedforrestapi"}:
        return MailboxNotEnabledForRestError(
            f"{subject}the mailbox is inactive, soft-deleted, unlicensed or on-premises; Graph cannot read it",
            hint="check in the Exchange admin center that the mailbox is in Exchange Online, active and "
            "not soft-deleted (an on-premises mailbox must be migrated first)",
            **kw,
        )
    if status == 404:
        return NotFoundError(
            f"{subject}not found in the directory{detail}",
            hint="check the address (UPN, primary address or object id)",
            **kw,
        )
    if status == 403:
        if "access to odata is disabled" in message.lower() or "accesspolicy" in message.lower():
            return AccessDeniedError(
                f"{subject}an Application Access Policy or an RBAC for Applications scope excludes this "
                f"mailbox from the provisioning app{detail}",
                hint="add the mailbox to the policy's group or the role assignment's scope "
                "(Test-ApplicationAccessPolicy / Test-ServicePrincipalAuthorization show which applies)",
                **kw,
            )
        return AccessDeniedError(
            f"{subject}Graph denied access to {what}: the app lacks the {permission} application "
            f"permission{detail}",
            hint=f"in the app registration add Microsoft Graph > {permission} (Application) and grant "
            "admin consent",
            **kw,
        )
    if status == 401:
        return AccessDeniedError(
            f"{subject}Graph refused the app's token (401){detail}",
            hint="grant admin consent for the app's Microsoft Graph permissions, and check that the "
            "tenant and --cloud match the app registration",
            **kw,
        )
    if status == 429:
        return ThrottledError(
            f"{subject}Graph is still throttling the app after the retries",
            hint="wait a few minutes and run again",
            **kw,
        )
    if status >= 500:
        return TransientError(
            f"{subject}Graph failed ({status}){detail}", hint="Microsoft's service had a problem; try again later", **kw
        )
    return ServiceError(
        f"{subject}Graph answered {status}{f' {code}' if code else ''}{detail}",
        hint="quote the request id to Microsoft support if it persists",
        **kw,
    )


def _error_fields(payload: Any, headers: Any = None) -> tuple[str, str, str | None]:
    """code, message and request id of a Graph error body ``{"error":{"code","message","innerError"}}``,
    the request id from the ``request-id`` header when the body has none (or is not Graph's JSON).
    The one parser of Graph error bodies: single calls, batch items and outer batch failures."""
    err = payload.get("error") if isinstance(payload, dict) else None
    err = err if isinstance(err, dict) else {}
    inner = err.get("innerError") or err.get("innererror") or {}
    rid = (inner.get("request-id") if isinstance(inner, dict) else None) or _header(headers, "request-id")
    return str(err.get("code") or ""), str(err.get("message") or ""), str(rid) if rid else None


def _literal(value: str) -> str:
    """An OData string literal: in quotes, a quote inside doubled."""
    return "'" + value.replace("'", "''") + "'"


def _filter(prop: str, value: str) -> str:
    """``$filter=prop eq 'value'``, percent-encoded."""
    return quote(f"{prop} eq {_literal(value)}", safe="")


def _ids_filter(ids: Sequence[str]) -> str:
    """``$filter=id in ('a','b')``, percent-encoded."""
    return quote(f"id in ({','.join(_literal(i) for i in ids)})", safe="")


def _header(headers: Any, name: str) -> str | None:
    """A header from httpx.Headers or the plain dict kiota sometimes hands over, ignoring case."""
    if headers is None:
        return None
    if hasattr(headers, "get") and headers.get(name) is not None:
        return str(headers.get(name))
    if isinstance(headers, Mapping):
        for k, v in headers.items():
            if str(k).lower() == name:
                return str(v)
    return None


# --------------------------------------------------------------------------------------------
# Parsing (pure)
# --------------------------------------------------------------------------------------------


def parse_user(data: Mapping[str, Any]) -> DirectoryUser:
    return DirectoryUser(
        id=str(data.get("id") or ""),
        user_principal_name=str(data.get("userPrincipalName") or ""),
        mail=data.get("mail") or None,
        display_name=data.get("displayName") or None,
        account_enabled=data.get("accountEnabled"),
        on_premises_sync_enabled=data.get("onPremisesSyncEnabled"),
    )


def parse_user_purpose(data: Mapping[str, Any]) -> str | None:
    """``{"value":"shared"}`` (the userPurpose path), ``{"userPurpose":{"value":"user"}}`` (older
    examples of full mailboxSettings) or ``{"userPurpose":"shared"}``; None when absent."""
    value: Any = data.get("userPurpose", data.get("value"))
    if isinstance(value, dict):
        value = value.get("value")
    return str(value) if isinstance(value, str) and value else None


def _odata_literal(ref: str) -> str:
    """``users('$x@y')``: an OData string literal (quotes doubled), percent-encoded for the path."""
    return quote(ref.replace("'", "''"), safe="@$!*,;:+=")


# Graph's /users/{key} takes an object id or a UPN only (GET /users/{id | userPrincipalName}): a
# mailbox given by an address that is not its UPN (often a shared mailbox's, always an alias) is
# found by this filter, the form Microsoft's B2B invitation docs use, sent as an advanced query
# (ConsistencyLevel: eventual and $count) because a lambda on proxyAddresses may need one (🔶).
ADVANCED_QUERY_HEADERS = {"ConsistencyLevel": "eventual"}


def _by_address_url(ref: str) -> str:
    clause = f"mail eq {_literal(ref)} or proxyAddresses/any(x:x eq {_literal('smtp:' + ref)})"
    return f"/users?$filter={quote(clause, safe='')}&$count=true&$select={','.join(USER_SELECT)}"


def _one_by_address(body: Any, ref: str) -> DirectoryUser | EsjProvisionError | None:
    """The one user a by-address page holds; None when there is none (the read by key's
    not-found stands); two are an ambiguity, never guessed at."""
    found = [parse_user(v) for v in (body.get("value") or [] if isinstance(body, dict) else []) if isinstance(v, dict)]
    if len(found) == 1:
        return found[0]
    if not found:
        return None
    return ServiceError(
        f"{ref}: {len(found)} directory users have this address",
        hint="give the mailbox's or account's UPN or object id instead",
    )


def _record_ids(
    outcome: _Outcome,
    first: dict[str, str],
    users: dict[str, DirectoryUser],
    errors: dict[tuple[str, str], EsjProvisionError],
) -> list[tuple[str, str]]:
    """An ``id in (...)`` answer: each user it returned; the others to be read one by one (the
    read alone says why); throttled or failing past the retry policy, an error for each."""
    item, status, body = outcome.item, outcome.status, outcome.body
    if status in RETRYABLE_STATUS or outcome.final:
        code, message, rid = _error_fields(body)
        for key, _ in item.members:
            errors[(key, "user")] = graph_error(status, code, message, rid, op="user", ref=first[key])
        return []
    if not (200 <= status < 300 and isinstance(body, dict)):
        return [(key, "user") for key, _ in item.members]
    found = {str(v.get("id") or "").casefold(): v for v in body.get("value") or [] if isinstance(v, dict)}
    unsettled = []
    for key, oid in item.members:
        data = found.get(oid.casefold())
        if data is None:
            unsettled.append((key, "user"))
        else:
            users[key] = parse_user(data)
    return unsettled


def _record_by_address(
    outcome: _Outcome, ref: str, users: dict[str, DirectoryUser], errors: dict[tuple[str, str], EsjProvisionError]
) -> list[tuple[str, str]]:
    key, status, body = outcome.item.key, outcome.status, outcome.body
    if status == 400:
        return []  # the search itself refused (a cloud without it): the not-found by key stands
    if not (200 <= status < 300 and isinstance(body, dict)):
        code, message, rid = _error_fields(body)
        errors[(key, "user")] = graph_error(status, code, message, rid, op="user", ref=ref)
        return []
    user = _one_by_address(body, ref)
    if isinstance(user, EsjProvisionError):
        errors[(key, "user")] = user
    elif user is not None:
        users[key] = user
        errors.pop((key, "user"), None)  # the read by key's not-found, recorded before this read
    return []


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    key: str  # the casefolded reference (an "ids" item: its first member's)
    # "user", "purpose", "ids" (up to ID_FILTER_LIMIT users read by object id), or "address" (a user
    # read by any of its SMTP addresses after /users/{address} found no one: it is not the UPN)
    kind: str
    url: str  # relative to /v1.0
    members: tuple[tuple[str, str], ...] = ()  # "ids": (casefolded reference, object id) each

    def headers(self, priority: Mapping[str, str]) -> dict[str, str]:
        """The item's request headers: the priority, and an address search's advanced query."""
        return {**priority, **(ADVANCED_QUERY_HEADERS if self.kind == "address" else {})}

    def answers(self) -> list[tuple[str, str]]:
        """The (reference key, kind) pairs this item's outcome settles."""
        if self.kind == "ids":
            return [(key, "user") for key, _ in self.members]
        return [(self.key, "user" if self.kind == "address" else self.kind)]


@dataclass(frozen=True)
class _Outcome:
    item: _Item
    status: int
    headers: Any
    body: Any
    final: bool = False  # the outer POST failed after the transport's retries: never sent again


class GraphClient:
    """Graph reads for provisioning, over the shared :class:`MicrosoftHttp` client."""

    def __init__(self, http: MicrosoftHttp, *, concurrency: int = 4, batch_size: int = BATCH_LIMIT) -> None:
        self._http = http
        self.base_url = f"{http.settings.graph_endpoint}/v1.0"
        self._concurrency = max(1, concurrency)
        self._batch_size = max(1, min(BATCH_LIMIT, batch_size))
        self._outlook_gate = asyncio.Semaphore(OUTLOOK_BATCHES_IN_FLIGHT)
        self._sdk: Any = None
        self._adapter: Any = None
        self._preparing: asyncio.Future[Any] | None = None
        self._setup_lock = threading.Lock()  # prepare_in_background's thread and the loop's thread

    def _client(self) -> Any:
        with self._setup_lock:
            return self._client_locked()

    def _client_locked(self) -> Any:
        if self._sdk is None:
            from kiota_abstractions.authentication import AnonymousAuthenticationProvider
            from msgraph import GraphRequestAdapter, GraphServiceClient

            # Anonymous: the transport adds the bearer token. client=: the shared client exactly as
            # it is, so kiota adds no retry/redirect middleware of its own.
            adapter = GraphRequestAdapter(AnonymousAuthenticationProvider(), client=self._http.graph_client)
            # Explicit, without a trailing slash: otherwise the SDK derives it from the httpx client
            # and requests go to /v1.0//users/... (dependencies.md §3).
            adapter.base_url = self.base_url
            self._sdk = GraphServiceClient(request_adapter=adapter)
            self._adapter = adapter
        return self._sdk

    def prepare_in_background(self) -> None:
        """Import and set up the SDK in a worker thread (about half a second of CPU), so the first
        lookups of bulk and audit do not wait for it after the sign-in and the first listing."""
        if self._sdk is None and self._preparing is None:
            self._preparing = asyncio.ensure_future(asyncio.to_thread(self._client))

    async def _ready(self) -> None:
        if self._preparing is not None:
            await self._preparing

    # -- request builders (the SDK's) ---------------------------------------------------------

    def user_request(self, ref: str) -> Any:
        """RequestInformation for ``GET /users/{ref}?$select=...``."""
        sdk = self._client()
        builder = sdk.users.by_user_id(ref)
        if ref.startswith("$"):
            # A UPN starting with $ reads as an OData system segment; Graph wants /users('$x@y').
            return builder.with_url(
                f"{self.base_url}/users('{_odata_literal(ref)}')?$select={','.join(USER_SELECT)}"
            ).to_get_request_information()
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

        params = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=list(USER_SELECT))
        return builder.to_get_request_information(RequestConfiguration(query_parameters=params))

    def user_purpose_request(self, ref: str) -> Any:
        """RequestInformation for ``GET /users/{ref}/mailboxSettings/userPurpose``."""
        sdk = self._client()
        builder = sdk.users.by_user_id(ref).mailbox_settings
        if ref.startswith("$"):
            return builder.with_url(
                f"{self.base_url}/users('{_odata_literal(ref)}')/mailboxSettings/userPurpose"
            ).to_get_request_information()
        info = builder.to_get_request_information()
        # The SDK has no builder for the userPurpose property; extend the mailboxSettings template
        # (keeping the SDK's escaping of the user id) rather than reading every mailbox setting.
        info.url_template = info.url_template.replace("/mailboxSettings{", "/mailboxSettings/userPurpose{", 1)
        return info

    def service_principal_request(self, app_id: str) -> Any:
        """RequestInformation for ``GET /servicePrincipals?$filter=appId eq '<id>'&$select=...``."""
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.service_principals.service_principals_request_builder import (
            ServicePrincipalsRequestBuilder,
        )

        sdk = self._client()
        params = ServicePrincipalsRequestBuilder.ServicePrincipalsRequestBuilderGetQueryParameters(
            filter=f"appId eq {_literal(app_id)}", select=list(SP_SELECT)
        )
        return sdk.service_principals.to_get_request_information(RequestConfiguration(query_parameters=params))

    def url_of(self, info: Any) -> str:
        """The absolute URL a RequestInformation resolves to."""
        self._client()
        self._adapter.set_base_url_for_request_information(info)
        return str(info.url)

    def relative_url(self, info: Any) -> str:
        """The URL relative to /v1.0, as $batch items need it."""
        url = self.url_of(info)
        return url[len(self.base_url) :] if url.startswith(self.base_url) else url

    async def _send(self, info: Any, *, op: str, ref: str | None) -> dict[str, Any]:
        from kiota_abstractions.api_error import APIError
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        self._client()
        try:
            raw = await self._adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
        except ODataError as exc:
            main = exc.error
            inner = getattr(main, "inner_error", None)
            raise graph_error(
                exc.response_status_code or 0,
                str(getattr(main, "code", "") or ""),
                str(getattr(main, "message", "") or ""),
                getattr(inner, "request_id", None) or _header(exc.response_headers, "request-id"),
                op=op,
                ref=ref,
            ) from None
        except APIError as exc:  # an error body that is not Graph's JSON (empty, HTML gateway page)
            raise graph_error(
                exc.response_status_code or 0, "", "", _header(exc.response_headers, "request-id"), op=op, ref=ref
            ) from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise ServiceError(f"{ref or op}: Graph answered with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise ServiceError(f"{ref or op}: Graph answered with unexpected JSON")
        return data

    # -- single reads -------------------------------------------------------------------------

    async def get_user(self, ref: str) -> DirectoryUser:
        """A user by UPN, object id or any SMTP address: Graph's ``/users/{key}`` takes only the
        first two, so an address it does not find is looked up by address. Raises NotFoundError,
        AccessDeniedError, ..."""
        try:
            return parse_user(await self._send(self.user_request(ref), op="user", ref=ref))
        except NotFoundError as exc:
            if "@" not in ref:
                raise
            not_found = exc
        try:
            page = await self.get_json(_by_address_url(ref), op="user", ref=ref, headers=ADVANCED_QUERY_HEADERS)
        except EsjProvisionError as exc:
            if exc.status_code == 400:
                raise not_found from None  # the search itself refused: say what the admin can fix
            raise
        user = _one_by_address(page, ref)
        if isinstance(user, EsjProvisionError):
            raise user
        if user is None:
            raise not_found
        return user

    async def get_service_principal(self, app_id: str) -> ServicePrincipal | None:
        """The enterprise application (service principal) of an app id in this tenant, or None."""
        data = await self._send(self.service_principal_request(app_id), op="service_principal", ref=app_id)
        for sp in data.get("value") or []:
            if isinstance(sp, dict) and sp.get("id"):
                return ServicePrincipal(
                    id=str(sp["id"]), app_id=str(sp.get("appId") or app_id), display_name=sp.get("displayName")
                )
        return None

    # -- batched reads ------------------------------------------------------------------------

    async def lookup_many(
        self,
        refs: Iterable[str],
        with_purpose: bool = False,
        *,
        background: bool = False,
        ids: Mapping[str, str] | None = None,
    ) -> dict[str, LookupResult]:
        """Resolve many references with JSON batching (at most 20 requests per $batch).

        ``background``: sent with ``x-ms-throttle-priority: low`` (bulk lookups, audit).
        ``ids``: the Entra object id of some references, known from elsewhere (bulk and audit take
        it from Exchange's shared-mailbox listing): those users are read up to ID_FILTER_LIMIT per
        item with ``/users?$filter=id in (...)``, so one $batch reads 300 of them where it read 20.
        A reference the filter does not return, or whose item fails, is read on its own, which
        then says why (so a wrong id costs a request, never a wrong answer).
        Directory items go first and the Outlook items (userPurpose) after them, so they share as
        few batches as possible: a batch with an Outlook item waits for the Outlook gate.

        Returns one LookupResult per distinct reference (keyed by the reference as given; a second
        spelling differing only in case shares the first's result). Per-item errors are values.
        Items throttled (429) or failing with 502/503/504 are sent again, alone, after their
        Retry-After (or backoff), within the transport's retry policy; the outer POST's own
        throttling and 5xx are the transport's job.
        """
        await self._ready()
        keys: dict[str, str] = {}  # given ref -> key
        first: dict[str, str] = {}  # key -> first spelling
        for ref in refs:
            r = ref.strip()
            if r:
                keys[ref] = r.casefold()
                first.setdefault(r.casefold(), r)
        known = {ref.strip().casefold(): oid for ref, oid in (ids or {}).items() if oid}
        users: dict[str, DirectoryUser] = {}
        purposes: dict[str, str] = {}
        errors: dict[tuple[str, str], EsjProvisionError] = {}
        budget = self._http.budget()
        pacer = self._http.pacer("graph")
        pending = self._items(first, with_purpose, known)
        while pending:
            budget.start()
            outcomes = await self._run_batches(pending, background)
            retry: list[_Item] = []
            again: list[_Item] = []  # references an item did not settle: read another way
            waits: list[float] = []
            answered = sum(1 for o in outcomes if o.status < 400 or o.status in {403, 404})
            if pacer is not None and answered:
                pacer.on_success(answered)  # items Graph served (an error answer is served too)
            for o in outcomes:
                if o.status in RETRYABLE_STATUS and not o.final and budget.attempt < budget.policy.max_attempts:
                    retry.append(o.item)
                    waits.append(budget.delay(parse_retry_after(_header(o.headers, "retry-after"))))
                    continue
                again += [
                    self._follow_up(key, kind, first[key]) for key, kind in self._record(o, first, users, purposes, errors)
                ]
            if retry:
                throttled = sum(1 for o in outcomes if o.status == 429 and o.item in retry)
                delay = budget.take(max(waits))
                if delay is None:
                    for item in retry:
                        for key, kind in item.answers():
                            errors[(key, kind)] = graph_error(429, "", "", None, op=kind, ref=first[key])
                    retry = []
                else:
                    log.debug("%d batch item(s) throttled or failed; again in %.2fs", len(retry), delay)
                    if throttled and pacer is not None:
                        # The pacer pauses every Graph caller and slows down; the next $batch POST
                        # waits out the delay in the transport's acquire().
                        pacer.on_throttle(delay, refused=throttled)
                    else:
                        await budget.sleep(delay)
            pending = retry + again

        return {
            ref: LookupResult(
                ref=ref,
                user=users.get(key),
                purpose=purposes.get(key),
                error=errors.get((key, "user")),
                purpose_error=errors.get((key, "purpose")),
            )
            for ref, key in keys.items()
        }

    def _user_item(self, key: str, ref: str) -> _Item:
        return _Item(key, "user", self.relative_url(self.user_request(ref)))

    def _follow_up(self, key: str, kind: str, ref: str) -> _Item:
        """The next read of a reference an item left unsettled: by its key ("user") or, after a
        404 on an address, by its SMTP addresses ("address")."""
        if kind == "address":
            return _Item(key, "address", _by_address_url(ref))
        return self._user_item(key, ref)

    def _items(self, first: dict[str, str], with_purpose: bool, known: Mapping[str, str]) -> list[_Item]:
        """The batch items: users by object id where it is known (ID_FILTER_LIMIT to an item),
        each other reference's user, and with_purpose each one's userPurpose."""
        by_id = [(key, known[key]) for key in first if key in known]
        items = [
            _Item(
                group[0][0],
                "ids",
                f"/users?$filter={_ids_filter([oid for _, oid in group])}&$select={','.join(USER_SELECT)}",
                tuple(group),
            )
            for group in (by_id[i : i + ID_FILTER_LIMIT] for i in range(0, len(by_id), ID_FILTER_LIMIT))
        ]
        items += [self._user_item(key, ref) for key, ref in first.items() if key not in known]
        if with_purpose:  # after the users, so Outlook items share as few batches as possible
            items += [_Item(key, "purpose", self.relative_url(self.user_purpose_request(ref))) for key, ref in first.items()]
        return items

    @staticmethod
    def _record(
        outcome: _Outcome,
        first: dict[str, str],
        users: dict[str, DirectoryUser],
        purposes: dict[str, str],
        errors: dict[tuple[str, str], EsjProvisionError],
    ) -> list[tuple[str, str]]:
        """Record an item's outcome; the references it left unsettled, each with how to read it
        next: an "ids" item's users it did not return (or all, when it failed) one by one; an
        address ``/users/{key}`` did not find (Graph takes only an id or a UPN there) by address."""
        item, status, body = outcome.item, outcome.status, outcome.body
        if item.kind == "ids":
            return _record_ids(outcome, first, users, errors)
        ref = first[item.key]
        if item.kind == "address":
            return _record_by_address(outcome, ref, users, errors)
        if 200 <= status < 300 and isinstance(body, dict):
            if item.kind == "user":
                users[item.key] = parse_user(body)
                return []
            purpose = parse_user_purpose(body)
            if purpose is not None:
                purposes[item.key] = purpose
                return []
            errors[(item.key, item.kind)] = ServiceError(f"{ref}: Graph returned no userPurpose")
            return []
        if 200 <= status < 300:
            errors[(item.key, item.kind)] = ServiceError(f"{ref}: Graph returned a batch item that is not JSON")
            return []
        code, message, rid = _error_fields(body)
        errors[(item.key, item.kind)] = graph_error(status, code, message, rid, op=item.kind, ref=ref)
        if item.kind == "user" and status == 404 and "@" in ref:
            return [(item.key, "address")]  # it stands unless the read by address finds the user
        return []

    async def _run_batches(self, items: list[_Item], background: bool = False) -> list[_Outcome]:
        chunks = [items[i : i + self._batch_size] for i in range(0, len(items), self._batch_size)]
        gate = asyncio.Semaphore(self._concurrency)

        async def one(chunk: list[_Item]) -> list[_Outcome]:
            async with gate:
                if any(item.kind == "purpose" for item in chunk):
                    async with self._outlook_gate:
                        return await self._send_batch(chunk, background)
                return await self._send_batch(chunk, background)

        results = await asyncio.gather(*(one(c) for c in chunks))
        return [outcome for batch in results for outcome in batch]

    async def _send_batch(self, chunk: list[_Item], background: bool = False) -> list[_Outcome]:
        """One $batch POST and an outcome for every item; an outer failure (already retried by the
        transport) becomes a final outcome with that status for each of its items."""
        priority = {PRIORITY_HEADER: "low"} if background else {}
        requests = [
            {"id": str(n), "method": "GET", "url": item.url, **({"headers": h} if (h := item.headers(priority)) else {})}
            for n, item in enumerate(chunk, 1)
        ]
        response = await self._http.graph_client.post(
            f"{self.base_url}/$batch",
            json={"requests": requests},
            headers={"Accept": "application/json", **priority},
            extensions={WEIGHT_EXTENSION: len(requests)},  # Graph throttles each item of a batch
        )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not response.is_success:
            body = self._outer_body(response, payload)
            return [_Outcome(item, response.status_code, response.headers, body, final=True) for item in chunk]
        answers = {
            str(r.get("id")): r for r in (payload or {}).get("responses") or [] if isinstance(r, dict)
        }  # order is not guaranteed: match by id
        out: list[_Outcome] = []
        for n, item in enumerate(chunk, 1):
            answer = answers.get(str(n))
            if answer is None:
                missing = {"error": {"message": "Graph's $batch response had no answer for this item"}}
                out.append(_Outcome(item, 502, {}, missing, final=True))
                continue
            out.append(_Outcome(item, int(answer.get("status") or 0), answer.get("headers") or {}, answer.get("body")))
        return out

    @staticmethod
    def _outer_body(response: httpx.Response, payload: Any) -> Any:
        code, message, rid = _error_fields(payload, response.headers)
        return {"error": {"code": code, "message": message, "innerError": {"request-id": rid}}}

    # -- plain JSON reads (no SDK model for these, or none worth its parsing cost) -----------------

    async def get_json(
        self, path: str, *, op: str, ref: str, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """One Graph GET (``path`` relative to /v1.0 and already encoded, or an absolute nextLink),
        as JSON; errors mapped by :func:`graph_error`."""
        url = path if path.startswith(("https://", "http://")) else f"{self.base_url}{path}"
        response = await self._http.graph_client.get(url, headers={"Accept": "application/json", **(headers or {})})
        try:
            payload = response.json() if response.content else {}
        except ValueError:
            payload = None
        if not response.is_success:
            code, message, rid = _error_fields(payload, response.headers)
            raise graph_error(response.status_code, code, message, rid, op=op, ref=ref)
        if not isinstance(payload, dict):
            raise ServiceError(f"{ref}: Graph answered with a body that is not JSON")
        return payload

    async def list_all(self, path: str, *, op: str, ref: str) -> list[dict[str, Any]]:
        """Every item of a paged collection, following ``@odata.nextLink``."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        for _ in range(MAX_PAGES):
            if url is None:
                return items
            page = await self.get_json(url, op=op, ref=ref)
            items += [v for v in page.get("value") or [] if isinstance(v, dict)]
            link = page.get("@odata.nextLink")
            url = str(link) if link else None
        raise ServiceError(f"{ref}: more than {MAX_PAGES} pages; refusing to return a truncated list")

    async def application_object_id(self, app_id: str) -> str | None:
        """The App registration's object id (``/applications``), or None when the app is not
        registered in this tenant (a multi-tenant app registered elsewhere)."""
        items = await self.list_all(
            f"/applications?$filter={_filter('appId', app_id)}&$select=id,appId", op="service_principal", ref=app_id
        )
        return str(items[0]["id"]) if items and items[0].get("id") else None

    async def app_role_assignments(self, sp_id: str) -> list[dict[str, Any]]:
        """The app roles (application permissions with admin consent) a service principal holds."""
        return await self.list_all(
            f"/servicePrincipals/{quote(sp_id, safe='')}/appRoleAssignments", op="service_principal", ref=sp_id
        )

    async def resource_service_principal(self, sp_id: str) -> dict[str, Any]:
        """A resource's service principal with its appRoles (to name an assignment's role id)."""
        return await self.get_json(
            f"/servicePrincipals/{quote(sp_id, safe='')}?$select=id,appId,displayName,appRoles",
            op="service_principal",
            ref=sp_id,
        )

    async def probe(self) -> httpx.Response:
        """One small read (``/users?$top=1``), answered as it came, for ``doctor``: it reports the
        status in its own words and reads the Date header for the clock check."""
        return await self._http.graph_client.get(
            f"{self.base_url}/users?$top=1&$select=id", headers={"Accept": "application/json"}
        )
