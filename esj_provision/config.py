"""Connection settings: where the tenant is, how to sign in, which CA to trust.

Precedence, highest first: command-line flag, process environment, a ``.env`` file in the working
directory, the cloud's defaults. The standard ``AZURE_*`` variables mean what they mean for every
Azure tool. A secret is never accepted as a flag value: it comes from the environment, ``.env`` or
a file whose path is given.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .clouds import Cloud, get_cloud
from .errors import ConfigError, UsageError
from .models import is_guid

AUTH_KINDS = ("auto", "secret", "certificate", "managed-identity", "workload-identity")

# Every variable the tool reads; .env.example documents each of them.
ENV_VARS = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "ESJ_PROVISION_CLOUD",
    "ESJ_PROVISION_AUTH",
    "ESJ_PROVISION_CLIENT_SECRET_FILE",
    "ESJ_PROVISION_GRAPH_ENDPOINT",
    "ESJ_PROVISION_EXCHANGE_ENDPOINT",
    "ESJ_PROVISION_CA_BUNDLE",
    "ESJ_PROVISION_JOURNAL",
    "ESJ_PROVISION_PROFILE",
    "ESJ_PROVISION_DEBUG",
    "ESJ_PROVISION_IMAP_ENDPOINT",
    "ESJ_PROVISION_SMTP_ENDPOINT",
    "ESJ_PROVISION_EWS_ENDPOINT",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
)


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of a .env file, read by python-dotenv as the users' other tools read it.

    ``export``, quotes, escapes in double quotes, multi-line quoted values and ``#`` comments are
    python-dotenv's. Values are taken literally (no ``${VAR}`` expansion): a secret may hold a ``$``.
    A line python-dotenv cannot parse is an error naming that line, not a silently skipped setting.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="fix or remove the .env file") from None
    # Imported only when there is a file to read: python-dotenv brings logging (~20 ms of start-up).
    import io

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raw = binding.original.string
            # python-dotenv counts a statement from the blank lines before it; name the line itself.
            number = binding.original.line + raw[: len(raw) - len(raw.lstrip())].count("\n")
            raise ConfigError(
                f"{path}, line {number}: expected KEY=value",
                hint="each line of a .env file is KEY=value; comments start with #",
            )
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def environment(environ: Mapping[str, str] | None = None, dotenv_path: Path | None = None) -> dict[str, str]:
    """The variables every command reads: ``./.env`` overlaid by the process environment.

    An empty variable in the environment does not hide the .env's value (as before).
    """
    env = read_dotenv(dotenv_path or Path.cwd() / ".env")
    env.update({k: v for k, v in (os.environ if environ is None else environ).items() if v != ""})
    return env


def is_loopback_host(host: str) -> bool:
    if host in {"localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, what: str) -> str:
    """An endpoint must be https, or plain http on a loopback address only."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise UsageError(f"{what} {url!r} is not an http(s) URL", hint="give a URL such as https://host")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise UsageError(
            f"{what} {url!r} uses plain http",
            hint="TLS is always verified: use https (plain http is allowed only on loopback addresses)",
        )
    return url


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) of a mail endpoint."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {value!r} is not host:port", hint="for example 127.0.0.1:9993")
    return host, int(port)


@dataclass(frozen=True)
class MailEndpoints:
    """Where ESJ connects instead of Exchange Online's hosts (a test tenant such as the sandbox):
    written into the options emit/onboard/bulk produce, so the probe connects where ESJ would."""

    imap: tuple[str, int] | None = None
    smtp: tuple[str, int] | None = None
    ews: str | None = None


def mail_endpoints(env: Mapping[str, str]) -> MailEndpoints:
    imap = (env.get("ESJ_PROVISION_IMAP_ENDPOINT") or "").strip()
    smtp = (env.get("ESJ_PROVISION_SMTP_ENDPOINT") or "").strip()
    ews = (env.get("ESJ_PROVISION_EWS_ENDPOINT") or "").strip()
    return MailEndpoints(
        imap=parse_host_port(imap, "ESJ_PROVISION_IMAP_ENDPOINT") if imap else None,
        smtp=parse_host_port(smtp, "ESJ_PROVISION_SMTP_ENDPOINT") if smtp else None,
        ews=check_endpoint(ews, "ESJ_PROVISION_EWS_ENDPOINT") if ews else None,
    )


def load_mail_endpoints(environ: Mapping[str, str] | None = None, dotenv_path: Path | None = None) -> MailEndpoints:
    """The mail endpoint overrides from the environment and ``./.env`` (for commands without Settings)."""
    return mail_endpoints(environment(environ, dotenv_path))


