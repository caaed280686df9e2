"""App-only sign-in: one token per resource (Graph, Exchange), cached for the run.

azure-identity does the work (msal underneath): client secret, certificate (PEM with key, or PFX
with password), managed identity and workload identity, honouring the standard ``AZURE_*``
variables. Its synchronous credentials run in a worker thread so they never stall the event loop.
azure-identity is imported only when a token is first needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import AuthError, ConfigError

# Refresh this long before expiry, so a token never lapses between check and use.
REFRESH_MARGIN_S = 120.0

_AADSTS_HINTS = {
    "7000215": "the client secret is wrong or expired: create a new one in the app registration",
    "7000222": "the client secret has expired: create a new one in the app registration",
    "700016": "no application with this client id in the tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID",
    "90002": "the tenant was not found: check AZURE_TENANT_ID and --cloud",
    "700027": "the certificate assertion was rejected: upload this certificate to the app registration",
    "70011": "the scope is invalid: check --cloud and the endpoint overrides",
    "1002012": "the scope is invalid: check --cloud and the endpoint overrides",
    "500011": "the resource is not in this tenant: check --cloud",
    "7000229": "the app has no service principal in this tenant: grant admin consent",
}


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)  # the bearer token: never in a repr, so never in a traceback's locals
    expires_on: float
    refresh_at: float = 0.0  # when to ask for a new one: shortly before expiry

    @staticmethod
    def issued(value: str, expires_on: float, now: float) -> Token:
        # A tenth of the lifetime, at most REFRESH_MARGIN_S: short-lived tokens still get reused.
        margin = min(REFRESH_MARGIN_S, max(0.0, expires_on - now) * 0.1)
        return Token(value, expires_on, expires_on - margin)

    def claims(self) -> dict[str, Any]:
        """The access token's payload (unverified: used only to report roles, never to trust)."""
        try:
            payload = self.value.split(".")[1]
            payload += "=" * (-len(payload) % 4)
            data = json.loads(base64.urlsafe_b64decode(payload))
            return data if isinstance(data, dict) else {}
        except (IndexError, ValueError):
            return {}


def _explain(exc: Exception) -> AuthError:
    text = str(exc)
    codes = re.findall(r"AADSTS(\d+)", text)
    # Keep Microsoft's first line (it names the AADSTS code); drop trace and correlation noise.
    first = next((line.strip() for line in text.splitlines() if "AADSTS" in line), text.splitlines()[0] if text else "")
    hint = next((_AADSTS_HINTS[c] for c in codes if c in _AADSTS_HINTS), None)
    if not hint and "Unable to get authority configuration" in text:
        # msal reads the tenant's OpenID metadata first; an unknown tenant fails there.
        first = "the tenant's OpenID configuration could not be read (unknown tenant, or wrong authority)"
        hint = "check AZURE_TENANT_ID, --cloud and AZURE_AUTHORITY_HOST"
    if not hint and ("SSL" in text or "CERTIFICATE_VERIFY_FAILED" in text):
        hint = "TLS verification failed: set ESJ_PROVISION_CA_BUNDLE to your CA bundle"
    return AuthError(f"Entra ID refused the sign-in: {first[:400]}", hint=hint or "check the app registration")


class TokenProvider:
    """Hands out bearer tokens per scope; refreshes near expiry or when told a token was rejected."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._credential: Any = None
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.requests = 0  # token requests actually sent (for tests and benchmarks)

    def _build(self) -> Any:
        s = self._settings
        s.require_tenant()  # so every optional field used below is set for the chosen kind
        import azure.identity as ai

        tenant, client = str(s.tenant_id), str(s.client_id)

        common: dict[str, Any] = {"authority": s.authority_host}
        if s.ca_bundle:
            # connection_verify wins over REQUESTS_CA_BUNDLE (a requests quirk otherwise overrides it).
            common["connection_verify"] = s.ca_bundle
        kind = s.resolved_auth
        if kind == "secret":
            return ai.ClientSecretCredential(
                tenant, client, str(s.client_secret), disable_instance_discovery=True, **common
            )
        if kind == "certificate":
            try:
                return ai.CertificateCredential(
                    tenant,
                    client,
                    certificate_path=s.certificate_path,
                    password=s.certificate_password,
                    disable_instance_discovery=True,
                    **common,
                )
            except TypeError as exc:
                # cryptography: "Password was given but private key is not encrypted" (a PEM key with
                # AZURE_CLIENT_CERTIFICATE_PASSWORD set), or the reverse: a ConfigError, not a traceback.
                raise ValueError(str(exc)) from None
        if kind == "workload-identity":
            return ai.WorkloadIdentityCredential(
                tenant_id=tenant,
                client_id=client,
                token_file_path=str(s.federated_token_file),
                disable_instance_discovery=True,
                **common,
            )
        if kind == "managed-identity":
            return (
                ai.ManagedIdentityCredential(client_id=s.client_id) if s.client_id else ai.ManagedIdentityCredential()
            )
        raise ConfigError(f"unsupported sign-in kind {kind!r}")

    def _acquire(self, scope: str) -> Token:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            if self._credential is None:
                self._credential = self._build()  # a PFX is opened here: a wrong password fails here
            self.requests += 1
            tok = self._credential.get_token(scope)
        except ClientAuthenticationError as exc:
            raise _explain(exc) from None
        except ValueError as exc:  # e.g. a certificate file that does not parse, a wrong PFX password
            raise ConfigError(
                f"cannot use the certificate: {exc}",
                hint="AZURE_CLIENT_CERTIFICATE_PATH must be a PEM with the private key, or a PFX with "
                "AZURE_CLIENT_CERTIFICATE_PASSWORD",
            ) from None
        return Token.issued(tok.token, float(tok.expires_on), time.time())

    async def get(self, scope: str, *, force_refresh: bool = False, rejected: str | None = None) -> Token:
        """The token for ``scope``. ``force_refresh`` with the ``rejected`` token's value asks Entra
        ID again only if no concurrent caller has already replaced that token."""
        lock = self._locks.setdefault(scope, asyncio.Lock())
        async with lock:
            tok = self._tokens.get(scope)
            if force_refresh and rejected is not None and tok is not None and tok.value != rejected:
                return tok
            if force_refresh and tok is not None:
                # The service rejected this token: drop it, and the credential's own cache with it.
                self._tokens.pop(scope, None)
                self._credential = None
                tok = None
            if tok is None or time.time() >= tok.refresh_at:
                if tok is not None:
                    # azure-identity would hand back its cached copy until it expires; a fresh
                    # credential asks Entra ID again.
                    self._credential = None
                tok = await asyncio.to_thread(self._acquire, scope)
                self._tokens[scope] = tok
            return tok

    def close(self) -> None:
        cred, self._credential = self._credential, None
        if cred is not None and hasattr(cred, "close"):
            cred.close()
