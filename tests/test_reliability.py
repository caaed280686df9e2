"""Reliability: bulk runs under injected faults, killed and resumed, and CLI argument soup.

* **Faults** (sandbox fault injection, mid-run): throttling storms, 503/504, connection resets,
  writes committed before their 504, tokens expiring or revoked mid-run. Every run must end with
  the tenant exactly in the desired state, each delegation applied exactly once (counted from the
  sandbox's own call log), and a complete journal (no intent without an outcome).
* **Crash and resume**: ``python -m esj_provision bulk`` as a subprocess, SIGKILLed at seeded
  random points (once the journal holds K results), then re-run to completion: same end state as
  an uninterrupted run, no delegation applied twice, the killed runs' in-flight writes reconciled.
* **Argument soup** (hypothesis): any arguments to bulk/audit/onboard either work or exit 1/2 with
  an ``error:`` line (Typer's own usage errors too), never a traceback, and nothing
  is written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import logger_restored
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sandbox_fixtures import Later
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.provision.journal import open_intents, read_journal
from esj_provision.sandbox import ESJ_APP_ID, Sandbox
from esj_provision.sandbox.tenant import Tenant

TRUSTEE = "esj-svc@contoso.com"
TRUSTEE_UPN = "esj-svc@contoso.onmicrosoft.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}
OP_CMDLET = {"add-full-access": "Add-MailboxPermission", "add-send-as": "Add-RecipientPermission"}
READ_CMDLET = {"add-full-access": "Get-MailboxPermission", "add-send-as": "Get-RecipientPermission"}
PAIRS = [(i, o) for i in ("imap", "ews", "graph") for o in ("smtp", "ews", "graph")]


# --------------------------------------------------------------------------- helpers


def q(i: int) -> str:
    return f"queue{i:04d}@contoso.com"


def write_manifest(path: Path, first: int, count: int) -> list[tuple[str, bool]]:
    """``count`` rows from queue<first>, mixed protocols, every 6th without Send As:
    returns (mailbox, send_as) per row."""
    rows, lines = [], ["mailbox,trustee,inbound,outbound,send_as"]
    for i in range(first, first + count):
        inbound, outbound = PAIRS[i % len(PAIRS)]
        send_as = i % 6 != 0
        rows.append((q(i), send_as))
        lines.append(f"{q(i)},{TRUSTEE},{inbound},{outbound},{'true' if send_as else 'false'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def wanted(rows: list[tuple[str, bool]]) -> Counter[tuple[str, str, str]]:
    want: Counter[tuple[str, str, str]] = Counter()
    for mailbox, send_as in rows:
        want[("Add-MailboxPermission", mailbox, TRUSTEE_UPN)] = 1
        if send_as:
            want[("Add-RecipientPermission", mailbox, TRUSTEE_UPN)] = 1
    return want


def applied_writes(calls: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """Writes the tenant really applied, per (cmdlet, Identity, User/Trustee)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for c in calls:
        if c.get("cmdlet") in WRITES and c.get("applied"):
            p = c.get("parameters") or {}
            counts[(c["cmdlet"], str(p.get("Identity")).lower(), str(p.get("User") or p.get("Trustee")).lower())] += 1
    return counts


def tenant_delegations(sb: Sandbox) -> set[tuple[str, str, str]]:
    t = Tenant.from_json(sb.state())
    out = set()
    for rid, aces in t.mailbox_permissions.items():
        mbx = t.find_recipient(rid)
        assert mbx is not None
        out |= {(mbx.mail, "FullAccess", t.render(a.sid)) for a in aces if "FullAccess" in a.rights and not a.deny}
    for rid, sids in t.recipient_permissions.items():
        mbx = t.find_recipient(rid)
        assert mbx is not None
        out |= {(mbx.mail, "SendAs", t.render(sid)) for sid in sids}
    return out


def desired_state(baseline: set[tuple[str, str, str]], rows: list[tuple[str, bool]]) -> set[tuple[str, str, str]]:
    out = set(baseline)
    for mailbox, send_as in rows:
        out.add((mailbox, "FullAccess", TRUSTEE_UPN))
        if send_as:
            out.add((mailbox, "SendAs", TRUSTEE_UPN))
    return out


