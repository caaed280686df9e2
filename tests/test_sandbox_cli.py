"""`esj-provision sandbox` as a process: env file, printed exports, clean SIGTERM, loopback only."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from esj_provision.cli import app
from esj_provision.errors import ConfigError
from esj_provision.sandbox import ENV_VARS, Sandbox, SandboxError
from esj_provision.sandbox.config import check_loopback, parse_latency


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip("'")
    return out


def test_cli_serves_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "sandbox.env"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file~secret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "esj_provision", "sandbox", "--port", "0", "--env-file", str(env_file),
         "--client-secret-file", str(secret_file), "--mailboxes", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not env_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the env file never appeared"
            time.sleep(0.05)
        assert env_file.stat().st_mode & 0o777 == 0o600
        env = _read_env(env_file)
        assert tuple(env) == ENV_VARS
        assert env["AZURE_CLIENT_SECRET"] == "from-a-file~secret"
        assert env["AZURE_AUTHORITY_HOST"].startswith("https://127.0.0.1:")
        ca = env["ESJ_PROVISION_CA_BUNDLE"]
        with httpx.Client(verify=ssl.create_default_context(cafile=ca)) as http:
            r = http.post(
                f"{env['AZURE_AUTHORITY_HOST']}/{env['AZURE_TENANT_ID']}/oauth2/v2.0/token",
                data={"grant_type": "client_credentials", "client_id": env["AZURE_CLIENT_ID"],
                      "client_secret": env["AZURE_CLIENT_SECRET"], "scope": "https://outlook.office365.com/.default"},
            )
            assert r.status_code == 200
            r = http.post(
                f"{env['ESJ_PROVISION_EXCHANGE_ENDPOINT']}/adminapi/beta/{env['AZURE_TENANT_ID']}/InvokeCommand",
                json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"Identity": "queue0003"}}},
                headers={"Authorization": f"Bearer {r.json()['access_token']}"},
            )
            assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"# AZURE_CLIENT_SECRET=(in --env-file {env_file})" in out.splitlines()
    assert "from-a-file~secret" not in out + err
    # ESJ's own secret and password: in the env file, never in the banner.
    assert env["ESJ_PROVISION_ESJ_PASSWORD"] and env["ESJ_PROVISION_ESJ_PASSWORD"] not in out + err
    assert env["ESJ_PROVISION_ESJ_CLIENT_SECRET"] not in out + err
    assert f"IMAP {env['ESJ_PROVISION_IMAP_ENDPOINT']} (TLS)" in out
    assert not env_file.exists()  # a stale file would send the next waiter to a dead port
    assert not Path(ca).parent.exists()  # the temp dir is removed


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com", "192.168.0.1"])
def test_cli_refuses_a_non_loopback_host(host: str) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--host", host])
    assert result.exit_code == 2
    assert "loopback" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--propagation-s", "-1"], "--propagation-s"), (["--propagation-s", "nan"], "--propagation-s"),
     (["--propagation-s", "100000"], "--propagation-s"), (["--imap-port", "70000"], "--imap-port"),
     (["--smtp-port", "-2"], "--smtp-port")],
)
def test_cli_refuses_bad_mail_options(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["sandbox", *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_fixed_mail_ports_and_propagation(tmp_path: Path) -> None:
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    with Sandbox(imap_port=ports[0], smtp_port=ports[1], propagation_s=5) as sb:
        assert (sb.imap_port, sb.smtp_port) == (ports[0], ports[1])
        assert sb.propagation() == {"seconds": 5.0, "pending": []}


def test_sandbox_class_refuses_non_loopback() -> None:
    with pytest.raises(SandboxError):
        Sandbox(host="0.0.0.0")


@pytest.mark.parametrize(("host", "bind"), [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("::1", "::1"),
                                            ("[::1]", "::1"), ("127.0.0.2", "127.0.0.2")])
def test_loopback_hosts_are_accepted(host: str, bind: str) -> None:
    assert check_loopback(host) == bind


@pytest.mark.parametrize("bad", ["", "contoso", "a@contoso.com", "contoso.com/x", "-"])
def test_a_upn_domain_must_be_a_domain(bad: str) -> None:
    with pytest.raises(SandboxError, match="--upn-domain"):
        Sandbox(upn_domain=bad)


def test_the_upn_domain_is_kept_in_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with Sandbox(state_path=state, upn_domain="contoso.com", mailboxes=1) as sb:
        sb.reset_calls()
    with Sandbox(state_path=state) as sb:  # a restart reads the tenant back as it was
        upns = {r["upn"] for r in sb.state()["recipients"]}
        assert "support@contoso.com" in upns and not any(u.endswith(".onmicrosoft.com") for u in upns)
        assert sb.state()["tenant"]["upn_domain"] == "contoso.com"


def test_latency_parsing_is_bounded() -> None:
    assert parse_latency("50") == (50, 50)
    assert parse_latency("20-200") == (20, 200)
    assert parse_latency("0-999999") == (0, 10_000)
    for bad in ("x", "200-20", "-5"):
        with pytest.raises(SandboxError):
            parse_latency(bad)


def test_kept_dir_and_ipv6(tmp_path: Path) -> None:
    with Sandbox(host="::1", dir=tmp_path / "sbx") as sb:
        assert sb.url.startswith("https://[::1]:")
        with httpx.Client(verify=sb.ssl_context()) as http:
            assert http.get(f"{sb.url}/_sandbox/health").status_code == 200
    assert (tmp_path / "sbx" / "ca.pem").exists()  # --dir is the caller's: kept


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_max_runtime_stops_by_itself(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esj_provision", "sandbox", "--max-runtime", "0.5", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stopped" in proc.stderr


def test_cli_reports_a_corrupt_state_file_as_a_config_error(tmp_path: Path) -> None:
    state = tmp_path / "tenant.json"
    state.write_text('{"version": 99}')
    result = CliRunner().invoke(app, ["sandbox", "--state", str(state), "--dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "not a sandbox state file" in result.output


def test_the_sandbox_never_imports_the_client_side() -> None:
    """Architecture rule: the sandbox stands in for Microsoft, so it must not share code with the
    client it tests (only the CLI's ``sandbox`` command joins the two)."""
    import ast

    import esj_provision.sandbox as pkg

    offenders = []
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level > 1 or (node.module or "").startswith("esj_provision")):
                offenders.append(f"{path.name}: from {'.' * node.level}{node.module or ''}")
    assert offenders == []


@pytest.mark.parametrize("flag", ["--client-secret", "--pfx-password"])
def test_a_secret_is_never_taken_as_a_flag_value(flag: str) -> None:
    value = "flag~value~that~must~not~be~echoed"
    result = CliRunner().invoke(app, ["sandbox", flag, value], catch_exceptions=False)
    assert result.exit_code == 2
    assert "no such option" in result.stderr
    assert value not in result.output


def test_secret_files_are_read_and_checked(tmp_path: Path) -> None:
    from esj_provision.cli.sandbox import _read_secret

    (tmp_path / "s").write_text("from~file\n")
    assert _read_secret(tmp_path / "s", "--client-secret-file") == "from~file"
    assert _read_secret(None, "--client-secret-file") is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        _read_secret(tmp_path / "empty", "--pfx-password-file")
    with pytest.raises(ConfigError, match="cannot read"):
        _read_secret(tmp_path / "missing", "--pfx-password-file")
