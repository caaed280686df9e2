"""Throwaway TLS material: a CA, the server certificate it signs, and the provisioning app's
client certificate (PEM with key, and PFX).

msal and azure-identity refuse a non-https authority, so the sandbox must speak TLS; a CA that
lives for a few days and is written next to the state keeps that trust local to one sandbox run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .tokens import b64url

VALIDITY = dt.timedelta(days=7)
SKEW = dt.timedelta(minutes=5)  # tolerate a client clock a little behind ours


@dataclass(frozen=True)
class ClientCert:
    """What Entra keeps for a certificate credential: the public key and both thumbprints."""

    public_key: rsa.RSAPublicKey
    sha1_hex: str  # msal's `thumbprint`
    x5t: str  # base64url SHA-1 of the DER
    x5t_s256: str  # base64url SHA-256 of the DER


@dataclass(frozen=True)
class Material:
    ca_path: Path
    server_pem_path: Path  # server cert + key, for the ssl context
    cert_path: Path  # provisioning-app.pem: client cert + private key
    pfx_path: Path
    pfx_password_path: Path
    client_cert: ClientCert


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "esj-provision sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    # Create with the final mode so a key is never readable by others, even for an instant.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def client_cert_info(cert: x509.Certificate) -> ClientCert:
    der = cert.public_bytes(serialization.Encoding.DER)
    pub = cert.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):  # pragma: no cover - we only make RSA client certs
        raise TypeError("client certificates must be RSA")
    return ClientCert(
        public_key=pub,
        sha1_hex=hashlib.sha1(der).hexdigest().upper(),
        x5t=b64url(hashlib.sha1(der).digest()),
        x5t_s256=b64url(hashlib.sha256(der).digest()),
    )


def generate(directory: Path, pfx_password: str, bind_host: str = "127.0.0.1") -> Material:
    """Create every file in ``directory`` (which must exist) and return their paths.

    The server certificate names 127.0.0.1, ::1 and localhost, plus ``bind_host`` when it is
    another loopback address (127.0.0.2 ...), so hostname verification passes however the
    client spells the address it was given."""
    now = dt.datetime.now(dt.timezone.utc)
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address(bind_host)}
    # EC for the CA and server: key generation is ~1 ms instead of ~100 ms for RSA.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("esj-provision sandbox CA (throwaway)")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [*(x509.IPAddress(ip) for ip in sorted(ips, key=str)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    # The app credential must be RSA: Entra's assertions are RS256/PS256, and msal signs with RSA.
    # Self-signed, as most app-registration certificates are; Entra checks the thumbprint, not a chain.
    app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app_name = _name("esj-provision sandbox provisioning app")
    app_cert = (
        x509.CertificateBuilder()
        .subject_name(app_name)
        .issuer_name(app_name)
        .public_key(app_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(app_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_path = directory / "ca.pem"
    _write(ca_path, ca_cert.public_bytes(pem), 0o644)
    server_pem = directory / "server.pem"
    _write(server_pem, srv_cert.public_bytes(pem) + _pem_key(srv_key))
    cert_path = directory / "provisioning-app.pem"
    _write(cert_path, app_cert.public_bytes(pem) + _pem_key(app_key))
    pfx_path = directory / "provisioning-app.pfx"
    _write(
        pfx_path,
        pkcs12.serialize_key_and_certificates(
            b"esj-provision-sandbox",
            app_key,
            app_cert,
            None,
            serialization.BestAvailableEncryption(pfx_password.encode()),
        ),
    )
    pw_path = directory / "provisioning-app.pfx.password"
    _write(pw_path, pfx_password.encode())
    return Material(
        ca_path=ca_path,
        server_pem_path=server_pem,
        cert_path=cert_path,
        pfx_path=pfx_path,
        pfx_password_path=pw_path,
        client_cert=client_cert_info(app_cert),
    )
