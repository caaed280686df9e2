"""``esj-provision bulk`` end to end: the real CLI against the sandbox tenant, over HTTPS.

The big run onboards a few hundred rows with throttling, latency and random faults switched on,
and checks from the service's side (``sb.calls()``, ``sb.state()``) that the tenant ends exactly
in the desired state with each delegation granted once, that a second run writes nothing, and
that the ESJ options come out as one CFG file per ESJ Application. Smaller tests cover the exit
statuses, per-row results, ``--dry-run`` and an invalid manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import Later
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.esj.cfg import parse_cfg
from esj_provision.provision.journal import open_intents, read_journal
from esj_provision.sandbox import Sandbox
from esj_provision.sandbox.tenant import Tenant

TRUSTEE = "esj-svc@contoso.com"
TRUSTEE_UPN = "esj-svc@contoso.onmicrosoft.com"  # how Exchange names the trustee
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}
PAIRS = [(i, o) for i in ("imap", "ews", "graph") for o in ("smtp", "ews", "graph")]
HEADER = ("mailbox", "trustee", "inbound", "outbound", "send_as", "auto_response", "esj_instance")
POP_TYPE = {"imap": "imap", "ews": "ews", "graph": "GRAPH"}
SMTP_TYPE = {"smtp": "smtp", "ews": "ews", "graph": "graph"}


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Row:
    mailbox: str
    trustee: str = TRUSTEE
    inbound: str = "imap"
    outbound: str = "ews"
    send_as: bool = True
    auto_response: bool = False
    esj_instance: str = ""

    def csv(self) -> str:
        return ",".join(
            [
                self.mailbox,
                self.trustee,
                self.inbound,
                self.outbound,
                "true" if self.send_as else "false",
                "true" if self.auto_response else "false",
                self.esj_instance,
            ]
        )


def write_manifest(path: Path, rows: list[Row]) -> dict[int, Row]:
    """The manifest, and its rows by line number (the header is line 1)."""
    path.write_text(",".join(HEADER) + "\n" + "".join(r.csv() + "\n" for r in rows), encoding="utf-8")
    return {line: row for line, row in enumerate(rows, start=2)}


def invoke(sb: Sandbox, journal: Path, *args: str) -> Result:
    env = {**sb.env, "ESJ_PROVISION_JOURNAL": str(journal)}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def json_lines(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``--format json`` output: one object per row, then ``{"summary": ...}``."""
    objects = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert objects and "summary" in objects[-1], text[-2000:]
    return objects[:-1], objects[-1]["summary"]


def expected_delegations(rows: list[Row], trustee_upn: dict[str, str] | None = None) -> set[tuple[str, str, str]]:
    upn = trustee_upn or {TRUSTEE: TRUSTEE_UPN}
    out = set()
    for r in rows:
        out.add((r.mailbox, "FullAccess", upn[r.trustee]))
        if r.send_as:
            out.add((r.mailbox, "SendAs", upn[r.trustee]))
    return out


def tenant_delegations(sb: Sandbox) -> set[tuple[str, str, str]]:
    """Every Full Access and Send As the tenant holds, as (mailbox, right, trustee as Exchange shows it)."""
    t = Tenant.from_json(sb.state())
    out = set()
    for rid, aces in t.mailbox_permissions.items():
        mbx = t.find_recipient(rid)
        assert mbx is not None
        for ace in aces:
            if "FullAccess" in ace.rights and not ace.deny:
                out.add((mbx.mail, "FullAccess", t.render(ace.sid)))
    for rid, sids in t.recipient_permissions.items():
        mbx = t.find_recipient(rid)
        assert mbx is not None
        out |= {(mbx.mail, "SendAs", t.render(sid)) for sid in sids}
    return out


def automapping_of(sb: Sandbox, mailbox: str, trustee_upn: str) -> list[bool]:
    t = Tenant.from_json(sb.state())
    mbx = t.find_recipient(mailbox)
    assert mbx is not None
    return [a.automapping for a in t.mailbox_permissions.get(mbx.id, []) if t.render(a.sid) == trustee_upn]


