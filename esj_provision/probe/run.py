"""Running a probe: the HTTP client, the setup from Settings, ``--wait`` and its durations."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .checks import Check, GrantReader, Prober, ProbeSetup, probe_until
from .targets import Target

if TYPE_CHECKING:
    from ..config import Settings

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_WAIT_S = 48 * 3600  # EwsAllowedAppIDs take up to 24 h; more than two days is a typo
# The clock and sleep --wait uses, looked up at call time: tests replace them (no real sleeping).
CLOCK: Callable[[], float] = time.monotonic
SLEEP: Callable[[float], Awaitable[Any]] = asyncio.sleep


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` (a bare number is seconds) → seconds."""
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        m = _DURATION.match(value)
        if not value or m is None or not any(m.groups()):
            raise UsageError(f"--wait {text!r} is not a duration", hint="for example 90s, 30m, 2h or 1h30m")
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0 or seconds > MAX_WAIT_S:
        raise UsageError(f"--wait {text!r} must be between 1s and 48h")
    return float(seconds)


def setup_from(
    settings: Settings,
    *,
    esj_client_id: str | None,
    secret: str | None,
    password: str | None,
    send_test_to: str | None,
) -> ProbeSetup:
    from ..microsoft.http import ssl_context

    return ProbeSetup(
        graph_endpoint=settings.graph_endpoint,
        default_authority=settings.authority_host,
        authority_override=settings.authority_host.rstrip("/") != settings.cloud.authority_host.rstrip("/"),
        ssl_context=ssl_context(settings.ca_bundle),
        tenant=settings.tenant_id,
        client_id=esj_client_id,
        secret=secret,
        password=password,
        send_test_to=send_test_to,
        timeout=min(settings.timeout, 30.0),
    )


def http_client(setup: ProbeSetup) -> Any:
    """httpx through the shared transport (client-request-id, retries of 429/5xx and connection
    failures), with no auth flow: the probe's requests carry ESJ's token, not the provisioning app's."""
    import httpx

    from ..microsoft.http import MicrosoftTransport

    inner = httpx.AsyncHTTPTransport(verify=setup.ssl_context, retries=0)
    transport = MicrosoftTransport(inner, services=())
    return httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(setup.timeout, connect=15.0),
        headers={"User-Agent": "esj-provision-probe"}, follow_redirects=False,
    )


async def run_probe(
    setup: ProbeSetup,
    targets: Sequence[Target],
    *,
    grants: GrantReader | None = None,
    wait_s: float = 0.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] | None = None,
    on_wait: Callable[[list[Check], float], None] = lambda pending, delay: None,
) -> list[Check]:
    async with http_client(setup) as client:
        prober = Prober(setup, client, grants)
        if wait_s <= 0:
            return await prober.probe_all(targets)
        return await probe_until(
            prober, targets, wait_s, clock=clock or CLOCK, sleep=sleep or SLEEP, on_wait=on_wait
        )
