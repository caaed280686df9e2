"""`esj-provision emit` through the real Typer app: formats, guide rules, secrets, bad input."""

from __future__ import annotations

import itertools
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.esj.cfg import parse_cfg

MAILBOX = "support@contoso.com"
TRUSTEE = "svc-genesys@contoso.com"
SECRET = "Q~8xF.super-secret_value0123"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
TENANT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

# Every variable the command reads, cleared so the developer's shell cannot change a result.
CLEAN_ENV: dict[str, str | None] = {
    "ESJ_PROVISION_CLOUD": None,
    "ESJ_PROVISION_PROFILE": None,
    "ESJ_PROVISION_ESJ_CLIENT_ID": None,
    "ESJ_PROVISION_ESJ_CLIENT_SECRET": None,
    "AZURE_TENANT_ID": None,
    "AZURE_CLIENT_ID": None,
    "NO_COLOR": "1",
    "COLUMNS": "200",
}

Run = Callable[..., Result]


@pytest.fixture
def run() -> Run:
    def _run(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env={**CLEAN_ENV, **(env or {})}, catch_exceptions=False)

    return _run


def emit_args(inbound: str, outbound: str, *extra: str) -> list[str]:
    return ["emit", MAILBOX, "--trustee", TRUSTEE, "--inbound", inbound, "--outbound", outbound, *extra]


def table_rows(text: str) -> dict[tuple[str, str], str]:
    """(section, option) -> value cell, from the rich table (box characters)."""
    rows: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[(cells[0], cells[1])] = cells[2]
    return rows


def parse_output(fmt: str, stdout: str) -> dict[str, dict[str, str]]:
    """The emitted options as section -> option -> value, whatever the format."""
    if fmt == "cfg":
        return parse_cfg(stdout)
    if fmt == "json":
        out: dict[str, dict[str, str]] = {}
        for o in json.loads(stdout)["options"]:
            out.setdefault(o["section"], {})[o["name"]] = o["value"]
        return out
    out = {}
    for (section, name), value in table_rows(stdout).items():
        out.setdefault(section, {})[name] = "" if value.startswith('""') else value
    return out


COMBOS = list(itertools.product(["imap", "ews", "graph"], ["smtp", "ews", "graph"], [False, True]))


@pytest.mark.parametrize("fmt", ["cfg", "json", "table"])
@pytest.mark.parametrize(("inbound", "outbound", "auto"), COMBOS)
def test_guide_rules_in_every_combination_and_format(
    run: Run, fmt: str, inbound: str, outbound: str, auto: bool
) -> None:
    args = emit_args(inbound, outbound, "--format", fmt)
    if auto:
        args.append("--auto-response")
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    parsed = parse_output(fmt, result.stdout)
    assert list(parsed) == ["pop-client", "smtp-client"]
    pop, smtp = parsed["pop-client"], parsed["smtp-client"]

    # Inbound, IMAP/EWS: "for pop-client/mailbox option, specify the shared mailbox e-mail address"
    # and "for pop-client/service-account option, specify the e-mail address with delegated
    # Full Access". GRAPH: the same mailbox, and "service-account ... specify an empty string".
    assert pop["mailbox"] == MAILBOX
    assert "service-account" in pop
    assert pop["service-account"] == ("" if inbound == "graph" else TRUSTEE)
    # Auto Acknowledge/Response: "address and default-from-address ... the same value as in mailbox".
    if auto:
        assert pop["address"] == pop["mailbox"]
        assert pop["default-from-address"] == pop["mailbox"]
    else:
        assert "address" not in pop and "default-from-address" not in pop
    # Outbound, all protocols: "smtp-client/user ... e-mail address with delegated Full Access".
    assert smtp["user"] == TRUSTEE
    # GRAPH: "smtp-client/allow-delegate option must be set to true".
    if outbound == "graph":
        assert smtp["allow-delegate"] == "true"
    else:
        assert "allow-delegate" not in smtp

    # The connection options around the rules, per protocol (esj-options.md §1c/§4).
    assert pop["type"] == {"imap": "imap", "ews": "ews", "graph": "GRAPH"}[inbound]
    assert smtp["server-type"] == outbound
    if inbound == "imap":
        assert (pop["server"], pop["port"]) == ("outlook.office365.com", "993")
        assert pop["mail.imap.auth.mechanisms"] == "XOAUTH2"
    elif inbound == "ews":
        assert pop["server"] == "https://outlook.office365.com/EWS/Exchange.asmx"
        assert pop["folder-path"] == ""
    else:
        assert pop["scope"] == "https://graph.microsoft.com/.default"
        assert "server" not in pop
    if outbound == "smtp":
        assert (smtp["server"], smtp["port"]) == ("smtp.office365.com", "587")
        assert smtp["enable-authentication"] == "true"
        assert smtp["mail.smtp.auth.mechanisms"] == "XOAUTH2"
    elif outbound == "ews":
        assert smtp["server"] == "https://outlook.office365.com/EWS/Exchange.asmx"
    else:
        assert smtp["scope"] == "https://graph.microsoft.com/.default"
    for section in (pop, smtp):
        assert section["client-id"] == "<set: ESJ app client id>"
        assert section["directory-id"] == "<set: directory (tenant) id>"
        assert section["tenant-authority"] == "https://login.microsoftonline.com"

    # The FROM-address note, in every format: stderr for cfg/json, in the table otherwise.
    where = result.stdout if fmt == "table" else result.stderr
    assert f"shared mailbox {MAILBOX} as its FROM address" in where
    assert '"E-mail Accounts"' in where and "Send block" in where
    if fmt == "cfg":
        assert "FROM address" not in result.stdout  # never a comment inside the importable file
    if fmt == "json":
        assert any(f"shared mailbox {MAILBOX} as its FROM address" in n for n in json.loads(result.stdout)["notes"])


