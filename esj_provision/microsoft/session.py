"""A session with one tenant: the token provider, the shared HTTP client, Graph and Exchange.

Commands open one session per run, so tokens, TLS and connection pools are shared by every call
(and by every row of a bulk run), and tenant-wide facts (the SMTP AUTH switch) are read once, as is
each service account's own SMTP AUTH setting (most manifests name one account on every row).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..models import CasMailbox, TransportConfig

if TYPE_CHECKING:
    import httpx

    from ..provision.esj_app import AppIdentity
    from ..provision.writes import Step
    from .credentials import TokenProvider
    from .exchange import ExchangeClient
    from .graph import GraphClient, LookupResult
    from .http import MicrosoftHttp, RetryPolicy


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
        self._transport_config: asyncio.Future[TransportConfig] | None = None
        self._trustee_cas: dict[str, asyncio.Future[CasMailbox]] = {}
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

    async def transport_config(self) -> TransportConfig:
        """The tenant's SMTP AUTH switch, read once per session however many rows ask."""
        if self._transport_config is None:
            self._transport_config = asyncio.ensure_future(self.exchange.get_transport_config())
        try:
            return await asyncio.shield(self._transport_config)
        except Exception:
            self._transport_config = None  # a failed read may be retried by the next row
            raise

    async def trustee_cas_mailbox(self, identity: str) -> CasMailbox:
        """A trustee's CAS settings (its own SMTP AUTH switch), read once per session however many
        rows name it. Only for trustees, whose number stays small: not for every row's mailbox."""
        key = identity.lower()
        read = self._trustee_cas.get(key)
        if read is None:
            read = self._trustee_cas[key] = asyncio.ensure_future(self.exchange.get_cas_mailbox(identity))
        try:
            return await asyncio.shield(read)
        except Exception:
            if self._trustee_cas.get(key) is read:
                del self._trustee_cas[key]  # a failed read may be retried by the next row
            raise

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
