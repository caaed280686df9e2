"""``esj-provision audit`` end to end: the real CLI against the sandbox tenant, over HTTPS.

A manifest is onboarded with ``bulk`` (throttling and faults on), the audit finds it in sync, then
drift is introduced in the sandbox behind the tool's back (both in the module fixture) and the audit must find exactly that
drift and nothing else, in every format. A row that cannot be read is ``unknown`` and is never
reported as in sync (exit 1).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.sandbox import Sandbox
from esj_provision.sandbox.tenant import ESJ_APP_ID

TRUSTEE = "esj-svc@contoso.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}
PAIRS = [(i, o) for i in ("imap", "ews", "graph") for o in ("smtp", "ews", "graph")]
COLUMNS = ["line", "mailbox", "trustee", "inbound", "outbound", "full_access", "send_as", "status", "drift", "errors"]


def q(i: int) -> str:
    return f"queue{i:04d}@contoso.com"


# Rows 2..41: queue0001..queue0040 delegated to the service account; rows 42..45: queue0041..0044,
# each delegated to its own account (queue0071..0074, enabled as users), so that drift on one
# trustee touches one row only.
OWN_TRUSTEE = {q(41): q(71), q(42): q(72), q(43): q(73), q(44): q(74)}
ROWS: list[tuple[str, str, str, str, bool]] = []
for _i in range(1, 45):
    _mbx = q(_i)
    _in, _out = PAIRS[_i % len(PAIRS)]
    if _mbx == q(42):
        _out = "smtp"  # its trustee's SMTP AUTH is switched off below: drift
    if _mbx == q(43):
        _out = "ews"  # its trustee's SMTP AUTH is switched off too, but it does not send over SMTP
    ROWS.append((_mbx, OWN_TRUSTEE.get(_mbx, TRUSTEE), _in, _out, _i != 20))
LINE = {mbx: n for n, (mbx, *_) in enumerate(ROWS, start=2)}

# What is changed in the tenant behind the tool's back, and the drift the audit must report.
DRIFT: dict[str, list[str]] = {
    q(2): ["FullAccess missing"],
    q(3): ["SendAs missing"],
    q(4): ["mailbox no longer shared"],
    q(5): ["mailbox inactive or not in Exchange Online"],
    q(41): ["trustee disabled"],
    q(42): ["SMTP AUTH disabled for the trustee"],
}


def introduce_drift(sb: Sandbox) -> None:
    sb.mutate("remove-grant", mailbox=q(2), trustee=TRUSTEE, right="FullAccess")
    sb.mutate("remove-grant", mailbox=q(3), trustee=TRUSTEE, right="SendAs")
    sb.mutate("set-recipient-type", mailbox=q(4), type="UserMailbox")
    sb.mutate("set-rest-enabled", mailbox=q(5), enabled=False)
    sb.mutate("set-account-enabled", user=q(71), enabled=False)
    sb.mutate("set-smtp-auth", mailbox=q(72), disabled=True)
    # Changes that are not drift for this manifest: an extra delegate, SMTP AUTH off for a trustee
    # whose row does not send over SMTP, a grant on a mailbox outside the manifest.
    sb.mutate("add-grant", mailbox=q(6), trustee="adele@contoso.com", right="FullAccess")
    sb.mutate("set-smtp-auth", mailbox=q(73), disabled=True)
    sb.mutate("add-grant", mailbox=q(60), trustee=TRUSTEE, right="FullAccess")


@dataclass
class Tenant:
    sb: Sandbox
    dir: Path
    manifest: Path
    in_sync: tuple[Result, dict[str, Any], list[dict[str, Any]]] | None = None  # the audit before any drift

    def audit(self, *args: str) -> Result:
        return CliRunner().invoke(app, ["audit", str(self.manifest), *args], env=self.sb.env, catch_exceptions=False)

    def audit_json(self, *args: str) -> tuple[Result, dict[str, Any]]:
        r = self.audit("--format", "json", *args)
        return r, (json.loads(r.stdout) if r.stdout.strip() else {})


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    tmp = tmp_path_factory.mktemp("audit")
    manifest = tmp / "manifest.csv"
    manifest.write_text(
        "mailbox,trustee,inbound,outbound,send_as\n"
        + "".join(f"{m},{t},{i},{o},{'yes' if s else 'no'}\n" for m, t, i, o, s in ROWS),
        encoding="utf-8",
    )
    with Sandbox(mailboxes=80, throttle_rps=150, fault_rate=0.02, seed=5, latency_ms="1-5") as sb:
        for account in OWN_TRUSTEE.values():
            sb.mutate("set-account-enabled", user=account, enabled=True)
        sb.mutate("set-smtp-auth", disabled=False)  # the tenant allows SMTP AUTH: SMTP rows are in sync
        # ... and EWS for the ESJ app (EWS rows' states are tested in test_ews_e2e.py).
        sb.mutate("set-ews-enabled", enabled=True)
        sb.mutate("set-ews-allowed-apps", apps=[ESJ_APP_ID])
        r = CliRunner().invoke(
            app,
            ["bulk", str(manifest), "--out-dir", str(tmp / "out")],
            env={**sb.env, "ESJ_PROVISION_JOURNAL": str(tmp / "journal.jsonl")},
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.stderr + r.stdout
        t = Tenant(sb, tmp, manifest)
        mark = len(sb.calls())
        r, report = t.audit_json()
        t.in_sync = (r, report, sb.calls()[mark:])
        introduce_drift(sb)
        yield t


def by_mailbox(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["mailbox"]: row for row in report["rows"]}


def test_freshly_onboarded_tenant_is_in_sync_exit_0(tenant: Tenant) -> None:
    assert tenant.in_sync is not None
    r, report, calls = tenant.in_sync
    assert r.exit_code == 0, r.stderr + r.stdout
    assert report["summary"]["rows"] == len(ROWS) == report["summary"]["in_sync"]
    for mbx, trustee, _, _, send_as in ROWS:
        row = by_mailbox(report)[mbx]
        assert (row["line"], row["trustee"], row["status"], row["drift"], row["errors"]) == (
            LINE[mbx], trustee, "in-sync", [], [])  # fmt: skip
        assert (row["full_access"], row["send_as"]) == ("present", "present" if send_as else "-")
    assert calls and [c for c in calls if c.get("write")] == []  # read-only
    assert "audit: 44 rows, 44 in sync, 0 drift, 0 unknown" in r.stderr


def test_audit_finds_exactly_the_drift_introduced_and_only_that(tenant: Tenant) -> None:
    mark = len(tenant.sb.calls())
    r, report = tenant.audit_json()
    assert r.exit_code == 3, r.stderr + r.stdout
    rows = by_mailbox(report)
    assert {m: row["drift"] for m, row in rows.items() if row["status"] != "in-sync"} == DRIFT
    assert {row["status"] for m, row in rows.items() if m in DRIFT} == {"drift"}
    assert all(row["errors"] == [] for row in rows.values())
    assert (rows[q(2)]["full_access"], rows[q(2)]["send_as"]) == ("absent", "present")
    assert (rows[q(3)]["full_access"], rows[q(3)]["send_as"]) == ("present", "absent")
    assert rows[q(5)]["full_access"] == "n/a"  # the mailbox is out of reach: its grants cannot be read
    s = report["summary"]
    assert (s["rows"], s["in_sync"], s["drift"], s["unknown"]) == (44, 44 - len(DRIFT), len(DRIFT), 0)
    assert [c for c in tenant.sb.calls()[mark:] if c.get("cmdlet") in WRITES or c.get("write")] == []


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "table"])
def test_every_format_says_the_same(tenant: Tenant, fmt: str) -> None:
    out = tenant.dir / f"report.{fmt}"
    r = tenant.audit("--format", fmt, "--out", str(out))
    assert r.exit_code == 3, r.stderr
    assert f"wrote {out}" in r.stderr and r.stdout == ""
    text = out.read_text(encoding="utf-8")
    status = {m: ("drift" if m in DRIFT else "in-sync") for m, *_ in ROWS}
    if fmt == "json":
        assert {m: row["status"] for m, row in by_mailbox(json.loads(text)).items()} == status
    elif fmt == "csv":
        table = list(csv.reader(io.StringIO(text)))
        assert table[0] == COLUMNS and len(table) == len(ROWS) + 1
        rows = {x[1]: dict(zip(COLUMNS, x)) for x in table[1:]}
        assert {m: x["status"] for m, x in rows.items()} == status
        assert {m: x["drift"] for m, x in rows.items() if x["drift"]} == {m: "; ".join(d) for m, d in DRIFT.items()}
        assert [int(x[0]) for x in table[1:]] == sorted(LINE.values())
    elif fmt == "markdown":
        lines = text.splitlines()
        assert lines[0] == "# ESJ shared-mailbox audit"
        assert f"44 rows: {44 - len(DRIFT)} in sync, {len(DRIFT)} with drift, 0 unknown." in lines
        table = [[c.strip() for c in x.strip().strip("|").split("|")] for x in lines if x.startswith("| ")]
        assert table[0] == COLUMNS
        rows = {x[1]: dict(zip(COLUMNS, x)) for x in table[1:]}
        assert {m: x["status"] for m, x in rows.items()} == status
    else:
        cells = {x[2]: x for x in ([c.strip() for c in line.split("│")] for line in text.splitlines()) if len(x) > 7}
        assert {m: x[6] for m, x in cells.items() if m in status} == status
        assert "SMTP AUTH disabled for the trustee" in text and "trustee disabled" in text
    # The same report on stdout when there is no --out.
    r2 = tenant.audit("--format", fmt)
    assert r2.exit_code == 3
    if fmt != "table":
        assert _strip_timing(r2.stdout) == _strip_timing(text)


def _strip_timing(text: str) -> str:
    """Reports carry elapsed seconds and call counts, which differ from run to run."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    data["summary"].pop("elapsed_s")
    data["summary"].pop("calls")
    return json.dumps(data)