def assert_journal_complete(path: Path) -> list[dict[str, Any]]:
    """Every intent is followed by a result or a reconciliation of its key; none is left open."""
    records = list(read_journal(path))
    closed_at: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if rec.get("event") in {"result", "reconciled"} and rec.get("key"):
            closed_at.setdefault(rec["key"], []).append(i)
    for i, rec in enumerate(records):
        if rec.get("event") == "intent":
            assert any(j > i for j in closed_at.get(rec["key"], [])), f"intent without outcome: {rec}"
    assert open_intents(path) == {}
    return records


def last_seq(sb: Sandbox) -> int:
    calls = sb.calls()
    return calls[-1]["seq"] if calls else 0


def bulk_in_process(sb: Sandbox, tmp: Path, *extra: str) -> tuple[Result, dict[str, Any]]:
    r = CliRunner().invoke(
        app,
        ["bulk", str(tmp / "m.csv"), "--out-dir", str(tmp / "out"), "--format", "json", *extra],
        env={**sb.env, "ESJ_PROVISION_JOURNAL": str(tmp / "journal.jsonl")},
        catch_exceptions=False,
    )
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    return r, (lines[-1]["summary"] if lines and "summary" in lines[-1] else {})


# --------------------------------------------------------------------------- faults


# Each of these may queue faults at once (the Graph lookups come first) and returns what to
# inject once the run is under way.


def _throttling_storm(sb: Sandbox) -> Callable[[], object]:
    sb.queue_fault("429", service="graph", count=2, retry_after=1)
    return lambda: sb.queue_fault("429", service="exchange", count=10, retry_after=1)


def _service_errors(sb: Sandbox) -> Callable[[], object]:
    def storm() -> None:
        sb.queue_fault("503", service="exchange", count=8)
        sb.queue_fault("504-after-apply", service="exchange", cmdlet="Get-RecipientPermission", count=4)
        sb.queue_fault("503", service="exchange", cmdlet="Add-RecipientPermission", count=3)

    return storm


def _resets(sb: Sandbox) -> Callable[[], object]:
    sb.queue_fault("reset-after-apply", service="graph", count=2)

    def storm() -> None:
        sb.queue_fault("reset-before", service="exchange", cmdlet="Add-MailboxPermission", count=3)
        sb.queue_fault("reset-after-apply", service="exchange", cmdlet="Add-RecipientPermission", count=3)
        sb.queue_fault("reset-before", service="exchange", cmdlet="Get-MailboxPermission", count=3)

    return storm


def _committed_before_504(sb: Sandbox) -> Callable[[], object]:
    def storm() -> None:
        sb.queue_fault("504-after-apply", service="exchange", cmdlet="Add-MailboxPermission", count=5)
        sb.queue_fault("504-after-apply", service="exchange", cmdlet="Add-RecipientPermission", count=5)

    return storm


def _tokens_revoked(sb: Sandbox) -> Callable[[], object]:
    return lambda: sb.mutate("expire-tokens")


# name: (sandbox settings, rows in flight, the fault to inject once the run is under way)
SCENARIOS: dict[str, tuple[dict[str, Any], int, Callable[[Sandbox], Callable[[], object]]]] = {
    "throttling-storm": ({"throttle_rps": 100}, 8, _throttling_storm),
    "503-504": ({"fault_rate": 0.05}, 8, _service_errors),
    "connection-resets": ({}, 8, _resets),
    "write-committed-before-504": ({}, 8, _committed_before_504),
    "tokens-revoked-mid-run": ({}, 8, _tokens_revoked),
    # Both tokens expire while the run goes on (it lasts well over 2 s): renewed before use.
    "tokens-expire-mid-run": ({"token_lifetime": 2, "latency_ms": "40-60"}, 2, lambda sb: lambda: None),
}


