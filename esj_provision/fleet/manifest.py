"""The bulk/audit manifest: a CSV (or YAML) list of mailboxes to connect.

The whole manifest is validated before the first call to Microsoft, and every problem is reported
with its line number. Rows are then *streamed* (read again from the file) so memory stays flat
however long the manifest is; only the set of mailbox addresses is kept, to catch duplicates.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..errors import ConfigError, ManifestError, UsageError
from ..models import (
    AppTrustee,
    Inbound,
    Outbound,
    Trustee,
    UserTrustee,
    is_address,
    is_guid,
    parse_inbound,
    parse_outbound,
)
from ..provision.request import check_not_the_mailbox

REQUIRED = ("mailbox", "trustee", "inbound", "outbound")
OPTIONAL = ("send_as", "auto_response", "esj_instance")
COLUMNS = REQUIRED + OPTIONAL
MAX_LISTED_PROBLEMS = 200
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}
T = TypeVar("T")


@dataclass(frozen=True)
class ManifestRow:
    line: int
    mailbox: str
    # The trustee column: a client id is an ESJ app (ESJ signs in as it: its Exchange service
    # principal gets Full Access, no Send As), as ``onboard --trustee-app``; else an account.
    trustee: Trustee
    inbound: Inbound
    outbound: Outbound
    send_as: bool = True
    auto_response: bool = False
    esj_instance: str | None = None


def _check(problems: list[tuple[int, str]], line: int, rule: Callable[..., T], *args: Any) -> T | None:
    """A shared request rule applied to a row: its UsageError becomes the row's problem."""
    try:
        return rule(*args)
    except UsageError as exc:
        problems.append((line, f"{exc.message}; {exc.hint}" if exc.hint else exc.message))
        return None


def _bool(value: str, column: str, default: bool, problems: list[tuple[int, str]], line: int) -> bool:
    v = value.strip().lower()
    if not v:
        return default
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    problems.append((line, f"{column} {value!r} is not true/false"))
    return default


def _row(line: int, raw: dict[str, Any], problems: list[tuple[int, str]]) -> ManifestRow | None:
    before = len(problems)

    def text(column: str) -> str:
        value = raw.get(column)
        return "" if value is None else str(value).strip()

    mailbox, trustee = text("mailbox"), text("trustee")
    if is_guid(trustee):
        trustee = trustee.lower()  # an app's client id; one spelling, so a run caches it once
    for column, value in (("mailbox", mailbox), ("trustee", trustee)):
        if not value:
            problems.append((line, f"{column} is empty"))
        elif not is_address(value) and not (column == "trustee" and is_guid(value)):
            problems.append((line, f"{column} {value!r} is not an e-mail address"))
    # The rules onboard's flags follow (provision.request), in the same words.
    if mailbox and trustee:
        _check(problems, line, check_not_the_mailbox, mailbox, trustee)
    inbound = _check(problems, line, parse_inbound, text("inbound"))
    outbound = _check(problems, line, parse_outbound, text("outbound"))
    send_as = _bool(text("send_as"), "send_as", True, problems, line)
    auto = _bool(text("auto_response"), "auto_response", False, problems, line)
    instance = text("esj_instance") or None
    if instance is not None and (len(instance) > 64 or not all(c.isalnum() or c in "-_." for c in instance)):
        problems.append(
            (line, f"esj_instance {instance!r} may only hold letters, digits, '-', '_' and '.' (64 at most)")
        )
    if len(problems) > before or inbound is None or outbound is None:
        return None
    who: Trustee = AppTrustee(trustee) if is_guid(trustee) else UserTrustee(trustee)
    return ManifestRow(line, mailbox, who, inbound, outbound, send_as, auto, instance)


def _header_problems(header: list[str], line: int = 1) -> list[tuple[int, str]]:
    problems: list[tuple[int, str]] = []
    names = [h.strip().lower() for h in header]
    if not names:
        return [(line, "the manifest is empty; the first line must be the header: " + ",".join(REQUIRED))]
    for column in REQUIRED:
        if column not in names:
            problems.append((line, f"missing column {column!r} (the header must name {', '.join(REQUIRED)})"))
    for name in names:
        if name and name not in COLUMNS:
            problems.append((line, f"unknown column {name!r} (known: {', '.join(COLUMNS)})"))
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append((line, f"column {name!r} appears twice"))
        seen.add(name)
    return problems


_NOT_UTF8 = "not valid UTF-8 (save the manifest as UTF-8)"
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _decoded_lines(handle: BinaryIO, bad: list[int]) -> Iterator[str]:
    """The file's lines, each decoded on its own so a bad byte is pinned to its line.

    Lines end as the csv module expects with ``newline=""``: at ``\n``, ``\r\n`` or a lone ``\r``.
    A line that is not UTF-8 is decoded with replacement characters and its number added to ``bad``.
    """
    number = 0
    for raw in handle:
        if number == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        for piece in _LONE_CR.split(raw) if b"\r" in raw else (raw,):
            if not piece:
                continue
            number += 1
            try:
                yield piece.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(number)
                yield piece.decode("utf-8", "replace")


def _delimiter(header: str) -> str:
    """``;`` when the header is separated by semicolons, else ``,``.

    Excel saves "CSV" with the list separator of the system's locale: ``;`` wherever the decimal
    separator is a comma (most of Europe). No column name holds either character, so the header
    line tells which one the file uses.
    """
    return ";" if header.count(";") > header.count(",") else ","


