"""The connection options are declared once (cli/_options.py) and reach every tenant command."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from esj_provision.cli import app
from esj_provision.cli._options import tenant_command
from esj_provision.config import Settings

CONNECTION_FLAGS = [
    "--cloud", "--tenant-id", "--client-id", "--auth", "--client-secret-file", "--certificate",
    "--authority-host", "--graph-endpoint", "--exchange-endpoint", "--ca-bundle", "--verbose",
]
TENANT_COMMANDS = ("onboard", "offboard", "bulk", "audit", "doctor", "migrate", "ews allow")


def flags(command: str) -> list[str]:
    click_command = get_command(app)
    for word in command.split():
        click_command = click_command.commands[word]  # type: ignore[attr-defined]
    return [opt for p in click_command.params for opt in p.opts]


@pytest.mark.parametrize("command", TENANT_COMMANDS)
def test_every_tenant_command_has_the_connection_options_after_its_own(command: str) -> None:
    names = flags(command)
    # Its own options come first in --help, the connection options last (as when each spelled them out).
    assert [f for f in names if f != "-v"][-len(CONNECTION_FLAGS) :] == CONNECTION_FLAGS
    assert "--settings" not in names


@pytest.mark.parametrize("command", ("emit", "sandbox"))
def test_offline_commands_take_no_connection_options(command: str) -> None:
    assert not {"--client-id", "--auth", "--graph-endpoint"} & set(flags(command))


def _probe_app(seen: list[Settings]) -> typer.Typer:
    probe = typer.Typer()

    @tenant_command
    def show(name: str = typer.Argument(...), loud: bool = typer.Option(False, "--loud"), *, settings: Settings) -> None:
        seen.append(settings)
        typer.echo(f"{name} {loud}")

    probe.command()(show)
    probe.command("other")(lambda: None)  # two commands, so `show` is a subcommand
    return probe


def test_flags_environment_and_dotenv_reach_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AZURE_TENANT_ID=dotenv.onmicrosoft.com\nESJ_PROVISION_CLOUD=china\n")
    seen: list[Settings] = []
    runner = CliRunner()
    r = runner.invoke(_probe_app(seen), ["show", "x", "--loud"], env={"AZURE_TENANT_ID": None, "ESJ_PROVISION_CLOUD": None})
    assert r.exit_code == 0, r.output
    assert r.stdout == "x True\n"
    assert seen[-1].tenant_id == "dotenv.onmicrosoft.com" and seen[-1].cloud.name == "china"
    r = runner.invoke(
        _probe_app(seen),
        ["show", "y", "--cloud", "usgov-dod", "--tenant-id", "flag.onmicrosoft.com", "--graph-endpoint", "https://gw.example"],
        env={"AZURE_TENANT_ID": "env.onmicrosoft.com"},
    )
    assert r.exit_code == 0, r.output
    assert (seen[-1].cloud.name, seen[-1].tenant_id, seen[-1].graph_endpoint) == (
        "usgov-dod", "flag.onmicrosoft.com", "https://gw.example"
    )


def test_a_command_cannot_redeclare_a_connection_option() -> None:
    def clash(cloud: str = "global", *, settings: Settings) -> None: ...

    with pytest.raises(TypeError, match="cloud"):
        tenant_command(clash)
