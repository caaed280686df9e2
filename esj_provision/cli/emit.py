"""``esj-provision emit``: print (or write) the ESJ options for one shared mailbox.

Needs no tenant and no network, so it imports nothing heavy. Every input is validated before
anything is written: a bad address, protocol, cloud or profile writes no file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import UsageError
from ._common import from_env

FORMATS = ("cfg", "json", "table")
SECRET_ENV = "ESJ_PROVISION_ESJ_CLIENT_SECRET"


def emit(
    mailbox: str = typer.Argument(
        ..., metavar="MAILBOX", help="The shared mailbox address, e.g. support@contoso.com."
    ),
    trustee: str = typer.Option(
        ..., "--trustee", metavar="ACCOUNT",
        help="The account with Full Access to the mailbox (pop-client/service-account, smtp-client/user).",
    ),
    inbound: str = typer.Option(..., "--inbound", metavar="imap|ews|graph", help="Inbound protocol."),
    outbound: str = typer.Option(..., "--outbound", metavar="smtp|ews|graph", help="Outbound protocol."),
    auto_response: bool = typer.Option(
        False, "--auto-response/--no-auto-response",
        help="Auto acknowledge/response is used: also set pop-client address and default-from-address.",
    ),
    cloud: str | None = typer.Option(
        None, "--cloud", metavar="global|usgov-high|usgov-dod|china",
        help="Microsoft cloud; sets host names and token scopes (env ESJ_PROVISION_CLOUD; default global).",
    ),
    fmt: str = typer.Option(
        "cfg", "--format", "-f", metavar="cfg|json|table",
        help="cfg: file for GAX import; json: for scripts; table: for people.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="FILE",
        help="Write to FILE (atomically) instead of stdout. Notes still go to stderr.",
    ),
    profile: Path | None = typer.Option(
        None, "--profile", metavar="FILE",
        help="INI profile pinning ESJ literals for your ESJ release (see examples/profile.ini) "
        "(env ESJ_PROVISION_PROFILE).",
    ),
    esj_client_id: str | None = typer.Option(
        None, "--esj-client-id", metavar="GUID",
        help="Client id of the ESJ app registration (not the provisioning app) (env ESJ_PROVISION_ESJ_CLIENT_ID). "
        "Default: a placeholder.",
    ),
    tenant_id: str | None = typer.Option(
        None, "--tenant-id", metavar="GUID",
        help="Directory (tenant) id (env AZURE_TENANT_ID). Default: a placeholder.",
    ),
    include_secret: bool = typer.Option(
        False, "--include-secret",
        help=f"Put the ESJ app secret (from ${SECRET_ENV} or --secret-file) in the output. "
        "Needs --out; the file is created with mode 0600.",
    ),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", metavar="PATH", help="File holding the ESJ app secret (with --include-secret).",
    ),
    section_index: int = typer.Option(
        0, "--section-index", min=0, metavar="N",
        help="0 for the first mailbox (pop-client); N>0 for additional ones (pop-client{N}, per profile).",
    ),
) -> None:
    """Print the ESJ pop-client/smtp-client options for a shared mailbox, per the Genesys guide.

    <set: ...> placeholders stand for what was not given (app client id, tenant id, secret).

    Unconfirmed literals are listed in the notes; pin them for your ESJ release with --profile.
    """
    # Imported here, not at module top, so `esj-provision --help` does not pay for them.
    from ..clouds import get_cloud
    from ..esj.cfg import render_cfg, render_json
    from ..esj.options import EsjRequest, Profile, build_options, load_profile
    from ..files import write_output
    from ..models import parse_inbound, parse_outbound
    from .render import print_table

    # The same variables, read the same way (flag > environment > .env), as every other command.
    cloud = from_env(cloud, "ESJ_PROVISION_CLOUD") or "global"
    profile_path = from_env(profile, "ESJ_PROVISION_PROFILE")
    esj_client_id = from_env(esj_client_id, "ESJ_PROVISION_ESJ_CLIENT_ID")
    if tenant_id is None:
        tenant_id = from_env(None, "AZURE_TENANT_ID")
        # The connection settings accept a domain there; the options need the GUID, so a domain
        # leaves the placeholder, as onboard does. A --tenant-id given here must be the GUID.
        if tenant_id and "." in tenant_id:
            tenant_id = None
    fmt_key = fmt.strip().lower()
    if fmt_key not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: " + ", ".join(FORMATS))
    if secret_file is not None and not include_secret:
        raise UsageError("--secret-file is read only with --include-secret")
    if include_secret and out is None:
        raise UsageError(
            "--include-secret needs --out FILE: the secret is written only to a file with mode 0600, "
            "never to the terminal or a pipe"
        )

    from ..config import load_mail_endpoints

    ends = load_mail_endpoints()
    request = EsjRequest(
        imap_endpoint=ends.imap,
        smtp_endpoint=ends.smtp,
        ews_endpoint=ends.ews,
        mailbox=mailbox,
        trustee=trustee,
        inbound=parse_inbound(inbound),
        outbound=parse_outbound(outbound),
        auto_response=auto_response,
        cloud=get_cloud(cloud),
        client_id=esj_client_id or None,
        tenant_id=tenant_id or None,
        section_index=section_index,
    )
    from ..esj.ews_sunset import ews_warning

    # Before 1 April 2027 the warning is the first of the options' notes; from then on, refused (exit 2).
    ews_warning(request.inbound, request.outbound)
    prof = load_profile(Path(profile_path)) if profile_path is not None else Profile()
    if include_secret:
        request.secret = _read_secret(secret_file)
    option_set = build_options(request, prof)

    if fmt_key == "table":
        if out is None:
            print_table([option_set])
            return
        import io

        buf = io.StringIO()
        print_table([option_set], file=buf)
        text = buf.getvalue()
    elif fmt_key == "json":
        text = render_json(option_set)
    else:
        text = render_cfg([option_set])

    if out is None:
        typer.echo(text, nl=False)
    else:
        write_output(out, text, contains_secret=option_set.contains_secret)
    _stderr_notes(option_set.notes if fmt_key != "table" else ())
    if out is not None:
        extra = " (mode 0600: it contains the ESJ app secret)" if option_set.contains_secret else ""
        sys.stderr.write(f"wrote {out}{extra}\n")


def _read_secret(secret_file: Path | None) -> str:
    if secret_file is not None:
        from ..files import read_user_file

        value = read_user_file(secret_file, "secret")
        where = f"secret file {str(secret_file)!r}"
    else:
        value = from_env(None, SECRET_ENV) or ""
        where = f"${SECRET_ENV}"
        if not value:
            raise UsageError(
                f"--include-secret: ${SECRET_ENV} is not set",
                hint=f"export {SECRET_ENV}, or give --secret-file PATH",
            )
    # A trailing newline from `echo > file` is not part of an Entra secret (they hold no spaces).
    value = value.strip()
    if not value:
        raise UsageError(f"--include-secret: {where} is empty")
    return value


def _stderr_notes(notes: tuple[str, ...] | list[str]) -> None:
    for note in notes:
        sys.stderr.write(f"note: {note}\n")
    sys.stderr.flush()
