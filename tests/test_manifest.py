"""The bulk/audit manifest: CSV (and YAML) parsing, every problem with its exact line number, streaming."""

from __future__ import annotations

import contextlib
import gc
import itertools
import sys
import time
import tracemalloc
import types
from pathlib import Path

import pytest

from esj_provision.errors import ConfigError, ManifestError, UsageError
from esj_provision.fleet.manifest import MAX_LISTED_PROBLEMS, ManifestInfo, ManifestRow, rows, validate
from esj_provision.models import Inbound, Outbound, UserTrustee

HEADER = "mailbox,trustee,inbound,outbound"
GOOD = "a@contoso.com,esj@contoso.com,imap,smtp"
NOT_UTF8 = "not valid UTF-8 (save the manifest as UTF-8)"


def write(tmp_path: Path, content: str | bytes, name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def problems_of(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(ManifestError) as caught:
        validate(path)
    return caught.value.problems


def csv_text(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- valid CSV


def test_valid_csv_is_counted_and_streamed_with_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            HEADER + ",send_as,auto_response,esj_instance",
            "a@contoso.com,esj@contoso.com,imap,smtp,,,",
            "b@contoso.com,esj@contoso.com,EWS,Graph,no,yes,esj-prod.1",
            "c@contoso.com,esj@contoso.com,graph,ews,0,ON,",
        ),
    )
    assert validate(path) == ManifestInfo(path, 3)
    assert list(rows(path)) == [
        ManifestRow(2, "a@contoso.com", UserTrustee("esj@contoso.com"), Inbound.IMAP, Outbound.SMTP, True, False, None),
        ManifestRow(3, "b@contoso.com", UserTrustee("esj@contoso.com"), Inbound.EWS, Outbound.GRAPH, False, True, "esj-prod.1"),
        ManifestRow(4, "c@contoso.com", UserTrustee("esj@contoso.com"), Inbound.GRAPH, Outbound.EWS, False, True, None),
    ]


def test_optional_columns_absent_take_their_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, GOOD))
    (row,) = rows(path)
    assert (row.send_as, row.auto_response, row.esj_instance) == (True, False, None)


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [(s, True) for s in ("true", "YES", "y", "1", "On")] + [(s, False) for s in ("false", "No", "n", "0", "OFF")],
)
def test_boolean_spellings(tmp_path: Path, spelling: str, expected: bool) -> None:
    path = write(tmp_path, csv_text(HEADER + ",send_as,auto_response", f"{GOOD},{spelling},{spelling}"))
    (row,) = rows(path)
    assert (row.send_as, row.auto_response) == (expected, expected)


def test_bom_and_crlf(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + (HEADER + "\r\n" + GOOD + "\r\n" + "b@contoso.com,esj@contoso.com,ews,graph\r\n").encode()
    path = write(tmp_path, data)
    assert validate(path).rows == 2
    got = list(rows(path))
    assert [(r.line, r.mailbox, r.outbound) for r in got] == [
        (2, "a@contoso.com", Outbound.SMTP),
        (3, "b@contoso.com", Outbound.GRAPH),
    ]


def test_bom_does_not_hide_the_first_column_name(tmp_path: Path) -> None:
    # Without BOM handling the first column would be named '\ufeffmailbox' and reported missing.
    path = write(tmp_path, b"\xef\xbb\xbf" + csv_text("mailbox,trustee,inbound,outbound", GOOD).encode())
    (row,) = rows(path)
    assert row.mailbox == "a@contoso.com"


def test_lone_cr_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path, (HEADER + "\r" + GOOD + "\r" + "b@contoso.com,esj@contoso.com,bogus,smtp\r").encode())
    assert problems_of(path) == [(3, "unknown inbound protocol 'bogus'; choose one of: imap, ews, graph")]


