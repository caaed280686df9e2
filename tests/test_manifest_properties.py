"""Property tests for the manifest.

* Any input (random bytes, CSV-ish or YAML-ish text) validates or fails with our own errors, and
  every problem names a line that exists in the file.
* Any valid manifest (random rows, column order, quoting, line endings, blank lines, BOM) validates
  with the right count, and rows() gives back exactly those rows on the lines they were written.
* One corruption injected into a valid manifest is reported on exactly that row's line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esj_provision.errors import ConfigError, ManifestError
from esj_provision.fleet.manifest import MAX_LISTED_PROBLEMS, OPTIONAL, REQUIRED, ManifestRow, rows, validate
from esj_provision.models import Inbound, Outbound, UserTrustee

BOM = b"\xef\xbb\xbf"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(FAST, max_examples=400)  # cheap examples: more of them


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifest-properties")


# --------------------------------------------------------------------------- line counting, per format


def csv_line_count(data: bytes) -> int:
    """Lines as a CSV reader sees them: ended by \\n, \\r\\n or a lone \\r."""
    body = data.removeprefix(BOM)
    breaks = len(re.findall(rb"\r\n|\r|\n", body))
    return breaks + (1 if body and not body.endswith((b"\r", b"\n")) else 0)


def yaml_line_count(data: bytes) -> int:
    """Lines as YAML sees them: it also breaks at NEL, LS and PS (YAML 1.1)."""
    text = data.removeprefix(BOM).decode("utf-8", "replace")
    breaks = len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", text))
    return breaks + (1 if text and text[-1] not in "\r\n\x85\u2028\u2029" else 0)


def check_any_input(path: Path, data: bytes, line_count: int) -> None:
    path.write_bytes(data)
    try:
        info = validate(path)
    except ManifestError as exc:
        assert exc.problems, "a ManifestError must list at least one problem"
        assert len(exc.problems) <= MAX_LISTED_PROBLEMS + 1
        lines = [line for line, _ in exc.problems]
        assert lines == sorted(lines)
        for line, text in exc.problems:
            assert isinstance(line, int)
            assert 1 <= line <= max(1, line_count), (line, text, line_count)
            assert isinstance(text, str) and text
    except ConfigError:
        pass
    else:
        assert info.rows >= 1
        streamed = list(rows(path))  # a validated manifest streams without error
        assert len(streamed) == info.rows
        assert all(1 <= r.line <= line_count for r in streamed)


# --------------------------------------------------------------------------- arbitrary input


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_as_csv(workdir: Path, data: bytes) -> None:
    check_any_input(workdir / "random.csv", data, csv_line_count(data))


CSV_TOKENS = st.sampled_from(
    [
        "a@contoso.com",
        "A@CONTOSO.COM",
        "esj@contoso.com",
        "not-an-address",
        "@contoso.com",
        "imap",
        "EWS",
        "graph",
        "smtp",
        "pop3",
        "yes",
        "no",
        "maybe",
        "prod-1",
        "bad instance",
        "",
        " ",
        '"',
        '""',
        '"a,b"',
        '"x\ny"',
        ",",
        "\r",
        "\n",
        "\r\n",
        "\t",
        "\x00",
        "\ufeff",
        "é",
        "\u2028",
        "\udcff",  # becomes a stray 0xff byte: not UTF-8
        "\udcc3",  # a lone UTF-8 lead byte
        "MAILBOX",
        "colour",
        *REQUIRED,
        *OPTIONAL,
    ]
)


@st.composite
def csv_like(draw: st.DrawFn) -> bytes:
    header = draw(st.one_of(st.permutations(list(REQUIRED + OPTIONAL)), st.lists(CSV_TOKENS, max_size=8)))
    lines = [",".join(header[: draw(st.integers(0, len(header)))])]
    for _ in range(draw(st.integers(0, 8))):
        lines.append(",".join(draw(st.lists(st.one_of(CSV_TOKENS, st.text(max_size=6)), max_size=9))))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = ending.join(lines) + draw(st.sampled_from(["", ending]))
    data = text.encode("utf-8", "surrogateescape")
    return (BOM if draw(st.booleans()) else b"") + data


@FUZZ
@given(data=csv_like())
def test_csv_like_input(workdir: Path, data: bytes) -> None:
    check_any_input(workdir / "csvlike.csv", data, csv_line_count(data))


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_as_csv(workdir: Path, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    check_any_input(workdir / "text.csv", data, csv_line_count(data))


YAML_TOKENS = st.sampled_from(
    [
        "- ",
        "  ",
        "mailboxes:",
        "mailbox: a@contoso.com",
        "mailbox: A@contoso.com",
        "trustee: esj@contoso.com",
        "inbound: imap",
        "inbound: pop",
        "outbound: smtp",
        "send_as: no",
        "esj_instance: prod",
        "colour: red",
        "[",
        "]",
        "{",
        "}",
        ":",
        ",",
        "&a ",
        "*a",
        "!!str ",
        "!custom ",
        "|",
        ">",
        "'",
        '"',
        "#",
        "---",
        "...",
        "\t",
        "\x07",
        "\x85",
        "\u2028",
        "\ufeff",
        "\udcff",
        "\n",
        "\r\n",
        "\r",
    ]
)


@st.composite
def yaml_like(draw: st.DrawFn) -> bytes:
    """A few lines of YAML-ish tokens (and some free text), often ending with a line break."""
    lines = draw(st.lists(st.lists(st.one_of(YAML_TOKENS, st.text(max_size=4)), max_size=4), max_size=8))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028"]))
    text = ending.join("".join(tokens) for tokens in lines) + draw(st.sampled_from(["", ending]))
    return text.encode("utf-8", "surrogateescape")


@FUZZ
@given(data=st.one_of(yaml_like(), st.binary(max_size=200)))
def test_yaml_like_input(workdir: Path, data: bytes) -> None:
    check_any_input(workdir / "random.yaml", data, yaml_line_count(data))


# --------------------------------------------------------------------------- valid manifests round-trip


ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ADDRESS = st.builds(
    "{}@{}.{}".format,
    st.text(alphabet=ALNUM + "._+-'", min_size=1, max_size=10),
    st.text(alphabet=ALNUM, min_size=1, max_size=8),
    st.sampled_from(["com", "org", "co.uk", "Contoso.COM", "onmicrosoft.com"]),
)
INSTANCE = st.text(alphabet=ALNUM + "._-", min_size=1, max_size=64)
TRUE_WORDS = ["true", "yes", "y", "1", "on"]
FALSE_WORDS = ["false", "no", "n", "0", "off"]


CASINGS = st.sampled_from([str.lower, str.upper, str.title, lambda w: w[:1] + w[1:].upper()])


def any_case(draw: st.DrawFn, word: str) -> str:
    return draw(CASINGS)(word)


@dataclass
class Generated:
    columns: list[str]
    cells: list[dict[str, str]]  # what is written, per row
    expected: list[ManifestRow]  # with line 0: filled in when rendered


@st.composite
def valid_manifests(draw: st.DrawFn) -> Generated:
    optional = [c for c in OPTIONAL if draw(st.booleans())]
    columns = draw(st.permutations(list(REQUIRED) + optional))
    mailboxes = draw(st.lists(ADDRESS, min_size=1, max_size=12, unique_by=str.lower))
    cells: list[dict[str, str]] = []
    expected: list[ManifestRow] = []
    for mailbox in mailboxes:
        trustee = draw(ADDRESS.filter(lambda t, m=mailbox: t.lower() != m.lower()))
        inbound = draw(st.sampled_from(list(Inbound)))
        outbound = draw(st.sampled_from(list(Outbound)))
        pad = st.sampled_from(["", " ", "  ", "\t"])
        row = {
            "mailbox": draw(pad) + mailbox + draw(pad),
            "trustee": draw(pad) + trustee + draw(pad),
            "inbound": draw(pad) + any_case(draw, inbound.value) + draw(pad),
            "outbound": any_case(draw, outbound.value) + draw(pad),
        }
        send_as, auto, instance = True, False, None
        if "send_as" in columns:
            choice = draw(st.sampled_from([None, True, False]))
            if choice is not None:
                send_as = choice
                row["send_as"] = any_case(draw, draw(st.sampled_from(TRUE_WORDS if choice else FALSE_WORDS)))
            else:
                row["send_as"] = draw(pad)
        if "auto_response" in columns:
            choice = draw(st.sampled_from([None, True, False]))
            if choice is not None:
                auto = choice
                row["auto_response"] = any_case(draw, draw(st.sampled_from(TRUE_WORDS if choice else FALSE_WORDS)))
            else:
                row["auto_response"] = ""
        if "esj_instance" in columns:
            instance = draw(st.none() | INSTANCE)
            # An empty instance may be written as a quoted multi-line blank: it moves later rows down.
            row["esj_instance"] = instance if instance is not None else draw(st.sampled_from(["", " ", "\n", " \n\n "]))
        cells.append(row)
        expected.append(ManifestRow(0, mailbox, UserTrustee(trustee), inbound, outbound, send_as, auto, instance))
    return Generated(columns, cells, expected)


def render_cell(value: str, quote_all: bool) -> str:
    if quote_all or any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass
class Rendered:
    data: bytes
    lines: list[int]  # the line each row starts on


def render_csv(draw: st.DrawFn, gen: Generated, overrides: dict[int, str] | None = None) -> Rendered:
    """The manifest as CSV, with random header case, quoting, line endings, blank lines and BOM.

    ``overrides`` replaces the rendered text of some rows (by index) with a raw line.
    """
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    quote_all = draw(st.booleans())
    header = ",".join(any_case(draw, c) for c in gen.columns)
    out = [header + ending]
    line = 2
    lines: list[int] = []
    for index, row in enumerate(gen.cells):
        for _ in range(draw(st.integers(0, 2))):  # blank lines between rows
            out.append(draw(st.sampled_from(["", "  ", ",,,"])) + ending)
            line += 1
        lines.append(line)
        text = ",".join(render_cell(row.get(c, ""), quote_all) for c in gen.columns)
        if overrides and index in overrides:
            text = overrides[index]
        out.append(text + ending)
        line += 1 + text.count("\n")
    bom = BOM if draw(st.booleans()) else b""
    return Rendered(bom + "".join(out).encode("utf-8", "surrogateescape"), lines)


@FAST
@given(st.data())
def test_valid_csv_round_trips(workdir: Path, data: st.DataObject) -> None:
    gen = data.draw(valid_manifests())
    rendered = render_csv(data.draw, gen)
    path = workdir / "valid.csv"
    path.write_bytes(rendered.data)
    info = validate(path)
    assert info.rows == len(gen.expected)
    want = [
        ManifestRow(line, r.mailbox, r.trustee, r.inbound, r.outbound, r.send_as, r.auto_response, r.esj_instance)
        for line, r in zip(rendered.lines, gen.expected)
    ]
    assert list(rows(path)) == want


@FAST
@given(st.data())
def test_valid_yaml_round_trips(workdir: Path, data: st.DataObject) -> None:
    gen = data.draw(valid_manifests())
    entries = [{k: v.strip() for k, v in row.items()} for row in gen.cells]
    for entry in entries:
        for column in ("send_as", "auto_response", "esj_instance"):
            if column in entry and not entry[column]:
                del entry[column]
    wrapped = data.draw(st.booleans())
    text = yaml.safe_dump({"mailboxes": entries} if wrapped else entries, sort_keys=data.draw(st.booleans()))
    entry_lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.startswith("- ")]
    assert len(entry_lines) == len(entries)
    path = workdir / "valid.yaml"
    path.write_text(text, encoding="utf-8")
    assert validate(path).rows == len(gen.expected)
    want = [
        ManifestRow(line, r.mailbox, r.trustee, r.inbound, r.outbound, r.send_as, r.auto_response, r.esj_instance)
        for line, r in zip(entry_lines, gen.expected)
    ]
    assert list(rows(path)) == want


# --------------------------------------------------------------------------- one corruption, one line


CORRUPTIONS = ["inbound", "outbound", "mailbox", "trustee-is-mailbox", "not-utf8", "too-many-fields", "duplicate"]


@FAST
@given(st.data())
def test_one_corruption_is_reported_on_its_line_only(workdir: Path, data: st.DataObject) -> None:
    gen = data.draw(valid_manifests())
    index = data.draw(st.integers(0, len(gen.cells) - 1))
    kind = data.draw(st.sampled_from(CORRUPTIONS if index > 0 else [k for k in CORRUPTIONS if k != "duplicate"]))
    row = dict(gen.cells[index])
    if kind == "inbound":
        row["inbound"] = "pop3"
    elif kind == "outbound":
        row["outbound"] = "fax"
    elif kind == "mailbox":
        row["mailbox"] = row["mailbox"].replace("@", " at ")
    elif kind == "trustee-is-mailbox":
        row["trustee"] = row["mailbox"].upper()
    elif kind == "not-utf8":
        row["trustee"] = row["trustee"].replace("@", "\udcff@")
    elif kind == "duplicate":
        row["mailbox"] = gen.cells[data.draw(st.integers(0, index - 1))]["mailbox"].swapcase()
    if kind == "too-many-fields":
        override = ",".join(render_cell(row.get(c, ""), True) for c in gen.columns) + ",extra"
    else:
        override = ",".join(render_cell(row.get(c, ""), True) for c in gen.columns)
    rendered = render_csv(data.draw, gen, {index: override})
    path = workdir / "corrupt.csv"
    path.write_bytes(rendered.data)
    with pytest.raises(ManifestError) as caught:
        validate(path)
    problems = caught.value.problems
    line = rendered.lines[index]
    if kind == "not-utf8":  # the physical line of the bad byte: a quoted multi-line cell may come before it
        line += override[: override.index("\udcff")].count("\n")
    assert {n for n, _ in problems} == {line}, (kind, problems)
    if kind == "duplicate":
        (problem,) = problems
        first = next(
            i for i, c in enumerate(gen.cells) if c["mailbox"].strip().lower() == row["mailbox"].strip().lower()
        )
        assert problem[1].endswith(f"is already on line {rendered.lines[first]}")
    if kind == "not-utf8":
        assert problems == [(line, "not valid UTF-8 (save the manifest as UTF-8)")]
