"""The sandbox's IMAP stand-in: Exchange's replies, XOAUTH2 in both forms, who may open which inbox,
and propagation, against stdlib imaplib and raw lines."""

from __future__ import annotations

import base64
import imaplib
from collections.abc import Callable

import pytest
from mail_helpers import (
    GRAPH,
    OUTLOOK365,
    RawImap,
    app_token,
    esj_ids,
    full_access,
    ok,
    password_token,
    register_esj,
    xoauth2,
    xoauth2_b64,
)
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox
from esj_provision.sandbox.mail import parse_xoauth2

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
SHARED = "support@contoso.com"

# Microsoft's documented example (how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth.md).
MS_USER = "test@contoso.onmicrosoft.com"
MS_TOKEN = "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"
MS_ENCODED = (
    "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
)


def imap(sb: Sandbox) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", sb.imap_port, ssl_context=sb.ssl_context(), timeout=10)


def login(sb: Sandbox, user: str, token: str) -> imaplib.IMAP4_SSL:
    """imaplib's two-step AUTHENTICATE (it never sends an initial response)."""
    m = imap(sb)
    typ, data = m.authenticate("XOAUTH2", lambda _: xoauth2(user, token))
    assert (typ, data) == ("OK", [b"AUTHENTICATE completed."])
    return m


def refused(sb: Sandbox, user: str, token: str) -> None:
    m = imap(sb)
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATE failed\."):
        m.authenticate("XOAUTH2", lambda _: xoauth2(user, token))
    m.shutdown()


def test_microsofts_xoauth2_example_encodes_and_parses_both_ways() -> None:
    assert xoauth2_b64(MS_USER, MS_TOKEN) == MS_ENCODED
    assert parse_xoauth2(MS_ENCODED) == (MS_USER, MS_TOKEN)
    assert parse_xoauth2("not base64!") is None
    assert parse_xoauth2(base64.b64encode(b"user=x\x01auth=Basic y\x01\x01").decode()) is None


def test_microsofts_example_is_refused_with_the_documented_tagged_no(sandbox: Sandbox) -> None:
    raw = RawImap(sandbox)
    try:
        raw.send(f"A1 AUTHENTICATE XOAUTH2 {MS_ENCODED}")  # its token is not one this tenant issued
        assert raw.until_tagged("A1") == ["A1 NO AUTHENTICATE failed."]
    finally:
        raw.close()


def test_greeting_and_capabilities_are_exchanges(sandbox: Sandbox) -> None:
    raw = RawImap(sandbox)
    try:
        assert raw.greeting.startswith("* OK The Microsoft Exchange IMAP4 service is ready. [")
        backend = raw.greeting.rsplit("[", 1)[1].rstrip("]")
        assert base64.b64decode(backend).decode("utf-16-le")  # base64 of a UTF-16LE server name, as captured
        raw.send("A0 CAPABILITY")
        assert raw.until_tagged("A0") == [
            "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE "
            "NAMESPACE LITERAL+",
            "A0 OK CAPABILITY completed.",
        ]
        raw.send("A1 EXAMINE INBOX")  # before AUTHENTICATE
        assert raw.until_tagged("A1") == ["A1 BAD Command received in Invalid state."]
        raw.send("A2 NOOP")
        assert raw.until_tagged("A2") == ["A2 OK NOOP completed."]
        raw.send("A3 LOGOUT")
        assert raw.until_tagged("A3") == ["* BYE Microsoft Exchange Server IMAP4 server signing off.",
                                          "A3 OK LOGOUT completed."]
    finally:
        raw.close()