def test_a_row_that_cannot_be_read_is_unknown_never_in_sync_exit_1(tenant: Tenant) -> None:
    target = q(10)
    # Exchange answers 503 to every read of that mailbox's permissions (Retry-After: 0 keeps it quick).
    tenant.sb.queue_fault(
        "503", service="exchange", cmdlet="Get-MailboxPermission", identity=target, count=1000, retry_after=0
    )
    try:
        r, report = tenant.audit_json()
    finally:
        httpx.delete(f"{tenant.sb.url}/_sandbox/faults", verify=tenant.sb.ssl_context())
    assert r.exit_code == 1, r.stderr + r.stdout
    rows = by_mailbox(report)
    assert rows[target]["status"] == "unknown" and rows[target]["full_access"] == "unknown"
    assert rows[target]["errors"] and "503" in rows[target]["errors"][0]
    assert rows[target]["send_as"] == "present"  # what could be read is still reported
    assert {m: row["drift"] for m, row in rows.items() if row["status"] == "drift"} == DRIFT
    s = report["summary"]
    assert (s["in_sync"], s["drift"], s["unknown"]) == (44 - len(DRIFT) - 1, len(DRIFT), 1)
    assert "1 unknown" in r.stderr
    # Afterwards the row reads again: the audit is back to drift only.
    r, report = tenant.audit_json()
    assert r.exit_code == 3 and by_mailbox(report)[target]["status"] == "in-sync"


