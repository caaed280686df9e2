"""The ESJ application as Entra ID and Exchange see it, and what it needs per protocol.

Two identities matter when ESJ signs in as itself (client credentials):

* its **enterprise application** (service principal) in Entra ID: the object that holds admin
  consent (app roles such as Graph ``Mail.ReadWrite`` or Exchange ``IMAP.AccessAsApp``);
* its **Exchange service principal** (``New-ServicePrincipal``): the object Exchange grants
  mailbox permissions and RBAC for Applications roles to. It must be registered with the
  *enterprise application's* object id. Exchange accepts the *app registration's* object id just
  as well, and the app's sign-ins then fail (reference §6): the trap this module detects.

Graph reads (app-role assignments, the resources' role names, the app registration) are
:class:`~esj_provision.microsoft.graph.GraphClient`'s, like every other Graph call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..errors import AppLookupError, EsjProvisionError
from ..models import Inbound, Outbound, Outcome, ServicePrincipal, State
from . import powershell
from .journal import Journal
from .writes import Step, run_step

if TYPE_CHECKING:
    from ..microsoft.session import Session

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
RESOURCE_NAMES = {GRAPH_APP_ID: "graph", EXCHANGE_APP_ID: "exchange"}
RESOURCE_TITLES = {"graph": "Microsoft Graph", "exchange": "Office 365 Exchange Online"}

# Application permissions that reach every mailbox of the tenant, whatever the mailbox ACLs say.
# IMAP/POP.AccessAsApp and SMTP.SendAsApp are not here: they work only where the app's Exchange
# service principal holds Full Access, i.e. on the mailboxes it was onboarded to.
TENANT_WIDE: dict[str, frozenset[str]] = {
    "graph": frozenset({"Mail.Read", "Mail.ReadBasic", "Mail.ReadBasic.All", "Mail.ReadWrite", "Mail.Send"}),
    "exchange": frozenset({"full_access_as_app", "Mail.Read", "Mail.ReadWrite", "Mail.Send"}),
}

# RBAC for Applications roles and the permissions they grant (reference §6; Microsoft's list).
RBAC_ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "Application Mail.Read": frozenset({"Mail.Read"}),
    "Application Mail.ReadBasic": frozenset({"Mail.ReadBasic"}),
    "Application Mail.ReadWrite": frozenset({"Mail.ReadWrite"}),
    "Application Mail.Send": frozenset({"Mail.Send"}),
    "Application Mail Full Access": frozenset({"Mail.ReadWrite", "Mail.Send"}),
    "Application Exchange Full Access": frozenset({"Mail.ReadWrite", "Mail.Send"}),
    "Application EWS.AccessAsApp": frozenset({"EWS.AccessAsApp"}),
    "Application SMTP.SendAsApp": frozenset({"SMTP.SendAsApp"}),
}


# --------------------------------------------------------------------------------------------
# What ESJ needs per protocol
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """One application permission the ESJ app needs for a protocol, and how else it can hold it."""

    resource: str  # graph | exchange
    role: str  # the Entra app role (Application permission)
    purpose: str
    rbac_role: str | None = None  # the RBAC for Applications role that grants the same, scoped
    exchange_sp: bool = False  # the Exchange service principal must be registered for it to work

    @property
    def label(self) -> str:
        return f"{RESOURCE_TITLES[self.resource]} {self.role}"


def esj_needs(inbound: Inbound | None, outbound: Outbound | None) -> list[Need]:
    """What an ESJ app signing in as itself needs for these protocols (reference §6)."""
    needs: list[Need] = []
    if inbound is Inbound.GRAPH:
        needs.append(Need("graph", "Mail.ReadWrite", "inbound GRAPH reads and moves mail",
                          rbac_role="Application Mail.ReadWrite"))
    if outbound is Outbound.GRAPH:
        needs.append(Need("graph", "Mail.Send", "outbound GRAPH sends mail", rbac_role="Application Mail.Send"))
    if inbound is Inbound.IMAP:
        needs.append(Need("exchange", "IMAP.AccessAsApp", "inbound IMAP signs in as the app", exchange_sp=True))
    if outbound is Outbound.SMTP:
        needs.append(Need("exchange", "SMTP.SendAsApp", "outbound SMTP signs in as the app",
                          rbac_role="Application SMTP.SendAsApp", exchange_sp=True))
    if inbound is Inbound.EWS or outbound is Outbound.EWS:
        needs.append(Need("exchange", "full_access_as_app", "EWS signs in as the app",
                          rbac_role="Application EWS.AccessAsApp"))
    return needs


# --------------------------------------------------------------------------------------------
# The app's identities
# --------------------------------------------------------------------------------------------


class Registration(str, Enum):
    """How an app's Exchange service principal is registered."""

    ABSENT = "absent"  # not registered in Exchange
    OK = "ok"  # with the enterprise application's object id
    APP_REGISTRATION_ID = "app-registration-id"  # with the app registration's object id: the trap
    OTHER_ID = "other-id"  # with some other object id

    @property
    def wrong(self) -> bool:
        return self in {Registration.APP_REGISTRATION_ID, Registration.OTHER_ID}


