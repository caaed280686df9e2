"""``doctor``: everything that would make onboarding fail later, checked before anything changes.

Read-only. Each check has a status (ok, missing, warning, error), says what it found, and how to
fix it. ``missing`` and ``error`` fail the run (exit 1); a ``warning`` does not.

* **Connection**: the cloud and endpoints in use (and which are overrides), TLS trust for each
  host, the clock against Microsoft's.
* **The provisioning app** (the app esj-provision signs in as): the roles its tokens really carry
  (Graph and Exchange ``roles``, directory roles in ``wids``), and whether Graph and Exchange
  accept it: Exchange answers 401 without ``Exchange.ManageAsApp`` (or its consent) and 403 with
  the app role but no Exchange admin role, and those are told apart.
* **The ESJ app** (``--esj-app``, the app ESJ signs in as, with ``--inbound/--outbound``): what it
  needs per protocol and what of it is in place, its Exchange service principal (registered, with
  the enterprise application's object id), and any access wider than its mailboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from . import hints
from .doctor_checks import ews_checks, least_privilege
from .errors import AccessDeniedError, AuthError, EsjProvisionError, ExitStatus
from .models import Inbound, Outbound
from .provision import powershell
from .provision.esj_app import (
    WIDER_FIX,
    AppIdentity,
    AppLookupError,
    Need,
    Registration,
    app_roles,
    esj_needs,
    rbac_roles,
    resolve_app,
    wider_than_mailboxes,
)
from .provision.privilege import MANAGE_AS_APP_V2, V2_ONLY, V2_ONLY_FIX

if TYPE_CHECKING:
    from .microsoft.session import Session

Status = Literal["ok", "missing", "warning", "error"]
FAILING: frozenset[str] = frozenset({"missing", "error"})
MAX_SKEW_S = 300.0  # Entra ID tolerates five minutes on client assertions; tokens carry nbf/exp
TLS_TIMEOUT_S = 10.0
CONNECT_FAILED = "cannot connect"

# Directory role template ids (wids claim).
EXCHANGE_ADMIN = "29232cdf-9323-42fd-ade2-1d097af3e4de"
EXCHANGE_RECIPIENT_ADMIN = "31392ffb-586c-42d1-9346-e59415a2cc4e"
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
DIRECTORY_ROLE_NAMES = {
    EXCHANGE_ADMIN: "Exchange Administrator",
    EXCHANGE_RECIPIENT_ADMIN: "Exchange Recipient Administrator",
    GLOBAL_ADMIN: "Global Administrator",
}


@dataclass(frozen=True)
class GraphNeed:
    """A Graph application permission the provisioning app needs, and what else satisfies it."""

    role: str
    alternatives: tuple[str, ...]
    purpose: str


PROVISIONING_GRAPH_NEEDS = (
    GraphNeed("User.Read.All", ("User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"),
              "resolve mailboxes and trustees (onboard, bulk, audit)"),
    GraphNeed("MailboxSettings.Read", ("MailboxSettings.ReadWrite",),
              "tell a shared mailbox from a user mailbox (userPurpose)"),
)
APPLICATION_READ = GraphNeed(
    "Application.Read.All", ("Application.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"),
    "read the ESJ app's enterprise application and permissions (--esj-app, --trustee-app, --scope-esj-app)",
)


@dataclass
class Check:
    id: str
    status: Status
    what: str
    fix: str | None = None
    group: str = "provisioning app"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "status": self.status, "what": self.what, "fix": self.fix}


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def add(
        self, id: str, status: Status, what: str, fix: str | None = None, *, group: str = "provisioning app"
    ) -> Check:
        check = Check(id, status, what, fix, group)
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return not any(c.status in FAILING for c in self.checks)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK if self.ok else ExitStatus.ERROR

    def get(self, id: str) -> Check | None:
        return next((c for c in self.checks if c.id == id), None)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "missing", "warning", "error")}
        return {"ok": self.ok, "summary": counts, "context": self.context, "checks": [c.to_dict() for c in self.checks]}


def _now() -> float:
    """The local clock (a function, so a test can move it)."""
    return time.time()


# --------------------------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------------------------


def _endpoints(session: Session, report: DoctorReport) -> None:
    s = session.settings
    cloud = s.cloud
    rows = [
        ("authority", s.authority_host, cloud.authority_host),
        ("graph", s.graph_endpoint, cloud.graph_endpoint),
        ("exchange", s.exchange_endpoint, cloud.exchange_endpoint),
    ]
    parts = []
    overrides = []
    for name, used, default in rows:
        overridden = used.rstrip("/") != default.rstrip("/")
        parts.append(f"{name} {used}" + (" (override)" if overridden else ""))
        if overridden:
            overrides.append(name)
    report.context.update(
        cloud=cloud.name,
        authority_host=s.authority_host,
        graph_endpoint=s.graph_endpoint,
        exchange_endpoint=s.exchange_endpoint,
        overrides=overrides,
        ca_bundle=s.ca_bundle,
        tenant_id=s.tenant_id,
        client_id=s.client_id,
        auth=s.resolved_auth,
    )
    # An override is how the sandbox, a proxy or a sovereign cloud is reached: said, not flagged.
    report.add("endpoints", "ok", f"cloud {cloud.name} ({cloud.description}); " + "; ".join(parts), group="connection")


async def _handshake(host: str, port: int, ctx: ssl.SSLContext) -> str | None:
    """None when TLS verifies; otherwise why not."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), TLS_TIMEOUT_S
        )
    except ssl.SSLCertVerificationError as exc:
        return f"certificate not trusted: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        return f"TLS failed: {exc.reason or exc}"
    except (OSError, asyncio.TimeoutError) as exc:
        return f"{CONNECT_FAILED}: {exc.__class__.__name__}{f' ({exc})' if str(exc) else ''}"
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return None


