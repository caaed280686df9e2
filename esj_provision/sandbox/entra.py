"""Entra ID's v2.0 endpoints: OIDC metadata and the token endpoint, for client credentials (secret
in the form or HTTP Basic, or a certificate's client assertion) and for a user's password (ROPC,
``grant_type=password``: how ESJ signs its service account in, probe-protocols.md §3).

Error bodies follow Entra's shape (reference §1): ``error``, ``error_description`` starting with
``AADSTSnnnn:``, ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from .tenant import EXCHANGE_APP_ID, EXCHANGE_RESOURCE, GRAPH_APP_ID, GRAPH_RESOURCE, App, Recipient, Tenant
from .tls import ClientCert
from .tokens import TokenMint, signature_ok, unverified

OUTLOOK_OFFICE = "https://outlook.office.com"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REAL_AUTHORITY = "https://login.microsoftonline.com"
ASSERTION_SKEW = 300  # Entra tolerates five minutes of clock skew on assertions

# Scope (without /.default) -> the access token's audience. The sandbox plays the global cloud,
# so clients keep the global scopes even when they point the endpoints at the sandbox.
RESOURCES: dict[str, str] = {
    GRAPH_RESOURCE: GRAPH_RESOURCE,
    GRAPH_APP_ID: GRAPH_RESOURCE,
    EXCHANGE_RESOURCE: EXCHANGE_RESOURCE,
    EXCHANGE_APP_ID: EXCHANGE_RESOURCE,
    # ESJ's default scope. Entra knows Exchange Online under both names; the token keeps the name
    # asked for as its audience (unconfirmed: treated as the same resource by the mail protocols).
    OUTLOOK_OFFICE: OUTLOOK_OFFICE,
}
_RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}


@dataclass
class Credentials:
    """What Entra holds per app: a secret and/or a certificate. Runtime only, never persisted."""

    secrets: dict[str, str]
    certs: dict[str, ClientCert]
    passwords: dict[str, str] = field(default_factory=dict)  # user object id -> password


class EntraError(Exception):
    def __init__(self, status: int, error: str, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.code = code
        self.message = message

    def body(self, base: str, correlation_id: str) -> dict[str, Any]:
        trace = str(uuid.uuid4())
        ts = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.message} Trace ID: {trace} Correlation ID: {correlation_id} "
                f"Timestamp: {ts}"
            ),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": correlation_id,
            "error_uri": f"{base}/error?code={self.code}",
        }


def unknown_tenant(segment: str) -> EntraError:
    return EntraError(
        400, "invalid_request", 90002,
        f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud.",
    )


def metadata(t: Tenant, base: str, segment: str) -> dict[str, Any]:
    """The OIDC document msal reads. Endpoints use the tenant GUID, as Entra's do, whichever
    form (GUID or domain) the client asked with."""
    tid = t.tenant_id if t.is_tenant(segment) else "{tenantid}"
    root = f"{base}/{tid}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/{tid if tid != '{tenantid}' else 'common'}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{root}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/oidc/userinfo",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "roles", "wids"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }


def instance_discovery(base: str, host: str) -> dict[str, Any]:
    return {
        "tenant_discovery_endpoint": f"{base}/{{tenant}}/v2.0/.well-known/openid-configuration",
        "api-version": "1.1",
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
    }


@dataclass
class Issued:
    body: dict[str, Any]
    client_id: str
    grant: str  # client_secret / client_assertion / password
    resource: str
    assertion: dict[str, str] | None = None  # alg and thumbprint header of a client assertion


def _basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return (unquote_plus(user), unquote_plus(password)) if sep else None


def _resource(scope: str | None) -> str:
    if not scope or not scope.strip():
        raise EntraError(
            400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."
        )
    scopes = [s for s in scope.split() if s.lower() not in _RESERVED_SCOPES]
    if len(scopes) != 1:
        raise EntraError(
            400, "invalid_scope", 70011,
            f"The provided request must include a 'scope' input parameter. The provided value for the input "
            f"parameter 'scope' is not valid. The scope {scope} is not valid.",
        )
    s = scopes[0]
    if not s.endswith("/.default"):
        raise EntraError(
            400, "invalid_scope", 1002012,
            f"The provided value for scope {s} is not valid. Client credential flows must have a scope "
            "value with /.default suffixed to the resource identifier (application ID URI).",
        )
    resource = s[: -len("/.default")].rstrip("/")
    aud = RESOURCES.get(resource.lower())
    if aud is None:
        raise EntraError(
            400, "invalid_resource", 500011,
            f"The resource principal named {resource} was not found in the tenant named Contoso. This can "
            "happen if the application has not been installed by the administrator of the tenant or "
            "consented to by any user in the tenant. You might have sent your authentication request to "
            "the wrong tenant.",
        )
    return aud


def _bad_assertion(message: str) -> EntraError:
    return EntraError(401, "invalid_client", 700027, message)


def _check_assertion(
    t: Tenant, creds: Credentials, assertion: str, client_id: str | None, audiences: set[str]
) -> tuple[App, dict[str, str]]:
    try:
        header, claims = unverified(assertion)
    except ValueError:
        raise _bad_assertion("Client assertion failed signature validation. The assertion is not a JWT.") from None
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or iss != sub:
        raise _bad_assertion("Client assertion contains an invalid 'iss' or 'sub': both must be the client id.")
    if client_id and client_id.lower() != iss.lower():
        raise _bad_assertion("Client assertion 'iss' does not match the client_id of the request.")
    app = t.find_app(iss)
    if app is None:
        raise _unknown_app(iss, t)
    cert = creds.certs.get(app.client_id)
    if "x5t#S256" in header:
        kind, thumb, expected = "x5t#S256", header["x5t#S256"], cert.x5t_s256 if cert else None
    elif "x5t" in header:
        kind, thumb, expected = "x5t", header["x5t"], cert.x5t if cert else None
    else:
        raise _bad_assertion("Client assertion is missing the x5t or x5t#S256 header.")
    # msal sends the thumbprint base64url WITH '=' padding; Entra accepts both spellings.
    if cert is None or not isinstance(thumb, str) or thumb.rstrip("=") != expected:
        raise _bad_assertion(
            "The certificate with identifier used to sign the client assertion is not registered on "
            f"application. [Reason - The key was not found., Thumbprint of key used by client: '{thumb}']"
        )
    if not signature_ok(assertion, cert.public_key):
        raise _bad_assertion("Client assertion contains an invalid signature.")
    aud = claims.get("aud")
    if not isinstance(aud, str) or aud.rstrip("/").lower() not in audiences:
        raise _bad_assertion(f"Client assertion audience claim does not match Realm issuer: '{aud}'.")
    now = time.time()
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, (int, float)) or exp < now - ASSERTION_SKEW or (
        isinstance(nbf, (int, float)) and nbf > now + ASSERTION_SKEW
    ):
        raise _bad_assertion("Client assertion is not within its valid time range.")
    return app, {"alg": str(header.get("alg")), "thumbprint": kind}


def _unknown_app(client_id: str, t: Tenant) -> EntraError:
    return EntraError(
        400, "unauthorized_client", 700016,
        f"Application with identifier '{client_id}' was not found in the directory '{t.name}'. This can "
        "happen if the application has not been installed by the administrator of the tenant or "
        "consented to by any user in the tenant. You may have sent your authentication request to the "
        "wrong tenant.",
    )


def token_audiences(t: Tenant, segment: str, sandbox_bases: list[str]) -> set[str]:
    """The ``aud`` values a client assertion may carry: the token endpoint URL, at the sandbox or at
    login.microsoftonline.com, by tenant GUID or domain."""
    segs = {t.tenant_id, t.domain, segment.lower()}
    out = set()
    for base in [REAL_AUTHORITY, *sandbox_bases]:
        for s in segs:
            out.add(f"{base}/{s}/oauth2/v2.0/token".lower())
            out.add(f"{base}/{s}/oauth2/token".lower())
    return out


def issue_token(
    t: Tenant, creds: Credentials, mint: TokenMint, segment: str, form: Mapping[str, str],
    authorization: str | None, sandbox_bases: list[str],
) -> Issued:
    """Validate a client-credentials request and mint the token. Raises :class:`EntraError`."""
    if not t.is_tenant(segment):
        raise unknown_tenant(segment)
    grant_type = form.get("grant_type")
    if grant_type == "password":
        return _password_grant(t, creds, mint, form, authorization)
    if grant_type != "client_credentials":
        raise EntraError(
            400, "unsupported_grant_type", 70003,
            f"The app requested an unsupported grant type '{grant_type}'. The sandbox serves client_credentials "
            "and password only.",
        )
    basic = _basic(authorization)
    assertion = form.get("client_assertion")
    client_id = basic[0] if basic else form.get("client_id")
    if assertion:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise EntraError(
                400, "invalid_request", 900144,
                "The request body must contain the following parameter: 'client_assertion_type'.",
            )
        app, assertion_info = _check_assertion(
            t, creds, assertion, client_id, token_audiences(t, segment, sandbox_bases)
        )
        grant = "client_assertion"
    else:
        assertion_info = None
        if not client_id:
            raise EntraError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        found = t.find_app(client_id)
        if found is None:
            raise _unknown_app(client_id, t)
        app = found
        secret = basic[1] if basic else form.get("client_secret")
        if not secret:
            raise EntraError(
                401, "invalid_client", 7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        _client_secret(app, creds, secret)
        grant = "client_secret"
    resource = _resource(form.get("scope"))
    issuer = f"https://sts.windows.net/{t.tenant_id}/"
    claims: dict[str, Any] = {
        "aud": resource, "iss": issuer, "idp": issuer, "tid": t.tenant_id, "appid": app.client_id,
        "app_displayname": app.display_name, "appidacr": "2" if grant == "client_assertion" else "1",
        "oid": app.sp_object_id, "sub": app.sp_object_id, "idtyp": "app", "ver": "1.0",
    }
    roles = app.roles_for(resource)
    if roles:  # Entra omits empty claims rather than sending []
        claims["roles"] = roles
    if app.wids:
        claims["wids"] = list(app.wids)
    token, lifetime = mint.issue(claims)
    body = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
    return Issued(body, app.client_id, grant, resource, assertion_info)


def _client_secret(app: App, creds: Credentials, secret: str | None) -> None:
    expected = creds.secrets.get(app.client_id)
    if secret is None or expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
        raise EntraError(
            401, "invalid_client", 7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            f"secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
        )


def _delegated_scopes(app: App, scope: str | None) -> tuple[str, list[str]]:
    """(audience, consented permission names) for a ROPC ``scope``: ``<resource>/.default`` (every
    consented permission) or ``<resource>/<Permission>`` items of one resource."""
    wanted = [s for s in (scope or "").split() if s.lower() not in _RESERVED_SCOPES]
    if not wanted:
        raise EntraError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
    auds, names = set(), []
    for s in wanted:
        resource, _, perm = s.rpartition("/")
        aud = RESOURCES.get(resource.rstrip("/").lower())
        if aud is None or not perm:
            raise EntraError(400, "invalid_scope", 70011, f"The provided value for the input parameter 'scope' is not valid. The scope {s} is not valid.")
        auds.add(aud)
        names.append(perm)
    if len(auds) != 1:
        raise EntraError(400, "invalid_scope", 28000, "Provided value for the input parameter scope is not valid "
                         "because it contains more than one resource.")
    aud = auds.pop()
    consented = app.delegated_for(aud)
    granted = consented if ".default" in names else [n for n in names if n in consented]
    if not granted or (".default" not in names and len(granted) != len(names)):
        raise EntraError(
            400, "invalid_grant", 65001,
            f"The user or administrator has not consented to use the application with ID '{app.client_id}' named "
            f"'{app.display_name}'. Send an interactive authorization request for this user and resource.",
        )
    return aud, granted


def _password_grant(
    t: Tenant, creds: Credentials, mint: TokenMint, form: Mapping[str, str], authorization: str | None
) -> Issued:
    """ROPC (✅ ROPC doc): a confidential client must send its secret; a public client (the app's
    "Allow public client flows") may send none, else AADSTS7000218."""
    basic = _basic(authorization)
    client_id = basic[0] if basic else form.get("client_id")
    if not client_id:
        raise EntraError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
    app = t.find_app(client_id)
    if app is None:
        raise _unknown_app(client_id, t)
    secret = basic[1] if basic else form.get("client_secret")
    if secret:
        _client_secret(app, creds, secret)
    elif not app.public_client:
        raise EntraError(
            401, "invalid_client", 7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    for name in ("username", "password"):
        if not form.get(name):
            raise EntraError(400, "invalid_request", 900144,
                             f"The request body must contain the following parameter: '{name}'.")
    user = _user_for_sign_in(t, form["username"])
    expected = creds.passwords.get(user.id) if user else None
    if user is None or expected is None or not hmac.compare_digest(form["password"].encode(), expected.encode()):
        raise EntraError(400, "invalid_grant", 50126,
                         "Error validating credentials due to invalid username or password.")
    if not user.account_enabled:
        raise EntraError(400, "invalid_grant", 50057, "The user account is disabled.")
    aud, granted = _delegated_scopes(app, form.get("scope"))
    issuer = f"https://sts.windows.net/{t.tenant_id}/"
    claims: dict[str, Any] = {
        "aud": aud, "iss": issuer, "idp": issuer, "tid": t.tenant_id, "appid": app.client_id,
        "app_displayname": app.display_name, "appidacr": "1" if secret else "0", "oid": user.id, "sub": user.id,
        "upn": user.upn, "unique_name": user.upn, "name": user.display_name, "scp": " ".join(granted),
        "amr": ["pwd"], "idtyp": "user", "ver": "1.0",
    }
    token, lifetime = mint.issue(claims)
    body = {"token_type": "Bearer", "scope": " ".join(f"{aud}/{g}" for g in granted), "expires_in": lifetime,
            "ext_expires_in": lifetime, "access_token": token}
    return Issued(body, app.client_id, "password", aud)


def _user_for_sign_in(t: Tenant, username: str) -> Recipient | None:
    """The user a sign-in name names: the UPN, or (the sandbox is lenient here) the primary address."""
    r = t.find_recipient(username)
    if r is None or username.strip().lower() not in (r.upn.lower(), r.mail.lower()):
        return None
    return r
