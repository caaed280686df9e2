"""Sandbox Entra ID: OIDC metadata, client-credentials tokens, certificate assertions, AADSTS errors."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509 import load_pem_x509_certificate
from sandbox_fixtures import EXCHANGE_SCOPE, GRAPH_SCOPE, SandboxClient

from esj_provision.sandbox import DIRECTORY_ROLES, Sandbox


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion(sb: Sandbox, *, key: Any = None, alg: str = "RS256", thumb: str = "x5t", **overrides: Any) -> str:
    """A client assertion built independently of the sandbox (PyJWT), for the negative cases."""
    pem = sb.cert_path.read_bytes()
    der = load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    header = {"x5t": _b64(hashlib.sha1(der).digest())} if thumb == "x5t" else {"x5t#S256": _b64(hashlib.sha256(der).digest())}
    now = int(time.time())
    claims = {
        "aud": f"https://login.microsoftonline.com/{sb.tenant_id}/oauth2/v2.0/token",
        "iss": sb.client_id, "sub": sb.client_id, "jti": str(uuid.uuid4()), "nbf": now, "iat": now, "exp": now + 600,
        **overrides,
    }
    signing_key = key or load_pem_private_key(pem, None)
    return pyjwt.encode(claims, signing_key, algorithm=alg, headers=header)


def assertion_form(token: str, scope: str = GRAPH_SCOPE, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": token, **extra,
    }


# --- metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["tenant_id", "tenant_domain"])
def test_openid_metadata_points_at_the_sandbox_over_https(sandbox_client: SandboxClient, segment: str) -> None:
    sb = sandbox_client.sb
    r = sandbox_client.http.get(f"{sb.url}/{getattr(sb, segment)}/v2.0/.well-known/openid-configuration")
    assert r.status_code == 200
    doc = r.json()
    assert doc["token_endpoint"] == f"{sb.url}/{sb.tenant_id}/oauth2/v2.0/token"
    assert doc["issuer"] == f"{sb.url}/{sb.tenant_id}/v2.0"
    assert doc["authorization_endpoint"].startswith(f"{sb.url}/")
    assert doc["jwks_uri"].startswith("https://")
    # the v1 path and instance discovery answer too, and never point at login.microsoftonline.com
    assert sandbox_client.http.get(f"{sb.url}/{sb.tenant_id}/.well-known/openid-configuration").status_code == 200
    inst = sandbox_client.http.get(f"{sb.url}/common/discovery/instance").json()
    assert "127.0.0.1" in inst["tenant_discovery_endpoint"]


def test_metadata_for_unknown_tenant_is_aadsts90002(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.http.get(f"{sandbox_client.sb.url}/fabrikam.onmicrosoft.com/v2.0/.well-known/openid-configuration")
    assert r.status_code == 400
    assert r.json()["error_codes"] == [90002]


# --- secrets ----------------------------------------------------------------------------------


def test_token_by_secret_in_form_has_the_documented_claims(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    r = sandbox_client.token_request(
        {"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret,
         "scope": EXCHANGE_SCOPE},
        tenant=sb.tenant_domain,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["ext_expires_in"] == 3599
    c = claims_of(body["access_token"])
    assert c["aud"] == "https://outlook.office365.com"
    assert c["tid"] == sb.tenant_id and c["appid"] == sb.client_id
    assert c["roles"] == ["Exchange.ManageAsApp"]
    assert c["wids"] == [DIRECTORY_ROLES["Exchange Administrator"]]
    assert c["oid"] == sb.state()["apps"][0]["sp_object_id"]
    assert c["exp"] - c["iat"] == 3599 and c["nbf"] <= time.time() and c["iss"]
    graph = claims_of(sandbox_client.token("graph"))
    assert graph["aud"] == "https://graph.microsoft.com"
    assert set(graph["roles"]) == {"User.Read.All", "MailboxSettings.Read", "Application.Read.All"}


def test_token_by_http_basic(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    # RFC 6749 §2.3.1: form-urlencode each part, then base64 ('~' in real secrets must survive)
    basic = base64.b64encode(f"{sb.client_id}:{requests.utils.quote(sb.client_secret, safe='')}".encode()).decode()
    r = sandbox_client.token_request(
        {"grant_type": "client_credentials", "scope": GRAPH_SCOPE}, headers={"Authorization": f"Basic {basic}"}
    )
    assert r.status_code == 200, r.text


def test_app_roles_follow_the_app(sandbox_client: SandboxClient) -> None:
    no_role = claims_of(sandbox_client.token("exchange", app="no_directory_role"))
    assert no_role["roles"] == ["Exchange.ManageAsApp"] and "wids" not in no_role
    no_exo = claims_of(sandbox_client.token("exchange", app="no_exchange_role"))
    assert "roles" not in no_exo
    esj = claims_of(sandbox_client.token("graph", app="esj"))
    assert set(esj["roles"]) == {"Mail.ReadWrite", "Mail.Send"}
    assert esj["oid"] != sandbox_client.sb.esj_app_id


def _form(sb: Sandbox, **over: str) -> dict[str, str]:
    base = {"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret,
            "scope": GRAPH_SCOPE}
    base.update(over)
    return {k: v for k, v in base.items() if v != "<omit>"}


@pytest.mark.parametrize(
    ("over", "tenant", "status", "error", "code"),
    [
        ({"client_secret": "wrong"}, None, 401, "invalid_client", 7000215),
        ({"client_id": "00000000-0000-0000-0000-00000000abcd"}, None, 400, "unauthorized_client", 700016),
        ({}, "fabrikam.onmicrosoft.com", 400, "invalid_request", 90002),
        ({"scope": "https://graph.microsoft.com/User.Read.All"}, None, 400, "invalid_scope", 1002012),
        ({"scope": "https://management.azure.com/.default"}, None, 400, "invalid_resource", 500011),
        ({"client_secret": "<omit>"}, None, 401, "invalid_client", 7000218),
        ({"scope": "<omit>"}, None, 400, "invalid_request", 900144),
        ({"grant_type": "authorization_code"}, None, 400, "unsupported_grant_type", 70003),
    ],
    ids=["wrong-secret", "unknown-app", "unknown-tenant", "no-default", "unknown-resource", "no-credential",
         "no-scope", "grant-type"],
)
def test_token_errors_carry_aadsts_codes(
    sandbox_client: SandboxClient, over: dict[str, str], tenant: str | None, status: int, error: str, code: int
) -> None:
    r = sandbox_client.token_request(_form(sandbox_client.sb, **over), tenant=tenant)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    assert sandbox_client.sb.client_secret not in r.text


# --- certificate assertions -------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "thumb"), [("RS256", "x5t"), ("PS256", "x5t#S256"), ("RS256", "x5t#S256")])
def test_assertion_signed_with_the_registered_cert(sandbox_client: SandboxClient, alg: str, thumb: str) -> None:
    sb = sandbox_client.sb
    for aud in (
        f"https://login.microsoftonline.com/{sb.tenant_id}/oauth2/v2.0/token",
        f"{sb.url}/{sb.tenant_domain}/oauth2/v2.0/token",
    ):
        r = sandbox_client.token_request(assertion_form(assertion(sb, alg=alg, thumb=thumb, aud=aud)))
        assert r.status_code == 200, r.text


_OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    "kind", ["other-key", "wrong-aud", "expired", "iss-not-sub", "not-a-jwt", "no-thumbprint", "wrong-thumbprint"]
)
def test_bad_assertions_are_aadsts700027(sandbox_client: SandboxClient, kind: str) -> None:
    sb = sandbox_client.sb
    if kind == "other-key":
        token = assertion(sb, key=_OTHER_KEY)
    elif kind == "wrong-aud":
        token = assertion(sb, aud="https://login.microsoftonline.com/common/oauth2/v2.0/token")
    elif kind == "expired":
        token = assertion(sb, exp=int(time.time()) - 3600, nbf=int(time.time()) - 4000)
    elif kind == "iss-not-sub":
        token = assertion(sb, sub="someone-else")
    elif kind == "not-a-jwt":
        token = "not.a-jwt"
    else:
        key = load_pem_private_key(sb.cert_path.read_bytes(), None)
        header = {} if kind == "no-thumbprint" else {"x5t": _b64(b"\x00" * 20)}
        now = int(time.time())
        token = pyjwt.encode(
            {"aud": f"https://login.microsoftonline.com/{sb.tenant_id}/oauth2/v2.0/token", "iss": sb.client_id,
             "sub": sb.client_id, "exp": now + 600, "nbf": now, "jti": "x"},
            key, algorithm="RS256", headers=header,
        )
    r = sandbox_client.token_request(assertion_form(token, client_id=sb.client_id))
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"
    assert r.json()["error_codes"] == [700027]


def test_assertion_for_an_app_without_a_certificate(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    token = assertion(sb, iss=sb.esj_app_id, sub=sb.esj_app_id)
    r = sandbox_client.token_request(assertion_form(token))
    assert r.status_code == 401 and r.json()["error_codes"] == [700027]


# --- real clients -----------------------------------------------------------------------------


def _entra_assertions(sb: Sandbox, since: int) -> list[dict[str, Any]]:
    return [c["parameters"].get("assertion") for c in sb.calls(since, service="entra")
            if c["method"] == "POST" and c["status"] == 200]


def test_azure_identity_secret_and_certificate_credentials(sandbox: Sandbox) -> None:
    from azure.identity import CertificateCredential, ClientSecretCredential

    common = {"authority": sandbox.url, "disable_instance_discovery": True, "connection_verify": str(sandbox.ca_path)}
    since = sandbox.calls()[-1]["seq"] if sandbox.calls() else 0
    secret = ClientSecretCredential(sandbox.tenant_id, sandbox.client_id, sandbox.client_secret, **common)
    assert claims_of(secret.get_token(GRAPH_SCOPE).token)["aud"] == "https://graph.microsoft.com"
    pem = CertificateCredential(sandbox.tenant_domain, sandbox.client_id, certificate_path=str(sandbox.cert_path), **common)
    assert claims_of(pem.get_token(EXCHANGE_SCOPE).token)["appidacr"] == "2"
    pfx = CertificateCredential(
        sandbox.tenant_id, sandbox.client_id, certificate_path=str(sandbox.pfx_path),
        password=sandbox.pfx_password_path.read_text(), **common,
    )
    assert pfx.get_token(EXCHANGE_SCOPE).token
    # azure-identity (sync) signs RS256 with the SHA-1 x5t, for PEM and PFX alike (dependencies.md §5)
    rs256 = {"alg": "RS256", "thumbprint": "x5t"}
    assert _entra_assertions(sandbox, since) == [None, rs256, rs256]


def _msal_http(sb: Sandbox) -> requests.Session:
    # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in the environment override msal's verify= (a requests
    # quirk, dependencies.md §4), so the session must not read the environment.
    s = requests.Session()
    s.trust_env = False
    s.verify = str(sb.ca_path)
    return s


def test_msal_pem_thumbprint_signs_rs256_x5t(sandbox: Sandbox) -> None:
    import msal

    pem = sandbox.cert_path.read_text()
    key = pem[pem.index("-----BEGIN PRIVATE KEY-----"):]
    app = msal.ConfidentialClientApplication(
        sandbox.client_id, authority=f"{sandbox.url}/{sandbox.tenant_id}", instance_discovery=False,
        client_credential={"private_key": key, "thumbprint": sandbox.cert_thumbprint}, http_client=_msal_http(sandbox),
    )
    since = sandbox.calls()[-1]["seq"]
    result = app.acquire_token_for_client([GRAPH_SCOPE])
    assert "access_token" in result, result
    assert _entra_assertions(sandbox, since) == [{"alg": "RS256", "thumbprint": "x5t"}]


def test_msal_pfx_signs_ps256_x5t_s256(sandbox: Sandbox) -> None:
    import msal

    app = msal.ConfidentialClientApplication(
        sandbox.client_id, authority=f"{sandbox.url}/{sandbox.tenant_domain}", instance_discovery=False,
        client_credential={"private_key_pfx_path": str(sandbox.pfx_path), "passphrase": sandbox.pfx_password},
        http_client=_msal_http(sandbox),
    )
    since = sandbox.calls()[-1]["seq"]
    result = app.acquire_token_for_client([EXCHANGE_SCOPE])
    assert "access_token" in result, result
    assert _entra_assertions(sandbox, since) == [{"alg": "PS256", "thumbprint": "x5t#S256"}]


def test_files_and_modes(sandbox: Sandbox) -> None:
    for path in (sandbox.cert_path, sandbox.pfx_path, sandbox.pfx_password_path):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert "BEGIN CERTIFICATE" in sandbox.ca_path.read_text()
    pem = sandbox.cert_path.read_text()
    assert "BEGIN CERTIFICATE" in pem and "BEGIN PRIVATE KEY" in pem
    assert sandbox.pfx_password_path.read_text() == sandbox.pfx_password


def test_token_lifetime_is_configurable() -> None:
    with Sandbox(token_lifetime=120, client_secret="fixed~secret") as sb:
        c = SandboxClient(sb)
        try:
            assert sb.client_secret == "fixed~secret"
            body = c.token_request(_form(sb)).json()
            assert body["expires_in"] == 120
            claims = claims_of(body["access_token"])
            assert claims["exp"] - claims["iat"] == 120
        finally:
            c.close()
