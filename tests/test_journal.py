"""The change journal: append-only JSON lines, intent before result, torn lines, 0600, no secrets."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from esj_provision.errors import JournalError
from esj_provision.provision.journal import Entry, Journal, default_journal_path, open_intents, read_journal

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
FULL = Entry("add-full-access", "Support@Contoso.com", "ESJ@Contoso.com")
SEND = Entry("add-send-as", "support@contoso.com", "esj@contoso.com")


def lines_of(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


# --------------------------------------------------------------------------- format


def test_each_write_is_one_json_line_with_ts_run_event(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, run_id="run-1") as journal:
        journal.write("run-start", command="bulk", rows=3, skipped=None)
        journal.write("run-end", ok=True)
    records = lines_of(path)
    assert [r["event"] for r in records] == ["run-start", "run-end"]
    for record in records:
        assert list(record)[:3] == ["ts", "run", "event"]
        assert TS.match(str(record["ts"]))
        assert record["run"] == "run-1"
    assert records[0]["command"] == "bulk" and records[0]["rows"] == 3
    assert "skipped" not in records[0]  # None fields are left out
    assert records[1]["ok"] is True


def test_intent_then_result_carry_the_entry_and_its_key(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, run_id="r") as journal:
        journal.intent(FULL, attempt=1)
        journal.result(FULL, "applied", request_id="req-42")
    intent, result = lines_of(path)
    assert intent["event"] == "intent" and result["event"] == "result"
    for record in (intent, result):
        assert record["op"] == "add-full-access"
        assert record["mailbox"] == "Support@Contoso.com"  # as given
        assert record["trustee"] == "ESJ@Contoso.com"
        assert record["key"] == "add-full-access|support@contoso.com|esj@contoso.com"  # lower-cased
    assert intent["attempt"] == 1
    assert result["outcome"] == "applied" and result["request_id"] == "req-42"


def test_entry_key_ignores_case_but_not_the_operation() -> None:
    assert FULL.key == Entry("add-full-access", "support@contoso.com", "esj@contoso.com").key
    assert FULL.key != Entry("remove-full-access", "support@contoso.com", "esj@contoso.com").key


def test_non_ascii_is_written_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.write("note", who="Zoë Ångström")
    assert "Zoë Ångström".encode() in path.read_bytes()
    assert next(read_journal(path))["who"] == "Zoë Ångström"


def test_default_run_id_is_fresh_per_journal(tmp_path: Path) -> None:
    first, second = Journal(tmp_path / "j"), Journal(tmp_path / "j")
    assert re.fullmatch(r"[0-9a-f]{12}", first.run_id)
    assert first.run_id != second.run_id


def test_appends_across_runs_and_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, run_id="one") as journal:
        journal.intent(FULL)
    with Journal(path, run_id="two") as journal:
        journal.result(FULL, "applied")
    assert [(r["run"], r["event"]) for r in read_journal(path)] == [("one", "intent"), ("two", "result")]


def test_write_opens_on_demand_and_close_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "journal.jsonl"  # parents are created
    journal = Journal(path)
    journal.write("x")
    journal.close()
    journal.close()
    journal.write("y")  # reopened
    journal.close()
    assert [r["event"] for r in read_journal(path)] == ["x", "y"]


def test_default_journal_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ESJ_PROVISION_JOURNAL", str(tmp_path / "explicit.jsonl"))
    assert default_journal_path() == tmp_path / "explicit.jsonl"
    monkeypatch.delenv("ESJ_PROVISION_JOURNAL")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_journal_path() == tmp_path / "state" / "esj-provision" / "journal.jsonl"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_journal_path() == tmp_path / "home" / ".local" / "state" / "esj-provision" / "journal.jsonl"


# --------------------------------------------------------------------------- open intents


def test_open_intents_are_intents_without_result_or_reconciliation(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    remove = Entry("remove-send-as", "old@contoso.com", "esj@contoso.com")
    other = Entry("add-full-access", "other@contoso.com", "esj@contoso.com")
    with Journal(path, run_id="crashed") as journal:
        journal.intent(FULL)
        journal.result(FULL, "applied")  # finished
        journal.intent(SEND)  # never finished
        journal.intent(remove)
        journal.write("reconciled", key=remove.key, outcome="not-applied")  # resolved by a later read
        journal.intent(other, attempt=1)
        journal.write("ambiguous", key=other.key)  # an ambiguous answer does not close the intent
        journal.write("run-end")  # no key: ignored
    pending = open_intents(path)
    assert set(pending) == {SEND.key, other.key}
    assert pending[SEND.key]["event"] == "intent"
    assert pending[SEND.key]["run"] == "crashed"
    assert pending[other.key]["attempt"] == 1


def test_open_intent_keeps_the_latest_intent_and_a_later_intent_reopens(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, run_id="r") as journal:
        journal.intent(FULL, attempt=1)
        journal.intent(FULL, attempt=2)
        journal.intent(SEND)
        journal.result(SEND, "failed", error="boom")
        journal.intent(SEND, attempt=2)
    pending = open_intents(path)
    assert set(pending) == {FULL.key, SEND.key}
    assert pending[FULL.key]["attempt"] == 2
    assert pending[SEND.key]["attempt"] == 2


def test_open_intents_of_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert open_intents(tmp_path / "never-written.jsonl") == {}
    assert list(read_journal(tmp_path / "never-written.jsonl")) == []


# --------------------------------------------------------------------------- torn and odd lines


def test_torn_last_line_is_skipped_and_its_number_returned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, run_id="r") as journal:
        journal.intent(FULL)
        journal.intent(SEND)
    with path.open("ab") as handle:  # kill -9 in the middle of the result line
        handle.write(b'{"ts": "2025-01-01T00:00:00Z", "run": "r", "event": "result", "key": "add-se')
    skipped: list[int] = []
    records = list(read_journal(path, skipped))
    assert [r["event"] for r in records] == ["intent", "intent"]
    assert skipped == [3]
    assert capsys.readouterr().err == ""  # the core prints nothing: the CLI says so (bulk's warnings)
    skipped = []
    assert set(open_intents(path, skipped)) == {FULL.key, SEND.key}  # the torn result does not count
    assert skipped == [3]


def test_line_torn_inside_a_multibyte_character_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "journal.jsonl"
    entry = Entry("add-full-access", "zoë@contoso.com", "esj@contoso.com")
    with Journal(path) as journal:
        journal.intent(entry)
    line = json.dumps({"event": "result", "key": entry.key, "mailbox": "zoë@contoso.com"}, ensure_ascii=False)
    data = line.encode("utf-8")
    with path.open("ab") as handle:
        handle.write(data[: data.index("ë".encode()) + 1])  # half of a two-byte character
    skipped: list[int] = []
    assert [r["event"] for r in read_journal(path, skipped)] == ["intent"]
    assert skipped == [2]
    assert set(open_intents(path)) == {entry.key}


def test_a_new_run_after_a_torn_line_starts_on_a_fresh_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Glued to the fragment, the next run's first record would be unreadable too: an intent lost.
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"event": "intent", "key": "a"}\n{"event": "resu')
    with Journal(path, run_id="next") as journal:
        journal.intent(SEND)
    skipped: list[int] = []
    assert [r.get("run") for r in read_journal(path, skipped)] == [None, "next"]
    assert skipped == [2]
    assert set(open_intents(path)) == {"a", SEND.key}
    with Journal(path) as journal:  # a whole last line gets no extra blank line
        journal.write("x")
    assert path.read_bytes().count(b"\n") == 4


def test_blank_lines_and_non_object_lines_are_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('\n[1, 2]\n"text"\n\n{"event": "intent", "key": "k"}\n   \n', encoding="utf-8")
    skipped: list[int] = []
    assert list(read_journal(path, skipped)) == [{"event": "intent", "key": "k"}]
    assert skipped == []  # valid JSON, just not records: no warning
    assert set(open_intents(path)) == {"k"}


def test_garbage_in_the_middle_is_skipped_and_reading_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"event": "a"}\n\xff\xfe garbage\n{"event": "b"}\n')
    skipped: list[int] = []
    assert [r["event"] for r in read_journal(path, skipped)] == ["a", "b"]
    assert skipped == [2]


def test_reading_a_directory_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot read the change journal"):
        list(read_journal(tmp_path))


# --------------------------------------------------------------------------- permissions and failures


def test_file_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    old = os.umask(0)
    try:
        with Journal(path) as journal:
            journal.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unwritable_path_is_a_journal_error_with_a_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    journal = Journal(blocker / "journal.jsonl")
    with pytest.raises(JournalError) as caught:
        journal.open()
    assert str(caught.value).startswith(f"cannot open the change journal {blocker / 'journal.jsonl'}")
    assert caught.value.hint == "give a writable path with --journal; nothing was changed"
    with pytest.raises(JournalError):  # write() opens on demand and fails the same way
        journal.write("x")


def test_a_directory_as_journal_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open the change journal") as caught:
        Journal(tmp_path).open()
    assert caught.value.hint is not None and "--journal" in caught.value.hint


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_a_journal_error_with_a_hint() -> None:
    with Journal(Path("/dev/full")) as journal, pytest.raises(JournalError) as caught:
        journal.write("intent", key="k")
    assert caught.value.message.startswith("cannot write to the change journal /dev/full")
    assert (
        caught.value.hint == "free disk space or choose another --journal; no further change is made without a record"
    )


# --------------------------------------------------------------------------- secrets


def test_secrets_are_redacted_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    secret, other = "s3cr3t-Value~xyz", "0ther.Secret"
    with Journal(path, secrets=(secret, other, "")) as journal:  # an empty secret must not mask everything
        journal.write(
            "result",
            error=f"AADSTS7000215: invalid client secret {secret}",
            nested={"headers": {"Authorization": f"Bearer {other}"}, "list": [secret, {"deep": [f"x{secret}x"]}]},
            pair=(secret, "plain"),
            **{"client_secret": secret},
        )
        journal.intent(FULL, note=f"{other} and {secret}")
    raw = path.read_text(encoding="utf-8")
    assert secret not in raw and other not in raw
    first, second = lines_of(path)
    assert first["error"] == "AADSTS7000215: invalid client secret ***"
    assert first["nested"] == {"headers": {"Authorization": "Bearer ***"}, "list": ["***", {"deep": ["x***x"]}]}
    assert first["pair"] == ["***", "plain"]
    assert first["client_secret"] == "***"
    assert second["note"] == "*** and ***"
    assert second["mailbox"] == FULL.mailbox  # everything else untouched


def test_a_secret_in_a_dict_key_is_redacted(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, secrets=("tok3n",)) as journal:
        journal.write("x", seen={"tok3n": 1})
    assert "tok3n" not in path.read_text(encoding="utf-8")


def test_a_secret_containing_another_is_masked_whole(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, secrets=("abc", "abcdef-long")) as journal:
        journal.write("x", value="key=abcdef-long;other=abc")
    (record,) = lines_of(path)
    assert record["value"] == "key=***;other=***"
    assert "def-long" not in path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writes_from_threads_produce_only_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    threads_n, per_thread = 6, 60
    payload = "x" * 6000  # larger than a pipe buffer's atomic size, to make interleaving visible
    with Journal(path, run_id="r") as journal:

        def work(n: int) -> None:
            for i in range(per_thread):
                journal.write("note", thread=n, seq=i, payload=payload)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line parses: none torn or interleaved
    assert len(records) == threads_n * per_thread
    for n in range(threads_n):
        assert [r["seq"] for r in records if r["thread"] == n] == list(range(per_thread))
    assert all(r["payload"] == payload for r in records)
