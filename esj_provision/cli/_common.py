"""Shared CLI helpers: consoles, error rendering, and option types reused across commands."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from ..errors import EsjProvisionError

_consoles: dict[str, Console] = {}


def console() -> Console:
    """stdout console (rich), created on first use so importing the CLI stays cheap."""
    if "out" not in _consoles:
        from rich.console import Console

        _consoles["out"] = Console(highlight=False, soft_wrap=True)
    return _consoles["out"]


def err_console() -> Console:
    if "err" not in _consoles:
        from rich.console import Console

        _consoles["err"] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _consoles["err"]


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


# -- options shared by every command that reaches a tenant ------------------------------------
# Typer has no option groups, so each such command lists these aliases; the values then go to
# connection_settings(locals()). Defaults are None: config.load_settings applies flag > environment > .env.


Cloud = Annotated[
    str | None,
    typer.Option(
        "--cloud",
        metavar="global|usgov-high|usgov-dod|china",
        help="Microsoft cloud (env ESJ_PROVISION_CLOUD).",
        rich_help_panel="Connection",
    ),
]
TenantId = Annotated[
    str | None,
    typer.Option(
        "--tenant-id",
        metavar="GUID|DOMAIN",
        help="Directory (tenant) (env AZURE_TENANT_ID).",
        rich_help_panel="Connection",
    ),
]
ClientId = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        metavar="GUID",
        help="The provisioning app's client id (env AZURE_CLIENT_ID).",
        rich_help_panel="Connection",
    ),
]
Auth = Annotated[
    str | None,
    typer.Option(
        "--auth",
        metavar="auto|secret|certificate|managed-identity|workload-identity",
        help="How to sign in (env ESJ_PROVISION_AUTH; default auto).",
        rich_help_panel="Connection",
    ),
]
SecretFile = Annotated[
    str | None,
    typer.Option(
        "--client-secret-file",
        metavar="PATH",
        help="File holding the client secret (a secret is never taken as a flag value) (env AZURE_CLIENT_SECRET).",
        rich_help_panel="Connection",
    ),
]
Certificate = Annotated[
    str | None,
    typer.Option(
        "--certificate",
        metavar="PATH",
        help="PEM (certificate + key) or PFX (env AZURE_CLIENT_CERTIFICATE_PATH; password in AZURE_CLIENT_CERTIFICATE_PASSWORD).",
        rich_help_panel="Connection",
    ),
]
AuthorityHost = Annotated[
    str | None,
    typer.Option(
        "--authority-host",
        metavar="URL",
        help="Entra ID host (env AZURE_AUTHORITY_HOST).",
        rich_help_panel="Connection",
    ),
]
GraphEndpoint = Annotated[
    str | None,
    typer.Option(
        "--graph-endpoint",
        metavar="URL",
        help="Graph root (env ESJ_PROVISION_GRAPH_ENDPOINT).",
        rich_help_panel="Connection",
    ),
]
ExchangeEndpoint = Annotated[
    str | None,
    typer.Option(
        "--exchange-endpoint",
        metavar="URL",
        help="Exchange admin host (env ESJ_PROVISION_EXCHANGE_ENDPOINT).",
        rich_help_panel="Connection",
    ),
]
CaBundle = Annotated[
    str | None,
    typer.Option(
        "--ca-bundle",
        metavar="PEM",
        help="CA certificates to trust for every connection (env ESJ_PROVISION_CA_BUNDLE).",
        rich_help_panel="Connection",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Log every request to stderr (credentials are never shown)."),
]


CONNECTION_ARGS = (
    "cloud",
    "tenant_id",
    "client_id",
    "auth",
    "client_secret_file",
    "certificate",
    "authority_host",
    "graph_endpoint",
    "exchange_endpoint",
    "ca_bundle",
)


def connection_settings(args: Mapping[str, Any]) -> Any:
    """Settings from a command's connection options (pass ``locals()``); see
    config.load_settings for the precedence of flags, environment and .env."""
    from ..config import load_settings

    kw = {name: args.get(name) for name in CONNECTION_ARGS}
    kw["certificate_path"] = kw.pop("certificate")
    return load_settings(**kw)


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
