"""GraphClient: SDK-built requests, raw JSON, error mapping, JSON batching with per-item retries.

Bodies come from tests/msft_shapes.py; respx answers; a fake clock records every wait.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
import respx
from fakes import FakeTime, FakeTokens, run, settings
from msft_shapes import (
    GRAPH_ACCESS_DENIED,
    GRAPH_NOT_FOUND,
    GRAPH_REST_DISABLED,
    GRAPH_USER,
    USER_PURPOSE_OBJECT,
    USER_PURPOSE_STRING,
)

from esj_provision.errors import (
    AccessDeniedError,
    EsjProvisionError,
    MailboxNotEnabledForRestError,
    NotFoundError,
    ServiceError,
    ThrottledError,
    TransientError,
)
from esj_provision.microsoft.graph import GraphClient, LookupResult, parse_user_purpose
from esj_provision.microsoft.http import AdaptivePacer, MicrosoftHttp, RetryPolicy

T = TypeVar("T")
V1 = "https://graph.microsoft.com/v1.0"
BATCH = f"{V1}/$batch"
SELECT = ["id,userPrincipalName,mail,displayName,accountEnabled,onPremisesSyncEnabled"]
UPN = "support@contoso.onmicrosoft.com"


class Env:
    def __init__(self, router: respx.Router, policy: RetryPolicy | None = None) -> None:
        self.time = FakeTime()
        self.tokens = FakeTokens()
        self.http = MicrosoftHttp(
            settings(),
            self.tokens,  # type: ignore[arg-type]
            policy=policy,
            inner=httpx.MockTransport(router.async_handler),
            sleep=self.time.sleep,
        )
        self.http.transport.pacers = {
            name: AdaptivePacer(clock=self.time.clock, sleep=self.time.sleep) for name in ("graph", "exchange")
        }
        self.graph = GraphClient(self.http)


def user_body(ref: str) -> dict[str, Any]:
    return {**GRAPH_USER, "id": f"id-{ref}", "userPrincipalName": ref, "mail": ref}


def batch_answer(
    item: Callable[[dict[str, Any]], dict[str, Any]], log: list[list[dict[str, Any]]], *, by_mail: bool = False
) -> Callable[[httpx.Request], httpx.Response]:
    """A $batch endpoint: answers each sub-request with ``item(sub)``, in reverse order (Graph does
    not promise any order), and logs what each POST asked for. A read by primary address (after a
    404 by key) finds no one, unless ``by_mail``: then ``item`` answers it too."""

    def answer(sub: dict[str, Any]) -> dict[str, Any]:
        query = parse_qs(urlsplit(sub["url"]).query)
        if not by_mail and urlsplit(sub["url"]).path == "/users" and query.get("$filter", [""])[0].startswith("mail eq "):
            return {"status": 200, "body": {"value": []}}  # no one by that primary address either
        return item(sub)

    def handler(request: httpx.Request) -> httpx.Response:
        requests = json.loads(request.content)["requests"]
        log.append(requests)
        responses = [{"id": sub["id"], **answer(sub)} for sub in requests]
        return httpx.Response(200, json={"responses": list(reversed(responses))})

    return handler


def ref_of(sub: dict[str, Any]) -> str:
    return unquote(urlsplit(sub["url"]).path.split("/")[2])


# -- single calls -----------------------------------------------------------------------------


def test_get_user_url_select_and_parsing() -> None:
    router = respx.Router()
    route = router.get(url__startswith=f"{V1}/users/").respond(200, json=GRAPH_USER)

    async def go() -> Any:
        env = Env(router)
        return await env.graph.get_user(UPN)

    user = run(go())
    request = route.calls.last.request
    assert request.url.host == "graph.microsoft.com"
    assert request.url.path == f"/v1.0/users/{UPN}"
    assert "//" not in request.url.raw_path.decode()
    assert parse_qs(request.url.query.decode()) == {"$select": SELECT}
    assert request.headers["Authorization"] == "Bearer graph-1"
    assert user.id == GRAPH_USER["id"] and user.user_principal_name == UPN
    assert user.mail == "support@contoso.com" and user.display_name == "Customer Support"
    assert user.account_enabled is False and user.address == "support@contoso.com"


def test_sdk_uses_the_shared_client_without_middleware() -> None:
    router = respx.Router()
    env = Env(router)
    env.graph.user_request(UPN)  # builds the SDK client
    assert env.graph._adapter._http_client is env.http.graph_client
    assert env.graph._adapter.base_url == V1


def test_dollar_upn_uses_the_key_form() -> None:
    router = respx.Router()
    route = router.get(url__startswith=f"{V1}/users(").respond(200, json=GRAPH_USER)

    async def go() -> None:
        await Env(router).graph.get_user("$svc@contoso.com")

    run(go())
    request = route.calls.last.request
    assert unquote(request.url.path) == "/v1.0/users('$svc@contoso.com')"
    assert parse_qs(request.url.query.decode()) == {"$select": SELECT}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (USER_PURPOSE_STRING, "shared"),
        (USER_PURPOSE_OBJECT, "user"),
        ({"userPurpose": "shared"}, "shared"),
        ({"value": {"value": "room"}}, "room"),
    ],
)
def test_user_purpose_both_forms(body: dict[str, Any], expected: str) -> None:
    """The purpose is read in the lookups' batches (lookup_many with_purpose), the only reader."""
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        purpose = sub["url"].endswith("/mailboxSettings/userPurpose")
        return {"status": 200, "body": body if purpose else user_body(ref_of(sub))}

    router.post(BATCH).side_effect = batch_answer(item, log)
    result = run(Env(router).graph.lookup_many(["support@contoso.com"], with_purpose=True))["support@contoso.com"]
    assert result.purpose == expected and result.purpose_error is None
    assert "/users/support%40contoso.com/mailboxSettings/userPurpose" in [sub["url"] for sub in log[0]]


