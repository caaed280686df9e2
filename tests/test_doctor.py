"""``esj-provision doctor`` end to end against the sandbox: every failure case with its message.

Doctor is read-only: every test also checks that it sent no write to Exchange.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
from sandbox_fixtures import SandboxClient
from typer.testing import Result

from esj_provision import doctor as doctor_mod
from esj_provision.sandbox import Sandbox

Cli = Callable[..., Result]
READ_VERBS = ("Get-", "Test-")
# Shared and never changed: tests that change the tenant use their own sandbox.
pytestmark = pytest.mark.tenant()




def doctor_json(cli: Cli, *args: str, sb: Sandbox | None = None, env: dict[str, str] | None = None) -> tuple[
    Result, dict[str, Any], dict[str, dict[str, Any]]
]:
    r = cli("doctor", *args, "--format", "json", sb=sb, env=env)
    data = json.loads(r.stdout)
    return r, data, {c["id"]: c for c in data["checks"]}


def no_writes(sb: Sandbox) -> bool:
    return not [c for c in sb.calls() if c.get("cmdlet") and not c["cmdlet"].startswith(READ_VERBS)]


def esj_ids(sb: Sandbox) -> tuple[str, str]:
    """The ESJ app's enterprise application object id and app registration object id."""
    esj = next(a for a in sb.state()["apps"] if a["client_id"] == sb.esj_app_id)
    return esj["sp_object_id"], esj["app_object_id"]


def register(sb: Sandbox, object_id: str) -> None:
    """Register the ESJ app in Exchange as an admin would in PowerShell, with the given object id."""
    client = SandboxClient(sb)
    try:
        r = client.invoke("New-ServicePrincipal", {"AppId": sb.esj_app_id, "ObjectId": object_id,
                                                   "DisplayName": "Genesys E-mail Server"})
        assert r.status_code == 200, r.text
    finally:
        client.close()


# --------------------------------------------------------------------------- everything in place


def test_all_in_place_exits_0_with_a_table(tenant: Sandbox, cli: Cli) -> None:
    r = cli("doctor", "--inbound", "graph", "--outbound", "graph", "--esj-app", tenant.esj_app_id)
    assert r.exit_code == 0, r.stdout + r.stderr
    for needle in ("connection", "provisioning app", "ESJ app", "Exchange accepts the app", "TLS verified",
                   "Mail.ReadWrite"):
        assert needle in r.stdout
    assert "0 missing" in r.stderr and "0 error(s)" in r.stderr
    assert no_writes(tenant)


def test_json_lists_every_check_and_the_token_roles(tenant: Sandbox, cli: Cli) -> None:
    r, data, checks = doctor_json(cli, "--inbound", "graph", "--outbound", "graph", "--esj-app", tenant.esj_app_id)
    assert r.exit_code == 0 and data["ok"] is True
    assert {c["status"] for c in data["checks"]} <= {"ok", "warning"}
    for cid in ("endpoints", "tls", "sign-in", "clock", "graph-access", "graph:User.Read.All",
                "graph:MailboxSettings.Read", "graph:Application.Read.All", "exchange:Exchange.ManageAsApp",
                "exchange-admin", "directory-role", "esj-app", "esj:Mail.ReadWrite", "esj:Mail.Send"):
        assert checks[cid]["status"] == "ok", checks[cid]
    assert set(data["context"]["token"]["graph_roles"]) >= {"User.Read.All", "MailboxSettings.Read"}
    assert data["context"]["token"]["exchange_roles"] == ["Exchange.ManageAsApp"]
    assert "29232cdf-9323-42fd-ade2-1d097af3e4de" in data["context"]["token"]["wids"]  # Exchange Administrator
    # The sandbox is reached through overrides: said, not flagged.
    assert data["context"]["overrides"] == ["authority", "graph", "exchange"]
    assert "(override)" in checks["endpoints"]["what"] and data["context"]["ca_bundle"] == tenant.env[
        "ESJ_PROVISION_CA_BUNDLE"]
    # The seeded ESJ app holds Graph Mail.* tenant-wide: wider than its mailboxes, a warning only.
    assert checks["esj-app-scope"]["status"] == "warning"
    assert "wider than its mailboxes" in checks["esj-app-scope"]["what"]
    assert "Mail.ReadWrite, Mail.Send granted tenant-wide" in checks["esj-app-scope"]["what"]


