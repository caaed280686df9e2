"""Shared fixtures. The sandbox fixtures live in sandbox_fixtures.py (tests/ is on sys.path)."""

import pytest
from sandbox_fixtures import make_sandbox, sandbox, sandbox_client  # noqa: F401


@pytest.fixture(autouse=True)
def _fixed_today(monkeypatch: pytest.MonkeyPatch) -> None:
    """EWS warnings and refusals depend on the date: tests pin it (1 December 2026, EWS blocked by
    default but not yet switched off) so the suite does not change behaviour on 1 April 2027."""
    monkeypatch.setenv("ESJ_PROVISION_TODAY", "2026-12-01")
