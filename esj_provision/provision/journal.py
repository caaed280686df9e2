"""The change journal: every write to the tenant and its outcome, one JSON object per line.

An admin attaches it to a change ticket; bulk runs read it back to resume after a crash. A write is
journalled *before* it is sent (``intent``) and again when its outcome is known (``result``), each
line flushed and fsynced, so even ``kill -9`` between the two leaves a record: an intent with no
result means "this write may or may not have happened", and the next run reads the tenant to find
out and records what it found (``reconciled``). No secret or token is ever written here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import JournalError


def default_journal_path() -> Path:
    """``$ESJ_PROVISION_JOURNAL``, else ``$XDG_STATE_HOME/esj-provision/journal.jsonl``."""
    env = os.environ.get("ESJ_PROVISION_JOURNAL")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "esj-provision" / "journal.jsonl"


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    """Replace every secret anywhere in ``value``: strings, dict keys and values, lists, tuples.

    ``secrets`` must be ordered longest first (see :class:`Journal`), or a secret that contains
    another one would be only partly masked.
    """
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # json writes a tuple as a list
        return [_redact(v, secrets) for v in value]
    return value


@dataclass(frozen=True)
class Entry:
    """A journalled write: its key identifies the change, independent of the run that made it."""

    op: str  # add-full-access, add-send-as, remove-full-access, remove-send-as, new-service-principal
    mailbox: str
    trustee: str

    @property
    def key(self) -> str:
        return f"{self.op}|{self.mailbox.lower()}|{self.trustee.lower()}"


class Journal:
    """Append-only JSON-lines journal. Safe for concurrent tasks (one write per line, O_APPEND)."""

    def __init__(self, path: Path, *, run_id: str | None = None, secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))
        self._fd: int | None = None

    def open(self) -> Journal:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if self._torn_at_end():
                # A crash tore the last line: end it, or the first record of this run would be glued
                # to the fragment and be unreadable too (an intent lost is a write no resume can find).
                os.write(self._fd, b"\n")
        except OSError as exc:
            self.close()
            raise JournalError(
                f"cannot open the change journal {self.path}: {exc.strerror}",
                hint="give a writable path with --journal; nothing was changed",
            ) from None
        return self

    def _torn_at_end(self) -> bool:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        try:
            with self.path.open("rb") as handle:
                handle.seek(size - 1)
                return handle.read(1) not in (b"\n", b"")
        except OSError:  # write-only journal: cannot tell, and a torn line is rare
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Journal:
        return self.open() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        if self._fd is None:
            self.open()
        record: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run": self.run_id,
            "event": event,
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(_redact(record, self._secrets), ensure_ascii=False, sort_keys=False) + "\n"
        try:
            assert self._fd is not None
            data = memoryview(line.encode("utf-8"))
            while data:  # a short write (disk full) must not pass for a whole line
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(
                f"cannot write to the change journal {self.path}: {exc.strerror}",
                hint="free disk space or choose another --journal; no further change is made without a record",
            ) from None
        return record

    def event(self, event: str, entry: Entry, **fields: Any) -> None:
        """A record about one change (intent, result, ambiguous, reconciled), keyed by the change."""
        self.write(event, op=entry.op, mailbox=entry.mailbox, trustee=entry.trustee, key=entry.key, **fields)

    def intent(self, entry: Entry, **fields: Any) -> None:
        self.event("intent", entry, **fields)

    def result(self, entry: Entry, outcome: str, **fields: Any) -> None:
        self.event("result", entry, outcome=outcome, **fields)


def read_journal(path: Path, skipped: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Every well-formed record; a torn last line (a crash mid-write) is skipped, not fatal.

    The numbers of skipped lines go to ``skipped`` (when given): the caller says so to the user;
    the core prints nothing.
    """
    try:
        handle = path.open("rb")  # bytes: a line torn inside a multi-byte character must not stop the read
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalError(f"cannot read the change journal {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError is a ValueError too
                if skipped is not None:
                    skipped.append(number)
                continue
            if isinstance(record, dict):
                yield record


def open_intents(path: Path, skipped: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """Writes that were started but never got a result or reconciliation: key -> intent record.

    Unreadable lines are skipped; their numbers go to ``skipped`` (see :func:`read_journal`).
    """
    pending: dict[str, dict[str, Any]] = {}
    for record in read_journal(path, skipped):
        key = record.get("key")
        if not isinstance(key, str):
            continue
        if record.get("event") == "intent":
            pending[key] = record
        elif record.get("event") in {"result", "reconciled"}:
            pending.pop(key, None)
    return pending


# -- the lock on a journal ------------------------------------------------------------------------
#
# Two bulk runs on one journal (two admins, a scheduler overlapping itself) would each re-plan and
# write every row, and each would take the other's in-flight writes for a crashed run's. So a run
# takes a lock on its journal, as Terraform's local backend does on its state: an OS lock (fcntl
# record lock; the kernel drops it when the process dies, even by kill -9) on ``<journal>.lock``,
# whose content says who holds it. The file stays (empty) after release: deleting it would let a
# third run lock a new file while a second one still waits on the old inode.


class JournalLockedError(JournalError):
    """Another live run holds the journal's lock."""


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}, running `{self.command}`"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OSError:
        return True  # cannot tell: assume alive rather than take a lock that may be held
    return True


def _os_lock(fd: int) -> bool | None:
    """Try to take the OS lock without waiting: True taken, False held by another process, None
    when the platform or filesystem has no such lock (then the lock file's content decides)."""
    if sys.platform == "win32":  # pragma: no cover - Windows: a byte-range lock on byte 0
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: a filesystem without record locks
        return None


class JournalLock:
    """The lock on one journal, held for a whole run. ``acquire`` raises JournalLockedError when a
    live run holds it and returns a notice when it took over a lock that a dead run left."""

    def __init__(self, journal_path: Path, command: str) -> None:
        self.path = journal_path.with_name(journal_path.name + ".lock")
        self.command = command
        self._fd: int | None = None

    def _read(self, fd: int) -> LockInfo | None:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else None
            if not isinstance(data, dict):
                return None
            return LockInfo(str(data["host"]), int(data["pid"]), str(data["started"]), str(data["command"]))
        except (ValueError, KeyError, TypeError):
            return None

    def acquire(self) -> str | None:
        import socket

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(
                f"cannot create the journal's lock file {self.path}: {exc.strerror}",
                hint="give a writable path with --journal; nothing was changed",
            ) from None
        host = socket.gethostname()
        taken = _os_lock(fd)
        previous = self._read(fd)
        if taken is None and previous is not None:
            # No OS lock here: the recorded holder decides; only a dead pid on this host is stale.
            taken = previous.host == host and not _pid_alive(previous.pid)
        if taken is False:
            os.close(fd)
            who = previous.describe() if previous else "another process (it has not said who yet)"
            raise JournalLockedError(
                f"the change journal {self.path.with_suffix('')} is in use by {who}",
                hint="wait for that run to finish, or give this run another --journal; nothing was changed",
            )
        notice = None
        if previous is not None:
            gone = "is no longer running" if previous.host == host else "no longer holds it"
            notice = (
                f"took over the journal's lock left by an earlier run ({previous.describe()}), which {gone}; "
                "its unfinished writes are checked against the tenant"
            )
        info = {
            "host": host,
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return notice

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # empty: released cleanly (a non-empty free lock was left by a crash)
        finally:
            os.close(fd)  # closing the descriptor drops the OS lock


@contextlib.contextmanager
def journalled_run(
    path: Path,
    *,
    secrets: Any,
    command: str,
    manifest: Path,
    rows: int,
    dry_run: bool,
    on_notice: Callable[[str], None],
) -> Iterator[Journal]:
    """The framing every manifest-wide writing run shares (bulk, bulk --prune, migrate): one run per
    journal at a time (the lock; a lock left by a dead run is taken over and ``on_notice`` is told),
    ``run-start``, and ``run-interrupted`` when the run ends by an exception, so the next run knows to
    resume. The caller writes ``run-end`` with its own counts. A dry run writes nothing, takes no lock,
    and never creates the file (the journal is opened by its first write)."""
    journal = Journal(path, secrets=secrets)
    lock = JournalLock(journal.path, f"esj-provision {command} {manifest}")
    try:
        if not dry_run:
            notice = lock.acquire()
            if notice:
                on_notice(notice)
            journal.write("run-start", command=command, manifest=str(manifest), rows=rows)
        try:
            yield journal
        except BaseException:
            if not dry_run:
                journal.write("run-interrupted", command=command, note="re-run the same command to resume")
            raise
    finally:
        journal.close()
        lock.release()
