"""Shared fixtures. The sandbox fixtures live in sandbox_fixtures.py (tests/ is on sys.path)."""

from sandbox_fixtures import make_sandbox, sandbox, sandbox_client  # noqa: F401
