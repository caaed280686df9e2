"""Shared CLI helpers: consoles, error rendering, and option types reused across commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..errors import EsjProvisionError

def print_error(exc: EsjProvisionError) -> None:
    """One clear line (plus the hint and Microsoft's request id) on stderr; never a traceback."""
    lines = [f"error: {exc.message}"]
    for problem in getattr(exc, "problems", []) or []:
        if isinstance(problem, tuple):
            lines.append(f"  line {problem[0]}: {problem[1]}")
        else:
            lines.append(f"  - {problem}")
    if exc.hint:
        lines.append(f"hint: {exc.hint}")
    if exc.request_id:
        lines.append(f"request-id: {exc.request_id} (quote it to Microsoft support)")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def print_warning(text: str) -> None:
    """A warning the core handed back (e.g. a stale journal lock taken over), on stderr."""
    sys.stderr.write(f"warning: {text}\n")


def print_usage_error(exc: Any) -> None:
    """A command-line error found by Typer/click, in the tool's own one-line form (exit status 2)."""
    message = exc.format_message()
    command = exc.ctx.command_path if exc.ctx is not None else "esj-provision"
    from ..errors import UsageError

    print_error(UsageError(message[:1].lower() + message[1:], hint=f"see `{command} --help`"))


def from_env(flag: str | Path | None, var: str) -> str | None:
    """A flag's value, else the variable from the environment or ``./.env``.

    The one way every command reads a variable, the connection options included (config.load_settings
    reads the same merged environment): flag > environment > .env. Typer's ``envvar=`` would read
    only the process environment, which is how ``emit`` once ignored a .env that ``onboard`` honoured.
    """
    if flag is not None and str(flag) != "":
        return str(flag)
    from ..config import environment

    value = environment().get(var, "").strip()
    return value or None


def setup_logging(verbose: bool) -> None:
    import logging

    if not verbose:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("esj_provision")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def run_async(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
