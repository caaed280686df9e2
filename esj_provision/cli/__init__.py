"""The thin command-line layer: parse, call the core, render, map errors to exit statuses.

Nothing in the core imports this package. Each command lives in its own module here; this module
only builds the Typer app, registers them, and owns the single place where exceptions become exit
statuses (:class:`_Group.invoke`). Heavy packages (httpx, azure-identity, msgraph-sdk) are
imported inside command functions, never at import time, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import EsjProvisionError, ExitStatus, exit_status_for
from ._common import print_error


class _Group(TyperGroup):
    """Maps every error raised by a command to its exit status, in one place."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EsjProvisionError as exc:
            print_error(exc)
            ctx.exit(int(exit_status_for(exc)))
        except KeyboardInterrupt:
            print_error(EsjProvisionError("interrupted"))
            ctx.exit(int(ExitStatus.INTERRUPTED))


app = typer.Typer(
    cls=_Group,
    name="esj-provision",
    help=(
        "Connect Genesys E-mail Server (ESJ) to Exchange Online shared mailboxes: grant the "
        "delegation, verify it, and emit the ESJ options ready to import."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"esj-provision {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Exit statuses: 0 success, 1 error, 2 usage error, 3 drift found (audit), 4 partial failure (bulk)."""


def _register() -> None:
    # Explicit, like hatch's add_command: a missing module is an ImportError, never a silently
    # absent command. The command modules import only light modules at their top.
    from . import audit, bulk, doctor, emit, ews, migrate, onboard, sandbox

    app.command()(emit.emit)
    app.command()(onboard.onboard)
    app.command()(onboard.offboard)
    app.command()(bulk.bulk)
    app.command()(audit.audit)
    app.command()(doctor.doctor)
    ews.ews_app.command("allow")(ews.allow)
    app.add_typer(ews.ews_app, name="ews")
    app.command()(migrate.migrate)
    app.command("sandbox")(sandbox.sandbox)


_register()


def main() -> None:
    """Console entry point."""
    sys.exit(app(standalone_mode=True))