def test_quoted_fields_and_a_comma_inside_quotes_is_one_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            '"mailbox","trustee","inbound","outbound"',
            '"a@contoso.com","esj@contoso.com","imap","smtp"',
            '"x,y@contoso.com",esj@contoso.com,imap,smtp',
        ),
    )
    # One problem about the address with a comma, not "5 fields": the quoted comma stayed inside.
    assert problems_of(path) == [(3, "mailbox 'x,y@contoso.com' is not an e-mail address")]


def test_multi_line_quoted_field_keeps_later_line_numbers_right(tmp_path: Path) -> None:
    content = csv_text(
        HEADER + ",esj_instance",
        'a@contoso.com,esj@contoso.com,imap,smtp,"',  # line 2: a quoted field that spans lines 2-4
        "",
        '"',
        "b@contoso.com,esj@contoso.com,imap,smtp,",  # line 5
        "c@contoso.com,esj@contoso.com,pop3,smtp,",  # line 6: bad
    )
    path = write(tmp_path, content)
    assert problems_of(path) == [(6, "unknown inbound protocol 'pop3'; choose one of: imap, ews, graph")]
    valid = write(tmp_path, content.replace("pop3", "imap"), "valid.csv")
    assert validate(valid).rows == 3
    assert [r.line for r in rows(valid)] == [2, 5, 6]


def test_multi_line_quoted_bad_field_is_reported_on_the_line_the_row_starts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            HEADER, GOOD, '"x@contoso.com', 'y",esj@contoso.com,imap,smtp', "b@contoso.com,esj@contoso.com,imap,fax"
        ),
    )
    assert problems_of(path) == [
        (3, "mailbox 'x@contoso.com\\ny' is not an e-mail address"),
        (5, "unknown outbound protocol 'fax'; choose one of: smtp, ews, graph"),
    ]


def test_column_order_is_free_and_header_case_insensitive(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            " Outbound , SEND_AS,Trustee,INBOUND, MailBox ",
            "graph,false,esj@contoso.com,ews,a@contoso.com",
        ),
    )
    (row,) = rows(path)
    assert (row.mailbox, row.trustee, row.inbound, row.outbound, row.send_as) == (
        "a@contoso.com",
        UserTrustee("esj@contoso.com"),
        Inbound.EWS,
        Outbound.GRAPH,
        False,
    )


def test_values_are_stripped_and_protocols_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, "  a@contoso.com ,\tesj@contoso.com , IMAP , SMTP "))
    (row,) = rows(path)
    assert (row.mailbox, row.trustee, row.inbound, row.outbound) == (
        "a@contoso.com",
        UserTrustee("esj@contoso.com"),
        Inbound.IMAP,
        Outbound.SMTP,
    )


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            "",  # 1: blank lines before the header are skipped too
            HEADER,  # 2
            "",  # 3
            "   ",  # 4
            ",,,",  # 5: only empty fields
            GOOD,  # 6
            "",  # 7
            "b@contoso.com,esj@contoso.com,imap,smtp",  # 8
        ),
    )
    assert validate(path).rows == 2
    assert [r.line for r in rows(path)] == [6, 8]


def test_fewer_fields_than_columns_leaves_the_rest_empty(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER + ",send_as", GOOD, "b@contoso.com,esj@contoso.com"))
    assert problems_of(path) == [
        (3, "unknown inbound protocol ''; choose one of: imap, ews, graph"),
        (3, "unknown outbound protocol ''; choose one of: smtp, ews, graph"),
    ]


# --------------------------------------------------------------------------- each problem kind, its line


