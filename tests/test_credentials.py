"""credentials.TokenProvider against the sandbox's Entra ID, over real HTTPS.

respx cannot intercept azure-identity (it uses requests), so these tests use the sandbox, which
checks the token request the way Entra does: the secret, or the certificate assertion's
signature, audience, issuer and thumbprint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from esj_provision.config import Settings, load_settings
from esj_provision.errors import AuthError, ConfigError
from esj_provision.microsoft.credentials import Token, TokenProvider
from esj_provision.sandbox import Sandbox

GRAPH = "https://graph.microsoft.com/.default"
EXCHANGE = "https://outlook.office365.com/.default"


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(pfx_password="pfx-pass-123") as box:
        yield box


def settings(sb: Sandbox, tmp_path: Path, **env: str) -> Settings:
    base = {k: v for k, v in sb.env.items() if k != "AZURE_CLIENT_SECRET"}
    return load_settings(environ={**base, **env}, dotenv_path=tmp_path / "none")


def token_calls(sb: Sandbox, since: int) -> list[dict[str, object]]:
    return [c for c in sb.calls()[since:] if str(c["path"]).endswith("/oauth2/v2.0/token")]


def test_secret_gives_a_token_request_of_the_right_form(sb: Sandbox, tmp_path: Path) -> None:
    mark = len(sb.calls())
    tokens = TokenProvider(settings(sb, tmp_path, AZURE_CLIENT_SECRET=sb.client_secret))
    tok = asyncio.run(tokens.get(GRAPH))
    assert tok.claims()["aud"] == "https://graph.microsoft.com"
    assert tok.claims()["appid"] == sb.client_id
    [call] = token_calls(sb, mark)
    params = call["parameters"]
    assert isinstance(params, dict)
    assert params["grant_type"] == "client_credentials" and params["grant"] == "client_secret"
    assert params["scope"] == GRAPH and params["client_id"] == sb.client_id


@pytest.mark.parametrize("kind", ["pem", "pfx"])
def test_certificate_gives_a_signed_assertion(sb: Sandbox, tmp_path: Path, kind: str) -> None:
    mark = len(sb.calls())
    env = {"AZURE_CLIENT_CERTIFICATE_PATH": str(sb.cert_path if kind == "pem" else sb.pfx_path)}
    if kind == "pfx":
        env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = sb.pfx_password
    s = settings(sb, tmp_path, **env)
    assert s.resolved_auth == "certificate"
    tok = asyncio.run(TokenProvider(s).get(EXCHANGE))
    assert tok.claims()["aud"] == "https://outlook.office365.com"
    [call] = token_calls(sb, mark)
    params = call["parameters"]
    assert isinstance(params, dict) and params["grant"] == "client_assertion"  # verified by the sandbox
    assert call["status"] == 200


def test_one_token_per_resource_cached_for_the_run(sb: Sandbox, tmp_path: Path) -> None:
    mark = len(sb.calls())
    tokens = TokenProvider(settings(sb, tmp_path, AZURE_CLIENT_SECRET=sb.client_secret))

    async def go() -> tuple[Token, Token, Token]:
        a, b = await asyncio.gather(tokens.get(GRAPH), tokens.get(GRAPH))
        c = await tokens.get(EXCHANGE)
        await tokens.get(EXCHANGE)
        return a, b, c

    a, b, c = asyncio.run(go())
    assert a.value == b.value and a.value != c.value
    assert len(token_calls(sb, mark)) == 2 and tokens.requests == 2


def test_a_rejected_token_is_replaced_once_for_all_callers(sb: Sandbox, tmp_path: Path) -> None:
    tokens = TokenProvider(settings(sb, tmp_path, AZURE_CLIENT_SECRET=sb.client_secret))

    async def go() -> list[Token]:
        old = await tokens.get(GRAPH)
        return list(await asyncio.gather(*(tokens.get(GRAPH, force_refresh=True, rejected=old.value) for _ in range(5))))

    fresh = asyncio.run(go())
    assert len({t.value for t in fresh}) == 1 and tokens.requests == 2


def test_a_token_is_renewed_shortly_before_it_expires(tmp_path: Path) -> None:
    with Sandbox(token_lifetime=2) as box:
        tokens = TokenProvider(settings(box, tmp_path, AZURE_CLIENT_SECRET=box.client_secret))

        async def go() -> tuple[Token, Token, Token]:
            first = await tokens.get(GRAPH)
            again = await tokens.get(GRAPH)
            await asyncio.sleep(max(0.0, first.refresh_at - time.time()) + 0.05)
            return first, again, await tokens.get(GRAPH)

        first, again, later = asyncio.run(go())
        assert first.value == again.value and later.value != first.value
        assert first.refresh_at < first.expires_on


def test_wrong_secret_is_an_auth_error_with_a_hint(sb: Sandbox, tmp_path: Path) -> None:
    tokens = TokenProvider(settings(sb, tmp_path, AZURE_CLIENT_SECRET="not-the-secret"))
    with pytest.raises(AuthError) as err:
        asyncio.run(tokens.get(GRAPH))
    assert "AADSTS7000215" in err.value.message
    assert err.value.hint and "secret" in err.value.hint
    assert "not-the-secret" not in err.value.message + err.value.hint


def test_unknown_tenant_is_explained(sb: Sandbox, tmp_path: Path) -> None:
    s = settings(sb, tmp_path, AZURE_CLIENT_SECRET=sb.client_secret, AZURE_TENANT_ID="nowhere.onmicrosoft.com")
    with pytest.raises(AuthError) as err:
        asyncio.run(TokenProvider(s).get(GRAPH))
    assert "tenant" in err.value.message and err.value.hint and "AZURE_TENANT_ID" in err.value.hint


def test_wrong_pfx_password_is_a_config_error(sb: Sandbox, tmp_path: Path) -> None:
    s = settings(sb, tmp_path, AZURE_CLIENT_CERTIFICATE_PATH=str(sb.pfx_path), AZURE_CLIENT_CERTIFICATE_PASSWORD="wrong")
    with pytest.raises((ConfigError, AuthError)) as err:
        asyncio.run(TokenProvider(s).get(GRAPH))
    assert "certificate" in (err.value.message + (err.value.hint or "")).lower()
    assert "wrong" not in err.value.message


def test_untrusted_ca_is_explained(sb: Sandbox, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    with Sandbox() as box:
        other.write_bytes(Path(box.ca_path).read_bytes())  # a valid CA, but not this sandbox's
    s = settings(sb, tmp_path, AZURE_CLIENT_SECRET=sb.client_secret, ESJ_PROVISION_CA_BUNDLE=str(other))
    with pytest.raises(AuthError) as err:
        asyncio.run(TokenProvider(s).get(GRAPH))
    assert err.value.hint and "CA_BUNDLE" in err.value.hint