def test_provisioning_app_alone(tenant: Sandbox, cli: Cli) -> None:
    r, data, checks = doctor_json(cli)
    assert r.exit_code == 0
    assert "graph:Application.Read.All" not in checks  # only needed for the ESJ app's checks
    assert not any(c["group"] == "ESJ app" for c in data["checks"])


def test_protocols_without_esj_app_say_it_was_not_checked(tenant: Sandbox, cli: Cli) -> None:
    r, _, checks = doctor_json(cli, "--inbound", "imap", "--outbound", "smtp")
    assert r.exit_code == 0
    assert checks["esj-app"]["status"] == "warning" and "--esj-app" in checks["esj-app"]["fix"]


def test_imap_smtp_all_in_place_with_a_registered_service_principal(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-app-roles", app=sb.esj_app_id, resource="exchange",
                  roles=["IMAP.AccessAsApp", "SMTP.SendAsApp"])
        sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=[])
        register(sb, esj_ids(sb)[0])
        r, data, checks = doctor_json(cli, "--inbound", "imap", "--outbound", "smtp", "--esj-app", sb.esj_app_id,
                                      sb=sb)
        assert r.exit_code == 0, data
        assert {c["status"] for c in data["checks"]} == {"ok"}
        assert "IMAP.AccessAsApp" in checks["esj:IMAP.AccessAsApp"]["what"]
        assert checks["esj-exchange-sp"]["what"].startswith("registered in Exchange with its enterprise application")
        assert "no tenant-wide mail access" in checks["esj-app-scope"]["what"]


# --------------------------------------------------------------------------- the provisioning app


