"""The sandbox's SMTP submission stand-in against stdlib smtplib: STARTTLS, AUTH XOAUTH2 (both
forms), the SMTP AUTH switches, who may authenticate as which mailbox, Send As after DATA, and
what gets recorded."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest
from mail_helpers import GRAPH, app_token, full_access, password_token, register_esj, scoped_role, send_as, xoauth2
from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox

MakeSandbox = Callable[..., tuple[Sandbox, SandboxClient]]
SHARED = "support@contoso.com"
MESSAGE = b"From: support@contoso.com\r\nTo: someone@example.com\r\nSubject: probe test\r\n\r\nhello\r\n"


def connect(sb: Sandbox) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", sb.smtp_port, timeout=10)
    s.ehlo("probe")
    s.starttls(context=sb.ssl_context())
    s.ehlo("probe")  # starttls() forgets the extensions; auth() does not ask again
    return s


def auth(s: smtplib.SMTP, user: str, token: str, initial: bool = True) -> tuple[int, bytes]:
    return s.auth("XOAUTH2", lambda challenge=None: xoauth2(user, token), initial_response_ok=initial)


def account_may_submit(sb: Sandbox) -> Sandbox:
    """The service account's own SMTP AUTH switch on: in the sample tenant it follows the disabled org."""
    sb.mutate("set-smtp-auth", mailbox=sb.esj_account, disabled=False)
    return sb


def refused(sb: Sandbox, user: str, token: str) -> tuple[int, bytes]:
    s = connect(sb)
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        auth(s, user, token)
    s.quit()
    return e.value.smtp_code, e.value.smtp_error


def test_ehlo_offers_auth_only_after_starttls(sandbox: Sandbox) -> None:
    s = smtplib.SMTP("127.0.0.1", sandbox.smtp_port, timeout=10)
    code, hello = s.ehlo("probe")
    assert code == 250 and hello.split(b"\n")[0].endswith(b" Hello [127.0.0.1]")
    assert s.has_extn("starttls") and not s.has_extn("auth")
    assert s.has_extn("enhancedstatuscodes") and s.has_extn("size") and s.esmtp_features["size"] == "157286400"
    code, text = s.mail(SHARED)  # plain text: refused until STARTTLS
    assert code == 530 and b"STARTTLS" in text
    assert s.starttls(context=sandbox.ssl_context()) == (220, b"2.0.0 SMTP server ready")
    s.ehlo("probe")
    assert s.esmtp_features["auth"] == " LOGIN XOAUTH2" and not s.has_extn("starttls")
    code, text = s.mail(SHARED)  # after TLS but before AUTH
    assert (code, text) == (530, b"5.7.57 Client not authenticated to send mail")
    assert s.quit() == (221, b"2.0.0 Service closing transmission channel")