def test_cfg_output_is_exact(run: Run) -> None:
    result = run(*emit_args("graph", "graph", "--auto-response", "--esj-client-id", CLIENT_ID,
                            "--tenant-id", TENANT_ID))
    assert result.exit_code == 0
    assert result.stdout == (
        "[pop-client]\n"
        "type=GRAPH\n"
        f"mailbox={MAILBOX}\n"
        "service-account=\n"
        f"address={MAILBOX}\n"
        f"default-from-address={MAILBOX}\n"
        f"client-id={CLIENT_ID}\n"
        f"directory-id={TENANT_ID}\n"
        "tenant-authority=https://login.microsoftonline.com\n"
        "scope=https://graph.microsoft.com/.default\n"
        "grant-type=client_credentials\n"
        "password=<set: ESJ app client secret>\n"
        "[smtp-client]\n"
        "server-type=graph\n"
        f"user={TRUSTEE}\n"
        "allow-delegate=true\n"
        f"client-id={CLIENT_ID}\n"
        f"directory-id={TENANT_ID}\n"
        "tenant-authority=https://login.microsoftonline.com\n"
        "scope=https://graph.microsoft.com/.default\n"
        "grant-type=client_credentials\n"
        "password=<set: ESJ app client secret>\n"
    )


def test_env_defaults_for_ids_and_cloud(run: Run) -> None:
    result = run(*emit_args("imap", "smtp", "--format", "json"), env={
        "ESJ_PROVISION_ESJ_CLIENT_ID": CLIENT_ID,
        "AZURE_TENANT_ID": TENANT_ID,
        "AZURE_CLIENT_ID": "99999999-9999-9999-9999-999999999999",  # the provisioning app: ignored
        "ESJ_PROVISION_CLOUD": "usgov-dod",
    })
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["cloud"] == "usgov-dod"
    values = {(o["section"], o["name"]): o["value"] for o in obj["options"]}
    assert values[("pop-client", "client-id")] == CLIENT_ID
    assert values[("smtp-client", "directory-id")] == TENANT_ID
    assert "99999999" not in result.stdout
    assert values[("pop-client", "server")] == "outlook-dod.office365.us"