BAD_ROWS = [
    (
        "bad mailbox address",
        "not-an-address,esj@contoso.com,imap,smtp",
        "mailbox 'not-an-address' is not an e-mail address",
    ),
    ("bad trustee address", "a@contoso.com,esj@contoso,imap,smtp", "trustee 'esj@contoso' is not an e-mail address"),
    (
        "address with a space",
        "a b@contoso.com,esj@contoso.com,imap,smtp",
        "mailbox 'a b@contoso.com' is not an e-mail address",
    ),
    ("empty mailbox", ",esj@contoso.com,imap,smtp", "mailbox is empty"),
    ("empty trustee", "a@contoso.com,  ,imap,smtp", "trustee is empty"),
    ("unknown inbound", "a@contoso.com,esj@contoso.com,pop3,smtp", "unknown inbound protocol 'pop3'; choose one of: imap, ews, graph"),
    ("empty inbound", "a@contoso.com,esj@contoso.com,,smtp", "unknown inbound protocol ''; choose one of: imap, ews, graph"),
    ("unknown outbound", "a@contoso.com,esj@contoso.com,imap,fax", "unknown outbound protocol 'fax'; choose one of: smtp, ews, graph"),
    ("bad send_as", "a@contoso.com,esj@contoso.com,imap,smtp,maybe,,", "send_as 'maybe' is not true/false"),
    ("bad auto_response", "a@contoso.com,esj@contoso.com,imap,smtp,,2,", "auto_response '2' is not true/false"),
    (
        "trustee is the mailbox (case-insensitive)",
        "Shared@Contoso.com,shared@contoso.COM,imap,smtp",
        "the trustee is the shared mailbox itself; give the account ESJ signs in with",
    ),
    ("too many fields", "a@contoso.com,esj@contoso.com,imap,smtp,,,,extra", "8 fields, but the header names 7"),
    (
        "esj_instance with a space",
        "a@contoso.com,esj@contoso.com,imap,smtp,,,esj prod",
        "esj_instance 'esj prod' may only hold letters, digits, '-', '_' and '.' (64 at most)",
    ),
    (
        "esj_instance too long",
        "a@contoso.com,esj@contoso.com,imap,smtp,,," + "x" * 65,
        f"esj_instance {'x' * 65!r} may only hold letters, digits, '-', '_' and '.' (64 at most)",
    ),
]


@pytest.mark.parametrize(("row", "problem"), [p[1:] for p in BAD_ROWS], ids=[p[0] for p in BAD_ROWS])
def test_each_row_problem_is_reported_with_its_exact_line(tmp_path: Path, row: str, problem: str) -> None:
    path = write(
        tmp_path,
        csv_text(
            HEADER + ",send_as,auto_response,esj_instance",
            "ok1@contoso.com,esj@contoso.com,imap,smtp,,,",  # 2
            "",  # 3: blank, still a line
            row,  # 4
            "ok2@contoso.com,esj@contoso.com,imap,smtp,,,",  # 5
        ),
    )
    assert problems_of(path) == [(4, problem)]


def test_esj_instance_of_64_allowed_characters_is_fine(tmp_path: Path) -> None:
    instance = "Ab1-_." + "x" * 58
    path = write(tmp_path, csv_text(HEADER + ",esj_instance", f"{GOOD},{instance}"))
    (row,) = rows(path)
    assert row.esj_instance == instance


def test_duplicate_mailbox_is_case_insensitive_and_names_the_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            HEADER,
            "a@contoso.com,esj@contoso.com,imap,smtp",  # 2
            "b@contoso.com,esj@contoso.com,imap,smtp",  # 3
            "A@CONTOSO.COM,other@contoso.com,ews,graph",  # 4
            "a@contoso.com,esj@contoso.com,imap,smtp",  # 5
        ),
    )
    assert problems_of(path) == [
        (4, "mailbox A@CONTOSO.COM is already on line 2"),
        (5, "mailbox a@contoso.com is already on line 2"),
    ]


def test_same_trustee_for_many_mailboxes_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, *(f"m{i}@contoso.com,esj@contoso.com,imap,smtp" for i in range(5))))
    assert validate(path).rows == 5


