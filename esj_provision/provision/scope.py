"""Confine an ESJ app's Graph mail access to its shared mailboxes (RBAC for Applications).

With inbound or outbound GRAPH, ESJ reads and sends as its app. A tenant-wide Graph
``Mail.ReadWrite``/``Mail.Send`` grant lets it read every mailbox of the tenant; RBAC for
Applications grants the same permissions on a management scope instead (reference §6):

1. the app's Exchange service principal (``New-ServicePrincipal``, enterprise application object id);
2. one management scope per ESJ app, ``esj-<client id>``, whose filter (written through
   ``-RecipientRestrictionFilter``, read back as ``RecipientFilter``) lists the onboarded mailboxes
   (``PrimarySmtpAddress -eq '...' -or ...``), extended mailbox by mailbox;
3. the role assignments ``Application Mail.ReadWrite`` (inbound GRAPH) and ``Application
   Mail.Send`` (outbound GRAPH) with that scope as CustomResourceScope;
4. verified with ``Test-ServicePrincipalAuthorization``, which bypasses Exchange's permission cache.

RBAC grants and Entra grants add up: the scope is worth nothing while the app keeps a tenant-wide
Entra mail permission, which is reported. Every write is journalled; a second run writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import AccessDeniedError, AuthError, EsjProvisionError
from ..models import Inbound, ManagementScope, Outbound, Outcome, State
from .esj_app import (
    AppIdentity,
    AppLookupError,
    app_roles,
    ensure_registered,
    rbac_roles,
    registration_step,
    resolve_app,
    wider_than_mailboxes,
)
from .onboard import Finding, gather_all
from .powershell import arg, quote
from .writes import Step, run_step

if TYPE_CHECKING:
    from ..microsoft.session import Session
    from .journal import Journal

READ_ROLE = "Application Mail.ReadWrite"
SEND_ROLE = "Application Mail.Send"
_ADDRESS_CLAUSE = re.compile(r"PrimarySmtpAddress\s+-eq\s+'((?:[^']|'')*)'", re.IGNORECASE)


def scope_name(app_id: str) -> str:
    return f"esj-{app_id.lower()}"


def roles_for(inbound: Inbound, outbound: Outbound) -> list[str]:
    """Only what the protocols use: a GRAPH-inbound, SMTP-outbound ESJ gets no Mail.Send."""
    roles = []
    if inbound is Inbound.GRAPH:
        roles.append(READ_ROLE)
    if outbound is Outbound.GRAPH:
        roles.append(SEND_ROLE)
    return roles


def _literal(address: str) -> str:
    return "'" + address.replace("'", "''") + "'"


def address_filter(addresses: list[str]) -> str:
    return " -or ".join(f"PrimarySmtpAddress -eq {_literal(a)}" for a in addresses)


def addresses_in(recipient_filter: str) -> list[str]:
    """The addresses a scope's filter names with ``PrimarySmtpAddress -eq '...'``."""
    return [m.group(1).replace("''", "'") for m in _ADDRESS_CLAUSE.finditer(recipient_filter or "")]


def extended_filter(current: str, mailbox: str) -> str:
    """The filter with ``mailbox`` added. A filter this tool wrote is rewritten as a flat list; one
    edited by hand is kept whole, in parentheses, so nothing the admin put there is lost."""
    listed = addresses_in(current)
    if current.strip() and address_filter(listed) == current.strip():
        return address_filter([*listed, mailbox])
    if not current.strip():
        return address_filter([mailbox])
    return f"({current}) -or PrimarySmtpAddress -eq {_literal(mailbox)}"


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


@dataclass
class ScopePlan:
    app_id: str
    mailbox: str
    roles: list[str]
    scope: str
    app: AppIdentity | None = None
    findings: list[Finding] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    verification: list[dict[str, Any]] = field(default_factory=list)  # role, in_scope, scope
    dry_run: bool = False

    def add(self, level: Literal["error", "warning", "info"], code: str, message: str, hint: str | None = None) -> None:
        self.findings.append(Finding(level, code, message, hint))

    @property
    def refused(self) -> bool:
        return any(f.level == "error" for f in self.findings if f.code != "scope-not-effective")

    @property
    def failed(self) -> bool:
        return any(f.level == "error" for f in self.findings) or any(s.failed for s in self.steps)

    @property
    def writes(self) -> int:
        return sum(1 for s in self.steps if s.outcome is Outcome.APPLIED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "app": self.app.name if self.app else None,
            "mailbox": self.mailbox,
            "scope": self.scope,
            "roles": self.roles,
            "dry_run": self.dry_run,
            "findings": [asdict(f) for f in self.findings],
            "steps": [s.to_dict() for s in self.steps],
            "verification": self.verification,
            "refused": self.refused,
            "failed": self.failed,
        }


