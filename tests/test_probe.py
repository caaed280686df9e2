"""probe's parts on their own: Microsoft's documented strings, the options reader, the verdicts,
--wait's backoff with a fake clock, and every bad input of the command (exit 2, no connection)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esj_provision.cli import app
from esj_provision.errors import ExitStatus, UsageError
from esj_provision.probe import signin, wire
from esj_provision.probe.checks import Check, exit_status, probe_until
from esj_provision.probe.run import parse_duration
from esj_provision.probe.targets import Target, targets_from_text
from esj_provision.provision.grants import parse_authorization

GUID = "2db3fd6d-47fc-4750-ace0-99b31d4ba2de"
TENANT = "b27c3a40-61e3-421c-952d-c89c7f44266f"


# -- wire facts ------------------------------------------------------------------------------------


def test_xoauth2_matches_microsofts_documented_example() -> None:
    # probe-protocols.md §1.3, [IMAP-OAUTH]: the documented user, token and base64 result.
    raw = wire.xoauth2("test@contoso.onmicrosoft.com", "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA")
    assert base64.b64encode(raw.encode()).decode() == (
        "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0"
        "NjbFJDM0VvQUEBAQ=="
    )


def test_ews_body_impersonates_only_for_app_tokens() -> None:
    app_body = wire.ews_get_folder_body("support@contoso.com", impersonate=True)
    user_body = wire.ews_get_folder_body("support@contoso.com", impersonate=False)
    assert "<t:PrimarySmtpAddress>support@contoso.com</t:PrimarySmtpAddress>" in app_body
    assert "ExchangeImpersonation" not in user_body
    for body in (app_body, user_body):
        assert '<t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>support@contoso.com' in body
    assert "&lt;x&gt;" in wire.ews_get_folder_body("<x>@contoso.com", impersonate=True)


def test_parse_ews_reads_success_error_inside_200_and_soap_faults() -> None:
    ok = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
          b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><s:Body><m:GetFolderResponse>'
          b'<m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
          b"</m:ResponseCode></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>")
    assert wire.parse_ews(ok) == {"ResponseClass": "Success", "ResponseCode": "NoError"}
    err = ok.replace(b'"Success"', b'"Error"').replace(b"NoError", b"ErrorAccessDenied")
    assert wire.parse_ews(err)["ResponseCode"] == "ErrorAccessDenied"
    fault = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
             b"<faultcode>a:ErrorImpersonateUserDenied</faultcode><faultstring>The account does not have permission"
             b"</faultstring></s:Fault></s:Body></s:Envelope>")
    assert wire.parse_ews(fault)["faultcode"] == "a:ErrorImpersonateUserDenied"
    assert wire.parse_ews(b"") == {} and wire.parse_ews(b"<not xml") == {}


def test_imaplib_bad_wording_is_turned_back_into_the_servers_text() -> None:
    exc = Exception("EXAMINE command error: BAD [b'User is authenticated but not connected.']")
    assert wire._imap_error(exc) == "BAD User is authenticated but not connected."
    assert wire._imap_error(Exception("AUTHENTICATE failed.")) == "AUTHENTICATE failed."


# -- Entra ID errors: by error and error_codes, never by description -------------------------------


@pytest.mark.parametrize(("codes", "who", "words"), [
    ([50126], "account", "wrong password"),
    ([50076], "account", "multifactor"),
    ([50057], "account", "disabled"),
    ([53003], "account", "Conditional Access"),
    ([7000218], "app", "public client flows"),
    ([7000215], "app", "client secret"),
    ([7000222], "app", "expired"),
    ([700016], "app", "does not exist"),
])
def test_sign_in_errors_are_explained_by_their_codes(codes: list[int], who: str, words: str) -> None:
    body = {"error": "invalid_grant", "error_description": "AADSTS00000: anything", "error_codes": codes}
    f = signin.explain(body, 400, who="the ESJ app X", account="svc@contoso.com", scope="s")
    assert f.who == who and words in f.reason and f.fix
    assert f"AADSTS{codes[0]}" in f.reason


def test_description_text_is_never_what_decides() -> None:
    # The description names 50126, the codes say the secret: the codes win (Microsoft: never parse it).
    body = {"error": "invalid_client", "error_description": "AADSTS50126: wrong password", "error_codes": [7000215]}
    f = signin.explain(body, 401, who="the ESJ app X", account=None, scope="s")
    assert "client secret" in f.reason and "password" not in f.reason
    unknown = signin.explain({"error": "invalid_grant", "error_description": "AADSTS50126"}, 400,
                             who="w", account="a@b.c", scope="s")
    assert "wrong password" not in unknown.reason and unknown.who == "account"


# -- the options file -------------------------------------------------------------------------------

CFG = f"""[pop-client]
type=imap
server=outlook.office365.com
port=993
mailbox=support@contoso.com
service-account=esj-svc@contoso.com
client-id={GUID}
directory-id={TENANT}
tenant-authority=https://login.microsoftonline.com
scope=https://outlook.office.com/.default
password=<set: password of esj-svc@contoso.com>
[smtp-client]
server-type=smtp
server=smtp.office365.com
port=587
user=esj-svc@contoso.com
client-id=<set: ESJ app client id>
directory-id={TENANT}
scope=https://outlook.office.com/.default
password=<set: password of esj-svc@contoso.com>
[pop-client1]
type=GRAPH
mailbox=sales@contoso.com
service-account=
client-id={GUID}
scope=https://graph.microsoft.com/.default
grant-type=client_credentials
password=the-real-secret
"""


def test_cfg_gives_one_target_per_section_with_placeholders_recognised() -> None:
    pop, pop1, smtp = targets_from_text(CFG, "x.cfg")
    assert (pop.section, pop.protocol, pop.direction, pop.app_only) == ("pop-client", "imap", "inbound", False)
    assert pop.account == "esj-svc@contoso.com" and pop.port == 993 and pop.password is None
    assert "password" in pop.placeholders
    assert (pop1.protocol, pop1.app_only, pop1.password, pop1.account) == ("graph", True, "the-real-secret", None)
    # smtp-client has no mailbox option: it sends FROM its pop-client twin's mailbox.
    assert (smtp.protocol, smtp.mailbox, smtp.client_id) == ("smtp", "support@contoso.com", None)
    assert "the-real-secret" not in repr(pop1)


def test_json_forms_that_emit_and_onboard_print_are_read(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["emit", "support@contoso.com", "--trustee", "esj-svc@contoso.com", "--inbound",
                                 "ews", "--outbound", "graph", "--format", "json"], env={"ESJ_PROVISION_EWS_ENDPOINT": None})
    assert r.exit_code == 0, r.stderr
    one = targets_from_text(r.stdout, "emit.json")
    assert [(t.section, t.protocol, t.mailbox) for t in one] == [
        ("pop-client", "ews", "support@contoso.com"), ("smtp-client", "graph", "support@contoso.com")]
    wrapped = json.dumps({"plan": {}, "esj_options": json.loads(r.stdout)})
    assert [t.section for t in targets_from_text(wrapped, "onboard.json")] == ["pop-client", "smtp-client"]
    assert [t.section for t in targets_from_text(f"[{r.stdout}]", "array.json")] == ["pop-client", "smtp-client"]


@pytest.mark.parametrize(("text", "words"), [
    ("[other]\na=b\n", "no pop-client or smtp-client section"),
    ("[pop-client]\ntype=pop3\nmailbox=a@b.c\n", "not a protocol the probe knows"),
    ("[pop-client]\ntype=imap\nmailbox=<set: x>\n", "no shared mailbox"),
    ("[smtp-client]\nserver-type=smtp\nuser=a@b.c\n", "cannot tell which shared mailbox"),
    ('{"options": 3}', "no 'options' list"),
    ("{not json", "not valid JSON"),
])
def test_options_that_are_not_esj_options_are_refused_clearly(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        targets_from_text(text, "bad")


# -- verdicts and exit statuses ---------------------------------------------------------------------


def _check(status: str, section: str = "pop-client") -> Check:
    return Check(section, "imap", "inbound", "open mailbox", status, "r")


@pytest.mark.parametrize(("statuses", "code"), [
    (["ok", "skipped"], 0), (["ok", "pending"], 5), (["pending", "failed"], 1), (["failed"], 1), ([], 0)])
def test_exit_status_is_5_only_when_nothing_but_a_grant_waits(statuses: list[str], code: int) -> None:
    assert exit_status([_check(s) for s in statuses]) == code
    assert int(ExitStatus.PENDING) == 5


def test_authorization_rows_name_permissions_from_the_role_and_the_granted_list() -> None:
    rows = [{"RoleName": "Application Mail.Send", "GrantedPermissions": "Mail.Send", "InScope": True},
            {"RoleName": "Application Mail.ReadWrite", "GrantedPermissions": "", "InScope": "False"}]
    send, rw = parse_authorization(rows)
    assert send.in_scope and "Mail.Send" in send.permissions
    assert not rw.in_scope and rw.permissions == {"Mail.ReadWrite"}


class _ScriptedProber:
    """Answers each round from a script: pending until the given round, then ok."""

    def __init__(self, ok_from_round: int) -> None:
        self.rounds: list[list[str]] = []
        self.ok_from = ok_from_round

    async def probe_all(self, targets: list[Target]) -> list[Check]:
        self.rounds.append([t.section for t in targets])
        status = "ok" if len(self.rounds) >= self.ok_from else "pending"
        out = []
        for t in targets:
            out.append(Check(t.section, t.protocol, t.direction, "open mailbox",
                             "failed" if t.section == "smtp-client" else status, "r"))
        return out


def _targets() -> list[Target]:
    return [t for t in targets_from_text(CFG, "x") if t.section in ("pop-client", "smtp-client")]


def test_wait_retries_only_pending_sections_with_backoff_until_they_pass() -> None:
    now = [0.0]
    slept: list[float] = []
    waited: list[int] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    prober = _ScriptedProber(ok_from_round=4)
    checks = asyncio.run(probe_until(prober, _targets(), 3600, clock=lambda: now[0], sleep=sleep,  # type: ignore[arg-type]
                                     on_wait=lambda pending, d: waited.append(len(pending))))
    assert slept == [2.0, 4.0, 8.0]
    # The failed section is not retried: waiting cannot fix it.
    assert prober.rounds == [["pop-client", "smtp-client"], ["pop-client"], ["pop-client"], ["pop-client"]]
    assert [c.status for c in checks] == ["ok", "failed"] and waited == [1, 1, 1]


def test_wait_stops_at_the_deadline_and_leaves_the_check_pending() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    checks = asyncio.run(probe_until(_ScriptedProber(ok_from_round=99), _targets(), 100,  # type: ignore[arg-type]
                                     clock=lambda: now[0], sleep=sleep, max_delay=30))
    assert sum(slept) == 100 and max(slept) == 30
    assert checks[0].status == "pending"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2d", "-5s", "0s", "1.5h", "h", "49h", "30 m"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


# -- the command's bad inputs: exit 2, before any connection ---------------------------------------


@pytest.fixture
def cfg_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "esj.cfg"
    p.write_text(CFG)
    return p


# An authority nobody listens on: had the command connected, it would fail differently (exit 1).
NOWHERE = {"AZURE_AUTHORITY_HOST": "https://127.0.0.1:9", "ESJ_PROVISION_GRAPH_ENDPOINT": "https://127.0.0.1:9"}


@pytest.mark.parametrize(("args", "words"), [
    (["--wait", "soon"], "is not a duration"),
    (["--format", "xml"], "unknown format"),
    (["--send-test-to", "not-an-address"], "--send-test-to"),
    (["--secret-file", "/nonexistent/secret"], "not found"),
    (["--password-file", "EMPTY"], "is empty"),
    (["--esj-client-id", "nope"], "GUID"),
])
def test_bad_inputs_exit_2_with_a_clear_message(cfg_file: Path, args: list[str], words: str) -> None:
    empty = cfg_file.parent / "empty"
    empty.write_text("\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    r = CliRunner().invoke(app, ["probe", str(cfg_file), *args], env=NOWHERE)
    assert r.exit_code == 2, r.stdout + r.stderr
    assert words in r.stderr and r.stdout == ""


def test_missing_options_file_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["probe", str(tmp_path / "nope.cfg")], env=NOWHERE)
    assert r.exit_code == 2 and "not found" in r.stderr


def test_a_secret_is_not_accepted_as_a_flag_value(cfg_file: Path) -> None:
    r = CliRunner().invoke(app, ["probe", str(cfg_file), "--secret", "x"], env=NOWHERE)
    assert r.exit_code == 2


# -- the endpoint overrides in emitted options -------------------------------------------------------


def test_emit_writes_the_endpoint_overrides_into_the_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"ESJ_PROVISION_IMAP_ENDPOINT": "127.0.0.1:9993", "ESJ_PROVISION_SMTP_ENDPOINT": "[::1]:2525",
           "ESJ_PROVISION_EWS_ENDPOINT": "https://127.0.0.1:8443/EWS/Exchange.asmx"}
    r = CliRunner().invoke(app, ["emit", "support@contoso.com", "--trustee", "esj-svc@contoso.com", "--inbound",
                                 "imap", "--outbound", "smtp"], env=env)
    assert r.exit_code == 0, r.stderr
    assert "[pop-client]\ntype=imap\nserver=127.0.0.1\nport=9993\n" in r.stdout
    assert "server=::1\nport=2525\n" in r.stdout
    assert "test endpoint" in r.stderr
    r = CliRunner().invoke(app, ["emit", "support@contoso.com", "--trustee", "esj-svc@contoso.com", "--inbound",
                                 "ews", "--outbound", "ews"], env=env)
    assert r.stdout.count("server=https://127.0.0.1:8443/EWS/Exchange.asmx\nport=8443\n") == 2


@pytest.mark.parametrize(("var", "value"), [
    ("ESJ_PROVISION_IMAP_ENDPOINT", "127.0.0.1"), ("ESJ_PROVISION_SMTP_ENDPOINT", "host:99999"),
    ("ESJ_PROVISION_EWS_ENDPOINT", "http://mail.example.com/EWS")])
def test_bad_endpoint_override_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str,
                                                value: str) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.cfg"
    r = CliRunner().invoke(app, ["emit", "support@contoso.com", "--trustee", "esj-svc@contoso.com", "--inbound",
                                 "imap", "--outbound", "smtp", "--out", str(out)], env={var: value})
    assert r.exit_code == 2 and var in r.stderr
    assert not out.exists()