def test_user_purpose_missing_is_a_service_error() -> None:
    assert parse_user_purpose({"@odata.context": "x"}) is None
    router = respx.Router()
    router.post(BATCH).side_effect = batch_answer(lambda sub: {"status": 200, "body": {} if sub["url"].endswith(
        "/userPurpose") else user_body(ref_of(sub))}, [])
    result = run(Env(router).graph.lookup_many([UPN], with_purpose=True))[UPN]
    assert result.purpose is None and not result.ok
    assert isinstance(result.purpose_error, ServiceError) and "userPurpose" in result.purpose_error.message


def test_404_not_found() -> None:
    """Not found by key, nor by primary address: the first read's error (and request id) stands."""
    router = respx.Router()
    router.get(url__startswith=f"{V1}/users/").respond(404, json=GRAPH_NOT_FOUND)
    by_mail = router.get(url__startswith=f"{V1}/users?").respond(200, json={"value": []})

    async def go() -> None:
        await Env(router).graph.get_user("nobody@contoso.com")

    with pytest.raises(NotFoundError) as info:
        run(go())
    err = info.value
    assert "nobody@contoso.com" in err.message
    assert err.request_id == GRAPH_NOT_FOUND["error"]["innerError"]["request-id"]
    assert err.status_code == 404 and err.hint
    asked = by_mail.calls.last.request
    assert parse_qs(urlsplit(str(asked.url)).query)["$filter"] == [
        "mail eq 'nobody@contoso.com' or proxyAddresses/any(x:x eq 'smtp:nobody@contoso.com')"
    ]
    assert asked.headers["ConsistencyLevel"] == "eventual" and "$count=true" in str(asked.url)


def test_an_address_that_is_not_the_upn_is_found_by_its_address() -> None:
    """Graph's /users/{key} takes an id or a UPN only: a shared mailbox whose address differs from
    its UPN is 404 there, and found by its addresses (primary or alias)."""
    router = respx.Router()
    router.get(url__startswith=f"{V1}/users/").respond(404, json=GRAPH_NOT_FOUND)
    router.get(url__startswith=f"{V1}/users?").respond(
        200, json={"value": [{**user_body("support@contoso.onmicrosoft.com"), "mail": "support@contoso.com"}]}
    )
    user = run(Env(router).graph.get_user("support@contoso.com"))
    assert user.user_principal_name == "support@contoso.onmicrosoft.com" and user.address == "support@contoso.com"


REFUSED = {"error": {"code": "Request_UnsupportedQuery", "message": "Unsupported query."}}


def test_a_refused_address_search_leaves_the_not_found_and_its_hint() -> None:
    """Graph refusing the search by address (400) must not hide what the admin can do: the read by
    key's not-found stands, with its hint to give the UPN or object id."""
    router = respx.Router()
    router.get(url__startswith=f"{V1}/users/").respond(404, json=GRAPH_NOT_FOUND)
    router.get(url__startswith=f"{V1}/users?").respond(400, json=REFUSED)
    with pytest.raises(NotFoundError) as info:
        run(Env(router).graph.get_user("support@contoso.com"))
    assert "UPN" in (info.value.hint or "")

    log: list[list[dict[str, Any]]] = []
    batch = respx.Router()
    batch.post(BATCH).side_effect = batch_answer(
        lambda sub: {"status": 400, "body": REFUSED} if "proxyAddresses" in sub["url"] else {"status": 404, "body": GRAPH_NOT_FOUND},
        log,
        by_mail=True,
    )
    result = run(Env(batch).graph.lookup_many(["support@contoso.com"]))["support@contoso.com"]
    assert len(log) == 2 and isinstance(result.error, NotFoundError) and "UPN" in (result.error.hint or "")


