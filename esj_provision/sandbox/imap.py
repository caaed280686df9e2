"""A minimal IMAP4 responder with Exchange Online's replies: implicit TLS, CAPABILITY, AUTHENTICATE
XOAUTH2 (SASL-IR and the ``+`` continuation stdlib imaplib uses), EXAMINE/SELECT INBOX, NOOP, LOGOUT.

No maintained Python IMAP server reproduces Exchange's reply texts (probe-protocols.md §7.4), and a
probe needs exactly those, so this is ours. Tagged texts marked ✅/🔶 come from §1 of the reference;
the rest (unknown command, wrong state) are marked unconfirmed where they are written.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from .mail import HOST, Caller, MailContext, caller, exchange_sp, full_access, parse_xoauth2
from .tenant import Recipient
from .tokens import TokenProblem

MAX_LINE = 64 * 1024  # an XOAUTH2 line with a long JWT fits; anything longer is not IMAP we serve

# 🔶 MK-1494/IMAPFLOW-314: the bracket holds the base64 of the UTF-16LE back-end name.
GREETING = "* OK The Microsoft Exchange IMAP4 service is ready. [{}]"
CAPABILITIES = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+"
AUTH_OK = "OK AUTHENTICATE completed."  # ✅ IMAP-OAUTH
AUTH_FAILED = "NO AUTHENTICATE failed."  # ✅ IMAP-OAUTH, for any cause
NOT_CONNECTED = "BAD User is authenticated but not connected."  # 🔶 PROXY-74, MK-1494
BYE_NOT_CONNECTED = "* BYE Connection closed. 14"  # 🔶 same threads
# Unconfirmed wording (Exchange's own strings as commonly quoted, not in Microsoft's docs):
INVALID_STATE = "BAD Command received in Invalid state."
COMMAND_ERROR = "BAD Command Error. 10"
FLAGS = r"(\Seen \Answered \Flagged \Deleted \Draft $MDNSent)"


@dataclass
class _Session:
    who: Caller | None = None
    mailbox: Recipient | None = None  # the user= mailbox once authenticated
    login: str = ""


class ImapServer:
    def __init__(self, ctx: MailContext, ssl_context: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.ssl_context = ssl_context
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._connected, host, port, ssl=self.ssl_context, limit=MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, ValueError):
            pass  # a client that drops or overruns the line limit just loses its session
        except asyncio.CancelledError:
            pass  # stop(): end normally, or asyncio's stream callback logs the cancelled task as an error
        finally:
            writer.close()
            # Bounded (a client may never answer the TLS close), and a cancel here ends the session too.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 2)
            self._tasks.discard(task)  # only now: stop() must still see (and cancel) a closing session

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(line: str) -> None:
            writer.write(line.encode("utf-8") + b"\r\n")

        backend = base64.b64encode(HOST.encode("utf-16-le")).decode("ascii")
        send(GREETING.format(backend))
        await writer.drain()
        s = _Session()
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tag, _, rest = line.partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            if not tag or not command:
                send(f"{tag or '*'} {COMMAND_ERROR}")
            elif command == "CAPABILITY":
                send(f"* CAPABILITY {CAPABILITIES}{' MOVE' if s.who else ''}")
                send(f"{tag} OK CAPABILITY completed.")
            elif command == "NOOP":
                send(f"{tag} OK NOOP completed.")
            elif command == "LOGOUT":
                send("* BYE Microsoft Exchange Server IMAP4 server signing off.")
                send(f"{tag} OK LOGOUT completed.")
                await writer.drain()
                return
            elif command == "AUTHENTICATE":
                await self._authenticate(s, tag, args, reader, send, writer)
            elif command == "LOGIN":
                # Basic authentication is off in Exchange Online; the reply text is unconfirmed.
                send(f"{tag} NO LOGIN failed.")
            elif command in ("EXAMINE", "SELECT"):
                if not await self._open(s, tag, command, args, send, writer):
                    return
            else:
                send(f"{tag} {COMMAND_ERROR}")
            await writer.drain()

    async def _authenticate(
        self, s: _Session, tag: str, args: str, reader: asyncio.StreamReader,
        send: Callable[[str], None], writer: asyncio.StreamWriter,
    ) -> None:
        if s.who is not None:
            send(f"{tag} {INVALID_STATE}")
            return
        mechanism, _, initial = args.strip().partition(" ")
        if mechanism.upper() != "XOAUTH2":
            send(f"{tag} {AUTH_FAILED}")  # AUTH=PLAIN is advertised but Basic auth is off
            self.ctx.record_call("imap", "AUTHENTICATE", "NO", mechanism=mechanism, why="not XOAUTH2")
            return
        if not initial.strip():
            send("+ ")  # the two-step form, as stdlib imaplib always sends it
            await writer.drain()
            answer = await reader.readline()
            initial = answer.decode("ascii", "replace").strip()
            if initial == "*":
                send(f"{tag} BAD AUTHENTICATE aborted.")  # RFC 3501 cancel; Exchange's text unconfirmed
                return
        parsed = parse_xoauth2(initial)
        ok, why = self._check(s, parsed)
        self.ctx.record_call("imap", "AUTHENTICATE", "OK" if ok else "NO", user=s.login or None, why=why,
                             app_id=s.who.app_id if s.who else None)
        if not ok:
            s.who = s.mailbox = None
        send(f"{tag} {AUTH_OK if ok else AUTH_FAILED}")

    def _check(self, s: _Session, parsed: tuple[str, str] | None) -> tuple[bool, str]:
        """Whether AUTHENTICATE succeeds. App-only, a missing permission fails here; delegated, the
        token alone decides and the mailbox is refused at EXAMINE (probe-protocols.md §1.4)."""
        if parsed is None:
            return False, "malformed XOAUTH2"
        user, token = parsed
        s.login = user
        t = self.ctx.tenant
        self.ctx.refresh()
        try:
            who = caller(t, self.ctx.mint, token)
        except TokenProblem as p:
            return False, f"token {p.kind}"
        mbx = t.find_recipient(user)
        if mbx is None:
            return False, "no such mailbox"
        s.who, s.mailbox = who, mbx
        if not who.app_only:
            if "IMAP.AccessAsUser.All" not in who.scopes:
                return False, "token without IMAP.AccessAsUser.All"
            return True, "delegated"
        if "IMAP.AccessAsApp" not in who.roles:
            return False, "token without IMAP.AccessAsApp"
        sp, why = exchange_sp(t, self.ctx.prop, who.app_id)
        if sp is None:
            return False, why
        access = full_access(t, self.ctx.prop, mbx, sp.sid)
        return access.ok, access.why

    async def _open(self, s: _Session, tag: str, command: str, args: str, send: Callable[[str], None],
                    writer: asyncio.StreamWriter) -> bool:
        """EXAMINE/SELECT. False when the connection must close (the not-connected case)."""
        if s.who is None or s.mailbox is None:
            send(f"{tag} {INVALID_STATE}")
            return True
        if not s.who.app_only:
            assert s.who.user is not None
            self.ctx.refresh()
            access = full_access(self.ctx.tenant, self.ctx.prop, s.mailbox, s.who.user.sid)
            if not access.ok:
                self.ctx.record_call("imap", command, "BAD", user=s.login, why=access.why, app_id=s.who.app_id)
                send(f"{tag} {NOT_CONNECTED}")
                send(BYE_NOT_CONNECTED)
                await writer.drain()
                return False
        name = args.strip().strip('"')
        if name.upper() != "INBOX":
            send(f"{tag} NO Mailbox doesn't exist: {name}")  # wording unconfirmed
            return True
        self.ctx.record_call("imap", command, "OK", user=s.login, app_id=s.who.app_id)
        read_only = command == "EXAMINE"
        send("* 0 EXISTS")
        send("* 0 RECENT")
        send(f"* FLAGS {FLAGS}")
        send(f"* OK [PERMANENTFLAGS {'()' if read_only else FLAGS}] Permanent flags")
        send("* OK [UIDVALIDITY 14] UIDVALIDITY value")
        send("* OK [UIDNEXT 1] The next unique identifier value")
        send(f"{tag} OK [READ-ONLY] EXAMINE completed." if read_only else f"{tag} OK [READ-WRITE] SELECT completed.")
        return True