def test_no_exchange_directory_role_is_the_403_case(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-directory-roles", app=sb.client_id, roles=[])  # keeps Exchange.ManageAsApp
        r, data, checks = doctor_json(cli, sb=sb)
        assert r.exit_code == 1 and data["ok"] is False
        probe = checks["exchange-admin"]
        assert probe["status"] == "missing"
        assert "403" in probe["what"] and "holds Exchange.ManageAsApp but no Exchange admin role" in probe["what"]
        assert "assign Exchange Administrator" in probe["fix"]
        assert checks["exchange:Exchange.ManageAsApp"]["status"] == "ok"  # the app role is there
        assert checks["directory-role"]["status"] == "missing"
        assert "Roles and administrators" in checks["directory-role"]["fix"]
        assert no_writes(sb)


def test_no_exchange_manage_as_app_is_the_401_case(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-app-roles", app=sb.client_id, resource="exchange", roles=[])
        r, _, checks = doctor_json(cli, sb=sb)
        assert r.exit_code == 1
        probe = checks["exchange-admin"]
        assert probe["status"] == "missing" and "401" in probe["what"]
        assert "no Exchange.ManageAsApp permission, or no admin consent" in probe["what"]
        assert "Exchange.ManageAsApp (Application) and grant admin consent" in probe["fix"]
        assert checks["exchange:Exchange.ManageAsApp"]["status"] == "missing"
        assert "not in the Exchange token" in checks["exchange:Exchange.ManageAsApp"]["what"]


def test_no_mailbox_settings_read(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-app-roles", app=sb.client_id, resource="graph", roles=["User.Read.All", "Application.Read.All"])
        r, _, checks = doctor_json(cli, sb=sb)
        assert r.exit_code == 1
        check = checks["graph:MailboxSettings.Read"]
        assert check["status"] == "missing"
        assert "shared mailbox from a user mailbox" in check["what"]
        assert check["fix"].startswith("in the provisioning app's registration add Microsoft Graph > "
                                       "MailboxSettings.Read (Application)")
        r2 = cli("doctor", sb=sb)  # the table says the same
        assert r2.exit_code == 1 and "MailboxSettings.Read" in r2.stdout and "missing" in r2.stdout


def test_no_user_read_all_is_seen_in_the_token_and_by_graph(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-app-roles", app=sb.client_id, resource="graph", roles=["MailboxSettings.Read"])
        r, _, checks = doctor_json(cli, sb=sb)
        assert r.exit_code == 1
        assert checks["graph:User.Read.All"]["status"] == "missing"
        assert checks["graph-access"]["status"] == "missing" and "403" in checks["graph-access"]["what"]


def test_the_seeded_app_without_any_exchange_permission(cli: Cli, tenant: Sandbox) -> None:
    creds = tenant.apps["no_exchange_role"]
    r, _, checks = doctor_json(cli, env={"AZURE_CLIENT_ID": creds["client_id"],
                                         "AZURE_CLIENT_SECRET": creds["client_secret"]})
    assert r.exit_code == 1
    assert checks["sign-in"]["status"] == "ok"
    assert checks["exchange-admin"]["status"] == "missing" and "401" in checks["exchange-admin"]["what"]
    assert checks["graph-access"]["status"] == "missing"


def test_recipient_administrator_is_enough_for_mail_but_not_for_the_esj_app(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-directory-roles", app=sb.client_id, roles=["Exchange Recipient Administrator"])
        r, _, checks = doctor_json(cli, sb=sb)
        assert r.exit_code == 0 and checks["directory-role"]["status"] == "ok"
        r, _, checks = doctor_json(cli, "--inbound", "imap", "--outbound", "smtp", "--esj-app", sb.esj_app_id, sb=sb)
        role = checks["directory-role"]
        assert role["status"] == "warning" and "not for registering the ESJ app's service principal" in role["what"]


def test_missing_application_read_all_blocks_the_esj_app_checks(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-app-roles", app=sb.client_id, resource="graph", roles=["User.Read.All", "MailboxSettings.Read"])
        r, _, checks = doctor_json(cli, "--inbound", "graph", "--outbound", "graph", "--esj-app", sb.esj_app_id,
                                   sb=sb)
        assert r.exit_code == 1
        assert checks["graph:Application.Read.All"]["status"] == "missing"
        assert checks["esj-app"]["status"] == "error"
        assert "Application.Read.All" in checks["esj-app"]["what"] + (checks["esj-app"]["fix"] or "")


# --------------------------------------------------------------------------- connection


def test_untrusted_tls_is_an_error_with_the_ca_bundle_fix(cli: Cli) -> None:
    r, _, checks = doctor_json(cli, env={"ESJ_PROVISION_CA_BUNDLE": certifi.where()})
    assert r.exit_code == 1
    assert checks["tls"]["status"] == "error" and "certificate not trusted" in checks["tls"]["what"]
    assert "ESJ_PROVISION_CA_BUNDLE" in checks["tls"]["fix"]
    assert checks["sign-in"]["status"] == "error"  # and nothing that needs a token is attempted
    assert "graph:User.Read.All" not in checks


def test_clock_skew_is_a_warning_with_the_fix(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_mod, "_now", lambda: time.time() + 900)
    r, _, checks = doctor_json(cli)
    assert r.exit_code == 0  # a warning does not fail the run
    clock = checks["clock"]
    assert clock["status"] == "warning" and "ahead of Microsoft's" in clock["what"]
    assert "more than 300 s" in clock["what"] and "NTP" in clock["fix"]


def test_clock_check_without_a_date_header() -> None:
    assert doctor_mod.clock_check(None, time.time())[0] == "warning"
    assert doctor_mod.clock_check("not a date", time.time())[1].startswith("cannot compare clocks")
    assert doctor_mod.clock_check("Thu, 01 Jan 2026 00:00:00 GMT", 1767225600.0 - 30)[0] == "ok"


# --------------------------------------------------------------------------- the ESJ app


@pytest.mark.parametrize(
    ("inbound", "outbound", "missing"),
    [
        ("imap", "smtp", {"esj:IMAP.AccessAsApp", "esj:SMTP.SendAsApp", "esj-exchange-sp"}),
        # The sample tenant blocks EWS since October 2026 (EwsEnabled $false): see test_ews_e2e.py.
        ("ews", "ews", {"esj:full_access_as_app", "esj-ews-policy"}),
        ("imap", "graph", {"esj:IMAP.AccessAsApp", "esj-exchange-sp"}),
    ],
)
def test_esj_app_missing_what_its_protocols_need(
    tenant: Sandbox, cli: Cli, inbound: str, outbound: str, missing: set[str]
) -> None:
    r, data, checks = doctor_json(cli, "--inbound", inbound, "--outbound", outbound, "--esj-app", tenant.esj_app_id)
    assert r.exit_code == 1
    assert {c["id"] for c in data["checks"] if c["status"] == "missing"} == missing
    for cid in missing - {"esj-exchange-sp", "esj-ews-policy"}:
        role = cid.split(":", 1)[1]
        assert checks[cid]["what"].startswith(f"Office 365 Exchange Online {role} is missing: ")
        assert "as the app" in checks[cid]["what"] or "EWS" in checks[cid]["what"]
        assert f"Office 365 Exchange Online {role} (Application)" in checks[cid]["fix"]
    assert no_writes(tenant)


def test_esj_app_without_graph_permissions_is_told_to_scope(tmp_path: Path, cli: Cli) -> None:
    with Sandbox() as sb:
        sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=[])
        r, _, checks = doctor_json(cli, "--inbound", "graph", "--outbound", "graph", "--esj-app", sb.esj_app_id,
                                   sb=sb)
        assert r.exit_code == 1
        for role, rbac in (("Mail.ReadWrite", "Application Mail.ReadWrite"), ("Mail.Send", "Application Mail.Send")):
            check = checks[f"esj:{role}"]
            assert check["status"] == "missing" and check["what"].startswith(f"Microsoft Graph {role} is missing")
            assert f"--scope-esj-app {sb.esj_app_id}" in check["fix"] and rbac in check["fix"]
        assert checks["esj-app-scope"]["status"] == "ok"


def test_service_principal_not_registered(tenant: Sandbox, cli: Cli) -> None:
    r, _, checks = doctor_json(cli, "--inbound", "imap", "--outbound", "smtp", "--esj-app", tenant.esj_app_id)
    sp_id, _ = esj_ids(tenant)
    check = checks["esj-exchange-sp"]
    assert r.exit_code == 1 and check["status"] == "missing"
    assert "not registered in Exchange" in check["what"]
    assert f"New-ServicePrincipal -AppId {tenant.esj_app_id} -ObjectId {sp_id}" in check["fix"]
    assert f"--trustee-app {tenant.esj_app_id}" in check["fix"]


def test_service_principal_registered_with_the_app_registration_object_id(tmp_path: Path, cli: Cli) -> None:
    """The trap: Exchange accepts the App registration's object id, and ESJ's sign-ins then fail."""
    with Sandbox() as sb:
        sp_id, app_object_id = esj_ids(sb)
        register(sb, app_object_id)
        sb.reset_calls()
        r, _, checks = doctor_json(cli, "--inbound", "imap", "--outbound", "smtp", "--esj-app", sb.esj_app_id, sb=sb)
        assert r.exit_code == 1
        check = checks["esj-exchange-sp"]
        assert check["status"] == "error"
        assert f"registered in Exchange with object id {app_object_id}" in check["what"]
        assert "its App registration's object id, not its Enterprise application's" in check["what"]
        assert f"({sp_id})" in check["what"] and "will fail" in check["what"]
        assert f"Remove-ServicePrincipal -Identity {app_object_id}" in check["fix"]
        assert f"New-ServicePrincipal -AppId {sb.esj_app_id} -ObjectId {sp_id}" in check["fix"]
        assert no_writes(sb)


def test_unknown_esj_app(tenant: Sandbox, cli: Cli) -> None:
    r, _, checks = doctor_json(cli, "--inbound", "graph", "--outbound", "graph", "--esj-app",
                               "0b7c1f0e-1111-4222-8333-944455556666")
    assert r.exit_code == 1
    assert checks["esj-app"]["status"] == "missing"
    assert "no enterprise application (service principal) in this tenant" in checks["esj-app"]["what"]
    assert "grant admin consent" in checks["esj-app"]["fix"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--esj-app", "2db3fd6d-47fc-4750-ace0-99b31d4ba2de"], "--esj-app needs the protocols ESJ uses"),
        (["--esj-app", "not-a-guid", "--inbound", "imap"], "is not a GUID"),
        (["--inbound", "pop3"], "unknown inbound protocol"),
        (["--format", "xml"], "unknown format"),
    ],
)
def test_usage_errors_make_no_call(tenant: Sandbox, cli: Cli, args: list[str], needle: str) -> None:
    mark = len(tenant.calls())
    r = cli("doctor", *args)
    assert r.exit_code == 2 and needle in r.stderr
    assert tenant.calls()[mark:] == []


def test_a_host_that_cannot_be_reached_directly_is_not_a_tls_error() -> None:
    """Unreachable directly (a proxy-only network) is told apart from a certificate that fails."""
    import asyncio
    import socket
    import ssl

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    why = asyncio.run(doctor_mod._handshake("127.0.0.1", port, ssl.create_default_context()))
    assert why is not None and why.startswith(doctor_mod.CONNECT_FAILED)