# --------------------------------------------------------------------------- header problems


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "mailbox,trustee,inbound",
            [(1, "missing column 'outbound' (the header must name mailbox, trustee, inbound, outbound)")],
        ),
        (
            "mailbox,inbound",
            [
                (1, "missing column 'outbound' (the header must name mailbox, trustee, inbound, outbound)"),
                (1, "missing column 'trustee' (the header must name mailbox, trustee, inbound, outbound)"),
            ],
        ),
        (
            HEADER + ",colour",
            [
                (
                    1,
                    "unknown column 'colour' (known: mailbox, trustee, inbound, outbound, send_as, auto_response, esj_instance)",
                )
            ],
        ),
        (HEADER + ",Mailbox", [(1, "column 'mailbox' appears twice")]),
    ],
    ids=["missing one", "missing two", "unknown", "duplicate (case-insensitive)"],
)
def test_header_problems(tmp_path: Path, header: str, expected: list[tuple[int, str]]) -> None:
    # Rows under a bad header are not validated: the column names would be guesses.
    path = write(tmp_path, csv_text(header, "not-an-address,x,y,z"))
    assert problems_of(path) == expected


def test_header_problems_carry_the_header_line_after_leading_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text("", "", "mailbox,trustee,inbound", GOOD))
    assert problems_of(path) == [
        (3, "missing column 'outbound' (the header must name mailbox, trustee, inbound, outbound)")
    ]


def test_a_row_as_header_is_reported_as_missing_and_unknown_columns(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(GOOD))
    found = problems_of(path)
    assert {line for line, _ in found} == {1}
    assert sum(text.startswith("missing column") for _, text in found) == 4
    assert sum(text.startswith("unknown column") for _, text in found) == 4


@pytest.mark.parametrize("content", [csv_text(HEADER), csv_text(HEADER, "", "  ", ",,,"), HEADER])
def test_header_only(tmp_path: Path, content: str) -> None:
    assert problems_of(write(tmp_path, content)) == [(1, "the manifest has a header but no rows")]


@pytest.mark.parametrize(
    "content", [b"", b"\n\n", b"   \r\n", b"\xef\xbb\xbf"], ids=["empty", "blank lines", "spaces", "BOM only"]
)
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    (problem,) = problems_of(write(tmp_path, content))
    assert problem[0] == 1
    assert problem[1].startswith("the manifest is empty")


# --------------------------------------------------------------------------- encoding


def test_invalid_utf8_is_reported_on_its_line_and_other_lines_are_still_validated(tmp_path: Path) -> None:
    data = csv_text(
        HEADER,
        GOOD,  # 2
        "b\udcff@contoso.com,esj@contoso.com,imap,smtp",  # 3: a stray 0xff byte
        "c@contoso.com,esj@contoso.com,bogus,smtp",  # 4
        "d@contoso.com,esj@contoso.com,imap,smtp",  # 5
        "d@contoso.com,esj@contoso.com,imap,smtp",  # 6
    ).encode("utf-8", "surrogateescape")
    assert problems_of(write(tmp_path, data)) == [
        (3, NOT_UTF8),
        (4, "unknown inbound protocol 'bogus'; choose one of: imap, ews, graph"),
        (6, "mailbox d@contoso.com is already on line 5"),
    ]


def test_latin1_file_is_reported_per_line(tmp_path: Path) -> None:
    # A file saved as "ANSI": é is the single byte 0xe9, on lines 3 and 5.
    data = csv_text(
        HEADER,
        GOOD,
        "rené@contoso.com,esj@contoso.com,imap,smtp",
        "b@contoso.com,esj@contoso.com,imap,smtp",
        "c@contoso.com,josé@contoso.com,imap,smtp",
    ).encode("latin-1")
    assert problems_of(write(tmp_path, data)) == [(3, NOT_UTF8), (5, NOT_UTF8)]


