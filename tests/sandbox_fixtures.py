"""Fixtures and a tiny HTTP helper for tests that run against the in-process sandbox.

``sandbox`` / ``sandbox_client`` are session-scoped and must only be READ from; a test that
writes (grants, mutations, faults) takes ``make_sandbox`` and gets its own tenant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from esj_provision.sandbox import Sandbox

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EXCHANGE_SCOPE = "https://outlook.office365.com/.default"
SCOPES = {"graph": GRAPH_SCOPE, "exchange": EXCHANGE_SCOPE}


class SandboxClient:
    """httpx against one sandbox, trusting only its CA."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.http = httpx.Client(verify=sb.ssl_context(), timeout=10)
        self._tokens: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        self.http.close()

    def token_request(self, data: dict[str, str], tenant: str | None = None, **kw: Any) -> httpx.Response:
        return self.http.post(f"{self.sb.url}/{tenant or self.sb.tenant_id}/oauth2/v2.0/token", data=data, **kw)

    def token(self, resource: str = "graph", app: str = "provisioning", fresh: bool = False) -> str:
        key = (resource, app)
        if fresh or key not in self._tokens:
            creds = self.sb.apps[app]
            r = self.token_request(
                {"grant_type": "client_credentials", "scope": SCOPES[resource], **creds}
            )
            assert r.status_code == 200, r.text
            self._tokens[key] = r.json()["access_token"]
        return self._tokens[key]

    def graph(self, path: str, token: str | None = None, method: str = "GET", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token('graph')}", **kw.pop("headers", {})}
        return self.http.request(method, f"{self.sb.graph_url}{path}", headers=headers, **kw)

    def invoke_url(self, tenant: str | None = None) -> str:
        return f"{self.sb.exchange_url}/adminapi/beta/{tenant or self.sb.tenant_domain}/InvokeCommand"

    def invoke(
        self, cmdlet: str, params: dict[str, Any] | None = None, *, token: str | None = None,
        url: str | None = None, headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": params or {}}}
        h = {"Authorization": f"Bearer {token or self.token('exchange')}", **(headers or {})}
        return self.http.post(url or self.invoke_url(), json=body, headers=h)

    def invoke_all(self, cmdlet: str, params: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Every row, following @odata.nextLink by re-POSTing the same body; returns (rows, pages)."""
        r = self.invoke(cmdlet, params)
        assert r.status_code == 200, r.text
        rows, pages = list(r.json()["value"]), 1
        while "@odata.nextLink" in r.json():
            r = self.invoke(cmdlet, params, url=r.json()["@odata.nextLink"])
            assert r.status_code == 200, r.text
            rows += r.json()["value"]
            pages += 1
        return rows, pages


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """A shared sandbox with the seeded tenant. Read-only by convention."""
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="session")
def sandbox_client(sandbox: Sandbox) -> Iterator[SandboxClient]:
    c = SandboxClient(sandbox)
    yield c
    c.close()


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., tuple[Sandbox, SandboxClient]]]:
    """Start a private sandbox (kwargs as for :class:`Sandbox`); stopped after the test."""
    started: list[tuple[Sandbox, SandboxClient]] = []

    def make(**kwargs: Any) -> tuple[Sandbox, SandboxClient]:
        sb = Sandbox(**kwargs).start()
        pair = (sb, SandboxClient(sb))
        started.append(pair)
        return pair

    yield make
    for sb, client in started:
        client.close()
        sb.stop()


class Later(threading.Thread):
    """Runs ``action`` once the sandbox has served ``after`` more requests: a fault mid-run."""

    def __init__(self, sb: Sandbox, after: int, action: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        calls = sb.calls()
        self.sb, self.at, self.action = sb, (calls[-1]["seq"] if calls else 0) + after, action
        self.done = threading.Event()
        self.fired = False

    def run(self) -> None:
        while not self.done.wait(0.01):
            if self.sb.calls(since=self.at):
                self.action()
                self.fired = True
                return

    def __enter__(self) -> Later:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()
