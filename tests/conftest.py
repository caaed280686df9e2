"""Shared fixtures: the CLI runner, the tenant it runs against, and isolation from the developer's setup.

hatch's pattern (tests/conftest.py there): one callable ``cli`` fixture, ``cli("onboard", ...)``,
whose runner does not swallow exceptions, and an autouse isolation fixture. The sandbox fixtures
for direct HTTP tests live in sandbox_fixtures.py (tests/ is on sys.path).

The tenant a module's tests run against is set by a module marker, e.g.
``pytestmark = pytest.mark.tenant(mailboxes=40)`` (one sandbox for the module, which its tests
must leave as they found it) or ``pytest.mark.tenant(private=True)`` (a fresh sandbox per test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sandbox_fixtures import make_sandbox, sandbox, sandbox_client  # noqa: F401
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.sandbox import Sandbox


@pytest.fixture(autouse=True)
def isolation(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No colour, a fixed width, and a home of its own: no journal, cache or config of the developer's."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("ESJ_PROVISION_DEBUG", raising=False)
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_STATE_HOME", ".local/state"), ("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"),
                     ("XDG_DATA_HOME", ".local/share")):
        monkeypatch.setenv(var, str(home / sub))
    # EWS warnings and refusals depend on the date: tests pin it (1 December 2026, EWS blocked by
    # default but not yet switched off) so the suite does not change behaviour on 1 April 2027.
    monkeypatch.setenv("ESJ_PROVISION_TODAY", "2026-12-01")


class Runner(CliRunner):
    """A CliRunner whose exceptions reach the test (catch_exceptions=False unless asked)."""

    def invoke(self, *args: Any, **kwargs: Any) -> Result:  # type: ignore[override]
        kwargs.setdefault("catch_exceptions", False)
        return super().invoke(*args, **kwargs)


class Cli:
    """``cli("onboard", MAILBOX, ...)`` against the test's tenant, with a journal of the test's own."""

    def __init__(self, tenant: Sandbox, journal: Path) -> None:
        self.tenant, self.journal, self.runner = tenant, journal, Runner()

    def __call__(
        self, *args: str, sb: Sandbox | None = None, env: Mapping[str, str | None] | None = None, esj: bool = False
    ) -> Result:
        """``esj=True`` adds what ESJ itself signs in with (its app's id and secret, the service account's
        password, the sandbox's mail endpoints): ``probe`` needs it, onboard's app-trustee tests must not see it."""
        tenant = sb or self.tenant
        full_env = {**tenant.env, **(tenant.esj_env if esj else {}), "ESJ_PROVISION_JOURNAL": str(self.journal),
                    **(env or {})}
        return self.runner.invoke(app, list(args), env=full_env)


def _tenant_options(node: pytest.Item | pytest.Module) -> dict[str, Any]:
    marker = node.get_closest_marker("tenant")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture(scope="module")
def _module_tenant(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    options = _tenant_options(request.node)
    options.pop("private", None)
    with Sandbox(**options) as sb:
        yield sb


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The sandbox tenant the module's marker asks for (see the module docstring)."""
    options = _tenant_options(request.node)
    if options.pop("private", False):
        with Sandbox(**options) as sb:
            yield sb
    else:
        yield request.getfixturevalue("_module_tenant")


@pytest.fixture
def cli(tenant: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's working directory
    return Cli(tenant, tmp_path / "journal.jsonl")
