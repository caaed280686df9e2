"""Onboarding and offboarding end to end: the real CLI against the sandbox tenant, over HTTPS.

The CLI runs in-process (CliRunner) for speed; a few tests run it as a subprocess too. The
sandbox records every request it served, so "no write call" and "each grant exactly once" are
asserted from the service's side, not from our own bookkeeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from esj_provision.cli import app
from esj_provision.sandbox import Sandbox

PAIRS = [(i, o) for i in ("imap", "ews", "graph") for o in ("smtp", "ews", "graph")]
TRUSTEE = "esj-svc@contoso.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission", "Remove-MailboxPermission", "Remove-RecipientPermission"}


pytestmark = pytest.mark.tenant(mailboxes=40)
Cli = Callable[..., Result]




def writes_since(sb: Sandbox, mark: int) -> list[dict[str, Any]]:
    return [c for c in sb.calls()[mark:] if c.get("cmdlet") in WRITES]


def onboard_json(cli: Cli, mailbox: str, inbound: str, outbound: str, *extra: str) -> tuple[Result, dict[str, Any]]:
    r = cli(
        "onboard",
        mailbox,
        "--trustee",
        TRUSTEE,
        "--inbound",
        inbound,
        "--outbound",
        outbound,
        "--format",
        "json",
        *extra,
    )
    return r, (json.loads(r.stdout) if r.stdout.strip() else {})


def options_of(data: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(o["section"], o["name"]): o["value"] for o in data["esj_options"]["options"]}


@pytest.mark.parametrize(("inbound", "outbound"), PAIRS)
def test_every_protocol_pair_grants_once_rerun_writes_nothing_offboard_removes(
    tenant: Sandbox, cli: Cli, inbound: str, outbound: str
) -> None:
    mailbox = f"queue{PAIRS.index((inbound, outbound)) + 1:04d}@contoso.com"

    mark = len(tenant.calls())
    r, data = onboard_json(cli, mailbox, inbound, outbound)
    assert r.exit_code == 0, r.stderr
    assert [(d["right"], d["current"], d["action"], d["outcome"], d["verified"]) for d in data["delegations"]] == [
        ("FullAccess", "absent", "grant", "applied", "present"),
        ("SendAs", "absent", "grant", "applied", "present"),
    ]
    writes = writes_since(tenant, mark)
    assert sorted(c["cmdlet"] for c in writes) == ["Add-MailboxPermission", "Add-RecipientPermission"]
    full = next(c for c in writes if c["cmdlet"] == "Add-MailboxPermission")
    assert full["parameters"]["AutoMapping"] is False and full["parameters"]["InheritanceType"] == "All"

    opts = options_of(data)
    assert opts[("pop-client", "mailbox")] == mailbox
    assert opts[("pop-client", "service-account")] == ("" if inbound == "graph" else TRUSTEE)
    assert opts[("smtp-client", "user")] == TRUSTEE
    assert (opts.get(("smtp-client", "allow-delegate")) == "true") == (outbound == "graph")
    assert any("FROM address" in n for n in data["esj_options"]["notes"])
    assert any("hour" in s for s in data["next_steps"])  # propagation is said plainly

    mark = len(tenant.calls())
    r, data = onboard_json(cli, mailbox, inbound, outbound)
    assert r.exit_code == 0, r.stderr
    assert [d["outcome"] for d in data["delegations"]] == ["already-present", "already-present"]
    assert writes_since(tenant, mark) == []

    mark = len(tenant.calls())
    r = cli("offboard", mailbox, "--trustee", TRUSTEE, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert [d["outcome"] for d in json.loads(r.stdout)["delegations"]] == ["removed", "removed"]
    assert sorted(c["cmdlet"] for c in writes_since(tenant, mark)) == [
        "Remove-MailboxPermission",
        "Remove-RecipientPermission",
    ]

    mark = len(tenant.calls())
    r = cli("offboard", mailbox, "--trustee", TRUSTEE, "--format", "json")
    assert r.exit_code == 0, r.stderr  # removing what is absent is a no-op, not an error
    assert [d["outcome"] for d in json.loads(r.stdout)["delegations"]] == ["already-absent", "already-absent"]
    assert writes_since(tenant, mark) == []


@pytest.mark.parametrize(
    ("mailbox", "trustee", "reason"),
    [
        ("adele@contoso.com", TRUSTEE, "is a user mailbox, not a shared mailbox"),
        ("room1@contoso.com", TRUSTEE, "is a room mailbox, not a shared mailbox"),
        ("legacy@contoso.com", TRUSTEE, "MailboxNotEnabledForRESTAPI"),
        ("nobody@contoso.com", TRUSTEE, "mailbox nobody@contoso.com was not found"),
        ("billing@contoso.com", "ghost@contoso.com", "account ghost@contoso.com was not found"),
        ("billing@contoso.com", "old-svc@contoso.com", "account old-svc@contoso.com is disabled"),
    ],
)
def test_refusals_exit_1_with_reason_and_no_write(
    tenant: Sandbox, cli: Cli, mailbox: str, trustee: str, reason: str
) -> None:
    mark = len(tenant.calls())
    r = cli("onboard", mailbox, "--trustee", trustee, "--inbound", "imap", "--outbound", "smtp")
    assert r.exit_code == 1
    assert reason in r.stderr and reason in r.stdout
    assert "nothing was changed" in r.stderr
    assert writes_since(tenant, mark) == []


def test_all_problems_reported_together(tenant: Sandbox, cli: Cli) -> None:
    r = cli("onboard", "adele@contoso.com", "--trustee", "old-svc@contoso.com", "--inbound", "ews", "--outbound", "ews")
    assert r.exit_code == 1
    assert "not a shared mailbox" in r.stderr and "is disabled" in r.stderr


@pytest.mark.parametrize("given", ["support@contoso.com", "HELP@contoso.com", "support@contoso.onmicrosoft.com"])
def test_a_mailbox_is_found_by_its_address_alias_or_upn(tenant: Sandbox, cli: Cli, given: str) -> None:
    """Graph's /users/{key} takes an object id or a UPN only, and this tenant's UPNs are not the
    addresses (as on many real ones): an address or an alias is found by address, one Graph round
    trip more; the plan names the mailbox by its primary address."""
    mark = len(tenant.calls())
    r, data = onboard_json(cli, given, "imap", "smtp", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert data["mailbox"] == "support@contoso.com"
    graph = [c for c in tenant.calls()[mark:] if c["service"] == "graph" and "batch" in c]
    by_address = [c for c in graph if "proxyAddresses" in c["path"]]
    # The trustee (its UPN is esj-svc@contoso.onmicrosoft.com) always; the mailbox unless given by UPN.
    assert len(by_address) == (1 if given.endswith(".onmicrosoft.com") else 2)
    assert all(c["status"] == 200 for c in by_address)


def test_a_mailbox_nobody_has_as_address_is_not_found(tenant: Sandbox, cli: Cli) -> None:
    r = cli("onboard", "nobody@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp")
    assert r.exit_code == 1 and "nobody@contoso.com" in r.stderr and "not found" in r.stderr


def test_warnings_sign_in_enabled_and_smtp_auth(tenant: Sandbox, cli: Cli) -> None:
    r, data = onboard_json(cli, "sales@contoso.com", "imap", "smtp", "--dry-run")
    assert r.exit_code == 0, r.stderr
    codes = {f["code"]: f for f in data["findings"]}
    assert "shared-mailbox-can-sign-in" in codes
    smtp = codes["smtp-auth-disabled-tenant"]
    assert "Set-CASMailbox" in smtp["hint"] and TRUSTEE.split("@")[0] in smtp["hint"]
    # Not SMTP outbound: no SMTP AUTH check at all.
    r, data = onboard_json(cli, "sales@contoso.com", "imap", "graph", "--dry-run")
    assert not any(f["code"].startswith("smtp-auth") for f in data["findings"])


def test_dry_run_makes_no_write_and_prints_powershell(tenant: Sandbox, cli: Cli) -> None:
    mark = len(tenant.calls())
    r = cli(
        "onboard",
        "queue0030@contoso.com",
        "--trustee",
        TRUSTEE,
        "--inbound",
        "imap",
        "--outbound",
        "ews",
        "--dry-run",
        "--as-powershell",
    )
    assert r.exit_code == 0, r.stderr
    assert "Add-MailboxPermission -Identity 'queue0030@contoso.com'" in r.stdout
    assert "-AutoMapping $false" in r.stdout and "Add-RecipientPermission" in r.stdout
    assert writes_since(tenant, mark) == []
    assert not (Path.cwd() / "journal.jsonl").exists()


def test_as_powershell_needs_dry_run(cli: Cli) -> None:
    r = cli(
        "onboard",
        "queue0030@contoso.com",
        "--trustee",
        TRUSTEE,
        "--inbound",
        "imap",
        "--outbound",
        "ews",
        "--as-powershell",
    )
    assert r.exit_code == 2 and "--dry-run" in r.stderr


def test_no_send_as_grants_full_access_only_and_says_what_it_means(tenant: Sandbox, cli: Cli) -> None:
    mark = len(tenant.calls())
    r, data = onboard_json(cli, "queue0031@contoso.com", "imap", "smtp", "--no-send-as")
    assert r.exit_code == 0, r.stderr
    assert [c["cmdlet"] for c in writes_since(tenant, mark)] == ["Add-MailboxPermission"]
    assert any(f["code"] == "no-send-as" and "FROM" in f["message"] for f in data["findings"])


def test_journal_records_every_write_with_request_id_and_no_secret(tenant: Sandbox, cli: Cli) -> None:
    r, _ = onboard_json(cli, "queue0032@contoso.com", "ews", "graph")
    assert r.exit_code == 0, r.stderr
    text = cli.journal.read_text()  # type: ignore[attr-defined]
    records = [json.loads(line) for line in text.splitlines()]
    results = [x for x in records if x["event"] == "result"]
    assert {x["op"] for x in results} == {"add-full-access", "add-send-as"}
    assert all(x["outcome"] == "applied" and x["request_id"] for x in results)
    intents = [x for x in records if x["event"] == "intent"]
    assert {x["key"] for x in intents} == {x["key"] for x in results}
    assert tenant.client_secret not in text
    assert oct(cli.journal.stat().st_mode & 0o777) == "0o600"  # type: ignore[attr-defined]


def test_write_committed_before_504_is_not_repeated(tenant: Sandbox, cli: Cli) -> None:
    mailbox = "queue0033@contoso.com"
    tenant.queue_fault("504-after-apply", service="exchange", cmdlet="Add-MailboxPermission")
    mark = len(tenant.calls())
    r, data = onboard_json(cli, mailbox, "imap", "ews")
    assert r.exit_code == 0, r.stderr
    adds = [c for c in writes_since(tenant, mark) if c["cmdlet"] == "Add-MailboxPermission"]
    assert len(adds) == 1 and adds[0]["status"] == 504 and adds[0]["applied"]
    assert data["delegations"][0]["outcome"] == "applied"
    events = [json.loads(x)["event"] for x in cli.journal.read_text().splitlines()]  # type: ignore[attr-defined]
    assert "ambiguous" in events and "reconciled" in events


def test_write_lost_before_apply_is_sent_again_after_reading(tenant: Sandbox, cli: Cli) -> None:
    tenant.queue_fault("reset-before", service="exchange", cmdlet="Add-RecipientPermission")
    mark = len(tenant.calls())
    r, data = onboard_json(cli, "queue0034@contoso.com", "imap", "ews")
    assert r.exit_code == 0, r.stderr
    sends = [c for c in writes_since(tenant, mark) if c["cmdlet"] == "Add-RecipientPermission"]
    assert [c["applied"] for c in sends] == [False, True]
    assert data["delegations"][1]["outcome"] == "applied"


def test_throttling_storm_ends_in_the_desired_state(tenant: Sandbox, cli: Cli) -> None:
    tenant.queue_fault("429", service="exchange", count=6, retry_after=0)
    mark = len(tenant.calls())
    r, data = onboard_json(cli, "queue0035@contoso.com", "graph", "graph")
    assert r.exit_code == 0, r.stderr
    assert sum(1 for c in tenant.calls()[mark:] if c["status"] == 429) == 6
    assert sorted(c["cmdlet"] for c in writes_since(tenant, mark) if c["applied"]) == [
        "Add-MailboxPermission",
        "Add-RecipientPermission",
    ]
    assert [d["verified"] for d in data["delegations"]] == ["present", "present"]


def test_token_expiring_mid_run_is_refreshed_before_use(tmp_path: Path) -> None:
    import asyncio
    import time

    from esj_provision.config import load_settings
    from esj_provision.microsoft.session import Session
    from esj_provision.models import UserTrustee
    from esj_provision.provision.journal import Journal
    from esj_provision.provision.onboard import OnboardRequest, run

    with Sandbox(token_lifetime=2) as sb:
        settings = load_settings(environ=sb.env, dotenv_path=tmp_path / "none")

        async def go() -> Any:
            async with Session(settings) as session:
                await session.graph.get_user("support@contoso.com")
                await session.exchange.get_transport_config()
                await asyncio.sleep(2.1)  # both tokens have now expired
                with Journal(tmp_path / "j.jsonl") as journal:
                    plan = await run(
                        session,
                        OnboardRequest("support@contoso.com", UserTrustee(TRUSTEE)),
                        mode="onboard",
                        dry_run=False,
                        journal=journal,
                    )
                return plan, session.stats()

        started = time.monotonic()
        plan, stats = asyncio.run(go())
        assert time.monotonic() - started < 10
        assert not plan.failed and [d.verified.value for d in plan.delegations if d.verified] == ["present", "present"]
        assert stats["token_requests"] == 4  # each resource's token renewed once, before it was used
        assert not [c for c in sb.calls() if c["status"] == 401]


def test_token_revoked_mid_run_gets_one_fresh_token(tmp_path: Path) -> None:
    import asyncio

    from esj_provision.config import load_settings
    from esj_provision.microsoft.session import Session
    from esj_provision.models import UserTrustee
    from esj_provision.provision.onboard import OnboardRequest, run

    with Sandbox() as sb:
        settings = load_settings(environ=sb.env, dotenv_path=tmp_path / "none")
        from esj_provision.provision.journal import Journal

        async def go() -> Any:
            async with Session(settings) as session:
                await session.graph.get_user("support@contoso.com")
                await session.exchange.get_transport_config()
                sb.mutate("expire-tokens")  # every token issued so far is now rejected
                with Journal(tmp_path / "j.jsonl") as journal:
                    return await run(
                        session,
                        OnboardRequest("support@contoso.com", UserTrustee(TRUSTEE)),
                        mode="onboard",
                        dry_run=False,
                        journal=journal,
                    ), session.stats()

        plan, stats = asyncio.run(go())
        assert not plan.failed
        assert any(c["status"] == 401 for c in sb.calls())
        assert stats["token_requests"] == 4  # two resources, each refreshed once


def test_sign_in_errors_exit_1_with_a_hint(tenant: Sandbox, cli: Cli) -> None:
    r = cli(
        "onboard",
        "support@contoso.com",
        "--trustee",
        TRUSTEE,
        "--inbound",
        "imap",
        "--outbound",
        "smtp",
        env={"AZURE_CLIENT_SECRET": "wrong"},
    )
    assert r.exit_code == 1
    assert "AADSTS7000215" in r.stderr and "hint:" in r.stderr
    assert "wrong" not in r.stderr.replace("is wrong", "")


def test_app_without_exchange_admin_role_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exchange answers 403 with a body of NUL bytes: the message must still say what is missing."""
    monkeypatch.chdir(tmp_path)
    with Sandbox() as sb:
        app_id = sb.client_id
        sb.mutate("set-directory-roles", app=app_id, roles=[])  # keeps Exchange.ManageAsApp, no admin role
        r = CliRunner().invoke(
            app,
            ["onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "ews"],
            env={**sb.env, "ESJ_PROVISION_JOURNAL": str(tmp_path / "j.jsonl")},
            catch_exceptions=False,
        )
        assert r.exit_code == 1
        assert "Exchange Administrator" in r.stdout + r.stderr
        assert not [c for c in sb.calls() if c.get("cmdlet") in WRITES]


def test_bad_input_is_a_usage_error_without_any_call(tenant: Sandbox, cli: Cli) -> None:
    mark = len(tenant.calls())
    for args, needle in [
        (
            ["onboard", "not-an-address", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "smtp"],
            "not an e-mail address",
        ),
        (
            ["onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "pop3", "--outbound", "smtp"],
            "unknown inbound protocol",
        ),
        (
            ["onboard", "support@contoso.com", "--trustee", TRUSTEE, "--inbound", "imap", "--outbound", "fax"],
            "unknown outbound protocol",
        ),
        (
            [
                "onboard",
                "support@contoso.com",
                "--trustee",
                "support@contoso.com",
                "--inbound",
                "imap",
                "--outbound",
                "smtp",
            ],
            "shared mailbox itself",
        ),
        (
            [
                "onboard",
                "support@contoso.com",
                "--trustee",
                TRUSTEE,
                "--inbound",
                "imap",
                "--outbound",
                "smtp",
                "--format",
                "xml",
            ],
            "unknown format",
        ),
    ]:
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        assert needle in r.stderr
    assert tenant.calls()[mark:] == []


def test_subprocess_onboard_then_rerun(tmp_path: Path) -> None:
    """The installed entry point, as an admin runs it: a real process, real HTTPS, real exit codes."""
    with Sandbox() as sb:
        env = {**os.environ, **sb.env, "ESJ_PROVISION_JOURNAL": str(tmp_path / "j.jsonl")}
        args = [
            sys.executable,
            "-m",
            "esj_provision",
            "onboard",
            "billing@contoso.com",
            "--trustee",
            TRUSTEE,
            "--inbound",
            "ews",
            "--outbound",
            "smtp",
            "--format",
            "cfg",
        ]
        first = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "[pop-client]\n" in first.stdout and "mailbox=billing@contoso.com\n" in first.stdout
        assert "granted (pending propagation)" in first.stderr
        second = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0
        assert "already in place" in second.stderr
        assert sb.client_secret not in first.stdout + first.stderr + second.stdout + second.stderr
