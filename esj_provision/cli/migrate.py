"""``esj-provision migrate``: move a manifest's EWS (and IMAP/SMTP) rows to GRAPH."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import ExitStatus, UsageError
from ._common import from_env, run_async
from ._options import tenant_command

if TYPE_CHECKING:
    from ..config import Settings


@tenant_command
def migrate(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="The manifest bulk and audit use."),
    to: str = typer.Option(..., "--to", metavar="graph", help="The protocol to move to (only graph)."),
    include: str | None = typer.Option(
        None, "--include", metavar="imap,smtp", help="Move IMAP and/or SMTP rows too (EWS rows always move)."
    ),
    esj_app: str | None = typer.Option(
        None,
        "--esj-app",
        metavar="CLIENT_ID",
        help="The ESJ app GRAPH signs in as, for rows whose trustee is a service account (env ESJ_PROVISION_ESJ_CLIENT_ID).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="The plan for every row; no write call and no file."),
    out_dir: Path = typer.Option(
        Path("esj-provision-migrate"),
        "--out-dir",
        metavar="DIR",
        help="Where manifest-graph.csv, results.jsonl and the ESJ options files go.",
    ),
    journal: Path | None = typer.Option(
        None, "--journal", metavar="PATH", help="Change journal; a rerun resumes (env ESJ_PROVISION_JOURNAL)."
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=64, metavar="N", help="Rows in flight in bulk."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="table|json", help="table for people, json for scripts."),
    profile: Path | None = typer.Option(
        None, "--profile", metavar="FILE", help="ESJ literals profile (env ESJ_PROVISION_PROFILE)."
    ),
    *,
    settings: Settings,
) -> None:
    """Move every EWS row (and with --include, IMAP/SMTP rows) to GRAPH: the ESJ app's Graph mail
    access confined to its mailboxes (RBAC for Applications), the new options (one file per ESJ
    application) and the migrated manifest (manifest-graph.csv) for later bulk/audit runs.

    Read-first, journalled and resumable; a re-run changes nothing. Nothing of the old setup is
    removed: what can go is listed. Exit 0 when every row moved, 4 when some did not, 2 usage error.
    """
    from ..fleet import manifest as manifest_mod
    from ..fleet.migrate import check_apps, parse_include
    from ..models import parse_guid

    esj_app = from_env(esj_app, "ESJ_PROVISION_ESJ_CLIENT_ID")
    profile_env = from_env(profile, "ESJ_PROVISION_PROFILE")
    profile = Path(profile_env) if profile_env else None
    journal_env = from_env(journal, "ESJ_PROVISION_JOURNAL")
    journal = Path(journal_env) if journal_env else None
    fmt_key = fmt.strip().lower()
    if fmt_key not in ("table", "json"):
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: table, json")
    if to.strip().lower() != "graph":
        raise UsageError(f"--to {to!r}: only graph can be migrated to", hint="--to graph")
    included = parse_include(include)
    app_id = parse_guid(esj_app, "--esj-app client id") if esj_app else None
    info = manifest_mod.validate(manifest)  # before any call, and before writing anything
    check_apps(info.path, included, app_id)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} is not a directory")
    profile_obj = None
    if profile is not None:
        from ..esj.options import load_profile

        profile_obj = load_profile(profile)
    report = run_async(
        _migrate(settings, info, included, app_id, dry_run, journal, out_dir, concurrency, profile_obj)
    )
    _print(report, fmt_key)
    if not report.all_ok:
        raise typer.Exit(int(ExitStatus.PARTIAL))


async def _migrate(
    settings: Any, info: Any, include: frozenset[str], esj_app: str | None, dry_run: bool,
    journal_path: Path | None, out_dir: Path, concurrency: int, profile: Any,
) -> Any:
    from ..fleet.migrate import run_migrate
    from ..microsoft.session import Session
    from ..provision.journal import default_journal_path, journalled_run
    from ._common import print_warning

    async with Session(settings, max_connections=max(20, concurrency * 2)) as session:
        with journalled_run(
            journal_path or default_journal_path(), secrets=settings.secrets, command="migrate", manifest=info.path,
            rows=info.rows, dry_run=dry_run, on_notice=print_warning,
        ) as journal:
            report = await run_migrate(
                session, info.path, include=include, esj_app=esj_app, dry_run=dry_run, journal=journal,
                out_dir=out_dir, concurrency=concurrency, cloud=settings.cloud, profile=profile,
            )
            if not dry_run:
                journal.write("run-end", command="migrate", moved=sum(1 for r in report.rows if r.moved),
                              failed=sum(1 for r in report.rows if not r.moved))
            return report


def _print(report: Any, fmt_key: str) -> None:
    if fmt_key == "json":
        data = {"summary": report.summary(), "rows": [r.to_dict() for r in report.rows]}
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    out = sys.stdout
    title = "migrate to GRAPH: plan (dry run: nothing changed, no file written)" if report.dry_run else "migrate to GRAPH"
    out.write(title + "\n")
    for r in report.rows:
        steps = (r.scope or {}).get("steps", [])
        todo = [s["command"] for s in steps if s.get("action") != "none"]
        state = r.status + (f": {r.error}" if r.error else "")
        out.write(f"  line {r.line}: {r.mailbox} {r.before[0]}/{r.before[1]} -> {r.after[0]}/{r.after[1]} "
                  f"(ESJ app {r.esj_app}): {state}\n")
        for command in todo if report.dry_run else []:
            out.write(f"      would run: {command}\n")
        for what in r.can_go:
            out.write(f"      can go: {what}\n")
    s = report.summary()
    moved = s.get("moved", s.get("planned"))
    out.write(f"{s['to_move']} row(s) to move, {moved} {'planned' if report.dry_run else 'moved'}, "
              f"{s['refused']} refused, {s['failed']} failed, {s['unchanged']} unchanged; "
              f"{s['scope_writes']} scope write(s)\n")
    if report.bulk is not None:
        b = report.bulk
        out.write(f"bulk on the migrated manifest: {b['ok']} ok, {b['refused']} refused, {b['failed']} failed, "
                  f"{b['writes']} write(s), {b['already_in_place']} already in place\n")
        for f in b.get("failures", []):
            out.write(f"  line {f['line']}: {f['mailbox']}: {f['reason']}\n")
    for w in report.warnings:
        out.write(f"warning: {w}\n")
    for f in report.files:
        out.write(f"wrote {f}\n")
    out.write("Nothing of the old setup was removed; retire what is listed under 'can go' when ESJ runs on GRAPH.\n")
