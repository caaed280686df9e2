"""The one place for HTTP to Microsoft: TLS trust, tokens, retries, throttling and pacing.

Every request to Graph and Exchange (the msgraph-sdk's included) goes through one httpx transport,
:class:`MicrosoftTransport`, shared by one client per service. The parts, as in httpx and azure-core:

* :class:`ServiceAuth` (an ``httpx.Auth`` flow) marks each request with the service it is for
  (``extensions["esj_service"]``) and adds that service's bearer token; it refreshes the token once
  when the service answers 401 (a token that expired mid-run). The service comes from the client
  that sends the request, never from the URL alone: behind one gateway, Graph and Exchange share
  an origin and a URL prefix cannot tell them apart.
* :class:`RetryPolicy` decides whether and how long to wait before trying again
  (:meth:`RetryPolicy.decide`), and :class:`RetryBudget` counts one operation's attempts and waits:
  the transport, the items of a Graph ``$batch`` and the resend of a lost write all use them.
* :class:`AdaptivePacer` paces each service: it slows down on 429, honours ``Retry-After`` for
  every caller at once, and creeps back up towards the observed limit.
* The transport loop adds a ``client-request-id``, paces, sends, and retries 429, 502, 503, 504
  and connection failures. It never repeats a *write* after a timeout or a 5xx, since it may have
  been applied: it returns the response (or raises :class:`AmbiguousWriteError`) so the caller
  reads the state again first.

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
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
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
SERVICE_EXTENSION = "esj_service"  # graph | exchange: which token, pacer and stats a request belongs to
WEIGHT_EXTENSION = "esj_weight"  # how many calls a request counts for against a limit ($batch items)


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    max_total_wait: float = 300.0  # seconds spent waiting across all retries of one request
    base_delay: float = 0.5
    max_delay: float = 30.0
    token_refreshes: int = 1  # fresh tokens tried after a 401

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Retry-After when the service sent one (exactly as given), else exponential backoff with
        full jitter."""
        if retry_after is not None:
            return max(0.0, retry_after)
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    @staticmethod
    def retryable(status: int, *, write: bool) -> bool:
        """Whether an answer may be tried again at all. A write only on 429: the service refused it
        before doing anything, while after a 5xx it may have been applied."""
        return status in RETRYABLE_STATUS and (not write or status == 429)

    def decide(
        self, *, attempt: int, waited: float, delay: float, max_attempts: int | None = None
    ) -> float | None:
        """The pause before attempt ``attempt + 1``, or None when the budget is spent."""
        if attempt >= (max_attempts or self.max_attempts) or waited + delay > self.max_total_wait:
            return None
        return delay


