"""The one place for HTTP to Microsoft: TLS trust, tokens, retries, throttling and pacing.

Every request to Graph and Exchange (the msgraph-sdk's included) goes through
:class:`MicrosoftTransport`, an httpx transport that:

* adds a ``client-request-id`` to every request and the bearer token of the resource it targets;
* refreshes the token once when a service answers 401 (a token that expired mid-run);
* paces each resource adaptively (:class:`AdaptivePacer`): it slows down on 429, honours
  ``Retry-After`` for every caller at once, and creeps back up towards the observed limit;
* retries 429, 502, 503, 504 and connection failures with ``Retry-After`` or exponential backoff
  with jitter, a bounded number of times and with the total wait capped;
* never repeats a *write* after a timeout or a 5xx, since it may have been applied: it returns the
  response (or raises :class:`AmbiguousWriteError`) so the caller reads the state again first.

Mark a request as a write with ``extensions={"esj_write": True}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import AmbiguousWriteError, TransientError

if TYPE_CHECKING:
    from ..config import Settings
    from .credentials import TokenProvider

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
WRITE_EXTENSION = "esj_write"
WEIGHT_EXTENSION = "esj_weight"  # how many calls a request counts for against a limit ($batch items)


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    max_total_wait: float = 300.0  # seconds spent waiting across all retries of one request
    base_delay: float = 0.5
    max_delay: float = 30.0
    token_refreshes: int = 1  # fresh tokens tried after a 401

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Retry-After when the service sent one, else exponential backoff with full jitter."""
        if retry_after is not None:
            return max(0.0, retry_after)
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class AdaptivePacer:
    """Spaces the requests to one service so that a throttling limit is met, not hammered.

    Unpaced until the first 429. Then the rate is set just below the rate the service was
    answering when the 429 came, everyone waits out ``Retry-After``, and the rate climbs back
    quickly to 97% of that ceiling and only slowly beyond it, so that 429s (each costing a pause
    for every caller) stay rare. The 429s of one burst (requests already in flight when the first
    one came back) count as one signal, not as many. A request may weigh more than one (a Graph
    ``$batch`` of 20 counts 20 against the limit).
    """

    WINDOW_S = 5.0  # long enough to average over a Retry-After pause and the burst that follows it
    BACKOFF = 0.9
    NEAR = 0.97
    PROBE_PER_S = 0.02  # growth beyond NEAR * ceiling, as a fraction of the ceiling per second

    def __init__(
        self,
        *,
        max_rate: float | None = None,
        min_rate: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.rate: float | None = max_rate
        self.max_rate = max_rate
        self.min_rate = min_rate
        self.ceiling: float | None = None
        self.throttled = 0
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._cooldown_until = 0.0
        self._since = clock()  # rates are measured from here at the earliest
        self._last_growth = clock()
        self._successes: deque[tuple[float, int]] = deque(maxlen=4096)
        self._sends: deque[tuple[float, int]] = deque(maxlen=4096)

    def _rate(self, events: deque[tuple[float, int]], now: float) -> float:
        """Events per second over the recent window, measured between its first and last event
        (not from the window's start, which would dilute a burst that followed a quiet spell)."""
        while events and events[0][0] < max(now - self.WINDOW_S, self._since):
            events.popleft()
        if len(events) < 2:
            return 0.0
        # From the first event in the window to now: a pause (Retry-After) counts, a quiet
        # spell before the first event does not.
        span = now - events[0][0]
        if span < 0.25:
            return 0.0  # too short to tell a rate from a burst
        return (sum(w for _, w in events) - events[0][1]) / span

    def observed_rate(self) -> float:
        return self._rate(self._successes, self._clock())

    async def acquire(self, weight: int = 1) -> None:
        now = self._clock()
        start = max(now, self._next_slot, self._paused_until)
        if self.rate:
            self._next_slot = start + weight / self.rate
        self._sends.append((start, weight))
        if start > now:
            await self._sleep(start - now)

    def on_success(self, weight: int = 1) -> None:
        now = self._clock()
        self._successes.append((now, weight))
        elapsed, self._last_growth = now - self._last_growth, now
        if self.rate is None or self.ceiling is None:
            return
        if self.rate < self.NEAR * self.ceiling:
            self.rate = min(self.NEAR * self.ceiling, self.rate * (1.05**weight))
        else:
            # Probe beyond the ceiling slowly at first, then faster the longer no 429 has come:
            # a ceiling guessed from one early burst may be far below the real limit.
            quiet = max(0.0, now - self._cooldown_until)
            self.rate += self.ceiling * self.PROBE_PER_S * min(elapsed, 1.0) * (1.0 + quiet / 5.0)
        if self.max_rate:
            self.rate = min(self.rate, self.max_rate)

    def on_throttle(self, retry_after: float) -> None:
        now = self._clock()
        self.throttled += 1
        self._paused_until = max(self._paused_until, now + retry_after)
        self._next_slot = max(self._next_slot, self._paused_until)
        if now < self._cooldown_until:
            return  # part of a burst already accounted for
        answered = self._rate(self._successes, now)
        # With no measurable answer rate yet (a first burst), what was sent in the last second.
        estimate = answered if answered > 0 else float(sum(w for t, w in self._sends if t >= now - 1.0))
        self.ceiling = max(self.min_rate, estimate)
        self.rate = max(self.min_rate, self.BACKOFF * self.ceiling)
        self._cooldown_until = self._paused_until + 1.0


@dataclass(frozen=True)
class Resource:
    """A service reached with one token: its base URL and its token scope."""

    name: str
    base_url: str
    scope: str


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)  # per resource, each attempt counted
    retries: int = 0
    throttled: int = 0
    token_refreshes: int = 0

    def count(self, resource: str) -> None:
        self.requests[resource] = self.requests.get(resource, 0) + 1


class MicrosoftTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        resources: list[Resource],
        tokens: TokenProvider | None,
        policy: RetryPolicy | None = None,
        pacers: dict[str, AdaptivePacer] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._inner = inner
        self._resources = sorted(resources, key=lambda r: len(r.base_url), reverse=True)
        self._tokens = tokens
        self.policy = policy or RetryPolicy()
        self.pacers = pacers if pacers is not None else {r.name: AdaptivePacer(sleep=sleep) for r in resources}
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.stats = Stats()

    @property
    def sleep(self) -> Callable[[float], Awaitable[Any]]:
        """The sleep used for backoff (a recording fake in tests). Callers that retry parts of a
        response themselves, such as the items of a Graph batch, wait with it too."""
        return self._sleep

    def resource_for(self, url: httpx.URL) -> Resource | None:
        text = str(url)
        for r in self._resources:
            if text.startswith(r.base_url + "/") or text == r.base_url:
                return r
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resource = self.resource_for(request.url)
        name = resource.name if resource else "other"
        pacer = self.pacers.get(name)
        write = bool(request.extensions.get(WRITE_EXTENSION))
        request.headers.setdefault("client-request-id", str(uuid.uuid4()))
        request.headers["return-client-request-id"] = "true"
        attempt, waited, refreshes, force = 0, 0.0, 0, False
        used: str | None = None
        await request.aread()  # buffer the body so a retry can send it again
        while True:
            attempt += 1
            weight = int(request.extensions.get(WEIGHT_EXTENSION, 1))
            if pacer:
                await pacer.acquire(weight)
            if resource is not None and self._tokens is not None:
                if force:
                    token = await self._tokens.get(resource.scope, force_refresh=True, rejected=used)
                else:
                    token = await self._tokens.get(resource.scope)
                used = token.value
                request.headers["Authorization"] = f"Bearer {token.value}"
                force = False
            self.stats.count(name)
            started = time.monotonic()
            label = request.headers.get("X-CmdletName") or request.url.path
            try:
                response = await self._inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached the service: safe to try again, write or not.
                delay = self.policy.backoff(attempt, None, self._rng)
                if attempt >= self.policy.max_attempts or waited + delay > self.policy.max_total_wait:
                    raise TransientError(
                        f"cannot connect to {request.url.host}: {exc.__class__.__name__}",
                        hint="check the network, the endpoint overrides and any proxy",
                    ) from None
                log.debug("connect failed (%s); retry %d in %.2fs", exc.__class__.__name__, attempt, delay)
                waited += delay
                self.stats.retries += 1
                await self._sleep(delay)
                continue
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if write:
                    raise AmbiguousWriteError(
                        f"{label}: the connection failed after the request was sent ({exc.__class__.__name__}); "
                        "the change may or may not have been applied",
                        hint="the state is read again before anything is repeated",
                    ) from None
                delay = self.policy.backoff(attempt, None, self._rng)
                if attempt >= self.policy.max_attempts or waited + delay > self.policy.max_total_wait:
                    raise TransientError(
                        f"{label}: {exc.__class__.__name__} after {attempt} attempts",
                        hint="Microsoft did not answer; try again later",
                    ) from None
                waited += delay
                self.stats.retries += 1
                await self._sleep(delay)
                continue

            status = response.status_code
            log.debug(
                "%s %s [%s] -> %d in %.0f ms (request-id %s, client-request-id %s)",
                request.method,
                request.url.copy_with(query=None),
                label,
                status,
                (time.monotonic() - started) * 1000,
                response.headers.get("request-id", "-"),
                request.headers.get("client-request-id"),
            )
            if (
                status == 401
                and resource is not None
                and self._tokens is not None
                and refreshes < self.policy.token_refreshes
            ):
                await response.aread()
                await response.aclose()
                refreshes += 1
                self.stats.token_refreshes += 1
                force = True
                attempt -= 1  # a token refresh is not a retry of the service's failure
                continue
            if status not in RETRYABLE_STATUS or (write and status != 429):
                # Writes are retried only on 429 (the service refused before doing anything).
                if pacer and status < 400 and weight == 1:
                    # A weighted request ($batch) may be partly throttled inside a 200: its
                    # sender reports the items that really got through.
                    pacer.on_success()
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = self.policy.backoff(attempt, retry_after, self._rng)
            if status == 429:
                self.stats.throttled += 1
                if pacer:
                    # Retry-After, or exponential backoff when none was sent, pauses every caller.
                    pacer.on_throttle(delay)
            if attempt >= self.policy.max_attempts or waited + delay > self.policy.max_total_wait:
                return response  # the caller turns it into ThrottledError/TransientError
            await response.aread()
            await response.aclose()
            waited += delay
            self.stats.retries += 1
            log.debug("%d on %s; retry %d after %.2fs", status, label, attempt, delay)
            if status != 429 or pacer is None:
                await self._sleep(delay)  # with a pacer, acquire() waits out Retry-After for everyone

    async def aclose(self) -> None:
        await self._inner.aclose()


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """TLS is always verified. ESJ_PROVISION_CA_BUNDLE replaces the trust store for every
    connection (as REQUESTS_CA_BUNDLE does for requests); otherwise the system store is used,
    which honours SSL_CERT_FILE, plus REQUESTS_CA_BUNDLE if set."""
    import os

    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    ctx = ssl.create_default_context()
    extra = os.environ.get("REQUESTS_CA_BUNDLE")
    if extra and os.path.isfile(extra):
        ctx.load_verify_locations(cafile=extra)
    if not ctx.get_ca_certs():
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())
    return ctx


class MicrosoftHttp:
    """Owns the shared httpx client for Graph and Exchange, and its transport."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenProvider | None,
        *,
        policy: RetryPolicy | None = None,
        inner: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_connections: int = 20,
    ) -> None:
        self.settings = settings
        self.graph = Resource("graph", settings.graph_endpoint, settings.cloud.graph_scope)
        self.exchange = Resource("exchange", settings.exchange_endpoint, settings.cloud.exchange_scope)
        if inner is None:
            inner = httpx.AsyncHTTPTransport(
                verify=ssl_context(settings.ca_bundle),
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
                retries=0,
            )
        self.transport = MicrosoftTransport(
            inner, resources=[self.graph, self.exchange], tokens=tokens, policy=policy, sleep=sleep
        )
        self.client = httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(settings.timeout, connect=15.0),
            headers={"User-Agent": "esj-provision"},
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
