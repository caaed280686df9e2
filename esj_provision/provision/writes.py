"""Every write to the tenant, and the one loop that sends it: journal first, read back when the
answer was lost, resend only what the read-back shows was not applied.

Mailbox delegations (:mod:`.onboard`) and organisation-level changes (an Exchange service
principal, a management scope, a role assignment) follow the same rules: the state is read first
and only what is missing is written; each write is journalled before it is sent; a write whose
answer was lost (timeout, 5xx) is never repeated blindly, the state is read again first, and a
resend waits through the session's retry policy and clock (:meth:`MicrosoftHttp.budget`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import hints
from ..errors import AccessDeniedError, AmbiguousWriteError, EsjProvisionError
from ..models import Outcome, State, WriteResult
from .journal import Entry, Journal

if TYPE_CHECKING:
    from ..microsoft.http import MicrosoftHttp

# Sends of one write whose answer was lost. Each resend follows a read-back showing it was not
# applied, and a backoff pause, so a moment of 503s or resets does not fail the row.
AMBIGUOUS_WRITE_TRIES = 4

# What a read-back says: applied (True), not applied (False) or unreadable (None, with why).
ReadBack = Callable[[], Awaitable[tuple[bool | None, str | None]]]


@dataclass
class Sent:
    """What became of one write: its outcome, the request id to quote, and why it failed."""

    outcome: Outcome
    request_id: str | None = None
    error: str | None = None
    failure: EsjProvisionError | None = None  # the service's refusal, for its hint
    result: WriteResult | None = None


async def send(
    http: MicrosoftHttp,
    journal: Journal,
    entry: Entry,
    write: Callable[[], Awaitable[WriteResult]],
    read_back: ReadBack,
    *,
    done: Outcome = Outcome.APPLIED,
    already: Outcome = Outcome.ALREADY_PRESENT,
) -> Sent:
    """Send one write (journalled), reconciling a lost answer by ``read_back``; never raises a
    service error (it is the outcome), only a journal error (no change without a record)."""
    budget = http.budget(max_attempts=AMBIGUOUS_WRITE_TRIES)
    while True:
        attempt = budget.start()
        journal.intent(entry, attempt=attempt)
        try:
            result = await write()
        except AmbiguousWriteError as exc:
            journal.event("ambiguous", entry, error=exc.message, request_id=exc.request_id)
            applied, error = await read_back()
            if applied:
                note = "the write had been applied before its answer was lost"
                journal.event("reconciled", entry, outcome=done.value, note=note)
                return Sent(done, exc.request_id)
            delay = budget.next_delay() if applied is False else None
            if delay is None:
                sent = Sent(Outcome.UNKNOWN, exc.request_id, error or exc.message)
                journal.event("reconciled", entry, outcome=Outcome.UNKNOWN.value, error=sent.error)
                return sent
            note = "read back: the write had not been applied; sending it again"
            journal.event("reconciled", entry, outcome=Outcome.NOT_APPLIED.value, note=note)
            await budget.sleep(delay)
            continue
        except EsjProvisionError as exc:
            journal.result(entry, Outcome.FAILED.value, error=exc.message, request_id=exc.request_id)
            return Sent(Outcome.FAILED, exc.request_id, exc.message, failure=exc)
        outcome = already if result.already_done else done
        journal.result(
            entry, outcome.value, request_id=result.request_id, warnings=list(result.warnings) or None
        )
        return Sent(outcome, result.request_id, result=result)


@dataclass
class Step:
    """One organisation-level change: what it is, whether it is needed, and what became of it."""

    op: str  # new-service-principal, new-management-scope, set-management-scope, new-role-assignment
    target: str  # what the step is about, for people
    command: str  # the equivalent PowerShell, for review (and --as-powershell)
    key_mailbox: str  # the journal entry's fields: together with op they identify the change
    key_trustee: str
    current: State = State.UNKNOWN  # PRESENT: nothing to do; ABSENT: the write is needed
    outcome: Outcome | None = None
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
        return self.outcome in {Outcome.FAILED, Outcome.UNKNOWN, Outcome.SKIPPED}

    def skip(self, why: str) -> None:
        self.outcome, self.error = Outcome.SKIPPED, why

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
    http: MicrosoftHttp,
    step: Step,
    journal: Journal,
    write: Callable[[], Awaitable[WriteResult]],
    present: Callable[[], Awaitable[bool]],
) -> None:
    """Send ``write`` for a step whose current state is ABSENT; ``present`` reads the state again
    when the answer to the write was lost."""

    async def read_back() -> tuple[bool | None, str | None]:
        try:
            return await present(), None
        except EsjProvisionError as exc:
            return None, exc.message

    sent = await send(http, journal, step.entry, write, read_back)
    step.outcome, step.request_id, step.error = sent.outcome, sent.request_id, sent.error
    if sent.failure is not None:
        forbidden = isinstance(sent.failure, AccessDeniedError) and sent.failure.status_code == 403
        step.hint = hints.ORG_ROLE if forbidden else sent.failure.hint
