"""``bulk MANIFEST --prune``: remove the manifest trustees' grants on mailboxes the manifest does not list.

Only what :mod:`.unlisted` found is removed, and only that: the manifest's trustees' explicit
Full Access and Send As on (mailbox, trustee) pairs the manifest does not list. Never a listed
row, never another principal's grant, never an inherited or Deny entry, never
``NT AUTHORITY\\SELF`` (those rows are never found), and a removal names the trustee itself
(``-User``/``-Trustee``), so Exchange cannot take it for anyone else's entry.

Each removal is an offboarding delegation of :mod:`..provision.onboard`, so it goes through the
same write loop as every delegation: journalled before it is sent and when its outcome is known
(with Microsoft's request id); a lost answer (timeout, 5xx) is read back before anything is sent
again. A re-run finds nothing left to remove. After ``kill -9`` the next run reads back every
removal the journal shows in flight and records what became of it (``reconciled``) before
removing what is still there.

If a manifest mailbox cannot be matched to Exchange's mailboxes (Graph could not read it), nothing
is removed at all: any unmatched mailbox might be that one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EsjProvisionError, ServiceError
from ..models import AppTrustee, Outcome, Right, State, Trustee, UserTrustee
from ..provision.journal import Entry, Journal, open_intents
from ..provision.onboard import Delegation, Mode, Plan, apply, gather_all, read_state, verify
from ..provision.powershell import to_powershell
from ..provision.request import OnboardRequest
from . import manifest as manifest_mod
from .bulk import warm_up
from .unlisted import SHARED, Discovery, Grant, Listing, TrusteeRef, discover, resolve_trustees

if TYPE_CHECKING:
    from ..microsoft.session import Session

REMOVE_OPS = {"remove-full-access": Right.FULL_ACCESS, "remove-send-as": Right.SEND_AS}


@dataclass
class Removal:
    """One unlisted grant and what became of it."""

    grant: Grant
    outcome: str = "planned"  # planned (dry run), removed, already-absent, failed, unknown
    request_id: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.grant.to_dict(), "outcome": self.outcome, "request_id": self.request_id, "error": self.error}


@dataclass
class PruneReport:
    discovery: Discovery
    dry_run: bool = False
    removals: list[Removal] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)  # for --as-powershell
    reconciled: int = 0
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.removals if r.outcome == outcome)

    @property
    def all_ok(self) -> bool:
        """Every grant found was removed (or planned) and every mailbox could be read."""
        return self.discovery.complete and not any(r.outcome in {"failed", "unknown"} for r in self.removals)

    def summary(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "unlisted_grants": len(self.removals),
            "planned": self.count("planned"),
            "removed": self.count("removed"),
            "already_absent": self.count("already-absent"),
            "failed": self.count("failed"),
            "unknown": self.count("unknown"),
            "reconciled_in_flight_removals": self.reconciled,
            **{k: v for k, v in self.discovery.summary().items() if k != "grants"},
            "errors": self.discovery.errors,
            "warnings": self.warnings + self.discovery.notes,
            "elapsed_s": round(self.elapsed_s, 3),
            "calls": self.stats,
        }

    def powershell(self) -> str:
        return to_powershell(self.plans)


def plan_for(grants: list[Grant], t: TrusteeRef) -> Plan:
    """An offboarding plan for one (mailbox, trustee) pair, from what discovery read: each right
    found is PRESENT and wanted ABSENT. Its mailbox and trustee ids are the ones Exchange showed."""
    trustee: Trustee = AppTrustee(t.ref) if t.kind == "app" else UserTrustee(t.ref)
    request = OnboardRequest(mailbox=grants[0].mailbox, trustee=trustee)
    plan = Plan(mode=Mode.OFFBOARD, request=request, trustee=t.user, app=t.app)
    plan.delegations = [Delegation(right=g.right, desired=State.ABSENT, current=State.PRESENT) for g in grants]
    return plan


async def run_prune(
    session: Session,
    path: Path,
    *,
    journal: Journal,
    dry_run: bool,
    concurrency: int,
    kinds: tuple[str, ...] = (SHARED,),
    on_progress: Callable[[int, int], None] | None = None,
) -> PruneReport:
    """Find the manifest trustees' unlisted grants and remove them (``dry_run``: plan only). The
    removals of different pairs go out ``concurrency`` at once; an error that stops one (the journal
    cannot be written, the app is refused) lets the others finish their write before it is raised."""
    started = time.monotonic()
    await warm_up(session)
    listing = Listing(manifest_mod.rows(path))
    resolved = await resolve_trustees(session, listing.trustee_refs(), strict=False)
    trustees = resolved.found
    by_key = {t.key: t for t in trustees}
    report = PruneReport(Discovery(), dry_run=dry_run, warnings=list(resolved.notes))
    if not dry_run:
        # First what a killed run left in flight, so that what is read next is what it left.
        await _reconcile(session, journal, by_key, report)
    found = report.discovery = await discover(
        session, trustees, listing, kinds=kinds, concurrency=concurrency, on_progress=on_progress
    )
    found.errors[:0] = resolved.errors  # a trustee not read: its grants are unknown, the run incomplete
    if listing.unresolved:
        raise ServiceError(
            f"cannot tell which Exchange mailbox manifest address(es) {', '.join(listing.unresolved)} are: "
            "nothing was removed",
            hint="run again; if it persists, check that the provisioning app can read users in Graph",
        )
    pairs = found.by_pair()
    for _, _, grants in pairs:
        t = by_key[grants[0].exchange_id.casefold()]
        report.plans.append(plan_for(grants, t))
    if not dry_run:
        gate = asyncio.Semaphore(max(1, concurrency))

        async def remove(plan: Plan) -> None:
            async with gate:
                await _remove(session, plan, journal)

        await gather_all(*(remove(p) for p in report.plans))
    for plan, (_, _, grants) in zip(report.plans, pairs):
        for d, g in zip(plan.delegations, grants):
            report.removals.append(
                Removal(g, "planned" if dry_run else str(d.outcome or Outcome.UNKNOWN), d.request_id, d.error)
            )
    report.elapsed_s = time.monotonic() - started
    report.stats = session.stats()
    return report


async def _remove(session: Session, plan: Plan, journal: Journal) -> None:
    """The offboarding write loop for the pair, then a read-back of every right. "The ACE doesn't
    exist" for a grant just read as present (an entry with another inheritance type than the one
    removed, say) must not pass for done: it is read again, and a grant still there is a failure,
    journalled as such after Exchange's answer."""
    await apply(session, plan, journal)
    await verify(session, plan)
    for d in plan.delegations:
        if d.outcome is not Outcome.ALREADY_ABSENT:
            continue
        state, error = await read_state(session, plan, d.right)
        d.verified = state
        if state is State.PRESENT:
            d.outcome = Outcome.FAILED
            d.error = (
                "Exchange answered that the entry does not exist, but the grant is still there (an entry "
                "with another inheritance type?); remove it in Exchange Online PowerShell"
            )
        elif state is State.UNKNOWN:
            d.outcome, d.error = Outcome.UNKNOWN, error
        else:
            continue
        entry = Entry(d.op, plan.mailbox_id, plan.trustee_id)
        journal.event("verified", entry, outcome=str(d.outcome), error=d.error)


