"""Whether the ESJ app may use EWS in this tenant, and the opt-in fix (allow-list it).

Since 1 October 2026 Exchange Online answers EWS with HTTP 403 (``X-EWS-Policy-Reason``) unless
(updates-2026-11.md §1, Microsoft's "Control access to EWS"):

* the organisation has ``EwsEnabled = $true`` (``Get-OrganizationConfig``);
* the calling app's id is in ``EwsAllowedAppIDs`` (read only with
  ``-RetrieveEwsOperationAccessPolicy``; an empty list blocks every app);
* the mailbox's CAS ``EwsEnabled`` is not ``$false`` (it cannot override an organisation block).

For a service-account setup (ESJ signs the account in with OAuth), the app id in the token is
still the ESJ app's client id. That the allow-list applies to such delegated tokens as it does to
app-only ones is how third-party write-ups read it; the Microsoft pages we could check do not say
so: unconfirmed, and every message about it says so.

The fix (``esj-provision ews allow``) is a read-modify-write of the whole list:
``Set-OrganizationConfig -EwsAllowedAppIDs`` replaces it, so the list is read again just before
the write and our id appended to it. It is journalled, goes through the one write loop
(:func:`provision.writes.run_step`), and is idempotent (already listed: no write). Changes take
up to 24 hours to reach the EWS front ends.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..errors import EsjProvisionError, UsageError
from ..esj.ews_sunset import EWS_BLOCKED_FROM, ews_warning, today
from ..models import CasMailbox, EwsOrgPolicy, Outcome, State, UserTrustee
from .powershell import quote
from .writes import Step, run_step

if TYPE_CHECKING:
    from ..microsoft.session import Session
    from .journal import Journal

PROPAGATION = "Exchange can take up to 24 hours before a change of EwsAllowedAppIDs reaches EWS"
DELEGATED_UNCONFIRMED = (
    "with a service account, the token's app id is the ESJ app's client id; that the allow-list applies to "
    "such delegated tokens too is not confirmed by Microsoft's documentation"
)
ORG_KEY = "(organization)"


class EwsState(str, Enum):
    BLOCKED_BY_ORGANISATION = "blocked-by-organisation"
    NOT_ALLOW_LISTED = "not-allow-listed"
    DISABLED_ON_MAILBOX = "disabled-on-mailbox"
    ALLOWED = "allowed"
    UNKNOWN = "unknown"


@dataclass
class EwsVerdict:
    """The state (the first blocking reason, in the order Exchange checks them), every reason that
    applies, and what to do."""

    state: EwsState
    message: str
    fix: str | None = None
    reasons: list[EwsState] = field(default_factory=list)
    policy: EwsOrgPolicy | None = None

    @property
    def works(self) -> bool:
        return self.state is EwsState.ALLOWED

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reasons": [r.value for r in self.reasons],
            "message": self.message,
            "fix": self.fix,
            "ews_enabled": self.policy.ews_enabled if self.policy else None,
            "allowed_app_ids": list(self.policy.allowed_app_ids or ()) if self.policy else None,
        }


def allow_command(app_id: str) -> str:
    return f"esj-provision ews allow --esj-app {app_id} --dry-run   (then without --dry-run)"


def evaluate(
    policy: EwsOrgPolicy,
    app_id: str | None,
    mailboxes: dict[str, CasMailbox | None],
    *,
    service_account: bool = False,
    on: date | None = None,
) -> EwsVerdict:
    """Name the state from what was read. ``mailboxes`` maps each mailbox whose CAS switch matters
    (the shared mailbox; with a service account, the account too) to its CAS row, None if unread."""
    now = on or today()
    reasons: list[EwsState] = []
    parts: list[str] = []
    fixes: list[str] = []
    enabled = policy.ews_enabled
    # Unset ($null) meant "allowed" before the October 2026 change; since then Exchange treats it as
    # blocked (updates-2026-11.md §1).
    if enabled is False or (enabled is None and now >= EWS_BLOCKED_FROM):
        reasons.append(EwsState.BLOCKED_BY_ORGANISATION)
        parts.append(f"the organisation blocks EWS (Get-OrganizationConfig EwsEnabled = {_ps(enabled)})")
        fixes.append("esj-provision ews allow --esj-app CLIENT_ID --enable-ews (Set-OrganizationConfig -EwsEnabled "
                     "$true with the allow-list)")
    disabled = [m for m, cas in mailboxes.items() if cas is not None and cas.ews_enabled is False]
    if disabled:
        reasons.append(EwsState.DISABLED_ON_MAILBOX)
        parts.append(f"EWS is disabled on {', '.join(disabled)} (Get-CASMailbox EwsEnabled = $false)")
        fixes.extend(f"Set-CASMailbox -Identity {quote(m)} -EwsEnabled $true" for m in disabled)
    listed = policy.allowed_app_ids
    who = f"the ESJ app {app_id}" if app_id else "the ESJ app"
    if listed is None:
        parts.append("EwsAllowedAppIDs was not returned, so the allow-list could not be checked")
    elif app_id is None:
        if not listed:
            reasons.append(EwsState.NOT_ALLOW_LISTED)
            parts.append("EwsAllowedAppIDs is empty: it blocks every EWS app")
        else:
            parts.append(f"EwsAllowedAppIDs lists {len(listed)} app(s); give the ESJ app's client id to check it")
    elif app_id.lower() not in listed:
        reasons.append(EwsState.NOT_ALLOW_LISTED)
        parts.append(f"{who} is not in EwsAllowedAppIDs" + (" (the list is empty)" if not listed else ""))
    if app_id and (listed is None or app_id.lower() not in (listed or ())):
        fixes.append(allow_command(app_id) + f"; {PROPAGATION}")
    if service_account:
        parts.append(DELEGATED_UNCONFIRMED)
    if reasons:
        state = reasons[0]
    elif listed is None or app_id is None:
        state = EwsState.UNKNOWN
    else:
        state = EwsState.ALLOWED
        parts.insert(0, f"EWS is allowed for {who} (organisation enabled, app allow-listed, mailbox not disabled)")
    return EwsVerdict(state, "; ".join(parts), "; ".join(fixes) or None, reasons, policy)


def _ps(value: bool | None) -> str:
    return "$null (unset)" if value is None else f"${str(value).lower()}"


# The organisation policy is the same for every row of a run: read it once per session.
_policy_reads: weakref.WeakKeyDictionary[Any, asyncio.Future[EwsOrgPolicy]] = weakref.WeakKeyDictionary()


async def org_policy(session: Session) -> EwsOrgPolicy:
    future = _policy_reads.get(session)
    if future is None or (future.done() and future.exception() is not None):
        future = asyncio.ensure_future(session.exchange.get_ews_policy())
        _policy_reads[session] = future
    return await asyncio.shield(future)


async def read_verdict(
    session: Session,
    app_id: str | None,
    mailboxes: list[str],
    *,
    service_account: bool = False,
    trustee: str | None = None,
) -> EwsVerdict:
    """Read the organisation policy and the CAS switch of each mailbox (and of the service account
    ``trustee``, read once per session as for SMTP AUTH); UNKNOWN (with the reason) if the policy
    cannot be read. A CAS row that cannot be read is said, not guessed."""
    try:
        policy = await org_policy(session)
    except EsjProvisionError as exc:
        return EwsVerdict(EwsState.UNKNOWN, f"cannot read the organisation's EWS policy: {exc.message}", exc.hint)
    cas: dict[str, CasMailbox | None] = {}
    unread: list[str] = []
    names = [*mailboxes, *([trustee] if trustee else [])]
    reads = await asyncio.gather(
        *(session.exchange.get_cas_mailbox(m) for m in mailboxes),
        *([session.trustee_cas_mailbox(trustee)] if trustee else []),
        return_exceptions=True,
    )
    for mailbox, row in zip(names, reads):
        if isinstance(row, EsjProvisionError):
            cas[mailbox] = None
            unread.append(f"{mailbox}: {row.message}")
        elif isinstance(row, BaseException):
            raise row
        else:
            cas[mailbox] = row
    verdict = evaluate(policy, app_id, cas, service_account=service_account)
    if unread:
        verdict.message += "; cannot read the mailbox's CAS settings (" + "; ".join(unread) + ")"
        if verdict.state is EwsState.ALLOWED:
            verdict.state = EwsState.UNKNOWN
    return verdict


# --------------------------------------------------------------------------------------------
# The fix: add the ESJ app to EwsAllowedAppIDs (opt-in)
# --------------------------------------------------------------------------------------------


@dataclass
class AllowPlan:
    app_id: str
    enable: bool  # also set the organisation's EwsEnabled to $true
    policy: EwsOrgPolicy | None = None
    step: Step | None = None
    verified: bool | None = None
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        return self.step is None or self.step.failed or self.verified is False

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "enable_ews": self.enable,
            "dry_run": self.dry_run,
            "ews_enabled": self.policy.ews_enabled if self.policy else None,
            "allowed_app_ids": list(self.policy.allowed_app_ids or ()) if self.policy else None,
            "step": self.step.to_dict() if self.step else None,
            "verified": self.verified,
            "notes": self.notes,
        }


def _wanted(policy: EwsOrgPolicy, app_id: str, enable: bool) -> tuple[list[str], bool]:
    """The full list to write (what is there, then our id) and whether anything must change."""
    current = list(policy.allowed_app_ids or ())
    missing = app_id not in current
    needs_enable = enable and policy.ews_enabled is not True
    return ([*current, app_id] if missing else current), (missing or needs_enable)


def _set_command(ids: list[str], enable: bool) -> str:
    return "Set-OrganizationConfig" + (" -EwsEnabled $true" if enable else "") + f" -EwsAllowedAppIDs {quote(','.join(ids))}"


async def plan_allow(session: Session, app_id: str, *, enable: bool) -> AllowPlan:
    """Read-only: the list as it is, and the one Set-OrganizationConfig call that would add the app."""
    app_id = app_id.lower()
    plan = AllowPlan(app_id, enable)
    policy = await session.exchange.get_ews_policy()
    plan.policy = policy
    if policy.allowed_app_ids is None:
        raise EsjProvisionError(
            "Get-OrganizationConfig -RetrieveEwsOperationAccessPolicy returned no EwsAllowedAppIDs: the list "
            "cannot be read, so it cannot be extended safely (Set- replaces it whole)",
            hint="check in Exchange Online PowerShell: Get-OrganizationConfig -RetrieveEwsOperationAccessPolicy | "
            "Format-List EwsEnabled,EwsAllowedAppIDs; nothing was changed",
        )
    ids, change = _wanted(policy, app_id, enable)
    plan.step = Step(
        "set-ews-allowed-app-ids",
        f"EwsAllowedAppIDs with {app_id}" + (" and EwsEnabled $true" if enable else ""),
        _set_command(ids, enable) if change else "# already in place",
        key_mailbox=ORG_KEY,
        key_trustee=app_id,
        current=State.ABSENT if change else State.PRESENT,
    )
    if policy.ews_enabled is not True and not enable:
        plan.notes.append(
            f"the organisation's EwsEnabled is {_ps(policy.ews_enabled)}: EWS stays blocked for every app whatever "
            "the list says; add --enable-ews to set it to $true in the same change (only listed apps may then use "
            "EWS)"
        )
    plan.notes.append(PROPAGATION + "; EWS is switched off for good on 1 April 2027: plan the move to GRAPH "
                      "(esj-provision migrate MANIFEST --to graph)")
    return plan


async def apply_allow(session: Session, plan: AllowPlan, journal: Journal) -> AllowPlan:
    """Write only when needed; the list is read again right before the write (another admin may
    have changed it since the plan), and read back afterwards."""
    step = plan.step
    assert step is not None
    ex = session.exchange
    if step.action == "none":
        step.outcome = Outcome.ALREADY_PRESENT
        plan.verified = True
        return plan

    def done(policy: EwsOrgPolicy) -> bool:
        return plan.app_id in (policy.allowed_app_ids or ()) and (not plan.enable or policy.ews_enabled is True)

    async def write() -> Any:
        fresh = await ex.get_ews_policy()
        if fresh.allowed_app_ids is None:
            raise EsjProvisionError("EwsAllowedAppIDs could not be read again before the write; nothing was sent")
        ids, _ = _wanted(fresh, plan.app_id, plan.enable)
        step.command = _set_command(ids, plan.enable)
        return await ex.set_ews_allowed_app_ids(ids, enable=plan.enable)

    async def present() -> bool:
        return done(await ex.get_ews_policy())

    await run_step(session.http, step, journal, write, present)
    if not step.failed:
        after = await ex.get_ews_policy()
        plan.verified = done(after)
        before = set(plan.policy.allowed_app_ids or ()) if plan.policy else set()
        lost = sorted(before - set(after.allowed_app_ids or ()))
        if lost:  # never expected: the write carries every id read just before it
            plan.notes.append("read back: these ids are no longer listed: " + ", ".join(lost))
        plan.policy = after
    return plan


async def run_allow(
    session: Session, app_id: str, *, enable: bool, dry_run: bool, journal: Journal | None
) -> AllowPlan:
    plan = await plan_allow(session, app_id, enable=enable)
    plan.dry_run = dry_run
    if dry_run:
        return plan
    if journal is None:
        raise EsjProvisionError("internal: a write needs a journal")
    return await apply_allow(session, plan, journal)


# --------------------------------------------------------------------------------------------
# Onboarding preflight and audit
# --------------------------------------------------------------------------------------------


async def check_ews(session: Session, plan: Any) -> None:
    """Preflight (onboard) and audit, for a row with EWS in or out: the end-of-EWS dates, and
    whether this tenant lets the ESJ app use EWS on this mailbox. Onboarding warns (the grants are
    still what ESJ needs, and the fix is an organisation-level choice); audit reports drift."""
    request = plan.request
    try:
        sunset = ews_warning(request.inbound, request.outbound)
    except UsageError as exc:
        plan.add("error", "ews-switched-off", exc.message, exc.hint)
        return
    if sunset is None:
        return
    plan.add("warning", "ews-retiring", sunset)
    app_id = request.trustee.app_id or request.esj_app_id
    # Delegated EWS is also blocked by the signed-in account's own CAS switch (the sandbox-mail
    # interface says so; Microsoft's page speaks of "this user or tenant").
    trustee = plan.trustee_id if isinstance(request.trustee, UserTrustee) else None
    verdict = await read_verdict(session, app_id, [plan.mailbox_id], service_account=trustee is not None,
                                 trustee=trustee)
    plan.ews = verdict
    if verdict.works:
        plan.add("info", "ews-allowed", verdict.message)
        return
    level = "warning" if plan.mode == "onboard" or verdict.state is EwsState.UNKNOWN else "error"
    code = "ews-" + verdict.state.value
    if verdict.state is EwsState.UNKNOWN and verdict.policy is None:
        code = "ews-policy-unreadable"  # audit: could not tell, never "in sync"
    plan.add(level, code, f"EWS for {plan.mailbox_id}: {verdict.state.value}: {verdict.message}", verdict.fix)