def test_dotenv_is_read_like_every_other_command(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 6: emit redefined --cloud/--tenant-id with Typer's envvar=, which ignores ./.env."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        f"ESJ_PROVISION_CLOUD=usgov-high\nAZURE_TENANT_ID={TENANT_ID}\nESJ_PROVISION_ESJ_CLIENT_ID={CLIENT_ID}\n"
    )
    result = run(*emit_args("imap", "smtp", "--format", "json"))
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    values = {(o["section"], o["name"]): o["value"] for o in obj["options"]}
    assert obj["cloud"] == "usgov-high"
    assert values[("smtp-client", "directory-id")] == TENANT_ID
    assert values[("pop-client", "client-id")] == CLIENT_ID
    # The environment still beats .env, and a flag beats both.
    result = run(*emit_args("imap", "smtp", "--format", "json"), env={"ESJ_PROVISION_CLOUD": "china"})
    assert json.loads(result.stdout)["cloud"] == "china"
    result = run(*emit_args("imap", "smtp", "--format", "json", "--cloud", "global"), env={"ESJ_PROVISION_CLOUD": "china"})
    assert json.loads(result.stdout)["cloud"] == "global"


def test_a_tenant_domain_from_dotenv_leaves_the_placeholder(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection settings accept a domain in AZURE_TENANT_ID; emit must not fail on it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AZURE_TENANT_ID=contoso.onmicrosoft.com\n")
    result = run(*emit_args("imap", "smtp", "--format", "json"))
    assert result.exit_code == 0, result.stderr
    values = {(o["section"], o["name"]): o for o in json.loads(result.stdout)["options"]}
    assert values[("smtp-client", "directory-id")]["placeholder"] is True


def test_json_marks_unconfirmed_and_table_shows_it(run: Run) -> None:
    result = run(*emit_args("imap", "smtp", "--format", "json"))
    obj = json.loads(result.stdout)
    by_key = {f'{o["section"]}/{o["name"]}': o for o in obj["options"]}
    assert by_key["pop-client/type"]["confirmed"] is False
    assert by_key["pop-client/mailbox"]["confirmed"] is True
    assert by_key["pop-client/mailbox"]["source"] == "guide"
    assert "pop-client/type" in obj["unconfirmed"]
    assert "Not confirmed by Genesys documentation" in result.stderr

    table = run(*emit_args("imap", "smtp", "--format", "table")).stdout
    type_line = next(line for line in table.splitlines() if "│ type " in line)
    mailbox_line = next(line for line in table.splitlines() if "│ mailbox " in line)
    assert "UNCONFIRMED" in type_line and "UNCONFIRMED" not in mailbox_line
    client_line = next(line for line in table.splitlines() if "│ client-id " in line)
    assert "REPLACE" in client_line


@pytest.mark.parametrize(
    ("cloud", "imap_host", "smtp_host", "scope"),
    [
        ("usgov-high", "outlook.office365.us", "smtp.office365.us", "https://outlook.office365.us/.default"),
        ("china", "partner.outlook.cn", "smtp.partner.outlook.cn", "https://partner.outlook.cn/.default"),
    ],
)
def test_sovereign_cloud_via_flag(run: Run, cloud: str, imap_host: str, smtp_host: str, scope: str) -> None:
    result = run(*emit_args("imap", "smtp", "--cloud", cloud))
    assert result.exit_code == 0
    cfg = parse_cfg(result.stdout)
    assert cfg["pop-client"]["server"] == imap_host and cfg["smtp-client"]["server"] == smtp_host
    assert cfg["pop-client"]["scope"] == scope
    assert "office365.com" not in result.stdout and "microsoftonline.com" not in result.stdout


# ---------------------------------------------------------------------------- secrets


def file_mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("fmt", ["cfg", "json", "table"])
def test_secret_never_appears_without_include_secret(run: Run, fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "esj.out"
    for extra in ([], ["--out", str(out)]):
        result = run(*emit_args("graph", "graph", "--format", fmt, *extra),
                     env={"ESJ_PROVISION_ESJ_CLIENT_SECRET": SECRET})
        assert result.exit_code == 0
        assert SECRET not in result.stdout and SECRET not in result.stderr
        assert "<set: ESJ app client secret>" in (result.stdout or out.read_text())
    assert SECRET not in out.read_text()


@pytest.mark.parametrize("fmt", ["cfg", "json"])
def test_include_secret_from_env_writes_a_0600_file(run: Run, fmt: str, tmp_path: Path) -> None:
    out = tmp_path / f"esj.{fmt}"
    result = run(*emit_args("graph", "graph", "--format", fmt, "--include-secret", "--out", str(out)),
                 env={"ESJ_PROVISION_ESJ_CLIENT_SECRET": SECRET})
    assert result.exit_code == 0, result.stderr
    assert file_mode(out) == 0o600
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert "mode 0600" in result.stderr
    text = out.read_text(encoding="utf-8")
    if fmt == "cfg":
        cfg = parse_cfg(text)
        assert cfg["pop-client"]["password"] == SECRET and cfg["smtp-client"]["password"] == SECRET
    else:
        secrets = [o for o in json.loads(text)["options"] if o["value"] == SECRET]
        assert [(o["section"], o["name"], o["secret"]) for o in secrets] == [
            ("pop-client", "password", True), ("smtp-client", "password", True)]


def test_include_secret_from_file_strips_trailing_newline(run: Run, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET + "\n")
    out = tmp_path / "esj.cfg"
    result = run(*emit_args("graph", "smtp", "--include-secret", "--secret-file", str(secret_file),
                            "--out", str(out)))
    assert result.exit_code == 0, result.stderr
    assert parse_cfg(out.read_text())["pop-client"]["password"] == SECRET
    assert file_mode(out) == 0o600


def test_include_secret_refuses_stdout(run: Run) -> None:
    result = run(*emit_args("graph", "graph", "--include-secret"), env={"ESJ_PROVISION_ESJ_CLIENT_SECRET": SECRET})
    assert result.exit_code == 2
    assert "--include-secret needs --out FILE" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--include-secret"], {}, "ESJ_PROVISION_ESJ_CLIENT_SECRET is not set"),
        (["--secret-file", "{dir}/s.txt"], {}, "--secret-file is read only with --include-secret"),
        (["--include-secret", "--secret-file", "{dir}/missing.txt"], {}, "not found"),
        (["--include-secret", "--secret-file", "{dir}/empty.txt"], {}, "is empty"),
        (["--include-secret", "--secret-file", "{dir}/two-lines.txt"], {}, "line break"),
    ],
)
def test_secret_input_errors(run: Run, tmp_path: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    (tmp_path / "s.txt").write_text(SECRET)
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "two-lines.txt").write_text("abc\ndef\n")
    out = tmp_path / "esj.cfg"
    argv = [a.replace("{dir}", str(tmp_path)) for a in args]
    result = run(*emit_args("graph", "graph", *argv, "--out", str(out)), env=env)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "abc" not in result.stderr  # the secret's content is never echoed
    assert not out.exists()


