"""The mail protocols on the wire, as ESJ speaks them to Exchange Online.

Wire facts: ``shared/reference/probe-protocols.md`` (section numbers below). IMAP and SMTP use the
standard library's clients (blocking: callers run them in a worker thread); EWS and Graph go
through httpx. Nothing here decides what an answer *means*: that is :mod:`.checks`. Tokens are
only ever put on the wire, never into a result, a log line or an exception message.
"""

from __future__ import annotations

import contextlib
import imaplib
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import TYPE_CHECKING
from xml.etree import ElementTree
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    import httpx

EHLO_NAME = "esj-provision-probe"


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response, not yet base64-encoded (§1.3): imaplib and smtplib encode
    it themselves, so encoding it here would send it twice encoded."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


@dataclass
class WireResult:
    """How far a session got and what the server last said (never a token)."""

    stage: str  # connect | tls | auth | open | mail | rcpt | data | done
    ok: bool
    answer: str = ""  # the server's reply text, e.g. "AUTHENTICATE failed." or "535 5.7.139 ..."
    code: int | None = None  # SMTP reply code, HTTP status
    headers: dict[str, str] = field(default_factory=dict)  # EWS: X-EWS-Policy-Reason, x-ms-diagnostics
    fields: dict[str, str] = field(default_factory=dict)  # parsed parts: ResponseCode, faultcode, error code


def _text(data: object) -> str:
    if isinstance(data, (list, tuple)):
        return " ".join(_text(d) for d in data if d is not None)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


# -- IMAP (§1, §7.1) ---------------------------------------------------------------------------


def imap_examine(
    host: str, port: int, user: str, token: str, *, context: ssl.SSLContext, timeout: float
) -> WireResult:
    """Implicit TLS, AUTHENTICATE XOAUTH2, EXAMINE INBOX (read-only), LOGOUT.

    ``OK AUTHENTICATE`` alone is not proof: Exchange may accept the token and then answer the first
    mailbox command with ``BAD User is authenticated but not connected.`` (§1.4), hence EXAMINE.
    """
    try:
        conn = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
    except ssl.SSLError as exc:
        return WireResult("tls", False, f"TLS failed: {exc.reason or exc}")
    except (OSError, imaplib.IMAP4.error) as exc:
        return WireResult("connect", False, f"cannot connect to {host}:{port}: {_oserror(exc)}")
    try:
        try:
            # imaplib sends AUTHENTICATE XOAUTH2, then our string on the "+" continuation (§7.1).
            conn.authenticate("XOAUTH2", lambda _challenge: xoauth2(user, token).encode())
        except imaplib.IMAP4.error as exc:
            return WireResult("auth", False, _imap_error(exc))
        try:
            typ, data = conn.select("INBOX", readonly=True)  # readonly: EXAMINE
        except imaplib.IMAP4.error as exc:
            return WireResult("open", False, _imap_error(exc))
        if typ != "OK":
            return WireResult("open", False, f"{typ} {_text(data)}")
        return WireResult("done", True, "EXAMINE INBOX: OK")
    except (OSError, EOFError) as exc:
        return WireResult("open", False, f"connection lost: {_oserror(exc)}")
    finally:
        _quietly(conn.logout)


def _imap_error(exc: Exception) -> str:
    # imaplib words a BAD as "EXAMINE command error: BAD [b'User is ...']": keep the server's text.
    text = str(exc)
    if "[b'" in text or '[b"' in text:
        inner = text.split("[", 1)[1].rstrip("]")
        text = inner.strip("b'\"")
        return f"BAD {text}"
    return text


# -- SMTP (§2, §7.2) ---------------------------------------------------------------------------


