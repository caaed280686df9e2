"""Just enough JWT: issue HS256 access tokens, read client assertions, verify RS/PS signatures.

Access tokens are HS256 with a key that never leaves the process: clients must treat Microsoft
access tokens as opaque anyway, and only the sandbox itself has to validate them. Client
assertions are verified against the registered certificate's public key, as Entra does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Jwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def split(token: str) -> Jwt:
    """Decode without verifying. Raises ValueError for anything that is not a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT ({exc})") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT (header or claims are not JSON objects)")
    return Jwt(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


_RSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512,
    "PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512,
}


def verify_rsa(public_key: rsa.RSAPublicKey, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """RS* (PKCS#1 v1.5) or PS* (PSS). False for a bad signature or an algorithm Entra would refuse."""
    algo = _RSA_HASHES.get(alg)
    if algo is None:
        return False
    pad: padding.AsymmetricPadding
    if alg.startswith("PS"):
        # AUTO: accept any salt length; msal/PyJWT use the digest length, other signers may not.
        pad = padding.PSS(mgf=padding.MGF1(algo()), salt_length=padding.PSS.AUTO)
    else:
        pad = padding.PKCS1v15()
    try:
        public_key.verify(signature, signing_input, pad, algo())
    except InvalidSignature:
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
        header = {"typ": "JWT", "alg": "HS256", "kid": "esj-provision-sandbox"}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(body, separators=(",", ":")).encode())
        )
        sig = hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(sig)}", self.lifetime

    def validate(self, authorization: str | None, audiences: frozenset[str]) -> dict[str, Any]:
        """The claims of a valid bearer token for one of ``audiences``; else raises TokenProblem."""
        if not authorization:
            raise TokenProblem("missing", "Access token is empty.")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenProblem("missing", "Access token is empty.")
        try:
            jwt = split(token)
        except ValueError:
            raise TokenProblem(
                "malformed", "IDX14100: JWT is not well formed, there are no dots (.)."
            ) from None
        expected = hmac.new(self._key, jwt.signing_input, hashlib.sha256).digest()
        if jwt.header.get("alg") != "HS256" or not hmac.compare_digest(expected, jwt.signature):
            raise TokenProblem("signature", "Access token validation failure. Invalid signature.")
        claims = jwt.claims
        exp = claims.get("exp")
        if (
            not isinstance(exp, int)
            or exp <= time.time()
            or claims.get("xms_sbx_gen") != self.generation
        ):
            raise TokenProblem("expired", "Lifetime validation failed, the token is expired.")
        if claims.get("aud") not in audiences:
            raise TokenProblem("audience", "Access token validation failure. Invalid audience.")
        return claims