def test_a_throttled_address_search_says_so() -> None:
    """A search that fails for a reason the admin must know (throttled past the retries) says it."""
    log: list[list[dict[str, Any]]] = []
    batch = respx.Router()
    batch.post(BATCH).side_effect = batch_answer(
        lambda sub: {"status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"code": "TooManyRequests"}}}
        if "proxyAddresses" in sub["url"] else {"status": 404, "body": GRAPH_NOT_FOUND},
        log,
        by_mail=True,
    )

    async def go() -> LookupResult:
        return (await Env(batch, RetryPolicy(max_attempts=2)).graph.lookup_many(["support@contoso.com"]))["support@contoso.com"]

    assert isinstance(run(go()).error, ThrottledError)


def test_two_users_with_one_primary_address_are_never_guessed_at() -> None:
    router = respx.Router()
    router.get(url__startswith=f"{V1}/users/").respond(404, json=GRAPH_NOT_FOUND)
    router.get(url__startswith=f"{V1}/users?").respond(200, json={"value": [user_body("a@x.com"), user_body("b@x.com")]})
    with pytest.raises(ServiceError, match="2 directory users have this address"):
        run(Env(router).graph.get_user("shared@contoso.com"))


def test_batched_lookups_find_an_address_that_is_not_the_upn_by_address() -> None:
    """In a batch: the 404s by key are read again together by address; found, ambiguous or not
    found, each reference gets its own answer; a UPN found by key is not read again."""
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    upns = {"support@contoso.com": "support@contoso.onmicrosoft.com", "dup@contoso.com": None}

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        parts = urlsplit(sub["url"])
        if parts.path == "/users":
            address = re.findall(r"'((?:[^']|'')*)'", parse_qs(parts.query)["$filter"][0])[0]
            if address == "support@contoso.com":
                value = [{**user_body(upns[address] or ""), "mail": address}]
            elif address == "dup@contoso.com":
                value = [user_body("d1@x.com"), user_body("d2@x.com")]
            else:
                value = []
            return {"status": 200, "body": {"value": value}}
        ref = ref_of(sub)
        if ref == UPN:
            return {"status": 200, "body": user_body(ref)}
        return {"status": 404, "body": GRAPH_NOT_FOUND}

    router.post(BATCH).side_effect = batch_answer(item, log, by_mail=True)
    refs = [UPN, "support@contoso.com", "dup@contoso.com", "gone@contoso.com", "no-at-sign"]
    results = run(Env(router).graph.lookup_many(refs))

    assert len(log) == 2
    assert sorted(unquote(sub["url"]).split("'")[1] for sub in log[1]) == [
        "dup@contoso.com", "gone@contoso.com", "support@contoso.com"
    ]  # an object id (no @) is not an address: its 404 stands
    assert results[UPN].ok
    found = results["support@contoso.com"]
    assert found.ok and found.user is not None and found.user.user_principal_name == "support@contoso.onmicrosoft.com"
    assert isinstance(results["dup@contoso.com"].error, ServiceError)
    assert isinstance(results["gone@contoso.com"].error, NotFoundError)
    assert results["gone@contoso.com"].error.request_id == GRAPH_NOT_FOUND["error"]["innerError"]["request-id"]
    assert isinstance(results["no-at-sign"].error, NotFoundError)


def purpose_error(status: int, body: dict[str, Any]) -> EsjProvisionError | None:
    """What the batched lookup makes of a mailbox-settings item answered with ``status``/``body``."""
    router = respx.Router()
    router.post(BATCH).side_effect = batch_answer(lambda sub: {"status": status, "body": body} if sub["url"].endswith(
        "/userPurpose") else {"status": 200, "body": user_body(ref_of(sub))}, [])
    result = run(Env(router).graph.lookup_many([UPN], with_purpose=True))[UPN]
    assert result.user is not None and result.purpose is None  # the user exists; its mailbox is unreadable
    return result.purpose_error


def test_404_mailbox_not_enabled_for_rest() -> None:
    err = purpose_error(404, GRAPH_REST_DISABLED)
    assert isinstance(err, MailboxNotEnabledForRestError)
    assert "inactive, soft-deleted, unlicensed or on-premises" in err.message
    assert "Graph cannot read it" in err.message
    assert err.hint and err.request_id == GRAPH_REST_DISABLED["error"]["innerError"]["request-id"]


def test_403_application_access_policy() -> None:
    err = purpose_error(403, GRAPH_ACCESS_DENIED)
    assert isinstance(err, AccessDeniedError)
    assert "Application Access Policy" in err.message
    assert "RBAC for Applications" in err.message
    assert err.request_id == GRAPH_ACCESS_DENIED["error"]["innerError"]["request-id"]


def test_403_names_the_missing_permission() -> None:
    router = respx.Router()
    body = {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}}
    router.get(url__startswith=f"{V1}/users/").respond(403, json=body, headers={"request-id": "hdr-rid"})

    async def go() -> None:
        await Env(router).graph.get_user(UPN)

    with pytest.raises(AccessDeniedError) as info:
        run(go())
    assert "User.Read.All" in info.value.message
    assert info.value.hint and "User.Read.All" in info.value.hint
    assert info.value.request_id == "hdr-rid"  # no innerError: the response header


