"""probe end to end: the real CLI against the sandbox's Entra ID, IMAP, SMTP, EWS and Graph.

Every inbound × outbound pair, in each situation the issue names: ok, no grant, a grant Exchange has
not applied yet (then --wait), SMTP AUTH off, EWS blocked, a mailbox outside the RBAC scope, a
wrong secret or password. Each test takes its own mailbox of one shared sandbox where it can; what
the sandbox says is asserted from its side too (its call log and sent mail), not only from ours.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.probe import run as probe_run
from esj_provision.sandbox import Sandbox

PAIRS = [(i, o) for i in ("imap", "ews", "graph") for o in ("smtp", "ews", "graph")]
ACCOUNT = "esj-svc@contoso.com"
REQUIRED = {"section", "protocol", "direction", "status", "reason", "fix"}
_numbers = itertools.count(1)
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


def next_mailbox() -> str:
    return f"queue{next(_numbers):04d}@contoso.com"


def open_ews(sb: Sandbox) -> None:
    """The organisation allows EWS for the ESJ app (the 2026 default blocks it), and the service
    account may use SMTP AUTH (the tenant's switch is off), effective at once."""
    sb.mutate("set-ews-enabled", enabled=True)
    sb.mutate("set-ews-allowed-apps", apps=[sb.esj_app_id])
    sb.mutate("set-smtp-auth", mailbox=ACCOUNT, disabled=False)
    sb.mutate("propagate")


@pytest.fixture(scope="module")
def tenant() -> Iterator[Sandbox]:
    with Sandbox(mailboxes=500) as sb:
        open_ews(sb)
        yield sb


@pytest.fixture(scope="module")
def slow_tenant() -> Iterator[Sandbox]:
    """Grants reach the mail protocols only an hour after they are made, as in Exchange."""
    with Sandbox(mailboxes=500, propagation_s=3600) as sb:
        open_ews(sb)
        yield sb


Cli = Callable[..., Result]


@pytest.fixture
def cli(cli: Any) -> Cli:
    """The shared ``cli`` fixture (conftest), told which sandbox and given ESJ's own credentials."""

    def run(sb: Sandbox, *args: str, env: dict[str, str | None] | None = None) -> Result:
        return cli(*args, sb=sb, env=env, esj=True)

    return run


def onboard(cli: Cli, sb: Sandbox, tmp: Path, mailbox: str, inbound: str, outbound: str, *extra: str) -> Path:
    out = tmp / f"{mailbox.split('@')[0]}-{inbound}-{outbound}.cfg"
    r = cli(sb, "onboard", mailbox, "--trustee", ACCOUNT, "--inbound", inbound, "--outbound", outbound,
            "--out", str(out), *extra)
    assert r.exit_code == 0, r.stdout + r.stderr
    return out


def emit(cli: Cli, sb: Sandbox, tmp: Path, mailbox: str, inbound: str, outbound: str) -> Path:
    """Options for a mailbox nobody granted anything on."""
    out = tmp / f"{mailbox.split('@')[0]}-{inbound}-{outbound}.cfg"
    r = cli(sb, "emit", mailbox, "--trustee", ACCOUNT, "--inbound", inbound, "--outbound", outbound, "--out", str(out))
    assert r.exit_code == 0, r.stderr
    return out


def probe(cli: Cli, sb: Sandbox, path: Path, *extra: str, env: dict[str, str | None] | None = None
          ) -> tuple[Result, dict[str, Any]]:
    r = cli(sb, "probe", str(path), "--format", "json", *extra, env=env)
    doc = json.loads(r.stdout) if r.stdout.strip() else {}
    for c in doc.get("checks", []):
        assert set(c) >= REQUIRED, c
        assert c["status"] in ("ok", "pending", "failed", "skipped")
    for secret in (sb.esj_password, sb.esj_env["ESJ_PROVISION_ESJ_CLIENT_SECRET"]):
        assert secret not in r.stdout + r.stderr
    assert not JWT.search(r.stdout + r.stderr)  # no access token either
    return r, doc


def by(doc: dict[str, Any], direction: str, check: str | None = None) -> list[dict[str, Any]]:
    return [c for c in doc["checks"] if c["direction"] == direction and (check is None or c["check"] == check)]


def statuses(doc: dict[str, Any]) -> set[str]:
    return {c["status"] for c in doc["checks"]}


# -- ok --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inbound", "outbound"), PAIRS)
def test_onboarded_mailbox_probes_ok_over_every_pair(
    tenant: Sandbox, cli: Cli, tmp_path: Path, inbound: str, outbound: str
) -> None:
    mailbox = next_mailbox()
    path = onboard(cli, tenant, tmp_path, mailbox, inbound, outbound)
    mark = len(tenant.calls())
    r, doc = probe(cli, tenant, path)
    assert r.exit_code == 0, doc
    assert statuses(doc) <= {"ok", "skipped"}
    (inb,) = by(doc, "inbound")
    assert inb["status"] == "ok" and inb["protocol"] == inbound and inb["mailbox"] == mailbox
    # The outbound side proves what it can without a message, and says Send As is not proven.
    send = by(doc, "outbound", "send")
    assert send and send[0]["status"] == "skipped" and "not proven" in send[0]["reason"]
    assert "--send-test-to" in send[0]["fix"]
    # The sandbox saw the protocol sessions, and no message.
    services = {c.get("service") for c in tenant.calls()[mark:]}
    if inbound == "imap":
        assert "imap" in services
    if outbound == "smtp":
        assert "smtp" in services
    assert not [m for m in tenant.sent() if m.get("mailbox") == mailbox or m.get("from") == mailbox]


def test_table_output_names_every_section_and_the_result(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    path = onboard(cli, tenant, tmp_path, next_mailbox(), "imap", "smtp")
    r = cli(tenant, "probe", str(path))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "pop-client" in r.stdout and "smtp-client" in r.stdout
    assert "result: ok" in r.stdout
    assert "not proven" in r.stdout


# -- no grant ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inbound", "outbound"), PAIRS)
def test_no_grant_is_failed_with_the_missing_right_named(
    tenant: Sandbox, cli: Cli, tmp_path: Path, inbound: str, outbound: str
) -> None:
    mailbox = next_mailbox()
    path = emit(cli, tenant, tmp_path, mailbox, inbound, outbound)
    r, doc = probe(cli, tenant, path)
    needs_grant = (inbound, outbound) != ("graph", "graph")  # the ESJ app's unscoped Graph roles suffice
    assert r.exit_code == (1 if needs_grant else 0), doc
    failed = [c for c in doc["checks"] if c["status"] == "failed"]
    if inbound in ("imap", "ews"):
        (inb,) = by(doc, "inbound")
        assert inb["status"] == "failed"
        assert f"no Full Access for {ACCOUNT} on {mailbox}" in inb["reason"]
        assert f"onboard {mailbox} --trustee {ACCOUNT}" in inb["fix"]
    if outbound == "smtp":
        auth = by(doc, "outbound", "authenticate")[0]
        assert auth["status"] == "ok"  # the account signs in as itself: only Send As is missing
        send = by(doc, "outbound", "send")[0]
        assert send["status"] == "failed" and "has no Send As" in send["reason"]
    if outbound == "ews":
        assert any("no Full Access" in c["reason"] for c in by(doc, "outbound"))
    assert bool(failed) == needs_grant


def test_without_the_provisioning_app_a_refusal_says_it_cannot_tell(
    tenant: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    path = emit(cli, tenant, tmp_path, next_mailbox(), "imap", "graph")
    r, doc = probe(cli, tenant, path, env={"AZURE_CLIENT_ID": None, "AZURE_CLIENT_SECRET": None})
    assert r.exit_code == 1
    (inb,) = by(doc, "inbound")
    assert inb["status"] == "failed"
    assert "configure the provisioning app to tell which" in inb["reason"]


# -- pending, then --wait ---------------------------------------------------------------------------


class FakeTime:
    """--wait's clock and sleep: sleeping advances the clock, and Exchange applies the grants."""

    def __init__(self, sb: Sandbox | None) -> None:
        self.sb, self.now, self.slept = sb, 1000.0, []  # type: ignore[var-annotated]

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.sb is not None and len(self.slept) == 2:
            self.sb.mutate("propagate")


PENDING_PAIRS = [p for p in PAIRS if p != ("graph", "graph")]  # nothing there waits for a mailbox grant


@pytest.mark.parametrize(("inbound", "outbound"), PENDING_PAIRS)
def test_fresh_grant_is_pending_exit_5_then_wait_turns_it_ok(
    slow_tenant: Sandbox, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inbound: str, outbound: str
) -> None:
    mailbox = next_mailbox()
    path = onboard(cli, slow_tenant, tmp_path, mailbox, inbound, outbound)
    # graph × smtp: only Send As waits, and only a message shows it.
    extra = ("--send-test-to", "adele@contoso.com") if (inbound, outbound) == ("graph", "smtp") else ()
    r, doc = probe(cli, slow_tenant, path, *extra)
    assert r.exit_code == 5, doc
    pending = [c for c in doc["checks"] if c["status"] == "pending"]
    assert pending and statuses(doc) <= {"ok", "pending", "skipped"}
    assert all("Exchange has not applied it yet" in c["reason"] and "--wait" in c["fix"] for c in pending)

    fake = FakeTime(slow_tenant)
    monkeypatch.setattr(probe_run, "CLOCK", fake.clock)
    monkeypatch.setattr(probe_run, "SLEEP", fake.sleep)
    r, doc = probe(cli, slow_tenant, path, "--wait", "2h", *extra)
    assert r.exit_code == 0, doc
    assert statuses(doc) <= {"ok", "skipped"}
    assert fake.slept == [2.0, 4.0]  # backoff, and no retry once nothing is pending
    assert "waiting" in r.stderr and "Exchange has not applied" in r.stderr


def test_wait_gives_up_when_the_time_runs_out(
    slow_tenant: Sandbox, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = onboard(cli, slow_tenant, tmp_path, next_mailbox(), "imap", "graph")
    fake = FakeTime(None)  # Exchange never applies it
    monkeypatch.setattr(probe_run, "CLOCK", fake.clock)
    monkeypatch.setattr(probe_run, "SLEEP", fake.sleep)
    r, _ = probe(cli, slow_tenant, path, "--wait", "90s")
    assert r.exit_code == 5
    assert sum(fake.slept) == 90.0 and fake.slept[:3] == [2.0, 4.0, 8.0]
    slow_tenant.mutate("propagate")  # leave nothing pending for the next test


# -- SMTP AUTH off ------------------------------------------------------------------------------------


@pytest.mark.parametrize("inbound", ["imap", "ews", "graph"])
@pytest.mark.parametrize(("switch", "words", "fix"), [
    (True, "disabled for the mailbox", f"Set-CASMailbox -Identity {ACCOUNT} -SmtpClientAuthenticationDisabled $false"),
    (None, "disabled for the organisation", "Set-TransportConfig -SmtpClientAuthenticationDisabled $false"),
])
def test_smtp_auth_off_is_named_with_its_switch(
    tenant: Sandbox, cli: Cli, tmp_path: Path, inbound: str, switch: bool | None, words: str, fix: str
) -> None:
    path = onboard(cli, tenant, tmp_path, next_mailbox(), inbound, "smtp")
    tenant.mutate("set-smtp-auth", mailbox=ACCOUNT, disabled=switch)
    try:
        r, doc = probe(cli, tenant, path)
    finally:
        tenant.mutate("set-smtp-auth", mailbox=ACCOUNT, disabled=False)
    assert r.exit_code == 1
    (auth,) = by(doc, "outbound", "authenticate")
    assert auth["status"] == "failed" and words in auth["reason"]
    assert "535 5.7.139" in auth["answer"]
    assert fix in auth["fix"]
    assert by(doc, "inbound")[0]["status"] == "ok"


# -- EWS blocked ---------------------------------------------------------------------------------------

EWS_PAIRS = [p for p in PAIRS if "ews" in p]


@pytest.mark.parametrize(("inbound", "outbound"), EWS_PAIRS)
def test_ews_disabled_for_the_mailbox_is_named_with_the_2027_end(
    tenant: Sandbox, cli: Cli, tmp_path: Path, inbound: str, outbound: str
) -> None:
    mailbox = next_mailbox()
    path = onboard(cli, tenant, tmp_path, mailbox, inbound, outbound)
    tenant.mutate("set-ews-enabled", mailbox=mailbox, enabled=False)
    r, doc = probe(cli, tenant, path)
    assert r.exit_code == 1
    ews = [c for c in doc["checks"] if c["protocol"] == "ews"]
    assert ews and all(c["status"] == "failed" for c in ews)
    for c in ews:
        assert "blocked by the organisation's policy" in c["reason"] and "X-EWS-Policy-Reason" in c["answer"]
        assert "1 April 2027" in c["fix"] and "GRAPH" in c["fix"]
    others = [c for c in doc["checks"] if c["protocol"] != "ews"]
    assert all(c["status"] in ("ok", "skipped") for c in others)


def test_ews_app_not_allow_listed_is_blocked_by_policy(make_sandbox: Any, cli: Cli, tmp_path: Path) -> None:
    sb, _ = make_sandbox()
    sb.mutate("set-ews-enabled", enabled=True)  # but the ESJ app is not in EwsAllowedAppIDs
    path = onboard(cli, sb, tmp_path, "support@contoso.com", "ews", "graph")
    r, doc = probe(cli, sb, path)
    assert r.exit_code == 1
    (inb,) = by(doc, "inbound")
    assert "EWS is blocked by policy" in inb["reason"] and "EwsAllowedAppIDs" in inb["fix"]


# -- mailbox outside the RBAC scope -------------------------------------------------------------------

GRAPH_PAIRS = [p for p in PAIRS if "graph" in p]


@pytest.fixture(scope="module")
def scoped_tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The ESJ app holds no unscoped Graph role: RBAC for Applications confines it to support@."""
    with Sandbox(mailboxes=500) as sb:
        open_ews(sb)
        sb.mutate("set-app-roles", app=sb.esj_app_id, resource="graph", roles=[])
        tmp = tmp_path_factory.mktemp("scoped")
        env = {**sb.env, **sb.esj_env, "ESJ_PROVISION_JOURNAL": str(tmp / "j.jsonl")}
        r = CliRunner().invoke(app, ["onboard", "support@contoso.com", "--trustee", ACCOUNT, "--inbound", "graph",
                                     "--outbound", "graph", "--scope-esj-app", sb.esj_app_id], env=env)
        assert r.exit_code == 0, r.stdout + r.stderr
        sb.mutate("propagate")
        yield sb


@pytest.mark.parametrize(("inbound", "outbound"), GRAPH_PAIRS)
def test_mailbox_outside_the_rbac_scope_is_named(
    scoped_tenant: Sandbox, cli: Cli, tmp_path: Path, inbound: str, outbound: str
) -> None:
    mailbox = next_mailbox()
    path = onboard(cli, scoped_tenant, tmp_path, mailbox, inbound, outbound)
    r, doc = probe(cli, scoped_tenant, path)
    assert r.exit_code == 1, doc
    graph = [c for c in doc["checks"] if c["protocol"] == "graph" and c["status"] != "skipped"]
    assert graph and all(c["status"] == "failed" for c in graph)
    for c in graph:
        assert f"{mailbox} is outside the RBAC scope" in c["reason"]
        assert f"--scope-esj-app {scoped_tenant.esj_app_id}" in c["fix"]


def test_mailbox_inside_the_rbac_scope_is_ok(scoped_tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    path = onboard(cli, scoped_tenant, tmp_path, "support@contoso.com", "graph", "graph")
    r, doc = probe(cli, scoped_tenant, path)
    assert r.exit_code == 0, doc
    assert by(doc, "inbound")[0]["status"] == "ok"


# -- wrong secret or password ---------------------------------------------------------------------------


@pytest.mark.parametrize(("inbound", "outbound"), PAIRS)
def test_wrong_secret_or_password_blames_the_right_credential(
    tenant: Sandbox, cli: Cli, tmp_path: Path, inbound: str, outbound: str
) -> None:
    path = onboard(cli, tenant, tmp_path, next_mailbox(), inbound, outbound)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("wrong~secret-value-123\n")
    r, doc = probe(cli, tenant, path, "--secret-file", str(secret_file),
                   env={"ESJ_PROVISION_ESJ_PASSWORD": "wrong-password-456"})
    assert r.exit_code == 1
    assert "wrong~secret-value-123" not in r.stdout + r.stderr and "wrong-password-456" not in r.stdout + r.stderr
    for c in doc["checks"]:
        assert c["check"] == "sign-in" and c["status"] == "failed"
        if c["protocol"] == "graph":  # the ESJ app's client credentials
            assert "AADSTS7000215" in c["answer"] and "client secret" in c["reason"]
        else:  # the service account's password
            assert "AADSTS50126" in c["answer"] and f"wrong password, or no such user: {ACCOUNT}" in c["reason"]


def test_password_file_is_used_and_env_is_not_needed(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    path = onboard(cli, tenant, tmp_path, next_mailbox(), "imap", "smtp")
    pw = tmp_path / "pw"
    pw.write_text(tenant.esj_password + "\n")
    r, doc = probe(cli, tenant, path, "--password-file", str(pw), env={"ESJ_PROVISION_ESJ_PASSWORD": None})
    assert r.exit_code == 0, doc
    r, doc = probe(cli, tenant, path, env={"ESJ_PROVISION_ESJ_PASSWORD": None})
    assert r.exit_code == 1
    assert "ESJ_PROVISION_ESJ_PASSWORD or --password-file" in doc["checks"][0]["fix"]


# -- --send-test-to ------------------------------------------------------------------------------------


@pytest.mark.parametrize("outbound", ["smtp", "graph"])
def test_send_test_to_sends_one_message_from_the_shared_mailbox(
    tenant: Sandbox, cli: Cli, tmp_path: Path, outbound: str
) -> None:
    mailbox = next_mailbox()
    path = onboard(cli, tenant, tmp_path, mailbox, "graph", outbound)
    r, doc = probe(cli, tenant, path, "--send-test-to", "adele@contoso.com")
    assert r.exit_code == 0, doc
    (send,) = by(doc, "outbound", "send")
    assert send["status"] == "ok"
    sent = [m for m in tenant.sent() if m["from"].lower() == mailbox]
    assert len(sent) == 1 and sent[0]["to"] == ["adele@contoso.com"] and sent[0]["protocol"] == outbound


def test_send_test_without_send_as_fails_and_names_it(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    mailbox = next_mailbox()
    path = onboard(cli, tenant, tmp_path, mailbox, "graph", "smtp", "--no-send-as")
    r, doc = probe(cli, tenant, path, "--send-test-to", "adele@contoso.com")
    assert r.exit_code == 1
    (send,) = by(doc, "outbound", "send")
    assert send["status"] == "failed" and f"no Send As for {ACCOUNT} on {mailbox}" in send["reason"]
    assert "5.2.252" in send["answer"]


# -- onboard --probe and bulk --probe ----------------------------------------------------------------


def test_onboard_probe_reports_pending_then_wait_turns_it_ok(
    slow_tenant: Sandbox, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = next_mailbox()
    r = cli(slow_tenant, "onboard", mailbox, "--trustee", ACCOUNT, "--inbound", "imap", "--outbound", "ews",
            "--format", "json", "--probe")
    assert r.exit_code == 5, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["probe"]["exit_status"] == 5
    assert {c["status"] for c in doc["probe"]["checks"]} == {"pending"}
    mailbox = next_mailbox()
    fake = FakeTime(slow_tenant)
    monkeypatch.setattr(probe_run, "CLOCK", fake.clock)
    monkeypatch.setattr(probe_run, "SLEEP", fake.sleep)
    r = cli(slow_tenant, "onboard", mailbox, "--trustee", ACCOUNT, "--inbound", "imap", "--outbound", "smtp",
            "--probe", "--wait", "1h")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "result: ok" in r.stdout and "waiting" in r.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--wait", "1h"], "--wait goes with --probe"),
    (["--probe", "--dry-run"], "not with --dry-run"),
    (["--probe", "--wait", "later"], "is not a duration"),
])
def test_onboard_probe_bad_inputs_change_nothing(tenant: Sandbox, cli: Cli, args: list[str], words: str) -> None:
    mailbox = next_mailbox()
    mark = len(tenant.calls())
    r = cli(tenant, "onboard", mailbox, "--trustee", ACCOUNT, "--inbound", "imap", "--outbound", "smtp", *args)
    assert r.exit_code == 2 and words in r.stderr
    assert tenant.calls()[mark:] == []


def _manifest(tmp: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = tmp / "manifest.csv"
    path.write_text("mailbox,trustee,inbound,outbound\n" + "".join(f"{m},{ACCOUNT},{i},{o}\n" for m, i, o in rows))
    return path


def test_bulk_probe_writes_each_rows_outcome_with_at_most_4_probes_at_once(
    tenant: Sandbox, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import esj_provision.cli.bulk as cli_bulk

    rows = [(next_mailbox(), i, o) for i, o in PAIRS]
    in_flight, peak = [0], [0]
    original = cli_bulk._row_prober

    async def counting(*a: Any, **kw: Any) -> Any:
        inner = await original(*a, **kw)

        async def probe(targets: Any) -> Any:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            try:
                return await inner(targets)
            finally:
                in_flight[0] -= 1

        return probe

    monkeypatch.setattr(cli_bulk, "_row_prober", counting)
    out = tmp_path / "out"
    r = cli(tenant, "bulk", str(_manifest(tmp_path, rows)), "--out-dir", str(out), "--probe", "--concurrency", "9")
    assert r.exit_code == 0, r.stdout + r.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 9
    for row in results:
        assert row["status"] == "ok" and row["probe"]["exit_status"] == 0
        assert {c["status"] for c in row["probe"]["checks"]} <= {"ok", "skipped"}
        assert {c["mailbox"] for c in row["probe"]["checks"]} == {row["mailbox"]}
    assert 1 < peak[0] <= 4
    assert "9 ok" in r.stdout


def test_bulk_probe_exit_5_when_only_propagation_is_missing(slow_tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    rows = [(next_mailbox(), "imap", "smtp"), (next_mailbox(), "graph", "graph")]
    out = tmp_path / "out"
    r = cli(slow_tenant, "bulk", str(_manifest(tmp_path, rows)), "--out-dir", str(out), "--probe")
    assert r.exit_code == 5, r.stdout + r.stderr
    results = {json.loads(x)["mailbox"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}
    assert results[rows[0][0]]["probe"]["exit_status"] == 5
    assert results[rows[1][0]]["probe"]["exit_status"] == 0
    slow_tenant.mutate("propagate")


# -- ESJ signing in as its app (grant-type client_credentials) ----------------------------------------

APP_PROFILE = """[inbound-grant-type]
imap = client_credentials
ews = client_credentials
[outbound-grant-type]
smtp = client_credentials
ews = client_credentials
"""


@pytest.mark.parametrize(("inbound", "outbound"), [("imap", "smtp"), ("ews", "ews")])
def test_app_only_needs_the_protocol_role_and_full_access_for_its_service_principal(
    make_sandbox: Any, cli: Cli, tmp_path: Path, inbound: str, outbound: str
) -> None:
    sb, _ = make_sandbox()
    open_ews(sb)
    profile = tmp_path / "app.ini"
    profile.write_text(APP_PROFILE)
    mailbox = "support@contoso.com"
    out = tmp_path / "app.cfg"
    onboard_args = ("onboard", mailbox, "--trustee-app", sb.esj_app_id, "--inbound", inbound, "--outbound",
                    outbound, "--profile", str(profile), "--out", str(out))
    r = cli(sb, *onboard_args)
    assert r.exit_code == 0, r.stdout + r.stderr
    # The sample ESJ app holds no Exchange application permission yet.
    r, doc = probe(cli, sb, out)
    assert r.exit_code == 1
    if inbound == "imap":
        (inb,) = by(doc, "inbound")
        assert "no IMAP.AccessAsApp" in inb["reason"] and inb["principal"] == f"the ESJ app {sb.esj_app_id}"
        (auth,) = by(doc, "outbound", "authenticate")
        assert auth["status"] == "failed" and "has no SMTP.SendAsApp" in auth["reason"]
    else:
        assert "neither the application permission full_access_as_app" in by(doc, "inbound")[0]["reason"]
        assert all(c["status"] == "failed" for c in doc["checks"] if c["check"] != "send")
    roles = ["IMAP.AccessAsApp", "SMTP.SendAsApp"] if inbound == "imap" else ["full_access_as_app"]
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="exchange", roles=roles)
    r, doc = probe(cli, sb, out, env={"ESJ_PROVISION_ESJ_PASSWORD": None})  # no account password needed
    assert r.exit_code == 0, doc
    assert by(doc, "inbound")[0]["status"] == "ok"
    # Full Access of the app's service principal is what IMAP/SMTP as the app need: remove it, and say so.
    if inbound == "imap":
        r = cli(sb, "offboard", mailbox, "--trustee-app", sb.esj_app_id)
        assert r.exit_code == 0, r.stdout + r.stderr
        r, doc = probe(cli, sb, out)
        assert r.exit_code == 1
        (inb,) = by(doc, "inbound")
        assert f"no Full Access for the ESJ app {sb.esj_app_id} on {mailbox}" in inb["reason"]
        assert f"--trustee-app {sb.esj_app_id}" in inb["fix"]


def test_a_verbose_probe_logs_no_secret_password_or_token(
    tenant: Sandbox, cli: Cli, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("esj_provision")
    handlers, level = list(logger.handlers), logger.level  # -v adds a handler on the runner's stderr
    try:
        for inbound, outbound in (("imap", "smtp"), ("ews", "graph"), ("graph", "ews")):
            path = onboard(cli, tenant, tmp_path, next_mailbox(), inbound, outbound)
            r, _ = probe(cli, tenant, path, "-v", "--send-test-to", "adele@contoso.com")
            assert r.exit_code == 0, r.stdout + r.stderr
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "esj_provision.microsoft.http" in {rec.name for rec in caplog.records}  # the log searched is real
    for secret in (tenant.esj_password, tenant.esj_env["ESJ_PROVISION_ESJ_CLIENT_SECRET"]):
        assert secret not in logged
    assert not JWT.search(logged) and "Bearer ey" not in logged


# -- what else Entra ID and Graph answer ------------------------------------------------------------


@pytest.mark.parametrize(("mutation", "code", "words"), [
    ({"op": "set-public-client", "enabled": False}, "AADSTS7000218", "does not allow public client flows"),
    ({"op": "set-account-enabled", "user": ACCOUNT, "enabled": False}, "AADSTS50057", f"the account {ACCOUNT} is disabled"),
])
def test_password_sign_in_refusals_name_the_app_or_the_account(
    make_sandbox: Any, cli: Cli, tmp_path: Path, mutation: dict[str, Any], code: str, words: str
) -> None:
    sb, _ = make_sandbox()
    path = onboard(cli, sb, tmp_path, "support@contoso.com", "imap", "graph")
    op = dict(mutation)
    if op["op"] == "set-public-client":
        op["app"] = sb.esj_app_id
    sb.mutate(op.pop("op"), **op)
    r, doc = probe(cli, sb, path)
    assert r.exit_code == 1
    (inb,) = by(doc, "inbound")
    assert inb["check"] == "sign-in" and code in inb["answer"] and words in inb["reason"]
    assert by(doc, "outbound")[0]["status"] == "ok"  # GRAPH signs in as the app: unaffected


def test_a_mailbox_graph_cannot_reach_is_named(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    path = emit(cli, tenant, tmp_path, "legacy@contoso.com", "graph", "graph")
    r, doc = probe(cli, tenant, path)
    assert r.exit_code == 1
    (inb,) = by(doc, "inbound")
    assert "Graph cannot reach the mailbox legacy@contoso.com" in inb["reason"] and "404" in inb["answer"]


def test_app_registered_with_the_wrong_object_id_is_not_pending(make_sandbox: Any, cli: Cli, tmp_path: Path) -> None:
    """Its Full Access shows in Exchange, yet IMAP refuses the app: waiting would never help."""
    from mail_helpers import esj_ids, full_access, register_esj

    sb, client = make_sandbox()
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="exchange", roles=["IMAP.AccessAsApp"])
    wrong = register_esj(client, object_id=esj_ids(sb)[1])  # the App registration's id: the classic trap
    full_access(client, "support@contoso.com", wrong)
    profile = tmp_path / "app.ini"
    profile.write_text(APP_PROFILE)
    out = tmp_path / "app.cfg"
    r = cli(sb, "emit", "support@contoso.com", "--trustee", ACCOUNT, "--inbound", "imap", "--outbound", "graph",
            "--profile", str(profile), "--out", str(out))
    assert r.exit_code == 0, r.stderr
    r, doc = probe(cli, sb, out)
    assert r.exit_code == 1, doc
    (inb,) = by(doc, "inbound")
    assert inb["status"] == "failed" and "App registration's object id" in inb["reason"]
    assert "New-ServicePrincipal" in inb["fix"]


def test_bulk_probe_wait_turns_pending_rows_ok(
    slow_tenant: Sandbox, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTime(slow_tenant)
    monkeypatch.setattr(probe_run, "CLOCK", fake.clock)
    monkeypatch.setattr(probe_run, "SLEEP", fake.sleep)
    rows = [(next_mailbox(), "imap", "smtp"), (next_mailbox(), "ews", "ews")]
    out = tmp_path / "out"
    r = cli(slow_tenant, "bulk", str(_manifest(tmp_path, rows)), "--out-dir", str(out), "--probe", "--wait", "30m")
    assert r.exit_code == 0, r.stdout + r.stderr
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [row["probe"]["exit_status"] for row in results] == [0, 0]
    assert "waiting" in r.stderr and fake.slept


def test_onboard_probe_with_cfg_keeps_stdout_the_options_file(tenant: Sandbox, cli: Cli) -> None:
    from esj_provision.esj.cfg import parse_cfg

    r = cli(tenant, "onboard", next_mailbox(), "--trustee", ACCOUNT, "--inbound", "graph", "--outbound", "graph",
            "--format", "cfg", "--probe")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert set(parse_cfg(r.stdout)) == {"pop-client", "smtp-client"}
    assert "probe: ESJ's connections" in r.stderr and "result: ok" in r.stderr
