"""The one write loop (journal first, read back a lost answer, resend only what was not applied)
and the PowerShell it prints, for delegations and organisation-level steps alike."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fakes import FakeTime, FakeTokens, run, settings
from test_powershell import ps_single_quoted

from esj_provision.errors import AccessDeniedError, AmbiguousWriteError
from esj_provision.microsoft.http import MicrosoftHttp, RetryPolicy
from esj_provision.models import Outcome, ServicePrincipal, State, WriteResult
from esj_provision.provision.esj_app import AppIdentity, registration_step
from esj_provision.provision.journal import Journal
from esj_provision.provision.writes import AMBIGUOUS_WRITE_TRIES, Step, run_step

ESJ_APP = "9b1c7a52-1111-4222-8333-444455556666"
SP_ID = "5f0e3d1b-aaaa-4bbb-8ccc-ddddeeeeffff"


def http_on(ft: FakeTime, policy: RetryPolicy | None = None) -> MicrosoftHttp:
    return MicrosoftHttp(
        settings(),
        FakeTokens(),  # type: ignore[arg-type]
        policy=policy,
        inner=httpx.MockTransport(lambda request: httpx.Response(500)),
        sleep=ft.sleep,
    )


def step() -> Step:
    return Step("new-management-scope", "scope", "New-ManagementScope ...", "(organization)", "x",
                current=State.ABSENT)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_lost_write_is_read_back_and_resent_on_the_sessions_clock(tmp_path: Path) -> None:
    """steps.run_step used to pause with a real asyncio.sleep and RetryPolicy()'s defaults,
    ignoring the session's policy and clock; it now shares the delegations' loop."""
    ft = FakeTime()
    http = http_on(ft, RetryPolicy(base_delay=0.0))  # no jitter: a zero backoff, but still a recorded sleep
    sends: list[int] = []

    async def write() -> WriteResult:
        sends.append(1)
        if len(sends) == 1:
            raise AmbiguousWriteError("New-ManagementScope: the connection failed after the request was sent")
        return WriteResult("New-ManagementScope", "rid-2")

    async def present() -> bool:
        return False

    s = step()
    with Journal(tmp_path / "j.jsonl") as journal:
        run(run_step(http, s, journal, write, present))
    assert s.outcome is Outcome.APPLIED and s.request_id == "rid-2"
    assert len(sends) == 2 and ft.sleeps == [0.0]
    events = [(r["event"], r.get("outcome")) for r in records(tmp_path / "j.jsonl")]
    assert events == [
        ("intent", None), ("ambiguous", None), ("reconciled", "not-applied"), ("intent", None), ("result", "applied"),
    ]


def test_a_write_lost_every_time_ends_unknown_after_the_tries(tmp_path: Path) -> None:
    ft = FakeTime()
    http = http_on(ft)

    async def write() -> WriteResult:
        raise AmbiguousWriteError("lost")

    async def present() -> bool:
        return False

    s = step()
    with Journal(tmp_path / "j.jsonl") as journal:
        run(run_step(http, s, journal, write, present))
    assert s.outcome is Outcome.UNKNOWN and s.failed
    assert len(ft.sleeps) == AMBIGUOUS_WRITE_TRIES - 1  # a pause between sends, none after the last
    assert records(tmp_path / "j.jsonl")[-1]["outcome"] == "unknown"


def test_an_unreadable_state_after_a_lost_write_is_unknown_and_never_resent(tmp_path: Path) -> None:
    ft = FakeTime()
    sends: list[int] = []

    async def write() -> WriteResult:
        sends.append(1)
        raise AmbiguousWriteError("lost")

    async def present() -> bool:
        raise AccessDeniedError("cannot read the scope")

    s = step()
    with Journal(tmp_path / "j.jsonl") as journal:
        run(run_step(http_on(ft), s, journal, write, present))
    assert s.outcome is Outcome.UNKNOWN and s.error == "cannot read the scope"
    assert len(sends) == 1 and ft.sleeps == []


def test_org_level_403_gets_the_role_management_hint(tmp_path: Path) -> None:
    async def write() -> WriteResult:
        raise AccessDeniedError("New-ManagementScope: denied", status_code=403)

    async def present() -> bool:
        return False

    s = step()
    with Journal(tmp_path / "j.jsonl") as journal:
        run(run_step(http_on(FakeTime()), s, journal, write, present))
    assert s.outcome is Outcome.FAILED and s.hint is not None and "Role Management" in s.hint


@pytest.mark.parametrize("name", ["Contoso's ESJ", "x'; Remove-Mailbox -Identity * -Confirm:$false; '"])
def test_registration_command_quotes_the_display_name(name: str) -> None:
    """Issue 11, defect 3: -DisplayName 'Contoso's ESJ' was broken, injectable PowerShell."""
    ident = AppIdentity(ESJ_APP, sp=ServicePrincipal(SP_ID, ESJ_APP, name))
    command = registration_step(ident).command
    assert command.startswith(f"New-ServicePrincipal -AppId {ESJ_APP} -ObjectId {SP_ID} -DisplayName ")
    start = command.index("-DisplayName ") + len("-DisplayName ")
    value, end = ps_single_quoted(command, start)
    assert value == name and end == len(command)  # the literal is the whole rest: nothing runs after it


def test_mismatch_fix_quotes_the_display_name() -> None:
    ident = AppIdentity(ESJ_APP, sp=ServicePrincipal(SP_ID, ESJ_APP, "Contoso's ESJ"),
                        exo={"ObjectId": "0a0a0a0a-0000-4000-8000-000000000000"})
    _, fix = ident.mismatch()
    assert "-DisplayName 'Contoso''s ESJ';" in fix
