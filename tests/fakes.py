"""Stand-ins shared by the respx tests of the HTTP layer, Graph and Exchange: a clock that only
moves when someone sleeps, a token provider that hands out numbered tokens, test settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from esj_provision.config import Settings, load_settings
from esj_provision.microsoft.credentials import Token

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def settings(tenant: str = "contoso.onmicrosoft.com") -> Settings:
    return load_settings(
        environ={
            "AZURE_TENANT_ID": tenant,
            "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
            "AZURE_CLIENT_SECRET": "not-a-real-secret",
        },
        dotenv_path=Path("/nonexistent/.env"),
    )


class FakeTime:
    """A clock that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


class FakeTokens:
    """TokenProvider stand-in: graph-1, graph-2, … and exo-1, … per scope, in the order handed out."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def get(self, scope: str, *, force_refresh: bool = False, rejected: str | None = None) -> Token:
        self.calls.append((scope, force_refresh))
        n = sum(1 for s, _ in self.calls if s == scope)
        name = "graph" if "graph" in scope else "exo"
        return Token(f"{name}-{n}", time.time() + 3600)


@contextlib.contextmanager
def logger_restored() -> Iterator[None]:
    """--verbose attaches a handler on CliRunner's stderr, which is closed after the invocation:
    one process runs one command, but tests run many in one process, so take it off again."""
    logger = logging.getLogger("esj_provision")
    handlers, level = logger.handlers[:], logger.level
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
