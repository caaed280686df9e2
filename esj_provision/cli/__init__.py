"""The thin command-line layer: parse, call the core, render, map errors to exit statuses.

Nothing in the core imports this package. Each command lives in its own module here; this module
only builds the Typer app, registers them, and owns the single place where exceptions become exit
statuses (:class:`_Group.invoke`). Heavy packages (httpx, azure-identity, msgraph-sdk) are
imported inside command functions, never at import time, so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 carries its own copy of click; the exceptions it raises are that copy's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer, on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

from .. import __version__
from ..errors import EsjProvisionError, ExitStatus, exit_status_for
from ._common import print_error, print_usage_error

DEBUG_ENV = "ESJ_PROVISION_DEBUG"


class _Group(TyperGroup):
    """Maps every error raised by a command to its exit status, in one place.

    Three kinds: the tool's own errors (one line, a hint, their exit status); the command line's
    errors that Typer/click find (unknown option, missing argument), made to read the same way with
    exit status 2; and unexpected exceptions (a bug): one line and exit 1, or the full traceback with
    ``--traceback`` or ``ESJ_PROVISION_DEBUG=1``.
    """

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
        standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:  # `esj-provision` alone: the help, as before
            if not standalone_mode:
                raise
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        except click_errors.UsageError as exc:
            if not standalone_mode:
                raise
            print_usage_error(exc)
            sys.exit(int(ExitStatus.USAGE))
        except click_errors.ClickException as exc:
            if not standalone_mode:
                raise
            print_error(EsjProvisionError(exc.format_message()))
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            print_error(EsjProvisionError("aborted"))
            sys.exit(int(ExitStatus.ERROR))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EsjProvisionError as exc:
            print_error(exc)
            ctx.exit(int(exit_status_for(exc)))
        except KeyboardInterrupt:
            print_error(EsjProvisionError("interrupted"))
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except (typer.Exit, typer.Abort, click_errors.ClickException):
            raise
        except Exception as exc:
            if ctx.params.get("traceback") or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            print_error(
                EsjProvisionError(
                    f"unexpected error ({type(exc).__name__}): {exc}",
                    hint=f"this is a bug in esj-provision: rerun with --traceback (or {DEBUG_ENV}=1) and report "
                    "the traceback",
                )
            )
            ctx.exit(int(ExitStatus.ERROR))


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
    traceback: bool = typer.Option(
        False,
        "--traceback",
        help=f"Show the full traceback of an unexpected error (a bug), for a report (env {DEBUG_ENV}=1).",
    ),
) -> None:
    """Exit statuses: 0 success, 1 error, 2 usage error, 3 drift found (audit), 4 partial failure (bulk), 5 a grant not applied yet (probe)."""


def _register() -> None:
    # Explicit, like hatch's add_command: a missing module is an ImportError, never a silently
    # absent command. The command modules import only light modules at their top.
    from . import audit, bulk, doctor, emit, ews, migrate, onboard, probe, sandbox

    app.command()(emit.emit)
    app.command()(onboard.onboard)
    app.command()(onboard.offboard)
    app.command()(bulk.bulk)
    app.command()(audit.audit)
    app.command()(doctor.doctor)
    ews.ews_app.command("allow")(ews.allow)
    app.add_typer(ews.ews_app, name="ews")
    app.command()(migrate.migrate)
    app.command()(probe.probe)
    app.command("sandbox")(sandbox.sandbox)


_register()


def main() -> None:
    """Console entry point."""
    sys.exit(app(standalone_mode=True))
