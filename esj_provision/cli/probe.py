"""``esj-provision probe``: sign in as ESJ would and open each shared mailbox over ESJ's protocol."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import ConfigError, ExitStatus, UsageError
from ._common import from_env, run_async
from ._options import tenant_command

if TYPE_CHECKING:
    from ..config import Settings

SECRET_ENV = "ESJ_PROVISION_ESJ_CLIENT_SECRET"
PASSWORD_ENV = "ESJ_PROVISION_ESJ_PASSWORD"

WaitOpt = typer.Option(
    None, "--wait", metavar="DURATION",
    help="Retry checks that wait for Exchange to apply a grant, with backoff, up to DURATION (90s, 30m, 2h).",
)
EsjSecretFile = typer.Option(
    None, "--secret-file", metavar="PATH",
    help=f"File holding the ESJ app's secret (default ${SECRET_ENV}).",
)
PasswordFile = typer.Option(
    None, "--password-file", metavar="PATH",
    help=f"File holding the ESJ service account's password (default ${PASSWORD_ENV}).",
)


def read_secret(path: Path | None, env_var: str, what: str) -> str | None:
    """From the file when given, else the environment, else ``./.env``; never a flag value."""
    if path is not None:
        from ..files import read_user_file

        value = read_user_file(path, what)
        # A trailing newline from `echo > file` is not part of it (ROPC refuses passwords with
        # leading or trailing whitespace anyway, probe-protocols.md §3).
        value = value.strip("\r\n")
        if not value:
            raise UsageError(f"{what} file {str(path)!r} is empty")
        return value
    from_env = os.environ.get(env_var)
    if not from_env:
        from ..config import read_dotenv

        from_env = read_dotenv(Path.cwd() / ".env").get(env_var)
    return from_env or None


def probe_inputs(
    secret_file: Path | None, password_file: Path | None, wait: str | None, send_test_to: str | None
) -> tuple[str | None, str | None, float, str | None]:
    """Validated before any connection: the secrets, the wait in seconds, the test recipient."""
    from ..models import parse_address
    from ..probe.run import parse_duration

    wait_s = parse_duration(wait) if wait is not None else 0.0
    to = parse_address(send_test_to, "--send-test-to") if send_test_to is not None else None
    secret = read_secret(secret_file, SECRET_ENV, "ESJ app secret")
    password = read_secret(password_file, PASSWORD_ENV, "service account password")
    return secret, password, wait_s, to


@tenant_command
def probe(
    options_file: Path = typer.Argument(..., metavar="OPTIONS_FILE", help="The options (cfg or json) emit/onboard/bulk wrote."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="table|json", help="table for people, json for scripts."),
    wait: str | None = WaitOpt,
    send_test_to: str | None = typer.Option(
        None, "--send-test-to", metavar="ADDRESS",
        help="Send one real test message FROM each shared mailbox to ADDRESS over the outbound protocol "
        "(the only proof of Send As).",
    ),
    secret_file: Path | None = EsjSecretFile,
    password_file: Path | None = PasswordFile,
    esj_client_id: str | None = typer.Option(
        None, "--esj-client-id", metavar="GUID",
        help="The ESJ app's client id, where the options still hold the placeholder (env ESJ_PROVISION_ESJ_CLIENT_ID).",
    ),
    *,
    settings: Settings,
) -> None:
    """Prove that E-mail Server can connect with these options: sign in as ESJ would, open each shared
    mailbox over ESJ's protocol (IMAP EXAMINE, EWS GetFolder, Graph inbox; SMTP AUTH without sending).

    Exit 0 when every check passed, 5 when the only problem is a grant Exchange has not applied yet,
    1 otherwise. The provisioning app (AZURE_*), when configured, reads the grants to tell the two apart.
    """
    from ..models import parse_guid
    from ..probe.targets import load_targets

    fmt_key = fmt.strip().lower()
    if fmt_key not in ("table", "json"):
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: table, json")
    secret, password, wait_s, to = probe_inputs(secret_file, password_file, wait, send_test_to)
    esj_client_id = from_env(esj_client_id, "ESJ_PROVISION_ESJ_CLIENT_ID")
    esj_app = parse_guid(esj_client_id, "--esj-client-id") if esj_client_id else None
    targets = load_targets(options_file)
    checks = run_async(_probe(settings, targets, esj_app, secret, password, to, wait_s))
    _output(checks, fmt_key, options_file)
    from ..probe.checks import exit_status

    status = exit_status(checks)
    if status:
        raise typer.Exit(int(ExitStatus.PENDING) if status == int(ExitStatus.PENDING) else int(ExitStatus.ERROR))


def provisioning_configured(settings: Any) -> bool:
    """Whether the provisioning app can sign in (then the probe reads the grants it finds missing)."""
    try:
        settings.require_tenant()
    except ConfigError:
        return False
    return True


async def probe_with_grants(settings: Any, targets: Any, setup: Any, wait_s: float) -> Any:
    """The probe, with an Exchange grant reader when the provisioning app is configured."""
    from ..probe.run import run_probe

    if not provisioning_configured(settings):
        return await run_probe(setup, targets, wait_s=wait_s, on_wait=print_wait)
    from ..microsoft.session import Session
    from ..provision.grants import ExchangeGrantReader

    async with Session(settings) as session:
        return await run_probe(setup, targets, grants=ExchangeGrantReader(session), wait_s=wait_s, on_wait=print_wait)


async def _probe(
    settings: Any, targets: Any, esj_app: str | None, secret: str | None, password: str | None,
    to: str | None, wait_s: float,
) -> Any:
    from ..probe.run import setup_from

    setup = setup_from(settings, esj_client_id=esj_app, secret=secret, password=password, send_test_to=to)
    return await probe_with_grants(settings, targets, setup, wait_s)


def print_wait(pending: list[Any], delay: float) -> None:
    """What --wait waits for, on stderr."""
    sys.stderr.write(f"waiting {delay:.0f}s for {len(pending)} check(s) Exchange has not applied yet:\n")
    for c in pending:
        sys.stderr.write(f"  [{c.section}] {c.protocol} {c.check}: {c.reason}\n")
    sys.stderr.flush()


def _output(checks: list[Any], fmt_key: str, options_file: Path) -> None:
    from ..probe.checks import exit_status

    if fmt_key == "json":
        doc = {
            "options_file": str(options_file),
            "exit_status": exit_status(checks),
            "checks": [c.to_dict() for c in checks],
        }
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return
    from .render import print_probe

    print_probe(checks)


def probe_after_inputs(probe_after: bool, wait: str | None, dry_run: bool, what: str) -> tuple[Any, ...] | None:
    """``onboard``/``bulk`` ``--probe [--wait]``: its secrets and wait, validated before anything is
    granted (``what``: "the mailbox" or "the mailboxes")."""
    if wait is not None and not probe_after:
        raise UsageError("--wait goes with --probe")
    if not probe_after:
        return None
    if dry_run:
        raise UsageError(f"--probe opens {what} with what was granted: not with --dry-run")
    return probe_inputs(None, None, wait, None)