def applied_writes(calls: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """Writes the tenant really applied, per (cmdlet, Identity, User/Trustee)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for c in calls:
        if c.get("cmdlet") in WRITES and c.get("applied"):
            p = c.get("parameters") or {}
            counts[(c["cmdlet"], str(p.get("Identity")).lower(), str(p.get("User") or p.get("Trustee")).lower())] += 1
    return counts


def grants_wanted(rows: list[Row], trustee_upn: dict[str, str] | None = None) -> Counter[tuple[str, str, str]]:
    upn = trustee_upn or {TRUSTEE: TRUSTEE_UPN}
    want: Counter[tuple[str, str, str]] = Counter()
    for r in rows:
        want[("Add-MailboxPermission", r.mailbox.lower(), upn[r.trustee].lower())] = 1
        if r.send_as:
            want[("Add-RecipientPermission", r.mailbox.lower(), upn[r.trustee].lower())] = 1
    return want


def assert_journal_complete(path: Path) -> list[dict[str, Any]]:
    """Every intent is followed by a result or a reconciliation of its key; nothing is left open."""
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


def cfg_sections(path: Path) -> list[dict[str, str]]:
    """The (pop-client, smtp-client) pairs of an options file, in order, merged per mailbox."""
    parsed = parse_cfg(path.read_text(encoding="utf-8"), str(path))
    out = []
    for n in range(len(parsed)):
        suffix = "" if n == 0 else str(n)
        if f"pop-client{suffix}" not in parsed:
            break
        pop, smtp = parsed[f"pop-client{suffix}"], parsed[f"smtp-client{suffix}"]
        out.append({"mailbox": pop["mailbox"], "type": pop["type"], "server-type": smtp["server-type"]})
    assert len(out) * 2 == len(parsed), f"{path}: unexpected sections {sorted(parsed)}"
    return out


def expected_files(by_line: dict[int, Row], refused: set[int]) -> dict[str, list[Row]]:
    """esj-<instance>.cfg per named ESJ application, esj-auto-NNN.cfg for shards of 25 unnamed rows
    (assigned in manifest order, before any outcome is known), each holding its successful rows."""
    files: dict[str, list[Row]] = {}
    named = {r.esj_instance.lower() for r in by_line.values() if r.esj_instance}
    auto = 0
    for line in sorted(by_line):
        row = by_line[line]
        if row.esj_instance:
            name = row.esj_instance
        else:
            name = f"auto-{auto // 25 + 1:03d}"
            assert name not in named  # pinned shard names: see the test at the end
            auto += 1
        files.setdefault(f"esj-{name}.cfg", [])
        if line not in refused:
            files[f"esj-{name}.cfg"].append(row)
    return {k: v for k, v in files.items() if v}


def assert_options_files(out_dir: Path, by_line: dict[int, Row], refused: set[int]) -> None:
    want = expected_files(by_line, refused)
    assert sorted(p.name for p in out_dir.glob("*.cfg")) == sorted(want)
    for name, rows in want.items():
        got = cfg_sections(out_dir / name)
        assert got == [
            {"mailbox": r.mailbox, "type": POP_TYPE[r.inbound], "server-type": SMTP_TYPE[r.outbound]} for r in rows
        ], name
        if name.startswith("esj-auto-"):
            assert len(got) <= 25


# --------------------------------------------------------------------------- a few hundred rows, faults on

BIG_ROWS = 240


def big_manifest() -> list[Row]:
    rows = []
    for i in range(1, BIG_ROWS + 1):
        inbound, outbound = PAIRS[i % len(PAIRS)]
        instance = "emea" if i <= 27 else "apac" if i <= 37 else ""  # 27: more than Genesys recommends
        rows.append(
            Row(
                f"queue{i:04d}@contoso.com",
                inbound=inbound,
                outbound=outbound,
                send_as=i % 20 != 0,
                auto_response=i % 7 == 0,
                esj_instance=instance,
            )
        )
    return rows


@dataclass
class BigRun:
    sb: Sandbox
    tmp: Path
    manifest: Path
    journal: Path
    by_line: dict[int, Row]
    baseline: set[tuple[str, str, str]]
    result: Result
    calls: list[dict[str, Any]]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigRun]:
    tmp = tmp_path_factory.mktemp("bulk-big")
    with Sandbox(mailboxes=BIG_ROWS + 20, throttle_rps=200, fault_rate=0.02, seed=11, latency_ms="2-10") as sb:
        baseline = tenant_delegations(sb)
        by_line = write_manifest(tmp / "manifest.csv", big_manifest())
        journal = tmp / "journal.jsonl"
        # A throttling storm on Exchange mid-run, on top of the token bucket's own 429s.
        storm = Later(sb, 600, lambda: sb.queue_fault("429", service="exchange", count=12, retry_after=1))
        with storm:
            result = invoke(
                sb, journal, "bulk", str(tmp / "manifest.csv"), "--out-dir", str(tmp / "out"), "--concurrency", "16",
                "--format", "json",
            )  # fmt: skip
        assert storm.fired
        yield BigRun(sb, tmp, tmp / "manifest.csv", journal, by_line, baseline, result, sb.calls())


@pytest.mark.slow  # the run of a few hundred rows (module fixture)
def test_few_hundred_rows_with_faults_reach_exactly_the_desired_state(big: BigRun) -> None:
    r = big.result
    assert r.exit_code == 0, r.stderr + r.stdout[-3000:]
    rows = list(big.by_line.values())
    assert tenant_delegations(big.sb) == big.baseline | expected_delegations(rows)
    assert applied_writes(big.calls) == grants_wanted(rows)  # each delegation granted exactly once
    assert not [c for c in big.calls if (c.get("cmdlet") or "").startswith("Remove-")]
    assert automapping_of(big.sb, "queue0001@contoso.com", TRUSTEE_UPN) == [False]
    # The faults were really there: the throttling storm (the token bucket's own 429s depend on
    # how fast the client goes), and random 5xx/resets.
    faults = Counter(c["fault"] for c in big.calls if c.get("fault"))
    assert faults["429"] == 12, faults
    assert sum(faults[f] for f in ("503", "504-after-apply", "reset-before", "reset-after-apply")) >= 5, faults

    per_row, summary = json_lines(r.stdout)
    want_writes = sum(grants_wanted(rows).values())
    assert (summary["rows"], summary["ok"], summary["refused"], summary["failed"]) == (BIG_ROWS, BIG_ROWS, 0, 0)
    assert (summary["writes"], summary["already_in_place"]) == (want_writes, 0)
    assert sorted(x["line"] for x in per_row) == sorted(big.by_line)
    assert any("'emea'" in w and "27 mailboxes" in w for w in summary["warnings"]), summary["warnings"]

    records = assert_journal_complete(big.journal)
    final = {x["key"]: x for x in records if x["event"] in {"result", "reconciled"}}  # each write's last word
    assert len(final) == want_writes and {x["outcome"] for x in final.values()} == {"applied"}
    # A write whose answer was lost was read back, not repeated (the grant counts above).
    assert {x["event"] for x in records if x.get("key")} >= {"intent", "result", "ambiguous", "reconciled"}
    assert [x["event"] for x in records if x["event"].startswith("run-")][:2] == ["run-start", "run-end"]


@pytest.mark.slow  # the run of a few hundred rows (module fixture)
def test_results_jsonl_has_one_line_per_row(big: BigRun) -> None:
    lines = (big.tmp / "out" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    results = {x["line"]: x for x in map(json.loads, lines)}
    assert len(lines) == len(results) == BIG_ROWS
    assert set(results) == set(big.by_line)
    for line, row in big.by_line.items():
        x = results[line]
        assert (x["mailbox"], x["trustee"], x["status"], x["error"]) == (row.mailbox, row.trustee, "ok", None)
        want = [("FullAccess", "applied", "present")] + ([("SendAs", "applied", "present")] if row.send_as else [])
        assert [(d["right"], d["outcome"], d["verified"]) for d in x["delegations"]] == want


@pytest.mark.slow  # the run of a few hundred rows (module fixture)
def test_one_options_file_per_esj_application(big: BigRun) -> None:
    out = big.tmp / "out"
    assert_options_files(out, big.by_line, refused=set())
    assert {p.name for p in out.glob("esj-*.cfg")} >= {"esj-emea.cfg", "esj-apac.cfg", "esj-auto-009.cfg"}
    assert len(cfg_sections(out / "esj-emea.cfg")) == 27 and len(cfg_sections(out / "esj-apac.cfg")) == 10
    text = (out / "esj-auto-001.cfg").read_text(encoding="utf-8")
    assert big.sb.client_secret not in text


@pytest.mark.slow  # the run of a few hundred rows (module fixture)
def test_second_run_writes_nothing_and_gives_the_same_options(big: BigRun) -> None:
    sb = big.sb
    mark = len(sb.calls())
    r = invoke(
        sb, big.journal, "bulk", str(big.manifest), "--out-dir", str(big.tmp / "out2"), "--concurrency", "16",
        "--format", "json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr + r.stdout[-3000:]
    calls = sb.calls()[mark:]
    assert [c for c in calls if c.get("cmdlet") in WRITES] == []
    _, summary = json_lines(r.stdout)
    rows = list(big.by_line.values())
    assert (summary["writes"], summary["already_in_place"]) == (0, sum(grants_wanted(rows).values()))
    assert tenant_delegations(sb) == big.baseline | expected_delegations(rows)
    for f in (big.tmp / "out").glob("*.cfg"):
        assert (big.tmp / "out2" / f.name).read_bytes() == f.read_bytes()
    records = assert_journal_complete(big.journal)
    assert [x["event"] for x in records if x["event"].startswith("run-")] == ["run-start", "run-end"] * 2


# --------------------------------------------------------------------------- smaller runs, no faults


Cli = Callable[..., Result]
pytestmark = pytest.mark.tenant(mailboxes=120)  # the big run has its own sandbox




def test_bad_rows_are_listed_with_reasons_the_others_succeed_exit_4(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    good = [Row(f"queue{i:04d}@contoso.com", esj_instance="blue" if i % 2 else "") for i in range(1, 7)]
    rows = [
        *good[:2],
        Row("adele@contoso.com"),
        *good[2:4],
        Row("queue0050@contoso.com", "old-svc@contoso.com"),
        *good[4:],
    ]
    by_line = write_manifest(tmp_path / "m.csv", rows)
    user_line, disabled_line = 4, 7
    mark = len(tenant.calls())
    r = cli("bulk", "m.csv")
    assert r.exit_code == 4, r.stderr + r.stdout
    assert f"line {user_line}: adele@contoso.com: adele@contoso.com is a user mailbox, not a shared mailbox" in r.stdout
    assert f"line {disabled_line}: queue0050@contoso.com: account old-svc@contoso.com is disabled" in r.stdout
    calls = tenant.calls()[mark:]
    assert applied_writes(calls) == grants_wanted(good)
    assert not [c for c in calls if c.get("cmdlet") in WRITES and (c["parameters"] or {}).get("Identity") in
                {"adele@contoso.com", "queue0050@contoso.com"}]  # fmt: skip
    results = {x["line"]: x for x in map(json.loads, (tmp_path / "esj-provision-out" / "results.jsonl").open())}
    assert set(results) == set(by_line)
    assert results[user_line]["status"] == "refused" and "not a shared mailbox" in results[user_line]["error"]
    assert results[disabled_line]["status"] == "refused" and "is disabled" in results[disabled_line]["error"]
    assert {x["status"] for line, x in results.items() if line not in {user_line, disabled_line}} == {"ok"}
    assert_options_files(tmp_path / "esj-provision-out", by_line, refused={user_line, disabled_line})
    assert_journal_complete(tmp_path / "journal.jsonl")


def test_all_rows_ok_exit_0_and_table_summary(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    rows = [Row(f"queue{i:04d}@contoso.com", inbound="graph", outbound="graph") for i in range(60, 64)]
    write_manifest(tmp_path / "m.csv", rows)
    r = cli("bulk", "m.csv", "--out-dir", "opts")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "bulk summary" in r.stdout and "wrote opts/esj-auto-001.cfg" in r.stdout.replace("\\", "/")
    assert expected_delegations(rows) <= tenant_delegations(tenant)


def test_dry_run_plans_every_row_and_writes_nothing(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    rows = [Row(f"queue{i:04d}@contoso.com", send_as=i != 72) for i in range(70, 100)]
    by_line = write_manifest(tmp_path / "m.csv", rows)
    tenant.mutate("add-grant", mailbox="queue0071@contoso.com", trustee=TRUSTEE, right="FullAccess")
    before = tenant_delegations(tenant)
    mark = len(tenant.calls())
    r = cli("bulk", "m.csv", "--dry-run", "--format", "json")
    assert r.exit_code == 0, r.stderr + r.stdout
    calls = tenant.calls()[mark:]
    assert [c for c in calls if c.get("cmdlet") in WRITES] == []
    assert tenant_delegations(tenant) == before
    assert not (tmp_path / "journal.jsonl").exists()
    per_row, summary = json_lines(r.stdout)
    assert (summary["rows"], summary["planned"], summary["ok"], summary["writes"]) == (30, 30, 0, 0)
    plans = {x["line"]: x for x in per_row}
    assert set(plans) == set(by_line)
    for line, row in by_line.items():
        x = plans[line]
        assert x["status"] == "planned"
        actions = [(d["right"], d["current"], d["action"], d["outcome"]) for d in x["delegations"]]
        fa = ("FullAccess", "present", "none", None) if row.mailbox == "queue0071@contoso.com" else (
            "FullAccess", "absent", "grant", None)  # fmt: skip
        assert actions == [fa] + ([("SendAs", "absent", "grant", None)] if row.send_as else []), row


def test_invalid_manifest_no_call_nothing_written_every_problem_with_its_line(
    tenant: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "m.csv").write_text(
        "mailbox,trustee,inbound,outbound,send_as,esj_instance\n"
        "queue0101@contoso.com,esj-svc@contoso.com,imap,smtp,,\n"  # 2: fine
        "not-an-address,esj-svc@contoso.com,imap,smtp,,\n"  # 3
        "queue0102@contoso.com,esj-svc@contoso.com,pop3,smtp,,\n"  # 4
        "queue0103@contoso.com,esj-svc@contoso.com,imap,smtp,,\n"  # 5: fine
        "queue0101@contoso.com,esj-svc@contoso.com,ews,ews,,\n"  # 6: duplicate of line 2
        "queue0104@contoso.com,esj-svc@contoso.com,imap,fax,maybe,\n"  # 7: two problems
        "queue0105@contoso.com,esj-svc@contoso.com,imap,smtp,,bad name!\n",  # 8
        encoding="utf-8",
    )
    mark = len(tenant.calls())
    for extra in ([], ["--dry-run"]):
        r = cli("bulk", "m.csv", "--out-dir", "out", *extra)
        assert r.exit_code == 2, r.stderr
        lines = r.stderr.splitlines()
        assert lines[0] == "error: manifest m.csv has 6 problem(s); nothing was done"
        problems = [x for x in lines if x.startswith("  line ")]
        assert [int(x.split()[1].rstrip(":")) for x in problems] == [3, 4, 6, 7, 7, 8]
        assert "not-an-address" in problems[0] and "pop3" in problems[1] and "already on line 2" in problems[2]
        assert "Traceback" not in r.stderr + r.stdout
    assert tenant.calls()[mark:] == []  # not even a token request
    assert not (tmp_path / "journal.jsonl").exists() and not (tmp_path / "out").exists()


def test_rows_pinned_to_an_auto_shard_name_keep_their_file(tenant: Sandbox, cli: Cli, tmp_path: Path) -> None:
    """An admin pins rows to the file a first run wrote (esj_instance=auto-001) and adds new rows:
    the automatic shards must not share that name, or the two would merge into one file, or the
    last written would silently replace the other."""
    blank = [Row(f"queue{i:04d}@contoso.com") for i in range(20, 50)]
    pinned = [Row(f"queue{i:04d}@contoso.com", esj_instance="auto-001") for i in (10, 11, 12)]
    write_manifest(tmp_path / "m.csv", [*blank[:10], *pinned, *blank[10:]])
    r = cli("bulk", "m.csv", "--out-dir", "out")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "Genesys recommends" not in r.stdout  # no shard over 25 mailboxes (the EWS rows are warned about)
    got = {p.name: [s["mailbox"] for s in cfg_sections(p)] for p in (tmp_path / "out").glob("*.cfg")}
    assert got == {
        "esj-auto-001.cfg": [r.mailbox for r in pinned],
        "esj-auto-002.cfg": [r.mailbox for r in blank[:25]],
        "esj-auto-003.cfg": [r.mailbox for r in blank[25:]],
    }


def test_an_out_dir_that_cannot_be_created_is_a_usage_error_before_any_call(
    tenant: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    write_manifest(tmp_path / "m.csv", [Row("queue0110@contoso.com")])
    (tmp_path / "afile").write_text("a file, not a directory\n")
    mark = len(tenant.calls())
    r = cli("bulk", "m.csv", "--out-dir", "afile/out")
    assert r.exit_code == 2 and r.stderr.startswith("error: --out-dir afile/out cannot be created: afile is not")
    assert tenant.calls()[mark:] == [] and not (tmp_path / "journal.jsonl").exists()
    # Found only once signed in (here: results.jsonl is a directory): an error, never a traceback.
    (tmp_path / "out" / "results.jsonl").mkdir(parents=True)
    r = cli("bulk", "m.csv", "--out-dir", "out")
    assert r.exit_code == 1 and r.stderr.startswith("error: cannot write out/results.jsonl: ")
    assert [c for c in tenant.calls()[mark:] if c.get("write")] == []
