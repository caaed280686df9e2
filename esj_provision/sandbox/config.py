"""Sandbox settings and the checks on them. Cheap to import: no aiohttp, no cryptography.

The CLI parses its options into :class:`SandboxConfig` before importing anything heavy, so a bad
``--host`` or ``--latency-ms`` is refused in milliseconds.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path


class SandboxError(ValueError):
    """A bad sandbox setting or state file. The sandbox never imports the client side, so it has its
    own error; the CLI's ``sandbox`` command turns it into a usage (exit 2) or configuration error.
    ``usage`` is False for a problem with a file rather than with an option."""

    def __init__(self, message: str, *, hint: str | None = None, usage: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.usage = usage

    def __str__(self) -> str:
        return self.message

# The environment a client needs (``sb.env``), in the order the CLI prints it.
CLIENT_ENV_VARS = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_AUTHORITY_HOST",
    "ESJ_PROVISION_GRAPH_ENDPOINT",
    "ESJ_PROVISION_EXCHANGE_ENDPOINT",
    "ESJ_PROVISION_CA_BUNDLE",
)
# What ESJ itself signs in with, and where its mail protocols are (``sb.esj_env``; the probe reads
# these). Kept apart in-process: ESJ_PROVISION_ESJ_CLIENT_ID is also onboard's --esj-client-id.
ESJ_ENV_VARS = (
    "ESJ_PROVISION_ESJ_CLIENT_ID",
    "ESJ_PROVISION_ESJ_CLIENT_SECRET",
    "ESJ_PROVISION_ESJ_PASSWORD",
    "ESJ_PROVISION_IMAP_ENDPOINT",
    "ESJ_PROVISION_SMTP_ENDPOINT",
    "ESJ_PROVISION_EWS_ENDPOINT",
)
ENV_VARS = CLIENT_ENV_VARS + ESJ_ENV_VARS  # everything --env-file holds
# Shown in the env file only, never in the banner (the sandbox's own throwaway secrets).
ENV_FILE_ONLY = ("ESJ_PROVISION_ESJ_CLIENT_SECRET", "ESJ_PROVISION_ESJ_PASSWORD")
SECRET_ENV = "ESJ_SANDBOX_CLIENT_SECRET"
PFX_PASSWORD_ENV = "ESJ_SANDBOX_PFX_PASSWORD"

MAX_BODY_BYTES = 1024 * 1024
MAX_LATENCY_MS = 10_000  # a typo such as 50000 must not hang a CI job for minutes per request
MAX_CALL_LOG = 100_000
MAX_GENERATED_MAILBOXES = 1_000_000
MAX_PAGE_SIZE = 100_000
MAX_OUTLOOK_CONCURRENCY = 1_000
MAX_PROPAGATION_S = 86_400.0  # Exchange's longest published delay (EwsAllowedAppIDs): 24 hours


def check_loopback(host: str) -> str:
    """Return the address to bind, or refuse: the sandbox has no auth on its control API and hands
    out tokens for a fixed secret, so it must never be reachable from another machine."""
    h = (host or "").strip().strip("[]")
    if h.lower() == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        raise SandboxError(
            f"--host {host!r} is not a loopback address",
            hint="the sandbox listens on loopback only: use 127.0.0.1 (default), ::1 or localhost",
        ) from None
    if not addr.is_loopback:
        raise SandboxError(
            f"--host {host!r} is not a loopback address",
            hint="the sandbox listens on loopback only: use 127.0.0.1 (default), ::1 or localhost",
        )
    return str(addr)


def parse_latency(value: str | int | tuple[int, int] | None) -> tuple[int, int]:
    """``N`` or ``MIN-MAX`` milliseconds, capped at :data:`MAX_LATENCY_MS`."""
    if value is None or value == "":
        return (0, 0)
    if isinstance(value, tuple):
        lo, hi = value
    elif isinstance(value, int):
        lo = hi = value
    else:
        text = value.strip()
        try:
            if "-" in text:
                a, b = text.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(text)
        except ValueError:
            raise SandboxError(
                f"--latency-ms {value!r} is not N or MIN-MAX", hint="e.g. --latency-ms 50 or 20-200"
            ) from None
    if lo < 0 or hi < lo:
        raise SandboxError(f"--latency-ms {value!r}: need 0 <= MIN <= MAX")
    return (min(lo, MAX_LATENCY_MS), min(hi, MAX_LATENCY_MS))


@dataclass
class SandboxConfig:
    host: str = "127.0.0.1"
    port: int = 0
    dir: Path | None = None  # None: a temp dir, removed at stop
    state_path: Path | None = None  # None: state lives in memory only
    page_size: int = 1000
    throttle_rps: float | None = None  # both services, unless one of the two below is given
    graph_rps: float | None = None
    exchange_rps: float | None = None
    outlook_concurrency: int = 0  # Outlook requests in flight per app id (Microsoft's: 4); 0 = no limit
    fault_rate: float = 0.0
    seed: int = 0
    latency_ms: tuple[int, int] = (0, 0)
    token_lifetime: int = 3599
    mailboxes: int = 0
    upn_domain: str | None = None  # None: the initial domain (UPN differs from the address)
    client_secret: str | None = None  # None: random per start
    pfx_password: str | None = None  # None: random per start
    max_runtime: float | None = None
    imap_port: int = 0
    smtp_port: int = 0
    propagation_s: float = 0.0  # how long a new grant takes to reach the mail protocols
    esj_password: str | None = None  # the ESJ service account's; None: random per start
    verbose: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def rate(self, service: str) -> float | None:
        """Requests per second the service admits before 429: its own flag, else --throttle-rps."""
        own = {"graph": self.graph_rps, "exchange": self.exchange_rps}.get(service)
        return own if own is not None else self.throttle_rps

    def validate(self) -> SandboxConfig:
        self.host = check_loopback(self.host)
        for flag, port in (("--port", self.port), ("--imap-port", self.imap_port), ("--smtp-port", self.smtp_port)):
            if not 0 <= port <= 65535:
                raise SandboxError(f"{flag} {port} is out of range 0..65535")
        if not (math.isfinite(self.propagation_s) and 0 <= self.propagation_s <= MAX_PROPAGATION_S):
            raise SandboxError(f"--propagation-s must be 0..{MAX_PROPAGATION_S:g} seconds")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise SandboxError(f"--page-size must be 1..{MAX_PAGE_SIZE}")
        for flag, rps in (("--throttle-rps", self.throttle_rps), ("--graph-rps", self.graph_rps),
                          ("--exchange-rps", self.exchange_rps)):
            if rps is not None and (not math.isfinite(rps) or rps <= 0):
                raise SandboxError(f"{flag} must be a positive number")
        if not 0 <= self.outlook_concurrency <= MAX_OUTLOOK_CONCURRENCY:
            raise SandboxError(
                f"--outlook-concurrency must be 0..{MAX_OUTLOOK_CONCURRENCY}",
                hint="Microsoft's limit is 4 Outlook requests in flight per app; 0 turns the limit off",
            )
        if not 0.0 <= self.fault_rate <= 1.0:
            raise SandboxError("--fault-rate must be between 0 and 1")
        if not 1 <= self.token_lifetime <= 86_400:
            raise SandboxError("--token-lifetime must be 1..86400 seconds")
        if not 0 <= self.mailboxes <= MAX_GENERATED_MAILBOXES:
            raise SandboxError(f"--mailboxes must be 0..{MAX_GENERATED_MAILBOXES}")
        if self.max_runtime is not None and self.max_runtime <= 0:
            raise SandboxError("--max-runtime must be positive")
        if self.upn_domain is not None and not re.fullmatch(r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}", self.upn_domain):
            raise SandboxError(f"--upn-domain {self.upn_domain!r}: give a domain such as contoso.com")
        self.latency_ms = parse_latency(self.latency_ms)
        return self