async def _tls(session: Session, report: DoctorReport) -> bool:
    """A TLS handshake with each host, with exactly the trust store esj-provision uses."""
    from .microsoft.http import ssl_context

    s = session.settings
    trust = f"CA bundle {s.ca_bundle}" if s.ca_bundle else "the system trust store"
    try:
        ctx = ssl_context(s.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        report.add("tls", "error", f"cannot load {trust}: {exc}", "give a PEM file of CA certificates "
                   "(ESJ_PROVISION_CA_BUNDLE / --ca-bundle)", group="connection")
        return False
    hosts: dict[tuple[str, int], None] = {}
    for url in (s.authority_host, s.graph_endpoint, s.exchange_endpoint):
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.hostname:
            hosts[(parts.hostname, parts.port or 443)] = None
    results = await asyncio.gather(*(_handshake(h, p, ctx) for h, p in hosts))
    problems = [(f"{h}:{p}", why) for (h, p), why in zip(hosts, results) if why]
    failed = [f"{where}: {why}" for where, why in problems]
    if failed:
        # A host that cannot be reached directly may still be reached through a proxy (the sign-in
        # library honours HTTPS_PROXY): the probes below tell. A certificate that does not verify
        # fails every connection the same way, so it is an error at once.
        tls_failed = any(not why.startswith(CONNECT_FAILED) for _, why in problems)
        report.add(
            "tls",
            "error" if tls_failed else "warning",
            f"TLS with {trust}: " + "; ".join(failed),
            "set ESJ_PROVISION_CA_BUNDLE (or --ca-bundle) to a PEM with your proxy's or organisation's root CA"
            if tls_failed
            else "check the network, the firewall/proxy and the endpoint overrides",
            group="connection",
        )
        return False
    report.add("tls", "ok", f"TLS verified for {', '.join(h for h, _ in hosts)} with {trust}", group="connection")
    return True


def clock_check(date_header: str | None, now: float) -> tuple[Status, str, str | None]:
    """Compare Microsoft's ``Date`` header with the local clock."""
    if not date_header:
        return "warning", "cannot compare clocks: the response had no Date header", None
    try:
        server = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return "warning", f"cannot compare clocks: unreadable Date header {date_header!r}", None
    skew = now - server
    ahead = "ahead of" if skew > 0 else "behind"
    text = f"local clock {abs(skew):.0f} s {ahead} Microsoft's"
    if abs(skew) > MAX_SKEW_S:
        return (
            "warning",
            text + f" (more than {MAX_SKEW_S:.0f} s): certificate sign-ins are refused outside five minutes, and "
            "token lifetimes (nbf/exp) are misjudged",
            "synchronise the clock (NTP: timedatectl set-ntp true, w32tm /resync)",
        )
    return "ok", text, None


# --------------------------------------------------------------------------------------------
# The provisioning app
# --------------------------------------------------------------------------------------------


def _has(roles: set[str], need: GraphNeed) -> str | None:
    return next((r for r in (need.role, *need.alternatives) if r in roles), None)


def _graph_need(report: DoctorReport, roles: set[str], need: GraphNeed) -> None:
    held = _has(roles, need)
    if held:
        via = "" if held == need.role else f" (via {held})"
        report.add(f"graph:{need.role}", "ok", f"Graph {need.role}{via}: {need.purpose}")
    else:
        report.add(
            f"graph:{need.role}",
            "missing",
            f"Graph {need.role} is not in the token: needed to {need.purpose}",
            f"in the provisioning app's registration add Microsoft Graph > {need.role} (Application) and grant "
            "admin consent",
        )


async def _exchange_probe(session: Session, report: DoctorReport) -> None:
    """Get-TransportConfig (read-only) shows whether Exchange accepts the app for admin calls."""
    try:
        await session.exchange.get_transport_config()
    except AccessDeniedError as exc:
        if exc.status_code == 401 and report.context.get("manage_as_app_v2_only"):
            report.add("exchange-admin", "missing", f"Exchange refused the app's token (401): {V2_ONLY}", V2_ONLY_FIX)
        elif exc.status_code == 401:
            report.add(
                "exchange-admin",
                "missing",
                "Exchange refused the app's token (401): no Exchange.ManageAsApp permission, or no admin consent",
                hints.EXCHANGE_CONSENT,
            )
        else:
            report.add(
                "exchange-admin",
                "missing",
                "Exchange refused the call (403): the app holds Exchange.ManageAsApp but no Exchange admin role",
                hints.EXCHANGE_ROLE,
            )
        return
    except EsjProvisionError as exc:
        report.add("exchange-admin", "error", f"Exchange probe failed: {exc.message}", exc.hint)
        return
    report.add("exchange-admin", "ok", "Exchange accepts the app for admin calls (Get-TransportConfig)")


def _directory_roles(report: DoctorReport, wids: set[str], exchange_ok: bool, org_level: bool) -> None:
    names = [DIRECTORY_ROLE_NAMES[w] for w in (EXCHANGE_ADMIN, GLOBAL_ADMIN, EXCHANGE_RECIPIENT_ADMIN) if w in wids]
    full = EXCHANGE_ADMIN in wids or GLOBAL_ADMIN in wids
    if full:
        report.add("directory-role", "ok", f"directory role {names[0]}: mailbox grants, service principals, scopes")
    elif EXCHANGE_RECIPIENT_ADMIN in wids:
        if org_level:
            report.add(
                "directory-role",
                "warning",
                "directory role Exchange Recipient Administrator: enough for mailbox grants, not for registering "
                "the ESJ app's service principal or scoping it (Role Management)",
                "assign Exchange Administrator to the provisioning app if esj-provision should register or scope "
                "the ESJ app",
            )
        else:
            report.add("directory-role", "ok", "directory role Exchange Recipient Administrator: mailbox grants")
    elif exchange_ok:
        report.add(
            "directory-role",
            "ok",
            "no Exchange directory role in the token's wids, but Exchange accepts the app (a role group "
            "assigned in Exchange, or a role not listed in the token)",
        )
    else:
        report.add(
            "directory-role",
            "missing",
            "no Exchange Administrator or Exchange Recipient Administrator directory role in the token (wids)",
            hints.EXCHANGE_ROLE,
        )


async def _graph_probe(session: Session, report: DoctorReport) -> str | None:
    """One small Graph read; returns the response's Date header for the clock check."""
    try:
        response = await session.graph.probe()
    except EsjProvisionError as exc:
        report.add("graph-access", "error", f"Graph did not answer: {exc.message}", exc.hint)
        return None
    date = response.headers.get("Date")
    if response.status_code == 401:
        report.add("graph-access", "missing", "Graph refused the app's token (401)",
                   "grant admin consent for the provisioning app's Microsoft Graph permissions; check the tenant and "
                   "--cloud")
    elif response.status_code == 403:
        report.add("graph-access", "missing", "Graph denied reading users (403)",
                   "add Microsoft Graph > User.Read.All (Application) and grant admin consent")
    elif response.is_success:
        report.add("graph-access", "ok", "Graph accepts the app (read one user)")
    else:
        report.add("graph-access", "error", f"Graph answered {response.status_code} to a user read",
                   "quote the request id to Microsoft support if it persists: "
                   + str(response.headers.get("request-id")))
    return date


# --------------------------------------------------------------------------------------------
# The ESJ app
# --------------------------------------------------------------------------------------------

_ESJ = "ESJ app"
GROUPS = ("connection", "provisioning app", _ESJ)


def _sp_fix(ident: AppIdentity) -> str:
    oid = ident.sp.id if ident.sp else "<enterprise application object id>"
    return (
        f"esj-provision onboard MAILBOX --trustee-app {ident.app_id} ... registers it, or in Exchange Online "
        f"PowerShell: {powershell.new_service_principal(ident.app_id, oid, ident.name)} "
        "(the Enterprise application's object id, not the App registration's)"
    )


async def _esj_app(
    session: Session, report: DoctorReport, app_id: str, inbound: Inbound | None, outbound: Outbound | None
) -> None:
    needs = esj_needs(inbound, outbound)
    try:
        ident = await resolve_app(session, app_id)
    except AppLookupError as exc:
        report.add("esj-app", "error", f"cannot read the ESJ app {app_id}: {exc.message}", exc.hint, group=_ESJ)
        return
    except (AccessDeniedError, AuthError) as exc:
        report.add("esj-app", "error", f"cannot read the ESJ app's Exchange registration: {exc.message}", exc.hint,
                   group=_ESJ)
        return
    if ident.sp is None:
        report.add(
            "esj-app",
            "missing",
            f"ESJ app {app_id} has no enterprise application (service principal) in this tenant",
            "grant admin consent for the ESJ app in this tenant (its API permissions page), or create its "
            "enterprise application; check the client id",
            group=_ESJ,
        )
        return
    report.add("esj-app", "ok", f"ESJ app {ident.name} ({ident.app_id}): enterprise application {ident.sp.id}",
               group=_ESJ)
    report.context["esj_app"].update(display_name=ident.name, sp_object_id=ident.sp.id)

    try:
        roles = await app_roles(session, ident.sp.id)
        rbac = rbac_roles(await session.exchange.get_management_role_assignments(ident.app_id)) if ident.exo else []
    except EsjProvisionError as exc:
        report.add("esj-app-permissions", "error", f"cannot read the ESJ app's permissions: {exc.message}", exc.hint,
                   group=_ESJ)
        return
    report.context["esj_app"]["roles"] = {k: sorted(v) for k, v in roles.items()}
    report.context["esj_app"]["rbac"] = [{"role": r, "scope": s} for r, s in rbac]

    sp_needed = any(n.exchange_sp for n in needs)
    for need in needs:
        _esj_need(report, need, roles, rbac, ident)
        sp_needed = sp_needed or (need.rbac_role is not None and any(r == need.rbac_role for r, _ in rbac))
    _exchange_sp(report, ident, needed=sp_needed or ident.exo is not None)
    wider = wider_than_mailboxes(roles, rbac)
    if wider:
        report.add("esj-app-scope", "warning",
                   f"access wider than its mailboxes: {'; '.join(wider)}", WIDER_FIX, group=_ESJ)
    else:
        report.add("esj-app-scope", "ok", "no tenant-wide mail access: confined to the mailboxes granted to it",
                   group=_ESJ)


def _esj_need(
    report: DoctorReport, need: Need, roles: dict[str, set[str]], rbac: list[tuple[str, str | None]],
    ident: AppIdentity,
) -> None:
    cid = f"esj:{need.role}"
    if need.role in roles.get(need.resource, set()):
        report.add(cid, "ok", f"{need.label} (Application, tenant-wide): {need.purpose}", group=_ESJ)
        return
    scoped = [s or "organisation" for r, s in rbac if need.rbac_role and r == need.rbac_role]
    if scoped:
        report.add(cid, "ok", f"{need.rbac_role} via RBAC for Applications (scope {', '.join(scoped)}): {need.purpose}",
                   group=_ESJ)
        return
    fix = f"add {need.label} (Application) to the ESJ app's API permissions and grant admin consent"
    if need.resource == "graph":
        fix = (
            f"scope it to the shared mailboxes: esj-provision onboard MAILBOX ... --scope-esj-app {ident.app_id} "
            f"(RBAC for Applications role {need.rbac_role}); or {fix} (every mailbox of the tenant)"
        )
    elif need.rbac_role:
        fix += f" (or assign the RBAC for Applications role {need.rbac_role} with a custom resource scope)"
    report.add(cid, "missing", f"{need.label} is missing: {need.purpose}", fix, group=_ESJ)


def _exchange_sp(report: DoctorReport, ident: AppIdentity, *, needed: bool) -> None:
    registration = ident.registration
    if registration is Registration.OK:
        report.add("esj-exchange-sp", "ok",
                   f"registered in Exchange with its enterprise application's object id {ident.exo_object_id}",
                   group=_ESJ)
    elif registration is Registration.ABSENT:
        if needed:
            report.add("esj-exchange-sp", "missing",
                       "not registered in Exchange (no service principal): app-only IMAP/SMTP and RBAC for "
                       "Applications need it, and it is what Full Access is granted to", _sp_fix(ident), group=_ESJ)
        else:
            report.add("esj-exchange-sp", "ok", "not registered in Exchange, and these protocols do not need it",
                       group=_ESJ)
    else:
        what, fix = ident.mismatch()
        report.add("esj-exchange-sp", "error", what, fix, group=_ESJ)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


async def run_doctor(
    session: Session,
    *,
    inbound: Inbound | None = None,
    outbound: Outbound | None = None,
    esj_app: str | None = None,
) -> DoctorReport:
    """Every check; never raises for what it finds (a failure is a check with status error)."""
    report = DoctorReport()
    report.context.update(
        inbound=inbound.value if inbound else None,
        outbound=outbound.value if outbound else None,
        esj_app={"app_id": esj_app} if esj_app else None,
    )
    try:
        await _run_checks(session, report, inbound=inbound, outbound=outbound, esj_app=esj_app)
    finally:
        # Checks run in dependency order; they are shown by subject.
        report.checks.sort(key=lambda c: GROUPS.index(c.group) if c.group in GROUPS else len(GROUPS))
    return report


async def _run_checks(
    session: Session, report: DoctorReport, *, inbound: Inbound | None, outbound: Outbound | None, esj_app: str | None
) -> None:
    # Long on purpose: one straight reading of doctor's checks in the order the report shows them
    # (endpoints, TLS, sign-in, roles, Exchange, ESJ app); each step is a call, the length is the list.
    _endpoints(session, report)
    await _tls(session, report)

    http = session.http
    try:
        graph_token, exchange_token = await asyncio.gather(
            session.tokens.get(http.graph.scope), session.tokens.get(http.exchange.scope)
        )
    except EsjProvisionError as exc:
        report.add("sign-in", "error", f"cannot sign in: {exc.message}", exc.hint)
        return
    graph_claims, exchange_claims = graph_token.claims(), exchange_token.claims()
    graph_roles = set(graph_claims.get("roles") or [])
    exchange_roles = set(exchange_claims.get("roles") or [])
    wids = set(graph_claims.get("wids") or []) | set(exchange_claims.get("wids") or [])
    name = graph_claims.get("app_displayname") or session.settings.client_id or "the app"
    report.add("sign-in", "ok", f"signed in as {name} ({session.settings.resolved_auth})")
    report.context["manage_as_app_v2_only"] = (
        MANAGE_AS_APP_V2 in exchange_roles and "Exchange.ManageAsApp" not in exchange_roles
    )
    report.context["token"] = {
        "graph_roles": sorted(graph_roles),
        "exchange_roles": sorted(exchange_roles),
        "wids": sorted(wids),
    }

    date = await _graph_probe(session, report)
    status, what, fix = clock_check(date, _now())
    report.add("clock", status, what, fix, group="connection")

    for need in PROVISIONING_GRAPH_NEEDS:
        _graph_need(report, graph_roles, need)
    if esj_app:
        _graph_need(report, graph_roles, APPLICATION_READ)
    if "Exchange.ManageAsApp" in exchange_roles:
        report.add("exchange:Exchange.ManageAsApp", "ok", "Exchange Exchange.ManageAsApp: run Exchange cmdlets")
    elif MANAGE_AS_APP_V2 in exchange_roles:
        report.add("exchange:Exchange.ManageAsApp", "missing", V2_ONLY, V2_ONLY_FIX)
    else:
        report.add(
            "exchange:Exchange.ManageAsApp",
            "missing",
            "Exchange.ManageAsApp is not in the Exchange token: Exchange refuses every cmdlet",
            hints.EXCHANGE_CONSENT,
        )
    await _exchange_probe(session, report)
    exchange_ok = (report.get("exchange-admin") or Check("", "error", "")).status == "ok"
    _directory_roles(report, wids, exchange_ok, org_level=bool(esj_app))
    await least_privilege(session, report, wids, exchange_ok)
    if inbound is Inbound.EWS or outbound is Outbound.EWS:
        await ews_checks(session, report, esj_app, inbound, outbound, exchange_ok)

    if esj_app:
        if not (inbound or outbound):
            report.add("esj-app", "error", "say which protocols ESJ uses (--inbound, --outbound)", group=_ESJ)
        else:
            await _esj_app(session, report, esj_app, inbound, outbound)
    elif inbound or outbound:
        report.add(
            "esj-app",
            "warning",
            "the ESJ app was not checked",
            "give --esj-app CLIENT_ID (the app ESJ signs in as) to check what it needs for these protocols",
            group=_ESJ,
        )