SLOW_SCENARIOS = {"throttling-storm", "tokens-expire-mid-run"}  # seconds of Retry-After / token lifetime


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SCENARIOS else n for n in SCENARIOS]
)
def test_faults_mid_run_end_in_the_desired_state_each_delegation_once(name: str, tmp_path: Path) -> None:
    kwargs, concurrency, make_fault = SCENARIOS[name]
    with Sandbox(mailboxes=40, seed=sum(map(ord, name)), **{"latency_ms": "1-5", **kwargs}) as sb:
        rows = write_manifest(tmp_path / "m.csv", 1, 30)
        baseline = tenant_delegations(sb)
        started = time.monotonic()
        # Mid-run, once the transport has measured how fast answers come: after about 90 of the run's
        # 160-odd calls (sign-in, lookups, 4 Exchange calls per row, the listings). (How the pacer
        # recovers from a 429 among the very first requests is tested in test_http.)
        with Later(sb, 90, make_fault(sb)) as later:
            r, summary = bulk_in_process(sb, tmp_path, "--concurrency", str(concurrency))
        elapsed = time.monotonic() - started
        assert later.fired
        assert r.exit_code == 0, r.stderr + r.stdout[-3000:]
        calls = sb.calls()
        assert tenant_delegations(sb) == desired_state(baseline, rows)
        assert applied_writes(calls) == wanted(rows)
        assert (summary["ok"], summary["writes"]) == (30, sum(wanted(rows).values()))
        records = assert_journal_complete(tmp_path / "journal.jsonl")
        faults = Counter(c["fault"] for c in calls if c.get("fault"))
        statuses = Counter(c["status"] for c in calls)
        if name == "throttling-storm":
            assert faults["429"] == 12, faults
        elif name == "503-504":
            assert statuses[503] >= 11 and statuses[504] >= 4, statuses
        elif name == "connection-resets":
            assert faults["reset-before"] == 6 and faults["reset-after-apply"] == 5, faults
        elif name == "write-committed-before-504":
            committed = [c for c in calls if c.get("fault") == "504-after-apply"]
            assert len(committed) == 10 and all(c["applied"] for c in committed)
            ambiguous = {x["key"] for x in records if x["event"] == "ambiguous"}
            assert len(ambiguous) == 10
            assert {x["key"] for x in records if x["event"] == "reconciled" and x["outcome"] == "applied"} == ambiguous
        elif name == "tokens-revoked-mid-run":
            assert statuses[401] > 0 and summary["calls"]["token_requests"] >= 3, (statuses, summary["calls"])
        else:
            assert elapsed > 2.5 and summary["calls"]["token_requests"] >= 4, (elapsed, summary["calls"])
            assert statuses[401] == 0  # renewed before it expired, not after a refusal


@pytest.mark.parametrize("fault", ["503", "reset-before"])
def test_a_write_refused_again_and_again_is_still_applied_once(fault: str, tmp_path: Path) -> None:
    """A write that plainly did not happen (read back: absent) is sent again, more than once if
    Exchange keeps failing it for a moment, like every other call; it must not fail the row."""
    with Sandbox(mailboxes=10) as sb:
        rows = write_manifest(tmp_path / "m.csv", 1, 3)
        sb.queue_fault(fault, service="exchange", cmdlet="Add-MailboxPermission", identity=q(2), count=2)
        r, _ = bulk_in_process(sb, tmp_path)
        assert r.exit_code == 0, r.stdout
        sends = [c for c in sb.calls() if c.get("cmdlet") == "Add-MailboxPermission" and c["identity"] == q(2)]
        assert [c["applied"] for c in sends] == [False, False, True]
        assert applied_writes(sb.calls()) == wanted(rows)
        assert_journal_complete(tmp_path / "journal.jsonl")


@pytest.mark.slow
def test_random_faults_and_throttling_everywhere(tmp_path: Path) -> None:
    """Random faults on every Graph and Exchange call (10%), a tight rate limit, and latency."""
    with Sandbox(mailboxes=60, fault_rate=0.1, throttle_rps=150, seed=99, latency_ms="1-8") as sb:
        rows = write_manifest(tmp_path / "m.csv", 1, 40)
        baseline = tenant_delegations(sb)
        r, summary = bulk_in_process(sb, tmp_path, "--concurrency", "12")
        assert r.exit_code == 0, r.stdout[-3000:]
        assert tenant_delegations(sb) == desired_state(baseline, rows)
        assert applied_writes(sb.calls()) == wanted(rows)
        assert_journal_complete(tmp_path / "journal.jsonl")
        mark = len(sb.calls())
        r, summary = bulk_in_process(sb, tmp_path, "--concurrency", "12")
        assert r.exit_code == 0 and summary["writes"] == 0
        assert not [c for c in sb.calls()[mark:] if c.get("cmdlet") in WRITES]


# --------------------------------------------------------------------------- crash and resume


CRASH_ROWS = 60
CRASH_SANDBOX = {"mailboxes": CRASH_ROWS + 5, "latency_ms": "10-40", "fault_rate": 0.02, "seed": 7}


