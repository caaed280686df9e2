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
    manifest: Path | None = typer.Argument(
        None, metavar="MANIFEST", help="The manifest the tenant should match (not with --trustee)."
    ),
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
    unlisted: bool = typer.Option(
        False,
        "--unlisted",
        help="Also report every mailbox where a trustee of the manifest holds Full Access or Send As that the "
        "manifest does not list (drift).",
    ),
    trustee: str | None = typer.Option(
        None,
        "--trustee",
        metavar="ACCOUNT|CLIENT_ID",
        help="Instead of a manifest: every mailbox this account (or ESJ app) can open or send as.",
    ),
    include_user_mailboxes: bool = typer.Option(
        False,
        "--include-user-mailboxes",
        help="With --unlisted or --trustee: read user mailboxes too, not only shared ones (one more call each).",
    ),
    *,
    settings: Settings,
) -> None:
    """Read-only: each delegation present/absent/unknown, plus drift that matters to ESJ.

    A trustee given as a client id is the ESJ app's service principal. ESJ apps (those, and --esj-app)
    whose access is wider than their mailboxes count as drift; so do, with --unlisted, the trustees'
    grants the manifest does not list. --trustee (no manifest) lists what one account or app can open
    or send as. Exit status 0 in sync, 3 drift found, 1 when anything could not be read (never
    reported as in sync).
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
    kinds = _access_kinds(manifest, unlisted, trustee, include_user_mailboxes, apps)
    if trustee is not None:
        return _trustee_audit(settings, trustee, kinds, fmt_key, out, concurrency)
    assert manifest is not None
    info = manifest_mod.validate(manifest)
    report = run_async(_audit(settings, info.path, concurrency, apps, kinds if unlisted else None, rows=info.rows))
    if fmt_key == "table" and out is None:
        print_audit_table(report)
    else:
        text = {"table": audit_table, "json": audit_json, "csv": audit_csv, "markdown": audit_markdown}[fmt_key](report)
        _write(text, out)
    s = report.summary()
    apps_text = f", {s['apps_wider']} of {s['apps']} ESJ app(s) with access wider than their mailboxes" if report.apps else ""
    if report.apps and s["apps_unknown"]:  # exit 1 must not come with a summary that shows nothing unknown
        apps_text += f", {s['apps_unknown']} ESJ app(s) unknown"
    if report.unlisted is not None:
        apps_text += f", {s['unlisted_grants']} grant(s) outside the manifest"
        apps_text += "" if s["unlisted_complete"] else " (incomplete: some reads failed)"
    sys.stderr.write(
        f"audit: {s['rows']} rows, {s['in_sync']} in sync, {s['drift']} drift, {s['unknown']} unknown{apps_text}\n"
    )
    raise typer.Exit(int(report.exit_status))


async def _audit(
    settings: Any,
    path: Path,
    concurrency: int,
    apps: tuple[str, ...] = (),
    kinds: tuple[str, ...] | None = None,
    *,
    rows: int = 0,
) -> Any:
    from ..fleet.audit import run_audit
    from ..microsoft.session import Session
    from .render import Progress

    # An audit of a thousand rows reads for minutes: show bulk's progress bar on a terminal.
    progress = Progress(rows, enabled=sys.stderr.isatty(), label="audit")
    async with Session(settings, max_connections=max(20, concurrency * 2)) as session:
        with progress:
            return await run_audit(
                session,
                path,
                concurrency=concurrency,
                esj_apps=apps,
                unlisted_kinds=kinds,
                on_row=lambda r: progress.advance(),
                on_progress=progress.update,
            )


def _access_kinds(
    manifest: Path | None, unlisted: bool, trustee: str | None, include_user_mailboxes: bool, apps: tuple[str, ...]
) -> tuple[str, ...]:
    """Which mailboxes --unlisted / --trustee read; every impossible combination refused first."""
    if trustee is not None and (manifest is not None or unlisted or apps):
        raise UsageError(
            "--trustee takes no manifest (nor --unlisted or --esj-app)",
            hint="audit MANIFEST [--unlisted], or audit --trustee ACCOUNT|CLIENT_ID",
        )
    if trustee is None and manifest is None:
        raise UsageError("give a MANIFEST, or --trustee ACCOUNT|CLIENT_ID", hint="esj-provision audit --help")
    if include_user_mailboxes and not (unlisted or trustee is not None):
        raise UsageError("--include-user-mailboxes goes with --unlisted or --trustee")
    return ("SharedMailbox", "UserMailbox") if include_user_mailboxes else ("SharedMailbox",)


def _trustee_audit(
    settings: Any, trustee: str, kinds: tuple[str, ...], fmt_key: str, out: Path | None, concurrency: int
) -> None:
    from ..fleet import unlisted as access
    from ..microsoft.session import Session
    from ..models import is_guid, parse_address, parse_guid
    from .access import discovery_text
    from .render import Progress

    ref = (
        parse_guid(trustee, "--trustee client id") if is_guid(trustee.strip()) else parse_address(trustee, "--trustee")
    )

    async def run() -> Any:
        async with Session(settings, max_connections=max(20, concurrency * 2)) as session:
            with Progress(None, enabled=sys.stderr.isatty(), label="mailboxes") as progress:
                return await access.trustee_access(
                    session, ref, kinds=kinds, concurrency=concurrency, on_progress=progress.update
                )

    found = run_async(run())
    if fmt_key == "table":
        text = discovery_text(found, f"What {ref} can open (Full Access) or send as", to_file=out is not None)
    else:
        text = {"json": access.render_json, "csv": access.render_csv, "markdown": access.render_markdown}[fmt_key](
            found
        )
    _write(text, out)
    s = found.summary()
    sys.stderr.write(
        f"audit --trustee {ref}: {s['mailboxes_with_grants']} mailbox(es) with Full Access or Send As, "
        f"{s['mailboxes_listed']} mailbox(es) looked at" + ("" if found.complete else ", incomplete") + "\n"
    )
    raise typer.Exit(0 if found.complete else 1)


def _write(text: str, out: Path | None) -> None:
    if out is not None:
        from ..files import write_output

        write_output(out, text, contains_secret=False)
        sys.stderr.write(f"wrote {out}\n")
    else:
        sys.stdout.write(text)
