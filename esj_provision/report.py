"""Human-readable reports of a plan and its outcome: what was found, what was done, what next.

rich is imported inside the functions only; the JSON forms live on the plan objects themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from .models import Right, State
from .planning import PROPAGATION_NOTE, Plan

if TYPE_CHECKING:
    from rich.console import Console

OUTCOME_TEXT = {
    "applied": "granted (pending propagation)",
    "removed": "removed (pending propagation)",
    "already-present": "already in place, nothing to do",
    "already-absent": "already absent, nothing to do",
    "failed": "FAILED",
    "unknown": "UNKNOWN: not changed, its state could not be read",
}
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
    else:
        if plan.dry_run:
            steps.append("Run again without --dry-run to remove these delegations.")
        steps.append("Remove the matching pop-client/smtp-client sections from the ESJ Application.")
    if any(d.outcome in {"failed", "unknown"} for d in plan.delegations):
        steps.append("Some changes did not complete: run the same command again (it only does what is missing).")
    return steps


def print_plan(plan: Plan, *, file: TextIO | None = None) -> None:
    con = _console(file)
    r = plan.request
    verb = "Onboarding" if plan.mode == "onboard" else "Offboarding"
    dry = " (dry run: nothing will be changed)" if plan.dry_run else ""
    protocols = f" (inbound {r.inbound.value}, outbound {r.outbound.value})" if plan.mode == "onboard" else ""
    con.print(f"[bold]{verb} {plan.mailbox_id}[/bold] for {plan.trustee_id}{protocols}{dry}")
    con.print("[bold]Preflight[/bold]")
    if plan.mailbox is not None and plan.mailbox_purpose == "shared":
        con.print(f"  ok       {plan.mailbox_id} is a shared mailbox")
    if plan.trustee is not None and plan.trustee.account_enabled and plan.trustee.mail:
        con.print(f"  ok       {plan.trustee_id} exists, is enabled and mail-enabled")
    for f in plan.findings:
        style = {"error": "red", "warning": "yellow", "info": "cyan"}[f.level]
        con.print(f"  [{style}]{f.level:<8}[/{style}] {f.message}")
        if f.hint:
            con.print(f"           → {f.hint}")
    if plan.refused:
        return
    con.print("[bold]Plan[/bold]")
    for d in plan.delegations:
        current = d.current.value + (f" ({d.error})" if d.current is State.UNKNOWN and d.error else "")
        con.print(f"  {RIGHT_TEXT[d.right]:<12} {current:<10} → {d.action}")
    if not plan.dry_run:
        con.print("[bold]Result[/bold]")
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