def test_invalid_utf8_far_into_the_file_keeps_its_line(tmp_path: Path) -> None:
    # Well past any read buffer, so the line does not depend on how the file is read in chunks.
    good = [f"m{i}@contoso.com,esj@contoso.com,imap,smtp" for i in range(2, 1500)]  # lines 2..1499
    data = (csv_text(HEADER, *good) + "x\xff@contoso.com,esj@contoso.com,imap,smtp\n").encode("latin-1")
    data += b"z@contoso.com,esj@contoso.com,imap,nope\n"  # line 1501
    assert problems_of(write(tmp_path, data)) == [
        (1500, NOT_UTF8),
        (1501, "unknown outbound protocol 'nope'; choose one of: smtp, ews, graph"),
    ]


def test_invalid_utf8_in_the_header(tmp_path: Path) -> None:
    data = b"mailbox,trustee,inbound,outbound\xff\n" + GOOD.encode() + b"\n"
    assert problems_of(write(tmp_path, data)) == [(1, NOT_UTF8)]


def test_invalid_utf8_on_the_second_line_of_a_quoted_field(tmp_path: Path) -> None:
    data = (csv_text(HEADER, GOOD) + '"b@contoso.com\n\xff",esj@contoso.com,imap,smtp\n').encode("latin-1")
    data += b"c@contoso.com,esj@contoso.com,imap,smtp\n"
    assert problems_of(write(tmp_path, data)) == [(4, NOT_UTF8)]


def test_non_ascii_utf8_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, "rené@contoso.com,esj@contoso.com,imap,smtp"))
    (row,) = rows(path)
    assert row.mailbox == "rené@contoso.com"


def test_a_field_over_the_csv_limit_is_a_problem_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, GOOD, '"' + "x" * 200_000 + '",esj@contoso.com,imap,smtp'))
    (problem,) = problems_of(path)
    assert problem[0] == 3
    assert problem[1].startswith("CSV syntax:")


# --------------------------------------------------------------------------- many problems


def test_every_problem_is_reported_at_once_sorted_by_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            HEADER + ",send_as",
            "a@contoso.com,esj@contoso.com,imap,smtp,",  # 2 ok
            "bad,esj@contoso.com,pop3,fax,perhaps",  # 3: four problems
            "a@contoso.com,esj@contoso.com,imap,smtp,",  # 4: duplicate
            "c@contoso.com,c@contoso.com,imap,smtp,",  # 5: self
            "d@contoso.com,esj@contoso.com,imap,smtp,,",  # 6: too many fields
        ),
    )
    with pytest.raises(ManifestError) as caught:
        validate(path)
    error = caught.value
    assert error.problems == [
        (3, "mailbox 'bad' is not an e-mail address"),
        (3, "send_as 'perhaps' is not true/false"),
        (3, "unknown inbound protocol 'pop3'; choose one of: imap, ews, graph"),
        (3, "unknown outbound protocol 'fax'; choose one of: smtp, ews, graph"),
        (4, "mailbox a@contoso.com is already on line 2"),
        (5, "the trustee is the shared mailbox itself; give the account ESJ signs in with"),
        (6, "6 fields, but the header names 5"),
    ]
    assert error.message == f"manifest {path} has 7 problem(s); nothing was done"
    assert error.hint == "fix every line listed and run again"
    assert isinstance(error, UsageError)  # exit status 2
    assert error.to_dict()["problems"][0] == {"line": 3, "problem": "mailbox 'bad' is not an e-mail address"}


def test_more_than_200_problems_are_capped_with_a_count(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, *(f"bad{i},esj@contoso.com,imap,smtp" for i in range(250))))
    with pytest.raises(ManifestError) as caught:
        validate(path)
    error = caught.value
    assert error.message == f"manifest {path} has 250 problem(s); nothing was done"
    assert len(error.problems) == MAX_LISTED_PROBLEMS + 1 == 201
    assert error.problems[:MAX_LISTED_PROBLEMS] == [
        (line, f"mailbox 'bad{line - 2}' is not an e-mail address") for line in range(2, 202)
    ]
    assert error.problems[-1] == (201, "... and 50 more")