def _subprocess_env(sb: Sandbox, journal: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_PROVISION_"))}
    return {**base, **sb.env, "ESJ_PROVISION_JOURNAL": str(journal)}


def _bulk_argv() -> list[str]:
    return [sys.executable, "-m", "esj_provision", "bulk", "m.csv", "--out-dir", "out", "--format", "json"]


def _counts(data: bytes) -> tuple[int, int]:
    """(results, open writes) in the journal as it stands, cheaply (no JSON parsing)."""
    intents = data.count(b'"event": "intent"')
    closed = data.count(b'"event": "result"') + data.count(b'"event": "reconciled"')
    return data.count(b'"event": "result"'), intents - closed


def run_and_kill(sb: Sandbox, cwd: Path, journal: Path, kill_at: int) -> bool:
    """Start the bulk run as a real process; SIGKILL it once the journal holds ``kill_at`` results,
    preferably while a write is in flight. False if it finished first."""
    log = (cwd / "stderr.log").open("ab")
    proc = subprocess.Popen(
        _bulk_argv(), cwd=cwd, env=_subprocess_env(sb, journal), stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            data = journal.read_bytes() if journal.exists() else b""
            results, in_flight = _counts(data)
            if results >= kill_at and (in_flight > 0 or results >= kill_at + 30):
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return True
            time.sleep(0.003)
        assert proc.poll() is not None, "the bulk run hung"
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def _results_by_line(path: Path) -> dict[int, tuple[str, str]]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        x = json.loads(line)
        out[x["line"]] = (x["mailbox"], x["status"])
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the same manifest on the same kind of tenant, run once without a crash."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    with Sandbox(**CRASH_SANDBOX) as sb:  # type: ignore[arg-type]
        baseline = tenant_delegations(sb)
        rows = write_manifest(tmp / "m.csv", 1, CRASH_ROWS)
        r, _ = bulk_in_process(sb, tmp)
        assert r.exit_code == 0, r.stdout[-2000:]
        return {
            "state": tenant_delegations(sb),
            "baseline": baseline,
            "rows": rows,
            "cfg": {p.name: p.read_bytes() for p in (tmp / "out").glob("*.cfg")},
            "results": _results_by_line(tmp / "out" / "results.jsonl"),
        }


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_runs_resume_to_the_same_end_state(seed: int, tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    journal = tmp_path / "journal.jsonl"
    with Sandbox(**CRASH_SANDBOX) as sb:  # type: ignore[arg-type]
        assert tenant_delegations(sb) == uninterrupted["baseline"]
        rows = write_manifest(tmp_path / "m.csv", 1, CRASH_ROWS)
        total = sum(wanted(rows).values())
        kill_points = sorted(random.Random(seed).sample(range(1, total - 25), 2))
        killed_runs: list[tuple[str, dict[str, dict[str, Any]], int]] = []  # run id, open intents, seq before
        for k in kill_points:
            before = last_seq(sb)
            assert run_and_kill(sb, tmp_path, journal, k), f"the run finished before {k} results"
            records = list(read_journal(journal))
            run_id = next(x["run"] for x in reversed(records) if x["event"] == "run-start")
            assert "run-end" not in {x["event"] for x in records if x["run"] == run_id}  # really killed
            killed_runs.append((run_id, open_intents(journal), before))

        before_final = last_seq(sb)
        final = subprocess.run(
            _bulk_argv(), cwd=tmp_path, env=_subprocess_env(sb, journal), capture_output=True, text=True, timeout=60
        )
        assert final.returncode == 0, final.stderr + final.stdout[-2000:]
        summary = json.loads(final.stdout.splitlines()[-1])["summary"]
        assert (summary["rows"], summary["ok"], summary["failed"]) == (CRASH_ROWS, CRASH_ROWS, 0)
        assert "Traceback" not in final.stderr

        # The same end state as the uninterrupted run, and no delegation applied twice.
        calls = sb.calls()
        assert tenant_delegations(sb) == uninterrupted["state"] == desired_state(uninterrupted["baseline"], rows)
        assert applied_writes(calls) == wanted(rows)
        assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.cfg")} == uninterrupted["cfg"]
        assert _results_by_line(tmp_path / "out" / "results.jsonl") == uninterrupted["results"]

        # The journal is complete: every intent of a killed run has its outcome, read from the tenant.
        records = assert_journal_complete(journal)
        assert sum(1 for x in records if x["event"] == "run-start") == len(kill_points) + 1
        assert sum(1 for x in records if x["event"] == "run-end") == 1
        left_open = {key for _, still_open, _ in killed_runs for key in still_open}
        assert left_open, "no kill landed while a write was in flight: the test proves nothing"
        reconciled = [x for x in records if x["event"] == "reconciled" and x.get("run_of_intent")]
        _, last_open, _ = killed_runs[-1]
        final_run = records[-1]["run"]
        assert {x["key"] for x in reconciled if x["run"] == final_run} >= set(last_open)
        assert summary["reconciled_in_flight_writes"] == sum(1 for x in reconciled if x["run"] == final_run)
        # ... and what it says happened is what the tenant saw: "applied" exactly when the write had
        # reached the tenant before the reconciling run read that delegation. (Not before that run
        # started: a request already on the wire when its process was killed can land a moment later.)
        start_of = {run: seq for run, _, seq in killed_runs} | {final_run: before_final}
        applied_seq = {
            (c["cmdlet"], str(c["parameters"]["Identity"]).lower(),
             str(c["parameters"].get("User") or c["parameters"].get("Trustee")).lower()): c["seq"]
            for c in calls if c.get("cmdlet") in WRITES and c.get("applied")
        }  # fmt: skip
        for x in reconciled:
            op, mailbox, trustee = x["key"].split("|")
            # The reconciling run's first successful read of it, in its preflight: Full Access per
            # mailbox; Send As from the trustee's organisation-wide listing (no -Identity), or per
            # mailbox when the listing could not answer.
            read = next(
                c["seq"] for c in calls
                if c["seq"] > start_of[x["run"]] and c.get("cmdlet") == READ_CMDLET[op] and c["status"] == 200
                and str(c["parameters"].get("Identity", mailbox)).lower() == mailbox
            )  # fmt: skip
            assert (x["outcome"] == "applied") == (applied_seq[(OP_CMDLET[op], mailbox, trustee)] < read), x


# --------------------------------------------------------------------------- argument soup

SOUP = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def soup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("soup")
    (d / "good.csv").write_text(f"mailbox,trustee,inbound,outbound\n{q(1)},{TRUSTEE},imap,smtp\n", encoding="utf-8")
    (d / "bad.csv").write_text("mailbox,trustee,inbound\nnope,,pop3\n", encoding="utf-8")
    (d / "good.yaml").write_text(f"- mailbox: {q(1)}\n  trustee: {TRUSTEE}\n  inbound: ews\n  outbound: graph\n")
    (d / "bad.yaml").write_text("mailboxes: [1, {mailbox: x}\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "empty.csv").write_bytes(b"")
    (d / "profile.ini").write_text("[literals]\nnot really = a profile\n")
    (d / "secret.txt").write_text("s3cret\n")
    (d / "adir").mkdir()
    return d


PATHS = st.sampled_from(
    ["good.csv", "bad.csv", "good.yaml", "bad.yaml", "binary.bin", "empty.csv", "profile.ini", "secret.txt",
     "adir", "adir/", "missing.csv", "nested/missing/file.json", "/dev/null", "", "-", ".", "..", "out.json"]
)  # fmt: skip
ADDRESSES = st.one_of(
    st.sampled_from(
        [q(1), TRUSTEE, "adele@contoso.com", "not-an-address", "", "@", "a@b", "x@y.z", "ESJ-SVC@CONTOSO.COM"]
    ),
    st.emails().map(str),
    st.text(max_size=12),
)
PROTOCOLS = st.one_of(
    st.sampled_from(["imap", "ews", "graph", "smtp", "IMAP", " Graph ", "pop3", ""]), st.text(max_size=6)
)
FORMATS = st.one_of(
    st.sampled_from(["table", "json", "csv", "markdown", "cfg", "JSON", " table", "xml", ""]), st.text(max_size=6)
)
GUIDS = st.one_of(st.sampled_from([ESJ_APP_ID, "not-a-guid", "", ESJ_APP_ID.upper()]), st.uuids().map(str))
NUMBERS = st.one_of(st.sampled_from(["0", "1", "8", "64", "65", "-1", "abc", "", "1e3"]), st.integers().map(str))
URLS = st.sampled_from(["https://127.0.0.1:9", "http://example.com", "ftp://x", "not a url", "", "https://"])
JUNK = st.one_of(
    st.text(max_size=10), st.sampled_from(["--", "-", "--help", "-h", "--bogus", "--format=json", "-fjson"])
)

COMMON: list[tuple[str, st.SearchStrategy[str] | None]] = [
    (
        "--cloud",
        st.one_of(st.sampled_from(["global", "usgov-high", "usgov-dod", "china", "mars"]), st.text(max_size=5)),
    ),
    (
        "--auth",
        st.sampled_from(["auto", "secret", "certificate", "managed-identity", "workload-identity", "magic", ""]),
    ),
    ("--client-secret-file", PATHS),
    ("--certificate", PATHS),
    ("--ca-bundle", PATHS),
    ("--authority-host", URLS),
    ("--graph-endpoint", URLS),
    ("--exchange-endpoint", URLS),
    ("--verbose", None),
]
OPTIONS: dict[str, list[tuple[str, st.SearchStrategy[str] | None]]] = {
    "bulk": [
        ("--dry-run", None),
        ("--journal", PATHS),
        ("--out-dir", PATHS),
        ("--concurrency", NUMBERS),
        ("--format", FORMATS),
        ("-f", FORMATS),
        ("--profile", PATHS),
        ("--esj-client-id", GUIDS),
        ("--prune", None),
        ("--as-powershell", None),
        ("--include-user-mailboxes", None),
    ],
    "audit": [
        ("--format", FORMATS),
        ("--out", PATHS),
        ("-o", PATHS),
        ("--concurrency", NUMBERS),
        ("--esj-app", GUIDS),
        ("--unlisted", None),
        ("--trustee", st.one_of(ADDRESSES, GUIDS)),
        ("--include-user-mailboxes", None),
    ],
    "onboard": [
        ("--trustee", ADDRESSES),
        ("--trustee-app", GUIDS),
        ("--scope-esj-app", GUIDS),
        ("--inbound", PROTOCOLS),
        ("--outbound", PROTOCOLS),
        ("--send-as", None),
        ("--no-send-as", None),
        ("--auto-response", None),
        ("--dry-run", None),
        ("--as-powershell", None),
        ("--format", FORMATS),
        ("--out", PATHS),
        ("--profile", PATHS),
        ("--esj-client-id", GUIDS),
        ("--journal", PATHS),
    ],
}


@st.composite
def argument_soup(draw: st.DrawFn) -> list[str]:
    """Mostly well-formed command lines with wild values (so most reach esj-provision's own checks),
    sometimes with a missing argument or a stray token (Click's parser answers those)."""
    command = draw(st.sampled_from(sorted(OPTIONS)))
    specs = OPTIONS[command] + COMMON
    args: list[str] = []
    if command == "onboard" and draw(st.integers(0, 9)) > 0:
        args += ["--inbound", draw(PROTOCOLS), "--outbound", draw(PROTOCOLS)]
        args += draw(st.sampled_from([["--trustee", draw(ADDRESSES)], ["--trustee-app", draw(GUIDS)], []]))
    for flag, values in draw(st.lists(st.sampled_from(specs), max_size=6)):
        args.append(flag)
        if values is not None:
            args.append(draw(values))
    if draw(st.integers(0, 9)) > 0:  # the manifest / mailbox, usually first
        positional = draw(ADDRESSES if command == "onboard" else PATHS)
        args.insert(0 if draw(st.booleans()) else draw(st.integers(0, len(args))), positional)
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(0, len(args))), draw(JUNK))
    return [command, *args]



def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@SOUP
@given(args=argument_soup())
def test_any_argument_soup_works_or_fails_cleanly_never_a_traceback(soup_dir: Path, args: list[str]) -> None:
    before = _tree(soup_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(soup_dir)  # no .env here, and relative paths land in the fixture files
        for key in list(os.environ):
            if key.startswith(("AZURE_", "ESJ_PROVISION_", "ESJ_SANDBOX_")) or key == "REQUESTS_CA_BUNDLE":
                mp.delenv(key)
        mp.setenv("XDG_STATE_HOME", str(soup_dir / "state"))  # the default journal, were it ever opened
        with logger_restored():
            r = CliRunner().invoke(app, args)
    output = r.stdout + r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception), output)
    assert "Traceback" not in output, (args, output)
    assert r.exit_code in (0, 1, 2), (args, r.exit_code, output)
    if r.exit_code != 0:
        first = r.stderr.splitlines()[0] if r.stderr.strip() else ""
        # Typer's own parsing errors read like the tool's: one `error:` line (exit 2).
        assert first.startswith("error: ") and len(first) > len("error: "), (args, output)
    else:
        assert any(a in ("--help", "-h") for a in args), (args, output)  # nothing runs without a tenant
    assert _tree(soup_dir) == before, (args, _tree(soup_dir) ^ before)  # nothing written, even on error


def test_soup_never_reaches_the_network() -> None:
    """The soup above runs with no tenant configured: a tenant id would let a sign-in be tried."""
    flags = {flag for specs in [*OPTIONS.values(), COMMON] for flag, _ in specs}
    assert not flags & {"--tenant-id", "--client-id"}


# The same soup with a tenant, for the read-only commands: paths and options are then used for
# real (out-dir created, results and reports written, journal read) after sign-in.

LIVE_PATHS = st.sampled_from(
    ["good.csv", "good.yaml", "bad.csv", "adir", "afile", "afile/sub", "new/dir", "out", "blocked", "blocked/x",
     "binary.bin", "empty.csv", "missing.json", "report.json", "adir/report.md", "."]
)  # fmt: skip
LIVE_OPTIONS: dict[str, list[tuple[str, st.SearchStrategy[str] | None]]] = {
    "bulk": [
        ("--journal", LIVE_PATHS),
        ("--out-dir", LIVE_PATHS),
        ("--concurrency", st.sampled_from(["1", "3", "64"])),
        ("--format", st.sampled_from(["table", "json", "JSON", "csv"])),
        ("--profile", LIVE_PATHS),
        ("--verbose", None),
        ("--esj-client-id", GUIDS),
        ("--prune", None),  # always with --dry-run here
        ("--as-powershell", None),
    ],
    "audit": [
        ("--format", st.sampled_from(["table", "json", "csv", "markdown", "cfg"])),
        ("--out", LIVE_PATHS),
        ("--concurrency", st.sampled_from(["1", "3", "64"])),
        ("--esj-app", GUIDS),
        ("-v", None),
        ("--unlisted", None),
        ("--include-user-mailboxes", None),
    ],
}


@st.composite
def live_soup(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(LIVE_OPTIONS)))
    args = [command, draw(st.sampled_from(["good.csv", "good.yaml", "good.csv", "bad.csv", "adir", "missing.csv"]))]
    if command == "bulk":
        args.append("--dry-run")  # never a write to the tenant
    for flag, values in draw(st.lists(st.sampled_from(LIVE_OPTIONS[command]), max_size=4)):
        args += [flag] if values is None else [flag, draw(values)]
    return args