@dataclass
class RetryBudget:
    """One operation's attempts and total wait under a :class:`RetryPolicy`: a request in the
    transport, the items of a Graph batch, a write resent after a read-back. ``sleep`` is the
    session's (a fake clock in tests), never a bare asyncio.sleep."""

    policy: RetryPolicy
    rng: random.Random
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    max_attempts: int | None = None  # the policy's unless given (writes resend fewer times)
    attempt: int = 0
    waited: float = 0.0

    def start(self) -> int:
        """Count one more attempt; its number."""
        self.attempt += 1
        return self.attempt

    def delay(self, retry_after: float | None = None) -> float:
        """What the policy asks to wait after the current attempt (before the budget check)."""
        return self.policy.backoff(max(1, self.attempt), retry_after, self.rng)

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """The pause before the next attempt, taken from the budget; None when it is spent."""
        return self.take(self.delay(retry_after))

    def take(self, delay: float) -> float | None:
        decided = self.policy.decide(
            attempt=self.attempt, waited=self.waited, delay=delay, max_attempts=self.max_attempts
        )
        if decided is not None:
            self.waited += decided
        return decided

    async def pause(self, retry_after: float | None = None) -> bool:
        """Sleep before the next attempt; False (without sleeping) when the budget is spent."""
        delay = self.next_delay(retry_after)
        if delay is None:
            return False
        await self.sleep(delay)
        return True


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

    From the second signal on, the ceiling is what the service admitted between the two: each
    429 finds the service's bucket empty, so the requests sent between two of them that got
    through measure its refill rate exactly, where an answer rate over a window also counts the
    burst a full bucket lets through after each pause (over a 5 s window, 8 requests/s looked like
    9 to 10, and the pacer kept running into the limit).
    """

    WINDOW_S = 5.0  # long enough to average over a Retry-After pause and the burst that follows it
    BACKOFF = 0.9
    NEAR = 0.97
    PROBE_PER_S = 0.02  # growth beyond NEAR * ceiling, as a fraction of the ceiling per second
    MIN_SIGNAL_GAP_S = 1.0  # two 429 signals closer than this say little about a rate

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
        self._admitted: deque[tuple[float, int]] = deque(maxlen=4096)  # (sent at, weight) that got through
        self._last_signal: float | None = None  # when the request of the last 429 signal was sent

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

    async def acquire(self, weight: int = 1) -> float:
        """Wait for the request's slot; returns when it is sent (for on_success/on_throttle)."""
        now = self._clock()
        start = max(now, self._next_slot, self._paused_until)
        if self.rate:
            self._next_slot = start + weight / self.rate
        self._sends.append((start, weight))
        if start > now:
            await self._sleep(start - now)
        return start

    def on_success(self, weight: int = 1, *, sent_at: float | None = None) -> None:
        now = self._clock()
        self._successes.append((now, weight))
        self._admitted.append((now if sent_at is None else sent_at, weight))
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

    def on_throttle(self, retry_after: float, *, refused: int = 0, sent_at: float | None = None) -> None:
        """A 429 with ``retry_after`` (as given), to a request sent at ``sent_at``. ``refused``: how
        much of an already paced request's weight the service turned away (the throttled items of
        a ``$batch``); their share of the reservation is given back, or the items sent again would
        wait for it on top of ``Retry-After`` (issue 14: retried 4-7 s apart when Retry-After said 1 s)."""
        now = self._clock()
        self.throttled += 1
        if refused and self.rate:
            self._next_slot = max(now, self._next_slot - refused / self.rate)
        self._paused_until = max(self._paused_until, now + retry_after)
        self._next_slot = max(self._next_slot, self._paused_until)
        if now < self._cooldown_until:
            return  # part of a burst already accounted for
        signal = now if sent_at is None else sent_at
        between = self._admitted_between(self._last_signal, signal)
        self._last_signal = signal
        answered = self._rate(self._successes, now)
        # With no measurable answer rate yet (a first burst), what was sent in the last second.
        estimate = answered if answered > 0 else float(sum(w for t, w in self._sends if t >= now - 1.0))
        self.ceiling = max(self.min_rate, between if between is not None else estimate)
        self.rate = max(self.min_rate, self.BACKOFF * self.ceiling)
        self._cooldown_until = self._paused_until + 1.0

    def _admitted_between(self, first: float | None, last: float) -> float | None:
        """Requests per second that got through between two 429 signals (sent after the first,
        up to the last), or None when there was no earlier signal or too little time between."""
        while self._admitted and first is not None and self._admitted[0][0] <= first:
            self._admitted.popleft()
        if first is None or last - first < self.MIN_SIGNAL_GAP_S:
            return None
        if len(self._admitted) == self._admitted.maxlen:
            return None  # more got through than the record holds: the count would fall short
        return sum(w for t, w in self._admitted if first < t <= last) / (last - first)


@dataclass(frozen=True)
class Resource:
    """A service reached with one token: its name, base URL and token scope."""

    name: str
    base_url: str
    scope: str

    def covers(self, url: httpx.URL) -> bool:
        """Whether a URL is under this service's base URL (a token is never sent elsewhere)."""
        text = str(url)
        return text.startswith(self.base_url + "/") or text == self.base_url


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)  # per resource, each attempt counted
    retries: int = 0
    throttled: int = 0
    token_refreshes: int = 0

    def count(self, resource: str) -> None:
        self.requests[resource] = self.requests.get(resource, 0) + 1


