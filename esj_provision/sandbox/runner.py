"""``Sandbox``: the whole sandbox in-process, on its own event loop in a background thread.

Tests use it as a context manager and talk to it over real HTTPS, exactly as the CLI would. The
helpers (``calls()``, ``mutate()`` ...) run on the server's loop via ``run_coroutine_threadsafe``
so they never race a request handler.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .config import SandboxConfig
from .server import SandboxServer
from .tenant import (
    ESJ_ACCOUNT,
    ESJ_APP_ID,
    FIXED_SECRETS,
    NO_DIRECTORY_ROLE_APP_ID,
    NO_EXCHANGE_ROLE_APP_ID,
    PROVISIONING_APP_ID,
)

T = TypeVar("T")
_TIMEOUT = 30.0


class Sandbox:
    """A running sandbox tenant. ``with Sandbox(page_size=2) as sb: ... sb.env ...``"""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dir: str | Path | None = None,
        state_path: str | Path | None = None,
        page_size: int = 1000,
        throttle_rps: float | None = None,
        graph_rps: float | None = None,
        exchange_rps: float | None = None,
        outlook_concurrency: int = 0,
        fault_rate: float = 0.0,
        seed: int = 0,
        latency_ms: str | int | tuple[int, int] | None = None,
        token_lifetime: int = 3599,
        mailboxes: int = 0,
        upn_domain: str | None = None,
        client_secret: str | None = None,
        pfx_password: str | None = None,
        imap_port: int = 0,
        smtp_port: int = 0,
        propagation_s: float = 0.0,
        esj_password: str | None = None,
        verbose: bool = False,
    ) -> None:
        cfg = SandboxConfig(
            host=host, port=port, dir=Path(dir) if dir is not None else None,
            state_path=Path(state_path) if state_path is not None else None, page_size=page_size,
            throttle_rps=throttle_rps, graph_rps=graph_rps, exchange_rps=exchange_rps,
            outlook_concurrency=outlook_concurrency, fault_rate=fault_rate, seed=seed,
            latency_ms=latency_ms,  # type: ignore[arg-type]  # validate() normalises it
            token_lifetime=token_lifetime, mailboxes=mailboxes, upn_domain=upn_domain, client_secret=client_secret,
            pfx_password=pfx_password, imap_port=imap_port, smtp_port=smtp_port, propagation_s=propagation_s,
            esj_password=esj_password, verbose=verbose,
        )
        self._server = SandboxServer(cfg)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Sandbox:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="esj-provision-sandbox", daemon=True)
        thread.start()
        ready.wait(_TIMEOUT)
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._server.start(), loop).result(_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), loop).result(_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_TIMEOUT)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None:
            raise RuntimeError("the sandbox is not running")

        async def on_loop() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(_TIMEOUT)

    # --- where it is --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def graph_url(self) -> str:
        return f"{self.url}/graph"

    @property
    def exchange_url(self) -> str:
        return f"{self.url}/exchange"

    @property
    def env(self) -> dict[str, str]:
        """AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_AUTHORITY_HOST,
        ESJ_PROVISION_GRAPH_ENDPOINT, ESJ_PROVISION_EXCHANGE_ENDPOINT, ESJ_PROVISION_CA_BUNDLE."""
        return self._server.env()

    @property
    def esj_env(self) -> dict[str, str]:
        """ESJ_PROVISION_ESJ_CLIENT_ID, _ESJ_CLIENT_SECRET, _ESJ_PASSWORD, _IMAP_ENDPOINT, _SMTP_ENDPOINT,
        _EWS_ENDPOINT: what ESJ uses. Apart from :attr:`env` because ESJ_PROVISION_ESJ_CLIENT_ID is
        also onboard's ``--esj-client-id``; the env file of ``esj-provision sandbox`` has both."""
        return self._server.esj_env()

    @property
    def imap_port(self) -> int:
        return self._server.imap.port if self._server.imap else 0

    @property
    def smtp_port(self) -> int:
        return self._server.smtp.port if self._server.smtp else 0

    @property
    def ews_url(self) -> str:
        return f"{self.url}/EWS/Exchange.asmx"

    @property
    def esj_account(self) -> str:
        """The ESJ service account's address (its UPN is esj-svc@contoso.onmicrosoft.com)."""
        return ESJ_ACCOUNT

    @property
    def esj_password(self) -> str:
        return self._server.esj_password

    @property
    def dir(self) -> Path:
        """Where ca.pem and the app certificate files are (a temp dir unless ``dir=`` was given)."""
        if self._server.dir is None:
            raise RuntimeError("the sandbox is not running")
        return self._server.dir

    def _material(self) -> Any:
        if self._server.material is None:
            raise RuntimeError("the sandbox is not running")
        return self._server.material

    @property
    def ca_path(self) -> Path:
        return Path(self._material().ca_path)

    @property
    def cert_path(self) -> Path:
        """provisioning-app.pem: the provisioning app's certificate and private key."""
        return Path(self._material().cert_path)

    @property
    def pfx_path(self) -> Path:
        return Path(self._material().pfx_path)

    @property
    def pfx_password_path(self) -> Path:
        return Path(self._material().pfx_password_path)

    @property
    def pfx_password(self) -> str:
        return self._server.pfx_password

    @property
    def cert_thumbprint(self) -> str:
        """SHA-1 hex of the provisioning app's certificate (msal's ``thumbprint``)."""
        return str(self._material().client_cert.sha1_hex)

    @property
    def tenant_id(self) -> str:
        return self._server.tenant.tenant_id

    @property
    def tenant_domain(self) -> str:
        return self._server.tenant.domain

    @property
    def client_id(self) -> str:
        return PROVISIONING_APP_ID

    @property
    def client_secret(self) -> str:
        return self._server.client_secret

    @property
    def esj_app_id(self) -> str:
        return ESJ_APP_ID

    @property
    def apps(self) -> dict[str, dict[str, str]]:
        """The seeded apps by role, each with ``client_id`` and ``client_secret``."""
        return {
            "provisioning": {"client_id": PROVISIONING_APP_ID, "client_secret": self.client_secret},
            "no_directory_role": {"client_id": NO_DIRECTORY_ROLE_APP_ID,
                                  "client_secret": FIXED_SECRETS[NO_DIRECTORY_ROLE_APP_ID]},
            "no_exchange_role": {"client_id": NO_EXCHANGE_ROLE_APP_ID,
                                 "client_secret": FIXED_SECRETS[NO_EXCHANGE_ROLE_APP_ID]},
            "esj": {"client_id": ESJ_APP_ID, "client_secret": FIXED_SECRETS[ESJ_APP_ID]},
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this sandbox's CA (for httpx ``verify=``)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    # --- control (same operations as the /_sandbox/ API) --------------------------------------

    def calls(self, since: int = 0, service: str | None = None) -> list[dict[str, Any]]:
        return self._call(lambda: [dict(c) for c in self._server.calls_json(since, service)])

    def reset_calls(self) -> None:
        self._call(self._server.reset_calls)

    def state(self) -> dict[str, Any]:
        return self._call(self._server.state_json)

    def queue_fault(
        self, fault: str, match: dict[str, str] | None = None, *, count: int = 1,
        retry_after: int | None = None, **match_kw: str,
    ) -> dict[str, Any]:
        """E.g. ``sb.queue_fault("504-after-apply", service="exchange", cmdlet="Add-MailboxPermission")``."""
        spec = {"fault": fault, "match": {**(match or {}), **match_kw}, "count": count, "retry_after": retry_after}
        return self._call(lambda: self._server.queue_fault(spec))

    def sent(self) -> list[dict[str, Any]]:
        """Mail the SMTP and Graph stand-ins accepted: protocol, from, to, subject, principal, app_id,
        mailbox, message_id, time (never a token)."""
        return self._call(self._server.sent_json)

    def propagation(self) -> dict[str, Any]:
        """``{"seconds": delay, "pending": [grant keys not yet effective]}``."""
        return self._call(self._server.propagation_json)

    def mutate(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """E.g. ``sb.mutate("remove-grant", mailbox="support@contoso.com", trustee="esj-svc@contoso.com")``."""
        return self._call(lambda: self._server.apply_mutation({"op": op, **kwargs}))
