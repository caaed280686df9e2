"""ExchangeClient over InvokeCommand: the exact wire request, paging, warnings, rows, errors.

Bodies come from tests/msft_shapes.py (Microsoft's shapes); respx answers; nothing sleeps.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import httpx
import pytest
import respx
from fakes import FakeTokens, run
from fakes import settings as _settings
from msft_shapes import (
    INVOKE_ACCESS_DENIED,
    INVOKE_NOT_FOUND,
    INVOKE_OK,
    MAILBOX_PERMISSION_ROWS,
    MAILBOX_ROW,
    MANAGEMENT_SCOPE_ROW,
    RECIPIENT_PERMISSION_ROW,
    SEND_AS_ROWS_OF_TRUSTEE,
    TENANT,
    WARNING_ACE_MISSING,
    WARNING_ALREADY_PRESENT,
)

from esj_provision.errors import (
    AccessDeniedError,
    AmbiguousWriteError,
    NotFoundError,
    ServiceError,
    ThrottledError,
    TransientError,
    UsageError,
)
from esj_provision.microsoft import exchange as exchange_module
from esj_provision.microsoft.exchange import (
    ExchangeClient,
    error_message,
    holds,
    parse_permission_row,
    parse_recipient_permission_row,
    row_matches,
    split_rights,
)
from esj_provision.microsoft.http import MicrosoftHttp, RetryPolicy
from esj_provision.models import ManagementScope, PermissionRow, RecipientPermissionRow, SendAsGrant

T = TypeVar("T")
EXO = "https://outlook.office365.com"
URL = f"{EXO}/adminapi/beta/{TENANT}/InvokeCommand"
TENANT_GUID = "0550b473-9fd2-4dbb-a058-a1640b4bf458"
SYSTEM = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
MBX = "support@contoso.com"
SVC = "esj-svc@contoso.com"


class Sleeps(list[float]):
    async def __call__(self, delay: float) -> None:
        self.append(delay)


def client(
    router: respx.Router, *, tenant: str = TENANT, policy: RetryPolicy | None = None
) -> tuple[ExchangeClient, Sleeps, FakeTokens]:
    sleeps, tokens = Sleeps(), FakeTokens()
    http = MicrosoftHttp(
        _settings(TENANT),
        tokens,  # type: ignore[arg-type]
        policy=policy,
        inner=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
    )
    return ExchangeClient(http, tenant), sleeps, tokens


def ok(rows: list[dict[str, Any]] | None = None, warnings: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(INVOKE_OK))
    body["value"] = rows if rows is not None else []
    body["@adminapi.warnings"] = warnings or []
    body.update(extra)
    return body


def sent(route: respx.Route, n: int = -1) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(route.calls[n].request.content)
    return data


# -- the request on the wire ------------------------------------------------------------------


def test_add_mailbox_permission_exact_request() -> None:
    router = respx.Router()
    route = router.post(URL).respond(200, json=ok(), headers={"request-id": "rid-add"})

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.add_mailbox_permission(MBX, SVC)

    result = run(go())
    request = route.calls.last.request
    assert request.method == "POST" and str(request.url) == URL
    h = request.headers
    assert h["Content-Type"] == "application/json"
    assert h["X-ResponseFormat"] == "json"
    assert h["Prefer"] == "odata.maxpagesize=1000"
    assert h["X-CmdletName"] == "Add-MailboxPermission"
    assert h["X-AnchorMailbox"] == f"UPN:{MBX}"
    assert h["Authorization"] == "Bearer exo-1"
    assert "client-request-id" in h
    assert sent(route) == {
        "CmdletInput": {
            "CmdletName": "Add-MailboxPermission",
            "Parameters": {
                "Identity": MBX,
                "User": SVC,
                "AccessRights": ["FullAccess"],
                "InheritanceType": "All",
                "AutoMapping": False,
                "Confirm": False,
            },
        }
    }
    assert result.cmdlet == "Add-MailboxPermission"
    assert result.request_id == "rid-add" and result.already_done is False


@pytest.mark.parametrize(
    ("method", "cmdlet", "params"),
    [
        (
            "remove_mailbox_permission",
            "Remove-MailboxPermission",
            {"Identity": MBX, "User": SVC, "AccessRights": ["FullAccess"], "InheritanceType": "All", "Confirm": False},
        ),
        (
            "add_recipient_permission",
            "Add-RecipientPermission",
            {"Identity": MBX, "Trustee": SVC, "AccessRights": ["SendAs"], "Confirm": False},
        ),
        (
            "remove_recipient_permission",
            "Remove-RecipientPermission",
            {"Identity": MBX, "Trustee": SVC, "AccessRights": ["SendAs"], "Confirm": False},
        ),
    ],
)
def test_write_envelopes(method: str, cmdlet: str, params: dict[str, Any]) -> None:
    router = respx.Router()
    route = router.post(URL).respond(200, json=ok())

    async def go() -> None:
        exo, _, _ = client(router)
        await getattr(exo, method)(MBX, SVC)

    run(go())
    assert sent(route) == {"CmdletInput": {"CmdletName": cmdlet, "Parameters": params}}
    assert route.calls.last.request.headers["X-CmdletName"] == cmdlet
    assert route.calls.last.request.headers["X-AnchorMailbox"] == f"UPN:{MBX}"


def test_read_envelopes_with_and_without_filters() -> None:
    router = respx.Router()
    route = router.post(URL).respond(200, json=ok())

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_mailbox_permissions(MBX)
        await exo.get_mailbox_permissions(MBX, user=SVC)
        await exo.get_recipient_permissions(MBX, trustee=SVC)

    run(go())
    assert sent(route, 0)["CmdletInput"] == {"CmdletName": "Get-MailboxPermission", "Parameters": {"Identity": MBX}}
    assert sent(route, 1)["CmdletInput"]["Parameters"] == {"Identity": MBX, "User": SVC}
    assert sent(route, 2)["CmdletInput"] == {
        "CmdletName": "Get-RecipientPermission",
        "Parameters": {"Identity": MBX, "Trustee": SVC},
    }


def test_org_level_anchor_for_a_domain_tenant() -> None:
    router = respx.Router()
    route = router.post(URL).respond(200, json=ok([{"SmtpClientAuthenticationDisabled": True}]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.get_transport_config()

    config = run(go())
    assert config.smtp_client_authentication_disabled is True
    assert route.calls.last.request.headers["X-AnchorMailbox"] == f"UPN:{SYSTEM}@{TENANT}"
    assert sent(route) == {"CmdletInput": {"CmdletName": "Get-TransportConfig", "Parameters": {}}}


def test_org_level_anchor_for_a_guid_tenant() -> None:
    router = respx.Router()
    url = f"{EXO}/adminapi/beta/{TENANT_GUID}/InvokeCommand"
    route = router.post(url).respond(200, json=ok())

    async def go() -> None:
        exo, _, _ = client(router, tenant=TENANT_GUID)
        await exo.new_management_scope("esj", "PrimarySmtpAddress -eq 'support@contoso.com'")

    run(go())
    assert route.calls.last.request.headers["X-AnchorMailbox"] == f"APP:{SYSTEM}@{TENANT_GUID}"
    assert sent(route)["CmdletInput"]["Parameters"] == {
        "Name": "esj",
        "RecipientRestrictionFilter": "PrimarySmtpAddress -eq 'support@contoso.com'",
    }


def test_identity_that_is_not_an_address_gets_the_org_anchor() -> None:
    router = respx.Router()
    exo, _, _ = client(router)
    assert exo.anchor_for("87d349ed-44d7-43e1-9a83-5f2406dee5bd") == f"UPN:{SYSTEM}@{TENANT}"
    assert exo.anchor_for(None) == f"UPN:{SYSTEM}@{TENANT}"
    assert exo.anchor_for(MBX) == f"UPN:{MBX}"


# -- paging and warnings ----------------------------------------------------------------------


def test_paging_re_posts_the_same_body_to_next_link() -> None:
    router = respx.Router()
    next_link = f"{URL}?$skiptoken=abc"
    # The more specific route first: respx matches a URL without a query whatever the query.
    second = router.post(next_link).respond(200, json=ok([MAILBOX_PERMISSION_ROWS[1]]), headers={"request-id": "p2"})
    first = router.post(URL).respond(
        200, json=ok([MAILBOX_PERMISSION_ROWS[0]], **{"@odata.nextLink": next_link}), headers={"request-id": "p1"}
    )

    async def go() -> tuple[Any, Sleeps]:
        exo, sleeps, _ = client(router)
        return await exo.invoke("Get-MailboxPermission", {"Identity": MBX}, anchor=MBX), sleeps

    result, sleeps = run(go())
    assert [r["User"] for r in result.rows] == ["NT AUTHORITY\\SELF", "rob@m7kni.io"]
    assert result.request_id == "p1"
    page1, page2 = first.calls.last.request, second.calls.last.request
    assert page2.method == "POST"
    assert page2.content == page1.content
    for name in ("X-CmdletName", "X-AnchorMailbox", "X-ResponseFormat", "Prefer", "Content-Type"):
        assert page2.headers[name] == page1.headers[name]
    assert sleeps == []  # the link expires within minutes: no pause between pages


def test_next_link_on_another_exchange_host_is_rebased() -> None:
    router = respx.Router()
    foreign = f"https://outlook.office.com/adminapi/beta/{TENANT}/InvokeCommand?$skiptoken=x"
    router.post(URL, params={"$skiptoken": "x"}).respond(200, json=ok([{"n": 2}]))
    router.post(URL).respond(200, json=ok([{"n": 1}], **{"@odata.nextLink": foreign}))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.invoke("Get-Mailbox", {"Identity": MBX})

    result = run(go())
    assert result.rows == [{"n": 1}, {"n": 2}]
    assert all(c.request.url.host == "outlook.office365.com" for c in router.calls)
    assert all(c.request.headers["Authorization"].startswith("Bearer") for c in router.calls)


def test_next_link_elsewhere_is_refused() -> None:
    router = respx.Router()
    router.post(URL).respond(200, json=ok([{"n": 1}], **{"@odata.nextLink": "https://evil.test/steal"}))

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.invoke("Get-Mailbox", {"Identity": MBX})

    with pytest.raises(ServiceError, match="another host"):
        run(go())
    assert len(router.calls) == 1


def test_page_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange_module, "MAX_PAGES", 3)
    router = respx.Router()
    route = router.post(url__startswith=URL).respond(200, json=ok([{"n": 1}], **{"@odata.nextLink": f"{URL}?p=n"}))

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.invoke("Get-Mailbox", {})

    with pytest.raises(ServiceError, match="more than 3 pages"):
        run(go())
    assert len(route.calls) == 3


def test_not_found_while_paging_is_not_absence() -> None:
    router = respx.Router()
    router.post(URL, params={"p": "2"}).respond(404, json=INVOKE_NOT_FOUND)
    router.post(URL).respond(200, json=ok([{"n": 1}], **{"@odata.nextLink": f"{URL}?p=2"}))

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_mailbox_permissions(MBX)

    with pytest.raises(ServiceError, match="truncated") as info:
        run(go())
    assert not isinstance(info.value, NotFoundError)


def test_warnings_from_body_and_header() -> None:
    router = respx.Router()
    router.post(URL).respond(
        200, json=ok([], warnings=["first warning"]), headers={"X-Warnings": "second warning"}
    )

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.invoke("Set-Mailbox", {"Identity": MBX}, anchor=MBX, write=True)

    assert run(go()).warnings == ["first warning", "second warning"]


@pytest.mark.parametrize("method", ["add_mailbox_permission", "add_recipient_permission"])
def test_already_present_warning_is_success(method: str) -> None:
    router = respx.Router()
    router.post(URL).respond(200, json=ok([], warnings=[WARNING_ALREADY_PRESENT]), headers={"request-id": "r"})

    async def go() -> Any:
        exo, _, _ = client(router)
        return await getattr(exo, method)(MBX, SVC)

    result = run(go())
    assert result.already_done is True
    assert result.warnings == (WARNING_ALREADY_PRESENT,)
    assert result.request_id == "r"


@pytest.mark.parametrize("method", ["remove_mailbox_permission", "remove_recipient_permission"])
def test_missing_ace_warning_on_remove_is_success(method: str) -> None:
    router = respx.Router()
    router.post(URL).respond(200, json=ok([], warnings=[WARNING_ACE_MISSING]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await getattr(exo, method)(MBX, SVC)

    assert run(go()).already_done is True


def test_already_present_as_an_error_is_success_too() -> None:
    router = respx.Router()
    body = {"error": {"code": "BadRequest", "message": "Invalid Operation", "details": [
        {"code": "Client", "message": f"|Microsoft.Exchange.Some.Exception|{WARNING_ALREADY_PRESENT}"}]}}
    router.post(URL).respond(400, json=body)

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.add_recipient_permission(MBX, SVC)

    assert run(go()).already_done is True


def test_missing_ace_warning_does_not_count_for_add() -> None:
    router = respx.Router()
    router.post(URL).respond(200, json=ok([], warnings=["Some unrelated warning."]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.add_mailbox_permission(MBX, SVC)

    result = run(go())
    assert result.already_done is False and result.warnings == ("Some unrelated warning.",)


# -- rows -------------------------------------------------------------------------------------


def test_self_row_with_comma_joined_rights_is_not_a_delegation() -> None:
    router = respx.Router()
    router.post(URL).respond(200, json=ok(MAILBOX_PERMISSION_ROWS))

    async def go() -> list[PermissionRow]:
        exo, _, _ = client(router)
        return await exo.get_mailbox_permissions(MBX)

    self_row, rob = run(go())
    assert self_row.user == "NT AUTHORITY\\SELF"
    assert self_row.access_rights == frozenset({"FullAccess", "ReadPermission"})
    assert self_row.user_sid == "S-1-5-10"
    assert not self_row.is_delegation
    assert rob.is_delegation and rob.access_rights == frozenset({"FullAccess"})
    assert holds([self_row, rob], {"rob@m7kni.io"})
    assert not holds([self_row], {"NT AUTHORITY\\SELF"})


def test_inherited_and_deny_rows_are_not_delegations() -> None:
    base = dict(MAILBOX_PERMISSION_ROWS[1])
    inherited = parse_permission_row({**base, "IsInherited": True})
    denied = parse_permission_row({**base, "Deny": True})
    as_strings = parse_permission_row({**base, "Deny": "False", "IsInherited": "True"})
    assert not inherited.is_delegation and not denied.is_delegation and not as_strings.is_delegation
    assert not holds([inherited, denied, as_strings], {"rob@m7kni.io"})


def test_access_rights_as_string_or_list() -> None:
    assert split_rights("FullAccess, ReadPermission") == {"FullAccess", "ReadPermission"}
    assert split_rights(["FullAccess, ReadPermission", "DeleteItem"]) == {"FullAccess", "ReadPermission", "DeleteItem"}
    assert split_rights(None) == frozenset()
    row = parse_permission_row({"User": "a@b.c", "AccessRights": "FullAccess", "Deny": False, "IsInherited": False})
    assert row.access_rights == {"FullAccess"} and row.user_sid is None


def test_matching_is_case_insensitive_and_by_sid() -> None:
    row = parse_permission_row(MAILBOX_PERMISSION_ROWS[1])
    assert row_matches(row, {"ROB@M7KNI.IO"})
    assert row_matches(row, {"s-1-5-21-1-2-3-1001"})
    assert not row_matches(row, {"someone@m7kni.io", ""})
    assert holds([row], ["Rob@M7kni.io"], right="fullaccess")
    assert not holds([row], ["rob@m7kni.io"], right="SendAs")


def test_recipient_rows_and_send_as() -> None:
    router = respx.Router()
    deny = {**RECIPIENT_PERMISSION_ROW, "Trustee": "eve@m7kni.io", "AccessControlType": "Deny"}
    router.post(URL).respond(200, json=ok([RECIPIENT_PERMISSION_ROW, deny]))

    async def go() -> list[RecipientPermissionRow]:
        exo, _, _ = client(router)
        return await exo.get_recipient_permissions(MBX)

    row, denied = run(go())
    assert row.trustee == "rob@m7kni.io" and row.allow and row.access_rights == {"SendAs"}
    assert row.trustee_sid == "S-1-5-21-1-2-3-1001" and row.is_inherited is False
    assert not denied.allow
    assert holds([row, denied], {"ROB@m7kni.io"})
    assert not holds([row, denied], {"eve@m7kni.io"})
    assert holds([parse_recipient_permission_row(RECIPIENT_PERMISSION_ROW)], {"S-1-5-21-1-2-3-1001"})


def test_get_cas_mailbox() -> None:
    router = respx.Router()
    router.post(URL, headers={"X-CmdletName": "Get-CASMailbox"}).respond(
        200, json=ok([{"Identity": "support", "SmtpClientAuthenticationDisabled": None, "EwsEnabled": False}])
    )

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.get_cas_mailbox(MBX)

    cas = run(go())
    assert cas.identity == "support" and cas.ews_enabled is False
    assert cas.smtp_client_authentication_disabled is None  # follows the organisation


def test_service_principal_helpers() -> None:
    router = respx.Router()
    router.post(URL, headers={"X-CmdletName": "Get-ServicePrincipal"}).respond(404, json=INVOKE_NOT_FOUND)
    new = router.post(URL, headers={"X-CmdletName": "New-ServicePrincipal"}).respond(200, json=ok([{"AppId": "a"}]))
    assign = router.post(URL, headers={"X-CmdletName": "New-ManagementRoleAssignment"}).respond(200, json=ok())
    test = router.post(URL, headers={"X-CmdletName": "Test-ServicePrincipalAuthorization"}).respond(
        200, json=ok([{"RoleName": "Application Mail.Read", "InScope": True}])
    )
    router.post(URL, headers={"X-CmdletName": "Get-ManagementRoleAssignment"}).respond(
        200, json=ok([{"Role": "Application Mail.Read"}])
    )

    async def go() -> tuple[Any, Any, Any]:
        exo, _, _ = client(router)
        missing = await exo.get_service_principal("esj")
        await exo.new_service_principal("app-id", "sp-object-id", "ESJ")
        await exo.new_management_role_assignment("app-id", "Application Mail.Read", "esj-scope")
        rows = await exo.test_service_principal_authorization("app-id", MBX)
        assignments = await exo.get_management_role_assignments("app-id")
        return missing, rows, assignments

    missing, rows, assignments = run(go())
    assert missing is None
    assert sent(new)["CmdletInput"]["Parameters"] == {"AppId": "app-id", "ObjectId": "sp-object-id", "DisplayName": "ESJ"}
    assert sent(assign)["CmdletInput"]["Parameters"] == {
        "App": "app-id",
        "Role": "Application Mail.Read",
        "CustomResourceScope": "esj-scope",
    }
    assert sent(test)["CmdletInput"]["Parameters"] == {"Identity": "app-id", "Resource": MBX}
    assert rows == [{"RoleName": "Application Mail.Read", "InScope": True}]
    assert assignments == [{"Role": "Application Mail.Read"}]
    assert new.calls.last.request.headers["X-AnchorMailbox"] == f"UPN:{SYSTEM}@{TENANT}"


# -- errors -----------------------------------------------------------------------------------


def test_error_precedence_three_levels() -> None:
    assert error_message(INVOKE_NOT_FOUND)[0] == INVOKE_NOT_FOUND["error"]["innererror"]["internalexception"]["message"]
    details_only = json.loads(json.dumps(INVOKE_NOT_FOUND))
    del details_only["error"]["innererror"]
    message, types = error_message(details_only)
    assert message.startswith("The operation couldn't be performed because object 'x@contoso.onmicrosoft.com'")
    assert "|" not in message and "Ex6F9304" not in message
    assert types == "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
    bare_prefix = {"error": {"message": "Invalid Operation", "details": [{"message": "|A.B.CException|Real text"}]}}
    assert error_message(bare_prefix)[0] == "Real text"
    assert error_message({"error": {"code": "BadRequest", "message": "Invalid Operation"}})[0] == "Invalid Operation"


def test_400_uses_the_most_useful_message() -> None:
    router = respx.Router()
    body = {"error": {"code": "BadRequest", "message": "Invalid Operation", "details": [
        {"code": "Client", "message": "|Microsoft.Exchange.AdminApi.CommandInvocation.AmbiguousParameterSetException|"
         "Parameter set cannot be resolved using the specified named parameters."}]}}
    router.post(URL).respond(400, json=body, headers={"request-id": "rid-400"})

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.invoke("Get-Mailbox", {"Bogus": 1})

    with pytest.raises(ServiceError) as info:
        run(go())
    err = info.value
    assert type(err) is ServiceError
    assert "Parameter set cannot be resolved" in err.message and "Invalid Operation" not in err.message
    assert err.request_id == "rid-400" and err.status_code == 400
    assert err.hint


@pytest.mark.parametrize("status", [404, 400])
def test_management_object_not_found(status: int) -> None:
    router = respx.Router()
    router.post(URL).respond(status, json=INVOKE_NOT_FOUND, headers={"request-id": "rid-nf"})

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_cas_mailbox("x@contoso.onmicrosoft.com")

    with pytest.raises(NotFoundError) as info:
        run(go())
    err = info.value
    assert "couldn't be found" in err.message
    assert "|" not in err.message and "Ex6F9304" not in err.message
    assert err.request_id == "rid-nf" and err.status_code == status
    assert err.hint and "address" in err.hint


def test_bare_404_is_about_the_url_not_the_mailbox() -> None:
    router = respx.Router()
    router.post(URL).respond(404, content=b"")

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_cas_mailbox(MBX)

    with pytest.raises(ServiceError) as info:
        run(go())
    assert not isinstance(info.value, NotFoundError)
    assert info.value.hint and "AZURE_TENANT_ID" in info.value.hint


def test_403_nul_body_reads_x_ms_diagnostics() -> None:
    router = respx.Router()
    diag = '2000003;reason="The user\'s role does not include the cmdlet.";error_category="invalid_grant"'
    router.post(URL).respond(403, content=b"\x00" * 512, headers={"x-ms-diagnostics": diag, "request-id": "rid-403"})

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.add_mailbox_permission(MBX, SVC)

    with pytest.raises(AccessDeniedError) as info:
        run(go())
    err = info.value
    assert "no Exchange admin role" in err.message
    assert "The user's role does not include the cmdlet." in err.message
    assert "\x00" not in err.message
    assert err.hint and "Exchange Administrator" in err.hint and "Exchange Recipient Administrator" in err.hint
    assert err.request_id == "rid-403" and err.status_code == 403


def test_403_cmdlet_access_denied_is_a_missing_rbac_role() -> None:
    router = respx.Router()
    body = {"error": {"code": "Forbidden", "message": "Invalid Operation", "innererror": {"internalexception": {
        "message": "The operation isn't supported in this scenario.",
        "type": "Microsoft.Exchange.Configuration.Tasks.CmdletAccessDeniedException"}}}}
    router.post(URL).respond(403, json=body)

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.add_recipient_permission(MBX, SVC)

    with pytest.raises(AccessDeniedError, match="missing RBAC role"):
        run(go())


def test_403_json_access_denied() -> None:
    router = respx.Router()
    router.post(URL).respond(403, json=INVOKE_ACCESS_DENIED)

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_cas_mailbox(MBX)

    with pytest.raises(AccessDeniedError, match="Access is denied"):
        run(go())


def test_401_names_the_missing_api_permission() -> None:
    router = respx.Router()
    route = router.post(URL).respond(401, headers={"request-id": "rid-401"})

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_cas_mailbox(MBX)

    with pytest.raises(AccessDeniedError) as info:
        run(go())
    err = info.value
    assert "Exchange.ManageAsApp" in err.message and "admin consent" in err.message
    assert err.hint and "Exchange.ManageAsApp" in err.hint
    assert err.request_id == "rid-401" and err.status_code == 401
    assert len(route.calls) == 2  # one fresh token was tried first


def test_write_that_may_have_committed_before_a_504_is_ambiguous_and_not_repeated() -> None:
    router = respx.Router()
    route = router.post(URL).respond(504, headers={"request-id": "rid-504"})

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.add_mailbox_permission(MBX, SVC)

    with pytest.raises(AmbiguousWriteError) as info:
        run(go())
    assert len(route.calls) == 1
    assert info.value.request_id == "rid-504" and info.value.status_code == 504


def test_write_timeout_is_ambiguous_and_not_repeated() -> None:
    router = respx.Router()
    route = router.post(URL)
    route.side_effect = httpx.ReadTimeout("no answer")

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.add_recipient_permission(MBX, SVC)

    with pytest.raises(AmbiguousWriteError):
        run(go())
    assert len(route.calls) == 1


def test_unknown_verbs_are_treated_as_writes() -> None:
    router = respx.Router()
    route = router.post(URL).respond(503)

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.invoke("Enable-Something", {"Identity": MBX})

    with pytest.raises(AmbiguousWriteError):
        run(go())
    assert len(route.calls) == 1


def test_read_5xx_is_retried_then_transient() -> None:
    router = respx.Router()
    route = router.post(URL).respond(503)

    async def go() -> Sleeps:
        exo, sleeps, _ = client(router, policy=RetryPolicy(max_attempts=3))
        try:
            await exo.get_cas_mailbox(MBX)
        except TransientError as exc:
            assert not isinstance(exc, AmbiguousWriteError)
            assert exc.status_code == 503
            return sleeps
        raise AssertionError("expected TransientError")

    sleeps = run(go())
    assert len(route.calls) == 3 and len(sleeps) == 2


def test_persistent_429_is_throttled_error() -> None:
    router = respx.Router()
    router.post(URL).respond(429, headers={"Retry-After": "1", "request-id": "rid-429"})

    async def go() -> None:
        exo, _, _ = client(router, policy=RetryPolicy(max_attempts=2))
        await exo.get_mailbox_permissions(MBX)

    with pytest.raises(ThrottledError) as info:
        run(go())
    assert info.value.request_id == "rid-429"


def test_non_json_success_body_is_a_service_error() -> None:
    router = respx.Router()
    router.post(URL).respond(200, content=b"<html>login</html>")

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.get_cas_mailbox(MBX)

    with pytest.raises(ServiceError, match="not JSON"):
        run(go())


def test_new_service_principal_that_already_exists_is_done() -> None:
    router = respx.Router()
    body = json.loads(json.dumps(INVOKE_NOT_FOUND))
    body["error"]["code"] = "BadRequest"
    body["error"]["details"][0]["message"] = (
        "Ex5D1E3F|Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException|The object 'ESJ' already exists."
    )
    body["error"]["innererror"]["internalexception"]["message"] = "The object 'ESJ' already exists."
    router.post(URL).respond(400, json=body)

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.new_service_principal("app-id", "sp-object-id", "ESJ")

    assert run(go()).already_done is True


def test_new_management_scope_that_exists_is_an_error() -> None:
    router = respx.Router()
    router.post(URL).respond(400, json={"error": {"code": "BadRequest", "message": "The object 'esj' already exists."}})

    async def go() -> None:
        exo, _, _ = client(router)
        await exo.new_management_scope("esj", "Name -eq 'x'")

    with pytest.raises(ServiceError, match="already exists"):
        run(go())


# -- management scope (issue 11, defect 2) ---------------------------------------------------


def test_management_scope_filter_is_read_from_recipient_filter() -> None:
    router = respx.Router()
    other = {**MANAGEMENT_SCOPE_ROW, "Name": "someone-else", "Identity": "someone-else", "RecipientFilter": "Alias -eq 'x'"}
    route = router.post(URL).respond(200, json=ok([other, MANAGEMENT_SCOPE_ROW]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.get_management_scope(MANAGEMENT_SCOPE_ROW["Name"].upper())

    scope = run(go())
    assert scope == ManagementScope(MANAGEMENT_SCOPE_ROW["Name"], "PrimarySmtpAddress -eq 'support@contoso.com'")
    assert sent(route)["CmdletInput"] == {"CmdletName": "Get-ManagementScope",
                                          "Parameters": {"Identity": MANAGEMENT_SCOPE_ROW["Name"].upper()}}


def test_management_scope_answered_with_other_scopes_only_is_none() -> None:
    """Microsoft warns a Get- cmdlet may answer an unknown identity with every object."""
    router = respx.Router()
    router.post(URL).respond(200, json=ok([{**MANAGEMENT_SCOPE_ROW, "Name": "other", "Identity": "other"}]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.get_management_scope("esj-x")

    assert run(go()) is None


def test_management_scope_not_found_is_none() -> None:
    router = respx.Router()
    router.post(URL).respond(404, json=INVOKE_NOT_FOUND)

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.get_management_scope("esj-x")

    assert run(go()) is None


# -- organisation-wide listings --------------------------------------------------------------


def test_send_as_grants_of_is_one_paged_listing_without_identity() -> None:
    router = respx.Router()
    next_link = f"{URL}?$skiptoken=p2"
    second = router.post(next_link).respond(200, json=ok([SEND_AS_ROWS_OF_TRUSTEE[1]]))
    first = router.post(URL).respond(200, json=ok([SEND_AS_ROWS_OF_TRUSTEE[0]], **{"@odata.nextLink": next_link}))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.send_as_grants_of(SVC)

    grants = run(go())
    body = sent(first)
    assert body == {"CmdletInput": {"CmdletName": "Get-RecipientPermission",
                                    "Parameters": {"Trustee": SVC, "ResultSize": "Unlimited"}}}
    assert sent(second) == body  # the same body re-POSTed to the nextLink
    assert first.calls.last.request.headers["X-AnchorMailbox"] == f"UPN:{SYSTEM}@{TENANT}"
    assert grants == [
        SendAsGrant("support", SVC, frozenset({"SendAs"}), True, "S-1-5-21-1-2-3-1105", False),
        SendAsGrant("returns", SVC, frozenset({"SendAs"}), True, "S-1-5-21-1-2-3-1105", False),
    ]
    assert holds([grants[0].row], [SVC])


def test_send_as_listing_naming_two_trustees_is_refused() -> None:
    router = respx.Router()
    stranger = {**SEND_AS_ROWS_OF_TRUSTEE[1], "Trustee": "adele@contoso.com", "TrusteeSidString": "S-1-5-21-1-2-3-9"}
    router.post(URL).respond(200, json=ok([SEND_AS_ROWS_OF_TRUSTEE[0], stranger]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.send_as_grants_of(SVC)

    with pytest.raises(ServiceError, match="2 different trustees"):
        run(go())


def test_send_as_listing_with_a_failed_page_raises_never_a_partial_list() -> None:
    router = respx.Router()
    next_link = f"{URL}?$skiptoken=p2"
    router.post(next_link).respond(404, json=INVOKE_NOT_FOUND)
    router.post(URL).respond(200, json=ok([SEND_AS_ROWS_OF_TRUSTEE[0]], **{"@odata.nextLink": next_link}))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.send_as_grants_of(SVC)

    with pytest.raises(ServiceError, match="refusing to return a truncated list"):
        run(go())


def test_send_as_listing_cut_short_by_result_size_is_refused() -> None:
    router = respx.Router()
    warning = ("There are more results available than are currently displayed. To view them, increase the "
               "value for the ResultSize parameter.")
    router.post(URL).respond(200, json=ok([SEND_AS_ROWS_OF_TRUSTEE[0]], warnings=[warning]))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.send_as_grants_of(SVC)

    with pytest.raises(ServiceError, match="cut the listing short"):
        run(go())


@pytest.mark.parametrize("trustee", ["", "   "])
def test_send_as_listing_needs_a_trustee(trustee: str) -> None:
    router = respx.Router()
    route = router.post(URL).respond(200, json=ok())

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.send_as_grants_of(trustee)

    with pytest.raises(UsageError, match="no trustee"):
        run(go())
    assert not route.called


def test_list_mailboxes_pages_by_recipient_type_details() -> None:
    router = respx.Router()
    next_link = f"{URL}?$skiptoken=p2"
    user = {**MAILBOX_ROW, "Identity": "adele", "PrimarySmtpAddress": "adele@contoso.com",
            "RecipientTypeDetails": "UserMailbox", "ExternalDirectoryObjectId": "e348ca23-439c-423d-a1ec-3c70a6ed08cd"}
    second = router.post(next_link).respond(200, json=ok([user]))
    first = router.post(URL).respond(200, json=ok([MAILBOX_ROW], **{"@odata.nextLink": next_link}))

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.list_mailboxes(("SharedMailbox", "UserMailbox"))

    mailboxes = run(go())
    assert sent(first) == sent(second) == {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {
        "RecipientTypeDetails": ["SharedMailbox", "UserMailbox"], "ResultSize": "Unlimited"}}}
    assert [(m.identity, m.primary_smtp_address, m.recipient_type_details, m.external_directory_object_id)
            for m in mailboxes] == [
        ("support", "support@contoso.com", "SharedMailbox", "87d349ed-44d7-43e1-9a83-5f2406dee5bd"),
        ("adele", "adele@contoso.com", "UserMailbox", "e348ca23-439c-423d-a1ec-3c70a6ed08cd"),
    ]
    assert mailboxes[0].email_addresses == ("SMTP:support@contoso.com", "smtp:support@contoso.onmicrosoft.com")


@pytest.mark.parametrize("kinds", [(), ("",), ("SharedMailboxes",), ("SharedMailbox", "Nope")])
def test_list_mailboxes_refuses_unknown_kinds(kinds: tuple[str, ...]) -> None:
    router = respx.Router()
    route = router.post(URL).respond(200, json=ok())

    async def go() -> Any:
        exo, _, _ = client(router)
        return await exo.list_mailboxes(kinds)

    with pytest.raises(UsageError, match="list_mailboxes"):
        run(go())
    assert not route.called
