"""SMTP client submission as Exchange Online answers it, on aiosmtpd: STARTTLS required, ``AUTH
LOGIN XOAUTH2`` offered only after TLS, the SMTP AUTH switches, and Send As checked after DATA.

Exchange's behaviour lives in the handler hooks (probe-protocols.md §2, §7.3); aiosmtpd does the
protocol. Its logger records command lines (an AUTH line holds a token) at INFO and deprecation
notes at WARNING, so it is held at ERROR here, whatever the host application's logging says.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import email.parser
import email.utils
import logging
import ssl
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from .mail import (
    HOST,
    MailContext,
    SentMail,
    caller,
    exchange_sp,
    full_access,
    now_iso,
    parse_xoauth2,
    parse_xoauth2_raw,
    rbac,
    same_mailbox,
    send_as,
)
from .tenant import Recipient
from .tokens import TokenProblem

MAX_SIZE = 157_286_400  # SIZE in Exchange's EHLO (🔶 MK-1770)
AUTH_OK = "235 2.7.0 Authentication successful"  # ✅ IMAP-OAUTH


def auth_failed() -> str:
    return f"535 5.7.3 Authentication unsuccessful [{HOST}]"  # ✅ text, IMAP-OAUTH


def smtp_auth_disabled(where: str) -> str:
    """``where`` is Tenant or Mailbox (🔶 NC-13668, PB-CODE-5139: text as captured)."""
    return (
        f"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the {where}. "
        f"Visit https://aka.ms/smtp_auth_disabled for more information. [{HOST} {now_iso()} {uuid.uuid4().hex[:16].upper()}]"
    )


def send_as_denied(login: str, sender: str) -> str:
    # 🔶 PB-CODE-252, shortened after the exception name (the rest is diagnostic data).
    return (
        f"554 5.2.252 SendAsDenied; {login} not allowed to send as {sender}; "
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message "
        f"due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. [Hostname={HOST}]"
    )


@dataclass
class Login:
    """What AUTH established (never the token)."""

    login: str  # the user= value
    principal: str  # account UPN or "app <id>"
    sid: str | None  # the principal whose Send As counts
    mailbox: Recipient  # the mailbox the session submits through
    app_id: str


class _ExchangeSMTP(SMTP):
    # An AUTH XOAUTH2 line carries a JWT of 1-3 KB: aiosmtpd's RFC limits (512 per command, 1001 per
    # line) would refuse it, Exchange does not.
    line_length_limit = 16_384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_size_limits = collections.defaultdict(lambda: 512, {"AUTH": 16_384})

    async def push(self, status: Any) -> None:
        # Exchange's wording for the STARTTLS go-ahead (🔶 MK-1770/PB-TYT9); aiosmtpd's is fixed.
        if status == "220 Ready to start TLS":
            status = "220 2.0.0 SMTP server ready"
        await super().push(status)


class _Handler:
    def __init__(self, ctx: MailContext) -> None:
        self.ctx = ctx

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Exchange's extension list (🔶 MK-1770, PB-TYT9): STARTTLS before TLS, AUTH only after."""
        session.host_name = hostname
        peer = session.peer[0] if isinstance(session.peer, tuple) else "127.0.0.1"
        lines = [f"250-{HOST} Hello [{peer}]", f"250-SIZE {MAX_SIZE}", "250-PIPELINING", "250-DSN",
                 "250-ENHANCEDSTATUSCODES"]
        lines += [r for r in responses if r == "250-STARTTLS" or r.startswith("250-AUTH ")]
        return [*lines, "250-8BITMIME", "250-BINARYMIME", "250-CHUNKING", "250 SMTPUTF8"]

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 2:
            parsed = parse_xoauth2(args[1])
        else:
            raw = await server.challenge_auth("")  # "334 ", the two-step form Microsoft documents
            if raw is MISSING:
                return AuthResult(success=False, handled=True)  # aiosmtpd already answered 501
            assert isinstance(raw, bytes)
            parsed = parse_xoauth2_raw(raw)
        login, reply, why = self._authorize(parsed)
        self.ctx.record_call("smtp", "AUTH", reply[:9], user=parsed[0] if parsed else None, why=why,
                             app_id=login.app_id if login else None)
        if login is None:
            return AuthResult(success=False, handled=False, message=reply)
        return AuthResult(success=True, auth_data=login, message=AUTH_OK)

    def _authorize(self, parsed: tuple[str, str] | None) -> tuple[Login | None, str, str]:
        """Token, ``user=``, the SMTP AUTH switch, then the permission (that order is ours: ❓)."""
        if parsed is None:
            return None, auth_failed(), "malformed XOAUTH2"
        user, token = parsed
        t, prop = self.ctx.tenant, self.ctx.prop
        self.ctx.refresh()
        try:
            who = caller(t, self.ctx.mint, token)
        except TokenProblem as p:
            return None, auth_failed(), f"token {p.kind}"
        mbx = t.find_recipient(user)
        if mbx is None:
            return None, auth_failed(), "no such mailbox"
        if not who.app_only:
            assert who.user is not None
            # Delegated: user= must be the token's own user, not the shared mailbox (🔶 NC-13668 ...).
            if not same_mailbox(t, user, who.user):
                return None, auth_failed(), "user= is not the signed-in account"
            if "SMTP.Send" not in who.scopes:
                return None, auth_failed(), "token without SMTP.Send"
        disabled = mbx.smtp_auth_disabled
        if disabled is True:
            return None, smtp_auth_disabled("Mailbox"), "SMTP AUTH disabled for the mailbox"
        if disabled is None and t.transport_smtp_auth_disabled:
            return None, smtp_auth_disabled("Tenant"), "SMTP AUTH disabled for the tenant"
        if not who.app_only:
            assert who.user is not None
            return Login(user, who.user.upn, who.user.sid, who.user, who.app_id), AUTH_OK, "delegated"
        sp, sp_why = exchange_sp(t, prop, who.app_id)
        entra = "SMTP.SendAsApp" in who.roles and sp is not None and full_access(t, prop, mbx, sp.sid).ok
        scoped = rbac(t, prop, who.app_id, mbx).get("SMTP.SendAsApp") == "effective"
        if not (entra or scoped):
            why = "no SMTP.SendAsApp with Full Access, nor an RBAC SMTP.SendAsApp assignment in scope"
            return None, auth_failed(), why if sp is not None else f"{why} ({sp_why})"
        sid = sp.sid if sp is not None else next((s.sid for s in t.exo_sps if s.app_id == who.app_id), None)
        return Login(user, f"app {who.app_id}", sid, mbx, who.app_id), AUTH_OK, "app-only"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.57 Client not authenticated to send mail"  # ✅ MFP-FIX
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"  # even without Send As: that is checked after DATA (🔶 NC-13668)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.57 Client not authenticated to send mail"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data
        assert isinstance(login, Login)  # MAIL needs AUTH, and DATA needs MAIL
        content = envelope.original_content or b""
        headers = email.parser.BytesHeaderParser().parsebytes(content)
        sender = email.utils.parseaddr(str(headers.get("From") or ""))[1] or (envelope.mail_from or "")
        t = self.ctx.tenant
        self.ctx.refresh()
        for address in dict.fromkeys(a for a in (sender, envelope.mail_from) if a):
            owner = t.find_recipient(address)
            allowed = owner is not None and (
                owner.id == login.mailbox.id
                or (login.sid is not None and send_as(t, self.ctx.prop, owner, login.sid).ok)
            )
            if not allowed:
                self.ctx.record_call("smtp", "DATA", "554", user=login.login, sender=address, app_id=login.app_id,
                                     why="no effective Send As")
                return send_as_denied(login.login, address)
        mail = SentMail("smtp", sender, list(envelope.rcpt_tos), str(headers.get("Subject") or ""),
                        login.principal, login.app_id, login.mailbox.mail)
        self.ctx.sent.append(mail)
        self.ctx.record_call("smtp", "DATA", "250", user=login.login, sender=sender, app_id=login.app_id)
        return f"250 2.6.0 {mail.message_id} [Hostname={HOST}] Queued mail for delivery"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Resetting"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "221 2.0.0 Service closing transmission channel"  # 🔶 PB-NYQR


class SmtpServer:
    def __init__(self, ctx: MailContext, ssl_context: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.ssl_context = ssl_context
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    async def start(self, host: str, port: int) -> int:
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # see the module docstring
        handler = _Handler(self.ctx)
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            banner = dt.datetime.now(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")
            proto = _ExchangeSMTP(
                handler, hostname=HOST, ident=f"Microsoft ESMTP MAIL Service ready at {banner}",
                tls_context=self.ssl_context, require_starttls=True, auth_require_tls=True,
                auth_exclude_mechanism=["PLAIN"], data_size_limit=MAX_SIZE, loop=loop, timeout=60,
            )
            self._sessions.add(proto)
            return proto

        self._server = await loop.create_server(factory, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for proto in list(self._sessions):  # wait_closed() would wait for idle clients too
                transport = proto.transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
            await self._server.wait_closed()
            self._server = None
