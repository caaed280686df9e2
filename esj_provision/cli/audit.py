"""``esj-provision audit``: where the tenant has drifted from the manifest. Read-only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import UsageError
from ._common import run_async
from ._options import tenant_command

if TYPE_CHECKING:
    from ..config import Settings

FORMATS = ("table", "json", "csv", "markdown")


@tenant_command
def audit(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="The manifest the tenant should match."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="table|json|csv|markdown", help="Report format."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the report to FILE."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=64, metavar="N", help="Rows read at once."),
    esj_app: list[str] = typer.Option(
        [],
        "--esj-app",
        metavar="CLIENT_ID",
        help="Also check this ESJ app for access wider than its mailboxes (repeatable; apps named in the "
        "trustee column are always checked).",
    ),
    *,
    settings: Settings,
) -> None:
    """Read-only: each delegation present/absent/unknown, plus drift that matters to ESJ.

    A trustee given as a client id is the ESJ app's service principal. ESJ apps (those, and --esj-app)
    whose access is wider than their mailboxes count as drift. Exit status 0 in sync, 3 drift found,
    1 when any row could not be read (never reported as in sync).
    """
    from ..fleet import manifest as manifest_mod
    from ..models import parse_guid
    from .render import audit_csv, audit_json, audit_markdown, audit_table, print_audit_table

    apps = tuple(parse_guid(a, "--esj-app client id") for a in esj_app)
    fmt_key = fmt.strip().lower()
    if fmt_key not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    if out is not None and out.is_dir():
        raise UsageError(f"cannot write {out}: it is a directory")
    info = manifest_mod.validate(manifest)
    report = run_async(_audit(settings, info.path, concurrency, apps, rows=info.rows))
    if fmt_key == "table" and out is None:
        print_audit_table(report)
    else:
        text = {"table": audit_table, "json": audit_json, "csv": audit_csv, "markdown": audit_markdown}[fmt_key](report)
        if out is not None:
            from ..files import write_output

            write_output(out, text, contains_secret=False)
            sys.stderr.write(f"wrote {out}\n")
        else:
            sys.stdout.write(text)
    s = report.summary()
    apps_text = f", {s['apps_wider']} of {s['apps']} ESJ app(s) with access wider than their mailboxes" if report.apps else ""
    if report.apps and s["apps_unknown"]:  # exit 1 must not come with a summary that shows nothing unknown
        apps_text += f", {s['apps_unknown']} ESJ app(s) unknown"
    sys.stderr.write(
        f"audit: {s['rows']} rows, {s['in_sync']} in sync, {s['drift']} drift, {s['unknown']} unknown{apps_text}\n"
    )
    raise typer.Exit(int(report.exit_status))


async def _audit(settings: Any, path: Path, concurrency: int, apps: tuple[str, ...] = (), *, rows: int = 0) -> Any:
    from ..fleet.audit import run_audit
    from ..microsoft.session import Session
    from .render import Progress

    # An audit of a thousand rows reads for minutes: show bulk's progress bar on a terminal.
    progress = Progress(rows, enabled=sys.stderr.isatty(), label="audit")
    async with Session(settings, max_connections=max(20, concurrency * 2)) as session:
        with progress:
            return await run_audit(
                session, path, concurrency=concurrency, esj_apps=apps, on_row=lambda r: progress.advance()
            )
