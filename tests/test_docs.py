"""The README documents every command, every exit status and every configuration variable."""

from __future__ import annotations

from pathlib import Path

from typer.main import get_command

from esj_provision.cli import app
from esj_provision.config import ENV_VARS
from esj_provision.errors import ExitStatus

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (ROOT / ".env.example").read_text(encoding="utf-8")


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
