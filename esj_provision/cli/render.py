"""Human-readable reports of a plan and its outcome: what was found, what was done, what next.

rich is imported inside the functions only; the JSON forms live on the plan objects themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from ..models import Right, State
from ..provision.onboard import PROPAGATION_NOTE, Plan

if TYPE_CHECKING:
    from rich.console import Console

    from ..provision.scope import ScopePlan
    from ..provision.writes import Step

OUTCOME_TEXT = {
    "applied": "granted (pending propagation)",
    "removed": "removed (pending propagation)",
    "already-present": "already in place, nothing to do",
    "already-absent": "already absent, nothing to do",
    "failed": "FAILED",
    "unknown": "UNKNOWN: not changed, its state could not be read",
    "skipped": "not attempted",
}
STEP_ACTION = {"none": "in place", "create": "create", "unknown": "unknown"}
# An organisation-level object exists or not: no "granted", and nothing waits for mailbox propagation.
STEP_OUTCOME = {**OUTCOME_TEXT, "applied": "done", "already-present": "already in place, nothing to do"}
RIGHT_TEXT = {Right.FULL_ACCESS: "Full Access", Right.SEND_AS: "Send As"}


def _console(file: TextIO | None) -> Console:
    from rich.console import Console

    return Console(file=file, highlight=False, soft_wrap=True)


def next_steps(plan: Plan) -> list[str]:
    steps: list[str] = []
    if plan.refused:
        steps.append("Fix the problems above and run the same command again; nothing was changed.")
        return steps
    if plan.mode == "onboard":
        if plan.dry_run:
            steps.append("Run again without --dry-run to make these changes.")
        steps.append(
            "Import the ESJ options into the E-mail Server Application in Genesys Administrator Extension "
            "(Options → More → Import), replacing every <set: …> placeholder first."
        )
        if not plan.dry_run and any(d.outcome == "applied" for d in plan.delegations):
            steps.append(PROPAGATION_NOTE)
        if plan.request.trustee_is_app:
            r = plan.request
            steps.append(
                "ESJ signs in as its app: check that the app holds what these protocols need with "
                f"`esj-provision doctor --esj-app {r.trustee} --inbound {r.inbound.value} --outbound {r.outbound.value}`, "
                "and set grant-type client_credentials and the app's secret (password) in the ESJ options."
            )
    else:
        if plan.dry_run:
            steps.append("Run again without --dry-run to remove these delegations.")
        steps.append("Remove the matching pop-client/smtp-client sections from the ESJ Application.")
        if plan.request.trustee_is_app and plan.app is not None and plan.app.exo is not None:
            steps.append(
                f"The app's Exchange service principal stays registered (other mailboxes may use it); when no "
                f"mailbox needs it any more: Remove-ServicePrincipal -Identity {plan.app.exchange_identity}"
            )
    if any(d.outcome in {"failed", "unknown"} for d in plan.delegations):
        steps.append("Some changes did not complete: run the same command again (it only does what is missing).")
    return steps


def print_plan(plan: Plan, *, file: TextIO | None = None) -> None:
    con = _console(file)
    r = plan.request
    verb = "Onboarding" if plan.mode == "onboard" else "Offboarding"
    dry = " (dry run: nothing will be changed)" if plan.dry_run else ""
    protocols = f" (inbound {r.inbound.value}, outbound {r.outbound.value})" if plan.mode == "onboard" else ""
    who = plan.trustee_id
    if plan.request.trustee_is_app:
        who = f"ESJ app {plan.app.name if plan.app else plan.request.trustee} (its Exchange service principal)"
    con.print(f"[bold]{verb} {plan.mailbox_id}[/bold] for {who}{protocols}{dry}")
    con.print("[bold]Preflight[/bold]")
    if plan.mailbox is not None and plan.mailbox_purpose == "shared":
        con.print(f"  ok       {plan.mailbox_id} is a shared mailbox")
    if plan.trustee is not None and plan.trustee.account_enabled and plan.trustee.mail:
        con.print(f"  ok       {plan.trustee_id} exists, is enabled and mail-enabled")
    app = plan.app
    if app is not None and app.sp is not None:
        con.print(f"  ok       ESJ app {app.name} ({app.app_id}): enterprise application {app.sp.id}")
        if app.registration == "ok" and plan.sp_step is None:
            con.print(f"  ok       registered in Exchange as service principal {app.exo_object_id}")
    for f in plan.findings:
        style = {"error": "red", "warning": "yellow", "info": "cyan"}[f.level]
        con.print(f"  [{style}]{f.level:<8}[/{style}] {f.message}")
        if f.hint:
            con.print(f"           → {f.hint}")
    if plan.refused:
        return
    con.print("[bold]Plan[/bold]")
    if plan.sp_step is not None:
        _print_step_plan(con, plan.sp_step)
    for d in plan.delegations:
        current = d.current.value + (f" ({d.error})" if d.current is State.UNKNOWN and d.error else "")
        con.print(f"  {RIGHT_TEXT[d.right]:<12} {current:<10} → {d.action}")
    if not plan.dry_run:
        con.print("[bold]Result[/bold]")
        if plan.sp_step is not None:
            _print_step_result(con, plan.sp_step)
        for d in plan.delegations:
            text = OUTCOME_TEXT.get(d.outcome or "", d.outcome or "-")
            if d.outcome == "failed" and d.error:
                text += f": {d.error}"
            rid = f"  request-id {d.request_id}" if d.request_id else ""
            con.print(f"  {RIGHT_TEXT[d.right]:<12} {text}{rid}")
    steps = next_steps(plan)
    if steps:
        con.print("[bold]Next steps[/bold]")
        for number, step in enumerate(steps, start=1):
            con.print(f"  {number}. {step}")


def _print_step_plan(con: Console, step: Step) -> None:
    con.print(f"  {step.target}: {STEP_ACTION[step.action]}")


def _print_step_result(con: Console, step: Step) -> None:
    text = STEP_OUTCOME.get(step.outcome or "", step.outcome or "-")
    if step.error and step.failed:
        text += f": {step.error}"
    rid = f"  request-id {step.request_id}" if step.request_id else ""
    con.print(f"  {step.target}: {text}{rid}")
    if step.hint and step.failed:
        con.print(f"           → {step.hint}")


def print_scope(scope: ScopePlan, *, file: TextIO | None = None) -> None:
    """The scoping of an ESJ app (onboard --scope-esj-app)."""
    con = _console(file)
    dry = " (dry run: nothing will be changed)" if scope.dry_run else ""
    con.print(f"[bold]Scoping ESJ app {scope.app.name if scope.app else scope.app_id}[/bold] to {scope.mailbox}{dry}")
    for f in scope.findings:
        style = {"error": "red", "warning": "yellow", "info": "cyan"}[f.level]
        con.print(f"  [{style}]{f.level:<8}[/{style}] {f.message}")
        if f.hint:
            con.print(f"           → {f.hint}")
    if scope.refused:
        return
    for step in scope.steps:
        if scope.dry_run or step.outcome is None:
            _print_step_plan(con, step)
        else:
            _print_step_result(con, step)
    for v in scope.verification:
        state = "in scope" if v["in_scope"] else "NOT in scope"
        con.print(f"  Test-ServicePrincipalAuthorization: {v['role']} {state} ({v.get('scope') or '-'})")
    if not scope.dry_run and scope.writes:
        con.print(
            "  RBAC for Applications takes 30 minutes to 2 hours to reach Graph; Test-ServicePrincipalAuthorization "
            "already shows the new assignments."
        )