def smtp_session(
    host: str,
    port: int,
    user: str,
    token: str,
    *,
    mail_from: str,
    rcpt_to: str,
    context: ssl.SSLContext,
    timeout: float,
    message: EmailMessage | None = None,
) -> WireResult:
    """EHLO, STARTTLS, EHLO again, AUTH XOAUTH2, MAIL FROM, RCPT TO, then RSET and QUIT; with
    ``message``, DATA instead of RSET (the only step at which Exchange checks Send As, §2.5)."""
    try:
        smtp = smtplib.SMTP(host, port, local_hostname=EHLO_NAME, timeout=timeout)
    except (OSError, smtplib.SMTPException) as exc:
        return WireResult("connect", False, f"cannot connect to {host}:{port}: {_oserror(exc)}")
    try:
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            return WireResult("tls", False, "the server does not offer STARTTLS")
        try:
            smtp.starttls(context=context)
        except ssl.SSLError as exc:
            return WireResult("tls", False, f"TLS failed: {exc.reason or exc}")
        smtp.ehlo()  # starttls() forgets the EHLO answer and auth() does not send it again (§7.2)
        try:
            # auth(), not login(): login() never picks XOAUTH2 and would fall back to Basic LOGIN.
            # The callable takes an optional challenge: smtplib calls it again on a 334.
            smtp.auth("XOAUTH2", lambda challenge=None: xoauth2(user, token), initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            return WireResult("auth", False, _smtp_reply(exc.smtp_code, exc.smtp_error), exc.smtp_code)
        except smtplib.SMTPNotSupportedError:
            return WireResult("auth", False, "the server does not offer AUTH after STARTTLS")
        code, msg = smtp.mail(mail_from)
        if code != 250:
            return WireResult("mail", False, _smtp_reply(code, msg), code)
        code, msg = smtp.rcpt(rcpt_to)
        if code not in (250, 251):
            return WireResult("rcpt", False, _smtp_reply(code, msg), code)
        if message is None:
            smtp.rset()
            return WireResult("done", True, _smtp_reply(code, msg), code)
        code, msg = smtp.data(message.as_bytes())
        if code != 250:
            return WireResult("data", False, _smtp_reply(code, msg), code)
        return WireResult("done", True, _smtp_reply(code, msg), code)
    except smtplib.SMTPResponseException as exc:
        return WireResult("data", False, _smtp_reply(exc.smtp_code, exc.smtp_error), exc.smtp_code)
    except (OSError, smtplib.SMTPException) as exc:
        return WireResult("connect", False, f"connection lost: {_oserror(exc)}")
    finally:
        _quietly(smtp.quit)
        _quietly(smtp.close)


def _smtp_reply(code: int, msg: bytes | str) -> str:
    return f"{code} {_text(msg)}".strip()


def probe_message(mail_from: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = to
    msg["Subject"] = "esj-provision probe: test message"
    msg["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2] or None)
    msg.set_content(
        f"This message was sent by `esj-provision probe --send-test-to` to prove that E-mail Server can send "
        f"FROM {mail_from}. It can be deleted."
    )
    return msg


# -- EWS (§4) ------------------------------------------------------------------------------------

_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_T = "http://schemas.microsoft.com/exchange/services/2006/types"
_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
# ❓ the RequestServerVersion is a choice (§4); Exchange2013_SP1 is what Microsoft's own samples send.
EWS_VERSION = "Exchange2013_SP1"


def ews_get_folder_body(mailbox: str, *, impersonate: bool, folder: str = "inbox") -> str:
    """GetFolder of a distinguished folder of ``mailbox`` (§4): with ``impersonate`` (app-only
    tokens) the ExchangeImpersonation header names it; a delegated token opens it as a delegate
    through DistinguishedFolderId/Mailbox and must not carry that header (§4, EWSMA-212)."""
    addr = escape(mailbox)
    imp = (
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{addr}</t:PrimarySmtpAddress>"
        f"</t:ConnectingSID></t:ExchangeImpersonation>"
        if impersonate
        else ""
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soap:Envelope xmlns:soap="{_SOAP}" xmlns:t="{_T}" xmlns:m="{_M}">'
        f'<soap:Header><t:RequestServerVersion Version="{EWS_VERSION}"/>{imp}</soap:Header>'
        "<soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>"
        f'<m:FolderIds><t:DistinguishedFolderId Id="{folder}"><t:Mailbox><t:EmailAddress>{addr}</t:EmailAddress>'
        "</t:Mailbox></t:DistinguishedFolderId></m:FolderIds></m:GetFolder></soap:Body></soap:Envelope>"
    )


async def ews_get_folder(
    client: httpx.AsyncClient, url: str, mailbox: str, token: str, *, impersonate: bool
) -> WireResult:
    import httpx

    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "text/xml; charset=utf-8",
        # "When using impersonation you must always use the X-AnchorMailbox request header" (§4).
        "X-AnchorMailbox": mailbox,
    }
    try:
        r = await client.post(url, content=ews_get_folder_body(mailbox, impersonate=impersonate), headers=headers)
    except httpx.HTTPError as exc:
        return WireResult("connect", False, f"cannot reach {url}: {exc.__class__.__name__}")
    except Exception as exc:  # the shared transport's TransientError after its retries
        return WireResult("connect", False, f"cannot reach {url}: {exc}")
    kept = {k: r.headers[k] for k in ("x-ews-policy-reason", "x-ms-diagnostics", "www-authenticate") if k in r.headers}
    result = WireResult("open", False, code=r.status_code, headers=kept)
    result.fields = parse_ews(r.content)
    f = result.fields
    if r.status_code == 200 and f.get("ResponseClass") == "Success":
        result.ok, result.stage, result.answer = True, "done", f"GetFolder: {f.get('ResponseCode') or 'NoError'}"
    elif "faultcode" in f or "faultstring" in f:
        result.answer = f"HTTP {r.status_code} SOAP fault {f.get('faultcode', '')}: {f.get('faultstring', '')}".strip()
    elif "ResponseCode" in f:
        result.answer = f"HTTP {r.status_code} {f['ResponseCode']}: {f.get('MessageText', '')}".strip()
    else:
        result.answer = f"HTTP {r.status_code}" + (
            f" X-EWS-Policy-Reason: {kept['x-ews-policy-reason']}" if "x-ews-policy-reason" in kept else ""
        )
    return result


def parse_ews(body: bytes) -> dict[str, str]:
    """ResponseClass, ResponseCode and MessageText of the first response message, or a SOAP
    fault's faultcode/faultstring. An HTTP 200 can carry ResponseClass="Error" (§4)."""
    out: dict[str, str] = {}
    if not body.strip():
        return out
    try:
        root = ElementTree.fromstring(body)  # the answer of the server we asked, for 3 fields
    except ElementTree.ParseError:
        return out
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag.endswith("ResponseMessage") and "ResponseClass" in el.attrib and "ResponseClass" not in out:
            out["ResponseClass"] = el.attrib["ResponseClass"]
        elif tag in ("ResponseCode", "MessageText", "faultcode", "faultstring") and tag not in out:
            out[tag] = (el.text or "").strip()
    return out


# -- Graph (§5) ------------------------------------------------------------------------------------


async def graph_request(
    client: httpx.AsyncClient, method: str, url: str, token: str, json_body: object | None = None
) -> WireResult:
    import httpx

    try:
        r = await client.request(method, url, headers={"Authorization": f"Bearer {token}"}, json=json_body)
    except httpx.HTTPError as exc:
        return WireResult("connect", False, f"cannot reach {url}: {exc.__class__.__name__}")
    except Exception as exc:  # the shared transport's TransientError after its retries
        return WireResult("connect", False, f"cannot reach {url}: {exc}")
    if r.status_code < 300:
        return WireResult("done", True, f"HTTP {r.status_code}", r.status_code)
    code = message = ""
    try:
        err = r.json().get("error") or {}
        code, message = str(err.get("code") or ""), str(err.get("message") or "")
    except (ValueError, AttributeError):
        pass
    return WireResult("open", False, f"HTTP {r.status_code} {code}: {message}".strip(), r.status_code,
                      fields={"code": code, "message": message})


# -- helpers -------------------------------------------------------------------------------------


def _oserror(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def _quietly(fn: Callable[[], object]) -> None:
    # Closing a session that may already have failed: nothing is left to report.
    with contextlib.suppress(Exception):
        fn()
