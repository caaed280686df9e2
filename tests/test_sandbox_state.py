"""Sandbox state: persistence across restarts, drift mutations, generated mailboxes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
GRANT = {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com", "AccessRights": ["FullAccess"],
         "AutoMapping": False}


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "tenant.json"
    with Sandbox(state_path=state, mailboxes=5) as sb:
        c = SandboxClient(sb)
        assert c.invoke("Add-MailboxPermission", GRANT).status_code == 200
        assert c.invoke("Add-RecipientPermission", {"Identity": "support@contoso.com", "Trustee": "esj-svc@contoso.com",
                                                    "AccessRights": ["SendAs"]}).status_code == 200
        sb.mutate("set-recipient-type", mailbox="queue0003@contoso.com", type="UserMailbox")
        c.close()
        # written after every change, atomically, private
        saved = json.loads(state.read_text())
        assert saved["mailbox_permissions"] and state.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
    with Sandbox(state_path=state, mailboxes=50) as sb:  # the file wins over --mailboxes
        c = SandboxClient(sb)
        rows = c.invoke("Get-MailboxPermission", {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com"})
        assert [r["AccessRights"] for r in rows.json()["value"]] == [["FullAccess"]]
        sendas = c.invoke("Get-RecipientPermission", {"Identity": "support@contoso.com"}).json()["value"]
        assert len(sendas) == 2
        (mbx,) = c.invoke("Get-Mailbox", {"Identity": "queue0003"}).json()["value"]
        assert mbx["RecipientTypeDetails"] == "UserMailbox"
        assert c.invoke("Get-Mailbox", {"Identity": "queue0006"}).status_code == 404
        c.close()


def test_in_memory_without_state_path(make_sandbox: MakeSandbox) -> None:
    _, c = make_sandbox()
    assert c.invoke("Add-MailboxPermission", GRANT).status_code == 200
    _, c2 = make_sandbox()
    assert c2.invoke("Get-MailboxPermission", {"Identity": "support@contoso.com", "User": "esj-svc@contoso.com"}).json()["value"] == []


def test_drift_mutations_show_in_graph_and_exchange(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    # remove-grant: adele's seeded Full Access on sales@ disappears
    assert sb.mutate("remove-grant", mailbox="sales@contoso.com", trustee="adele@contoso.com", right="FullAccess")["changed"]
    rows = c.invoke("Get-MailboxPermission", {"Identity": "sales@contoso.com", "User": "adele@contoso.com"}).json()["value"]
    assert [r["AccessRights"] for r in rows] == [["ReadPermission"]]
    # add-grant of Send As
    sb.mutate("add-grant", mailbox="billing@contoso.com", trustee="old-svc@contoso.com", right="SendAs")
    sendas = c.invoke("Get-RecipientPermission", {"Identity": "billing@contoso.com"}).json()["value"]
    assert sendas[-1]["Trustee"] == "old-svc@contoso.onmicrosoft.com"
    # set-recipient-type flips Exchange and Graph's userPurpose together
    sb.mutate("set-recipient-type", mailbox="support@contoso.com", type="UserMailbox")
    assert c.invoke("Get-Mailbox", {"Identity": "support@contoso.com"}).json()["value"][0]["RecipientTypeDetails"] == "UserMailbox"
    assert c.graph("/v1.0/users/support@contoso.com/mailboxSettings/userPurpose").json()["value"] == "user"
    # set-account-enabled
    sb.mutate("set-account-enabled", user="billing@contoso.com", enabled=True)
    assert c.graph("/v1.0/users/billing@contoso.onmicrosoft.com?$select=accountEnabled").json()["accountEnabled"] is True
    assert c.invoke("Get-Mailbox", {"Identity": "billing"}).json()["value"][0]["AccountDisabled"] is False
    # set-smtp-auth, per mailbox and for the organisation
    sb.mutate("set-smtp-auth", mailbox="support@contoso.com", disabled=None)
    sb.mutate("set-smtp-auth", mailbox=None, disabled=False)
    assert c.invoke("Get-CASMailbox", {"Identity": "support"}).json()["value"][0]["SmtpClientAuthenticationDisabled"] is None
    assert c.invoke("Get-TransportConfig").json()["value"][0]["SmtpClientAuthenticationDisabled"] is False
    # set-rest-enabled and app roles
    sb.mutate("set-rest-enabled", mailbox="legacy@contoso.com", enabled=True)
    assert c.graph("/v1.0/users/legacy@contoso.com/mailboxSettings/userPurpose").status_code == 200
    sb.mutate("set-app-roles", app=sb.client_id, resource="exchange", roles=[])
    assert c.invoke("Get-Mailbox", {}, token=c.token("exchange", fresh=True)).status_code == 401


@pytest.mark.parametrize(
    "op",
    [
        {"op": "remove-grant", "mailbox": "nobody@contoso.com", "trustee": "adele@contoso.com"},
        {"op": "set-recipient-type", "mailbox": "support@contoso.com", "type": "Shoebox"},
        {"op": "set-app-roles", "app": "nope", "resource": "graph", "roles": []},
        {"op": "set-directory-roles", "app": "31bde047-a3b3-4cdc-911c-6124c6bbf2cf", "roles": ["Janitor"]},
        {"op": "set-smtp-auth", "mailbox": None, "disabled": None},
    ],
)
def test_bad_mutations_are_refused(make_sandbox: MakeSandbox, op: dict[str, object]) -> None:
    sb, _ = make_sandbox()
    with pytest.raises(ValueError):
        sb.mutate(**op)  # type: ignore[arg-type]


def test_state_has_both_app_object_ids_and_no_secrets(sandbox: Sandbox) -> None:
    state = sandbox.state()
    apps = {a["client_id"]: a for a in state["apps"]}
    esj = apps[sandbox.esj_app_id]
    assert esj["app_object_id"] != esj["sp_object_id"]
    text = json.dumps(state)
    assert sandbox.client_secret not in text and "not-a-real-secret" not in text
    assert {r["mail"] for r in state["recipients"]} >= {
        "support@contoso.com", "sales@contoso.com", "billing@contoso.com", "adele@contoso.com",
        "esj-svc@contoso.com", "old-svc@contoso.com", "legacy@contoso.com", "room1@contoso.com",
    }


def test_generated_mailboxes_are_cheap(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(mailboxes=100_000)
    assert len(json.dumps(sb.state())) < 20_000
    (row,) = c.invoke("Get-Mailbox", {"Identity": "queue99999@contoso.com"}).json()["value"]
    assert row["DisplayName"] == "Queue 99999"
    page = c.invoke("Get-CASMailbox", {}).json()
    assert len(page["value"]) == 1000 and "@odata.nextLink" in page


def test_a_corrupt_state_file_is_a_config_error(tmp_path: Path) -> None:
    from esj_provision.sandbox import SandboxError

    state = tmp_path / "tenant.json"
    state.write_text('{"version": 99}')
    with pytest.raises(SandboxError, match="not a sandbox state file"):
        Sandbox(state_path=state)