def test_exactly_200_problems_are_not_capped(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, *(f"bad{i},esj@contoso.com,imap,smtp" for i in range(200))))
    found = problems_of(path)
    assert len(found) == 200
    assert not any("more" in text for _, text in found)


def test_validation_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, "bad,esj@contoso.com,imap,smtp"))
    before = path.read_bytes()
    with pytest.raises(ManifestError):
        validate(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- YAML


YAML_LIST = """\
# ESJ mailboxes
- mailbox: a@contoso.com
  trustee: esj@contoso.com
  inbound: imap
  outbound: smtp

- mailbox: b@contoso.com
  trustee: esj@contoso.com
  inbound: Graph
  outbound: graph
  send_as: false
  auto_response: yes
  esj_instance: prod
"""


def test_yaml_list_form(tmp_path: Path) -> None:
    path = write(tmp_path, YAML_LIST, "manifest.yaml")
    assert validate(path).rows == 2
    assert list(rows(path)) == [
        ManifestRow(2, "a@contoso.com", UserTrustee("esj@contoso.com"), Inbound.IMAP, Outbound.SMTP, True, False, None),
        ManifestRow(7, "b@contoso.com", UserTrustee("esj@contoso.com"), Inbound.GRAPH, Outbound.GRAPH, False, True, "prod"),
    ]


def test_yaml_mailboxes_key_form_and_yml_suffix(tmp_path: Path) -> None:
    text = "mailboxes:\n" + "".join("  " + line + "\n" if line else "\n" for line in YAML_LIST.splitlines())
    path = write(tmp_path, text, "manifest.yml")
    assert [(r.line, r.mailbox) for r in rows(path)] == [(3, "a@contoso.com"), (8, "b@contoso.com")]
    assert validate(path).rows == 2


def test_yaml_flow_entries_and_problems_on_their_lines(tmp_path: Path) -> None:
    text = (
        "mailboxes:\n"
        "  - {mailbox: a@contoso.com, trustee: esj@contoso.com, inbound: imap, outbound: smtp}\n"
        "  - {mailbox: a@contoso.com, trustee: esj@contoso.com, inbound: imap, outbound: smtp}\n"
        "  - {mailbox: c@contoso.com, trustee: esj@contoso.com, inbound: pop, outbound: smtp, send_as: sure}\n"
    )
    assert problems_of(write(tmp_path, text, "m.yaml")) == [
        (3, "mailbox a@contoso.com is already on line 2"),
        (4, "send_as 'sure' is not true/false"),
        (4, "unknown inbound protocol 'pop'; choose one of: imap, ews, graph"),
    ]


def test_yaml_unknown_and_missing_keys(tmp_path: Path) -> None:
    text = """\
- mailbox: a@contoso.com
  trustee: esj@contoso.com
  inbound: imap
  outbound: smtp
  colour: blue
- mailbox: b@contoso.com
  inbound: imap
- just a string
"""
    assert problems_of(write(tmp_path, text, "m.yaml")) == [
        (1, "unknown key 'colour' (known: mailbox, trustee, inbound, outbound, send_as, auto_response, esj_instance)"),
        (6, "missing 'outbound'"),
        (6, "missing 'trustee'"),
        (8, "each entry must be a mapping with mailbox, trustee, inbound, outbound"),
    ]


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    text = "- mailbox: a@contoso.com\n  trustee: esj@contoso.com\n  inbound: [imap\n  outbound: smtp\n- mailbox: b\n"
    # The flow list opened on line 3 runs into "outbound:" on line 4, where the parser gives up.
    assert problems_of(write(tmp_path, text, "m.yaml")) == [(4, "YAML syntax: expected ',' or ']', but got ':'")]


def test_yaml_error_at_the_end_of_the_stream_stays_within_the_file(tmp_path: Path) -> None:
    text = "- mailbox: a@contoso.com\n  trustee: [b\n"  # two lines; the parser fails at <stream end>
    assert problems_of(write(tmp_path, text, "m.yaml")) == [
        (2, "YAML syntax: expected ',' or ']', but got '<stream end>'")
    ]


def test_yaml_control_character_is_reported_on_its_line(tmp_path: Path) -> None:
    text = "- mailbox: a@contoso.com\n  trustee: esj@contoso.com\n  inbound: imap\x07\n"
    assert problems_of(write(tmp_path, text, "m.yaml")) == [
        (3, "YAML syntax: special characters are not allowed (#x0007)")
    ]


def test_yaml_invalid_utf8_line_with_a_bom(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf- mailbox: a@contoso.com\n  trustee: esj@contoso.com\n\xffinbound: imap\n"
    assert problems_of(write(tmp_path, data, "m.yaml")) == [(3, NOT_UTF8)]


def test_yaml_nested_too_deeply_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "[" * 1500, "m.yaml")) == [(1, "YAML syntax: nested too deeply")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [(1, "the manifest is empty")]),
        ("# only a comment\n", [(1, "the manifest is empty")]),
        ("mailbox: a@contoso.com\n", [(1, "expected a list of mailboxes (or a 'mailboxes:' list)")]),
        ("mailboxes: a@contoso.com\n", [(1, "expected a list of mailboxes (or a 'mailboxes:' list)")]),
        ("just text\n", [(1, "expected a list of mailboxes (or a 'mailboxes:' list)")]),
        ("[]\n", [(1, "the manifest has a header but no rows")]),
        ("mailboxes: []\n", [(1, "the manifest has a header but no rows")]),
    ],
)
def test_yaml_wrong_shapes(tmp_path: Path, text: str, expected: list[tuple[int, str]]) -> None:
    assert problems_of(write(tmp_path, text, "m.yaml")) == expected