def test_unused_secret_is_noted_and_file_not_secret(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "esj.cfg"
    result = run(*emit_args("imap", "smtp", "--include-secret", "--out", str(out)),
                 env={"ESJ_PROVISION_ESJ_CLIENT_SECRET": SECRET})
    assert result.exit_code == 0
    assert "secret was not used" in result.stderr
    assert SECRET not in out.read_text()


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["emit", "not-an-address", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp"], 2,
         "error: mailbox 'not-an-address' is not an e-mail address"),
        (["emit", MAILBOX, "--trustee", "svc", "--inbound", "imap", "--outbound", "smtp"], 2,
         "error: trustee 'svc' is not an e-mail address"),
        (emit_args("pop3", "smtp"), 2, "error: unknown inbound protocol 'pop3'"),
        (emit_args("imap", "imap"), 2, "error: unknown outbound protocol 'imap'"),
        (emit_args("imap", "smtp", "--cloud", "mars"), 2, "error: unknown cloud 'mars'"),
        (emit_args("imap", "smtp", "--cloud", "germany"), 2, "Microsoft Cloud Deutschland was closed"),
        (emit_args("imap", "smtp", "--format", "yaml"), 2, "error: unknown format 'yaml'"),
        (emit_args("imap", "smtp", "--esj-client-id", "my-app"), 2, "error: ESJ app client id 'my-app' is not a GUID"),
        (emit_args("imap", "smtp", "--tenant-id", "contoso.com"), 2, "error: tenant id 'contoso.com' is not a GUID"),
        (["emit", MAILBOX, "--trustee", MAILBOX, "--inbound", "imap", "--outbound", "smtp"], 2,
         "is the shared mailbox itself"),
        (emit_args("imap", "smtp", "--section-index", "-1"), 2, "--section-index"),
        (["emit", MAILBOX, "--inbound", "imap", "--outbound", "smtp"], 2, "--trustee"),
    ],
)
def test_bad_input_exit_status_and_no_file(
    run: Run, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    out = tmp_path / "esj.cfg"
    result = run(*args, "--out", str(out))
    assert result.exit_code == code
    assert needle in result.stderr
    assert result.stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_error_is_one_clear_line_plus_hint(run: Run) -> None:
    result = run(*emit_args("pop3", "smtp"))
    assert result.stderr.splitlines() == [
        "error: unknown inbound protocol 'pop3'",
        "hint: choose one of: imap, ews, graph",
    ]


@pytest.mark.parametrize(
    ("profile_text", "needle"),
    [
        ("[inbound-type\nimap = IMAP\n", "does not parse"),
        ("[inbound-type]\nimap-typo = IMAP\n", "[inbound-type] imap-typo: unknown key"),
        ("[tls]\nimap-value = \"yes please\"\n", "[tls] imap-value: must be one bare word"),
    ],
)
def test_bad_profile_exits_1_naming_the_file(run: Run, tmp_path: Path, profile_text: str, needle: str) -> None:
    profile = tmp_path / "release.ini"
    profile.write_text(profile_text)
    out = tmp_path / "esj.cfg"
    for via_env in (False, True):
        if via_env:
            result = run(*emit_args("imap", "smtp", "--out", str(out)), env={"ESJ_PROVISION_PROFILE": str(profile)})
        else:
            result = run(*emit_args("imap", "smtp", "--profile", str(profile), "--out", str(out)))
        assert result.exit_code == 1
        assert f"error: profile {profile}:" in result.stderr
        assert needle in result.stderr
        assert not out.exists()


def test_missing_profile_exits_1(run: Run, tmp_path: Path) -> None:
    result = run(*emit_args("imap", "smtp", "--profile", str(tmp_path / "nope.ini")))
    assert result.exit_code == 1
    assert "file not found" in result.stderr


def test_out_into_missing_directory(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir" / "esj.cfg"
    result = run(*emit_args("imap", "smtp", "--out", str(out)))
    assert result.exit_code == 2
    assert f"directory {out.parent} does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------- profile, --out


def test_profile_pins_literals_and_sections(run: Run, tmp_path: Path) -> None:
    profile = tmp_path / "release.ini"
    profile.write_text(
        "[inbound-type]\nimap = IMAP\n[outbound-server-type]\nsmtp = SMTP\n"
        "[sections]\ninbound-next = pop-client{n}\noutbound-next = smtp-client{n}\n"
        "[extra:smtp-client:smtp]\ncnx-pool-size = 4\n"
    )
    result = run(*emit_args("imap", "smtp", "--profile", str(profile), "--section-index", "3", "--format", "json"))
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["sections"] == {"inbound": "pop-client3", "outbound": "smtp-client3"}
    by_key = {f'{o["section"]}/{o["name"]}': o for o in obj["options"]}
    assert by_key["pop-client3/type"]["value"] == "IMAP"
    assert by_key["pop-client3/type"]["source"] == "profile" and by_key["pop-client3/type"]["confirmed"]
    assert by_key["smtp-client3/server-type"]["value"] == "SMTP"
    assert by_key["smtp-client3/cnx-pool-size"]["value"] == "4"
    assert "pop-client3/type" not in obj["unconfirmed"]


def test_out_writes_file_and_keeps_stdout_empty(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "esj.cfg"
    result = run(*emit_args("ews", "ews", "--out", str(out)))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert f"wrote {out}" in result.stderr
    assert parse_cfg(out.read_text(encoding="utf-8"))["pop-client"]["folder-path"] == ""
    assert "FROM address" in result.stderr


def test_table_to_file_contains_notes(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "esj.txt"
    result = run(*emit_args("graph", "graph", "--format", "table", "--out", str(out)))
    assert result.exit_code == 0
    text = out.read_text(encoding="utf-8")
    assert table_rows(text)[("smtp-client", "allow-delegate")] == "true"
    assert "FROM address" in text and "\x1b[" not in text


def test_emit_imports_nothing_heavy() -> None:
    # A fresh interpreter: the test process itself may already hold anything.
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from esj_provision.cli import app\n"
        "try:\n"
        f"    app({emit_args('graph', 'graph', '--format', 'json')!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = {'httpx', 'azure', 'msal', 'msgraph', 'aiohttp', 'rich'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert proc.stderr.strip().splitlines()[-1] == "[]"
    assert json.loads(proc.stdout)["mailbox"] == MAILBOX
