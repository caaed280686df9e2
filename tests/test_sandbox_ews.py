"""The sandbox's EWS stand-in: the organisation's EWS policy (403 + X-EWS-Policy-Reason), app-only
impersonation, delegated access, error shapes, and Get/Set-OrganizationConfig."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import httpx
import pytest
from mail_helpers import (
    GRAPH,
    OUTLOOK,
    app_token,
    full_access,
    get_folder,
    ok,
    password_token,
    register_esj,
    scoped_role,
)
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
SHARED = "support@contoso.com"
M = "{http://schemas.microsoft.com/exchange/services/2006/messages}"
T = "{http://schemas.microsoft.com/exchange/services/2006/types}"
DISABLED = "EWS is disabled for this user or tenant"
BLOCKED = "EWS is blocked by policy for this user or tenant"


def post(c: SandboxClient, token: str, mailbox: str = SHARED, *, impersonate: str | None = None,
         anchor: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/xml; charset=utf-8"}
    if anchor:
        headers["X-AnchorMailbox"] = anchor
    return c.http.post(c.sb.ews_url, content=get_folder(mailbox, impersonate), headers=headers)


def message(r: httpx.Response) -> tuple[str, str, str | None]:
    """(ResponseClass, ResponseCode, DisplayName) of a GetFolder answer in HTTP 200."""
    assert r.status_code == 200, r.text
    msg = ET.fromstring(r.content).find(f".//{M}GetFolderResponseMessage")
    assert msg is not None
    name = msg.find(f".//{T}DisplayName")
    return msg.get("ResponseClass", ""), msg.findtext(f"{M}ResponseCode", ""), name.text if name is not None else None


def fault(r: httpx.Response) -> tuple[str, str]:
    assert r.status_code == 500, r.text
    root = ET.fromstring(r.content)
    f = root.find(".//{http://schemas.xmlsoap.org/soap/envelope/}Fault")
    assert f is not None
    return f.findtext("faultcode", ""), f.findtext("faultstring", "")


def allow(sb: Sandbox, c: SandboxClient, *apps: str) -> None:
    """EWS on for the organisation and these apps allow-listed, through the admin cmdlet."""
    ok(c, "Set-OrganizationConfig", EwsEnabled=True, EwsAllowedAppIDs=",".join(apps or (sb.esj_app_id,)))


def test_the_sample_tenant_blocks_ews_like_exchange_online_since_october_2026(sandbox: Sandbox,
                                                                              sandbox_client: SandboxClient) -> None:
    r = post(sandbox_client, password_token(sandbox_client))
    assert r.status_code == 403 and r.headers["X-EWS-Policy-Reason"] == DISABLED and r.content == b""


def test_enabled_but_not_allow_listed_is_blocked_by_policy(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    full_access(c, SHARED, sb.esj_account)
    ok(c, "Set-OrganizationConfig", EwsEnabled=True)  # an empty EwsAllowedAppIDs blocks every app
    r = post(c, password_token(c))
    assert r.status_code == 403 and r.headers["X-EWS-Policy-Reason"] == BLOCKED
    allow(sb, c, "11111111-2222-3333-4444-555555555555")  # someone else's app only
    assert post(c, password_token(c)).headers["X-EWS-Policy-Reason"] == BLOCKED
    allow(sb, c)
    assert message(post(c, password_token(c))) == ("Success", "NoError", "Inbox")


@pytest.mark.parametrize("who", ["target", "caller"])
def test_a_mailbox_with_ews_disabled_is_refused(make_sandbox: MakeSandbox, who: str) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    full_access(c, SHARED, sb.esj_account)
    sb.mutate("set-ews-enabled", mailbox=SHARED if who == "target" else sb.esj_account, enabled=False)
    r = post(c, password_token(c))
    assert r.status_code == 403 and r.headers["X-EWS-Policy-Reason"] == DISABLED


def test_a_mailbox_setting_cannot_lift_the_organisation_block(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    ok(c, "Set-OrganizationConfig", EwsAllowedAppIDs=sb.esj_app_id)
    sb.mutate("set-ews-enabled", mailbox=SHARED, enabled=True)
    for org in (False, None):
        sb.mutate("set-ews-enabled", enabled=org)
        assert post(c, password_token(c)).headers["X-EWS-Policy-Reason"] == DISABLED


def test_the_allow_list_propagates_like_a_grant(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    full_access(c, SHARED, sb.esj_account)
    allow(sb, c)
    sb.mutate("propagate")  # the Full Access; the allow-list is then re-set below and pending again
    ok(c, "Set-OrganizationConfig", EwsAllowedAppIDs="11111111-2222-3333-4444-555555555555")
    allow(sb, c)
    assert post(c, password_token(c)).headers["X-EWS-Policy-Reason"] == BLOCKED
    sb.mutate("propagate")
    assert message(post(c, password_token(c)))[0] == "Success"
    sb.mutate("set-ews-allowed-apps", apps=[])  # removal: at once
    assert post(c, password_token(c)).headers["X-EWS-Policy-Reason"] == BLOCKED


def test_organization_config_reads_back_the_allow_list_only_when_asked(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    [row] = ok(c, "Get-OrganizationConfig")
    assert row["EwsEnabled"] is False and "EwsAllowedAppIDs" not in row
    other = "11111111-2222-3333-4444-555555555555"
    ok(c, "Set-OrganizationConfig", EwsAllowedAppIDs=[sb.esj_app_id, other])
    [row] = ok(c, "Get-OrganizationConfig", RetrieveEwsOperationAccessPolicy=True)
    assert row["EwsAllowedAppIDs"] == [f"{sb.esj_app_id},{other}"]  # one comma-joined string
    assert row["EwsAllowedAppIDs@odata.type"] == "#Collection(String)"
    ok(c, "Set-OrganizationConfig", EwsAllowedAppIDs=other)  # overwrites the whole list
    [row] = ok(c, "Get-OrganizationConfig", RetrieveEwsOperationAccessPolicy=True)
    assert row["EwsAllowedAppIDs"] == [other] and row["EwsEnabled"] is False
    ok(c, "Set-OrganizationConfig", EwsEnabled=None)
    assert ok(c, "Get-OrganizationConfig")[0]["EwsEnabled"] is None
    assert ok(c, "Get-CASMailbox", Identity=SHARED)[0]["EwsEnabled"] is True


def test_set_organization_config_refuses_a_non_guid_and_changes_nothing(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox()
    r = c.invoke("Set-OrganizationConfig", {"EwsEnabled": True, "EwsAllowedAppIDs": "not-a-guid"})
    assert r.status_code == 400 and "System.Guid" in r.text
    assert ok(c, "Get-OrganizationConfig")[0]["EwsEnabled"] is False
    r = c.invoke("Set-OrganizationConfig", {"EwsEnabled": True}, token=app_token(c, app="no_directory_role"))
    assert r.status_code == 403  # an org-level write needs an admin role


def test_app_only_with_full_access_as_app_and_impersonation(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="exchange", roles=["full_access_as_app"])
    token = app_token(c)
    r = post(c, token, impersonate=SHARED, anchor=SHARED)
    assert message(r) == ("Success", "NoError", "Inbox")
    assert fault(post(c, token, anchor=SHARED)) == (
        "a:ErrorInvalidExchangeImpersonationHeaderData",
        "ExchangeImpersonation SOAP header must be present for this type of OAuth token.")
    assert fault(post(c, token, impersonate=SHARED))[1] == (
        "ExchangeImpersonation SOAP header must not exist for this type of OAuth token.")  # no X-AnchorMailbox
    assert fault(post(c, token, "nobody@contoso.com", impersonate="nobody@contoso.com", anchor="nobody@contoso.com"))[0] == (
        "a:ErrorNonExistentMailbox")


def test_app_only_without_permission_cannot_impersonate(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    assert fault(post(c, app_token(c), impersonate=SHARED, anchor=SHARED)) == (
        "a:ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user.")


def test_app_only_through_rbac_in_and_out_of_scope(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    register_esj(c)
    scoped_role(c, "Application EWS.AccessAsApp", SHARED)
    token = app_token(c)
    assert message(post(c, token, impersonate=SHARED, anchor=SHARED))[0] == "Success"
    sales = "sales@contoso.com"
    assert fault(post(c, token, sales, impersonate=sales, anchor=sales))[0] == "a:ErrorImpersonateUserDenied"


def test_delegated_needs_full_access_and_no_impersonation(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    token = password_token(c)
    r = post(c, token)
    assert message(r) == ("Error", "ErrorAccessDenied", None)  # inside HTTP 200
    assert "<m:MessageText>Access is denied. Check credentials and try again.</m:MessageText>" in r.text
    assert message(post(c, token, sb.esj_account))[0] == "Success"  # its own inbox
    assert message(post(c, token, "nobody@contoso.com"))[1] == "ErrorNonExistentMailbox"
    full_access(c, SHARED, sb.esj_account)
    assert message(post(c, token)) == ("Success", "NoError", "Inbox")
    assert fault(post(c, token, impersonate=SHARED, anchor=SHARED))[1] == (
        "ExchangeImpersonation SOAP header must not exist for this type of OAuth token.")


def test_delegated_full_access_pending(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    allow(sb, c)
    sb.mutate("propagate")
    full_access(c, SHARED, sb.esj_account)
    assert message(post(c, password_token(c)))[1] == "ErrorAccessDenied"
    sb.mutate("propagate")
    assert message(post(c, password_token(c)))[1] == "NoError"


def test_wrong_audience_and_bad_tokens_are_401_with_diagnostics(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    r = post(c, password_token(c, GRAPH))
    assert r.status_code == 401
    assert r.headers["x-ms-diagnostics"] == (
        "2000003;reason=\"The audience claim value is invalid 'aud'.\";error_category=\"invalid_resource\"")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = c.http.post(sb.ews_url, content=get_folder(SHARED))
    assert r.status_code == 401 and 'error="invalid_token"' not in r.headers["WWW-Authenticate"]
    r = post(c, password_token(c, "https://outlook.office.com/IMAP.AccessAsUser.All"))
    assert r.status_code == 401  # a delegated token without EWS.AccessAsUser.All


def test_bodies_the_stand_in_does_not_serve(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    allow(sb, c)
    h = {"Authorization": f"Bearer {password_token(c, OUTLOOK)}"}
    assert fault(c.http.post(sb.ews_url, content=b"<not-xml", headers=h))[0] == "a:ErrorSchemaValidation"
    assert c.http.get(sb.ews_url, headers=h).status_code == 405
    assert [x["status"] for x in sb.calls(service="ews")] == [500, 405]


def test_ews_settings_persist_in_the_state_file_and_control_api_lists_sent_mail(tmp_path: object) -> None:
    from pathlib import Path

    state = Path(str(tmp_path)) / "tenant.json"
    with Sandbox(state_path=state, propagation_s=3600) as sb:
        c = SandboxClient(sb)
        allow(sb, c)
        sb.mutate("set-ews-enabled", mailbox=SHARED, enabled=False)
        assert c.http.get(f"{sb.url}/_sandbox/sent").json() == {
            "sent": [], "propagation": {"seconds": 3600.0, "pending": [["EwsAllowedAppId", sb.esj_app_id]]}}
        c.close()
    with Sandbox(state_path=state) as sb:
        c = SandboxClient(sb)
        [row] = ok(c, "Get-OrganizationConfig", RetrieveEwsOperationAccessPolicy=True)
        assert row["EwsEnabled"] is True and row["EwsAllowedAppIDs"] == [sb.esj_app_id]
        assert ok(c, "Get-CASMailbox", Identity=SHARED)[0]["EwsEnabled"] is False
        assert sb.propagation()["pending"] == []  # what a restart loads has long propagated
        c.close()
