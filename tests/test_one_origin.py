"""Graph and Exchange behind one origin (an API gateway, a corporate proxy): each request carries
the service it is for, so each gets its own token (issue 11, defect 4)."""

from __future__ import annotations

from pathlib import Path

import httpx
import respx
from fakes import FakeTokens, run

from esj_provision.config import Settings, load_settings
from esj_provision.microsoft.exchange import ExchangeClient
from esj_provision.microsoft.graph import GraphClient
from esj_provision.microsoft.http import MicrosoftHttp

GATEWAY = "https://gateway.contoso.test"
TENANT = "0550b473-9fd2-4dbb-a058-a1640b4bf458"


def gateway_settings() -> Settings:
    return load_settings(
        environ={
            "AZURE_TENANT_ID": TENANT,
            "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
            "AZURE_CLIENT_SECRET": "not-a-real-secret",
            "ESJ_PROVISION_GRAPH_ENDPOINT": GATEWAY,
            "ESJ_PROVISION_EXCHANGE_ENDPOINT": GATEWAY,
        },
        dotenv_path=Path("/nonexistent/.env"),
    )


def test_graph_and_exchange_at_one_origin_each_get_their_own_token() -> None:
    router = respx.Router()
    graph = router.get(url__startswith=f"{GATEWAY}/v1.0/users/").respond(
        200, json={"id": "1", "userPrincipalName": "support@contoso.com"}
    )
    exo = router.post(f"{GATEWAY}/adminapi/beta/{TENANT}/InvokeCommand").respond(
        200, json={"value": [{"SmtpClientAuthenticationDisabled": False}]}
    )
    tokens = FakeTokens()

    async def go() -> None:
        http = MicrosoftHttp(gateway_settings(), tokens, inner=httpx.MockTransport(router.async_handler))  # type: ignore[arg-type]
        try:
            await GraphClient(http).get_user("support@contoso.com")
            await ExchangeClient(http, TENANT).get_transport_config()
        finally:
            await http.aclose()

    run(go())
    settings = gateway_settings()
    assert graph.calls.last.request.headers["Authorization"] == "Bearer graph-1"
    assert exo.calls.last.request.headers["Authorization"] == "Bearer exo-1"
    assert [scope for scope, _ in tokens.calls] == [settings.cloud.graph_scope, settings.cloud.exchange_scope]


def test_a_request_naming_no_service_at_a_shared_origin_gets_no_token() -> None:
    """The URL alone cannot tell Graph from Exchange there: no token rather than the wrong one."""
    router = respx.Router()
    route = router.get(f"{GATEWAY}/v1.0/users/a").respond(200, json={})

    async def go() -> None:
        http = MicrosoftHttp(gateway_settings(), FakeTokens(), inner=httpx.MockTransport(router.async_handler))  # type: ignore[arg-type]
        try:
            await http.client.get(f"{GATEWAY}/v1.0/users/a")
            await http.client.get(f"{GATEWAY}/v1.0/users/a", extensions={"esj_service": "graph"})
        finally:
            await http.aclose()

    run(go())
    assert "Authorization" not in route.calls[0].request.headers
    assert route.calls[1].request.headers["Authorization"] == "Bearer graph-1"


def test_per_service_stats_and_pacing_follow_the_request_not_the_url() -> None:
    router = respx.Router()
    router.get(url__startswith=f"{GATEWAY}/v1.0/").respond(200, json={"id": "1", "userPrincipalName": "a@b.com"})
    router.post(url__startswith=f"{GATEWAY}/adminapi/").respond(200, json={"value": [{}]})

    async def go() -> dict[str, int]:
        http = MicrosoftHttp(gateway_settings(), FakeTokens(), inner=httpx.MockTransport(router.async_handler))  # type: ignore[arg-type]
        try:
            await GraphClient(http).get_user("a@b.com")
            await ExchangeClient(http, TENANT).get_transport_config()
            await ExchangeClient(http, TENANT).get_transport_config()
            return dict(http.transport.stats.requests)
        finally:
            await http.aclose()

    assert run(go()) == {"graph": 1, "exchange": 2}