@dataclass
class AppIdentity:
    """An app's enterprise application (Graph) and Exchange service principal (Exchange)."""

    app_id: str
    sp: ServicePrincipal | None = None
    exo: dict[str, Any] | None = None  # Get-ServicePrincipal's row; None: not registered in Exchange
    app_object_id: str | None = None  # the app registration's object id, read to explain a mismatch

    @property
    def name(self) -> str:
        return (self.sp.display_name if self.sp else None) or self.app_id

    @property
    def exo_object_id(self) -> str | None:
        if self.exo is None:
            return None
        value = self.exo.get("ObjectId") or self.exo.get("ServiceId") or self.exo.get("Identity")
        return str(value).lower() if value else None

    @property
    def registration(self) -> Registration:
        oid = self.exo_object_id
        if self.exo is None:
            return Registration.ABSENT
        if self.sp is not None and oid == self.sp.id.lower():
            return Registration.OK
        if self.app_object_id and oid == self.app_object_id.lower():
            return Registration.APP_REGISTRATION_ID
        return Registration.OTHER_ID

    @property
    def exchange_identity(self) -> str:
        """What Exchange takes as ``-User``/``-App`` for this app: the registered object id when
        registered, otherwise the enterprise application's object id it will be registered with."""
        return self.exo_object_id or (self.sp.id if self.sp else self.app_id)

    def aliases(self) -> set[str]:
        """Every form a permission row may show the app as. How Get-MailboxPermission renders a
        service principal is not documented (reference §8 item 4), so all of them count."""
        values: set[str] = {self.app_id}
        if self.sp is not None:
            values |= {v for v in (self.sp.id, self.sp.display_name) if v}
        for key in ("Identity", "ObjectId", "ServiceId", "Name", "DisplayName", "Sid", "AppId"):
            value = (self.exo or {}).get(key)
            if value:
                values.add(str(value))
        return {v.lower() for v in values}

    def mismatch(self) -> tuple[str, str]:
        """Why a registration with the wrong object id breaks ESJ, and how to repair it."""
        oid = self.exo_object_id or "?"
        right = self.sp.id if self.sp else "<enterprise application object id>"
        if self.registration is Registration.APP_REGISTRATION_ID:
            what = (
                f"the ESJ app {self.name} ({self.app_id}) is registered in Exchange with object id {oid}, which is "
                f"its App registration's object id, not its Enterprise application's ({right}): Exchange accepted "
                "it, but the app's IMAP/SMTP/EWS sign-ins and its RBAC roles will fail"
            )
        else:
            what = (
                f"the ESJ app {self.name} ({self.app_id}) is registered in Exchange with object id {oid}, which is not "
                f"its Enterprise application's object id ({right}): the app's sign-ins will fail"
            )
        fix = (
            f"in Exchange Online PowerShell: {powershell.remove_service_principal(oid)}; "
            f"{powershell.new_service_principal(self.app_id, right, self.name)}; then grant "
            "Full Access again (esj-provision onboard MAILBOX --trustee-app ...): the old grants belong to the "
            "removed registration. Nothing was changed automatically."
        )
        return what, fix


