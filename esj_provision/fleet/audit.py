"""Drift audit: does the tenant still match the manifest? Read-only.

For every row, each delegation is ``present``, ``absent`` or ``unknown`` (with the error), plus
the drift that matters to ESJ: the mailbox is no longer shared (or gone), the trustee is disabled
(or gone, or no longer mail-enabled), SMTP AUTH is switched off for an SMTP row. An ``unknown``
is never reported as in sync.

A trustee that is an app's client id is the ESJ app's Exchange service principal: its Full Access
is checked (it has no Send As), and so is its registration. Every such app, and every ``--esj-app``,
is also checked for access wider than its mailboxes (tenant-wide mail permissions, organisation-wide
RBAC roles), which counts as drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AccessDeniedError, AuthError, EsjProvisionError, ExitStatus
from ..models import AppTrustee, Inbound, Outbound, Right, State
from ..provision.esj_app import AppAccess, app_access
from ..provision.onboard import preflight
from ..provision.request import send_as_for
from .bulk import process_rows, request_for, warm_up
from .listings import SHARED, FleetListings
from .manifest import ManifestRow, rows

if TYPE_CHECKING:
    from ..microsoft.graph import LookupResult
    from ..microsoft.session import Session
    from .unlisted import Discovery

# Findings that mean the tenant no longer matches what ESJ was set up for.
DRIFT_CODES = {
    "mailbox-not-found": "mailbox gone",
    "mailbox-not-shared": "mailbox no longer shared",
    "mailbox-not-rest-enabled": "mailbox inactive or not in Exchange Online",
    "trustee-not-found": "trustee gone",
    "trustee-disabled": "trustee disabled",
    "trustee-not-mail-enabled": "trustee not mail-enabled",
    "smtp-auth-disabled-mailbox": "SMTP AUTH disabled for the trustee",
    "smtp-auth-disabled-tenant": "SMTP AUTH disabled for the tenant",
    "trustee-app-not-found": "ESJ app has no enterprise application",
    "trustee-app-not-registered": "ESJ app not registered in Exchange",
    "trustee-app-wrong-object-id": "ESJ app registered in Exchange with the wrong object id",
    # An EWS row that cannot work (provision/ews_policy.py).
    "ews-blocked-by-organisation": "EWS blocked by the organisation (EwsEnabled)",
    "ews-not-allow-listed": "ESJ app not in EwsAllowedAppIDs",
    "ews-disabled-on-mailbox": "EWS disabled on the mailbox (CAS EwsEnabled)",
    "ews-switched-off": "EWS switched off in Exchange Online since 1 April 2027",
}
# Findings that mean we could not tell.
UNKNOWN_CODES = {
    "mailbox-lookup-failed",
    "trustee-lookup-failed",
    "mailbox-purpose-unknown",
    "smtp-auth-unknown",
    "trustee-app-lookup-failed",
    "ews-policy-unreadable",
}


@dataclass
class AuditRow:
    line: int
    mailbox: str
    trustee: str
    inbound: str
    outbound: str
    full_access: str
    send_as: str  # present/absent/unknown, or "-" when the row does not want Send As
    drift: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.errors or State.UNKNOWN.value in (self.full_access, self.send_as):
            return "unknown"
        if self.drift:
            return "drift"
        return "in-sync"

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "mailbox": self.mailbox,
            "trustee": self.trustee,
            "inbound": self.inbound,
            "outbound": self.outbound,
            "full_access": self.full_access,
            "send_as": self.send_as,
            "status": self.status,
            "drift": self.drift,
            "errors": self.errors,
            "warnings": self.warnings,
        }


@dataclass
class AuditReport:
    rows: list[AuditRow] = field(default_factory=list)
    apps: list[AppAccess] = field(default_factory=list)  # ESJ apps: access wider than their mailboxes?
    unlisted: Discovery | None = None  # --unlisted: the trustees' grants the manifest does not list
    elapsed_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def count_apps(self, status: str) -> int:
        return sum(1 for a in self.apps if a.status == status)

    @property
    def exit_status(self) -> ExitStatus:
        """1 when any row or app could not be read (the audit is incomplete), else 3 on drift
        (an app with wider access included), else 0."""
        if self.count("unknown") or self.count_apps("unknown") or (self.unlisted and not self.unlisted.complete):
            return ExitStatus.ERROR
        if self.count("drift") or self.count_apps("wider") or (self.unlisted and self.unlisted.grants):
            return ExitStatus.DRIFT
        return ExitStatus.OK

    def summary(self) -> dict[str, Any]:
        out = {
            "rows": len(self.rows),
            "in_sync": self.count("in-sync"),
            "drift": self.count("drift"),
            "unknown": self.count("unknown"),
            "elapsed_s": round(self.elapsed_s, 3),
            "calls": self.stats,
        }
        if self.apps:
            out["apps"] = len(self.apps)
            out["apps_wider"] = self.count_apps("wider")
            out["apps_unknown"] = self.count_apps("unknown")
        if self.unlisted is not None:
            out["unlisted_grants"] = len(self.unlisted.grants)
            out["unlisted_complete"] = self.unlisted.complete
        return out


def audit_row(row: ManifestRow, plan_findings: list[Any], delegations: list[Any]) -> AuditRow:
    states = {d.right: d for d in delegations}
    fa = states.get(Right.FULL_ACCESS)
    sa = states.get(Right.SEND_AS)
    wants_send_as = send_as_for(row.send_as, row.trustee)
    out = AuditRow(
        line=row.line,
        mailbox=row.mailbox,
        trustee=row.trustee.ref,
        inbound=row.inbound.value,
        outbound=row.outbound.value,
        full_access=fa.current.value if fa else State.UNKNOWN.value,
        # An app trustee never gets Send As (it sends with its own app permission).
        send_as=(sa.current.value if sa else State.UNKNOWN.value) if wants_send_as else "-",
    )
    for f in plan_findings:
        if f.code in DRIFT_CODES:
            out.drift.append(DRIFT_CODES[f.code])
            if f.code.startswith("ews-"):
                out.warnings.append(f.message + (f" (fix: {f.hint})" if f.hint else ""))
        elif f.code in UNKNOWN_CODES:
            out.errors.append(f.message)
        elif f.level == "warning":
            out.warnings.append(f.message)
    for d in delegations:
        if d.current is State.UNKNOWN and d.error:
            out.errors.append(f"{d.right.value}: {d.error}")
        elif d.current is State.ABSENT:
            out.drift.append(f"{d.right.value} missing")
    refused_before_reading = not delegations or all(d.current is State.UNKNOWN and not d.error for d in delegations)
    if refused_before_reading and out.drift:
        # Preflight found the mailbox or trustee gone: the delegations cannot exist; say so plainly.
        out.full_access = "n/a" if out.full_access == State.UNKNOWN.value else out.full_access
        if wants_send_as:
            out.send_as = "n/a" if out.send_as == State.UNKNOWN.value else out.send_as
    return out


def _listed_type_will_do(row: ManifestRow) -> bool:
    """Whether the shared-mailbox listing may stand for Graph's mailbox type in this row's audit.

    Where ESJ reads or sends over GRAPH, Graph itself must reach the mailbox (a 404
    ``MailboxNotEnabledForRESTAPI`` is drift), so Graph is asked. Elsewhere being in
    ``Get-Mailbox -RecipientTypeDetails SharedMailbox`` already says it is a shared mailbox in Exchange
    Online (inactive, soft-deleted and on-premises mailboxes are not listed there), and the row saves
    its one Outlook read: what keeps an audit at Exchange's pace when Graph is the slower service."""
    return row.inbound is not Inbound.GRAPH and row.outbound is not Outbound.GRAPH