def test_403_on_the_mailbox_settings_names_mailbox_settings_read() -> None:
    err = purpose_error(403, {"error": {"code": "ErrorAccessDenied",
                                        "message": "Access is denied. Check credentials and try again."}})
    assert isinstance(err, AccessDeniedError)
    assert "MailboxSettings.Read" in err.message and err.hint and "MailboxSettings.Read" in err.hint


def test_401_refreshes_the_token_then_succeeds() -> None:
    router = respx.Router()
    route = router.get(url__startswith=f"{V1}/users/")
    route.side_effect = [httpx.Response(401), httpx.Response(200, json=GRAPH_USER)]

    async def go() -> tuple[Any, FakeTokens]:
        env = Env(router)
        return await env.graph.get_user(UPN), env.tokens

    user, tokens = run(go())
    assert user.id == GRAPH_USER["id"]
    assert [force for _, force in tokens.calls] == [False, True]


def test_401_twice_is_access_denied() -> None:
    router = respx.Router()
    router.get(url__startswith=f"{V1}/users/").respond(401, json={"error": {"code": "InvalidAuthenticationToken",
                                                                            "message": "Access token is empty."}})

    async def go() -> None:
        await Env(router).graph.get_user(UPN)

    with pytest.raises(AccessDeniedError, match="401"):
        run(go())


def test_persistent_429_is_throttled_and_5xx_transient() -> None:
    router = respx.Router()
    router.get(f"{V1}/users/a").respond(429, headers={"Retry-After": "1"})
    router.get(f"{V1}/users/b").respond(503, content=b"<html>busy</html>", headers={"request-id": "rid-503"})

    async def go(ref: str) -> None:
        await Env(router, RetryPolicy(max_attempts=2)).graph.get_user(ref)

    with pytest.raises(ThrottledError):
        run(go("a"))
    with pytest.raises(TransientError) as info:
        run(go("b"))
    assert info.value.request_id == "rid-503" and info.value.status_code == 503


def test_get_service_principal() -> None:
    router = respx.Router()
    app_id = "11111111-2222-3333-4444-555555555555"
    sp = {"id": "sp-object-id", "appId": app_id, "displayName": "ESJ"}
    route = router.get(url__startswith=f"{V1}/servicePrincipals").respond(200, json={"value": [sp]})

    async def go() -> Any:
        return await Env(router).graph.get_service_principal(app_id)

    found = run(go())
    assert found is not None and found.id == "sp-object-id" and found.app_id == app_id
    query = parse_qs(route.calls.last.request.url.query.decode())
    assert query["$filter"] == [f"appId eq '{app_id}'"]
    assert query["$select"] == ["id,appId,displayName"]

    router2 = respx.Router()
    router2.get(url__startswith=f"{V1}/servicePrincipals").respond(200, json={"value": []})
    assert run(Env(router2).graph.get_service_principal(app_id)) is None


def test_service_principal_403_names_application_read_all() -> None:
    router = respx.Router()
    router.get(url__startswith=f"{V1}/servicePrincipals").respond(
        403, json={"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges."}}
    )

    async def go() -> None:
        await Env(router).graph.get_service_principal("x")

    with pytest.raises(AccessDeniedError, match=r"Application\.Read\.All"):
        run(go())