def test_delegated_service_account_sends_as_the_shared_mailbox_with_send_as(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    account_may_submit(sb)
    token = password_token(c)
    s = connect(sb)
    assert auth(s, sb.esj_account, token) == (235, b"2.7.0 Authentication successful")
    # MAIL FROM is accepted without Send As: Exchange checks it only after DATA.
    assert s.mail(SHARED) == (250, b"2.1.0 Sender OK")
    assert s.rcpt("someone@example.com") == (250, b"2.1.5 Recipient OK")
    code, text = s.data(MESSAGE)  # smtplib's data() returns the refusal; sendmail() raises SMTPDataError
    assert code == 554
    assert text.decode().startswith(
        "5.2.252 SendAsDenied; esj-svc@contoso.com not allowed to send as support@contoso.com; "
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied")
    assert sb.sent() == []
    send_as(c, SHARED, sb.esj_account)
    assert s.rset() == (250, b"2.0.0 Resetting")
    assert s.sendmail(SHARED, ["someone@example.com"], MESSAGE) == {}
    s.quit()
    [mail] = sb.sent()
    assert (mail["protocol"], mail["from"], mail["to"], mail["subject"]) == (
        "smtp", SHARED, ["someone@example.com"], "probe test")
    assert mail["principal"] == "esj-svc@contoso.onmicrosoft.com" and mail["mailbox"] == sb.esj_account
    assert token[:40] not in repr(sb.sent()) + repr(sb.calls())


def test_delegated_two_step_form(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    account_may_submit(sb)
    s = connect(sb)
    assert auth(s, sb.esj_account, password_token(c), initial=False)[0] == 235  # "334 " then the base64
    s.quit()


def test_delegated_user_must_be_the_accounts_own_not_the_shared_mailbox(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    account_may_submit(sb)
    full_access(c, SHARED, sb.esj_account)
    send_as(c, SHARED, sb.esj_account)
    code, text = refused(sb, SHARED, password_token(c))
    assert code == 535 and text.decode().startswith("5.7.3 Authentication unsuccessful [")
    assert sb.calls(service="smtp")[-1]["parameters"]["why"] == "user= is not the signed-in account"


def test_the_accounts_own_address_needs_no_send_as(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    account_may_submit(sb)
    s = connect(sb)
    auth(s, "esj-svc@contoso.onmicrosoft.com", password_token(c))  # the UPN names the same user
    msg = b"From: esj-svc@contoso.com\r\nSubject: own\r\n\r\nx\r\n"
    assert s.sendmail(sb.esj_account, ["a@example.com"], msg) == {}
    s.quit()
    assert [m["from"] for m in sb.sent()] == [sb.esj_account]


def _app_ready(sb: Sandbox, c: SandboxClient) -> str:
    sb.mutate("set-app-roles", app=sb.esj_app_id, resource="exchange", roles=["SMTP.SendAsApp"])
    return register_esj(c)


def test_app_only_needs_smtp_sendasapp_and_full_access(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    assert refused(sb, SHARED, app_token(c))[0] == 535  # no role, no service principal
    sp = _app_ready(sb, c)
    token = app_token(c)
    assert refused(sb, SHARED, token)[0] == 535  # no Full Access yet
    full_access(c, SHARED, sp)
    s = connect(sb)
    assert auth(s, SHARED, token)[0] == 235
    assert s.sendmail(SHARED, ["x@example.com"], MESSAGE) == {}  # its own mailbox: no Send As needed
    with pytest.raises(smtplib.SMTPDataError) as e:  # another From needs Send As for the app
        s.sendmail("billing@contoso.com", ["x@example.com"], b"From: billing@contoso.com\r\n\r\nx\r\n")
    assert e.value.smtp_code == 554
    s.quit()
    assert [m["principal"] for m in sb.sent()] == [f"app {sb.esj_app_id}"]


def test_app_only_through_an_rbac_assignment_in_scope(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    register_esj(c)  # no Entra roles at all, as Microsoft recommends for RBAC
    scoped_role(c, "Application SMTP.SendAsApp", SHARED)
    token = app_token(c)
    s = connect(sb)
    assert auth(s, SHARED, token)[0] == 235
    s.quit()
    code, _ = refused(sb, "sales@contoso.com", token)  # out of the scope
    assert code == 535


def test_an_rbac_assignment_is_pending_before_it_propagates(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    register_esj(c)
    scoped_role(c, "Application SMTP.SendAsApp", SHARED)
    assert refused(sb, SHARED, app_token(c))[0] == 535
    sb.mutate("propagate")
    s = connect(sb)
    assert auth(s, SHARED, app_token(c))[0] == 235
    s.quit()


def test_send_as_pending_then_effective(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox(propagation_s=3600)
    account_may_submit(sb)
    send_as(c, SHARED, sb.esj_account)
    s = connect(sb)
    auth(s, sb.esj_account, password_token(c))
    with pytest.raises(smtplib.SMTPDataError):
        s.sendmail(SHARED, ["x@example.com"], MESSAGE)
    sb.mutate("propagate")
    assert s.sendmail(SHARED, ["x@example.com"], MESSAGE) == {}
    s.quit()


def test_the_sample_service_account_follows_the_disabled_organisation(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    code, text = refused(sb, sb.esj_account, password_token(c))
    assert code == 535 and b"SmtpClientAuthentication is disabled for the Tenant." in text


@pytest.mark.parametrize(
    ("org", "mailbox", "reply"),
    [
        (True, None, "for the Tenant."),
        (True, True, "for the Mailbox."),
        (False, True, "for the Mailbox."),
        (True, False, None),  # the mailbox setting overrides the organisation's
        (False, None, None),  # null follows the organisation
    ],
)
def test_smtp_auth_switches(make_sandbox: MakeSandbox, org: bool, mailbox: bool | None, reply: str | None) -> None:
    sb, c = make_sandbox()
    sb.mutate("set-smtp-auth", disabled=org)
    sb.mutate("set-smtp-auth", mailbox=sb.esj_account, disabled=mailbox)
    token = password_token(c)
    if reply is None:
        s = connect(sb)
        assert auth(s, sb.esj_account, token)[0] == 235
        s.quit()
        return
    code, text = refused(sb, sb.esj_account, token)
    assert code == 535
    assert text.decode().startswith(
        f"5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled {reply} "
        "Visit https://aka.ms/smtp_auth_disabled for more information. [")


def test_app_only_smtp_auth_switch_is_the_mailboxs(make_sandbox: MakeSandbox) -> None:
    sb, c = make_sandbox()
    full_access(c, "sales@contoso.com", _app_ready(sb, c))
    code, text = refused(sb, "sales@contoso.com", app_token(c))  # sales@ follows the disabled tenant
    assert code == 535 and b"for the Tenant." in text


@pytest.mark.parametrize("case", ["garbage", "graph audience", "expired", "no SMTP scope", "unknown user"])
def test_bad_tokens_get_535_5_7_3(make_sandbox: MakeSandbox, case: str) -> None:
    sb, c = make_sandbox()
    account_may_submit(sb)
    user, token = sb.esj_account, password_token(c)
    if case == "garbage":
        token = "x.y.z"
    elif case == "graph audience":
        token = password_token(c, GRAPH)
    elif case == "expired":
        sb.mutate("expire-tokens")
    elif case == "no SMTP scope":
        token = password_token(c, "https://outlook.office.com/IMAP.AccessAsUser.All")
    else:
        user = "nobody@contoso.com"
    code, text = refused(sb, user, token)
    assert code == 535 and text.startswith(b"5.7.3 Authentication unsuccessful")