async def app_registration_object_id(session: Session, app_id: str) -> str | None:
    """The App registration's object id, when the app is registered in this tenant (a multi-tenant
    ESJ app registered elsewhere has none here); None also when it cannot be read."""
    try:
        return await session.graph.application_object_id(app_id)
    except EsjProvisionError:
        return None


async def resolve_app(session: Session, app_id: str) -> AppIdentity:
    """The app's enterprise application and its Exchange registration, read together. A Graph
    failure is raised as :class:`AppLookupError`; Exchange's errors as they are."""
    ident = AppIdentity(app_id.lower())
    sp, exo = await asyncio.gather(
        session.graph.get_service_principal(ident.app_id),
        session.exchange.get_service_principal(ident.app_id),
        return_exceptions=True,
    )
    if isinstance(sp, EsjProvisionError):
        raise AppLookupError(sp.message, hint=sp.hint, request_id=sp.request_id, status_code=sp.status_code)
    if isinstance(sp, BaseException):
        raise sp
    if isinstance(exo, BaseException):
        raise exo
    ident.sp, ident.exo = sp, exo
    if ident.exo is not None and ident.sp is not None and ident.exo_object_id != ident.sp.id.lower():
        ident.app_object_id = await app_registration_object_id(session, ident.app_id)
    return ident


async def cached_app(session: Session, app_id: str) -> AppIdentity:
    """:func:`resolve_app` once per session: every row of a bulk run shares the same object, so a
    registration made for one row is seen by the others."""
    key = app_id.lower()
    fut = session.cache.apps.get(key)
    if fut is None:
        fut = asyncio.ensure_future(resolve_app(session, app_id))
        session.cache.apps[key] = fut
    try:
        result: AppIdentity = await asyncio.shield(fut)
    except Exception:
        session.cache.apps.pop(key, None)  # a failed read may be retried by the next row
        raise
    return result


async def app_roles(session: Session, sp_id: str) -> dict[str, set[str]]:
    """The application permissions (app roles with admin consent) a service principal holds, by
    resource: ``{"graph": {"Mail.ReadWrite"}, "exchange": {"IMAP.AccessAsApp"}}``. Role ids are
    turned into names through each resource's own appRoles, never a hard-coded table."""
    assignments = await session.graph.app_role_assignments(sp_id)
    resources: dict[str, dict[str, Any]] = {}
    for rid in {str(a.get("resourceId")) for a in assignments if a.get("resourceId")}:
        resources[rid] = await session.graph.resource_service_principal(rid)
    out: dict[str, set[str]] = {}
    for a in assignments:
        res = resources.get(str(a.get("resourceId")), {})
        name = RESOURCE_NAMES.get(str(res.get("appId") or "").lower(), str(res.get("displayName") or "other"))
        by_id = {str(r.get("id")): str(r.get("value")) for r in res.get("appRoles") or [] if isinstance(r, dict)}
        role = by_id.get(str(a.get("appRoleId")))
        if role:
            out.setdefault(name, set()).add(role)
    return out


