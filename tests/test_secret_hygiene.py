"""Secret hygiene (issue #7): recognisable secrets go in, and come out nowhere.

The sandbox tenant is started with a recognisable provisioning-app secret and PFX password, the
ESJ app secret sits in ``ESJ_PROVISION_ESJ_CLIENT_SECRET``, and every command is run with secret
sign-in (environment and ``--client-secret-file``) and certificate sign-in (PFX + password), on
success and error paths, verbose or not. Then stdout, stderr, every Python log record at DEBUG
(our loggers and azure-identity's, msal's, httpx's), the journal and every file written under the
working directory are searched for the canaries (also URL-, JSON- and base64-encoded, and with
whitespace and table borders removed, so a value folded across table lines is still found), for
access tokens (JWTs, ``Bearer ...``) and for the certificate's private key.

The one sanctioned exception: ``emit --include-secret --out F`` puts the ESJ app secret in F, and
F must have mode 0600. (``esj-provision sandbox`` prints and writes its *own* throwaway secret by
design; that is checked separately.)
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.config import ENV_VARS as CONFIG_ENV_VARS
from esj_provision.config import load_settings
from esj_provision.errors import EsjProvisionError
from esj_provision.sandbox import Sandbox

# Shaped like Entra secrets (~ . - _), each with a marker no legitimate output contains.
CLIENT_SECRET = "SeCrEt~CANARY.7f3a9c21-d4e8b6a0_Qx"
PFX_PASSWORD = "PfXpW~CANARY.51be0e9d-2c7a_Zk"
ESJ_SECRET = "EsJ~CANARY.c0ffee4b-1d5e9a_Wq"
WRONG_SECRET = "WrOnG~CANARY.0bad5ec7-e7a1_Kp"
WRONG_PFX_PASSWORD = "WrOnGpFx~CANARY.9d1e-44b0_Mm"
CANARIES = {
    "client secret": CLIENT_SECRET,
    "PFX password": PFX_PASSWORD,
    "ESJ app secret": ESJ_SECRET,
    "wrong client secret": WRONG_SECRET,
    "wrong PFX password": WRONG_PFX_PASSWORD,
}
MARKER = "CANARY"  # in every canary: any fragment that still carries it is a leak too

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
BEARER = re.compile(r"bearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
# Whitespace and table borders: what a value folded across the lines of a rich table is split by.
FOLD = re.compile(r"[\s│┃║|─━═┌┐└┘├┤┬┴┼╭╮╯╰╷╵]+")

TRUSTEE = "esj-svc@contoso.com"
AUTHS = ("secret", "secret-file", "pfx")
TENANT_COMMANDS = ("onboard", "offboard", "bulk", "audit", "doctor")


def _needles() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = [("canary marker", MARKER)]
    for name, value in CANARIES.items():
        tail = value[-10:]  # a leak of only the end of the value (a cut-off start, a misaligned slice)
        forms = {
            value,
            tail,
            quote(value, safe=""),
            quote_plus(value),
            json.dumps(value)[1:-1],
            base64.b64encode(value.encode()).decode().rstrip("="),
            base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
        }
        out += [(name, form) for form in forms]
    return out


NEEDLES = _needles()


def leaks(text: str) -> list[str]:
    """What secret material ``text`` holds: canary names, 'access token', 'private key'."""
    flat = FOLD.sub("", text)
    found = {name for name, needle in NEEDLES if needle in text or needle in flat}
    if JWT.search(text) or JWT.search(flat) or BEARER.search(text):
        found.add("access token")
    if "PRIVATE KEY" in text:
        found.add("private key")
    return sorted(found)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_detector_finds_secrets_however_they_are_shown() -> None:
    """So that a clean result means something: folded in a table, encoded, cut short, a token."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("value", overflow="fold", max_width=8)
    table.add_row(f"x {CLIENT_SECRET} y")
    buf = io.StringIO()
    Console(file=buf, width=12).print(table)
    assert CLIENT_SECRET not in buf.getvalue() and "client secret" in leaks(buf.getvalue())
    assert "client secret" in leaks("client_secret=" + quote_plus(CLIENT_SECRET))
    assert "PFX password" in leaks(base64.b64encode(PFX_PASSWORD.encode()).decode())
    assert leaks(ESJ_SECRET[:12]) == ["canary marker"]  # a truncated secret still carries the marker
    assert "ESJ app secret" in leaks(ESJ_SECRET[-12:])
    assert leaks("Authorization: Bearer abcdefghijkl") == ["access token"]
    assert leaks("-----BEGIN PRIVATE KEY-----") == ["private key"]
    assert leaks("error: AADSTS7000215: Invalid client secret provided (request-id 1b3a970e)") == []


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """One tenant for the module: onboarding is idempotent, so tests may share it."""
    with Sandbox(client_secret=CLIENT_SECRET, pfx_password=PFX_PASSWORD, mailboxes=20) as box:
        yield box


