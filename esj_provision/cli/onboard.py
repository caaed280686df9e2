"""``esj-provision onboard`` and ``offboard``: one shared mailbox, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import PreflightError, UsageError
from ._common import from_env, run_async
from ._options import EsjClientId, ProbeWait, tenant_command

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import Trustee

FORMATS = ("table", "json", "cfg")
JournalOpt = typer.Option(
    None,
    "--journal",
    metavar="PATH",
    help="Change journal (JSON lines) (env ESJ_PROVISION_JOURNAL; default ~/.local/state/esj-provision/journal.jsonl).",
)


async def _run(
    settings: Any,
    request: Any,
    *,
    mode: str,
    dry_run: bool,
    journal_path: Path | None,
    scope_app: str | None = None,
) -> tuple[Any, Any]:
    """The plan, and with ``scope_app`` the scoping of that ESJ app (after a successful onboarding)."""
    from ..microsoft.session import Session
    from ..provision.journal import Journal, default_journal_path
    from ..provision.onboard import run
    from ..provision.scope import roles_for, run_scope

    async with Session(settings) as session:
        roles = roles_for(request.inbound, request.outbound)
        if dry_run:
            plan = await run(session, request, mode=mode, dry_run=True, journal=None)
            scope = None
            if scope_app and not plan.refused:
                scope = await run_scope(session, scope_app, plan.mailbox_id, roles, dry_run=True, journal=None)
            return plan, scope
        with Journal(journal_path or default_journal_path(), secrets=settings.secrets) as journal:
            journal.write("run-start", command=mode, mailbox=request.mailbox, trustee=request.trustee.ref)
            plan = await run(session, request, mode=mode, dry_run=False, journal=journal)
            scope = None
            if scope_app and not plan.failed:
                scope = await run_scope(session, scope_app, plan.mailbox_id, roles, dry_run=False, journal=journal)
            failed = plan.failed or bool(scope and scope.failed)
            journal.write("run-end", command=mode, mailbox=plan.mailbox_id, failed=failed, refused=plan.refused)
            return plan, scope


def _options(plan: Any, settings: Any, profile: Path | None, esj_client_id: str | None) -> Any:
    from ..esj.options import Profile, build_options, load_profile

    prof = load_profile(profile) if profile is not None else Profile()
    req = plan.esj_request(settings.cloud, esj_client_id)
    # Options made against a test tenant (the sandbox) point at its mail endpoints.
    req.imap_endpoint, req.smtp_endpoint, req.ews_endpoint = settings.mail.imap, settings.mail.smtp, settings.mail.ews
    return build_options(req, prof)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _finish(plan: Any, scope: Any = None) -> None:
    if plan.refused:
        problems = [f.message for f in plan.findings if f.level == "error"]
        raise PreflightError(f"{plan.mode} refused: nothing was changed ({len(problems)} problem(s))", problems)
    if scope is not None and scope.refused:
        problems = [f.message for f in scope.findings if f.level == "error"]
        raise PreflightError(f"scoping the ESJ app refused ({len(problems)} problem(s))", problems)
    if plan.failed or (scope is not None and scope.failed):
        raise typer.Exit(1)


def _trustee(trustee: str | None, trustee_app: str | None, what: str) -> Trustee:
    """The typed trustee: exactly one of --trustee (an account) and --trustee-app (an ESJ app)."""
    from ..models import AppTrustee, UserTrustee

    if trustee and trustee_app:
        raise UsageError(
            "--trustee and --trustee-app exclude each other",
            hint="--trustee ACCOUNT when ESJ signs in with a service account; --trustee-app CLIENT_ID when it "
            "signs in as its app (client credentials)",
        )
    if trustee_app:
        return AppTrustee.parse(trustee_app, "--trustee-app client id")
    if trustee:
        return UserTrustee.parse(trustee)
    raise UsageError(f"give --trustee ACCOUNT or --trustee-app CLIENT_ID ({what})")


@tenant_command
def onboard(
    mailbox: str = typer.Argument(..., metavar="MAILBOX", help="The shared mailbox address."),
    trustee: str | None = typer.Option(
        None, "--trustee", metavar="ACCOUNT", help="The account ESJ signs in with; gets Full Access."
    ),
    trustee_app: str | None = typer.Option(
        None,
        "--trustee-app",
        metavar="CLIENT_ID",
        help="ESJ signs in as this app (client credentials): register its Exchange service principal if "
        "missing and give it Full Access (instead of --trustee; no Send As).",
    ),
    scope_esj_app: str | None = typer.Option(
        None,
        "--scope-esj-app",
        metavar="CLIENT_ID",
        help="GRAPH: confine this ESJ app's Graph mail access to the onboarded mailboxes (RBAC for "
        "Applications: a management scope and Application Mail.ReadWrite/Mail.Send on it).",
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
        metavar="FILE",
        help="ESJ literals profile (see examples/profile.ini) (env ESJ_PROVISION_PROFILE).",
    ),
    esj_client_id: EsjClientId = None,
    journal: Path | None = JournalOpt,
    probe_after: bool = typer.Option(
        False, "--probe",
        help="Then probe the options as ESJ would (secrets from ESJ_PROVISION_ESJ_CLIENT_SECRET / "
        "ESJ_PROVISION_ESJ_PASSWORD); exit 5 when only Exchange's propagation is missing.",
    ),
    wait: ProbeWait = None,
    *,
    settings: Settings,
) -> None:
    """Connect a shared mailbox to ESJ: check, grant Full Access (and Send As), verify, emit options.

    --trustee: ESJ signs in with a service account. --trustee-app: ESJ signs in as its app; its
    Exchange service principal is registered if missing and gets Full Access. --scope-esj-app (GRAPH)
    confines the ESJ app's Graph mail access to the onboarded mailboxes. A second run changes
    nothing. Every write is recorded in the change journal.
    """
    from ..provision.request import OnboardRequest, esj_client_id_for, scope_app_for

    profile = _path(from_env(profile, "ESJ_PROVISION_PROFILE"))
    esj_client_id = from_env(esj_client_id, "ESJ_PROVISION_ESJ_CLIENT_ID")
    journal = _path(from_env(journal, "ESJ_PROVISION_JOURNAL"))
    fmt_key = fmt.strip().lower()
    if fmt_key not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    if as_powershell and not dry_run:
        raise UsageError("--as-powershell prints a script for review: use it with --dry-run")
    request = OnboardRequest.create(
        mailbox=mailbox,
        trustee=_trustee(trustee, trustee_app, "who gets Full Access"),
        inbound=inbound,
        outbound=outbound,
        send_as=send_as,
        auto_response=auto_response,
    )
    scope_app = scope_app_for(request, scope_esj_app)
    esj_client_id = esj_client_id_for(request, scope_app, esj_client_id)
    request.esj_app_id = esj_client_id
    from ..esj.ews_sunset import ews_warning

    ews_warning(request.inbound, request.outbound)  # from 1 April 2027: refused before any call (exit 2)
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: directory {out.parent} does not exist")
    from .probe import probe_after_inputs

    probe_in = probe_after_inputs(probe_after, wait, dry_run, "the mailbox")
    plan, scope = run_async(
        _run(settings, request, mode="onboard", dry_run=dry_run, journal_path=journal, scope_app=scope_app)
    )
    options = None if plan.refused else _options(plan, settings, profile, esj_client_id)
    checks = None
    if probe_in is not None and options is not None and not plan.failed:
        checks = run_async(_probe_options(settings, options, esj_client_id, probe_in))
    _render(plan, options, fmt_key, out, as_powershell, scope, checks)
    _finish(plan, scope)
    if checks is not None:
        from ..probe.checks import exit_status

        if exit_status(checks):
            raise typer.Exit(exit_status(checks))


async def _probe_options(settings: Any, options: Any, esj_client_id: str | None, probe_in: tuple[Any, ...]) -> Any:
    from ..probe.run import setup_from
    from ..probe.targets import targets_from_sections
    from .probe import probe_with_grants

    secret, password, wait_s, _ = probe_in
    targets = targets_from_sections(
        options.as_dict(), "the options", {s: options.mailbox for s in options.sections}
    )
    setup = setup_from(settings, esj_client_id=esj_client_id, secret=secret, password=password, send_test_to=None)
    return await probe_with_grants(settings, targets, setup, wait_s)


def _render(
    plan: Any, options: Any, fmt_key: str, out: Path | None, as_powershell: bool, scope: Any = None,
    checks: Any = None,
) -> None:
    from ..esj.cfg import option_set_to_dict, render_cfg
    from ..files import write_output
    from .render import next_steps, print_plan, print_probe, print_scope, print_table

    if as_powershell:
        from ..provision.powershell import steps_to_powershell, to_powershell

        print_plan(plan, file=sys.stderr)
        script = to_powershell([plan])
        if scope is not None:
            print_scope(scope, file=sys.stderr)
            script += steps_to_powershell(scope.steps)
        sys.stdout.write(script)
        return
    if out is not None and options is not None:
        write_output(out, render_cfg([options]), contains_secret=options.contains_secret)
    if fmt_key == "json":
        data = plan.to_dict()
        data["next_steps"] = next_steps(plan)
        data["esj_options"] = option_set_to_dict(options) if options is not None else None
        if scope is not None:
            data["scope"] = scope.to_dict()
        if checks is not None:
            from ..probe.checks import exit_status

            data["probe"] = {"exit_status": exit_status(checks), "checks": [c.to_dict() for c in checks]}
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif fmt_key == "cfg":
        print_plan(plan, file=sys.stderr)
        if scope is not None:
            print_scope(scope, file=sys.stderr)
        if options is not None and out is None:
            sys.stdout.write(render_cfg([options]))
        if checks is not None:
            print_probe(checks, file=sys.stderr)
    else:
        print_plan(plan)
        if scope is not None:
            print_scope(scope)
        if options is not None:
            print_table([options])
        if checks is not None:
            print_probe(checks)
    if out is not None and options is not None:
        sys.stderr.write(f"wrote the ESJ options to {out}\n")


@tenant_command
def offboard(
    mailbox: str = typer.Argument(..., metavar="MAILBOX", help="The shared mailbox address."),
    trustee: str | None = typer.Option(
        None, "--trustee", metavar="ACCOUNT", help="The account whose delegations are removed."
    ),
    trustee_app: str | None = typer.Option(
        None,
        "--trustee-app",
        metavar="CLIENT_ID",
        help="Remove the Full Access of this app's Exchange service principal (it stays registered).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Preflight and plan only: no write call at all."),
    as_powershell: bool = typer.Option(
        False, "--as-powershell", help="With --dry-run: print the equivalent Exchange PowerShell."
    ),
    fmt: str = typer.Option(
        "table", "--format", "-f", metavar="table|json", help="table for people, json for scripts."
    ),
    journal: Path | None = JournalOpt,
    *,
    settings: Settings,
) -> None:
    """Remove the delegations onboarding created (Full Access, Send As) for that trustee.

    Removing what is already absent is a no-op, not an error. For --trustee-app, the app's Exchange
    service principal stays registered (other mailboxes may use it).
    """
    from ..models import parse_address
    from ..provision.onboard import OnboardRequest

    journal = _path(from_env(journal, "ESJ_PROVISION_JOURNAL"))
    fmt_key = fmt.strip().lower()
    if fmt_key not in ("table", "json"):
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: table, json")
    if as_powershell and not dry_run:
        raise UsageError("--as-powershell prints a script for review: use it with --dry-run")
    who = _trustee(trustee, trustee_app, "whose delegations are removed")
    request = OnboardRequest(mailbox=parse_address(mailbox, "mailbox"), trustee=who)
    plan, _ = run_async(_run(settings, request, mode="offboard", dry_run=dry_run, journal_path=journal))
    _render(plan, None, fmt_key, None, as_powershell)
    _finish(plan)
