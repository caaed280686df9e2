"""EWS's end and least privilege, end to end against the sandbox (issue 13).

doctor, onboard preflight and audit name each EWS state; emit, onboard and bulk warn with the
dates and refuse EWS from 1 April 2027; ``ews allow`` extends EwsAllowedAppIDs by read-modify-write
and is idempotent; ``migrate`` moves EWS rows to GRAPH (dry run writes nothing, a re-run changes
nothing); doctor's least-privilege advice for each role setup.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import logger_restored
from typer.testing import Result

from esj_provision.sandbox import Sandbox

Cli = Callable[..., Result]
TRUSTEE = "esj-svc@contoso.com"
OTHER_APP = "9e5f94bc-e8a4-4e73-b8be-63364c29d753"
READS = ("Get-", "Test-")
pytestmark = pytest.mark.tenant(private=True, mailboxes=4)  # a fresh tenant per test: they write


def writes(tenant: Sandbox, since: int = 0) -> list[str]:
    return [c["cmdlet"] for c in tenant.calls()[since:] if c.get("cmdlet") and not c["cmdlet"].startswith(READS)]


def doctor(cli: Cli, *args: str) -> tuple[Result, dict[str, dict[str, Any]]]:
    r = cli("doctor", *args, "--format", "json")
    return r, {c["id"]: c for c in json.loads(r.stdout)["checks"]}


def allow_ews(tenant: Sandbox, *apps: str) -> None:
    tenant.mutate("set-ews-enabled", enabled=True)
    tenant.mutate("set-ews-allowed-apps", apps=list(apps))


# -- doctor: the EWS states -----------------------------------------------------------------------


def test_doctor_names_each_ews_state(tenant: Sandbox, cli: Cli) -> None:
    args = ("--inbound", "ews", "--outbound", "graph", "--esj-app", tenant.esj_app_id)
    r, checks = doctor(cli, *args)  # the sample tenant: EwsEnabled $false
    assert r.exit_code == 1
    assert checks["esj-ews-policy"]["status"] == "missing"
    assert "blocked-by-organisation" in checks["esj-ews-policy"]["what"]
    assert "ews allow" in checks["esj-ews-policy"]["fix"]
    sunset = checks["ews-sunset"]
    assert sunset["status"] == "warning" and "1 April 2027" in sunset["what"] and "GRAPH" in sunset["what"]

    allow_ews(tenant, OTHER_APP)
    _, checks = doctor(cli, *args)
    assert "not-allow-listed" in checks["esj-ews-policy"]["what"]

    allow_ews(tenant, OTHER_APP, tenant.esj_app_id)
    _, checks = doctor(cli, *args)
    assert checks["esj-ews-policy"]["status"] == "ok" and "allowed" in checks["esj-ews-policy"]["what"]
    assert not writes(tenant)  # read-only


def test_doctor_without_esj_app_says_what_it_can(tenant: Sandbox, cli: Cli) -> None:
    allow_ews(tenant, OTHER_APP)
    _, checks = doctor(cli, "--inbound", "ews")
    ews = checks["esj-ews-policy"]
    assert ews["status"] == "warning" and "give the ESJ app's client id" in ews["what"]
    assert "not confirmed" in ews["what"]  # the allow-list and delegated (service account) tokens


def test_doctor_refuses_ews_after_the_switch_off(tenant: Sandbox, cli: Cli) -> None:
    r = cli("doctor", "--inbound", "ews", "--format", "json", env={"ESJ_PROVISION_TODAY": "2027-04-02"})
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.exit_code == 1 and checks["ews-sunset"]["status"] == "error"


# -- onboard preflight and audit -----------------------------------------------------------------


def onboard(cli: Cli, mailbox: str, *extra: str) -> tuple[Result, dict[str, Any]]:
    r = cli("onboard", mailbox, "--trustee", TRUSTEE, "--inbound", "ews", "--outbound", "ews", "--format", "json",
            *extra)
    return r, json.loads(r.stdout) if r.stdout.strip() else {}


def test_onboard_preflight_names_each_state_and_still_grants(tenant: Sandbox, cli: Cli) -> None:
    esj = ("--esj-client-id", tenant.esj_app_id)
    r, data = onboard(cli, "support@contoso.com", "--dry-run", *esj)
    codes = {f["code"]: f for f in data["findings"]}
    assert r.exit_code == 0 and "ews-retiring" in codes and "1 April 2027" in codes["ews-retiring"]["message"]
    assert "ews-blocked-by-organisation" in codes and data["ews"]["state"] == "blocked-by-organisation"

    allow_ews(tenant)
    _, data = onboard(cli, "support@contoso.com", "--dry-run", *esj)
    assert data["ews"]["state"] == "not-allow-listed"

    allow_ews(tenant, tenant.esj_app_id)
    tenant.mutate("set-ews-enabled", mailbox="support@contoso.com", enabled=False)
    _, data = onboard(cli, "support@contoso.com", "--dry-run", *esj)
    assert data["ews"]["state"] == "disabled-on-mailbox"
    assert "Set-CASMailbox -Identity 'support@contoso.com' -EwsEnabled $true" in data["findings"][-1]["hint"]

    r, data = onboard(cli, "billing@contoso.com", *esj)
    assert r.exit_code == 0 and data["ews"]["state"] == "allowed"
    assert {d["outcome"] for d in data["delegations"]} == {"applied"}  # warnings never stop the grants
    assert "EWS (inbound and outbound)" in " ".join(data["esj_options"]["notes"])


def test_onboard_emit_and_bulk_refuse_ews_from_april_2027(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    late = {"ESJ_PROVISION_TODAY": "2027-04-01"}
    mark = len(tenant.calls())
    r = cli("onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "ews", "--outbound", "smtp",
            env=late)
    assert r.exit_code == 2 and "switched EWS off on 1 April 2027" in r.stderr
    r = cli("emit", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "ews", env=late)
    assert r.exit_code == 2 and "EWS (outbound) cannot be chosen" in r.stderr and r.stdout == ""
    (tmp_path / "m.csv").write_text("mailbox,trustee,inbound,outbound\nsupport@contoso.com,esj-svc@contoso.com,"
                                    "imap,smtp\nbilling@contoso.com,esj-svc@contoso.com,graph,ews\n")
    r = cli("bulk", "m.csv", "--out-dir", "out", env=late)
    assert r.exit_code == 2 and "line 3" in r.stderr and not (tmp_path / "out").exists()
    assert len(tenant.calls()) == mark  # refused before any call
    # The same manifest before the switch-off: it runs, and the summary warns once.
    r = cli("bulk", "m.csv", "--out-dir", "out")
    assert r.exit_code == 0 and "EWS in 1 row(s) (lines 3)" in r.stdout


def test_emit_warns_with_both_dates(cli: Cli) -> None:
    r = cli("emit", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "ews", "--outbound", "graph",
            "--format", "json")
    notes = json.loads(r.stdout)["notes"]
    assert r.exit_code == 0 and "1 October 2026" in notes[0] and "1 April 2027" in notes[0]
    assert "migrate" in notes[0]
    r = cli("emit", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "graph",
            "--format", "json")
    assert not any("EWS" in n for n in json.loads(r.stdout)["notes"])


def test_sovereign_tenant_authority_is_unconfirmed(cli: Cli) -> None:
    r = cli("emit", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "graph", "--outbound", "graph",
            "--cloud", "usgov-high", "--format", "json")
    opts = [o for o in json.loads(r.stdout)["options"] if o["name"] == "tenant-authority"]
    assert opts and all(not o["confirmed"] and o["source"] == "cloud-unconfirmed" for o in opts)
    r = cli("emit", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "graph", "--outbound", "graph",
            "--format", "json")
    assert all(o["confirmed"] for o in json.loads(r.stdout)["options"] if o["name"] == "tenant-authority")


def test_audit_reports_ews_rows_that_cannot_work_as_drift(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "mailbox,trustee,inbound,outbound\n"
        f"support@contoso.com,{TRUSTEE},ews,graph\n"
        f"billing@contoso.com,{TRUSTEE},graph,ews\n"
        f"queue0001@contoso.com,{TRUSTEE},graph,graph\n"
    )
    assert cli("bulk", "m.csv", "--out-dir", "out").exit_code == 0
    mark = len(tenant.calls())

    def audit() -> tuple[int, dict[str, dict[str, Any]]]:
        r = cli("audit", "m.csv", "--format", "json", "--esj-app", tenant.esj_app_id)
        return r.exit_code, {row["mailbox"]: row for row in json.loads(r.stdout)["rows"]}

    code, rows = audit()
    assert code == 3
    assert "EWS blocked by the organisation (EwsEnabled)" in rows["support@contoso.com"]["drift"]
    assert rows["queue0001@contoso.com"]["status"] == "in-sync"
    allow_ews(tenant)
    _, rows = audit()
    assert rows["billing@contoso.com"]["drift"] == ["ESJ app not in EwsAllowedAppIDs"]
    allow_ews(tenant, tenant.esj_app_id)
    tenant.mutate("set-ews-enabled", mailbox="support@contoso.com", enabled=False)
    code, rows = audit()
    assert rows["support@contoso.com"]["drift"] == ["EWS disabled on the mailbox (CAS EwsEnabled)"]
    assert rows["billing@contoso.com"]["status"] == "in-sync"
    assert any("1 April 2027" in w for w in rows["billing@contoso.com"]["warnings"])
    tenant.mutate("set-ews-enabled", mailbox="support@contoso.com", enabled=True)
    _, rows = audit()
    assert {row["status"] for row in rows.values()} == {"in-sync"}
    assert not writes(tenant, mark)


# -- ews allow ------------------------------------------------------------------------------------


def test_ews_allow_dry_run_and_powershell_write_nothing(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    tenant.mutate("set-ews-allowed-apps", apps=[OTHER_APP])
    r = cli("ews", "allow", "--esj-app", tenant.esj_app_id, "--dry-run", "--as-powershell")
    assert r.exit_code == 0
    assert f"Set-OrganizationConfig -EwsAllowedAppIDs '{OTHER_APP},{tenant.esj_app_id}'" in r.stdout
    assert "EwsEnabled is $false" in r.stderr and "--enable-ews" in r.stderr
    assert not writes(tenant) and not (tmp_path / "journal.jsonl").exists()
    r = cli("ews", "allow", "--esj-app", tenant.esj_app_id, "--as-powershell")
    assert r.exit_code == 2


def test_ews_allow_read_modify_write_keeps_the_list_and_is_idempotent(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    tenant.mutate("set-ews-allowed-apps", apps=[OTHER_APP])
    r = cli("ews", "allow", "--esj-app", tenant.esj_app_id.upper(), "--enable-ews", "--format", "json")
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and data["step"]["outcome"] == "applied" and data["verified"] is True
    assert "24 hours" in " ".join(data["notes"])
    org = tenant.state()["organization_config"]
    assert org == {"EwsEnabled": True, "EwsAllowedAppIDs": [OTHER_APP, tenant.esj_app_id]}
    assert writes(tenant) == ["Set-OrganizationConfig"]
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [e["event"] for e in journal] == ["run-start", "intent", "result", "run-end"]
    assert journal[1]["op"] == "set-ews-allowed-app-ids"

    mark = len(tenant.calls())
    r = cli("ews", "allow", "--esj-app", tenant.esj_app_id, "--enable-ews")
    assert r.exit_code == 0 and "already in place, nothing to do" in r.stdout
    assert not writes(tenant, mark)


def test_ews_allow_rereads_the_list_just_before_writing(tenant: Sandbox, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another admin adds an app between the plan and the write: it must survive."""
    from esj_provision.provision import ews_policy

    real = ews_policy.plan_allow

    async def plan_then_someone_else_writes(session: Any, app_id: str, *, enable: bool) -> Any:
        plan = await real(session, app_id, enable=enable)
        tenant.mutate("set-ews-allowed-apps", apps=[OTHER_APP])
        return plan

    monkeypatch.setattr(ews_policy, "plan_allow", plan_then_someone_else_writes)
    assert cli("ews", "allow", "--esj-app", tenant.esj_app_id).exit_code == 0
    assert tenant.state()["organization_config"]["EwsAllowedAppIDs"] == [OTHER_APP, tenant.esj_app_id]