async def run_audit(
    session: Session,
    path: Path,
    *,
    concurrency: int,
    on_row: Callable[[AuditRow], None] | None = None,
    esj_apps: tuple[str, ...] = (),
    unlisted_kinds: tuple[str, ...] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """With ``unlisted_kinds`` (``--unlisted``), also every grant of the manifest's trustees on
    mailboxes of those kinds that the manifest does not list (:mod:`.unlisted`)."""
    started = time.monotonic()
    report = AuditReport()
    await warm_up(session)
    apps: dict[str, None] = {a.lower(): None for a in esj_apps}  # ordered set: manifest apps join it
    # Send As from one listing per trustee: 1 Exchange call per row (Full Access) instead of 2.
    # An "absent" there is read again per mailbox before it is reported as drift.
    # With --unlisted, the listing its search needs is read here and kept for it: read once a run.
    listings = FleetListings(
        session, confirm_absent=True, kinds=unlisted_kinds or (SHARED,), keep=unlisted_kinds is not None
    )

    # A service-account row's EWS allow-list is checked for the ESJ app when one was named.
    esj_app = esj_apps[0].lower() if len(esj_apps) == 1 else None

    async def handle(row: ManifestRow, lookups: dict[str, LookupResult]) -> AuditRow:
        request = request_for(row, esj_app_id=esj_app)
        try:
            plan = await preflight(
                session, request, mode="audit", desired=State.PRESENT, lookups=lookups, send_as=listings
            )
        except (AccessDeniedError, AuthError):
            raise  # the audit itself cannot run: exit 1 with what to fix
        except EsjProvisionError as exc:
            result = audit_row(row, [], [])
            result.errors.append(exc.message)
            return result
        return audit_row(row, plan.findings, plan.delegations)

    def done(row: ManifestRow, result: AuditRow) -> None:
        if isinstance(row.trustee, AppTrustee):
            apps[row.trustee.client_id.lower()] = None
        report.rows.append(result)
        if on_row is not None:
            on_row(result)

    await process_rows(
        session, rows(path), concurrency, handle, done, listings=listings, types_from_listing=_listed_type_will_do
    )
    report.rows.sort(key=lambda r: r.line)
    for app_id in apps:
        report.apps.append(await app_access(session, app_id))
    if unlisted_kinds is not None:
        from .unlisted import find_unlisted

        report.unlisted = await find_unlisted(
            session, path, kinds=unlisted_kinds, concurrency=concurrency, on_progress=on_progress
        )
    report.elapsed_s = time.monotonic() - started
    report.stats = session.stats()
    return report
