"""The sandbox's JWTs through PyJWT: HS256 access tokens it issues and validates, and RS/PS client
assertions it verifies against the registered certificate's public key, as Entra does.

Access tokens are HS256 with a key that never leaves the process: clients must treat Microsoft
access tokens as opaque anyway, and only the sandbox itself has to validate them.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

# What Entra accepts for a certificate assertion. PS* is verified with PyJWT's PSS salt length
# (the digest length), which is what msal (itself PyJWT) signs with.
ASSERTION_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims without checking anything. Raises ValueError for anything that is not a
    compact JWS with JSON-object header and claims."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise ValueError(f"not a JWT ({exc})") from None
    return header, claims


def signature_ok(token: str, public_key: rsa.RSAPublicKey) -> bool:
    """Only the signature (RS* or PS*): the caller checks audience and lifetime with Entra's skew
    and messages. False for a bad signature or an algorithm Entra would refuse."""
    try:
        jwt.decode(
            token, public_key, algorithms=list(ASSERTION_ALGORITHMS),
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_iss": False},
        )
    except jwt.InvalidTokenError:
        return False
    return True


class TokenProblem(Exception):
    """Why an access token was refused; ``kind`` is one of missing/malformed/signature/expired/audience."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class TokenMint:
    """Issues and validates the sandbox's access tokens.

    ``generation`` lets ``expire-tokens`` invalidate every token issued so far without a clock
    trick: a token carries the generation it was minted in, and an older one counts as expired.
    """

    def __init__(self, lifetime: int) -> None:
        self._key = secrets.token_bytes(32)
        self.lifetime = lifetime
        self.generation = 0

    def expire_all(self) -> None:
        self.generation += 1

    def issue(self, claims: dict[str, Any]) -> tuple[str, int]:
        now = int(time.time())
        body = dict(claims)
        body.update(
            iat=now, nbf=now, exp=now + self.lifetime, uti=b64url(uuid.uuid4().bytes),
            xms_sbx_gen=self.generation,
        )
        token = jwt.encode(body, self._key, algorithm="HS256", headers={"kid": "esj-provision-sandbox"})
        return token, self.lifetime

    def validate(self, authorization: str | None, audiences: frozenset[str]) -> dict[str, Any]:
        """The claims of a valid bearer token for one of ``audiences``; else raises TokenProblem."""
        if not authorization:
            raise TokenProblem("missing", "Access token is empty.")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenProblem("missing", "Access token is empty.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=["HS256"], audience=sorted(audiences),
                options={"require": ["exp", "aud"]},
            )
        except jwt.DecodeError as exc:
            if isinstance(exc, jwt.InvalidSignatureError):
                raise TokenProblem("signature", "Access token validation failure. Invalid signature.") from None
            raise TokenProblem("malformed", "IDX14100: JWT is not well formed, there are no dots (.).") from None
        except jwt.InvalidAlgorithmError:
            raise TokenProblem("signature", "Access token validation failure. Invalid signature.") from None
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise TokenProblem("expired", "Lifetime validation failed, the token is expired.") from None
        except jwt.InvalidTokenError:  # audience, or a required claim missing
            raise TokenProblem("audience", "Access token validation failure. Invalid audience.") from None
        if claims.get("xms_sbx_gen") != self.generation:
            raise TokenProblem("expired", "Lifetime validation failed, the token is expired.")
        return claims