def test_ews_allow_bad_input_and_missing_role(tenant: Sandbox, cli: Cli) -> None:
    assert cli("ews", "allow", "--esj-app", "not-a-guid").exit_code == 2
    assert cli("ews", "allow", "--esj-app", tenant.esj_app_id, "--format", "yaml").exit_code == 2
    r = cli("ews", "allow", "--esj-app", tenant.esj_app_id, env={"ESJ_PROVISION_TODAY": "2027-05-01"})
    assert r.exit_code == 2 and "switched EWS off" in r.stderr
    tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Exchange Recipient Administrator"])
    r = cli("ews", "allow", "--esj-app", tenant.esj_app_id)
    assert r.exit_code == 1 and "Exchange Administrator" in r.stdout
    assert tenant.state()["organization_config"]["EwsAllowedAppIDs"] == []


# -- least privilege ------------------------------------------------------------------------------


def test_exchange_administrator_gets_the_least_privilege_advice(cli: Cli) -> None:
    r, checks = doctor(cli)
    assert r.exit_code == 0
    lp = checks["least-privilege"]
    assert lp["status"] == "ok" and "Exchange Recipient Administrator is enough" in lp["fix"]
    exported = checks["exported-cmdlets"]
    assert exported["status"] == "ok" and "undocumented" in exported["what"]


