"""The README documents every command, every exit status and every configuration variable."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from esj_provision.cli import app
from esj_provision.config import ENV_VARS
from esj_provision.errors import ExitStatus

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (ROOT / ".env.example").read_text(encoding="utf-8")
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def commands() -> list[str]:
    return sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_is_documented_and_has_help() -> None:
    names = commands()
    assert {"emit", "onboard", "offboard", "bulk", "audit", "doctor", "sandbox"} <= set(names)
    for name in names:
        headings = [line for line in README.splitlines() if line.startswith("### ")]
        assert any(f"`{name}`" in h for h in headings), f"README lacks a section for {name}"
        assert get_command(app).commands[name].help, f"{name} has no help"  # type: ignore[attr-defined]


def test_every_exit_status_is_documented() -> None:
    for status in ExitStatus:
        assert f"| {int(status)} |" in README, f"exit status {int(status)} missing from the README table"


def test_every_variable_is_in_env_example() -> None:
    for var in ENV_VARS:
        assert var in ENV_EXAMPLE, f"{var} missing from .env.example"


def test_readme_shows_the_two_commands() -> None:
    assert "scripts/demo" in README and "scripts/test" in README


# -- every command in the README works as written ---------------------------------------------


def code_blocks(lang: str | None = None) -> list[str]:
    """The README's fenced code blocks (of one language), line continuations joined."""
    blocks = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
    return [body.replace("\\\n", " ") for kind, body in blocks if lang is None or kind == lang]


def readme_commands() -> list[list[str]]:
    """Every `esj-provision ...` command line of the README's sh blocks, split as the shell would."""
    found = []
    for block in code_blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "esj-provision":
                found.append([w for w in words[1:] if w != "&"])
    return found


def test_the_readme_shows_commands() -> None:
    assert len(readme_commands()) >= 6


@pytest.mark.parametrize("argv", readme_commands(), ids=" ".join)
def test_every_readme_command_parses_against_the_real_cli(argv: list[str]) -> None:
    """Each command and option exists, required ones are given, and values have the right type."""
    group = get_command(app)
    # The root takes only flags (--version, --traceback, --help): the first other word is the command.
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))
    root_flags = {opt for p in group.params for opt in p.opts} | {"--help", "-h"}
    assert set(argv[:at]) <= root_flags, argv
    if at == len(argv):
        assert "--help" in argv or "-h" in argv, argv
        return
    name, rest = argv[at], argv[at + 1 :]
    assert name in group.commands, f"no command {name!r}"  # type: ignore[attr-defined]
    if "--help" in rest:
        return
    command = group.commands[name]  # type: ignore[attr-defined]
    if hasattr(command, "commands"):  # a group such as `ews`: the first word is its subcommand
        assert rest and rest[0] in command.commands, argv
        name, command, rest = rest[0], command.commands[rest[0]], rest[1:]
        if "--help" in rest:
            return
    command.make_context(name, list(rest))  # raises if wrong


@pytest.mark.parametrize(
    "argv", [["onboard", "a@contoso.com", "--bogus"], ["onboard", "--inbound", "imap"], ["nosuch"], ["emit", "--section-index", "x"]]
)
def test_a_wrong_readme_command_would_be_caught(argv: list[str]) -> None:
    with pytest.raises((AssertionError, Exception)) as caught:
        test_every_readme_command_parses_against_the_real_cli(argv)
    assert type(caught.value).__name__ in {"AssertionError", "NoSuchOption", "MissingParameter", "BadParameter"}


def test_every_option_in_a_synopsis_exists() -> None:
    """The synopses (plain code blocks) name only options their command has."""
    group = get_command(app)
    checked = 0
    for block in code_blocks(""):
        for line in block.splitlines():
            match = re.match(r"\s*esj-provision (\w+)(?: (\w+))?", line)
            if not match:
                continue
            command = group.commands[match.group(1)]  # type: ignore[attr-defined]
            if hasattr(command, "commands"):  # a group such as `ews`: its subcommand names the options
                command = command.commands[match.group(2)]
            else:
                match = re.match(r"\s*esj-provision (\w+)", line)
                assert match is not None
            known = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}
            for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line[match.end():]):
                assert flag in known, f"{match.group(1)} has no {flag} (README synopsis: {line.strip()})"
                checked += 1
    assert checked > 10


def test_install_says_what_works() -> None:
    """esj-provision is not on PyPI: every install line installs from the clone or a built wheel."""
    installs = [
        shlex.split(line, comments=True)
        for block in code_blocks("sh")
        for line in block.splitlines()
        if re.match(r"\s*(pipx|pip|python -m pip) install", line)
    ]
    assert installs, "the README has no install command"
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for words in installs:
        target = words[-1]
        assert target == "." or re.fullmatch(r"\.\[(\w+)\]", target) or target.startswith("dist/"), words
        if match := re.fullmatch(r"\.\[(\w+)\]", target):
            assert match.group(1) in extras, words
    assert not [b for b in code_blocks() if re.search(r"pipx? install esj-provision", b)]
    assert PYPROJECT["project"]["scripts"]["esj-provision"] == "esj_provision.cli:main"
    # The development install the README names is the one the scripts run.
    for script in ("scripts/test", "scripts/demo"):
        assert "pip install --quiet --disable-pip-version-check -e '.[test]'" in (ROOT / script).read_text()
    assert "pip install -e '.[test]'" in README