def test_delegated_with_full_access_examines_the_inbox(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    full_access(c, SHARED, sb.esj_account)
    m = login(sb, SHARED, password_token(c))
    assert m.select("INBOX", readonly=True) == ("OK", [b"0"])
    assert m.untagged_responses.get("READ-ONLY") == [b""]  # from "OK [READ-ONLY] EXAMINE completed."
    assert m.noop()[0] == "OK"
    assert m.logout()[0] == "BYE"
    outcome = [(x["method"], x["status"]) for x in sb.calls(service="imap")]
    assert outcome == [("AUTHENTICATE", "OK"), ("EXAMINE", "OK")]


def test_sasl_ir_and_select_read_write(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    full_access(c, SHARED, sb.esj_account)
    raw = RawImap(sb)
    try:
        raw.send(f"A1 AUTHENTICATE XOAUTH2 {xoauth2_b64(SHARED, password_token(c))}")
        assert raw.until_tagged("A1") == ["A1 OK AUTHENTICATE completed."]
        raw.send('A2 SELECT "INBOX"')
        lines = raw.until_tagged("A2")
        assert lines[0] == "* 0 EXISTS" and lines[-1] == "A2 OK [READ-WRITE] SELECT completed."
        raw.send("A3 EXAMINE Archive")
        assert raw.until_tagged("A3")[-1].startswith("A3 NO ")
    finally:
        raw.close()


def test_delegated_without_full_access_is_authenticated_but_not_connected(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    raw = RawImap(sb)
    try:
        raw.send(f"A1 AUTHENTICATE XOAUTH2 {xoauth2_b64(SHARED, password_token(c))}")
        assert raw.until_tagged("A1") == ["A1 OK AUTHENTICATE completed."]  # not a proof of access
        raw.send("A2 EXAMINE INBOX")
        assert raw.until_tagged("A2") == ["A2 BAD User is authenticated but not connected."]
        assert raw.line() == "* BYE Connection closed. 14"
        assert raw.closed()
    finally:
        raw.close()
    assert sb.calls(service="imap")[-1]["parameters"]["why"] == "no Full Access"


def test_imaplib_sees_the_not_connected_bad(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    m = login(sb, SHARED, password_token(c))
    with pytest.raises(imaplib.IMAP4.error, match="User is authenticated but not connected"):
        m.select("INBOX", readonly=True)


def test_the_account_opens_its_own_mailbox_without_a_grant(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    m = login(sb, sb.esj_account, password_token(c))
    assert m.select("INBOX", readonly=True)[0] == "OK"
    m.logout()


def test_a_new_grant_is_pending_until_it_propagates_and_a_removal_is_immediate(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    full_access(c, SHARED, sb.esj_account)
    rows = ok(c, "Get-MailboxPermission", Identity=SHARED, User="esj-svc@contoso.onmicrosoft.com")
    assert rows and "FullAccess" in rows[0]["AccessRights"]  # the admin side shows it at once
    token = password_token(c)
    m = login(sb, SHARED, token)
    with pytest.raises(imaplib.IMAP4.error, match="not connected"):
        m.select("INBOX", readonly=True)
    assert sb.calls(service="imap")[-1]["parameters"]["why"] == "Full Access granted, not yet effective"
    assert sb.propagation()["pending"]
    assert sb.mutate("propagate")["settled"] == 1
    m = login(sb, SHARED, token)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    m.logout()
    sb.mutate("remove-grant", mailbox=SHARED, trustee=sb.esj_account)
    m = login(sb, SHARED, token)
    with pytest.raises(imaplib.IMAP4.error, match="not connected"):
        m.select("INBOX", readonly=True)


def test_propagation_can_be_set_at_run_time(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    assert sb.mutate("set-propagation", seconds=3600) == {"op": "set-propagation", "seconds": 3600.0}
    full_access(c, SHARED, sb.esj_account)
    m = login(sb, SHARED, password_token(c))
    with pytest.raises(imaplib.IMAP4.error, match="not connected"):
        m.select("INBOX", readonly=True)
    sb.mutate("set-propagation", seconds=0)
    m = login(sb, SHARED, password_token(c))
    assert m.select("INBOX", readonly=True)[0] == "OK"
    m.logout()
    with pytest.raises(ValueError, match="seconds"):
        sb.mutate("set-propagation", seconds=-1)


def _app_ready(sb: Sandbox, c: SandboxClient) -> None:
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="exchange", roles=["IMAP.AccessAsApp"])


def test_app_only_needs_the_role_the_service_principal_and_full_access(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    refused(sb, SHARED, app_token(c))  # no IMAP.AccessAsApp in the token
    _app_ready(sb, c)
    token = app_token(c)
    refused(sb, SHARED, token)  # no Exchange service principal
    sp = register_esj(c)
    refused(sb, SHARED, token)  # no Full Access
    full_access(c, SHARED, sp)
    m = login(sb, SHARED, token)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    m.logout()
    refused(sb, "sales@contoso.com", token)  # Full Access is per mailbox
    assert sb.calls(service="imap")[-1]["parameters"]["why"] == "no Full Access"


def test_app_only_registered_with_the_app_registration_object_id_fails(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    _app_ready(sb, c)
    wrong = esj_ids(sb)[1]
    register_esj(c, wrong)
    full_access(c, SHARED, wrong)
    refused(sb, SHARED, app_token(c))
    assert "wrong object id" in sb.calls(service="imap")[-1]["parameters"]["why"]


def test_app_only_grants_propagate_too(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    _app_ready(sb, c)
    full_access(c, SHARED, register_esj(c))
    refused(sb, SHARED, app_token(c))
    assert "pending" in sb.calls(service="imap")[-1]["parameters"]["why"]
    sb.mutate("propagate")
    login(sb, SHARED, app_token(c)).logout()


@pytest.mark.parametrize("case", ["graph audience", "garbage", "expired", "unknown mailbox", "no IMAP scope"])
def test_bad_tokens_and_users_get_the_tagged_no(make_sandbox: MakeSandbox, case: str) -> None:
    sb, c = make_sandbox()
    full_access(c, SHARED, sb.esj_account)
    user, token = SHARED, password_token(c)
    if case == "graph audience":
        token = password_token(c, GRAPH)
    elif case == "garbage":
        token = "not-a-token"
    elif case == "expired":
        sb.mutate("expire-tokens")
    elif case == "unknown mailbox":
        user = "nobody@contoso.com"
    else:
        token = password_token(c, "https://outlook.office.com/SMTP.Send")
    refused(sb, user, token)


def test_outlook_office365_scope_works_too(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    full_access(c, SHARED, sb.esj_account)
    m = login(sb, SHARED, password_token(c, OUTLOOK365))
    assert m.select("INBOX", readonly=True)[0] == "OK"
    m.logout()


def test_cancel_plain_and_unknown_commands(sandbox: Sandbox) -> None:
    raw = RawImap(sandbox)
    try:
        raw.send("A1 AUTHENTICATE XOAUTH2")
        assert raw.line() == "+ "
        raw.send("*")
        assert raw.until_tagged("A1") == ["A1 BAD AUTHENTICATE aborted."]
        raw.send("A2 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==")  # Basic auth is off
        assert raw.until_tagged("A2") == ["A2 NO AUTHENTICATE failed."]
        raw.send("A3 FROBNICATE")
        assert raw.until_tagged("A3") == ["A3 BAD Command Error. 10"]
    finally:
        raw.close()


def test_no_token_reaches_the_call_log(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    token = password_token(c)
    login(sb, SHARED, token).logout()
    refused(sb, SHARED, token + "x")
    assert token[:40] not in repr(sb.calls()) and token[:40] not in repr(sb.state())
