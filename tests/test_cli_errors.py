"""Typer's own usage errors read like the tool's; an unexpected error is one line unless asked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from esj_provision.cli import app

EMIT = ["emit", "support@contoso.com", "--trustee", "esj@contoso.com", "--inbound", "imap", "--outbound", "smtp"]


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["onboard", "--bogus"], "error: no such option: --bogus", "esj-provision onboard"),
        (["onboard", "--inbound", "imap", "--outbound", "smtp"], "error: missing argument 'MAILBOX'", "esj-provision onboard"),
        (["emit", "a@contoso.com", "--inbound", "imap", "--outbound", "smtp"], "error: missing option '--trustee'", "esj-provision emit"),
        ([*EMIT, "--section-index", "-1"], "error: invalid value for '--section-index'", "esj-provision emit"),
        (["bogus"], "error: no such command 'bogus'", "esj-provision"),
        (["--bogus", "emit"], "error: no such option: --bogus", "esj-provision"),
    ],
)
def test_usage_errors_found_by_typer_read_like_the_tools_own(args: list[str], message: str, command: str) -> None:
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(message), r.stderr
    assert lines[1:] == [f"hint: see `{command} --help`"]
    assert "Usage:" not in r.stderr and "╭" not in r.stderr  # no box, no usage block


def test_no_arguments_still_shows_the_help() -> None:
    r = CliRunner().invoke(app, [], catch_exceptions=False)
    assert r.exit_code == 2
    assert "Usage: esj-provision" in r.output and "onboard" in r.output


def _boom(*args: object, **kwargs: object) -> None:
    raise ValueError("boom: something the tool did not expect")


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("esj_provision.esj.options.build_options", _boom)
    monkeypatch.delenv("ESJ_PROVISION_DEBUG", raising=False)
    r = CliRunner().invoke(app, EMIT, catch_exceptions=False)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "error: unexpected error (ValueError): boom: something the tool did not expect",
        "hint: this is a bug in esj-provision: rerun with --traceback (or ESJ_PROVISION_DEBUG=1) and report the traceback",
    ]
    assert "Traceback" not in r.output


@pytest.mark.parametrize(("args", "env"), [(["--traceback"], {}), ([], {"ESJ_PROVISION_DEBUG": "1"})])
def test_traceback_flag_or_debug_variable_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]
) -> None:
    monkeypatch.setattr("esj_provision.esj.options.build_options", _boom)
    with pytest.raises(ValueError, match="boom"):
        CliRunner().invoke(app, [*args, *EMIT], env=env, catch_exceptions=False)


def test_the_tools_own_errors_are_unchanged() -> None:
    r = CliRunner().invoke(app, ["emit", "not-an-address", "--trustee", "esj@contoso.com", "--inbound", "imap",
                                 "--outbound", "smtp"], catch_exceptions=False)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