# --------------------------------------------------------------------------- files and streaming


@pytest.mark.parametrize("name", ["missing.csv", "missing.yaml"])
def test_missing_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        validate(tmp_path / name)
    assert caught.value.hint == "give the path of a CSV (or YAML) manifest"
    with pytest.raises(ConfigError, match="cannot read the manifest"):
        next(rows(tmp_path / name))


def test_a_directory_is_not_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        validate(tmp_path)


@pytest.mark.parametrize("command", ["bulk", "audit"])
def test_a_directory_given_as_the_manifest_is_a_usage_error_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from typer.testing import CliRunner

    from esj_provision.cli import app

    (tmp_path / "manifests").mkdir()
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    r = CliRunner().invoke(
        app, [command, "manifests"], env={"ESJ_PROVISION_JOURNAL": str(tmp_path / "j.jsonl")}, catch_exceptions=False
    )
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == "error: manifest manifests is a directory"
    assert sorted(tmp_path.rglob("*")) == before


def test_a_manifest_saved_by_excel_in_a_european_locale(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" under a German or French locale: a BOM, `;` between fields, CRLF."""
    text = (
        "mailbox;trustee;inbound;outbound;send_as;esj_instance\r\n"
        "a@contoso.com;esj@contoso.com;imap;smtp;yes;esj-emea\r\n"
        "\r\n"
        "b@contoso.com;esj@contoso.com;graph;graph;no;esj-apac\r\n"
    )
    path = write(tmp_path, b"\xef\xbb\xbf" + text.encode())
    assert validate(path).rows == 2
    got = [(r.line, r.mailbox, r.inbound, r.outbound, r.send_as, r.esj_instance) for r in rows(path)]
    assert got == [
        (2, "a@contoso.com", Inbound.IMAP, Outbound.SMTP, True, "esj-emea"),
        (4, "b@contoso.com", Inbound.GRAPH, Outbound.GRAPH, False, "esj-apac"),
    ]


def test_semicolon_manifest_problems_name_their_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "mailbox;trustee;inbound;outbound\r\na@contoso.com;esj@contoso.com;pop3;smtp\r\n")
    assert [line for line, _ in problems_of(path)] == [2]