def _scope_step(name: str, row: ManagementScope | None, mailbox: str, app_id: str) -> Step:
    if row is None:
        text = address_filter([mailbox])
        return Step("new-management-scope", f"management scope {name} (with {mailbox})",
                    f"New-ManagementScope -Name {quote(name)} -RecipientRestrictionFilter {quote(text)}",
                    key_mailbox=mailbox, key_trustee=app_id, current=State.ABSENT)
    current = row.recipient_filter
    if mailbox.lower() in {a.lower() for a in addresses_in(current)}:
        return Step("set-management-scope", f"management scope {name} covers {mailbox}", "# already covered",
                    key_mailbox=mailbox, key_trustee=app_id, current=State.PRESENT)
    text = extended_filter(current, mailbox)
    return Step("set-management-scope", f"management scope {name} (add {mailbox})",
                f"Set-ManagementScope -Identity {quote(name)} -RecipientRestrictionFilter {quote(text)}",
                key_mailbox=mailbox, key_trustee=app_id, current=State.ABSENT)


def _assignment_name(scope: str, role: str) -> str:
    return f"{scope}-{role.removeprefix('Application ').replace(' ', '')}"


async def plan_scope(session: Session, app_id: str, mailbox: str, roles: list[str]) -> ScopePlan:
    """Read-only: what exists, what is missing, and whether the app's access is wider anyway."""
    plan = ScopePlan(app_id.lower(), mailbox, roles, scope_name(app_id))
    try:
        ident = await resolve_app(session, app_id)
    except AppLookupError as exc:
        plan.add("error", "scope-app-lookup-failed", f"ESJ app {app_id}: {exc.message}", exc.hint)
        return plan
    plan.app = ident
    if ident.sp is None:
        plan.add("error", "scope-app-not-found",
                 f"ESJ app {app_id} has no enterprise application (service principal) in this tenant",
                 "grant admin consent for the ESJ app in this tenant, or create its enterprise application")
        return plan
    if ident.registration.wrong:
        plan.add("error", "scope-app-wrong-object-id", *ident.mismatch())
        return plan
    registered = ident.exo is not None
    if not registered:
        plan.steps.append(registration_step(ident))
    scope_row, assignment_rows = await gather_all(
        session.exchange.get_management_scope(plan.scope),
        session.exchange.get_management_role_assignments(ident.app_id) if registered else _nothing(),
    )
    plan.steps.append(_scope_step(plan.scope, scope_row, mailbox, ident.app_id))
    held = rbac_roles(assignment_rows)
    for role in roles:
        present = any(r.lower() == role.lower() and (s or "").lower() == plan.scope for r, s in held)
        plan.steps.append(
            Step("new-role-assignment", f"role assignment {role} on scope {plan.scope}",
                 f"New-ManagementRoleAssignment -App {arg(ident.exchange_identity)} -Role {quote(role)} "
                 f"-CustomResourceScope {quote(plan.scope)} -Name {quote(_assignment_name(plan.scope, role))}",
                 key_mailbox=plan.scope, key_trustee=f"{ident.app_id}/{role}",
                 current=State.PRESENT if present else State.ABSENT)
        )
    await _report_wider(session, plan, ident, held)
    return plan


async def _nothing() -> list[dict[str, Any]]:
    return []


async def _report_wider(session: Session, plan: ScopePlan, ident: AppIdentity, held: list[tuple[str, str | None]]) -> None:
    assert ident.sp is not None
    try:
        roles = await app_roles(session, ident.sp.id)
    except EsjProvisionError as exc:
        plan.add("warning", "scope-app-roles-unknown",
                 f"cannot read the ESJ app's Entra permissions, so cannot tell whether a tenant-wide grant "
                 f"defeats the scope: {exc.message}", exc.hint)
        return
    for what in wider_than_mailboxes(roles, held):
        plan.add(
            "warning",
            "access-wider-than-mailboxes",
            f"ESJ app {ident.name}: {what}; RBAC grants and Entra grants add up, so the scope does not confine it",
            "remove that grant (Entra ID > App registrations > API permissions, and revoke its admin consent; "
            "or Remove-ManagementRoleAssignment for an organisation-wide RBAC role); the scoped "
            "assignments give ESJ what it needs",
        )