class ServiceAuth(httpx.Auth):
    """Names the service a request is for and adds its bearer token (httpx's auth flow).

    A client made for one service (``service``) marks every request it sends; a request sent
    through the shared general client carries the service in ``extensions["esj_service"]``, or
    else gets one only when its URL lies under exactly one service's base URL. A token is added
    only when the URL lies under that service's base URL. On a 401 the token is refreshed (at most
    ``policy.token_refreshes`` times) and the request sent again: a token that expired mid-run.
    """

    requires_request_body = True  # buffered, so the request can be sent again after a 401

    def __init__(
        self,
        resources: list[Resource],
        tokens: TokenProvider | None,
        policy: RetryPolicy,
        stats: Stats,
        *,
        service: str | None = None,
    ) -> None:
        self._resources = {r.name: r for r in resources}
        self._tokens = tokens
        self._policy = policy
        self._stats = stats
        self._service = service

    def resource_for(self, request: httpx.Request) -> Resource | None:
        name = request.extensions.get(SERVICE_EXTENSION) or self._service
        if name is not None:
            return self._resources.get(str(name))
        matches = [r for r in self._resources.values() if r.covers(request.url)]
        return matches[0] if len(matches) == 1 else None  # one origin for both: the URL cannot tell

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        resource = self.resource_for(request)
        if resource is not None:
            request.extensions = {**request.extensions, SERVICE_EXTENSION: resource.name}
        if resource is None or self._tokens is None or not resource.covers(request.url):
            yield request
            return
        token = await self._tokens.get(resource.scope)
        for refresh in range(self._policy.token_refreshes + 1):
            request.headers["Authorization"] = f"Bearer {token.value}"
            response = yield request
            if response.status_code != 401 or refresh == self._policy.token_refreshes:
                return
            self._stats.token_refreshes += 1
            token = await self._tokens.get(resource.scope, force_refresh=True, rejected=token.value)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("esj-provision talks to Microsoft asynchronously only")


