"""``esj-provision doctor``: read-only checks of everything onboarding depends on."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

from ..errors import UsageError
from ._common import run_async
from ._options import tenant_command

if TYPE_CHECKING:
    from ..config import Settings

FORMATS = ("table", "json")


@tenant_command
def doctor(
    inbound: str | None = typer.Option(
        None, "--inbound", metavar="imap|ews|graph", help="Inbound protocol ESJ uses (checks the ESJ app for it)."
    ),
    outbound: str | None = typer.Option(
        None, "--outbound", metavar="smtp|ews|graph", help="Outbound protocol ESJ uses (checks the ESJ app for it)."
    ),
    esj_app: str | None = typer.Option(
        None,
        "--esj-app",
        metavar="CLIENT_ID",
        help="The app ESJ signs in as (client credentials): check what it needs for --inbound/--outbound.",
    ),
    fmt: str = typer.Option("table", "--format", "-f", metavar="table|json", help="table for people, json for scripts."),
    *,
    settings: Settings,
) -> None:
    """Check, before anything changes, everything that would make onboarding fail, and how to fix it.

    The provisioning app's roles (read from its tokens) and whether Exchange accepts it; endpoints,
    TLS trust and clock; with --esj-app, what the ESJ app needs for its protocols and what of it is in
    place. Read-only. Exit status 0 when everything needed is in place, 1 otherwise.
    """
    from ..models import parse_guid, parse_inbound, parse_outbound

    fmt_key = fmt.strip().lower()
    if fmt_key not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    inbound_p = parse_inbound(inbound) if inbound else None
    outbound_p = parse_outbound(outbound) if outbound else None
    app_id = parse_guid(esj_app, "ESJ app client id") if esj_app else None
    if app_id and not (inbound_p or outbound_p):
        raise UsageError(
            "--esj-app needs the protocols ESJ uses",
            hint="add --inbound imap|ews|graph and/or --outbound smtp|ews|graph",
        )
    report = run_async(_doctor(settings, inbound_p, outbound_p, app_id))
    if fmt_key == "json":
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        from .render import print_doctor

        print_doctor(report)
    summary = report.to_dict()["summary"]
    sys.stderr.write(
        f"doctor: {summary['ok']} ok, {summary['missing']} missing, {summary['warning']} warning(s), "
        f"{summary['error']} error(s)\n"
    )
    raise typer.Exit(int(report.exit_status))


async def _doctor(settings: Any, inbound: Any, outbound: Any, esj_app: str | None) -> Any:
    from ..doctor import run_doctor
    from ..microsoft.session import Session

    async with Session(settings) as session:
        return await run_doctor(session, inbound=inbound, outbound=outbound, esj_app=esj_app)
