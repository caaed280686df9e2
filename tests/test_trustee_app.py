"""``onboard/offboard --trustee-app`` and app trustees in manifests (bulk, audit), against the sandbox.

With client credentials ESJ reads the mailbox as its app, so Full Access goes to the app's Exchange
service principal: registered when missing (with the Enterprise application's object id), once;
never "repaired" when registered with the App registration's object id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import SandboxClient
from typer.testing import Result

from esj_provision.fleet.manifest import rows, validate
from esj_provision.models import AppTrustee, UserTrustee
from esj_provision.provision.journal import read_journal
from esj_provision.sandbox import Sandbox

Cli = Callable[..., Result]
pytestmark = pytest.mark.tenant(private=True, mailboxes=5)  # a fresh tenant per test: they register and grant
UNKNOWN_APP = "0b7c1f0e-1111-4222-8333-944455556666"


def esj_ids(tenant: Sandbox) -> tuple[str, str]:
    esj = next(a for a in tenant.state()["apps"] if a["client_id"] == tenant.esj_app_id)
    return esj["sp_object_id"], esj["app_object_id"]


def cmdlets(tenant: Sandbox, mark: int, *, writes_only: bool = True) -> list[dict[str, Any]]:
    calls = [c for c in tenant.calls()[mark:] if c.get("cmdlet")]
    return [c for c in calls if c.get("write")] if writes_only else calls


def onboard(cli: Cli, tenant: Sandbox, mailbox: str, *extra: str) -> tuple[Result, dict[str, Any]]:
    r = cli("onboard", mailbox, "--trustee-app", tenant.esj_app_id, "--inbound", "imap", "--outbound", "smtp",
            "--format", "json", *extra)
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else {})


def register(tenant: Sandbox, object_id: str) -> None:
    client = SandboxClient(tenant)
    try:
        r = client.invoke("New-ServicePrincipal", {"AppId": tenant.esj_app_id, "ObjectId": object_id})
        assert r.status_code == 200, r.text
    finally:
        client.close()


# --------------------------------------------------------------------------- onboard


def test_registers_the_service_principal_once_then_grants_full_access(cli: Cli, tenant: Sandbox) -> None:
    sp_id, app_object_id = esj_ids(tenant)
    mark = len(tenant.calls())
    r, data = onboard(cli, tenant, "support@contoso.com")
    assert r.exit_code == 0, r.stderr
    assert data["trustee_kind"] == "app" and data["trustee_app"] == tenant.esj_app_id
    assert data["service_principal"]["op"] == "new-service-principal"
    assert (data["service_principal"]["action"], data["service_principal"]["outcome"]) == ("create", "applied")
    assert [(d["right"], d["action"], d["outcome"], d["verified"]) for d in data["delegations"]] == [
        ("FullAccess", "grant", "applied", "present")
    ]
    writes = cmdlets(tenant, mark)
    assert [c["cmdlet"] for c in writes] == ["New-ServicePrincipal", "Add-MailboxPermission"]  # no Send As
    new_sp, grant = writes
    # The Enterprise application's object id, never the App registration's.
    assert new_sp["parameters"]["ObjectId"] == sp_id != app_object_id
    assert new_sp["parameters"]["AppId"] == tenant.esj_app_id
    assert grant["parameters"]["User"] == sp_id and grant["parameters"]["AutoMapping"] is False
    (registered,) = tenant.state()["exchange_service_principals"]
    assert registered["object_id"] == sp_id
    # Send As is not for apps, and says why.
    finding = next(f for f in data["findings"] if f["code"] == "no-send-as-app")
    assert "SMTP.SendAsApp" in finding["message"]
    # The options: the app's client id, placeholders where the guide wants the delegate's address.
    opts = {(o["section"], o["name"]): o["value"] for o in data["esj_options"]["options"]}
    assert opts[("pop-client", "client-id")] == tenant.esj_app_id == opts[("smtp-client", "client-id")]
    assert opts[("pop-client", "service-account")].startswith("<set:")
    assert any("grant-type client_credentials" in s for s in data["next_steps"])
    # Journalled like every write.
    records = list(read_journal(cli.journal))  # type: ignore[attr-defined]
    ops = [(rec["event"], rec.get("op"), rec.get("outcome")) for rec in records if rec.get("op")]
    assert ops == [
        ("intent", "new-service-principal", None),
        ("result", "new-service-principal", "applied"),
        ("intent", "add-full-access", None),
        ("result", "add-full-access", "applied"),
    ]


def test_second_run_writes_nothing_and_another_mailbox_only_grants(cli: Cli, tenant: Sandbox) -> None:
    assert onboard(cli, tenant, "support@contoso.com")[0].exit_code == 0
    mark = len(tenant.calls())
    r, data = onboard(cli, tenant, "support@contoso.com")
    assert r.exit_code == 0
    assert data["service_principal"] is None
    assert [d["outcome"] for d in data["delegations"]] == ["already-present"]
    assert cmdlets(tenant, mark) == []
    mark = len(tenant.calls())
    r, data = onboard(cli, tenant, "billing@contoso.com")
    assert r.exit_code == 0
    assert [c["cmdlet"] for c in cmdlets(tenant, mark)] == ["Add-MailboxPermission"]


def test_table_output_names_the_app_and_the_registration(cli: Cli, tenant: Sandbox) -> None:
    r = cli("onboard", "support@contoso.com", "--trustee-app", tenant.esj_app_id, "--inbound", "imap",
            "--outbound", "smtp")
    assert r.exit_code == 0, r.stderr
    assert "for ESJ app Genesys E-mail Server (sandbox) (its Exchange service principal)" in r.stdout
    assert "Exchange service principal of Genesys E-mail Server (sandbox): create" in r.stdout
    assert "Exchange service principal of Genesys E-mail Server (sandbox): done" in r.stdout
    assert f"esj-provision doctor --esj-app {tenant.esj_app_id}" in r.stdout


def test_dry_run_writes_nothing_and_prints_the_registration(cli: Cli, tenant: Sandbox) -> None:
    sp_id, _ = esj_ids(tenant)
    mark = len(tenant.calls())
    r = cli("onboard", "support@contoso.com", "--trustee-app", tenant.esj_app_id, "--inbound", "imap",
            "--outbound", "smtp", "--dry-run", "--as-powershell")
    assert r.exit_code == 0, r.stderr
    assert f"New-ServicePrincipal -AppId {tenant.esj_app_id} -ObjectId {sp_id}" in r.stdout
    assert f"Add-MailboxPermission -Identity 'support@contoso.com' -User '{sp_id}'" in r.stdout
    assert "Add-RecipientPermission" not in r.stdout
    assert cmdlets(tenant, mark) == []


def test_registered_with_the_app_registration_object_id_is_refused_and_explained(cli: Cli, tenant: Sandbox) -> None:
    sp_id, app_object_id = esj_ids(tenant)
    register(tenant, app_object_id)
    mark = len(tenant.calls())
    r, data = onboard(cli, tenant, "support@contoso.com")
    assert r.exit_code == 1
    assert "onboard refused: nothing was changed" in r.stderr
    assert f"registered in Exchange with object id {app_object_id}" in r.stderr
    assert "its App registration's object id, not its Enterprise application's" in r.stderr
    finding = next(f for f in data["findings"] if f["code"] == "trustee-app-wrong-object-id")
    assert f"Remove-ServicePrincipal -Identity {app_object_id}" in finding["hint"]
    assert f"New-ServicePrincipal -AppId {tenant.esj_app_id} -ObjectId {sp_id}" in finding["hint"]
    assert "Nothing was changed automatically" in finding["hint"]
    assert cmdlets(tenant, mark) == []  # not silently "fixed"
    assert tenant.state()["exchange_service_principals"][0]["object_id"] == app_object_id


def test_app_without_enterprise_application_is_refused(cli: Cli, tenant: Sandbox) -> None:
    r = cli("onboard", "support@contoso.com", "--trustee-app", UNKNOWN_APP, "--inbound", "imap", "--outbound", "smtp")
    assert r.exit_code == 1
    assert f"ESJ app {UNKNOWN_APP} has no enterprise application (service principal) in this tenant" in r.stderr
    assert "grant admin consent for the ESJ app in this tenant" in r.stdout
    assert not [c for c in tenant.calls() if c.get("write")]


def test_without_application_read_all_the_app_cannot_be_resolved(cli: Cli, tenant: Sandbox) -> None:
    tenant.mutate("set-app-roles", app=tenant.client_id, resource="graph", roles=["User.Read.All", "MailboxSettings.Read"])
    r, data = onboard(cli, tenant, "support@contoso.com")
    assert r.exit_code == 1
    finding = next(f for f in data["findings"] if f["code"] == "trustee-app-lookup-failed")
    assert "Application.Read.All" in finding["message"] + finding["hint"]


def test_recipient_administrator_cannot_register_and_nothing_is_granted(cli: Cli, tenant: Sandbox) -> None:
    tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Exchange Recipient Administrator"])
    mark = len(tenant.calls())
    r, data = onboard(cli, tenant, "support@contoso.com")
    assert r.exit_code == 1
    step = data["service_principal"]
    assert step["outcome"] == "failed" and "New-ServicePrincipal" in step["error"]
    assert "Exchange Administrator" in step["hint"] and "Recipient Administrator is enough for mailbox grants" in (
        step["hint"])
    (d,) = data["delegations"]
    assert d["outcome"] == "failed" and "could not be registered" in d["error"]
    assert [c["cmdlet"] for c in cmdlets(tenant, mark)] == ["New-ServicePrincipal"]


def test_lost_answer_to_the_registration_is_read_back_not_repeated(cli: Cli, tenant: Sandbox) -> None:
    tenant.queue_fault("504-after-apply", service="exchange", cmdlet="New-ServicePrincipal")
    mark = len(tenant.calls())
    r, data = onboard(cli, tenant, "support@contoso.com")
    assert r.exit_code == 0, r.stderr
    assert data["service_principal"]["outcome"] == "applied"
    assert [c["cmdlet"] for c in cmdlets(tenant, mark)].count("New-ServicePrincipal") == 1
    events = [(rec["event"], rec.get("outcome")) for rec in read_journal(cli.journal)  # type: ignore[attr-defined]
              if rec.get("op") == "new-service-principal"]
    assert events == [("intent", None), ("ambiguous", None), ("reconciled", "applied")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trustee", "esj-svc@contoso.com", "--trustee-app", "2db3fd6d-47fc-4750-ace0-99b31d4ba2de"],
         "--trustee and --trustee-app exclude each other"),
        ([], "give --trustee ACCOUNT or --trustee-app CLIENT_ID"),
        (["--trustee-app", "esj-app"], "is not a GUID"),
        (["--trustee-app", "2db3fd6d-47fc-4750-ace0-99b31d4ba2de", "--esj-client-id",
          "11111111-2222-4333-8444-555555555555"], "is not the ESJ app given to --trustee-app"),
    ],
)
def test_usage_errors(cli: Cli, tenant: Sandbox, args: list[str], needle: str) -> None:
    mark = len(tenant.calls())
    r = cli("onboard", "support@contoso.com", *args, "--inbound", "imap", "--outbound", "smtp")
    assert r.exit_code == 2 and needle in r.stderr
    assert tenant.calls()[mark:] == []


# --------------------------------------------------------------------------- offboard


def test_offboard_removes_full_access_and_leaves_the_registration(cli: Cli, tenant: Sandbox) -> None:
    sp_id, _ = esj_ids(tenant)
    assert onboard(cli, tenant, "support@contoso.com")[0].exit_code == 0
    mark = len(tenant.calls())
    r = cli("offboard", "support@contoso.com", "--trustee-app", tenant.esj_app_id, "--format", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert [(d["right"], d["outcome"], d["verified"]) for d in data["delegations"]] == [
        ("FullAccess", "removed", "absent")
    ]
    assert [c["cmdlet"] for c in cmdlets(tenant, mark)] == ["Remove-MailboxPermission"]
    assert any("stays registered" in s and f"Remove-ServicePrincipal -Identity {sp_id}" in s
               for s in data["next_steps"])
    assert len(tenant.state()["exchange_service_principals"]) == 1
    mark = len(tenant.calls())
    r = cli("offboard", "support@contoso.com", "--trustee-app", tenant.esj_app_id, "--format", "json")
    assert r.exit_code == 0
    assert [d["outcome"] for d in json.loads(r.stdout)["delegations"]] == ["already-absent"]
    assert cmdlets(tenant, mark) == []


def test_offboard_of_an_app_never_registered_is_a_no_op(cli: Cli, tenant: Sandbox) -> None:
    r = cli("offboard", "support@contoso.com", "--trustee-app", tenant.esj_app_id, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert [d["outcome"] for d in json.loads(r.stdout)["delegations"]] == ["already-absent"]
    assert not [c for c in tenant.calls() if c.get("write")]


# --------------------------------------------------------------------------- manifests: bulk and audit


def manifest(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("mailbox,trustee,inbound,outbound\n" + "\n".join(lines) + "\n")
    return path


def test_manifest_accepts_an_app_client_id_as_trustee(tmp_path: Path) -> None:
    path = manifest(tmp_path, "a@contoso.com,2DB3FD6D-47FC-4750-ACE0-99B31D4BA2DE,imap,smtp",
                    "b@contoso.com,esj@contoso.com,imap,smtp")
    assert validate(path).rows == 2
    app_row, user_row = rows(path)
    assert app_row.trustee == AppTrustee("2db3fd6d-47fc-4750-ace0-99b31d4ba2de")
    assert user_row.trustee == UserTrustee("esj@contoso.com")


def test_bulk_with_an_app_trustee_registers_once(cli: Cli, tenant: Sandbox, tmp_path: Path) -> None:
    path = manifest(tmp_path, *(f"queue000{i}@contoso.com,{tenant.esj_app_id},imap,smtp" for i in range(1, 5)))
    mark = len(tenant.calls())
    r = cli("bulk", str(path), "--out-dir", str(tmp_path / "out"), "--concurrency", "4")
    assert r.exit_code == 0, r.stdout + r.stderr
    writes = [c["cmdlet"] for c in cmdlets(tenant, mark)]
    assert writes.count("New-ServicePrincipal") == 1 and writes.count("Add-MailboxPermission") == 4
    assert "Add-RecipientPermission" not in writes
    cfg = next((tmp_path / "out").glob("esj-*.cfg")).read_text()
    assert f"client-id={tenant.esj_app_id}" in cfg.replace(" ", "")


def test_audit_with_an_app_trustee(cli: Cli, tenant: Sandbox, tmp_path: Path) -> None:
    path = manifest(tmp_path, f"support@contoso.com,{tenant.esj_app_id},imap,smtp")
    # Before onboarding: not registered in Exchange, no Full Access: drift.
    r = cli("audit", str(path), "--format", "json")
    assert r.exit_code == 3, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    assert (row["full_access"], row["send_as"], row["status"]) == ("absent", "-", "drift")
    assert "ESJ app not registered in Exchange" in row["drift"] and "FullAccess missing" in row["drift"]

    assert onboard(cli, tenant, "support@contoso.com")[0].exit_code == 0
    # Onboarded: the row is in sync, but the seeded ESJ app also holds Graph Mail.* tenant-wide.
    r = cli("audit", str(path), "--format", "json")
    assert r.exit_code == 3
    data = json.loads(r.stdout)
    (row,) = data["rows"]
    assert (row["full_access"], row["send_as"], row["status"]) == ("present", "-", "in-sync")
    (found,) = data["apps"]
    assert found["app_id"] == tenant.esj_app_id and found["status"] == "wider"
    assert any("Mail.ReadWrite, Mail.Send granted tenant-wide" in w for w in found["wider"])
    assert data["summary"]["apps_wider"] == 1
    r = cli("audit", str(path))
    assert "access wider than their mailboxes" in r.stderr and "ESJ apps" in r.stdout

    tenant.mutate("set-app-roles", app=tenant.esj_app_id, resource="graph", roles=[])
    r = cli("audit", str(path), "--format", "markdown")
    assert r.exit_code == 0, r.stdout
    assert "## ESJ apps" in r.stdout and "| ok |" in r.stdout

    # Drift on the app's grant is seen like a user's.
    tenant.mutate("remove-grant", mailbox="support@contoso.com", trustee=tenant.esj_app_id)
    r = cli("audit", str(path), "--format", "json")
    assert r.exit_code == 3 and json.loads(r.stdout)["rows"][0]["drift"] == ["FullAccess missing"]


def test_audit_of_an_app_registered_with_the_wrong_object_id(cli: Cli, tenant: Sandbox, tmp_path: Path) -> None:
    register(tenant, esj_ids(tenant)[1])
    path = manifest(tmp_path, f"support@contoso.com,{tenant.esj_app_id},imap,smtp")
    r = cli("audit", str(path), "--format", "json")
    assert r.exit_code == 3
    (row,) = json.loads(r.stdout)["rows"]
    assert "ESJ app registered in Exchange with the wrong object id" in row["drift"]


def test_bulk_resume_reconciles_an_interrupted_registration(cli: Cli, tenant: Sandbox, tmp_path: Path) -> None:
    """A crash between sending New-ServicePrincipal and recording its answer: the next run reads the
    tenant, records what became of it, and does not register again."""
    from esj_provision.provision.journal import Entry, Journal

    sp_id, _ = esj_ids(tenant)
    register(tenant, sp_id)  # what the crashed run's write did
    with Journal(cli.journal, run_id="crashed") as journal:  # type: ignore[attr-defined]
        journal.intent(Entry("new-service-principal", "(organization)", tenant.esj_app_id), attempt=1)
    path = manifest(tmp_path, f"support@contoso.com,{tenant.esj_app_id},imap,smtp")
    mark = len(tenant.calls())
    r = cli("bulk", str(path), "--out-dir", str(tmp_path / "out"), "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert [c["cmdlet"] for c in cmdlets(tenant, mark)] == ["Add-MailboxPermission"]
    (rec,) = [x for x in read_journal(cli.journal)  # type: ignore[attr-defined]
              if x.get("event") == "reconciled" and x.get("op") == "new-service-principal"]
    assert rec["outcome"] == "applied" and rec["run_of_intent"] == "crashed"
    assert json.loads(r.stdout.strip().splitlines()[-1])["summary"]["reconciled_in_flight_writes"] == 1


# Written by the code before the typed trustee (commit ca558fb), a run that crashed after sending
# these four writes: one account row (queue0001) and one app row (queue0002). The keys name the
# trustee as Exchange knew it (the account's UPN, the app's service principal), never its kind.
OLD_CRASHED_JOURNAL = """\
{"ts": "2026-12-01T03:18:24Z", "run": "a108398bcd1c", "event": "run-start", "command": "bulk", "manifest": "m.csv", "rows": 2}
{"ts": "2026-12-01T03:18:24Z", "run": "a108398bcd1c", "event": "intent", "op": "new-service-principal", "mailbox": "(organization)", "trustee": "2db3fd6d-47fc-4750-ace0-99b31d4ba2de", "key": "new-service-principal|(organization)|2db3fd6d-47fc-4750-ace0-99b31d4ba2de", "attempt": 1}
{"ts": "2026-12-01T03:18:24Z", "run": "a108398bcd1c", "event": "intent", "op": "add-full-access", "mailbox": "queue0001@contoso.com", "trustee": "esj-svc@contoso.onmicrosoft.com", "key": "add-full-access|queue0001@contoso.com|esj-svc@contoso.onmicrosoft.com", "attempt": 1}
{"ts": "2026-12-01T03:18:24Z", "run": "a108398bcd1c", "event": "intent", "op": "add-send-as", "mailbox": "queue0001@contoso.com", "trustee": "esj-svc@contoso.onmicrosoft.com", "key": "add-send-as|queue0001@contoso.com|esj-svc@contoso.onmicrosoft.com", "attempt": 1}
{"ts": "2026-12-01T03:18:24Z", "run": "a108398bcd1c", "event": "intent", "op": "add-full-access", "mailbox": "queue0002@contoso.com", "trustee": "4dff7df5-6bb2-41a3-8d9f-4d274f8dd038", "key": "add-full-access|queue0002@contoso.com|4dff7df5-6bb2-41a3-8d9f-4d274f8dd038", "attempt": 1}
"""


def test_bulk_resumes_a_journal_the_boolean_trustee_code_wrote(cli: Cli, tenant: Sandbox, tmp_path: Path) -> None:
    """The typed trustee changes no journal key: a run the old code left in flight is settled from
    the tenant (what was applied is not sent again), for account and app rows alike."""
    from esj_provision.provision.journal import open_intents

    sp_id, _ = esj_ids(tenant)
    assert (tenant.esj_app_id, sp_id) == ("2db3fd6d-47fc-4750-ace0-99b31d4ba2de", "4dff7df5-6bb2-41a3-8d9f-4d274f8dd038")
    register(tenant, sp_id)  # what the crashed run did: registered the app and granted the account Full Access
    tenant.mutate("add-grant", mailbox="queue0001@contoso.com", trustee=tenant.esj_account, right="FullAccess")
    cli.journal.write_text(OLD_CRASHED_JOURNAL, encoding="utf-8")  # type: ignore[attr-defined]
    path = manifest(tmp_path, f"queue0001@contoso.com,{tenant.esj_account},imap,smtp",
                    f"queue0002@contoso.com,{tenant.esj_app_id},imap,smtp")
    mark = len(tenant.calls())
    r = cli("bulk", str(path), "--out-dir", str(tmp_path / "out"), "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    settled = {x["key"]: x["outcome"] for x in read_journal(cli.journal)  # type: ignore[attr-defined]
               if x.get("event") == "reconciled" and x.get("run_of_intent") == "a108398bcd1c"}
    assert settled == {
        f"new-service-principal|(organization)|{tenant.esj_app_id}": "applied",
        "add-full-access|queue0001@contoso.com|esj-svc@contoso.onmicrosoft.com": "applied",
        "add-send-as|queue0001@contoso.com|esj-svc@contoso.onmicrosoft.com": "not-applied",
        f"add-full-access|queue0002@contoso.com|{sp_id}": "not-applied",
    }
    assert open_intents(cli.journal) == {}  # type: ignore[attr-defined]
    # Only what the crash left undone is sent: Send As for the account, Full Access for the app.
    assert sorted((c["cmdlet"], str(c["parameters"]["Identity"]).lower()) for c in cmdlets(tenant, mark)) == [
        ("Add-MailboxPermission", "queue0002@contoso.com"),
        ("Add-RecipientPermission", "queue0001@contoso.com"),
    ]
    assert json.loads(r.stdout.strip().splitlines()[-1])["summary"]["reconciled_in_flight_writes"] == 4