def test_recipient_administrator_lists_what_needs_more(tenant: Sandbox, cli: Cli) -> None:
    tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Exchange Recipient Administrator"])
    r, checks = doctor(cli)
    assert r.exit_code == 0
    lp = checks["least-privilege"]
    assert lp["status"] == "ok" and lp["fix"] is None
    assert "not onboard --trustee-app" in lp["what"] and "Exchange Administrator (Role Management)" in lp["what"]
    exported = checks["exported-cmdlets"]
    assert exported["status"] == "warning"
    assert "New-ServicePrincipal" in exported["what"] and "Set-OrganizationConfig" in exported["what"]
    assert "onboard/offboard/bulk with --trustee ACCOUNT, audit: all exported" in exported["what"]


def test_global_administrator_is_a_warning(tenant: Sandbox, cli: Cli) -> None:
    tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Global Administrator"])
    r, checks = doctor(cli)
    assert r.exit_code == 0 and checks["least-privilege"]["status"] == "warning"
    assert "far more" in checks["least-privilege"]["fix"]


def test_a_role_that_cannot_grant_is_missing_in_the_export_list(tenant: Sandbox, cli: Cli) -> None:
    tenant.mutate("set-directory-roles", app=tenant.client_id, roles=["Global Reader"])
    r, checks = doctor(cli)
    assert r.exit_code == 1 and checks["exported-cmdlets"]["status"] == "missing"
    assert "Add-MailboxPermission" in checks["exported-cmdlets"]["what"]
    assert "least-privilege" not in checks  # no Exchange role this tool can use


