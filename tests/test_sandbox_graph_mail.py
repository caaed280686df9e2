"""The sandbox's Graph mail (mailFolders/inbox, sendMail) with Entra roles or RBAC for Applications,
and the ESJ service account's password sign-in (ROPC) at the sandbox's Entra ID."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from mail_helpers import GRAPH, OUTLOOK, OUTLOOK365, app_token, register_esj, scoped_role
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox
from esj_provision.sandbox.tokens import unverified

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
SHARED = "support@contoso.com"
MAIL = {"message": {"subject": "probe", "body": {"contentType": "Text", "content": "hi"},
                    "toRecipients": [{"emailAddress": {"address": "someone@example.com"}}]},
        "saveToSentItems": False}


def claims_of(token: str) -> dict[str, Any]:
    return unverified(token)[1]


def inbox(c: SandboxClient, token: str, mailbox: str = SHARED) -> httpx.Response:
    return c.graph(f"/v1.0/users/{mailbox}/mailFolders/inbox?$select=displayName,totalItemCount", token=token)


def send(c: SandboxClient, token: str, body: object = MAIL, mailbox: str = SHARED) -> httpx.Response:
    return c.graph(f"/v1.0/users/{mailbox}/sendMail", token=token, method="POST", json=body)


def denied(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "ErrorAccessDenied"
    assert r.json()["error"]["message"] == "Access is denied. Check credentials and try again."


def test_the_esj_apps_mail_roles_open_the_inbox_and_send(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    token = app_token(c, GRAPH)
    r = inbox(c, token)
    assert r.status_code == 200 and r.json()["displayName"] == "Inbox"
    r = send(c, token)
    assert r.status_code == 202 and r.content == b""
    [mail] = sb.sent()
    assert (mail["protocol"], mail["from"], mail["to"], mail["subject"]) == (
        "graph", SHARED, ["someone@example.com"], "probe")
    assert mail["principal"] == f"app {sb.esj_app_id}" and token[:40] not in repr(sb.sent())
    assert sb.mutate("clear-sent") == {"op": "clear-sent", "cleared": 1} and sb.sent() == []


def test_without_mail_roles_both_are_denied(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=[])
    token = app_token(c, GRAPH)
    denied(inbox(c, token))
    denied(send(c, token))
    assert sb.sent() == []


def test_read_without_send(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=["Mail.Read"])
    token = app_token(c, GRAPH)
    assert inbox(c, token).status_code == 200
    denied(send(c, token))


def test_rbac_for_applications_in_and_out_of_scope(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=[])
    register_esj(c)
    scoped_role(c, "Application Mail.Read", SHARED)
    scoped_role(c, "Application Mail.Send", SHARED)
    token = app_token(c, GRAPH)  # RBAC grants are not in the token's roles, and need not be
    assert "roles" not in claims_of(token)
    assert inbox(c, token).status_code == 200
    assert send(c, token).status_code == 202
    denied(inbox(c, token, "sales@contoso.com"))
    denied(send(c, token, mailbox="sales@contoso.com"))


def test_an_rbac_assignment_is_pending_until_it_propagates(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=[])
    register_esj(c)
    scoped_role(c, "Application Mail.Read", SHARED)
    token = app_token(c, GRAPH)
    denied(inbox(c, token))
    sb.mutate("propagate")
    assert inbox(c, token).status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [({"message": {"subject": "x", "toRecipients": []}}, "ErrorInvalidRecipients"),
     ({"nothing": 1}, "ErrorInvalidRequest"),
     ("not json", "ErrorInvalidRequest")],
)
def test_send_mail_bad_bodies_are_400_and_send_nothing(make_sandbox: MakeSandbox, body: object, code: str) -> None:
    sb, c = make_sandbox()
    r = send(c, app_token(c, GRAPH), body)
    assert r.status_code == 400 and r.json()["error"]["code"] == code
    assert sb.sent() == []


def test_an_exchange_token_is_not_a_graph_token(sandbox: Sandbox, sandbox_client: SandboxClient) -> None:
    r = inbox(sandbox_client, app_token(sandbox_client, OUTLOOK365))
    assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"


# --------------------------------------------------------------------------- ROPC


def ropc(c: SandboxClient, **form: str) -> httpx.Response:
    data = {"grant_type": "password", "client_id": c.sb.esj_app_id, "username": c.sb.esj_account,
            "password": c.sb.esj_password, "scope": OUTLOOK, **form}
    return c.token_request({k: v for k, v in data.items() if v != ""})


def aadsts(r: httpx.Response) -> tuple[int, str, list[int]]:
    body = r.json()
    return r.status_code, body["error"], body["error_codes"]


def test_ropc_gives_a_delegated_token_for_the_service_account(sandbox: Sandbox, sandbox_client: SandboxClient) -> None:
    r = ropc(sandbox_client)
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and "refresh_token" not in body
    claims = claims_of(body["access_token"])
    assert claims["aud"] == "https://outlook.office.com" and claims["idtyp"] == "user"
    assert claims["upn"] == "esj-svc@contoso.onmicrosoft.com" and claims["appid"] == sandbox.esj_app_id
    assert set(claims["scp"].split()) == {"IMAP.AccessAsUser.All", "SMTP.Send", "EWS.AccessAsUser.All"}
    assert "roles" not in claims
    graph = claims_of(ropc(sandbox_client, scope=GRAPH).json()["access_token"])
    assert graph["aud"] == "https://graph.microsoft.com" and graph["scp"] == "Mail.ReadWrite Mail.Send"
    one = ropc(sandbox_client, scope="https://outlook.office.com/IMAP.AccessAsUser.All offline_access").json()
    assert one["scope"] == "https://outlook.office.com/IMAP.AccessAsUser.All"
    assert ropc(sandbox_client, username="esj-svc@contoso.onmicrosoft.com").status_code == 200  # the UPN


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"password": "wrong"}, (400, "invalid_grant", [50126])),
        ({"username": "nobody@contoso.com"}, (400, "invalid_grant", [50126])),
        ({"username": "support@contoso.com"}, (400, "invalid_grant", [50126])),  # a shared mailbox has no password
        ({"password": ""}, (400, "invalid_request", [900144])),
        ({"client_secret": "wrong"}, (401, "invalid_client", [7000215])),
        ({"scope": "https://outlook.office.com/Mail.Read"}, (400, "invalid_grant", [65001])),
        ({"scope": f"{OUTLOOK} {GRAPH}"}, (400, "invalid_scope", [28000])),
        ({"scope": "https://example.com/.default"}, (400, "invalid_scope", [70011])),
    ],
)
def test_ropc_refusals(sandbox_client: SandboxClient, form: dict[str, str], expected: tuple[int, str, list[int]]) -> None:
    r = ropc(sandbox_client, **form)
    assert aadsts(r) == expected
    assert sandbox_client.sb.esj_password not in r.text


def test_ropc_public_client_setting_and_disabled_account(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    secret = sb.apps["esj"]["client_secret"]
    assert ropc(c, client_secret=secret).status_code == 200  # a right secret is fine either way
    sb.mutate("set-public-client", app=sb.esj_app_id, enabled=False)
    assert aadsts(ropc(c)) == (401, "invalid_client", [7000218])
    assert ropc(c, client_secret=secret).status_code == 200
    sb.mutate("set-account-enabled", user=sb.esj_account, enabled=False)
    assert aadsts(ropc(c, client_secret=secret)) == (400, "invalid_grant", [50057])
    with pytest.raises(ValueError, match="enabled"):
        sb.mutate("set-public-client", app=sb.esj_app_id, enabled="yes")


def test_client_credentials_for_esjs_default_scope(sandbox_client: SandboxClient) -> None:
    claims = claims_of(app_token(sandbox_client, OUTLOOK))
    assert claims["aud"] == "https://outlook.office.com" and claims["idtyp"] == "app"


def test_the_esj_env_carries_what_esj_needs(sandbox: Sandbox) -> None:
    env = sandbox.esj_env
    assert not set(env) & set(sandbox.env)  # kept apart: ESJ_PROVISION_ESJ_CLIENT_ID is onboard's --esj-client-id
    assert env["ESJ_PROVISION_ESJ_CLIENT_ID"] == sandbox.esj_app_id
    assert env["ESJ_PROVISION_ESJ_CLIENT_SECRET"] == sandbox.apps["esj"]["client_secret"]
    assert env["ESJ_PROVISION_ESJ_PASSWORD"] == sandbox.esj_password
    assert env["ESJ_PROVISION_IMAP_ENDPOINT"] == f"127.0.0.1:{sandbox.imap_port}"
    assert env["ESJ_PROVISION_SMTP_ENDPOINT"] == f"127.0.0.1:{sandbox.smtp_port}"
    assert env["ESJ_PROVISION_EWS_ENDPOINT"] == f"{sandbox.url}/EWS/Exchange.asmx"
    assert sandbox.esj_password not in repr(sandbox.state())