def _iter_csv(path: Path, problems: list[tuple[int, str]]) -> Iterator[ManifestRow]:
    with _open_binary(path) as handle:
        bad: list[int] = []  # lines that are not UTF-8, in order, not yet reported
        lines = _decoded_lines(handle, bad)
        head: list[str] = []  # up to the header (the first line that is not blank), to pick the delimiter
        for text in lines:
            head.append(text)
            if text.strip():
                break
        reader = csv.reader(itertools.chain(head, lines), delimiter=_delimiter(head[-1] if head else ""))

        def undecodable() -> bool:
            """Report the bad lines the reader has consumed so far; True if there were any."""
            found = False
            while bad and bad[0] <= reader.line_num:
                problems.append((bad.pop(0), _NOT_UTF8))
                found = True
            return found

        while True:  # the header is the first line that is not blank
            header_line = reader.line_num + 1
            try:
                header = next(reader)
            except StopIteration:
                problems.append((1, "the manifest is empty; the first line must be the header: " + ",".join(REQUIRED)))
                return
            except csv.Error as exc:
                undecodable()
                problems.append((header_line, f"cannot read the header: {exc}"))
                return
            if undecodable():
                return
            if any(h.strip() for h in header):
                break
        header_problems = _header_problems(header, header_line)
        problems.extend(header_problems)
        if header_problems:
            return
        names = [h.strip().lower() for h in header]
        while True:
            line = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                undecodable()
                problems.append((line, f"CSV syntax: {exc}"))
                return
            if undecodable():  # reported; the row's other checks would only repeat the noise
                continue
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) > len(names):
                problems.append((line, f"{len(values)} fields, but the header names {len(names)}"))
                continue
            row = _row(line, dict(zip(names, values)), problems)
            if row is not None:
                yield row


class _open_binary:
    """Open for :func:`_decoded_lines`, which decodes UTF-8 (a BOM is accepted) line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> BinaryIO:
        try:
            self.handle = self.path.open("rb")
        except OSError as exc:
            raise ConfigError(f"cannot read the manifest {self.path}: {exc.strerror}") from None
        return self.handle

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _iter_yaml(path: Path, problems: list[tuple[int, str]]) -> Iterator[ManifestRow]:
    # Long on purpose: reading, decoding and the shape checks of a YAML manifest, each with the line
    # number the admin needs; the row rules themselves are shared with CSV (_row).
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            "YAML manifests need PyYAML", hint="pip install 'esj-provision[yaml]', or use a CSV manifest"
        ) from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the manifest {path}: {exc.strerror}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append((data.count(b"\n", 0, exc.start) + 1, _NOT_UTF8))
        return
    # YAML's own line breaks; an error at the end of the stream is reported on the last line.
    last_line = max(1, len(_YAML_BREAK.findall(text)) + (0 if _YAML_BREAK.search(text[-1:]) else 1))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not accept, e.g. a control character
        line = len(_YAML_BREAK.findall(text, 0, exc.position)) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        problems.append((min(line, last_line), f"YAML syntax: {exc.reason} ({char})"))
        return
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = (mark.line + 1) if mark else 1
        problems.append((min(line, last_line), f"YAML syntax: {getattr(exc, 'problem', None) or exc}"))
        return
    except RecursionError:
        problems.append((1, "YAML syntax: nested too deeply"))
        return
    if root is None:
        problems.append((1, "the manifest is empty"))
        return
    items = root.value if isinstance(root, yaml.SequenceNode) else None
    if items is None and isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "mailboxes" and isinstance(value, yaml.SequenceNode):
                items = value.value
    if items is None:
        problems.append((1, "expected a list of mailboxes (or a 'mailboxes:' list)"))
        return
    for node in items:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            problems.append((line, "each entry must be a mapping with mailbox, trustee, inbound, outbound"))
            continue
        raw = {str(k.value).strip().lower(): v.value for k, v in node.value if isinstance(v, yaml.ScalarNode)}
        unknown = [k for k in raw if k not in COLUMNS]
        for k in unknown:
            problems.append((line, f"unknown key {k!r} (known: {', '.join(COLUMNS)})"))
        missing = [c for c in REQUIRED if c not in raw]
        for c in missing:
            problems.append((line, f"missing {c!r}"))
        if unknown or missing:
            continue
        row = _row(line, raw, problems)
        if row is not None:
            yield row


_YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what PyYAML counts as a line break


def _rows(path: Path, problems: list[tuple[int, str]]) -> Iterator[ManifestRow]:
    if path.suffix.lower() in {".yaml", ".yml"}:
        return _iter_yaml(path, problems)
    return _iter_csv(path, problems)


@dataclass(frozen=True)
class ManifestInfo:
    path: Path
    rows: int


def validate(path: Path) -> ManifestInfo:
    """Read the whole manifest once; raise ManifestError listing every problem, or return its size."""
    if path.is_dir():
        raise UsageError(f"manifest {path} is a directory", hint="give the path of a CSV (or YAML) manifest file")
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist", hint="give the path of a CSV (or YAML) manifest")
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    count = 0
    for row in _rows(path, problems):
        key = row.mailbox.lower()
        if key in seen:
            problems.append((row.line, f"mailbox {row.mailbox} is already on line {seen[key]}"))
            continue
        seen[key] = row.line
        count += 1
    if not problems and count == 0:
        problems.append((1, "the manifest has a header but no rows"))
    if problems:
        problems.sort()
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise ManifestError(
            f"manifest {path} has {len(problems)} problem(s); nothing was done",
            shown + ([(shown[-1][0], f"... and {more} more")] if more else []),
            hint="fix every line listed and run again",
        )
    return ManifestInfo(path, count)


def rows(path: Path) -> Iterator[ManifestRow]:
    """Stream the rows of a manifest that :func:`validate` accepted."""
    problems: list[tuple[int, str]] = []
    yield from _rows(path, problems)
    if problems:  # the file changed since validation
        raise ManifestError(f"manifest {path} changed while it was being processed", problems)
