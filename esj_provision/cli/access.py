"""Terminal rendering for the grants outside a manifest (``audit --unlisted``, ``audit --trustee``)
and their removal (``bulk --prune``), and the progress bar of the per-mailbox reads.

No command lives here; rich is imported inside the functions only.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from ..fleet.prune import PruneReport
    from ..fleet.unlisted import Discovery


def grants_table(found: Discovery, title: str) -> Any:
    from rich.table import Table

    from ..fleet.unlisted import pair_rows

    table = Table(title=title, title_justify="left")
    for column in ("mailbox", "kind", "trustee", "Full Access", "Send As", "via", "shown by Exchange as", "listed for"):
        table.add_column(column, overflow="fold")
    for row in pair_rows(found):
        table.add_row(
            row["mailbox"],
            row["mailbox_kind"],
            row["trustee"],
            _yes(row["full_access"]),
            _yes(row["send_as"]),
            row["via"],
            row["shown_as"],
            row["listed_for"],
        )
    return table


def _yes(value: str) -> str:
    return "[yellow]present[/]" if value == "present" else value


def print_discovery_notes(con: Console, found: Discovery) -> None:
    s = found.summary()
    con.print(
        f"{s['mailboxes_listed']} {'/'.join(found.kinds)} mailbox(es) listed, {s['mailboxes_read']} read for Full "
        f"Access; Exchange calls: {', '.join(f'{k} {v}' for k, v in s['exchange_calls'].items()) or 'none'}"
    )
    for e in found.errors:
        con.print(f"[red]error[/red]: {e}")
    for n in found.notes:
        con.print(f"note: {n}")


def discovery_text(found: Discovery, title: str, *, to_file: bool) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, width=200 if to_file or not sys.stdout.isatty() else None, highlight=False)
    con.print(grants_table(found, title))
    print_discovery_notes(con, found)
    return buf.getvalue()


def print_prune(report: PruneReport) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, soft_wrap=True)
    title = "prune plan (dry run: nothing changed)" if report.dry_run else "prune: grants outside the manifest"
    table = Table(title=title, title_justify="left")
    for column in ("mailbox", "trustee", "right", "outcome", "request id / error"):
        table.add_column(column, overflow="fold")
    style = {"removed": "green", "planned": "yellow", "already-absent": "green", "failed": "red", "unknown": "red"}
    for r in report.removals:
        g = r.grant
        table.add_row(
            g.mailbox,
            g.trustee,
            g.right.value,
            f"[{style.get(r.outcome, 'white')}]{r.outcome}[/]",
            r.error or r.request_id or "",
        )
    con.print(table)
    print_discovery_notes(con, report.discovery)
    for w in report.warnings:
        con.print(f"[yellow]warning[/yellow]: {w}")
    if report.reconciled:
        con.print(f"{report.reconciled} removal(s) interrupted in an earlier run were read back and recorded.")
    if not report.removals:
        con.print("nothing to remove: the manifest's trustees hold no grant outside it")