class MicrosoftTransport(httpx.AsyncBaseTransport):
    """Paces, sends and retries one request (see the module docstring); tokens are the auth
    flow's. The service a request is for is in its ``esj_service`` extension."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        policy: RetryPolicy | None = None,
        pacers: dict[str, AdaptivePacer] | None = None,
        services: tuple[str, ...] = ("graph", "exchange"),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._inner = inner
        self.policy = policy or RetryPolicy()
        self.pacers = pacers if pacers is not None else {name: AdaptivePacer(sleep=sleep) for name in services}
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.stats = Stats()
        self._closed = False

    @property
    def sleep(self) -> Callable[[float], Awaitable[Any]]:
        """The sleep used for backoff (a recording fake in tests)."""
        return self._sleep

    def budget(self, *, max_attempts: int | None = None) -> RetryBudget:
        """A fresh retry budget under this transport's policy, sleeping with its sleep: for callers
        that retry parts of a response (a Graph batch's items) or resend a write."""
        return RetryBudget(self.policy, self._rng, self._sleep, max_attempts=max_attempts)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = str(request.extensions.get(SERVICE_EXTENSION) or "other")
        pacer = self.pacers.get(name)
        write = bool(request.extensions.get(WRITE_EXTENSION))
        weight = int(request.extensions.get(WEIGHT_EXTENSION, 1))
        label = request.headers.get("X-CmdletName") or request.url.path
        request.headers.setdefault("client-request-id", str(uuid.uuid4()))
        request.headers["return-client-request-id"] = "true"
        budget = self.budget()
        await request.aread()  # buffer the body so a retry can send it again
        while True:
            budget.start()
            sent_at = await pacer.acquire(weight) if pacer else None
            self.stats.count(name)
            started = time.monotonic()
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError as exc:
                delay = self._after_failure(request, exc, budget, write=write, label=label)
                await self._sleep(delay)
                continue
            self._log(request, response, label, started)
            status = response.status_code
            if not RetryPolicy.retryable(status, write=write):
                if pacer and status < 400 and weight == 1:
                    # A weighted request ($batch) may be partly throttled inside a 200: its
                    # sender reports the items that really got through.
                    pacer.on_success(sent_at=sent_at)
                return response
            delay = budget.delay(parse_retry_after(response.headers.get("Retry-After")))
            if status == 429:
                self.stats.throttled += 1
                if pacer:
                    pacer.on_throttle(delay, sent_at=sent_at)  # Retry-After (or backoff) pauses every caller
            if budget.take(delay) is None:
                return response  # the caller turns it into ThrottledError/TransientError
            await response.aread()
            await response.aclose()
            self.stats.retries += 1
            log.debug("%d on %s; retry %d after %.2fs", status, label, budget.attempt, delay)
            if status != 429 or pacer is None:
                await self._sleep(delay)  # with a pacer, acquire() waits out Retry-After for everyone

    def _after_failure(
        self, request: httpx.Request, exc: httpx.TransportError, budget: RetryBudget, *, write: bool, label: str
    ) -> float:
        """The pause before trying again after a connection failure, or the error to raise."""
        if not isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
            raise exc  # a misuse (unsupported protocol, invalid URL): no retry makes it work
        sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        if sent and write:
            # The request may have reached the service: never repeat a write blindly.
            raise AmbiguousWriteError(
                f"{label}: the connection failed after the request was sent ({exc.__class__.__name__}); "
                "the change may or may not have been applied",
                hint="the state is read again before anything is repeated",
            ) from None
        delay = budget.next_delay()
        if delay is None and not sent:
            raise TransientError(
                f"cannot connect to {request.url.host}: {exc.__class__.__name__}",
                hint="check the network, the endpoint overrides and any proxy",
            ) from None
        if delay is None:
            raise TransientError(
                f"{label}: {exc.__class__.__name__} after {budget.attempt} attempts",
                hint="Microsoft did not answer; try again later",
            ) from None
        log.debug("%s on %s; retry %d in %.2fs", exc.__class__.__name__, label, budget.attempt, delay)
        self.stats.retries += 1
        return delay

    @staticmethod
    def _log(request: httpx.Request, response: httpx.Response, label: str, started: float) -> None:
        log.debug(
            "%s %s [%s] -> %d in %.0f ms (request-id %s, client-request-id %s)",
            request.method,
            request.url.copy_with(query=None),
            label,
            response.status_code,
            (time.monotonic() - started) * 1000,
            response.headers.get("request-id", "-"),
            request.headers.get("client-request-id"),
        )

    async def aclose(self) -> None:
        if not self._closed:  # shared by several clients, each of which closes it
            self._closed = True
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
    """Owns the transport (one connection pool) and the httpx clients over it: one per service,
    whose requests always carry that service, and a general one (tests, absolute links)."""

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
        self.transport = MicrosoftTransport(inner, policy=policy, sleep=sleep)
        self._tokens = tokens
        self.client = self._client(None)
        self.graph_client = self._client("graph")
        self.exchange_client = self._client("exchange")

    def _client(self, service: str | None) -> httpx.AsyncClient:
        auth = ServiceAuth(
            [self.graph, self.exchange], self._tokens, self.transport.policy, self.transport.stats, service=service
        )
        return httpx.AsyncClient(
            transport=self.transport,
            auth=auth,
            timeout=httpx.Timeout(self.settings.timeout, connect=15.0),
            headers={"User-Agent": "esj-provision"},
            follow_redirects=False,
        )

    def pacer(self, service: str) -> AdaptivePacer | None:
        return self.transport.pacers.get(service)

    def budget(self, *, max_attempts: int | None = None) -> RetryBudget:
        """A retry budget under the session's policy, sleeping on the session's clock."""
        return self.transport.budget(max_attempts=max_attempts)

    async def aclose(self) -> None:
        for client in (self.client, self.graph_client, self.exchange_client):
            await client.aclose()
