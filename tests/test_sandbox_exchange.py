"""Sandbox Exchange Online InvokeCommand: cmdlets, warnings, paging, errors, authorisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from msft_shapes import WARNING_ACE_MISSING, WARNING_ALREADY_PRESENT
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
ESJ_SP_OBJECT_ID = "4dff7df5-6bb2-41a3-8d9f-4d274f8dd038"


def ok(c: SandboxClient, cmdlet: str, **params: Any) -> dict[str, Any]:
    r = c.invoke(cmdlet, params)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identity",
    ["support@contoso.com", "SUPPORT@contoso.onmicrosoft.com", "help@contoso.com", "support",
     "Customer Support", "87d349ed-44d7-43e1-9a83-5f2406dee5bd"],
)
def test_get_mailbox_by_any_identity(sandbox_client: SandboxClient, identity: str) -> None:
    body = ok(sandbox_client, "Get-Mailbox", Identity=identity)
    assert body["@odata.context"].endswith("$metadata#Collection(Exchange.GenericHashTable)")
    assert body["adminapi.warnings@odata.type"] == "#Collection(String)" and body["@adminapi.warnings"] == []
    assert "@odata.nextLink" not in body
    (row,) = body["value"]
    assert row["PrimarySmtpAddress"] == "support@contoso.com"
    assert row["UserPrincipalName"] == "support@contoso.onmicrosoft.com"
    assert row["RecipientTypeDetails"] == "SharedMailbox"
    assert row["ExternalDirectoryObjectId"] == "87d349ed-44d7-43e1-9a83-5f2406dee5bd"
    assert row["Guid"] != row["ExternalDirectoryObjectId"]
    assert row["EmailAddresses"][0] == "SMTP:support@contoso.com"
    assert "smtp:support@contoso.onmicrosoft.com" in row["EmailAddresses"]
    assert row["EmailAddresses@odata.type"] == "#Collection(String)"
    assert {"Identity", "Name", "DisplayName", "Alias"} <= set(row)


@pytest.mark.parametrize(
    ("who", "kind"),
    [("adele", "UserMailbox"), ("room1", "RoomMailbox"), ("legacy", "SharedMailbox"), ("old-svc", "UserMailbox")],
)
def test_recipient_types(sandbox_client: SandboxClient, who: str, kind: str) -> None:
    (row,) = ok(sandbox_client, "Get-Mailbox", Identity=f"{who}@contoso.com")["value"]
    assert row["RecipientTypeDetails"] == kind


def test_unknown_identity_is_the_exact_not_found_body(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.invoke("Get-Mailbox", {"Identity": "x@contoso.onmicrosoft.com"})
    assert r.status_code == 404
    body = r.json()
    text = ("The operation couldn't be performed because object 'x@contoso.onmicrosoft.com' couldn't be found "
            "on 'AM0PR01A001.PROD.OUTLOOK.COM'.")
    assert body == {
        "error": {
            "code": "NotFound",
            "message": "Error executing cmdlet",
            "details": [{"code": "Client", "target": "",
                         "message": f"Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|{text}"}],
            "innererror": {
                "message": "Error executing cmdlet",
                "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                "internalexception": {
                    "message": text,
                    "type": "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeCmdletExecutionException",
                },
            },
        },
        "adminapi.warnings@odata.type": "#Collection(String)",
        "@adminapi.warnings": [],
    }
    # unknown trustee in a write, too
    r = sandbox_client.invoke("Get-MailboxPermission", {"Identity": "support@contoso.com", "User": "ghost@contoso.com"})
    assert r.status_code == 404 and "'ghost@contoso.com'" in r.json()["error"]["innererror"]["internalexception"]["message"]


def test_unknown_parameter_and_cmdlet_are_400(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.invoke("Get-Mailbox", {"Identity": "support@contoso.com", "Shoe": 1})
    assert r.status_code == 400
    msg = r.json()["error"]["details"][0]["message"]
    assert msg.split("|")[1].startswith("Microsoft.Exchange.Management.PSDirectInvoke")
    assert msg.endswith("A parameter cannot be found that matches parameter name 'Shoe'.")
    r = sandbox_client.invoke("Get-Shoe", {})
    assert r.status_code == 400 and "'Get-Shoe' is not recognized" in r.json()["error"]["innererror"]["internalexception"]["message"]
    r = sandbox_client.invoke("Add-MailboxPermission", {"Identity": "support@contoso.com"})
    assert r.status_code == 400 and "missing mandatory parameters: User AccessRights" in r.text


def test_cmdlet_and_parameter_names_are_case_insensitive(sandbox_client: SandboxClient) -> None:
    assert ok(sandbox_client, "get-mailbox", identity="sales@contoso.com")["value"][0]["Alias"] == "sales"


def test_mailbox_permission_rows_as_live(sandbox_client: SandboxClient) -> None:
    rows = ok(sandbox_client, "Get-MailboxPermission", Identity="sales@contoso.com")["value"]
    assert rows[0]["User"] == "NT AUTHORITY\\SELF"
    assert rows[0]["AccessRights"] == ["FullAccess, ReadPermission"]
    assert (rows[0]["IsInherited"], rows[0]["Deny"], rows[0]["UserSid"]) == (False, False, "S-1-5-10")
    inherited = [r for r in rows if r["IsInherited"]]
    assert len([r for r in inherited if r["Deny"]]) >= 2
    assert all(r["User"].startswith("NAMPR01A001\\") for r in inherited)
    adele = [r for r in rows if r["User"] == "adele@contoso.onmicrosoft.com"]
    assert len(adele) == 2 and adele[0]["UserSid"] == adele[1]["UserSid"]  # same SID, different rights
    assert {a["AccessRights"][0] for a in adele} == {"FullAccess", "ReadPermission"}
    assert all(r["PrimarySmtpAddress"] == "" for r in rows)
    only = ok(sandbox_client, "Get-MailboxPermission", Identity="sales@contoso.com", User="adele@contoso.com")["value"]
    assert [r["User"] for r in only] == ["adele@contoso.onmicrosoft.com"] * 2
    none = ok(sandbox_client, "Get-MailboxPermission", Identity="support@contoso.com", User="esj-svc@contoso.com")
    assert none["value"] == []


def test_recipient_permission_self_row(sandbox_client: SandboxClient) -> None:
    (row,) = ok(sandbox_client, "Get-RecipientPermission", Identity="support@contoso.com")["value"]
    assert row["Trustee"] == "NT AUTHORITY\\SELF" and row["AccessRights"] == ["SendAs"]
    assert row["AccessControlType"] == "Allow" and row["IsInherited"] is False


def test_cas_mailbox_and_transport_config(sandbox_client: SandboxClient) -> None:
    def smtp(identity: str) -> Any:
        return ok(sandbox_client, "Get-CASMailbox", Identity=identity)["value"][0]["SmtpClientAuthenticationDisabled"]

    assert smtp("support@contoso.com") is False
    assert smtp("sales@contoso.com") is None
    (cfg,) = ok(sandbox_client, "Get-TransportConfig")["value"]
    assert cfg["SmtpClientAuthenticationDisabled"] is True


def test_tenant_segment_by_guid_and_unknown(sandbox_client: SandboxClient) -> None:
    sb = sandbox_client.sb
    r = sandbox_client.invoke("Get-Mailbox", {"Identity": "sales@contoso.com"}, url=sandbox_client.invoke_url(sb.tenant_id))
    assert r.status_code == 200
    r = sandbox_client.invoke("Get-Mailbox", {}, url=sandbox_client.invoke_url("fabrikam.onmicrosoft.com"))
    assert r.status_code == 404


def test_select_on_invoke_command(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.invoke("Get-Mailbox", {"Identity": "support@contoso.com"},
                              url=sandbox_client.invoke_url() + "?$select=PrimarySmtpAddress,EmailAddresses")
    (row,) = r.json()["value"]
    assert set(row) == {"PrimarySmtpAddress", "EmailAddresses", "EmailAddresses@odata.type"}


def test_ids_on_every_response(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.invoke("Get-TransportConfig", {}, headers={"client-request-id": "my-id"})
    assert r.headers["client-request-id"] == "my-id" and r.headers["request-id"]
    calls = sandbox_client.sb.calls(service="exchange")
    assert calls[-1]["client_request_id"] == "my-id" and calls[-1]["cmdlet"] == "Get-TransportConfig"


# --- writes -----------------------------------------------------------------------------------


def test_full_access_grant_lifecycle_with_warnings(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    params = {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com", "AccessRights": ["FullAccess"],
              "InheritanceType": "All", "AutoMapping": False, "Confirm": False}
    first = ok(c, "Add-MailboxPermission", **params)
    assert first["@adminapi.warnings"] == []
    (row,) = first["value"]
    assert row["User"] == "esj-svc@contoso.onmicrosoft.com" and row["AccessRights"] == ["FullAccess"]
    again = ok(c, "Add-MailboxPermission", **params)
    assert again["value"] == [] and again["@adminapi.warnings"] == [WARNING_ALREADY_PRESENT]
    rows = ok(c, "Get-MailboxPermission", Identity="support@contoso.com", User="esj-svc@contoso.onmicrosoft.com")["value"]
    assert [(r["AccessRights"], r["IsInherited"], r["Deny"]) for r in rows] == [(["FullAccess"], False, False)]
    (ace,) = sb.state()["mailbox_permissions"]["87d349ed-44d7-43e1-9a83-5f2406dee5bd"]
    assert (ace["automapping"], ace["inheritance"]) == (False, "All")
    assert [c_["applied"] for c_ in sb.calls(service="exchange")[-3:-1]] == [True, False]
    # Remove-MailboxPermission has no AutoMapping parameter: sending Add's full set is a 400
    assert c.invoke("Remove-MailboxPermission", params).status_code == 400
    params.pop("AutoMapping")
    removed = ok(c, "Remove-MailboxPermission", **params)
    assert removed["value"] == [] and removed["@adminapi.warnings"] == []
    absent = ok(c, "Remove-MailboxPermission", **params)
    assert absent["@adminapi.warnings"] == [WARNING_ACE_MISSING]
    assert ok(c, "Get-MailboxPermission", Identity="support@contoso.com", User="esj-svc@contoso.com")["value"] == []


def test_invalid_access_rights_list_the_valid_values(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.invoke("Add-MailboxPermission", {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com",
                                                        "AccessRights": ["FullAcess"]})
    assert r.status_code == 400
    msg = r.json()["error"]["innererror"]["internalexception"]["message"]
    assert "FullAcess" in msg
    assert "ChangeOwner, ChangePermission, DeleteItem, ExternalAccount, FullAccess, ReadPermission" in msg
    r = sandbox_client.invoke("Add-RecipientPermission", {"Identity": "support@contoso.com", "Trustee": "esj-svc@contoso.com",
                                                          "AccessRights": ["FullAccess"]})
    assert r.status_code == 400 and "SendAs" in r.json()["error"]["innererror"]["internalexception"]["message"]


def test_send_as_lifecycle_with_warnings(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox()
    params = {"Identity": "support@contoso.com", "Trustee": "esj-svc@contoso.com", "AccessRights": ["SendAs"],
              "Confirm": False}
    (row,) = ok(c, "Add-RecipientPermission", **params)["value"]
    assert row["Trustee"] == "esj-svc@contoso.onmicrosoft.com" and row["TrusteeSidString"].startswith("S-1-5-21-")
    assert ok(c, "Add-RecipientPermission", **params)["@adminapi.warnings"] == [WARNING_ALREADY_PRESENT]
    rows = ok(c, "Get-RecipientPermission", Identity="support@contoso.com")["value"]
    assert [r["Trustee"] for r in rows] == ["NT AUTHORITY\\SELF", "esj-svc@contoso.onmicrosoft.com"]
    by_trustee = ok(c, "Get-RecipientPermission", Trustee="esj-svc@contoso.com")["value"]
    assert [r["Identity"] for r in by_trustee] == ["returns", "support"]  # returns: the seeded forgotten grant
    assert ok(c, "Remove-RecipientPermission", **params)["@adminapi.warnings"] == []
    assert ok(c, "Remove-RecipientPermission", **params)["@adminapi.warnings"] == [WARNING_ACE_MISSING]


def test_service_principal_rbac_flow(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    (sp,) = ok(c, "New-ServicePrincipal", AppId=sb.esj_app_id, ObjectId=ESJ_SP_OBJECT_ID,
               DisplayName="Genesys E-mail Server")["value"]
    assert sp == {"AppId": sb.esj_app_id, "ObjectId": ESJ_SP_OBJECT_ID, "DisplayName": "Genesys E-mail Server",
                  "Identity": ESJ_SP_OBJECT_ID, "Name": ESJ_SP_OBJECT_ID, "ServiceId": ESJ_SP_OBJECT_ID}
    dup = c.invoke("New-ServicePrincipal", {"AppId": sb.esj_app_id, "ObjectId": ESJ_SP_OBJECT_ID})
    assert dup.status_code == 400
    assert ok(c, "Get-ServicePrincipal", Identity=sb.esj_app_id)["value"] == [sp]
    # Full Access to the service principal renders its Identity (the Enterprise-app object id)
    ok(c, "Add-MailboxPermission", Identity="support@contoso.com", User=ESJ_SP_OBJECT_ID, AccessRights=["FullAccess"],
       AutoMapping=False)
    users = [r["User"] for r in ok(c, "Get-MailboxPermission", Identity="support@contoso.com")["value"]]
    assert ESJ_SP_OBJECT_ID in users
    # RBAC for Applications
    (scope,) = ok(c, "New-ManagementScope", Name="ESJ mailboxes",
                  RecipientRestrictionFilter="PrimarySmtpAddress -eq 'support@contoso.com' -or Alias -like 'bill*'")["value"]
    assert "RecipientRestrictionFilter" not in scope and scope["RecipientFilter"].startswith("PrimarySmtpAddress")
    bad = c.invoke("New-ManagementScope", {"Name": "x", "RecipientRestrictionFilter": "PrimarySmtpAddress -eq"})
    assert bad.status_code == 400
    (ra,) = ok(c, "New-ManagementRoleAssignment", App=ESJ_SP_OBJECT_ID, Role="Application Mail.ReadWrite",
               CustomResourceScope="ESJ mailboxes")["value"]
    assert ra["RoleAssignee"] == ESJ_SP_OBJECT_ID and ra["CustomResourceScope"] == "ESJ mailboxes"
    assert c.invoke("New-ManagementRoleAssignment", {"App": ESJ_SP_OBJECT_ID, "Role": "Application Shoes"}).status_code == 404
    listed = ok(c, "Get-ManagementRoleAssignment", RoleAssignee=sb.esj_app_id)["value"]
    assert [x["Role"] for x in listed] == ["Application Mail.ReadWrite"]
    assert ok(c, "Get-ManagementScope", Identity="ESJ mailboxes")["value"][0]["Name"] == "ESJ mailboxes"

    def in_scope(resource: str | None) -> Any:
        params = {"Identity": ESJ_SP_OBJECT_ID, **({"Resource": resource} if resource else {})}
        (row,) = ok(c, "Test-ServicePrincipalAuthorization", **params)["value"]
        assert row["RoleName"] == "Application Mail.ReadWrite" and row["GrantedPermissions"] == "Mail.ReadWrite"
        assert row["AllowedResourceScope"] == "ESJ mailboxes" and row["ScopeType"] == "CustomRecipientScope"
        return row["InScope"]

    assert (in_scope("support@contoso.com"), in_scope("billing@contoso.com"), in_scope("sales@contoso.com")) == (
        True, True, False,
    )
    assert in_scope(None) == "Not Run"
    # Removing the service principal orphans its ACE: Exchange then shows the raw SID
    ok(c, "Remove-ServicePrincipal", Identity=ESJ_SP_OBJECT_ID, Confirm=False)
    users = [r["User"] for r in ok(c, "Get-MailboxPermission", Identity="support@contoso.com")["value"]]
    assert ESJ_SP_OBJECT_ID not in users and any(u.startswith("S-1-5-21-") for u in users)
    assert c.invoke("Get-ServicePrincipal", {"Identity": ESJ_SP_OBJECT_ID}).status_code == 404


def test_recipient_administrator_cannot_create_service_principals(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    sb.mutate("set-directory-roles", app=sb.client_id, roles=["Exchange Recipient Administrator"])
    token = c.token("exchange", fresh=True)
    assert c.invoke("Get-Mailbox", {"Identity": "support@contoso.com"}, token=token).status_code == 200
    r = c.invoke("Add-MailboxPermission", {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com",
                                           "AccessRights": ["FullAccess"]}, token=token)
    assert r.status_code == 200
    r = c.invoke("New-ServicePrincipal", {"AppId": sb.esj_app_id, "ObjectId": ESJ_SP_OBJECT_ID}, token=token)
    assert r.status_code == 403 and "CmdletAccessDeniedException" in r.json()["error"]["details"][0]["message"]


# --- paging -----------------------------------------------------------------------------------


def test_paging_re_posts_the_same_body_to_next_link(make_sandbox: MakeSandbox, sandbox_client: SandboxClient) -> None:
    _, c = make_sandbox(page_size=1)
    expected = ok(sandbox_client, "Get-MailboxPermission", Identity="sales@contoso.com")["value"]
    rows, pages = c.invoke_all("Get-MailboxPermission", {"Identity": "sales@contoso.com"})
    assert rows == expected and pages == len(expected) == 6
    first = c.invoke("Get-MailboxPermission", {"Identity": "sales@contoso.com"}).json()
    link = first["@odata.nextLink"]
    assert link.startswith(c.invoke_url() + "?$skiptoken=")
    get = c.http.get(link, headers={"Authorization": f"Bearer {c.token('exchange')}"})
    assert get.status_code == 405 and get.headers["Allow"] == "POST"
    other = c.invoke("Get-MailboxPermission", {"Identity": "support@contoso.com"}, url=link)
    assert other.status_code == 400  # the link belongs to the sales@ body
    # $select is carried on
    sel = c.invoke("Get-MailboxPermission", {"Identity": "sales@contoso.com"}, url=c.invoke_url() + "?$select=User")
    assert "$select=User" in sel.json()["@odata.nextLink"] and set(sel.json()["value"][0]) == {"User"}


def test_bulk_mailboxes_page_through_get_mailbox(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(mailboxes=300, page_size=100)
    rows, pages = c.invoke_all("Get-Mailbox", {"RecipientTypeDetails": "SharedMailbox", "ResultSize": "Unlimited"})
    addresses = [r["PrimarySmtpAddress"] for r in rows]
    assert len(addresses) == len(set(addresses)) == 305 and pages == 4  # 5 seeded shared + 300
    assert addresses[-1] == "queue0300@contoso.com"
    cas, _ = c.invoke_all("Get-CASMailbox")
    assert len(cas) == 309
    (row,) = ok(c, "Get-Mailbox", Identity="queue0042")["value"]
    assert row["UserPrincipalName"] == "queue0042@contoso.onmicrosoft.com"
    assert ok(c, "Get-Mailbox", Identity=row["ExternalDirectoryObjectId"])["value"][0]["Alias"] == "queue0042"
    assert c.invoke("Get-Mailbox", {"Identity": "queue0301@contoso.com"}).status_code == 404
    assert len(str(sb.state())) < 20_000  # generated mailboxes are not stored


def test_result_size_truncates_with_the_exchange_warning(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox(mailboxes=10, page_size=3)
    rows, pages = c.invoke_all("Get-Mailbox", {"ResultSize": 5})
    assert len(rows) == 5 and pages == 2
    last = c.invoke("Get-Mailbox", {"ResultSize": 2}).json()
    assert len(last["value"]) == 2 and "@odata.nextLink" not in last
    assert any("ResultSize" in w for w in last["@adminapi.warnings"])


# --- authorisation ----------------------------------------------------------------------------


def test_401_without_a_usable_token(sandbox_client: SandboxClient) -> None:
    url = sandbox_client.invoke_url()
    body = {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}}
    missing = sandbox_client.http.post(url, json=body)
    assert missing.status_code == 401 and missing.content == b""
    assert missing.headers["WWW-Authenticate"].startswith("Bearer ")
    for token in (sandbox_client.token("graph"), "garbage", sandbox_client.token("exchange", app="esj")):
        r = sandbox_client.invoke("Get-Mailbox", {}, token=token)
        assert r.status_code == 401, token[:10]
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_app_without_exchange_role_is_401_and_without_directory_role_403_nul(sandbox_client: SandboxClient) -> None:
    r = sandbox_client.invoke("Get-Mailbox", {}, token=sandbox_client.token("exchange", app="no_exchange_role"))
    assert r.status_code == 401
    r = sandbox_client.invoke("Get-Mailbox", {}, token=sandbox_client.token("exchange", app="no_directory_role"))
    assert r.status_code == 403
    assert r.content and set(r.content) == {0}  # a run of NUL bytes, not JSON
    assert r.headers["x-ms-diagnostics"].startswith("2000008;")
    assert 'error_category="insufficient_role"' in r.headers["x-ms-diagnostics"]


def test_expired_token_is_401(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    token = c.token("exchange")
    sb.mutate("expire-tokens")
    r = c.invoke("Get-Mailbox", {}, token=token)
    assert r.status_code == 401 and "expired" in r.headers["x-ms-diagnostics"]


def test_malformed_bodies_are_400(sandbox_client: SandboxClient) -> None:
    h = {"Authorization": f"Bearer {sandbox_client.token('exchange')}"}
    for raw in (b"not json", b"{}", b'{"CmdletInput":{"Parameters":{}}}', b'{"CmdletInput":{"CmdletName":"Get-Mailbox","Parameters":[]}}'):
        r = sandbox_client.http.post(sandbox_client.invoke_url(), content=raw, headers=h)
        assert r.status_code == 400, raw
    big = sandbox_client.http.post(sandbox_client.invoke_url(), content=b"x" * (1024 * 1024 + 1), headers=h)
    assert big.status_code == 413


def test_get_mailbox_refuses_an_unknown_recipient_type(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox()
    r = c.invoke("Get-Mailbox", {"RecipientTypeDetails": ["SharedMailboxes"]})
    assert r.status_code == 400
    assert "SharedMailboxes" in r.text and "SharedMailbox, TeamMailbox, UserMailbox" in r.text