async def _reconcile(session: Session, journal: Journal, trustees: dict[str, TrusteeRef], report: PruneReport) -> None:
    """Removals an earlier run journalled but never saw the outcome of (it was killed): read each
    back and record what the tenant shows, before this run decides anything."""
    pending = {k: v for k, v in open_intents(journal.path).items() if v.get("op") in REMOVE_OPS}
    if not pending:
        return
    journal.write("resume", note=f"{len(pending)} removal(s) from an earlier run had no recorded outcome")
    for intent in pending.values():
        op, mailbox, trustee = str(intent["op"]), str(intent.get("mailbox") or ""), str(intent.get("trustee") or "")
        t = trustees.get(trustee.casefold())
        if t is None:
            report.warnings.append(
                f"an interrupted removal ({op} on {mailbox} for {trustee}) concerns a trustee not in this manifest; "
                "it was left as it is"
            )
            continue
        right = REMOVE_OPS[op]
        plan = plan_for([Grant(mailbox, "", t.ref, t.kind, t.exchange_id, right, "")], t)
        try:
            state, error = await read_state(session, plan, right)
        except EsjProvisionError as exc:
            state, error = State.UNKNOWN, exc.message
        if state is State.UNKNOWN:
            report.warnings.append(f"could not read back the interrupted removal {op} on {mailbox}: {error}")
            continue
        journal.event(
            "reconciled",
            Entry(op, mailbox, t.exchange_id),
            outcome="removed" if state is State.ABSENT else "not-applied",
            run_of_intent=intent.get("run"),
            note="outcome of an interrupted earlier run, read from the tenant",
        )
        report.reconciled += 1
