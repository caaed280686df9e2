"""The sandbox's bodies have every key of Microsoft's examples (tests/msft_shapes.py)."""

from __future__ import annotations

from typing import Any

import msft_shapes as ms
import pytest
from msft_shapes import has_shape
from sandbox_fixtures import GRAPH_SCOPE, SandboxClient


def fits(actual: Any, example: Any) -> None:
    problems = has_shape(actual, example)
    assert problems == [], problems


def test_token_ok_and_error(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    ok = sandbox_client.token_request({"grant_type": "client_credentials", "scope": GRAPH_SCOPE, **sb.apps["provisioning"]})
    fits(ok.json(), ms.TOKEN_OK)
    bad = sandbox_client.token_request(
        {"grant_type": "client_credentials", "scope": "https://graph.microsoft.com/User.Read", **sb.apps["provisioning"]}
    )
    fits(bad.json(), ms.TOKEN_ERROR)


def test_invoke_ok_and_not_found(sandbox_client: SandboxClient) -> None:
    fits(sandbox_client.invoke("Get-Mailbox", {"Identity": "support@contoso.com"}).json(),
         {k: v for k, v in ms.INVOKE_OK.items() if k != "value"})
    fits(sandbox_client.invoke("Get-Mailbox", {"Identity": "x@contoso.onmicrosoft.com"}).json(), ms.INVOKE_NOT_FOUND)


def test_mailbox_permission_rows(sandbox_client: SandboxClient) -> None:
    rows = sandbox_client.invoke("Get-MailboxPermission", {"Identity": "sales@contoso.com"}).json()["value"]
    self_row, grant = rows[0], next(r for r in rows if r["User"].startswith("adele@"))
    fits(self_row, ms.MAILBOX_PERMISSION_ROWS[0])
    fits(grant, ms.MAILBOX_PERMISSION_ROWS[1])
    assert self_row["AccessRights"] == ms.MAILBOX_PERMISSION_ROWS[0]["AccessRights"]


def test_recipient_permission_row(sandbox_client: SandboxClient) -> None:
    (row,) = sandbox_client.invoke("Get-RecipientPermission", {"Identity": "support@contoso.com"}).json()["value"]
    fits(row, ms.RECIPIENT_PERMISSION_ROW)


def test_graph_user_and_user_purpose_forms(sandbox_client: SandboxClient) -> None:
    user = sandbox_client.graph("/v1.0/users/support@contoso.onmicrosoft.com?$select=id,userPrincipalName,mail,displayName,accountEnabled")
    fits(user.json(), ms.GRAPH_USER)
    assert {k: v for k, v in user.json().items() if k != "@odata.context"} == {
        k: v for k, v in ms.GRAPH_USER.items() if k != "@odata.context"
    }
    fits(sandbox_client.graph("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose").json(), ms.USER_PURPOSE_STRING)
    fits(sandbox_client.graph("/beta/users/support@contoso.com/mailboxSettings").json(), ms.USER_PURPOSE_OBJECT)


@pytest.mark.parametrize(
    ("path", "app", "example"),
    [
        ("/v1.0/users/nobody@contoso.onmicrosoft.com", "provisioning", ms.GRAPH_NOT_FOUND),
        ("/v1.0/users/legacy@contoso.com/mailboxSettings/userPurpose", "provisioning", ms.GRAPH_REST_DISABLED),
        ("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose", "no_directory_role", ms.GRAPH_ACCESS_DENIED),
    ],
)
def test_graph_errors(sandbox_client: SandboxClient, path: str, app: str, example: dict[str, Any]) -> None:
    r = sandbox_client.graph(path, token=sandbox_client.token("graph", app=app))
    fits(r.json(), example)
    assert r.json()["error"]["code"] == example["error"]["code"]


def test_batch_response(make_sandbox: Any) -> None:
    _, c = make_sandbox(throttle_rps=1)
    r = c.graph("/v1.0/$batch", method="POST", json={"requests": [
        {"id": "1", "method": "GET", "url": "/users/support@contoso.onmicrosoft.com?$select=id,userPrincipalName,mail,displayName,accountEnabled"},
        {"id": "2", "method": "GET", "url": "/users/sales@contoso.onmicrosoft.com"},
    ]})
    responses = sorted(r.json()["responses"], key=lambda x: x["id"])
    fits({"responses": responses}, ms.GRAPH_BATCH_RESPONSE)
    fits(responses[1], ms.GRAPH_BATCH_RESPONSE["responses"][1])
    assert responses[1]["status"] == 429
