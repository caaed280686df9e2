"""Sandbox Microsoft Graph: users, $select, userPurpose (both forms), errors, service principals, $batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox

SUPPORT_ID = "87d349ed-44d7-43e1-9a83-5f2406dee5bd"
SELECT = "$select=id,userPrincipalName,mail,displayName,accountEnabled,userType"
MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]


@pytest.mark.parametrize(
    "path",
    [
        "/v1.0/users/support@contoso.onmicrosoft.com",
        "/v1.0/users/support@contoso.onmicrosoft.com",
        f"/v1.0/users/{SUPPORT_ID}",
        "/v1.0/users('support%40contoso.onmicrosoft.com')",
        "/v1.0/users(%27support@contoso.onmicrosoft.com%27)",
        "/v1.0//users/SUPPORT@contoso.onmicrosoft.com",  # msgraph-sdk's doubled slash, and case-insensitive keys
    ],
)
def test_user_by_any_key_with_select(sandbox_client: SandboxClient, path: str) -> None:
    r = sandbox_client.graph(f"{path}?{SELECT}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith("$metadata#users(id,userPrincipalName,mail,displayName,accountEnabled,userType)/$entity")
    assert {k: v for k, v in body.items() if k != "@odata.context"} == {
        "id": SUPPORT_ID, "userPrincipalName": "support@contoso.onmicrosoft.com", "mail": "support@contoso.com",
        "displayName": "Customer Support", "accountEnabled": False, "userType": "Member",
    }


def test_user_without_select_has_graphs_default_properties(sandbox_client: SandboxClient) -> None:
    body = sandbox_client.graph("/v1.0/users/sales@contoso.onmicrosoft.com").json()
    assert body["mail"] == "sales@contoso.com" and body["id"]
    assert "accountEnabled" not in body  # as in Graph: only with $select
    assert sandbox_client.graph(f"/v1.0/users/sales@contoso.onmicrosoft.com?{SELECT}").json()["accountEnabled"] is True


def test_select_of_an_unknown_property_is_400(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.graph("/v1.0/users/support@contoso.onmicrosoft.com?$select=id,shoeSize")
    assert r.status_code == 400 and r.json()["error"]["code"] == "BadRequest"


@pytest.mark.parametrize(
    ("who", "purpose"),
    [("support", "shared"), ("sales", "shared"), ("adele", "user"), ("esj-svc", "user"), ("room1", "room")],
)
def test_user_purpose_string_and_object_forms(sandbox_client: SandboxClient, who: str, purpose: str) -> None:
    r = sandbox_client.graph(f"/v1.0/users/{who}@contoso.com/mailboxSettings/userPurpose")
    assert r.status_code == 200, r.text
    assert r.json()["value"] == purpose
    assert r.json()["@odata.context"].endswith("/mailboxSettings/userPurpose")
    full = sandbox_client.graph(f"/v1.0/users('{who}@contoso.com')/mailboxSettings").json()
    assert full["userPurpose"] == purpose  # v1.0: the enum string
    beta = sandbox_client.graph(f"/beta/users('{who}@contoso.com')/mailboxSettings").json()
    assert beta["userPurpose"] == {"value": purpose}  # beta and older examples: an object
    assert full["@odata.context"].endswith(f"$metadata#users('{who}%40contoso.com')/mailboxSettings")


def test_unknown_user_is_request_resource_not_found_with_ids(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.graph("/v1.0/users/nobody@contoso.onmicrosoft.com", headers={"client-request-id": "abc-123"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "Request_ResourceNotFound"
    assert err["innerError"]["client-request-id"] == "abc-123"
    assert err["innerError"]["request-id"] == r.headers["request-id"]
    assert r.headers["client-request-id"] == "abc-123"
    assert err["innerError"]["date"]
    assert sandbox_client.graph("/v1.0/users/nobody@contoso.com/mailboxSettings/userPurpose").status_code == 404


def test_mailbox_without_rest_access(sandbox_client: SandboxClient) -> None:
    assert sandbox_client.graph("/v1.0/users/legacy@contoso.onmicrosoft.com").status_code == 200  # the user exists
    for path in ("/mailboxSettings/userPurpose", "/mailboxSettings"):
        r = sandbox_client.graph(f"/v1.0/users/legacy@contoso.com{path}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"


def test_403_without_the_graph_permissions(sandbox_client: SandboxClient) -> None:
    no_graph = sandbox_client.token("graph", app="no_exchange_role")  # holds no Graph role at all
    r = sandbox_client.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=no_graph)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "Authorization_RequestDenied"
    assert r.json()["error"]["message"] == "Insufficient privileges to complete the operation."
    users_only = sandbox_client.token("graph", app="no_directory_role")  # User.Read.All, no MailboxSettings.Read
    assert sandbox_client.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=users_only).status_code == 200
    r = sandbox_client.graph("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose", token=users_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "ErrorAccessDenied"
    r = sandbox_client.graph("/v1.0/servicePrincipals", token=users_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "Authorization_RequestDenied"


@pytest.mark.parametrize("token", ["", "garbage", "exchange"])
def test_401_invalid_authentication_token(sandbox_client: SandboxClient, token: str) -> None:
    value = sandbox_client.token("exchange") if token == "exchange" else token
    headers = {"Authorization": f"Bearer {value}"} if value else {}
    r = sandbox_client.http.get(f"{sandbox_client.sb.graph_url}/v1.0/users/support@contoso.onmicrosoft.com", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "WWW-Authenticate" in r.headers


def test_401_for_an_expired_token(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(token_lifetime=1)
    token = c.token("graph")
    time.sleep(1.05)
    r = c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=token)
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "Lifetime validation failed, the token is expired."
    fresh = c.token("graph", fresh=True)
    assert c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=fresh).status_code == 200
    sb.mutate("expire-tokens")  # and the same without waiting
    assert c.graph("/v1.0/users/support@contoso.onmicrosoft.com", token=fresh).status_code == 401


def test_service_principals_return_the_enterprise_app_object_id(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    r = sandbox_client.graph(f"/v1.0/servicePrincipals?$filter=appId eq '{sb.esj_app_id}'&$select=id,appId,displayName")
    assert r.status_code == 200, r.text
    (sp,) = r.json()["value"]
    assert sp["appId"] == sb.esj_app_id and set(sp) == {"id", "appId", "displayName"}
    app = sandbox_client.graph(f"/v1.0/applications(appId='{sb.esj_app_id}')").json()
    assert app["id"] != sp["id"]  # the App-registration object id is NOT the service principal's
    state_app = next(a for a in sb.state()["apps"] if a["client_id"] == sb.esj_app_id)
    assert (state_app["sp_object_id"], state_app["app_object_id"]) == (sp["id"], app["id"])
    assert sandbox_client.graph(f"/v1.0/servicePrincipals/{sp['id']}").json()["appId"] == sb.esj_app_id
    assert sandbox_client.graph("/v1.0/servicePrincipals?$filter=appId eq 'nope'").json()["value"] == []


def test_app_role_assignments_list_what_an_app_holds(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    prov = next(a for a in sb.state()["apps"] if a["client_id"] == sb.client_id)
    r = sandbox_client.graph(f"/v1.0/servicePrincipals/{prov['sp_object_id']}/appRoleAssignments")
    assert r.status_code == 200
    by_resource: dict[str, set[str]] = {}
    for a in r.json()["value"]:
        by_resource.setdefault(a["resourceDisplayName"], set()).add(a["appRoleId"])
    assert by_resource["Office 365 Exchange Online"] == {"dc50a0fb-09a3-484d-be87-e023b12c6440"}
    assert "df021288-bdef-4463-88db-98f22de89214" in by_resource["Microsoft Graph"]  # User.Read.All
    graph_sp = sandbox_client.graph("/v1.0/servicePrincipals?$filter=displayName eq 'Microsoft Graph'").json()["value"][0]
    assert {r["value"] for r in graph_sp["appRoles"]} >= {"User.Read.All", "MailboxSettings.Read"}


def test_mail_folder_probe_with_the_esj_app(sandbox_client: SandboxClient) -> None:
    esj = sandbox_client.token("graph", app="esj")
    r = sandbox_client.graph("/v1.0/users/support@contoso.com/mailFolders/inbox?$select=id,totalItemCount", token=esj)
    assert r.status_code == 200 and set(r.json()) == {"@odata.context", "id", "totalItemCount"}
    r = sandbox_client.graph("/v1.0/users/support@contoso.com/mailFolders/inbox")  # provisioning app: no Mail.*
    assert r.status_code == 403 and r.json()["error"]["code"] == "ErrorAccessDenied"


def test_users_collection_pages(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox(mailboxes=25)
    r = c.graph("/v1.0/users?$top=10&$select=id,mail")
    seen = [u["mail"] for u in r.json()["value"]]
    while "@odata.nextLink" in r.json():
        link = r.json()["@odata.nextLink"]
        r = c.http.get(link, headers={"Authorization": f"Bearer {c.token('graph')}"})
        seen += [u["mail"] for u in r.json()["value"]]
    assert len(seen) == 34 and len(set(seen)) == 34 and "queue0025@contoso.com" in seen
    r = c.graph("/v1.0/users?$filter=mail eq 'queue0007@contoso.com'")
    assert [u["userPrincipalName"] for u in r.json()["value"]] == ["queue0007@contoso.onmicrosoft.com"]


def test_users_filtered_by_id_in_a_list_of_at_most_fifteen(make_sandbox: MakeSandbox) -> None:
    """``id in (...)`` (supported by default on a user's id), up to 15 values; the 16th is refused
    with the 400 a Graph docs issue quotes (microsoft-graph-docs #21098)."""
    _, c = make_sandbox(mailboxes=20)
    ids = {
        c.graph(f"/v1.0/users/queue{n:04d}@contoso.onmicrosoft.com?$select=id").json()["id"]: f"queue{n:04d}@contoso.com"
        for n in range(1, 17)
    }
    listed = ",".join(f"'{i}'" for i in list(ids)[:15])
    r = c.graph(f"/v1.0/users?$filter=id in ({listed},'no-such-id')&$select=id,mail,accountEnabled")
    assert r.status_code == 400 and r.json()["error"]["code"] == "Request_UnsupportedQuery"
    assert "Max allowed: 15" in r.json()["error"]["message"]
    r = c.graph(f"/v1.0/users?$filter=id in ({listed})&$select=id,mail,accountEnabled")
    assert r.status_code == 200
    assert sorted(u["mail"] for u in r.json()["value"]) == sorted(list(ids.values())[:15])
    assert all(set(u) == {"id", "mail", "accountEnabled"} for u in r.json()["value"])
    r = c.graph("/v1.0/users?$filter=id in ('no-such-id')")
    assert r.status_code == 200 and r.json()["value"] == []


def test_a_directory_read_takes_an_id_or_a_upn_not_an_address(make_sandbox: MakeSandbox) -> None:
    """``GET /users/{id | userPrincipalName}``: an address that is not the UPN is 404 there (as on
    Graph), found by ``$filter=mail eq``; Outlook resources (mailboxSettings) take the address."""
    _, c = make_sandbox()
    r = c.graph("/v1.0/users/support@contoso.com?$select=id,userPrincipalName")
    assert r.status_code == 404 and r.json()["error"]["code"] == "Request_ResourceNotFound"
    by_upn = c.graph("/v1.0/users/SUPPORT@contoso.onmicrosoft.com?$select=id,userPrincipalName").json()
    assert by_upn["userPrincipalName"] == "support@contoso.onmicrosoft.com"
    assert c.graph(f"/v1.0/users/{by_upn['id']}?$select=id").status_code == 200
    found = c.graph("/v1.0/users?$filter=mail eq 'support@contoso.com'&$select=id").json()["value"]
    assert [u["id"] for u in found] == [by_upn["id"]]
    assert c.graph("/v1.0/users?$filter=mail eq 'help@contoso.com'").json()["value"] == []  # an alias is not mail
    by_alias = c.graph(
        "/v1.0/users?$filter=mail eq 'help@contoso.com' or proxyAddresses/any(x:x eq 'smtp:HELP@contoso.com')"
        "&$count=true&$select=id"
    ).json()
    assert [u["id"] for u in by_alias["value"]] == [by_upn["id"]] and by_alias["@odata.count"] == 1
    assert c.graph("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose").json()["value"] == "shared"


@pytest.mark.parametrize(
    ("flt", "status"),
    [
        ("proxyAddresses eq 'smtp:help@contoso.com'", 400),  # a collection needs any()
        ("mail/any(x:x eq 'help@contoso.com')", 400),  # and a plain property takes no any()
        ("displayName eq 'Sales or Support'", 200),  # an `or` inside a literal joins nothing
        ("mail eq 'a@contoso.com' and mail eq 'b@contoso.com'", 400),
    ],
)
def test_filter_forms_the_sandbox_refuses_or_reads_whole(sandbox_client: SandboxClient, flt: str, status: int) -> None:
    r = sandbox_client.graph(f"/v1.0/users?$filter={flt}")
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "Request_UnsupportedQuery"
    else:
        assert r.json()["value"] == []


def test_a_tenant_whose_upns_are_the_addresses(make_sandbox: MakeSandbox) -> None:
    """``upn_domain``: UPN = primary address (most tenants); the directory read by address works."""
    _, c = make_sandbox(mailboxes=2, upn_domain="contoso.com")
    for address in ("support@contoso.com", "esj-svc@contoso.com", "queue0002@contoso.com"):
        user = c.graph(f"/v1.0/users/{address}?$select=userPrincipalName,mail").json()
        assert user["userPrincipalName"] == user["mail"] == address


# --- $batch -----------------------------------------------------------------------------------


def _batch(c: SandboxClient, requests: list[dict[str, Any]]) -> Any:
    return c.graph("/v1.0/$batch", method="POST", json={"requests": requests})


def test_batch_answers_each_item_by_id(sandbox_client: SandboxClient) -> None:
    reqs = [
        {"id": "1", "method": "GET", "url": f"/users/support@contoso.onmicrosoft.com?{SELECT}"},
        {"id": "2", "method": "GET", "url": "/users/support@contoso.com/mailboxSettings/userPurpose"},
        {"id": "3", "method": "GET", "url": "/users/nobody@contoso.onmicrosoft.com"},
        {"id": "4", "method": "GET", "url": "/users/legacy@contoso.com/mailboxSettings/userPurpose"},
        {"id": "5", "method": "GET", "url": "users('room1@contoso.com')/mailboxSettings/userPurpose"},
    ]
    r = _batch(sandbox_client, reqs)
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()["responses"]}
    assert by_id["1"]["status"] == 200 and by_id["1"]["body"]["accountEnabled"] is False
    assert by_id["2"]["body"]["value"] == "shared"
    assert by_id["3"]["status"] == 404 and by_id["3"]["body"]["error"]["code"] == "Request_ResourceNotFound"
    assert by_id["4"]["status"] == 404 and by_id["4"]["body"]["error"]["code"] == "MailboxNotEnabledForRESTAPI"
    assert by_id["5"]["body"]["value"] == "room"
    assert all("Content-Type" in x["headers"] for x in by_id.values())


def test_batch_limits_and_malformed_batches(sandbox_client: SandboxClient) -> None:
    item = {"method": "GET", "url": "/users/support@contoso.onmicrosoft.com"}
    assert _batch(sandbox_client, [{"id": str(i), **item} for i in range(21)]).status_code == 400
    assert _batch(sandbox_client, [{"id": str(i), **item} for i in range(20)]).status_code == 200
    dup = _batch(sandbox_client, [{"id": "1", **item}, {"id": "1", **item}])
    assert dup.status_code == 400 and dup.json()["error"]["code"] == "BadRequest"
    absolute = {"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users/x"}
    assert _batch(sandbox_client, [absolute]).status_code == 400
    assert _batch(sandbox_client, [{"method": "GET", "url": "/users/x"}]).status_code == 400
    body_no_type = {"id": "1", "method": "POST", "url": "/users", "body": {}}
    assert _batch(sandbox_client, [body_no_type]).status_code == 400


def test_batch_depends_on_gives_424_after_a_failure(sandbox_client: SandboxClient) -> None:
    r = _batch(sandbox_client, [
        {"id": "b", "method": "GET", "url": "/users/adele@contoso.onmicrosoft.com", "dependsOn": ["a"]},
        {"id": "a", "method": "GET", "url": "/users/nobody@contoso.onmicrosoft.com"},
    ])
    by_id = {x["id"]: x["status"] for x in r.json()["responses"]}
    assert by_id == {"a": 404, "b": 424}


def test_batch_items_are_throttled_one_by_one(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(throttle_rps=2, seed=7)
    token = c.token("graph")
    reqs = [{"id": str(i), "method": "GET", "url": f"/users/queue{i:04d}@contoso.com"} for i in range(1, 7)]
    r = c.graph("/v1.0/$batch", method="POST", json={"requests": reqs}, token=token)
    assert r.status_code == 200  # the outer request is not what is throttled
    statuses = {x["id"]: x for x in r.json()["responses"]}
    throttled = [x for x in statuses.values() if x["status"] == 429]
    assert len(throttled) == 4  # a burst of 2, then every item on its own
    for x in throttled:
        assert int(x["headers"]["Retry-After"]) >= 1
        assert x["body"]["error"]["code"] == "TooManyRequests"
    assert [x["id"] for x in r.json()["responses"]] != [str(i) for i in range(1, 7)]  # order not guaranteed
    items = [c for c in sb.calls(service="graph") if c.get("batch")]
    assert len(items) == 6 and sum(1 for i in items if i["fault"] == "throttled") == 4


def test_batch_items_use_the_outer_version(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.graph("/beta/$batch", method="POST", json={"requests": [
        {"id": "1", "method": "GET", "url": "/users/support@contoso.onmicrosoft.com"}]})
    (item,) = r.json()["responses"]
    assert item["status"] == 200 and "/beta/$metadata" in item["body"]["@odata.context"]
