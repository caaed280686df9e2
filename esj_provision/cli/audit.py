"""``esj-provision audit``: where the tenant has drifted from the manifest. Read-only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ..errors import UsageError
from . import app
from ._common import (
    Auth,
    AuthorityHost,
    CaBundle,
    Certificate,
    ClientId,
    Cloud,
    ExchangeEndpoint,
    GraphEndpoint,
    SecretFile,
    TenantId,
    Verbose,
    run_async,
    settings_from,
    setup_logging,
)

FORMATS = ("table", "json", "csv", "markdown")


@app.command()
def audit(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="The manifest the tenant should match."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="table|json|csv|markdown", help="Report format."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the report to FILE."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=64, metavar="N", help="Rows read at once."),
    cloud: Cloud = None,
    tenant_id: TenantId = None,
    client_id: ClientId = None,
    auth: Auth = None,
    client_secret_file: SecretFile = None,
    certificate: Certificate = None,
    authority_host: AuthorityHost = None,
    graph_endpoint: GraphEndpoint = None,
    exchange_endpoint: ExchangeEndpoint = None,
    ca_bundle: CaBundle = None,
    verbose: Verbose = False,
) -> None:
    """Read-only: each delegation present/absent/unknown, plus drift that matters to ESJ.

    Exit status 0 in sync, 3 drift found, 1 when any row could not be read (never reported as in sync).
    """
    from .. import manifest as manifest_mod
    from ..audit import render_csv, render_json, render_markdown

    fmt_key = fmt.strip().lower()
    if fmt_key not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    info = manifest_mod.validate(manifest)
    setup_logging(verbose)
    settings = settings_from(
        cloud=cloud,
        tenant_id=tenant_id,
        client_id=client_id,
        auth=auth,
        client_secret_file=client_secret_file,
        certificate_path=certificate,
        authority_host=authority_host,
        graph_endpoint=graph_endpoint,
        exchange_endpoint=exchange_endpoint,
        ca_bundle=ca_bundle,
    )
    report = run_async(_audit(settings, info.path, concurrency))
    if fmt_key == "table":
        text = _table(report, to_file=out is not None)
    else:
        text = {"json": render_json, "csv": render_csv, "markdown": render_markdown}[fmt_key](report)
    if out is not None:
        from ..output import write_output

        write_output(out, text, contains_secret=False)
        sys.stderr.write(f"wrote {out}\n")
    else:
        sys.stdout.write(text)
    s = report.summary()
    sys.stderr.write(f"audit: {s['rows']} rows, {s['in_sync']} in sync, {s['drift']} drift, {s['unknown']} unknown\n")
    raise typer.Exit(int(report.exit_status))


async def _audit(settings: Any, path: Path, concurrency: int) -> Any:
    from ..audit import run_audit
    from ..session import Session

    async with Session(settings, max_connections=max(20, concurrency * 2)) as session:
        return await run_audit(session, path, concurrency=concurrency)


def _table(report: Any, *, to_file: bool) -> str:
    import io

    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=200 if to_file or not sys.stdout.isatty() else None, highlight=False)
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
    return buf.getvalue()
