"""The connection options, declared once and added to every command that reaches a tenant.

Typer has no option groups (fastapi/typer#153). :func:`tenant_command` is the signature-merging
decorator its maintainers suggest: the command lists only its own options and takes ``settings``;
the decorator appends the connection options (and ``--verbose``) to the signature Typer reads,
takes their values off the call, builds :class:`~esj_provision.config.Settings` with
``config.load_settings`` (flag > environment > .env > cloud defaults) and passes it on. The flags,
their help and their order in ``--help`` stay what they were when every command spelled them out.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from ._common import setup_logging

F = TypeVar("F", bound=Callable[..., Any])

# Defaults are None: config.load_settings applies flag > environment > .env > cloud defaults.
# Options that onboard and bulk share word for word (both emit options and may probe them).
EsjClientId = Annotated[
    str | None,
    typer.Option(
        "--esj-client-id",
        metavar="GUID",
        help="The ESJ app's client id, for the options (env ESJ_PROVISION_ESJ_CLIENT_ID).",
    ),
]
ProbeWait = Annotated[
    str | None,
    typer.Option(
        "--wait", metavar="DURATION", help="With --probe: retry pending checks up to DURATION (90s, 30m, 2h)."
    ),
]

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


# Parameter name -> (type, load_settings keyword). Order is the order in --help.
_CONNECTION: dict[str, tuple[Any, str]] = {
    "cloud": (Cloud, "cloud"),
    "tenant_id": (TenantId, "tenant_id"),
    "client_id": (ClientId, "client_id"),
    "auth": (Auth, "auth"),
    "client_secret_file": (SecretFile, "client_secret_file"),
    "certificate": (Certificate, "certificate_path"),
    "authority_host": (AuthorityHost, "authority_host"),
    "graph_endpoint": (GraphEndpoint, "graph_endpoint"),
    "exchange_endpoint": (ExchangeEndpoint, "exchange_endpoint"),
    "ca_bundle": (CaBundle, "ca_bundle"),
}


def tenant_command(fn: F) -> F:
    """Give ``fn(..., settings)`` the connection options and ``--verbose``; see the module docstring.

    ``fn`` must take a keyword parameter ``settings`` and none named like a connection option.
    """
    sig = inspect.signature(fn)
    if "settings" not in sig.parameters:
        raise TypeError(f"{fn.__name__} must take a 'settings' parameter")
    clash = set(sig.parameters) & {*_CONNECTION, "verbose"}
    if clash:
        raise TypeError(f"{fn.__name__} declares connection option(s) itself: {sorted(clash)}")
    # The command modules use `from __future__ import annotations`: resolve the string annotations
    # in the command's own module, since Typer reads the wrapper's, not the command's.
    own = [
        p.replace(annotation=_resolve(p.annotation, fn))
        for name, p in sig.parameters.items()
        if name != "settings"
    ]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
        for name, (kind, _) in _CONNECTION.items()
    ]
    added.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose))

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        from ..config import load_settings

        flags = {keyword: kwargs.pop(name, None) for name, (_, keyword) in _CONNECTION.items()}
        setup_logging(bool(kwargs.pop("verbose", False)))
        return fn(*args, settings=load_settings(**flags), **kwargs)

    params = sorted(own, key=lambda p: p.kind) + added
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # Typer must read the merged signature, not the command's own
    return command  # type: ignore[return-value]


def _resolve(annotation: Any, fn: Callable[..., Any]) -> Any:
    if isinstance(annotation, str):
        return eval(annotation, fn.__globals__)  # the command's own module namespace
    return annotation
