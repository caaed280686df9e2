"""A session with one tenant: the token provider, the shared HTTP client, Graph and Exchange.

Commands open one session per run, so tokens, TLS and connection pools are shared by every call
(and by every row of a bulk run), and tenant-wide facts (the SMTP AUTH switch) are read once, as is
each service account's own SMTP AUTH setting (most manifests name one account on every row).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..config import Settings
from ..models import CasMailbox, TransportConfig

if TYPE_CHECKING:
    import httpx

    from ..models import ExchangeMailbox, SendAsGrant
    from ..provision.esj_app import AppIdentity
    from ..provision.writes import Step
    from .credentials import TokenProvider
    from .exchange import ExchangeClient
    from .graph import GraphClient, LookupResult
    from .http import MicrosoftHttp, RetryPolicy

T = TypeVar("T")


@dataclass
class RunCache:
    """What one run reads or does once however many rows need it (apps by lowercased client id)."""

    # bulk/audit: a trustee account's Graph lookup (usually one service account for every row)
    trustee_lookups: dict[str, LookupResult] = field(default_factory=dict)
    # ESJ apps (trustee apps, scoped apps) resolved in Graph and Exchange, by client id
    apps: dict[str, asyncio.Future[AppIdentity]] = field(default_factory=dict)
    # an ESJ app's Exchange service principal registration, made at most once per run, by client id
    registrations: dict[str, asyncio.Future[Step]] = field(default_factory=dict)


class Session:
    def __init__(
        self,
        settings: Settings,
        *,
        tokens: TokenProvider | None = None,
        inner: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
        max_connections: int = 20,
    ) -> None:
        from .credentials import TokenProvider
        from .exchange import ExchangeClient
        from .graph import GraphClient
        from .http import MicrosoftHttp

        settings.require_tenant()
        self.settings = settings
        self.tokens = tokens if tokens is not None else TokenProvider(settings)
        self.http: MicrosoftHttp = MicrosoftHttp(
            settings, self.tokens, policy=policy, inner=inner, max_connections=max_connections
        )
        assert settings.tenant_id is not None
        self.graph: GraphClient = GraphClient(self.http)
        self.exchange: ExchangeClient = ExchangeClient(self.http, settings.tenant_id)
        self._reads: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        self.cache = RunCache()

    async def tenant_guid(self) -> str | None:
        """The tenant as a GUID, for the ESJ options: the configured id when it is one, else the
        ``tid`` claim of the Graph token (the tenant given as its domain, contoso.onmicrosoft.com,
        signs in as well), else None. Uses the cached token: no extra sign-in."""
        from ..esj.request import tenant_guid

        known = tenant_guid(self.settings.tenant_id)
        if known is not None:
            return known
        token = await self.tokens.get(self.http.graph.scope)
        return tenant_guid(None, token.claims().get("tid"))

    async def _once(
        self,
        key: tuple[str, ...],
        read: Callable[[], Awaitable[T]],
        *,
        fresh: bool = False,
        keep: bool = True,
        on_send: Callable[[], None] | None = None,
    ) -> T:
        """``read()`` once per session for ``key``, however many callers ask at once. A failed read
        is forgotten, so the next caller may try again; ``fresh`` reads again (replacing an answer
        held); ``keep=False`` holds no new answer for later callers (but joins one already held
        or in flight). ``on_send`` is called when this call is the one that reads."""
        held = None if fresh else self._reads.get(key)
        if held is None:
            if on_send is not None:
                on_send()
            held = asyncio.ensure_future(read())
            if keep or key in self._reads:
                self._reads[key] = held
        try:
            return cast(T, await asyncio.shield(held))
        except Exception:
            if self._reads.get(key) is held:
                del self._reads[key]
            raise

    async def transport_config(self) -> TransportConfig:
        """The tenant's SMTP AUTH switch, read once per session however many rows ask."""
        return await self._once(("Get-TransportConfig",), self.exchange.get_transport_config)

    async def trustee_cas_mailbox(self, identity: str) -> CasMailbox:
        """A trustee's CAS settings (its own SMTP AUTH switch), read once per session however many
        rows name it. Only for trustees, whose number stays small: not for every row's mailbox."""
        return await self._once(("Get-CASMailbox", identity.lower()), partial(self.exchange.get_cas_mailbox, identity))

    async def mailbox_listing(
        self, kinds: Sequence[str], *, keep: bool = False, on_send: Callable[[], None] | None = None
    ) -> list[ExchangeMailbox]:
        """The paged ``Get-Mailbox`` listing of ``kinds``. ``keep``: hold it for a later reader of
        the same run (``audit --unlisted`` reads it for the manifest's rows, then for the search)
        rather than read it twice; otherwise it is not held (a tenant's listing is large)."""
        key = ("Get-Mailbox", *sorted(k.strip().casefold() for k in kinds))
        return await self._once(key, partial(self.exchange.list_mailboxes, kinds), keep=keep, on_send=on_send)

    async def send_as_listing(
        self,
        trustee: str,
        *,
        fresh: bool = False,
        keep: bool = False,
        on_send: Callable[[], None] | None = None,
    ) -> list[SendAsGrant]:
        """Every Send As grant of ``trustee`` (one paged listing); ``keep`` and a listing already
        held as for :meth:`mailbox_listing`. ``fresh`` reads it again (verification after writes)."""
        key = ("Get-RecipientPermission", trustee.casefold())
        read = partial(self.exchange.send_as_grants_of, trustee)
        return await self._once(key, read, fresh=fresh, keep=keep, on_send=on_send)

    def stats(self) -> dict[str, Any]:
        s = self.http.transport.stats
        return {
            "requests": dict(s.requests),
            "retries": s.retries,
            "throttled": s.throttled,
            "token_requests": self.tokens.requests if hasattr(self.tokens, "requests") else None,
        }

    async def aclose(self) -> None:
        await self.http.aclose()
        close = getattr(self.tokens, "close", None)
        if close is not None:
            close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
