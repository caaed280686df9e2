"""Organisation-level writes: an Exchange service principal, a management scope, a role assignment.

They follow the same rules as mailbox delegations (:mod:`esj_provision.planning`): the state is read
first and only what is missing is written; each write is journalled before it is sent; a write
whose answer was lost (timeout, 5xx) is never repeated blindly, the state is read again first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AccessDeniedError, AmbiguousWriteError, EsjProvisionError
from ..microsoft.http import RetryPolicy
from ..models import State, WriteResult
from .journal import Entry, Journal

AMBIGUOUS_WRITE_TRIES = 4  # as planning's: each resend follows a read-back and a backoff pause
_resend_rng = random.Random()

# Organisation-level cmdlets need Role Management (Organization Management role group), which
# Exchange Recipient Administrator does not include (reference §3, requirements).
ORG_ROLE_HINT = (
    "this cmdlet needs Exchange's Role Management role: assign Exchange Administrator to the provisioning "
    "app's service principal in Entra ID > Roles and administrators (Exchange Recipient Administrator is "
    "enough for mailbox grants, not for service principals, scopes and role assignments)"
)


@dataclass
class Step:
    """One organisation-level change: what it is, whether it is needed, and what became of it."""

    op: str  # new-service-principal, new-management-scope, set-management-scope, new-role-assignment
    target: str  # what the step is about, for people
    command: str  # the equivalent PowerShell, for review (and --as-powershell)
    key_mailbox: str  # the journal entry's fields: together with op they identify the change
    key_trustee: str
    current: State = State.UNKNOWN  # PRESENT: nothing to do; ABSENT: the write is needed
    outcome: str | None = None  # applied, already-present, failed, unknown, skipped
    request_id: str | None = None
    error: str | None = None
    hint: str | None = None

    @property
    def action(self) -> str:
        if self.current is State.PRESENT:
            return "none"
        return "create" if self.current is State.ABSENT else "unknown"

    @property
    def entry(self) -> Entry:
        return Entry(self.op, self.key_mailbox, self.key_trustee)

    @property
    def failed(self) -> bool:
        return self.outcome in {"failed", "unknown", "skipped"}

    def skip(self, why: str) -> None:
        self.outcome, self.error = "skipped", why

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "target": self.target,
            "command": self.command,
            "current": self.current.value,
            "action": self.action,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "error": self.error,
            "hint": self.hint,
        }


async def run_step(
    step: Step,
    journal: Journal,
    write: Callable[[], Awaitable[WriteResult]],
    present: Callable[[], Awaitable[bool]],
) -> None:
    """Send ``write`` for a step whose current state is ABSENT; ``present`` reads the state again
    when the answer to the write was lost."""
    entry = step.entry
    for attempt in range(1, AMBIGUOUS_WRITE_TRIES + 1):
        journal.intent(entry, attempt=attempt)
        try:
            result = await write()
        except AmbiguousWriteError as exc:
            journal.event("ambiguous", entry, error=exc.message, request_id=exc.request_id)
            try:
                applied = await present()
            except EsjProvisionError as read_exc:
                step.outcome, step.error, step.request_id = "unknown", read_exc.message, exc.request_id
                journal.event("reconciled", entry, outcome="unknown", error=read_exc.message)
                return
            if applied:
                step.outcome, step.request_id = "applied", exc.request_id
                journal.event(
                    "reconciled", entry, outcome="applied", note="the write had been applied before its answer was lost"
                )
                return
            if attempt == AMBIGUOUS_WRITE_TRIES:
                step.outcome, step.error, step.request_id = "unknown", exc.message, exc.request_id
                journal.event("reconciled", entry, outcome="unknown", error=exc.message)
                return
            journal.event(
                "reconciled",
                entry,
                outcome="not-applied",
                note="read back: the write had not been applied; sending it again",
            )
            await asyncio.sleep(RetryPolicy().backoff(attempt, None, _resend_rng))
            continue
        except AccessDeniedError as exc:
            step.outcome, step.error, step.request_id = "failed", exc.message, exc.request_id
            step.hint = ORG_ROLE_HINT if exc.status_code == 403 else exc.hint
            journal.result(entry, "failed", error=exc.message, request_id=exc.request_id)
            return
        except EsjProvisionError as exc:
            step.outcome, step.error, step.request_id, step.hint = "failed", exc.message, exc.request_id, exc.hint
            journal.result(entry, "failed", error=exc.message, request_id=exc.request_id)
            return
        step.outcome = "already-present" if result.already_done else "applied"
        step.request_id = result.request_id
        journal.result(entry, step.outcome, request_id=result.request_id, warnings=list(result.warnings) or None)
        return