@pytest.fixture(scope="module")
def live_tenant() -> Iterator[Sandbox]:
    with Sandbox(mailboxes=3) as sb:
        yield sb


@settings(SOUP, max_examples=25)
@given(args=live_soup())
def test_read_only_soup_against_a_tenant_never_a_traceback_never_a_write(
    live_tenant: Sandbox, soup_dir: Path, args: list[str]
) -> None:
    mark = last_seq(live_tenant)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        work = Path(tmp)
        for name in ("good.csv", "good.yaml", "bad.csv", "binary.bin", "empty.csv"):
            shutil.copy(soup_dir / name, work / name)
        (work / "adir").mkdir()
        (work / "afile").write_text("not a directory\n")
        (work / "blocked" / "results.jsonl").mkdir(parents=True)  # an --out-dir whose results file is a directory
        mp.chdir(work)
        with logger_restored():
            r = CliRunner().invoke(app, args, env={**live_tenant.env, "ESJ_PROVISION_JOURNAL": str(work / "j.jsonl")})
    output = r.stdout + r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception), output)
    assert "Traceback" not in output, (args, output)
    assert r.exit_code in (0, 1, 2, 3, 4), (args, r.exit_code, output)
    if r.exit_code in (1, 2):
        errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
        summary = [x for x in r.stderr.splitlines() if x.startswith("audit: ")]
        incomplete = r.exit_code == 1 and summary and re.search(r"\b[1-9]\d* (ESJ app\(s\) )?unknown", summary[0])
        assert errors or incomplete, (args, output)  # audit exit 1: says why
    assert not [c for c in live_tenant.calls(since=mark) if c.get("write")], args
