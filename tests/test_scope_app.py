"""``onboard --scope-esj-app``: RBAC for Applications confines an ESJ app's Graph mail access to its
shared mailboxes. Against the sandbox, whose Graph honours the RBAC assignments, so the effect is
checked with the ESJ app's own token, not only with Test-ServicePrincipalAuthorization."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import SandboxClient
from typer.testing import Result

from esj_provision.provision.journal import read_journal
from esj_provision.provision.scope import address_filter, addresses_in, extended_filter, scope_name
from esj_provision.sandbox import Sandbox

Cli = Callable[..., Result]
pytestmark = pytest.mark.tenant(private=True)  # a fresh tenant per test: they register and grant
TRUSTEE = "esj-svc@contoso.com"


def scoped(cli: Cli, tenant: Sandbox, mailbox: str, inbound: str = "graph", outbound: str = "graph",
           *extra: str) -> tuple[Result, dict[str, Any]]:
    r = cli("onboard", mailbox, "--trustee", TRUSTEE, "--inbound", inbound, "--outbound", outbound,
            "--scope-esj-app", tenant.esj_app_id, "--format", "json", *extra)
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else {})


def org_writes(tenant: Sandbox, mark: int) -> list[dict[str, Any]]:
    mailbox = {"Add-MailboxPermission", "Add-RecipientPermission"}
    return [c for c in tenant.calls()[mark:] if c.get("write") and c["cmdlet"] not in mailbox]


def test_scope_and_assignments_are_created_once_and_verified(cli: Cli, tenant: Sandbox) -> None:
    name = scope_name(tenant.esj_app_id)
    mark = len(tenant.calls())
    r, data = scoped(cli, tenant, "support@contoso.com")
    assert r.exit_code == 0, r.stderr
    scope = data["scope"]
    assert scope["scope"] == name and scope["roles"] == ["Application Mail.ReadWrite", "Application Mail.Send"]
    assert [(s["op"], s["outcome"]) for s in scope["steps"]] == [
        ("new-service-principal", "applied"),
        ("new-management-scope", "applied"),
        ("new-role-assignment", "applied"),
        ("new-role-assignment", "applied"),
    ]
    assert sorted(c["cmdlet"] for c in org_writes(tenant, mark)) == [
        "New-ManagementRoleAssignment", "New-ManagementRoleAssignment", "New-ManagementScope", "New-ServicePrincipal",
    ]
    # Test-ServicePrincipalAuthorization: in scope for the mailbox.
    assert scope["verification"] == [
        {"role": "Application Mail.ReadWrite", "in_scope": True, "scope": name},
        {"role": "Application Mail.Send", "in_scope": True, "scope": name},
    ]
    state = tenant.state()
    assert state["management_scopes"] == [{"name": name, "filter": "PrimarySmtpAddress -eq 'support@contoso.com'"}]
    assert {(a["role"], a["scope"]) for a in state["role_assignments"]} == {
        ("Application Mail.ReadWrite", name), ("Application Mail.Send", name)
    }
    # The tenant-wide Entra grant defeats the scope, and that is said.
    wider = next(f for f in scope["findings"] if f["code"] == "access-wider-than-mailboxes")
    assert wider["level"] == "warning" and "Mail.ReadWrite, Mail.Send granted tenant-wide" in wider["message"]
    assert "RBAC grants and Entra grants add up" in wider["message"]
    # Journalled like every write.
    ops = [rec["op"] for rec in read_journal(cli.journal) if rec.get("event") == "result"]  # type: ignore[attr-defined]
    assert ops.count("new-role-assignment") == 2 and "new-management-scope" in ops

    # Second run: no write at all, still verified.
    mark = len(tenant.calls())
    r, data = scoped(cli, tenant, "support@contoso.com")
    assert r.exit_code == 0
    assert org_writes(tenant, mark) == [] and [c for c in tenant.calls()[mark:] if c.get("write")] == []
    assert {s["outcome"] for s in data["scope"]["steps"]} == {"already-present"}
    assert all(v["in_scope"] for v in data["scope"]["verification"])


def test_another_mailbox_extends_the_scope_only(cli: Cli, tenant: Sandbox) -> None:
    assert scoped(cli, tenant, "support@contoso.com")[0].exit_code == 0
    mark = len(tenant.calls())
    r, data = scoped(cli, tenant, "billing@contoso.com")
    assert r.exit_code == 0, r.stderr
    assert [c["cmdlet"] for c in org_writes(tenant, mark)] == ["Set-ManagementScope"]
    (scope,) = tenant.state()["management_scopes"]
    assert addresses_in(scope["filter"]) == ["support@contoso.com", "billing@contoso.com"]
    assert all(v["in_scope"] for v in data["scope"]["verification"])


def test_a_second_mailbox_keeps_the_first_in_scope_and_a_rerun_writes_nothing(cli: Cli, tenant: Sandbox) -> None:
    """Issue 11, defect 2: Get-ManagementScope returns the filter in RecipientFilter. Reading the
    parameter name (RecipientRestrictionFilter) found nothing, so billing's onboarding replaced
    support in the scope, and every re-run wrote the scope again."""
    assert scoped(cli, tenant, "support@contoso.com")[0].exit_code == 0
    assert scoped(cli, tenant, "billing@contoso.com")[0].exit_code == 0
    client = SandboxClient(tenant)
    try:
        for mailbox in ("support@contoso.com", "billing@contoso.com"):
            rows = client.invoke("Test-ServicePrincipalAuthorization",
                                 {"Identity": tenant.esj_app_id, "Resource": mailbox}).json()["value"]
            assert rows and all(r["InScope"] is True for r in rows), (mailbox, rows)
        (row,) = client.invoke("Get-ManagementScope", {"Identity": scope_name(tenant.esj_app_id)}).json()["value"]
    finally:
        client.close()
    assert addresses_in(row["RecipientFilter"]) == ["support@contoso.com", "billing@contoso.com"]
    mark = len(tenant.calls())
    for mailbox in ("support@contoso.com", "billing@contoso.com"):
        r, data = scoped(cli, tenant, mailbox)
        assert r.exit_code == 0, r.stderr
        assert all(v["in_scope"] for v in data["scope"]["verification"])
    assert [c for c in tenant.calls()[mark:] if c["cmdlet"] == "Set-ManagementScope"] == []
    assert org_writes(tenant, mark) == []


def test_the_scope_really_confines_the_esj_app_once_the_tenant_wide_grant_is_gone(cli: Cli, tenant: Sandbox) -> None:
    assert scoped(cli, tenant, "support@contoso.com")[0].exit_code == 0
    client = SandboxClient(tenant)
    try:
        token = client.token("graph", app="esj", fresh=True)
        # Tenant-wide Mail.ReadWrite still there: every mailbox is open (why the warning exists).
        assert client.graph("/v1.0/users/sales@contoso.com/mailFolders/inbox", token=token).status_code == 200
        tenant.mutate("set-app-roles", app=tenant.esj_app_id, resource="graph", roles=[])
        token = client.token("graph", app="esj", fresh=True)
        assert client.graph("/v1.0/users/support@contoso.com/mailFolders/inbox", token=token).status_code == 200
        out = client.graph("/v1.0/users/sales@contoso.com/mailFolders/inbox", token=token)
        assert out.status_code == 403 and out.json()["error"]["code"] == "ErrorAccessDenied"
    finally:
        client.close()
    # Doctor now finds what GRAPH needs in place through RBAC, and nothing wider.
    r = cli("doctor", "--inbound", "graph", "--outbound", "graph", "--esj-app", tenant.esj_app_id, "--format", "json")
    assert r.exit_code == 0, r.stdout
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert "via RBAC for Applications" in checks["esj:Mail.ReadWrite"]["what"]
    assert scope_name(tenant.esj_app_id) in checks["esj:Mail.Send"]["what"]
    assert checks["esj-app-scope"]["status"] == "ok"
    # And the scoping run itself no longer warns.
    r, data = scoped(cli, tenant, "support@contoso.com")
    assert not [f for f in data["scope"]["findings"] if f["code"] == "access-wider-than-mailboxes"]


def test_inbound_graph_only_gets_mail_readwrite_only(cli: Cli, tenant: Sandbox) -> None:
    r, data = scoped(cli, tenant, "support@contoso.com", "graph", "smtp")
    assert r.exit_code == 0, r.stderr
    assert data["scope"]["roles"] == ["Application Mail.ReadWrite"]
    assert [a["role"] for a in tenant.state()["role_assignments"]] == ["Application Mail.ReadWrite"]


def test_scoping_needs_graph(cli: Cli, tenant: Sandbox) -> None:
    r, _ = scoped(cli, tenant, "support@contoso.com", "imap", "smtp")
    assert r.exit_code == 2
    assert "--scope-esj-app confines the ESJ app's Graph mail access" in r.stderr
    assert not [c for c in tenant.calls() if c.get("write")]


def test_dry_run_prints_the_commands_and_writes_nothing(cli: Cli, tenant: Sandbox) -> None:
    r = cli("onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "graph", "--outbound", "graph",
            "--scope-esj-app", tenant.esj_app_id, "--dry-run", "--as-powershell")
    assert r.exit_code == 0, r.stderr
    name = scope_name(tenant.esj_app_id)
    assert f"New-ManagementScope -Name '{name}' -RecipientRestrictionFilter " in r.stdout
    assert "'PrimarySmtpAddress -eq ''support@contoso.com'''" in r.stdout
    assert "-Role 'Application Mail.ReadWrite'" in r.stdout and "-Role 'Application Mail.Send'" in r.stdout
    assert "Scoping ESJ app" in r.stderr
    assert not [c for c in tenant.calls() if c.get("write")]


def test_recipient_administrator_cannot_scope(cli: Cli, tenant: Sandbox) -> None:
    tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Exchange Recipient Administrator"])
    r, data = scoped(cli, tenant, "support@contoso.com")
    assert r.exit_code == 1
    steps = data["scope"]["steps"]
    assert steps[0]["outcome"] == "failed" and "Role Management" in steps[0]["hint"]
    assert {s["outcome"] for s in steps[1:]} == {"skipped"}
    assert "not attempted" in steps[1]["error"]
    assert tenant.state()["management_scopes"] == []


def test_wrong_registration_refuses_scoping(cli: Cli, tenant: Sandbox) -> None:
    esj = next(a for a in tenant.state()["apps"] if a["client_id"] == tenant.esj_app_id)
    client = SandboxClient(tenant)
    try:
        assert client.invoke("New-ServicePrincipal", {"AppId": tenant.esj_app_id,
                                                      "ObjectId": esj["app_object_id"]}).status_code == 200
    finally:
        client.close()
    r, _ = scoped(cli, tenant, "support@contoso.com")
    assert r.exit_code == 1
    assert "scoping the ESJ app refused" in r.stderr
    assert "App registration's object id" in r.stderr
    assert tenant.state()["management_scopes"] == [] and tenant.state()["role_assignments"] == []


def test_organisation_wide_rbac_assignment_is_reported_as_wider(cli: Cli, tenant: Sandbox) -> None:
    assert scoped(cli, tenant, "support@contoso.com")[0].exit_code == 0
    tenant.mutate("set-app-roles", app=tenant.esj_app_id, resource="graph", roles=[])
    esj = next(a for a in tenant.state()["apps"] if a["client_id"] == tenant.esj_app_id)
    client = SandboxClient(tenant)
    try:
        made = client.invoke("New-ManagementRoleAssignment", {"App": esj["sp_object_id"], "Role": "Application Mail.Read"})
        assert made.status_code == 200, made.text
    finally:
        client.close()
    path = Path("manifest.csv")
    path.write_text(f"mailbox,trustee,inbound,outbound\nsupport@contoso.com,{TRUSTEE},graph,graph\n")
    r = cli("audit", str(path), "--esj-app", tenant.esj_app_id, "--format", "json")
    assert r.exit_code == 3, r.stdout
    (found,) = json.loads(r.stdout)["apps"]
    assert found["wider"] == [
        "RBAC for Applications role 'Application Mail.Read' assigned organisation-wide (no custom resource scope)"
    ]


def test_filter_helpers_keep_what_an_admin_wrote() -> None:
    ours = address_filter(["a@contoso.com", "o'brien@contoso.com"])
    assert ours == "PrimarySmtpAddress -eq 'a@contoso.com' -or PrimarySmtpAddress -eq 'o''brien@contoso.com'"
    assert addresses_in(ours) == ["a@contoso.com", "o'brien@contoso.com"]
    assert extended_filter(ours, "b@contoso.com") == address_filter(
        ["a@contoso.com", "o'brien@contoso.com", "b@contoso.com"]
    )
    hand = "Alias -like 'queue*'"
    assert extended_filter(hand, "b@contoso.com") == "(Alias -like 'queue*') -or PrimarySmtpAddress -eq 'b@contoso.com'"
    assert extended_filter("", "b@contoso.com") == "PrimarySmtpAddress -eq 'b@contoso.com'"


def test_sandbox_set_management_scope(tenant: Sandbox) -> None:
    """The cmdlet the sandbox learned for scoping: replaces the filter, checks it, 404 when unknown."""
    client = SandboxClient(tenant)
    try:
        assert client.invoke("New-ManagementScope", {"Name": "s", "RecipientRestrictionFilter":
                                                     "PrimarySmtpAddress -eq 'support@contoso.com'"}).status_code == 200
        ok = client.invoke("Set-ManagementScope", {"Identity": "S", "RecipientRestrictionFilter":
                                                   "PrimarySmtpAddress -eq 'sales@contoso.com'"})
        assert ok.status_code == 200 and ok.json()["value"] == []
        assert tenant.state()["management_scopes"] == [{"name": "s", "filter": "PrimarySmtpAddress -eq 'sales@contoso.com'"}]
        bad = client.invoke("Set-ManagementScope", {"Identity": "s", "RecipientRestrictionFilter": "Alias -eq"})
        assert bad.status_code == 400 and "InvalidFilterException" in bad.text
        missing = client.invoke("Set-ManagementScope", {"Identity": "nope", "RecipientRestrictionFilter": "Alias -eq 'x'"})
        assert missing.status_code == 404
        tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Exchange Recipient Administrator"])
        denied = client.invoke("Set-ManagementScope", {"Identity": "s"}, token=client.token("exchange", fresh=True))
        assert denied.status_code == 403
    finally:
        client.close()