def test_manage_as_app_v2_only_is_recognised(tenant: Sandbox, cli: Cli) -> None:
    tenant.mutate("set-app-roles", app=tenant.client_id, resource="exchange", roles=["Exchange.ManageAsAppV2"])
    r, checks = doctor(cli)
    assert r.exit_code == 1
    for check in ("exchange:Exchange.ManageAsApp", "exchange-admin"):
        assert checks[check]["status"] == "missing"
        assert "only Exchange.ManageAsAppV2 is consented" in checks[check]["what"]
        assert "add Office 365 Exchange Online > Exchange.ManageAsApp" in checks[check]["fix"]
    assert "exported-cmdlets" not in checks  # Exchange refuses the app: nothing to list


# -- migrate --------------------------------------------------------------------------------------


def write_manifest(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    path.write_text("mailbox,trustee,inbound,outbound\n" + "".join(",".join(r) + "\n" for r in rows))


def test_migrate_dry_run_writes_nothing_then_moves_and_a_rerun_changes_nothing(
    tenant: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    write_manifest(tmp_path / "m.csv", [
        ("support@contoso.com", TRUSTEE, "ews", "ews"),
        ("billing@contoso.com", TRUSTEE, "imap", "smtp"),
        ("queue0001@contoso.com", tenant.esj_app_id, "ews", "smtp"),
        ("queue0002@contoso.com", TRUSTEE, "graph", "ews"),
    ])
    assert cli("bulk", "m.csv", "--out-dir", "before").exit_code == 0
    mark = len(tenant.calls())
    r = cli("migrate", "m.csv", "--to", "graph", "--esj-app", tenant.esj_app_id, "--dry-run", "--out-dir", "out",
            "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["summary"]["to_move"] == 3 and data["summary"]["unchanged"] == 1
    assert not writes(tenant, mark) and not (tmp_path / "out").exists()
    row = next(x for x in data["rows"] if x["mailbox"] == "support@contoso.com")
    assert row["to"] == {"inbound": "graph", "outbound": "graph"}
    assert any(s["op"] == "new-management-scope" for s in row["scope"]["steps"])
    assert any("EwsAllowedAppIDs" in c for c in row["can_go"])

    r = cli("migrate", "m.csv", "--to", "graph", "--esj-app", tenant.esj_app_id, "--out-dir", "out")
    assert r.exit_code == 0, r.stdout + r.stderr
    done = writes(tenant, mark)
    assert set(done) <= {"New-ManagementScope", "Set-ManagementScope", "New-ManagementRoleAssignment",
                         "New-ServicePrincipal"}
    assert "Remove-MailboxPermission" not in done  # nothing of the old setup is removed
    with (tmp_path / "out" / "manifest-graph.csv").open() as fh:
        moved = {r["mailbox"]: (r["inbound"], r["outbound"]) for r in csv.DictReader(fh)}
    assert moved == {"support@contoso.com": ("graph", "graph"), "billing@contoso.com": ("imap", "smtp"),
                     "queue0001@contoso.com": ("graph", "smtp"), "queue0002@contoso.com": ("graph", "graph")}
    cfg = "".join(p.read_text() for p in (tmp_path / "out").glob("esj-*.cfg"))
    assert "type=GRAPH" in cfg and f"client-id={tenant.esj_app_id}" in cfg
    scope = next(s for s in tenant.state()["management_scopes"] if s["name"] == f"esj-{tenant.esj_app_id}")
    for mailbox in ("support@contoso.com", "queue0001@contoso.com", "queue0002@contoso.com"):
        assert mailbox in json.dumps(scope)
    journal = (tmp_path / "journal.jsonl").read_text()
    assert '"command": "migrate"' in journal and "new-role-assignment" in journal

    mark = len(tenant.calls())
    r = cli("migrate", "m.csv", "--to", "graph", "--esj-app", tenant.esj_app_id, "--out-dir", "out")
    assert r.exit_code == 0 and "0 scope write(s)" in r.stdout and not writes(tenant, mark)
    # The migrated manifest has no EWS row left: nothing to move, nothing written.
    r = cli("migrate", "out/manifest-graph.csv", "--to", "graph", "--esj-app", tenant.esj_app_id, "--out-dir", "out2")
    assert r.exit_code == 0 and "0 row(s) to move" in r.stdout and not writes(tenant, mark)
    r = cli("audit", "out/manifest-graph.csv", "--format", "json")
    assert all("EWS" not in " ".join(row["drift"]) for row in json.loads(r.stdout)["rows"])


def test_migrate_include_moves_imap_and_smtp(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.csv", [("billing@contoso.com", TRUSTEE, "imap", "smtp")])
    r = cli("migrate", "m.csv", "--to", "graph", "--include", "imap,smtp", "--esj-app", tenant.esj_app_id,
            "--dry-run", "--format", "json")
    data = json.loads(r.stdout)
    assert data["rows"][0]["to"] == {"inbound": "graph", "outbound": "graph"}
    assert any("SMTP AUTH" in c for c in data["rows"][0]["can_go"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--to", "imap"), "only graph"),
        (("--to", "graph", "--include", "pop"), "unknown protocol"),
        (("--to", "graph"), "no ESJ app was given"),
        (("--to", "graph", "--esj-app", "nope"), "client id"),
        (("--to", "graph", "--esj-app", "2db3fd6d-47fc-4750-ace0-99b31d4ba2de", "--format", "xml"), "unknown format"),
    ],
)
def test_migrate_bad_input_is_exit_2_and_touches_nothing(
    tenant: Sandbox, cli: Cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    write_manifest(tmp_path / "m.csv", [("support@contoso.com", TRUSTEE, "ews", "ews")])
    mark = len(tenant.calls())
    r = cli("migrate", "m.csv", *args, "--out-dir", "out", env={"ESJ_PROVISION_ESJ_CLIENT_ID": ""})
    assert r.exit_code == 2 and message in r.stderr
    assert len(tenant.calls()) == mark and not (tmp_path / "out").exists()


def test_migrate_invalid_manifest_is_exit_2(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("mailbox,trustee,inbound,outbound\nnot-an-address,x,ews,ews\n")
    r = cli("migrate", "m.csv", "--to", "graph", "--esj-app", "2db3fd6d-47fc-4750-ace0-99b31d4ba2de")
    assert r.exit_code == 2 and "line 2" in r.stderr


@pytest.fixture
def restored_logger() -> Iterator[None]:
    """-v adds a handler on CliRunner's stream, which is closed after the run: take it off again."""
    with logger_restored():
        yield


def test_new_commands_never_show_a_secret_or_token(
    tenant: Sandbox, cli: Cli, tmp_path: Path, restored_logger: None
) -> None:
    write_manifest(tmp_path / "m.csv", [("support@contoso.com", TRUSTEE, "ews", "ews")])
    results = []
    for args in (
        ("ews", "allow", "--esj-app", tenant.esj_app_id, "--enable-ews", "-v"),
        ("migrate", "m.csv", "--to", "graph", "--esj-app", tenant.esj_app_id, "--out-dir", "out", "-v"),
        ("doctor", "--inbound", "ews", "--esj-app", tenant.esj_app_id, "-v"),
    ):
        logging.getLogger("esj_provision").handlers.clear()
        results.append(cli(*args))
    secret = tenant.env["AZURE_CLIENT_SECRET"]
    texts = [r.stdout + r.stderr for r in results]
    texts += [p.read_text() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".jsonl", ".cfg", ".csv"}]
    assert all(r.exit_code in (0, 1) for r in results)
    for text in texts:
        assert secret not in text and "eyJ" not in text


def test_audit_cannot_read_the_ews_policy_is_unknown_exit_1(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.csv", [("support@contoso.com", TRUSTEE, "ews", "graph")])
    assert cli("bulk", "m.csv", "--out-dir", "out").exit_code == 0
    tenant.queue_fault("503", service="exchange", cmdlet="Get-OrganizationConfig", count=20, retry_after=0)
    r = cli("audit", "m.csv", "--format", "json")
    row = json.loads(r.stdout)["rows"][0]
    assert r.exit_code == 1 and row["status"] == "unknown"
    assert any("cannot read the organisation's EWS policy" in e for e in row["errors"])