def test_rows_streams_exactly_what_validate_counted(tmp_path: Path) -> None:
    lines = [HEADER + ",esj_instance"]
    for i in range(300):
        lines.append(f"m{i}@contoso.com,esj{i % 7}@contoso.com,{('imap', 'ews', 'graph')[i % 3]},smtp,i{i}")
        if i % 50 == 0:
            lines.append("")
    path = write(tmp_path, csv_text(*lines))
    info = validate(path)
    streamed = list(rows(path))
    assert info.rows == len(streamed) == 300
    assert [r.mailbox for r in streamed] == [f"m{i}@contoso.com" for i in range(300)]
    assert [r.esj_instance for r in streamed] == [f"i{i}" for i in range(300)]


def test_rows_raises_if_the_file_went_bad_after_validation(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(HEADER, GOOD))
    validate(path)
    path.write_text(csv_text(HEADER, GOOD, "bad,esj@contoso.com,imap,smtp"), encoding="utf-8")
    stream = rows(path)
    assert next(stream).mailbox == "a@contoso.com"  # good rows still come first, in order
    with pytest.raises(ManifestError, match="changed while it was being processed") as caught:
        next(stream)
    assert caught.value.problems == [(3, "mailbox 'bad' is not an e-mail address")]


BIG_ROWS = 50_000


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.csv"
    body = "".join(
        f"mailbox{i:06d}@contoso.com,esj@contoso.com,imap,smtp,true,false,esj-{i % 10}\n" for i in range(BIG_ROWS)
    )
    path.write_text(HEADER + ",send_as,auto_response,esj_instance\n" + body, encoding="utf-8")
    return path


def test_rows_is_lazy_first_row_before_the_file_is_read(big_manifest: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.csv"
    copy.write_bytes(big_manifest.read_bytes())
    stream = rows(copy)
    assert isinstance(stream, types.GeneratorType)
    started = time.perf_counter()
    first = next(stream)
    assert time.perf_counter() - started < 0.5
    assert (first.line, first.mailbox) == (2, "mailbox000000@contoso.com")
    # Cut the file short under the open stream: a lazy reader only has a buffer's worth left to give
    # (and the row the buffer ends in is torn, which rows() reports as a changed file).
    copy.write_bytes(b"")
    remaining = 0
    with contextlib.suppress(ManifestError):
        for _ in stream:
            remaining += 1
    assert remaining < BIG_ROWS // 2


def test_rows_does_not_load_the_file(big_manifest: Path) -> None:
    # The file is ~3.7 MB; reading it whole (or a list of its rows) would show in the peak.
    assert big_manifest.stat().st_size > 3_000_000
    stream = rows(big_manifest)
    tracemalloc.start()
    try:
        for _ in itertools.islice(stream, 5_000):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        stream.close()
    assert peak < 1_000_000, f"peak {peak} bytes"


def test_rows_memory_stays_flat_over_50k_rows(big_manifest: Path) -> None:
    # tracemalloc over all 50k rows costs seconds; the interpreter's count of allocated blocks is
    # free to sample and tells the same story: kept rows would add >= 50,000 blocks (one each).
    gc.collect()
    baseline = sys.getallocatedblocks()
    growth = 0
    count = 0
    last = None
    for count, row in enumerate(rows(big_manifest), start=1):
        last = row
        if count % 1_000 == 0:
            growth = max(growth, sys.getallocatedblocks() - baseline)
    assert count == BIG_ROWS
    assert last is not None and (last.line, last.mailbox) == (BIG_ROWS + 1, f"mailbox{BIG_ROWS - 1:06d}@contoso.com")
    assert growth < 5_000, f"{growth} blocks more after streaming {BIG_ROWS} rows"


def test_validate_big_manifest(big_manifest: Path) -> None:
    assert validate(big_manifest).rows == BIG_ROWS
