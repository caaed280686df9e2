"""The lock a bulk run takes on its journal: a second run on the same journal stops and says who
holds it; a lock left by a dead run is taken over with a notice. Two real processes each time
(record locks are per process: a lock taken in the test's own process would not stop a run in it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from esj_provision.errors import JournalError
from esj_provision.provision import journal as journal_mod
from esj_provision.provision.journal import JournalLock, JournalLockedError, read_journal
from esj_provision.sandbox import Sandbox

TRUSTEE = "esj-svc@contoso.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission"}

HOLDER = """
import sys
from pathlib import Path
from esj_provision.provision.journal import JournalLock
lock = JournalLock(Path(sys.argv[1]), "esj-provision bulk other.csv")
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
lock.release()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on tmp_path/journal.jsonl."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "journal.jsonl")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _bulk(sb: Sandbox, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_PROVISION_"))}
    env.update(sb.env)
    env["ESJ_PROVISION_JOURNAL"] = str(cwd / "journal.jsonl")
    env["COLUMNS"] = "300"  # keep the error message on one line
    return subprocess.run(
        [sys.executable, "-m", "esj_provision", "bulk", "m.csv", "--out-dir", "out", "--format", "json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _manifest(path: Path, sb: Sandbox, rows: int) -> None:
    mailboxes = [f"queue{i:04d}@contoso.com" for i in range(1, rows + 1)]  # the generated shared mailboxes
    lines = ["mailbox,trustee,inbound,outbound"] + [f"{m},{TRUSTEE},imap,smtp" for m in mailboxes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _writes(sb: Sandbox) -> int:
    return sum(1 for c in sb.calls() if c.get("cmdlet") in WRITES and c.get("status") == 200)


def test_a_second_run_on_a_held_journal_stops_and_says_who_holds_it(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with Sandbox(mailboxes=3) as sb:
        _manifest(tmp_path / "m.csv", sb, 3)
        r = _bulk(sb, tmp_path)
        assert r.returncode == 1, r.stderr
        message = " ".join(r.stderr.split())
        assert "in use by" in message
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert "esj-provision bulk other.csv" in message
        assert _writes(sb) == 0  # nothing was changed
        assert not any(rec.get("event") == "run-start" for rec in read_journal(tmp_path / "journal.jsonl"))

        assert holder.stdin is not None
        holder.stdin.close()  # the first run ends and releases the lock
        holder.wait(10)
        r = _bulk(sb, tmp_path)
        assert r.returncode == 0, r.stderr
        assert "took over" not in r.stderr  # a clean release leaves no stale lock
        assert _writes(sb) == 6


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_notice(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    with Sandbox(mailboxes=2) as sb:
        _manifest(tmp_path / "m.csv", sb, 2)
        r = _bulk(sb, tmp_path)
        assert r.returncode == 0, r.stderr
        message = " ".join(r.stderr.split())
        assert f"took over the journal's lock left by an earlier run (pid {holder.pid}" in message
        assert "no longer running" in message
    # Released at the end: the file is empty again, so the next run has nothing to take over.
    assert (tmp_path / "journal.jsonl.lock").read_bytes() == b""


def test_the_lock_file_says_who_holds_it(tmp_path: Path) -> None:
    lock = JournalLock(tmp_path / "j.jsonl", "esj-provision bulk m.csv")
    assert lock.acquire() is None
    info = json.loads((tmp_path / "j.jsonl.lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["command"] == "esj-provision bulk m.csv" and info["started"].endswith("Z")
    lock.release()
    assert (tmp_path / "j.jsonl.lock").read_bytes() == b""


def _fake_holder(path: Path, pid: int) -> None:
    info = {"host": socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00Z", "command": "bulk x"}
    path.write_text(json.dumps(info))


def test_without_os_locks_a_live_holder_still_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "_os_lock", lambda fd: None)  # a filesystem without record locks
    _fake_holder(tmp_path / "j.jsonl.lock", os.getppid())  # alive
    with pytest.raises(JournalLockedError, match=f"pid {os.getppid()}"):
        JournalLock(tmp_path / "j.jsonl", "bulk y").acquire()


def test_without_os_locks_a_dead_holder_on_this_host_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "_os_lock", lambda fd: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    _fake_holder(tmp_path / "j.jsonl.lock", dead.pid)
    lock = JournalLock(tmp_path / "j.jsonl", "bulk y")
    notice = lock.acquire()
    assert notice is not None and f"pid {dead.pid}" in notice and "no longer running" in notice
    assert json.loads((tmp_path / "j.jsonl.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="lock file"):
        JournalLock(blocker / "j.jsonl", "bulk").acquire()


def test_prune_takes_the_same_lock_and_removes_nothing_while_it_is_held(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """bulk --prune writes to the journal like bulk: a run already holding it stops the prune before any
    call, and the sample tenant's forgotten grant (returns@) stays until the holder is gone."""
    removals = {"Remove-MailboxPermission", "Remove-RecipientPermission"}
    with Sandbox() as sb:
        (tmp_path / "m.csv").write_text(f"mailbox,trustee,inbound,outbound\nsupport@contoso.com,{TRUSTEE},imap,smtp\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_PROVISION_"))}
        env.update(sb.env)
        env.update(ESJ_PROVISION_JOURNAL=str(tmp_path / "journal.jsonl"), COLUMNS="300")
        argv = [sys.executable, "-m", "esj_provision", "bulk", "m.csv", "--prune", "--format", "json"]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert f"pid {holder.pid} on {socket.gethostname()}" in " ".join(r.stderr.split())
        assert not [c for c in sb.calls() if c.get("cmdlet") in removals]

        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert [c for c in sb.calls() if c.get("cmdlet") in removals and c.get("status") == 200]


def test_migrate_takes_the_same_lock(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    """migrate writes grants and scopes through the same journal: one run at a time there too."""
    with Sandbox() as sb:
        (tmp_path / "m.csv").write_text(f"mailbox,trustee,inbound,outbound\nsales@contoso.com,{TRUSTEE},ews,ews\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_PROVISION_"))}
        env.update(sb.env)
        env.update(ESJ_PROVISION_JOURNAL=str(tmp_path / "journal.jsonl"), COLUMNS="300", ESJ_PROVISION_TODAY="2026-12-01")
        argv = [sys.executable, "-m", "esj_provision", "migrate", "m.csv", "--to", "graph", "--esj-app", sb.esj_app_id]
        mark = len(sb.calls())
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert f"pid {holder.pid} on {socket.gethostname()}" in " ".join(r.stderr.split())
        assert not [c for c in sb.calls()[mark:] if c.get("method") == "POST" and c.get("service") == "exchange"
                    and str(c.get("cmdlet", "")).startswith(("New-", "Set-", "Add-"))]