@pytest.fixture(scope="module")
def token_prefix(sb: Sandbox) -> str:
    """A token the sandbox issues for the canary secret: proves the JWT check is not vacuous."""
    with httpx.Client(verify=sb.ssl_context(), timeout=10) as http:
        r = http.post(
            f"{sb.url}/{sb.tenant_id}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": CLIENT_SECRET,
                  "scope": "https://graph.microsoft.com/.default"},
        )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert JWT.match(token) and leaks(f"Authorization: Bearer {token}") == ["access token"]
    return token[:3]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    logger = logging.getLogger("esj_provision")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


class Hygiene:
    """Runs the CLI in-process with the canaries in place and collects everything it produced."""

    def __init__(self, sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.sb = sb
        self.work = tmp_path / "work"  # cwd: every file a command writes lands under here
        self.inputs = tmp_path / "in"  # what we hand the commands: not scanned
        self.work.mkdir()
        self.inputs.mkdir()
        self.caplog = caplog
        self.results: list[tuple[str, Result]] = []
        self.secret_file = self.inputs / "client-secret.txt"
        self.secret_file.write_text(CLIENT_SECRET + "\n")
        self.esj_secret_file = self.inputs / "esj-secret.txt"
        self.esj_secret_file.write_text(ESJ_SECRET + "\n")

    def env(self, auth: str, sb: Sandbox | None = None, **extra: str | None) -> dict[str, str | None]:
        box = sb or self.sb
        env: dict[str, str | None] = dict.fromkeys(CONFIG_ENV_VARS)  # nothing from the developer's shell
        env.update(box.env)
        env.update(
            ESJ_PROVISION_ESJ_CLIENT_SECRET=ESJ_SECRET,
            ESJ_PROVISION_ESJ_CLIENT_ID=None,
            ESJ_PROVISION_JOURNAL=str(self.work / "journal.jsonl"),
            XDG_STATE_HOME=str(self.work / "state"),
            # Set even when unused: a credential that is present but not chosen must not leak either.
            AZURE_CLIENT_CERTIFICATE_PASSWORD=PFX_PASSWORD,
        )
        if auth == "secret-file":
            env["AZURE_CLIENT_SECRET"] = None
        elif auth == "pfx":
            env["AZURE_CLIENT_CERTIFICATE_PATH"] = str(box.pfx_path)  # auto picks it over the secret
        elif auth == "pem":
            env["AZURE_CLIENT_CERTIFICATE_PATH"] = str(box.cert_path)
            env["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = None  # its key is not encrypted
        else:
            assert auth == "secret", auth
        env.update(extra)
        return env

    def run(
        self, *args: str, auth: str = "secret", expect: tuple[int, ...] = (0,), sb: Sandbox | None = None,
        env: dict[str, str | None] | None = None,
    ) -> Result:
        argv = list(args)
        if auth == "secret-file" and argv[0] in TENANT_COMMANDS:
            argv += ["--client-secret-file", str(self.secret_file)]
        logger = logging.getLogger("esj_provision")
        handlers, level = list(logger.handlers), logger.level
        try:
            r = CliRunner().invoke(app, argv, env={**self.env(auth, sb), **(env or {})}, catch_exceptions=True)
        finally:
            # --verbose adds a handler bound to this run's captured stderr; the next run has another.
            logger.handlers[:] = handlers
            logger.setLevel(level)
        label = f"[{auth}] esj-provision {' '.join(args)}"
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            tb = "".join(traceback.format_exception(r.exception))
            pytest.fail(f"{label}: unexpected exception (a traceback for the user):\n{tb}")
        assert r.exit_code in expect, f"{label}: exit {r.exit_code}\n{r.stdout}\n{r.stderr}"
        self.results.append((label, r))
        return r

    def assert_clean(self, allowed: dict[Path, str] | None = None) -> int:
        """No secret material anywhere; ``allowed`` maps a file to the one canary it must hold
        (and then mode 0600). Returns how many outputs were searched."""
        allowed = dict(allowed or {})
        problems: list[str] = []
        searched = 0
        for label, r in self.results:
            for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
                searched += 1
                if found := leaks(text):
                    problems.append(f"{label}: {stream} holds {found}:\n{text[-2000:]}")
        log_text = self.caplog.text + "\n".join(
            f"{rec.name}: {rec.getMessage()} {rec.exc_text or ''}" for rec in self.caplog.records
        )
        searched += 1
        if found := leaks(log_text):
            lines = [line for line in log_text.splitlines() if leaks(line)]
            problems.append(f"Python logging holds {found}: {lines[:5]}")
        for path in sorted(p for p in self.work.rglob("*") if p.is_file()):
            searched += 1
            text = path.read_bytes().decode("utf-8", "replace")
            if path in allowed:
                want = allowed.pop(path)
                if want not in text:
                    problems.append(f"{path} should hold the {want!r} it was asked to include")
                if mode_of(path) != 0o600:
                    problems.append(f"{path} holds a secret but has mode {oct(mode_of(path))}, not 0600")
                text = text.replace(want, "")
            if found := leaks(text):
                problems.append(f"{path.relative_to(self.work)} holds {found}:\n{text[:2000]}")
        problems += [f"{path} was never written" for path in allowed]
        assert not problems, "\n\n".join(problems)
        return searched


@pytest.fixture
def hygiene(sb: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Hygiene:
    caplog.set_level(logging.DEBUG)  # every logger, ours and the libraries', at DEBUG
    monkeypatch.chdir(tmp_path)
    h = Hygiene(sb, tmp_path, caplog)
    monkeypatch.chdir(h.work)  # no stray .env; bulk's default out dir lands here
    return h


def write_manifest(path: Path, mailboxes: list[str], trustee: str = TRUSTEE, inbound: str = "imap",
                   outbound: str = "smtp") -> Path:
    path.write_text(
        "mailbox,trustee,inbound,outbound\n" + "".join(f"{m},{trustee},{inbound},{outbound}\n" for m in mailboxes)
    )
    return path


# --------------------------------------------------------------------------------------------
# emit: the only command that may ever hold the ESJ app secret, and only in a 0600 file


@pytest.mark.parametrize("fmt", ["cfg", "json", "table"])
def test_emit_shows_the_esj_secret_only_in_the_0600_file_asked_for(hygiene: Hygiene, fmt: str) -> None:
    h = hygiene
    base = ("emit", "support@contoso.com", "--trustee", TRUSTEE, "-f", fmt)
    graph = (*base, "--inbound", "graph", "--outbound", "graph")  # password = the ESJ app secret
    imap = (*base, "--inbound", "imap", "--outbound", "smtp")  # password = the login's: secret unused

    h.run(*graph)
    h.run(*imap, "--auto-response")
    h.run(*graph, "--out", str(h.work / f"plain.{fmt}"))
    h.run(*graph, "--include-secret", expect=(2,))  # refused: never to a terminal or a pipe
    h.run(*graph, "--secret-file", str(h.esj_secret_file), expect=(2,))

    with_secret = h.work / f"with-secret.{fmt}"
    from_file = h.work / f"from-file.{fmt}"
    was_0644 = h.work / f"was-0644.{fmt}"
    was_0644.write_text("old\n")
    was_0644.chmod(0o644)
    unused = h.work / f"unused.{fmt}"
    old_umask = os.umask(0)  # 0600 by construction, not by a friendly umask
    try:
        r = h.run(*graph, "--include-secret", "--out", str(with_secret))
        h.run(*graph, "--include-secret", "--secret-file", str(h.esj_secret_file), "--out", str(from_file),
              env={"ESJ_PROVISION_ESJ_CLIENT_SECRET": None})
        h.run(*graph, "--include-secret", "--out", str(was_0644))
        h.run(*imap, "--include-secret", "--out", str(unused))
    finally:
        os.umask(old_umask)
    assert "mode 0600" in r.stderr
    assert ESJ_SECRET not in unused.read_text()  # nothing of this combination holds it
    assert not list(h.work.glob(".*.tmp"))  # no temporary file left behind
    h.assert_clean({with_secret: ESJ_SECRET, from_file: ESJ_SECRET, was_0644: ESJ_SECRET})


def test_emit_errors_about_the_esj_secret_never_echo_it(hygiene: Hygiene) -> None:
    h = hygiene
    graph = ("emit", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "graph", "--outbound", "graph")
    broken = h.inputs / "broken.txt"
    broken.write_text(f"{ESJ_SECRET}\nsecond line {ESJ_SECRET}\n")  # a line break inside: refused
    r = h.run(*graph, "--include-secret", "--secret-file", str(broken), "--out", str(h.work / "x.cfg"), expect=(2,))
    assert "line break" in r.stderr
    empty = h.inputs / "empty.txt"
    empty.write_text("\n")
    h.run(*graph, "--include-secret", "--secret-file", str(empty), "--out", str(h.work / "y.cfg"), expect=(2,))
    h.run(*graph, "--include-secret", "--out", str(h.work / "no-dir" / "z.cfg"), expect=(2,))
    assert not [p for p in h.work.rglob("*") if p.is_file()]  # nothing written on an error
    h.assert_clean()


# --------------------------------------------------------------------------------------------
# Every command that reaches the tenant, with each way of signing in


@pytest.mark.parametrize("auth", AUTHS)
def test_every_tenant_command_keeps_every_secret_and_token_to_itself(
    hygiene: Hygiene, auth: str, token_prefix: str
) -> None:
    h, sb = hygiene, hygiene.sb
    assert token_prefix == "eyJ"  # the sandbox's tokens are JWTs: the token search below is not vacuous
    n = AUTHS.index(auth)
    mailbox = ("support@contoso.com", "sales@contoso.com", "billing@contoso.com")[n]
    rows = [f"queue{i:04d}@contoso.com" for i in range(1 + 4 * n, 5 + 4 * n)]
    manifest = write_manifest(h.inputs / "manifest.csv", rows)
    one = ("--inbound", "imap", "--outbound", "smtp")

    r = h.run("doctor", "-f", "json", "-v", auth=auth)
    signed_in = next(c for c in json.loads(r.stdout)["checks"] if c["id"] == "sign-in")["what"]
    assert ("(certificate)" if auth == "pfx" else "(secret)") in signed_in  # the sign-in meant was used
    assert "esj_provision.microsoft.http" in r.stderr  # --verbose really logged requests
    h.run("doctor", auth=auth)
    h.run("doctor", "--esj-app", sb.esj_app_id, "--inbound", "graph", "--outbound", "graph", "-v", auth=auth,
          expect=(0, 1))

    h.run("onboard", mailbox, "--trustee", TRUSTEE, *one, "--dry-run", "--as-powershell", "-v", auth=auth)
    h.run("onboard", mailbox, "--trustee", TRUSTEE, *one, "--dry-run", "-f", "json", auth=auth)
    h.run("onboard", mailbox, "--trustee", TRUSTEE, *one, "-v", auth=auth)  # writes: journalled
    h.run("onboard", mailbox, "--trustee", TRUSTEE, *one, "-f", "json", "--out", str(h.work / "onboard.cfg"),
          auth=auth)
    h.run("onboard", mailbox, "--trustee", TRUSTEE, *one, "-f", "cfg", "--auto-response", auth=auth)
    h.run("onboard", mailbox, "--trustee-app", sb.esj_app_id, "--scope-esj-app", sb.esj_app_id,
          "--inbound", "graph", "--outbound", "graph", "-f", "json", "-v", auth=auth)

    for fmt in ("table", "json", "csv", "markdown"):
        h.run("audit", str(manifest), "-f", fmt, auth=auth, expect=(0, 3))
        h.run("audit", str(manifest), "-f", fmt, "--out", str(h.work / f"audit.{fmt}"), "--esj-app", sb.esj_app_id,
              "-v", auth=auth, expect=(0, 3))

    h.run("bulk", str(manifest), "--dry-run", "-f", "json", auth=auth)
    h.run("bulk", str(manifest), "--out-dir", str(h.work / "bulk-out"), "-f", "json", "-v", auth=auth)
    h.run("bulk", str(manifest), auth=auth)  # table, default out dir (in cwd), resumes from the journal

    h.run("offboard", mailbox, "--trustee", TRUSTEE, "--dry-run", "--as-powershell", "-v", auth=auth)
    h.run("offboard", mailbox, "--trustee", TRUSTEE, "-f", "json", "-v", auth=auth)
    h.run("offboard", mailbox, "--trustee", TRUSTEE, auth=auth)
    h.run("offboard", mailbox, "--trustee-app", sb.esj_app_id, "-f", "json", auth=auth)

    # Grants outside the manifest: found, listed per trustee, pruned (journalled).
    for fmt in ("table", "json", "csv", "markdown"):
        h.run("audit", str(manifest), "--unlisted", "-f", fmt, "-v", auth=auth, expect=(0, 3))
    h.run("audit", "--trustee", TRUSTEE, "-f", "json", "-v", auth=auth)
    h.run("audit", "--trustee", sb.esj_app_id, auth=auth)
    h.run("bulk", str(manifest), "--prune", "--dry-run", "--as-powershell", "-v", auth=auth)
    h.run("bulk", str(manifest), "--prune", "-f", "json", "-v", auth=auth)

    written = {p.relative_to(h.work).as_posix() for p in h.work.rglob("*") if p.is_file()}
    assert {"journal.jsonl", "onboard.cfg", "audit.csv", "audit.table", "bulk-out/results.jsonl"} <= written, written
    assert any(p.startswith("esj-provision-out/") for p in written), written
    journal = (h.work / "journal.jsonl").read_text()
    assert '"event": "intent"' in journal and '"event": "result"' in journal  # writes were journalled
    assert mode_of(h.work / "journal.jsonl") == 0o600
    loggers = {rec.name.split(".")[0] for rec in h.caplog.records}
    assert {"esj_provision", "azure", "msal", "httpx"} <= loggers, loggers  # the logs searched are real
    assert h.assert_clean() > 40


def test_a_pem_certificate_and_a_dotenv_secret_leak_nothing(hygiene: Hygiene, monkeypatch: pytest.MonkeyPatch) -> None:
    h = hygiene
    r = h.run("doctor", "-f", "json", "-v", auth="pem")
    assert "(certificate)" in r.stdout
    # A PFX password left set for a PEM whose key is not encrypted: a clean error, not a traceback.
    r = h.run("doctor", "-v", auth="pem", env={"AZURE_CLIENT_CERTIFICATE_PASSWORD": PFX_PASSWORD}, expect=(1,))
    assert "not encrypted" in r.stdout
    h.run("onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp",
          auth="pem", env={"AZURE_CLIENT_CERTIFICATE_PASSWORD": PFX_PASSWORD}, expect=(1,))
    # The secret from ./.env (the other documented source); the .env itself is the user's input.
    monkeypatch.chdir(h.inputs)
    (h.inputs / ".env").write_text(f"AZURE_CLIENT_SECRET='{CLIENT_SECRET}'\n")
    r = h.run("doctor", "-f", "json", "-v", auth="secret", env={"AZURE_CLIENT_SECRET": None})
    assert "(secret)" in r.stdout
    h.assert_clean()


# --------------------------------------------------------------------------------------------
# Error paths


@pytest.mark.parametrize("how", ["environment", "file"])
def test_a_wrong_secret_is_explained_without_showing_it(hygiene: Hygiene, how: str) -> None:
    h = hygiene
    wrong_file = h.inputs / "wrong.txt"
    wrong_file.write_text(WRONG_SECRET)
    env = {"AZURE_CLIENT_SECRET": WRONG_SECRET} if how == "environment" else {"AZURE_CLIENT_SECRET": None}
    flags = ("--client-secret-file", str(wrong_file)) if how == "file" else ()
    manifest = write_manifest(h.inputs / "m.csv", ["queue0019@contoso.com"])

    r = h.run("onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp",
              "-v", *flags, env=env, expect=(1,))
    assert "AADSTS7000215" in r.stderr and "error:" in r.stderr
    r = h.run("doctor", "-f", "json", "-v", *flags, env=env, expect=(1,))
    assert "AADSTS7000215" in r.stdout
    h.run("doctor", *flags, env=env, expect=(1,))
    h.run("offboard", "support@contoso.com", "--trustee", TRUSTEE, *flags, env=env, expect=(1,))
    h.run("bulk", str(manifest), "--out-dir", str(h.work / "out"), "-f", "json", "-v", *flags, env=env, expect=(1,))
    h.run("audit", str(manifest), "-f", "json", "-v", *flags, env=env, expect=(1,))
    h.assert_clean()


@pytest.mark.parametrize("password", [WRONG_PFX_PASSWORD, None], ids=["wrong", "missing"])
def test_a_wrong_pfx_password_is_a_clean_error_without_showing_it(hygiene: Hygiene, password: str | None) -> None:
    h = hygiene
    env = {"AZURE_CLIENT_CERTIFICATE_PASSWORD": password}
    r = h.run("onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp",
              "-v", auth="pfx", env=env, expect=(1,))
    assert r.stderr.startswith("error:") and "certificate" in r.stderr
    r = h.run("doctor", "-f", "json", "-v", auth="pfx", env=env, expect=(1,))
    assert "certificate" in r.stdout
    h.run("doctor", auth="pfx", env=env, expect=(1,))
    manifest = write_manifest(h.inputs / "m.csv", ["queue0019@contoso.com"])
    h.run("bulk", str(manifest), "--out-dir", str(h.work / "out"), auth="pfx", env=env, expect=(1,))
    h.run("audit", str(manifest), auth="pfx", env=env, expect=(1,))
    h.assert_clean()


@pytest.mark.parametrize("auth", ["secret", "pfx"])
def test_a_bad_manifest_and_bad_configuration_leak_nothing(hygiene: Hygiene, auth: str) -> None:
    h = hygiene
    bad = h.inputs / "bad.csv"
    bad.write_text(
        "mailbox,trustee,inbound,outbound\n"
        "not-an-address,esj-svc@contoso.com,imap,smtp\n"
        "sales@contoso.com,esj-svc@contoso.com,pop3,carrier-pigeon\n"
        "sales@contoso.com,esj-svc@contoso.com,imap,smtp\n"
    )
    r = h.run("bulk", str(bad), "--out-dir", str(h.work / "out"), "-v", auth=auth, expect=(2,))
    assert "line 2" in r.stderr
    h.run("audit", str(bad), "-f", "json", "-v", auth=auth, expect=(2,))
    h.run("bulk", str(h.inputs / "missing.csv"), auth=auth, expect=(1, 2))
    # Configuration errors: no tenant; a certificate path that does not exist; a missing secret file.
    h.run("doctor", auth=auth, env={"AZURE_TENANT_ID": None}, expect=(1, 2))
    h.run("doctor", auth=auth, env={"AZURE_CLIENT_CERTIFICATE_PATH": str(h.inputs / "nope.pfx")}, expect=(1, 2))
    h.run("doctor", "--client-secret-file", str(h.inputs / "nope.txt"), auth=auth, expect=(1, 2))
    h.assert_clean()


@pytest.mark.parametrize("auth", ["secret", "pfx"])
def test_exchange_403_is_reported_without_leaking(hygiene: Hygiene, auth: str) -> None:
    h = hygiene
    with Sandbox(client_secret=CLIENT_SECRET, pfx_password=PFX_PASSWORD, mailboxes=2) as box:
        box.mutate("set-directory-roles", app=box.client_id, roles=[])  # keeps Exchange.ManageAsApp: 403
        manifest = write_manifest(h.inputs / "m.csv", ["queue0001@contoso.com", "queue0002@contoso.com"])
        r = h.run("onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp",
                  "-v", auth=auth, sb=box, expect=(1,))
        assert "403" in r.stderr
        r = h.run("doctor", "-f", "json", "-v", auth=auth, sb=box, expect=(1,))
        assert "403" in r.stdout
        h.run("audit", str(manifest), "-f", "json", "-v", auth=auth, sb=box, expect=(1,))
        h.run("bulk", str(manifest), "--out-dir", str(h.work / "out"), "-f", "json", "-v", auth=auth, sb=box,
              expect=(1, 4))
        h.run("offboard", "support@contoso.com", "--trustee", TRUSTEE, "-f", "json", auth=auth, sb=box, expect=(1,))
    h.assert_clean()


# --------------------------------------------------------------------------------------------
# No secret as a flag value


def test_no_tenant_command_takes_a_secret_as_a_flag_value() -> None:
    """Only paths to secret files: a value on the command line lands in shell history and `ps`."""
    group = typer.main.get_command(app)
    assert set(TENANT_COMMANDS) | {"emit"} <= set(group.commands)  # type: ignore[attr-defined]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        if name == "sandbox":
            continue  # the stand-in tenant's own throwaway secret (see the sandbox test below)
        for param in command.params:
            for opt in param.opts:
                if any(word in opt for word in ("secret", "password", "token", "key")):
                    assert opt.endswith("-file") or getattr(param, "is_flag", False), (name, opt)


@pytest.mark.parametrize("command", [*TENANT_COMMANDS, "emit"])
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_secret_given_as_a_flag_is_refused_and_not_echoed(
    hygiene: Hygiene, command: str, form: str
) -> None:
    h = hygiene
    positional = {"onboard": ["support@contoso.com"], "offboard": ["support@contoso.com"],
                  "emit": ["support@contoso.com"], "bulk": ["m.csv"], "audit": ["m.csv"], "doctor": []}[command]
    for flag in ("--client-secret", "--secret", "--pfx-password", "--certificate-password"):
        given = [f"{flag}={WRONG_SECRET}"] if form == "equals" else [flag, WRONG_SECRET]
        r = h.run(command, *positional, *given, expect=(2,))
        assert "no such option" in r.stderr, r.stderr
    h.assert_clean()


# --------------------------------------------------------------------------------------------
# Objects: repr, str and exceptions


def test_settings_tokens_options_and_errors_never_show_a_secret(sb: Sandbox, tmp_path: Path) -> None:
    import asyncio

    from esj_provision.clouds import get_cloud
    from esj_provision.esj.options import EsjRequest, Profile, build_options
    from esj_provision.microsoft.credentials import Token, TokenProvider
    from esj_provision.models import Inbound, Outbound

    env = {**sb.env, "AZURE_CLIENT_SECRET": CLIENT_SECRET, "AZURE_CLIENT_CERTIFICATE_PASSWORD": PFX_PASSWORD}
    settings = load_settings(environ=env, dotenv_path=tmp_path / "none")
    assert set(settings.secrets) == {CLIENT_SECRET, PFX_PASSWORD}  # they were read...
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert leaks(shown) == [], shown  # ...and are never shown

    token = Token.issued("eyJhbGciOiJSUzI1NiJ9.eyJyb2xlcyI6W119.c2lnbmF0dXJlLXZhbHVl", time.time() + 3600, time.time())
    assert leaks(repr(token)) == [] and leaks(str(token)) == []

    request = EsjRequest(mailbox="support@contoso.com", trustee=TRUSTEE, inbound=Inbound.GRAPH,
                         outbound=Outbound.GRAPH, cloud=get_cloud("global"), secret=ESJ_SECRET)
    options = build_options(request, Profile())
    assert options.contains_secret
    for shown in (repr(request), repr(options), str(options.options), repr(list(options.options))):
        assert leaks(shown) == [], shown

    errors: list[BaseException] = []
    for bad in (
        {"AZURE_CLIENT_SECRET": WRONG_SECRET},
        {"AZURE_CLIENT_SECRET": CLIENT_SECRET, "AZURE_CLIENT_CERTIFICATE_PATH": str(sb.pfx_path),
         "AZURE_CLIENT_CERTIFICATE_PASSWORD": WRONG_PFX_PASSWORD},
        {"AZURE_CLIENT_SECRET": CLIENT_SECRET, "AZURE_CLIENT_CERTIFICATE_PATH": str(sb.pfx_path),
         "AZURE_CLIENT_CERTIFICATE_PASSWORD": ""},
    ):
        provider = TokenProvider(load_settings(environ={**env, **bad}, dotenv_path=tmp_path / "none"))
        with pytest.raises(EsjProvisionError) as err:
            asyncio.run(provider.get("https://graph.microsoft.com/.default"))
        errors.append(err.value)
    for where in ("AZURE_CLIENT_CERTIFICATE_PATH", "ESJ_PROVISION_CA_BUNDLE"):
        with pytest.raises(EsjProvisionError) as err:
            load_settings(environ={**env, where: str(tmp_path / "missing.pem")}, dotenv_path=tmp_path / "none")
        errors.append(err.value)
    for exc in errors:
        assert isinstance(exc, EsjProvisionError)
        chain = []
        e: BaseException | None = exc
        while e is not None:  # the suppressed context too: a handler may still log it
            chain += [str(e), repr(e), json.dumps(e.to_dict()) if isinstance(e, EsjProvisionError) else ""]
            e = e.__cause__ or e.__context__
        text = "\n".join([*chain, *traceback.format_exception(exc)])
        assert leaks(text) == [], text


# --------------------------------------------------------------------------------------------
# Real processes: an unexpected exception's traceback, and a verbose run as a user sees it

_FORCE_CRASH = """
import sys, httpx
async def crash(self, request):
    raise RuntimeError("forced by test_secret_hygiene after sign-in, with the bearer token set")
httpx.AsyncHTTPTransport.handle_async_request = crash
from esj_provision.cli import main
sys.argv = ["esj-provision", *sys.argv[1:]]
main()
"""


def _process_env(sb: Sandbox, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}
    env.update(sb.env)
    env.update(ESJ_PROVISION_ESJ_CLIENT_SECRET=ESJ_SECRET, ESJ_PROVISION_JOURNAL=str(tmp_path / "journal.jsonl"),
               AZURE_CLIENT_CERTIFICATE_PASSWORD=PFX_PASSWORD, PYTHONWARNINGS="default", COLUMNS="80")
    env.update(extra)
    return env


@pytest.mark.parametrize("auth", ["secret", "pfx"])
def test_an_unexpected_exception_traceback_shows_no_secret(sb: Sandbox, tmp_path: Path, auth: str) -> None:
    extra = {"AZURE_CLIENT_CERTIFICATE_PATH": str(sb.pfx_path)} if auth == "pfx" else {}
    for debug in ("", "1"):  # one line by default; the traceback with ESJ_PROVISION_DEBUG=1
        p = subprocess.run(
            [sys.executable, "-c", _FORCE_CRASH, "onboard", "support@contoso.com", "--trustee", TRUSTEE,
             "--inbound", "imap", "--outbound", "smtp", "-v"],
            env=_process_env(sb, tmp_path, ESJ_PROVISION_DEBUG=debug, **extra), cwd=tmp_path, capture_output=True,
            text=True, timeout=60,
        )
        assert p.returncode == 1 and "forced by test_secret_hygiene" in p.stderr, p.stderr
        assert ("Traceback" in p.stderr) == bool(debug), p.stderr
        assert leaks(p.stdout + p.stderr) == [], p.stderr
    journal = tmp_path / "journal.jsonl"
    assert leaks(journal.read_text() if journal.exists() else "") == []


def test_a_verbose_run_in_a_real_process_leaks_nothing(sb: Sandbox, tmp_path: Path) -> None:
    """Everything a real process writes to fd 1 and 2: warnings, logging's last resort, libraries."""
    for extra in ({}, {"AZURE_CLIENT_CERTIFICATE_PATH": str(sb.pfx_path)}):
        p = subprocess.run(
            [sys.executable, "-m", "esj_provision", "doctor", "-v"],
            env=_process_env(sb, tmp_path, **extra), cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert "esj_provision.microsoft.http" in p.stderr
        assert leaks(p.stdout + p.stderr) == [], p.stdout + p.stderr


# --------------------------------------------------------------------------------------------
# esj-provision sandbox: its own secret goes to the 0600 env file only


def test_the_sandbox_command_keeps_its_secret_to_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "sandbox.env"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(CLIENT_SECRET + "\n")
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}
    env["ESJ_SANDBOX_PFX_PASSWORD"] = PFX_PASSWORD
    proc = subprocess.Popen(
        [sys.executable, "-m", "esj_provision", "sandbox", "--env-file", str(env_file), "--client-secret-file",
         str(secret_file), "--max-runtime", "30", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while not env_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the env file never appeared"
            time.sleep(0.05)
        assert mode_of(env_file) == 0o600
        text = env_file.read_text()
        assert CLIENT_SECRET in text and PFX_PASSWORD not in text
        served = dict(line.split("=", 1) for line in text.splitlines())
        url, tenant = served["AZURE_AUTHORITY_HOST"], served["AZURE_TENANT_ID"]
        ca = ssl.create_default_context(cafile=served["ESJ_PROVISION_CA_BUNDLE"])
        with httpx.Client(verify=ca, timeout=10) as http:
            for secret, status in ((CLIENT_SECRET, 200), (WRONG_SECRET, 401)):  # the verbose log sees both
                r = http.post(f"{url}/{tenant}/oauth2/v2.0/token", data={
                    "grant_type": "client_credentials", "client_id": served["AZURE_CLIENT_ID"],
                    "client_secret": secret, "scope": "https://graph.microsoft.com/.default"})
                assert r.status_code == status
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not env_file.exists()  # removed at stop
    # The banner names where the secret is, never the secret (not even the sandbox's own throwaway one).
    assert f"# AZURE_CLIENT_SECRET=(in --env-file {env_file})" in out.splitlines()
    assert leaks(out) == [], out
    assert leaks(err) == [], err  # the request log: no secret, no wrong secret, no token
