"""A local HTTPS stand-in for Entra ID, Microsoft Graph and Exchange Online (like Azurite or
LocalStack), shipped with esj-provision so it can be tested end to end without a tenant.

``from esj_provision.sandbox import Sandbox`` gives the in-process server; ``esj-provision
sandbox`` runs it from the command line. Importing this package is cheap: aiohttp and
cryptography load only when :class:`Sandbox` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ENV_VARS, SandboxConfig, SandboxError
from .tenant import (
    DIRECTORY_ROLES,
    ESJ_APP_ID,
    FIXED_SECRETS,
    MAIL_DOMAIN,
    NO_DIRECTORY_ROLE_APP_ID,
    NO_EXCHANGE_ROLE_APP_ID,
    PROVISIONING_APP_ID,
    TENANT_DOMAIN,
    TENANT_ID,
)

if TYPE_CHECKING:
    from .runner import Sandbox

__all__ = [
    "DIRECTORY_ROLES",
    "ENV_VARS",
    "ESJ_APP_ID",
    "FIXED_SECRETS",
    "MAIL_DOMAIN",
    "NO_DIRECTORY_ROLE_APP_ID",
    "NO_EXCHANGE_ROLE_APP_ID",
    "PROVISIONING_APP_ID",
    "TENANT_DOMAIN",
    "TENANT_ID",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
]


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from .runner import Sandbox

        return Sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