def test_graph_module_does_not_import_the_sdk() -> None:
    code = "import sys, esj_provision.microsoft.graph; sys.exit(1 if any(m.startswith(('msgraph', 'kiota')) for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- batching ---------------------------------------------------------------------------------


def test_batches_hold_at_most_20_with_unique_ids_and_relative_urls() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    route = router.post(BATCH)
    route.side_effect = batch_answer(lambda sub: {"status": 200, "body": user_body(ref_of(sub))}, log)
    refs = [f"user{n}@contoso.com" for n in range(45)]

    async def go() -> dict[str, LookupResult]:
        return await Env(router).graph.lookup_many(refs)

    results = run(go())
    assert sorted(len(b) for b in log) == [5, 20, 20]
    for batch in log:
        assert len({sub["id"] for sub in batch}) == len(batch)
        assert all(sub["method"] == "GET" and sub["url"].startswith("/users/") for sub in batch)
    assert all(call.request.headers["Authorization"].startswith("Bearer ") for call in route.calls)
    assert set(results) == set(refs)
    assert all(r.ok and r.user is not None and r.user.user_principal_name == ref for ref, r in results.items())
    first = log[0][0]["url"]
    assert "$select=id,userPrincipalName" in unquote(first)


def test_batch_with_purpose_pairs_the_answers() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        if sub["url"].endswith("/mailboxSettings/userPurpose"):
            return {"status": 200, "body": USER_PURPOSE_STRING}
        return {"status": 200, "body": user_body(ref_of(sub))}

    router.post(BATCH).side_effect = batch_answer(item, log)
    refs = [f"m{n}@contoso.com" for n in range(15)]

    results = run(Env(router).graph.lookup_many(refs, with_purpose=True))
    assert sorted(len(b) for b in log) == [10, 20]
    assert all(r.ok and r.purpose == "shared" and r.user is not None for r in results.values())


def test_per_item_429_is_rebatched_after_retry_after() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    throttled_once: set[str] = set()

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        ref = ref_of(sub)
        if ref == "b@contoso.com" and ref not in throttled_once:
            throttled_once.add(ref)
            return {"status": 429, "headers": {"Retry-After": "3"},
                    "body": {"error": {"code": "TooManyRequests", "message": "Too many requests"}}}
        return {"status": 200, "body": user_body(ref)}

    router.post(BATCH).side_effect = batch_answer(item, log)

    async def go() -> tuple[dict[str, LookupResult], FakeTime]:
        env = Env(router)
        return await env.graph.lookup_many(["a@contoso.com", "b@contoso.com", "c@contoso.com"]), env.time

    results, clock = run(go())
    assert len(log) == 2
    assert [ref_of(sub) for sub in log[1]] == ["b@contoso.com"]  # only the throttled item again
    assert clock.sleeps == [pytest.approx(3.0)]
    assert all(r.ok for r in results.values())


def test_per_item_throttling_is_bounded() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    router.post(BATCH).side_effect = batch_answer(
        lambda sub: {"status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"code": "TooManyRequests"}}},
        log,
    )

    async def go() -> dict[str, LookupResult]:
        return await Env(router, RetryPolicy(max_attempts=3)).graph.lookup_many(["a@contoso.com"])

    result = run(go())["a@contoso.com"]
    assert len(log) == 3
    assert isinstance(result.error, ThrottledError) and result.user is None


def test_per_item_errors_are_values() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        ref, purpose = ref_of(sub), sub["url"].endswith("/userPurpose")
        if ref == "gone@contoso.com":
            return {"status": 404, "body": GRAPH_NOT_FOUND}
        if ref == "onprem@contoso.com" and purpose:
            return {"status": 404, "body": GRAPH_REST_DISABLED}
        if ref == "scoped@contoso.com" and purpose:
            return {"status": 403, "body": GRAPH_ACCESS_DENIED}
        return {"status": 200, "body": USER_PURPOSE_OBJECT if purpose else user_body(ref)}

    router.post(BATCH).side_effect = batch_answer(item, log)
    refs = ["gone@contoso.com", "onprem@contoso.com", "scoped@contoso.com", "fine@contoso.com"]

    results = run(Env(router).graph.lookup_many(refs, with_purpose=True))
    gone, onprem, scoped, fine = (results[r] for r in refs)
    assert isinstance(gone.error, NotFoundError) and gone.user is None and not gone.ok
    assert gone.error.request_id == GRAPH_NOT_FOUND["error"]["innerError"]["request-id"]
    # The user exists; only its mailbox settings are unreadable.
    assert onprem.error is None and onprem.user is not None and not onprem.ok
    assert isinstance(onprem.purpose_error, MailboxNotEnabledForRestError) and onprem.purpose is None
    assert scoped.error is None and isinstance(scoped.purpose_error, AccessDeniedError)
    assert "Application Access Policy" in scoped.purpose_error.message
    assert fine.ok and fine.purpose == "user" and fine.purpose_error is None
    # Errors are not retried; only the not-found address is read once more, by primary address.
    assert len(log) == 2 and [unquote(sub["url"]).split("'")[1] for sub in log[1]] == ["gone@contoso.com"]
    assert log[1][0]["headers"]["ConsistencyLevel"] == "eventual"


def test_outer_batch_failure_is_an_error_value_for_each_ref() -> None:
    router = respx.Router()
    route = router.post(BATCH).respond(
        403, json={"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges."}},
        headers={"request-id": "outer-rid"},
    )

    results = run(Env(router).graph.lookup_many(["a@contoso.com", "b@contoso.com"]))
    assert len(route.calls) == 1
    for r in results.values():
        assert isinstance(r.error, AccessDeniedError) and "User.Read.All" in r.error.message
        assert r.error.request_id == "outer-rid"


