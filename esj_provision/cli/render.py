"""Everything the CLI renders for the terminal (and the report formats it writes), in one place.

The plan and its outcome, the ESJ options table, the audit report (table, JSON, CSV, Markdown),
the bulk summary and the doctor table. The core never imports typer or rich; it hands back data
and this module renders it. Every rich Console comes from :func:`console`. rich is imported inside
the functions only, so commands that print CFG or JSON never pay for it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..models import AppTrustee, Right, State

if TYPE_CHECKING:
    from rich.console import Console

    from ..doctor import DoctorReport
    from ..esj.options import EsjOptionSet
    from ..fleet.audit import AuditReport, AuditRow
    from ..fleet.bulk import BulkSummary
    from ..provision.onboard import Plan
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


def console(file: TextIO | None = None, *, stderr: bool = False, table: bool = False) -> Console:
    """The one way the CLI makes a rich Console.

    Text soft-wraps (one line per sentence: a pipe or file gets greppable lines). A table
    (``table=True``) is laid out 200 columns wide when the output is not a terminal, so a value is
    never wrapped mid-way in a file or a pipe; on a terminal it takes the terminal's width.
    """
    from rich.console import Console

    out = file if file is not None else sys.stderr if stderr else sys.stdout
    width = 200 if table and not _isatty(out) else None
    return Console(file=out, width=width, highlight=False, soft_wrap=not table)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def next_steps(plan: Plan) -> list[str]:
    from ..provision.onboard import PROPAGATION_NOTE  # imported here: emit renders without the Microsoft side

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
        r = plan.request
        if isinstance(r.trustee, AppTrustee):
            steps.append(
                "ESJ signs in as its app: check that the app holds what these protocols need with "
                f"`esj-provision doctor --esj-app {r.trustee.client_id} --inbound {r.inbound.value} --outbound {r.outbound.value}`, "
                "and set grant-type client_credentials and the app's secret (password) in the ESJ options."
            )
    else:
        if plan.dry_run:
            steps.append("Run again without --dry-run to remove these delegations.")
        steps.append("Remove the matching pop-client/smtp-client sections from the ESJ Application.")
        if isinstance(plan.request.trustee, AppTrustee) and plan.app is not None and plan.app.exo is not None:
            steps.append(
                f"The app's Exchange service principal stays registered (other mailboxes may use it); when no "
                f"mailbox needs it any more: Remove-ServicePrincipal -Identity {plan.app.exchange_identity}"
            )
    if any(d.outcome in {"failed", "unknown"} for d in plan.delegations):
        steps.append("Some changes did not complete: run the same command again (it only does what is missing).")
    return steps


def print_plan(plan: Plan, *, file: TextIO | None = None) -> None:
    con = console(file)
    r = plan.request
    verb = "Onboarding" if plan.mode == "onboard" else "Offboarding"
    dry = " (dry run: nothing will be changed)" if plan.dry_run else ""
    protocols = f" (inbound {r.inbound.value}, outbound {r.outbound.value})" if plan.mode == "onboard" else ""
    who = plan.trustee_id
    if isinstance(r.trustee, AppTrustee):
        who = f"ESJ app {plan.app.name if plan.app else r.trustee.client_id} (its Exchange service principal)"
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
    _print_findings(con, plan.findings)
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


def _print_findings(con: Any, findings: Any) -> None:
    """Each finding on its own line, coloured by level, with its fix below it."""
    for f in findings:
        style = {"error": "red", "warning": "yellow", "info": "cyan"}[f.level]
        con.print(f"  [{style}]{f.level:<8}[/{style}] {f.message}")
        if f.hint:
            con.print(f"           → {f.hint}")


def print_scope(scope: ScopePlan, *, file: TextIO | None = None) -> None:
    """The scoping of an ESJ app (onboard --scope-esj-app)."""
    con = console(file)
    dry = " (dry run: nothing will be changed)" if scope.dry_run else ""
    con.print(f"[bold]Scoping ESJ app {scope.app.name if scope.app else scope.app_id}[/bold] to {scope.mailbox}{dry}")
    _print_findings(con, scope.findings)
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


# -- the ESJ options ---------------------------------------------------------------------------


def print_table(option_sets: Sequence[EsjOptionSet], *, file: TextIO | None = None) -> None:
    """A rich table per mailbox; unconfirmed values and placeholders are marked; notes below."""
    from rich.table import Table
    from rich.text import Text

    con = console(file, table=True)
    for option_set in option_sets:
        table = Table(
            title=(
                f"ESJ options for {option_set.mailbox} "
                f"(inbound {option_set.inbound.value}, outbound {option_set.outbound.value}, "
                f"cloud {option_set.cloud})"
            ),
            title_justify="left",
        )
        table.add_column("section", no_wrap=True)
        table.add_column("option", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("status", no_wrap=True)
        for o in option_set.options:
            value = Text(o.value) if o.value else Text('""  (empty, key kept)', style="dim")
            if o.placeholder:
                status = Text("REPLACE (placeholder)", style="bold red")
            elif not o.confirmed:
                status = Text(f"UNCONFIRMED ({o.source})", style="yellow")
            else:
                status = Text(f"confirmed ({o.source})", style="green")
            table.add_row(Text(o.section), Text(o.name), value, status)
        con.print(table)
        con.print(Text("Notes:", style="bold"))
        for note in option_set.notes:
            # soft_wrap: one line per note, so a pipe or file gets whole sentences (greppable).
            con.print(Text(f"- {note}"), soft_wrap=True)


# -- audit -------------------------------------------------------------------------------------


AUDIT_COLUMNS = ("line", "mailbox", "trustee", "inbound", "outbound", "full_access", "send_as", "status", "drift", "errors")


def _cells(r: AuditRow) -> list[str]:
    d = r.to_dict()
    return [str(d[c]) if not isinstance(d[c], list) else "; ".join(d[c]) for c in AUDIT_COLUMNS]


def audit_json(report: AuditReport) -> str:
    data: dict[str, Any] = {"summary": report.summary(), "rows": [r.to_dict() for r in report.rows]}
    if report.apps:
        data["apps"] = [a.to_dict() for a in report.apps]
    if report.unlisted is not None:
        data["unlisted"] = report.unlisted.to_dict()
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def audit_csv(report: AuditReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(AUDIT_COLUMNS)
    for r in report.rows:
        writer.writerow(_cells(r))
    if report.unlisted is not None:
        from ..fleet.unlisted import audit_csv_rows

        writer.writerows(audit_csv_rows(report.unlisted))
    return buf.getvalue()


def audit_markdown(report: AuditReport) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    s = report.summary()
    lines = [
        "# ESJ shared-mailbox audit",
        "",
        f"{s['rows']} rows: {s['in_sync']} in sync, {s['drift']} with drift, {s['unknown']} unknown.",
        "",
        "| " + " | ".join(AUDIT_COLUMNS) + " |",
        "|" + "---|" * len(AUDIT_COLUMNS),
    ]
    lines += ["| " + " | ".join(esc(c) for c in _cells(r)) + " |" for r in report.rows]
    if report.apps:
        lines += ["", "## ESJ apps", "", "| app | status | wider than its mailboxes / errors |", "|---|---|---|"]
        for a in report.apps:
            name = f"{a.display_name} ({a.app_id})" if a.display_name else a.app_id
            lines.append(f"| {esc(name)} | {a.status} | {esc('; '.join(a.wider + a.errors))} |")
    if report.unlisted is not None:
        from ..fleet.unlisted import markdown_section

        lines += ["", *markdown_section(report.unlisted, "Grants outside the manifest")]
    return "\n".join(lines).rstrip() + "\n"


def print_audit_table(report: AuditReport, *, file: TextIO | None = None) -> None:
    from rich.table import Table

    con = console(file, table=True)
    table = Table(title="ESJ shared-mailbox audit", title_justify="left")
    for column in ("line", "mailbox", "trustee", "Full Access", "Send As", "status", "drift / errors"):
        table.add_column(column, overflow="fold")
    style = {"in-sync": "green", "drift": "yellow", "unknown": "red"}
    for r in report.rows:
        detail = "; ".join(r.drift + r.errors)
        table.add_row(
            str(r.line), r.mailbox, r.trustee, r.full_access, r.send_as, f"[{style[r.status]}]{r.status}[/]", detail
        )
    con.print(table)
    if report.apps:
        apps = Table(title="ESJ apps", title_justify="left")
        for column in ("app", "status", "wider than its mailboxes / errors"):
            apps.add_column(column, overflow="fold")
        app_style = {"ok": "green", "wider": "yellow", "unknown": "red"}
        for a in report.apps:
            name = f"{a.display_name} ({a.app_id})" if a.display_name else a.app_id
            apps.add_row(name, f"[{app_style[a.status]}]{a.status}[/]", "; ".join(a.wider + a.errors))
        con.print(apps)
    if report.unlisted is not None:
        from .access import grants_table, print_discovery_notes

        con.print(grants_table(report.unlisted, "Grants outside the manifest"))
        print_discovery_notes(con, report.unlisted)


def audit_table(report: AuditReport) -> str:
    """The audit table as text for a file (laid out wide)."""
    buf = io.StringIO()
    print_audit_table(report, file=buf)
    return buf.getvalue()


# -- bulk --------------------------------------------------------------------------------------


def print_bulk_summary(summary: BulkSummary, *, dry_run: bool) -> None:
    from rich.table import Table

    con = console()
    table = Table(title="bulk " + ("plan (dry run: nothing changed)" if dry_run else "summary"), title_justify="left")
    table.add_column("rows", justify="right")
    table.add_column("ok" if not dry_run else "planned", justify="right")
    table.add_column("refused", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("writes", justify="right")
    table.add_column("already in place", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row(
        str(summary.rows),
        str(summary.planned if dry_run else summary.ok),
        str(summary.refused),
        str(summary.failed),
        str(summary.writes),
        str(summary.already),
        f"{summary.elapsed_s:.1f}",
    )
    con.print(table)
    for line, mailbox, reason in summary.failures:
        con.print(f"  line {line}: {mailbox}: {reason}")
    if summary.probed:
        con.print("probe: " + ", ".join(f"{n} {k}" for k, n in sorted(summary.probed.items()))
                  + " (per row in results.jsonl)")
    for warning in summary.warnings:
        con.print(f"[yellow]warning[/yellow]: {warning}")
    if summary.reconciled:
        con.print(
            f"{summary.reconciled} write(s) interrupted in an earlier run were checked against the tenant and recorded."
        )
    for f in summary.files:
        con.print(f"wrote {f}")


class Progress:
    """A rich progress bar on stderr, only on a terminal (bulk, audit, the unlisted-grant search).

    ``total`` rows advance one by one (:meth:`advance`); a search whose size is known only once its
    listing came back reports ``done`` of ``total`` through :meth:`update`, as a second bar if rows
    are counted too (rich allows one live display at a time, so both live in one)."""

    def __init__(self, total: int | None, *, enabled: bool, label: str = "bulk") -> None:
        self.total, self.enabled, self.label = total, enabled, label
        self._progress: Any = None
        self._task: Any = None
        self._searches: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console(stderr=True, table=True),
            )
            self._progress.__enter__()
            if self.total is not None:
                self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def advance(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)

    def update(self, done: int, total: int, label: str = "mailboxes") -> None:
        if self._progress is None:
            return
        if label not in self._searches:
            self._searches[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._searches[label], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


# -- doctor ------------------------------------------------------------------------------------

DOCTOR_STYLE = {"ok": "green", "missing": "red", "warning": "yellow", "error": "red"}


def print_doctor(report: DoctorReport) -> None:
    from rich.table import Table

    con = console(table=True)
    table = Table(title="esj-provision doctor", title_justify="left", show_lines=False)
    for column in ("status", "check", "what", "fix"):
        table.add_column(column, overflow="fold")
    group = None
    for c in report.checks:
        if c.group != group:
            group = c.group
            table.add_row("", f"[bold]{group}[/bold]", "", "")
        table.add_row(f"[{DOCTOR_STYLE[c.status]}]{c.status}[/]", c.id, c.what, c.fix or "")
    con.print(table)


# -- probe -------------------------------------------------------------------------------------

PROBE_STYLE = {"ok": "green", "pending": "yellow", "failed": "bold red", "skipped": "dim"}


def print_probe(checks: list[Any], *, file: TextIO | None = None) -> None:
    """One table of every check, then each problem's fix below it (one line each: greppable)."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = file if file is not None else sys.stdout
    # Laid out wide in a file or a pipe, so a reason is never wrapped mid-way (greppable lines).
    con = Console(file=out, highlight=False, soft_wrap=True, width=None if _isatty(out) else 240)
    table = Table(title="probe: ESJ's connections, tried as ESJ makes them", title_justify="left")
    for col in ("section", "direction", "protocol", "check", "status", "reason"):
        table.add_column(col, overflow="fold", no_wrap=col != "reason")
    for c in checks:
        table.add_row(c.section, c.direction, c.protocol, c.check, Text(c.status, style=PROBE_STYLE.get(c.status, "")),
                      c.reason)
    con.print(table)
    for c in checks:
        if c.fix and c.status in ("failed", "pending"):
            con.print(Text(f"fix [{c.section}] {c.check}: {c.fix}"), soft_wrap=True)
    statuses = {c.status for c in checks}
    if "failed" in statuses:
        con.print(Text("result: failed (exit 1)", style="bold red"))
    elif "pending" in statuses:
        con.print(Text("result: waiting for Exchange to apply a grant (exit 5); --wait 2h retries", style="yellow"))
    else:
        con.print(Text("result: ok", style="green"))
