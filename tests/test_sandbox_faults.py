"""Sandbox faults: throttling, queued and random faults (504 after apply, resets), latency, control API."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx
import pytest
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox
from esj_provision.sandbox.faults import TokenBucket

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
GRANT = {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com", "AccessRights": ["FullAccess"],
         "AutoMapping": False, "Confirm": False}


def has_grant(c: SandboxClient) -> bool:
    r = c.invoke("Get-MailboxPermission", {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com"})
    assert r.status_code == 200, r.text
    return bool(r.json()["value"])


def test_token_bucket_retry_after_is_whole_seconds() -> None:
    now = [0.0]
    bucket = TokenBucket(0.5, clock=lambda: now[0])
    assert bucket.take() is None
    assert bucket.take() == 2  # one token every 2 s
    now[0] = 2.0
    assert bucket.take() is None
    fast = TokenBucket(10, clock=lambda: now[0])
    assert [fast.take() for _ in range(10)] == [None] * 10
    assert fast.take() == 1  # never 0


def test_throttling_is_per_service_with_retry_after(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(throttle_rps=1)
    exo, graph = c.token("exchange"), c.token("graph")  # the token endpoint is never throttled
    assert c.invoke("Get-TransportConfig", token=exo).status_code == 200
    r = c.invoke("Get-TransportConfig", token=exo)
    assert r.status_code == 429
    assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "TooManyRequests"
    assert "@adminapi.warnings" in r.json()
    g = c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=graph)  # Graph has its own bucket
    assert g.status_code == 200
    g = c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=graph)
    assert g.status_code == 429 and g.json()["error"]["code"] == "TooManyRequests"
    assert g.json()["error"]["innerError"]["request-id"] == g.headers["request-id"]
    assert [x["fault"] for x in sb.calls() if x["status"] == 429] == ["throttled", "throttled"]


def test_504_after_apply_really_applied_the_write(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.queue_fault("504-after-apply", service="exchange", cmdlet="Add-MailboxPermission")
    r = c.invoke("Add-MailboxPermission", GRANT)
    assert r.status_code == 504
    assert has_grant(c)  # the write was committed before the 504
    call = next(x for x in sb.calls(service="exchange") if x["cmdlet"] == "Add-MailboxPermission")
    assert (call["status"], call["applied"], call["write"], call["fault"]) == (504, True, True, "504-after-apply")
    # the fault was consumed: the retry sees the "already present" warning
    assert c.invoke("Add-MailboxPermission", GRANT).json()["@adminapi.warnings"]


def test_503_is_before_applying(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.queue_fault("503", {"service": "exchange", "cmdlet": "add-mailboxpermission"}, retry_after=0)
    r = c.invoke("Add-MailboxPermission", GRANT)
    assert r.status_code == 503 and r.headers["Retry-After"] == "0"
    assert not has_grant(c)


@pytest.mark.parametrize(("fault", "applied"), [("reset-before", False), ("reset-after-apply", True)])
def test_connection_reset(make_sandbox: MakeSandbox, fault: str, applied: bool) -> None:
    sb, c = make_sandbox()
    sb.queue_fault(fault, service="exchange", cmdlet="Add-MailboxPermission")
    with pytest.raises(httpx.TransportError):
        c.invoke("Add-MailboxPermission", GRANT)
    assert has_grant(c) is applied
    call = next(x for x in sb.calls(service="exchange") if x["cmdlet"] == "Add-MailboxPermission")
    assert (call["status"], call["applied"], call["fault"]) == (None, applied, fault)


def test_queued_429_and_entra_faults(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.queue_fault("429", service="graph", path="/mailboxSettings", retry_after=3, count=2)
    sb.queue_fault("503", service="entra")
    r = c.token_request({"grant_type": "client_credentials", "scope": "https://graph.microsoft.com/.default",
                         **sb.apps["provisioning"]})
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"
    assert c.graph("/v1.0/users/support@contoso.onmicrosoft.com").status_code == 200  # path does not match
    for _ in range(2):
        r = c.graph("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose")
        assert (r.status_code, r.headers["Retry-After"]) == (429, "3")
    assert c.graph("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose").status_code == 200


def test_random_faults_follow_the_seed() -> None:
    def run(seed: int) -> list[str | None]:
        with Sandbox(fault_rate=1.0, seed=seed) as sb:
            c = SandboxClient(sb)
            token = c.token("graph")  # Entra is exempt from random faults
            for _ in range(8):
                with contextlib.suppress(httpx.TransportError):  # the reset faults
                    c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=token)
            c.close()
            return [x["fault"] for x in sb.calls(service="graph")]

    first = run(3)
    assert all(f in ("503", "504-after-apply", "reset-before", "reset-after-apply") for f in first)
    assert len(set(first)) > 1
    assert run(3) == first


def test_latency_range_is_added(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox(latency_ms="60-80")
    token = c.token("graph")
    started = time.monotonic()
    c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=token)
    assert time.monotonic() - started >= 0.06


def test_control_api_over_http(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    base = f"{sb.url}/_sandbox"
    assert c.http.get(f"{base}/health").json()["ok"] is True
    bad = c.http.post(f"{base}/faults", json={"fault": "explode"})
    assert bad.status_code == 400 and "fault must be one of" in bad.json()["error"]
    r = c.http.post(f"{base}/faults", json=[{"fault": "503", "match": {"service": "graph"}, "count": 2}])
    assert r.status_code == 201
    assert c.http.get(f"{base}/faults").json()["queued"][0]["count"] == 2
    assert c.http.delete(f"{base}/faults").status_code == 200 and sb.calls(service="graph") == []
    assert c.http.get(f"{base}/faults").json()["queued"] == []
    c.token("graph")
    calls = c.http.get(f"{base}/calls").json()
    assert [x["service"] for x in calls["calls"]] == ["entra"] and calls["last_seq"] == 1
    assert sb.client_secret not in str(calls)  # the grant kind is logged, never the secret
    assert c.http.post(f"{base}/calls/reset").status_code == 200 and sb.calls() == []
    m = c.http.post(f"{base}/mutate", json={"op": "set-account-enabled", "user": "sales@contoso.com", "enabled": False})
    assert m.status_code == 200 and m.json()["enabled"] is False
    assert c.http.post(f"{base}/mutate", json={"op": "nope"}).status_code == 400
    state = c.http.get(f"{base}/state").json()
    assert state["tenant"]["domain"] == "contoso.onmicrosoft.com"
    assert sb.client_secret not in str(state)  # secrets are never part of the state