async def apply_scope(session: Session, plan: ScopePlan, journal: Journal) -> ScopePlan:
    """The missing steps in order: registration, then scope, then both assignments together."""
    assert plan.app is not None and plan.app.sp is not None
    ident = plan.app
    ex = session.exchange
    for step in plan.steps:
        if step.action == "none":
            step.outcome = Outcome.ALREADY_PRESENT
    pending = [s for s in plan.steps if s.action != "none"]
    registration = next((s for s in pending if s.op == "new-service-principal"), None)
    if registration is not None:
        await ensure_registered(session, ident, registration, journal)
    scope_step = next((s for s in pending if s.op in {"new-management-scope", "set-management-scope"}), None)
    if scope_step is not None and not (registration is not None and registration.failed):
        await _apply_scope_step(session, plan, scope_step, journal)
    blocked = next((s for s in (registration, scope_step) if s is not None and s.failed), None)
    assignments = [s for s in pending if s.op == "new-role-assignment"]
    if blocked is not None:
        for s in [*([scope_step] if scope_step is not None and scope_step is not blocked else []), *assignments]:
            if s.outcome is None:
                s.skip(f"not attempted: {blocked.target} failed")
        return plan

    async def assign(step: Step, role: str) -> None:
        async def present() -> bool:
            rows = await ex.get_management_role_assignments(ident.app_id)
            return any(r.lower() == role.lower() and (sc or "").lower() == plan.scope for r, sc in rbac_roles(rows))

        await run_step(
            session.http, step, journal,
            lambda: ex.new_management_role_assignment(
                ident.exchange_identity, role, plan.scope, name=_assignment_name(plan.scope, role)
            ),
            present,
        )

    await gather_all(*(assign(s, s.key_trustee.split("/", 1)[1]) for s in assignments))
    return plan


async def _apply_scope_step(session: Session, plan: ScopePlan, step: Step, journal: Journal) -> None:
    ex = session.exchange

    async def covers() -> bool:
        row = await ex.get_management_scope(plan.scope)
        return row is not None and plan.mailbox.lower() in {a.lower() for a in addresses_in(row.recipient_filter)}

    if step.op == "new-management-scope":
        text = address_filter([plan.mailbox])
        await run_step(session.http, step, journal, lambda: ex.new_management_scope(plan.scope, text), covers)
        return
    # Re-read just before writing: another run may have extended the scope since the plan was made,
    # and Set-ManagementScope replaces the whole filter.
    row = await ex.get_management_scope(plan.scope)
    text = extended_filter(row.recipient_filter if row is not None else "", plan.mailbox)
    await run_step(session.http, step, journal, lambda: ex.set_management_scope(plan.scope, text), covers)


async def verify_scope(session: Session, plan: ScopePlan) -> ScopePlan:
    """Test-ServicePrincipalAuthorization for the mailbox: each role must be InScope."""
    assert plan.app is not None
    try:
        rows = await session.exchange.test_service_principal_authorization(plan.app.exchange_identity, plan.mailbox)
    except (AccessDeniedError, AuthError):
        raise
    except EsjProvisionError as exc:
        plan.add("error", "scope-not-effective", f"cannot verify the scope: {exc.message}", exc.hint)
        return plan
    plan.verification = []
    for role in plan.roles:
        matching = [r for r in rows if str(r.get("RoleName") or "").lower() == role.lower()]
        in_scope = any(_truthy(r.get("InScope")) for r in matching)
        plan.verification.append(
            {"role": role, "in_scope": in_scope, "scope": next((r.get("AllowedResourceScope") for r in matching), None)}
        )
        if not in_scope:
            plan.add("error", "scope-not-effective",
                     f"Test-ServicePrincipalAuthorization: {role} is not in scope for {plan.mailbox}",
                     "run the command again; if it persists, check the scope's filter with Get-ManagementScope "
                     f"{plan.scope}")
    return plan


async def run_scope(
    session: Session, app_id: str, mailbox: str, roles: list[str], *, dry_run: bool, journal: Journal | None
) -> ScopePlan:
    plan = await plan_scope(session, app_id, mailbox, roles)
    plan.dry_run = dry_run
    if dry_run or plan.refused:
        return plan
    if any(s.action != "none" for s in plan.steps):
        if journal is None:
            raise EsjProvisionError("internal: a write needs a journal")
        await apply_scope(session, plan, journal)
    else:
        for s in plan.steps:
            s.outcome = Outcome.ALREADY_PRESENT
    if not any(s.failed for s in plan.steps):
        await verify_scope(session, plan)
    return plan