def test_invalid_manifest_makes_no_call_exit_2(tenant: Tenant, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "mailbox,trustee,inbound,outbound\n"
        f"{q(1)},{TRUSTEE},imap,smtp\n"
        f"{q(2)},{TRUSTEE},imap,telnet\n"
        f"{q(3)},{q(3)},imap,smtp\n",
        encoding="utf-8",
    )
    mark = len(tenant.sb.calls())
    out = tmp_path / "report.json"
    r = CliRunner().invoke(app, ["audit", str(bad), "--out", str(out)], env=tenant.sb.env, catch_exceptions=False)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: manifest") and "  line 3: unknown outbound protocol 'telnet'" in r.stderr
    assert "  line 4: the trustee is the shared mailbox itself" in r.stderr
    assert tenant.sb.calls()[mark:] == [] and not out.exists()


def test_out_naming_a_directory_is_refused_before_any_call(tenant: Tenant, tmp_path: Path) -> None:
    mark = len(tenant.sb.calls())
    r = tenant.audit("--format", "json", "--out", str(tmp_path))
    assert r.exit_code == 2 and r.stderr == f"error: cannot write {tmp_path}: it is a directory\n"
    assert tenant.sb.calls()[mark:] == []  # refused up front, not after reading the whole tenant


def test_an_esj_app_that_cannot_be_read_is_named_in_the_summary_exit_1(tenant: Tenant) -> None:
    r, report = tenant.audit_json("--esj-app", "8b0a78a1-80fc-4e5e-a6ad-3e190a461186")
    assert r.exit_code == 1
    assert report["summary"]["apps_unknown"] == 1 and report["summary"]["unknown"] == 0
    assert r.stderr.rstrip().endswith(", 1 ESJ app(s) unknown"), r.stderr  # why the exit status is 1
