"""``esj-provision onboard`` and ``offboard``: one shared mailbox, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from ..errors import PreflightError, UsageError
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

FORMATS = ("table", "json", "cfg")
JournalOpt = typer.Option(
    None,
    "--journal",
    metavar="PATH",
    help="Change journal (JSON lines) (env ESJ_PROVISION_JOURNAL; default ~/.local/state/esj-provision/journal.jsonl).",
)


def _connection(**kw: Any) -> Any:
    return settings_from(**kw)


async def _run(settings: Any, request: Any, *, mode: str, dry_run: bool, journal_path: Path | None) -> Any:
    from ..journal import Journal, default_journal_path
    from ..planning import run
    from ..session import Session

    async with Session(settings) as session:
        if dry_run:
            return await run(session, request, mode=mode, dry_run=True, journal=None)  # type: ignore[arg-type]
        with Journal(journal_path or default_journal_path(), secrets=settings.secrets) as journal:
            journal.write("run-start", command=mode, mailbox=request.mailbox, trustee=request.trustee)
            plan = await run(session, request, mode=mode, dry_run=False, journal=journal)  # type: ignore[arg-type]
            journal.write("run-end", command=mode, mailbox=plan.mailbox_id, failed=plan.failed, refused=plan.refused)
            return plan


def _options(plan: Any, settings: Any, profile: Path | None, esj_client_id: str | None) -> Any:
    from ..esj_options import EsjRequest, Profile, build_options, load_profile

    prof = load_profile(profile) if profile is not None else Profile()
    r = plan.request
    mailbox = plan.mailbox.address if plan.mailbox else r.mailbox
    trustee = plan.trustee.address if plan.trustee else r.trustee
    return build_options(
        EsjRequest(
            mailbox=mailbox,
            trustee=trustee,
            inbound=r.inbound,
            outbound=r.outbound,
            auto_response=r.auto_response,
            cloud=settings.cloud,
            client_id=esj_client_id,
            tenant_id=settings.tenant_id if settings.tenant_id and "." not in settings.tenant_id else None,
        ),
        prof,
    )


def _finish(plan: Any) -> None:
    if plan.refused:
        problems = [f.message for f in plan.findings if f.level == "error"]
        raise PreflightError(f"{plan.mode} refused: nothing was changed ({len(problems)} problem(s))", problems)
    if plan.failed:
        raise typer.Exit(1)


@app.command()
def onboard(
    mailbox: str = typer.Argument(..., metavar="MAILBOX", help="The shared mailbox address."),
    trustee: str = typer.Option(
        ..., "--trustee", metavar="ACCOUNT", help="The account ESJ signs in with; gets Full Access."
    ),
    inbound: str = typer.Option(..., "--inbound", metavar="imap|ews|graph", help="Inbound protocol."),
    outbound: str = typer.Option(..., "--outbound", metavar="smtp|ews|graph", help="Outbound protocol."),
    send_as: bool = typer.Option(
        True, "--send-as/--no-send-as", help="Also grant Send As (needed to send FROM the shared address)."
    ),
    auto_response: bool = typer.Option(
        False, "--auto-response", help="Auto acknowledge/response is used (sets pop-client address options)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Preflight and plan only: no write call at all."),
    as_powershell: bool = typer.Option(
        False, "--as-powershell", help="With --dry-run: print the equivalent Exchange PowerShell."
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="table|json|cfg",
        help="table for people, json for scripts, cfg: the ESJ options file.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the ESJ options (cfg) to FILE."),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        envvar="ESJ_PROVISION_PROFILE",
        metavar="FILE",
        help="ESJ literals profile (see examples/profile.ini).",
    ),
    esj_client_id: str | None = typer.Option(
        None,
        "--esj-client-id",
        envvar="ESJ_PROVISION_ESJ_CLIENT_ID",
        metavar="GUID",
        help="The ESJ app's client id, for the options.",
    ),
    journal: Path | None = JournalOpt,
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
    """Connect a shared mailbox to ESJ: check, grant Full Access (and Send As), verify, emit options.

    A second run changes nothing. Every write is recorded in the change journal.
    """
    from ..models import parse_address, parse_inbound, parse_outbound
    from ..planning import OnboardRequest

    fmt_key = fmt.strip().lower()
    if fmt_key not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    if as_powershell and not dry_run:
        raise UsageError("--as-powershell prints a script for review: use it with --dry-run")
    request = OnboardRequest(
        mailbox=parse_address(mailbox, "mailbox"),
        trustee=parse_address(trustee, "trustee"),
        inbound=parse_inbound(inbound),
        outbound=parse_outbound(outbound),
        send_as=send_as,
        auto_response=auto_response,
    )
    if request.mailbox.lower() == request.trustee.lower():
        raise UsageError("the trustee is the shared mailbox itself", hint="give the account ESJ signs in with")
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    setup_logging(verbose)
    settings = _connection(
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
    plan = run_async(_run(settings, request, mode="onboard", dry_run=dry_run, journal_path=journal))
    options = None if plan.refused else _options(plan, settings, profile, esj_client_id)
    _render(plan, options, fmt_key, out, as_powershell)
    _finish(plan)


def _render(plan: Any, options: Any, fmt_key: str, out: Path | None, as_powershell: bool) -> None:
    from ..output import option_set_to_dict, print_table, render_cfg, write_output
    from ..report import next_steps, print_plan

    if as_powershell:
        from ..powershell import to_powershell

        print_plan(plan, file=sys.stderr)
        sys.stdout.write(to_powershell([plan]))
        return
    if out is not None and options is not None:
        write_output(out, render_cfg([options]), contains_secret=options.contains_secret)
    if fmt_key == "json":
        data = plan.to_dict()
        data["next_steps"] = next_steps(plan)
        data["esj_options"] = option_set_to_dict(options) if options is not None else None
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif fmt_key == "cfg":
        print_plan(plan, file=sys.stderr)
        if options is not None and out is None:
            sys.stdout.write(render_cfg([options]))
    else:
        print_plan(plan)
        if options is not None:
            print_table([options])
    if out is not None and options is not None:
        sys.stderr.write(f"wrote the ESJ options to {out}\n")


@app.command()
def offboard(
    mailbox: str = typer.Argument(..., metavar="MAILBOX", help="The shared mailbox address."),
    trustee: str = typer.Option(..., "--trustee", metavar="ACCOUNT", help="The account whose delegations are removed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Preflight and plan only: no write call at all."),
    as_powershell: bool = typer.Option(
        False, "--as-powershell", help="With --dry-run: print the equivalent Exchange PowerShell."
    ),
    fmt: str = typer.Option(
        "table", "--format", "-f", metavar="table|json", help="table for people, json for scripts."
    ),
    journal: Path | None = JournalOpt,
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
    """Remove the delegations onboarding created (Full Access, Send As) for that trustee.

    Removing what is already absent is a no-op, not an error.
    """
    from ..models import parse_address
    from ..planning import OnboardRequest

    fmt_key = fmt.strip().lower()
    if fmt_key not in ("table", "json"):
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: table, json")
    if as_powershell and not dry_run:
        raise UsageError("--as-powershell prints a script for review: use it with --dry-run")
    request = OnboardRequest(mailbox=parse_address(mailbox, "mailbox"), trustee=parse_address(trustee, "trustee"))
    setup_logging(verbose)
    settings = _connection(
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
    plan = run_async(_run(settings, request, mode="offboard", dry_run=dry_run, journal_path=journal))
    _render(plan, None, fmt_key, None, as_powershell)
    _finish(plan)