def rbac_roles(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(role, custom resource scope or None for organisation-wide) of Get-ManagementRoleAssignment rows."""
    out = []
    for row in rows:
        role = str(row.get("Role") or "")
        scope = row.get("CustomResourceScope")
        out.append((role, str(scope) if scope else None))
    return out


# --------------------------------------------------------------------------------------------
# Access wider than the app's mailboxes (doctor, audit, scoping)
# --------------------------------------------------------------------------------------------


@dataclass
class AppAccess:
    """What an ESJ app can reach beyond the mailboxes it was onboarded to."""

    app_id: str
    display_name: str | None = None
    wider: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.errors:
            return "unknown"
        return "wider" if self.wider else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "display_name": self.display_name,
            "status": self.status,
            "wider": self.wider,
            "errors": self.errors,
        }


WIDER_FIX = (
    "remove the tenant-wide application permissions from the ESJ app (Entra ID > App registrations > API "
    "permissions, then revoke their admin consent) and grant the same scoped to the onboarded mailboxes: "
    "Full Access for IMAP/SMTP/EWS (onboard --trustee-app), RBAC for Applications for GRAPH "
    "(onboard --scope-esj-app); Entra grants and RBAC grants add up, so a tenant-wide grant defeats any scope"
)


def wider_than_mailboxes(roles: dict[str, set[str]], rbac: list[tuple[str, str | None]]) -> list[str]:
    """Each grant that reaches every mailbox: tenant-wide Entra mail permissions, and RBAC for
    Applications mail roles assigned without a custom resource scope."""
    out = []
    for resource in ("graph", "exchange"):
        wide = sorted(roles.get(resource, set()) & TENANT_WIDE[resource])
        if wide:
            out.append(
                f"{RESOURCE_TITLES[resource]} {', '.join(wide)} granted tenant-wide in Entra ID (every mailbox)"
            )
    for role, scope in rbac:
        if scope is None and role in RBAC_ROLE_PERMISSIONS:
            out.append(f"RBAC for Applications role '{role}' assigned organisation-wide (no custom resource scope)")
    return out


async def app_access(session: Session, app_id: str) -> AppAccess:
    """The wider-access assessment of one app; read errors are values (status ``unknown``)."""
    access = AppAccess(app_id.lower())
    try:
        ident = await cached_app(session, app_id)
    except EsjProvisionError as exc:
        access.errors.append(exc.message)
        return access
    if ident.sp is None:
        access.errors.append(f"no enterprise application for app {app_id} in this tenant")
        return access
    access.display_name = ident.sp.display_name
    try:
        roles = await app_roles(session, ident.sp.id)
        rows = await session.exchange.get_management_role_assignments(ident.app_id) if ident.exo else []
    except EsjProvisionError as exc:
        access.errors.append(exc.message)
        return access
    access.wider = wider_than_mailboxes(roles, rbac_roles(rows))
    return access


# --------------------------------------------------------------------------------------------
# Registering the Exchange service principal (journalled)
# --------------------------------------------------------------------------------------------


def registration_step(ident: AppIdentity) -> Step:
    """The step "register the app's service principal in Exchange", with its current state."""
    oid = ident.sp.id if ident.sp else "<enterprise application object id>"
    return Step(
        op="new-service-principal",
        target=f"Exchange service principal of {ident.name}",
        command=powershell.new_service_principal(ident.app_id, oid, ident.name),
        key_mailbox="(organization)",
        key_trustee=ident.app_id,
        current=State.ABSENT if ident.exo is None else State.PRESENT,
    )


async def ensure_registered(session: Session, ident: AppIdentity, step: Step, journal: Journal) -> None:
    """Register the service principal with the *enterprise application's* object id. Once per
    session: concurrent rows of a bulk run wait for the first one's write instead of racing it."""
    if ident.sp is None:
        step.skip("the app has no enterprise application in this tenant")
        return
    key = ident.app_id.lower()
    fut = session.cache.registrations.get(key)
    if fut is None:
        fut = asyncio.ensure_future(_register(session, ident, step, journal))
        session.cache.registrations[key] = fut
        await asyncio.shield(fut)
        return
    first: Step = await asyncio.shield(fut)
    step.outcome, step.request_id, step.error, step.hint = first.outcome, first.request_id, first.error, first.hint


async def _register(session: Session, ident: AppIdentity, step: Step, journal: Journal) -> Step:
    assert ident.sp is not None
    sp = ident.sp

    async def present() -> bool:
        ident.exo = await session.exchange.get_service_principal(ident.app_id)
        return ident.exo is not None

    await run_step(
        session.http,
        step,
        journal,
        lambda: session.exchange.new_service_principal(ident.app_id, sp.id, ident.name),
        present,
    )
    if step.outcome in {Outcome.APPLIED, Outcome.ALREADY_PRESENT}:
        # Read back what Exchange recorded: later steps address the app by it, and a row that was
        # "already" there may carry another object id (registered meanwhile by someone else).
        try:
            await present()
        except EsjProvisionError as exc:
            step.outcome, step.error = Outcome.UNKNOWN, f"registered, but cannot read it back: {exc.message}"
            return step
        if ident.exo is None:
            step.outcome, step.error = Outcome.FAILED, "Exchange does not list the service principal after registering it"
        elif ident.registration is not Registration.OK:
            ident.app_object_id = ident.app_object_id or await app_registration_object_id(session, ident.app_id)
            step.outcome, (step.error, step.hint) = Outcome.FAILED, ident.mismatch()
    return step
