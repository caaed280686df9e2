"""The change journal: every write to the tenant and its outcome, one JSON object per line.

An admin attaches it to a change ticket; bulk runs read it back to resume after a crash. A write is
journalled *before* it is sent (``intent``) and again when its outcome is known (``result``), each
line flushed and fsynced, so even ``kill -9`` between the two leaves a record: an intent with no
result means "this write may or may not have happened", and the next run reads the tenant to find
out and records what it found (``reconciled``). No secret or token is ever written here.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
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