def test_duplicate_refs_are_looked_up_once() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    router.post(BATCH).side_effect = batch_answer(lambda sub: {"status": 200, "body": user_body(ref_of(sub))}, log)

    results = run(Env(router).graph.lookup_many(["a@contoso.com", "A@contoso.com", "a@contoso.com"]))
    assert sum(len(b) for b in log) == 1
    assert set(results) == {"a@contoso.com", "A@contoso.com"}
    assert results["A@contoso.com"].user == results["a@contoso.com"].user


def test_empty_lookup_sends_nothing() -> None:
    router = respx.Router()
    route = router.post(BATCH).respond(200, json={"responses": []})
    assert run(Env(router).graph.lookup_many([])) == {}
    assert not route.called


def test_connection_failure_surfaces_as_transient_error_through_the_sdk() -> None:
    router = respx.Router()
    router.get(url__startswith=f"{V1}/users/").side_effect = httpx.ConnectError("refused")

    async def go() -> None:
        await Env(router, RetryPolicy(max_attempts=2)).graph.get_user(UPN)

    with pytest.raises(TransientError, match="cannot connect"):
        run(go())


def test_dollar_upn_in_a_batch_uses_the_key_form() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    router.post(BATCH).side_effect = batch_answer(lambda sub: {"status": 200, "body": GRAPH_USER}, log)

    run(Env(router).graph.lookup_many(["$svc@contoso.com"]))
    assert unquote(log[0][0]["url"]).startswith("/users('$svc@contoso.com')?$select=")


def test_throttled_batch_items_are_retried_after_retry_after_not_later() -> None:
    """Issue 14: with the Graph pacer at a steady rate, throttled batch items were sent again
    4-7 s apart although Retry-After said 1 s: the batch's whole weight stayed reserved in the
    pacer although Graph had turned the items away. Retry-After is honoured as given."""
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    sent_at: list[float] = []
    throttled_once: set[str] = set()
    env = Env(router)

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        ref = ref_of(sub)
        if ref not in throttled_once:
            throttled_once.add(ref)
            return {"status": 429, "headers": {"Retry-After": "1"},
                    "body": {"error": {"code": "TooManyRequests", "message": "Too many requests"}}}
        return {"status": 200, "body": user_body(ref)}

    answer = batch_answer(item, log)

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(env.time.now)
        return answer(request)

    router.post(BATCH).side_effect = handler
    pacer = env.http.transport.pacers["graph"]
    pacer.ceiling, pacer.rate = 5.0, 4.0  # paced after an earlier 429: 20 items reserve 5 s

    refs = [f"u{n}@contoso.com" for n in range(20)]
    results = run(env.graph.lookup_many(refs))
    assert all(r.ok for r in results.values())
    assert len(log) == 2 and len(log[1]) == 20
    assert sent_at[1] - sent_at[0] == pytest.approx(1.0)


def test_background_lookups_ask_graph_for_low_priority_outer_and_per_item() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    route = router.post(BATCH)
    route.side_effect = batch_answer(lambda sub: {"status": 200, "body": user_body(ref_of(sub))}, log)
    env = Env(router)
    run(env.graph.lookup_many(["a@contoso.com", "b@contoso.com"], background=True))
    assert route.calls.last.request.headers["x-ms-throttle-priority"] == "low"
    assert all(sub["headers"] == {"x-ms-throttle-priority": "low"} for sub in log[-1])
    run(env.graph.lookup_many(["c@contoso.com"]))  # an interactive lookup (onboard) keeps normal priority
    assert "x-ms-throttle-priority" not in route.calls.last.request.headers
    assert "headers" not in log[-1][0]


