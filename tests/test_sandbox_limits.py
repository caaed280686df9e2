"""The sandbox's throttling as issue 14's measurements need it: Graph's Outlook concurrency limit
(4 requests in flight per app id; a batch's Outlook items dispatched four at a time; 429
ApplicationThrottled beyond that) and a separate rate limit per service."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox, SandboxError
from esj_provision.sandbox.config import SandboxConfig
from esj_provision.sandbox.graph import Ctx, OutlookLimit, batch, is_outlook, outlook_items
from esj_provision.sandbox.tenant import Tenant

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]


async def _concurrent_gets(sb: Sandbox, token: str, paths: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(verify=sb.ssl_context(), timeout=30) as http:
        return list(await asyncio.gather(*(
            http.get(f"{sb.graph_url}{p}", headers={"Authorization": f"Bearer {token}"}) for p in paths
        )))


def test_a_fifth_outlook_request_in_flight_is_throttled(make_sandbox: MakeSandbox) -> None:
    # Latency keeps the requests in flight together; the limit is per app, whatever the mailbox.
    sb, c = make_sandbox(outlook_concurrency=4, latency_ms=400, mailboxes=6)
    token = c.token("graph")
    paths = [f"/v1.0/users/queue{i:04d}@contoso.com/mailboxSettings/userPurpose" for i in range(1, 7)]
    answers = asyncio.run(_concurrent_gets(sb, token, paths))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200, 200, 200, 429, 429]
    for r in answers:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "ApplicationThrottled"
            assert r.json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
            assert int(r.headers["Retry-After"]) >= 1
    # Directory reads are not Outlook resources: never counted.
    users = asyncio.run(_concurrent_gets(sb, token, [f"/v1.0/users/queue{i:04d}@contoso.onmicrosoft.com" for i in range(1, 7)]))
    assert {r.status_code for r in users} == {200}
    assert sum(1 for x in sb.calls(service="graph") if x["fault"] == "outlook-concurrency") == 2


def test_without_the_switch_there_is_no_outlook_limit(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(latency_ms=300, mailboxes=6)
    token = c.token("graph")
    paths = [f"/v1.0/users/queue{i:04d}@contoso.com/mailboxSettings/userPurpose" for i in range(1, 7)]
    assert {r.status_code for r in asyncio.run(_concurrent_gets(sb, token, paths))} == {200}


def test_a_lone_batch_of_twenty_outlook_reads_runs_four_at_a_time_unthrottled(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox(outlook_concurrency=4, latency_ms=5, mailboxes=20)
    reqs = [{"id": str(i), "method": "GET", "url": f"/users/queue{i:04d}@contoso.com/mailboxSettings/userPurpose"}
            for i in range(1, 21)]
    r = c.graph("/v1.0/$batch", method="POST", json={"requests": reqs})
    assert r.status_code == 200
    assert {x["status"] for x in r.json()["responses"]} == {200}


def _ctx() -> Ctx:
    claims = {"appid": "app", "roles": ["User.Read.All", "MailboxSettings.Read"]}
    return Ctx(Tenant(generated=20), claims, "https://sbx/graph", "rid", "crid")


def _batch(n: int, slots: int | None, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    reqs = [{"id": str(i), "method": "GET", "url": f"/users/queue{i:04d}@contoso.com/mailboxSettings"}
            for i in range(1, n + 1)]
    raw = json.dumps({"requests": reqs + (extra or [])}).encode()
    status, body, _ = batch(_ctx(), "v1.0", raw, lambda: None, random.Random(0), lambda *a: None, outlook_slots=slots)
    assert status == 200 and body is not None
    return sorted(body["responses"], key=lambda x: int(x["id"]) if x["id"].isdigit() else 0)


def test_batch_items_beyond_the_free_slots_of_each_wave_come_back_429_one_by_one() -> None:
    """Other requests of the app hold one slot: each wave of four admits three."""
    out = _batch(16, 3, extra=[{"id": "user", "method": "GET", "url": "/users/support@contoso.onmicrosoft.com"}])
    throttled = [x for x in out if x["status"] == 429]
    assert len(throttled) == 4  # one per wave of four
    for x in throttled:
        assert x["body"]["error"]["code"] == "ApplicationThrottled" and x["headers"]["Retry-After"] == "1"
    assert next(x for x in out if x["id"] == "user")["status"] == 200  # not an Outlook resource
    assert {x["status"] for x in _batch(20, None)} == {200}
    assert {x["status"] for x in _batch(3, 3)} == {200}
    assert {x["status"] for x in _batch(4, 0)} == {429}


def test_what_counts_as_an_outlook_resource() -> None:
    assert is_outlook(["v1.0", "users", "a@b.c", "mailboxSettings", "userPurpose"])
    assert is_outlook(["users('a@b.c')", "mailFolders", "inbox"])
    assert is_outlook(["users", "a@b.c", "messages"])
    assert not is_outlook(["v1.0", "users", "a@b.c"])
    assert not is_outlook(["v1.0", "users"])
    assert not is_outlook(["v1.0", "servicePrincipals", "x", "appRoleAssignments"])
    assert outlook_items(b"not json") == 0
    assert outlook_items(json.dumps({"requests": [{"id": "1", "url": "/users/a/mailboxSettings"},
                                                  {"id": "2", "url": "/users/a"}]}).encode()) == 1


def test_outlook_limit_counts_per_app() -> None:
    limit = OutlookLimit(4)
    assert limit.take("a", 4) and not limit.take("a") and limit.take("b")
    limit.give("a")
    assert limit.free("a") == 1 and limit.take("a")
    assert OutlookLimit(0).take("a", 1000)


def test_each_service_has_its_own_rate(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox(graph_rps=1, exchange_rps=100)
    token = c.token("graph")
    graph = [c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=token).status_code for _ in range(3)]
    assert graph[0] == 200 and 429 in graph[1:]
    exo = [c.invoke("Get-TransportConfig", {}).status_code for _ in range(5)]
    assert exo == [200] * 5


def test_a_service_rate_overrides_throttle_rps() -> None:
    cfg = SandboxConfig(throttle_rps=5, exchange_rps=8).validate()
    assert cfg.rate("exchange") == 8 and cfg.rate("graph") == 5
    assert SandboxConfig().validate().rate("graph") is None


@pytest.mark.parametrize("kwargs", [{"graph_rps": 0}, {"exchange_rps": -1}, {"graph_rps": float("nan")},
                                    {"outlook_concurrency": -1}, {"outlook_concurrency": 10**6}])
def test_bad_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SandboxError):
        SandboxConfig(**kwargs).validate()