@dataclass(frozen=True)
class Settings:
    """Everything needed to reach a tenant. Secrets are excluded from repr and never printed."""

    cloud: Cloud
    tenant_id: str | None
    client_id: str | None
    auth: str
    authority_host: str
    graph_endpoint: str
    exchange_endpoint: str
    ca_bundle: str | None = None
    certificate_path: str | None = None
    federated_token_file: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_password: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    mail: MailEndpoints = field(default_factory=MailEndpoints)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in output, logs or the journal."""
        return tuple(s for s in (self.client_secret, self.certificate_password) if s)

    @property
    def resolved_auth(self) -> str:
        if self.auth != "auto":
            return self.auth
        if self.certificate_path:
            return "certificate"
        if self.client_secret:
            return "secret"
        if self.federated_token_file:
            return "workload-identity"
        return "none"

    def require_tenant(self) -> None:
        """Raise a ConfigError naming every missing piece of sign-in configuration."""
        missing: list[str] = []
        if not self.tenant_id:
            missing.append("AZURE_TENANT_ID (--tenant-id)")
        kind = self.resolved_auth
        if kind in {"secret", "certificate", "workload-identity"} and not self.client_id:
            missing.append("AZURE_CLIENT_ID (--client-id)")
        if kind == "secret" and not self.client_secret:
            missing.append("AZURE_CLIENT_SECRET (or --client-secret-file)")
        if kind == "certificate" and not self.certificate_path:
            missing.append("AZURE_CLIENT_CERTIFICATE_PATH (--certificate)")
        if kind == "workload-identity" and not self.federated_token_file:
            missing.append("AZURE_FEDERATED_TOKEN_FILE")
        if kind == "none":
            missing.append(
                "a credential: AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, "
                "AZURE_FEDERATED_TOKEN_FILE, or --auth managed-identity"
            )
        if missing:
            raise ConfigError(
                "sign-in is not configured: missing " + "; ".join(missing),
                hint="set them in the environment or in a .env file (see .env.example)",
            )


def _ids(tenant: str | None, client: str | None) -> tuple[str | None, str | None]:
    """The tenant (a GUID or a domain: both sign in) and the provisioning app's client id."""
    if tenant and not (is_guid(tenant) or "." in tenant):
        raise UsageError(
            f"tenant {tenant!r} is neither a GUID nor a domain",
            hint="give the directory (tenant) id, or the initial domain such as contoso.onmicrosoft.com",
        )
    if client and not is_guid(client):
        raise UsageError(f"client id {client!r} is not a GUID", hint="give the application (client) id")
    return tenant, client


def _secret(secret_file: str | None, env: Mapping[str, str]) -> str | None:
    """The client secret: from its file when one is named (never from a flag), else the environment."""
    if not secret_file:
        return env.get("AZURE_CLIENT_SECRET") or None
    try:
        secret = Path(secret_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the client secret file {secret_file}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"the client secret file {secret_file} is empty")
    return secret


def _files(cert: str | None, bundle: str | None) -> tuple[str | None, str | None]:
    if cert and not Path(cert).is_file():
        raise ConfigError(
            f"certificate file {cert} does not exist",
            hint="AZURE_CLIENT_CERTIFICATE_PATH must point at a PEM (certificate and key) or PFX file",
        )
    if bundle and not Path(bundle).is_file():
        raise ConfigError(f"CA bundle {bundle} does not exist", hint="give a PEM file of CA certificates")
    return cert, bundle


def load_settings(
    *,
    cloud: str | None = None,
    tenant_id: str | None = None,
    client_id: str | None = None,
    auth: str | None = None,
    client_secret_file: str | None = None,
    certificate_path: str | None = None,
    authority_host: str | None = None,
    graph_endpoint: str | None = None,
    exchange_endpoint: str | None = None,
    ca_bundle: str | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_path: Path | None = None,
) -> Settings:
    """Build Settings from flags (arguments), the environment and ``./.env``."""
    env = environment(environ, dotenv_path)

    def pick(flag: str | None, var: str) -> str | None:
        value = flag if flag not in (None, "") else env.get(var)
        return value.strip() if isinstance(value, str) and value.strip() else None

    the_cloud = get_cloud(pick(cloud, "ESJ_PROVISION_CLOUD") or "global")
    kind = (pick(auth, "ESJ_PROVISION_AUTH") or "auto").lower()
    if kind not in AUTH_KINDS:
        raise UsageError(f"unknown sign-in kind {kind!r}", hint=f"choose one of: {', '.join(AUTH_KINDS)}")

    tenant, client = _ids(pick(tenant_id, "AZURE_TENANT_ID"), pick(client_id, "AZURE_CLIENT_ID"))
    secret = _secret(pick(client_secret_file, "ESJ_PROVISION_CLIENT_SECRET_FILE"), env)
    cert, bundle = _files(pick(certificate_path, "AZURE_CLIENT_CERTIFICATE_PATH"), pick(ca_bundle, "ESJ_PROVISION_CA_BUNDLE"))

    authority = check_endpoint(
        pick(authority_host, "AZURE_AUTHORITY_HOST") or the_cloud.authority_host, "authority host"
    )
    if not authority.startswith("https://"):
        # msal and azure-identity refuse a non-TLS authority even on loopback.
        raise UsageError(f"authority host {authority!r} must be https", hint="Entra ID is only reached over TLS")

    return Settings(
        cloud=the_cloud,
        tenant_id=tenant,
        client_id=client,
        auth=kind,
        authority_host=authority,
        graph_endpoint=check_endpoint(
            pick(graph_endpoint, "ESJ_PROVISION_GRAPH_ENDPOINT") or the_cloud.graph_endpoint, "Graph endpoint"
        ),
        exchange_endpoint=check_endpoint(
            pick(exchange_endpoint, "ESJ_PROVISION_EXCHANGE_ENDPOINT") or the_cloud.exchange_endpoint,
            "Exchange endpoint",
        ),
        ca_bundle=bundle,
        certificate_path=cert,
        federated_token_file=env.get("AZURE_FEDERATED_TOKEN_FILE") or None,
        client_secret=secret,
        certificate_password=env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None,
        mail=mail_endpoints(env),
    )