def test_outlook_items_go_in_their_own_batches_one_batch_in_flight() -> None:
    """Graph dispatches a batch's Outlook items four at a time and throttles an app with more than
    four in flight: two batches of mailboxSettings reads at once would overrun it."""
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    in_flight = {"outlook": 0, "max_outlook": 0, "any": 0, "max_any": 0}
    answer = batch_answer(
        lambda sub: {"status": 200, "body": USER_PURPOSE_STRING}
        if sub["url"].endswith("/userPurpose")
        else {"status": 200, "body": user_body(ref_of(sub))},
        log,
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        outlook = "userPurpose" in request.content.decode()
        in_flight["any"] += 1
        in_flight["outlook"] += outlook
        in_flight["max_any"] = max(in_flight["max_any"], in_flight["any"])
        in_flight["max_outlook"] = max(in_flight["max_outlook"], in_flight["outlook"])
        await asyncio.sleep(0.01)
        in_flight["any"] -= 1
        in_flight["outlook"] -= outlook
        return answer(request)

    router.post(BATCH).side_effect = handler
    refs = [f"m{n}@contoso.com" for n in range(60)]
    results = run(Env(router).graph.lookup_many(refs, with_purpose=True, background=True))
    assert all(r.ok and r.purpose == "shared" for r in results.values())
    kinds = [{"purpose" if s["url"].endswith("/userPurpose") else "user" for s in batch} for batch in log]
    assert sorted(map(sorted, kinds)) == [["purpose"]] * 3 + [["user"]] * 3  # never mixed
    assert in_flight["max_outlook"] == 1  # one Outlook batch at a time ...
    assert in_flight["max_any"] > 1  # ... while directory batches still go out together


# -- users read by object id (the shared-mailbox listing names them) -------------------------------


def ids_asked(sub: dict[str, Any]) -> list[str]:
    """The object ids of an ``/users?$filter=id in (...)`` item (quotes undoubled)."""
    query = parse_qs(urlsplit(sub["url"]).query)
    clause = query["$filter"][0]
    assert clause.startswith("id in (") and clause.endswith(")")
    assert query["$select"] == SELECT
    return [v.replace("''", "'") for v in re.findall(r"'((?:[^']|'')*)'", clause)]


def directory(known: dict[str, str], missing: set[str] = frozenset()) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A Graph answering id filters from ``known`` (object id -> address) and single reads by
    address; ``missing`` object ids are not returned by the filter (replication lag)."""
    by_address = {a.casefold(): oid for oid, a in known.items()}

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        if urlsplit(sub["url"]).path == "/users":
            value = [
                {**user_body(known[oid]), "id": oid.upper()}  # Graph's case need not match the listing's
                for oid in ids_asked(sub)
                if oid in known and oid not in missing
            ]
            return {"status": 200, "body": {"@odata.context": f"{V1}/$metadata#users", "value": value}}
        ref = ref_of(sub)
        if ref.casefold() in by_address:
            return {"status": 200, "body": {**user_body(ref), "id": by_address[ref.casefold()]}}
        return {"status": 404, "body": GRAPH_NOT_FOUND}

    return item


def test_users_with_known_object_ids_are_read_fifteen_to_an_item() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    known = {f"0000-{n:04d}": f"Queue{n}@contoso.com" for n in range(40)}
    router.post(BATCH).side_effect = batch_answer(directory(known), log)
    ids = {address: oid for oid, address in known.items()}

    results = run(Env(router).graph.lookup_many([*ids, "alone@contoso.com"], ids=ids, background=True))

    batch, by_mail = log  # 40 users by id: three items; one reference without an id: its own item
    assert [unquote(sub["url"]).split("'")[1] for sub in by_mail] == ["alone@contoso.com"]  # 404: by mail
    filters = [sub for sub in batch if urlsplit(sub["url"]).path == "/users"]
    assert sorted(len(ids_asked(sub)) for sub in filters) == [10, 15, 15]
    assert sorted(oid for sub in filters for oid in ids_asked(sub)) == sorted(known)
    assert [ref_of(sub) for sub in batch if sub not in filters] == ["alone@contoso.com"]
    assert all(sub["headers"] == {"x-ms-throttle-priority": "low"} for sub in batch)
    for address, oid in ids.items():
        user = results[address].user
        assert results[address].ok and user is not None and user.id == oid.upper() and user.mail == address
    assert isinstance(results["alone@contoso.com"].error, NotFoundError)


def test_a_user_the_id_filter_misses_is_read_on_its_own() -> None:
    """An id the filter does not return (a stale listing, replication lag) is read by its address,
    which answers for it: found, or a plain not-found error."""
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    known = {"id-a": "a@contoso.com", "id-b": "b@contoso.com", "id-c": "c@contoso.com"}
    router.post(BATCH).side_effect = batch_answer(directory(known, missing={"id-b"}), log)
    ids = {"a@contoso.com": "id-a", "b@contoso.com": "id-b", "gone@contoso.com": "id-gone"}

    results = run(Env(router).graph.lookup_many(list(ids), ids=ids))

    assert len(log) == 3  # by id; the two it missed by key; the one still not found by primary address
    assert [ref_of(sub) for sub in log[1]] == ["b@contoso.com", "gone@contoso.com"]
    assert [unquote(sub["url"]).split("'")[1] for sub in log[2]] == ["gone@contoso.com"]
    assert results["a@contoso.com"].ok and results["b@contoso.com"].ok
    assert results["b@contoso.com"].user is not None and results["b@contoso.com"].user.id == "id-b"
    assert isinstance(results["gone@contoso.com"].error, NotFoundError)


def test_a_failed_id_filter_falls_back_to_one_read_per_user() -> None:
    """Graph refusing the filter itself (400 too many clauses, an unsupported query in some cloud)
    costs requests, never an answer: each user is then read on its own."""
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    known = {"id-a": "a@contoso.com", "id-b": "b@contoso.com"}
    plain = directory(known)

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        if urlsplit(sub["url"]).path == "/users":
            return {"status": 400, "body": {"error": {"code": "Request_UnsupportedQuery", "message": "Unsupported query."}}}
        return plain(sub)

    router.post(BATCH).side_effect = batch_answer(item, log)
    ids = {"a@contoso.com": "id-a", "b@contoso.com": "id-b"}

    results = run(Env(router).graph.lookup_many(list(ids), ids=ids))

    assert [len(b) for b in log] == [1, 2]
    assert all(r.ok and r.user is not None for r in results.values())


def test_a_throttled_id_filter_is_sent_again_whole_after_retry_after() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    known = {"id-a": "a@contoso.com", "id-b": "b@contoso.com"}
    plain = directory(known)

    def item(sub: dict[str, Any]) -> dict[str, Any]:
        if len(log) == 1:
            return {"status": 429, "headers": {"Retry-After": "2"}, "body": {"error": {"code": "TooManyRequests"}}}
        return plain(sub)

    router.post(BATCH).side_effect = batch_answer(item, log)
    ids = {"a@contoso.com": "id-a", "b@contoso.com": "id-b"}

    async def go() -> tuple[dict[str, LookupResult], FakeTime]:
        env = Env(router)
        return await env.graph.lookup_many(list(ids), ids=ids), env.time

    results, clock = run(go())
    assert [len(b) for b in log] == [1, 1] and log[0] == log[1]
    assert sorted(ids_asked(log[1][0])) == ["id-a", "id-b"]
    assert clock.sleeps == [pytest.approx(2.0)]
    assert all(r.ok for r in results.values())


def test_a_throttled_id_filter_out_of_attempts_is_an_error_for_each_user() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    router.post(BATCH).side_effect = batch_answer(
        lambda sub: {"status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"code": "TooManyRequests"}}},
        log,
    )
    ids = {"a@contoso.com": "id-a", "b@contoso.com": "id-b"}

    async def go() -> dict[str, LookupResult]:
        return await Env(router, RetryPolicy(max_attempts=2)).graph.lookup_many(list(ids), ids=ids)

    results = run(go())
    assert len(log) == 2
    assert all(isinstance(r.error, ThrottledError) and r.user is None for r in results.values())


def test_an_id_with_a_quote_is_an_odata_literal() -> None:
    router = respx.Router()
    log: list[list[dict[str, Any]]] = []
    router.post(BATCH).side_effect = batch_answer(directory({"o'brien": "ob@contoso.com"}), log)

    results = run(Env(router).graph.lookup_many(["ob@contoso.com"], ids={"ob@contoso.com": "o'brien"}))

    assert "id in ('o''brien')" in unquote(log[0][0]["url"])
    assert results["ob@contoso.com"].ok
