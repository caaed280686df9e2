"""The sandbox's HTTPS server: one aiohttp app on one loopback port serving Entra ID (``/``),
Graph (``/graph``), Exchange (``/exchange``) and the control API (``/_sandbox``).

One middleware does what every service shares: request ids, latency, queued/random faults,
throttling and the call log. All state lives on the event-loop thread; the in-process
:class:`~esj_provision.sandbox.Sandbox` reaches it through ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from . import entra, ews, exchange, graph
from .config import MAX_BODY_BYTES, MAX_CALL_LOG, SandboxConfig, SandboxError
from .faults import Faults, parse_fault
from .imap import ImapServer
from .mail import MailContext, Propagation, SentMail
from .mail import rbac_effective as mail_rbac
from .smtp import SmtpServer
from .tenant import (
    DIRECTORY_ROLES,
    ESJ_ACCOUNT_ID,
    ESJ_APP_ID,
    EXCHANGE_APP_ID,
    EXCHANGE_RESOURCE,
    FIXED_SECRETS,
    GRAPH_RESOURCE,
    PROVISIONING_APP_ID,
    TENANT_DOMAIN,
    MutationError,
    Recipient,
    Tenant,
    mutate,
)
from .tls import Material, generate
from .tokens import TokenMint, TokenProblem, b64url, b64url_decode, unverified

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Typed request storage on aiohttp >= 3.12; a plain string key on older releases.
_META: Any = web.RequestKey("esj_sandbox_meta", dict) if hasattr(web, "RequestKey") else "esj_sandbox_meta"

ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
GRAPH_AUDIENCES = frozenset({GRAPH_RESOURCE, "00000003-0000-0000-c000-000000000000"})
EXCHANGE_AUDIENCES = frozenset({EXCHANGE_RESOURCE, EXCHANGE_APP_ID})
SKIPTOKEN_TTL = 600  # nextLinks die after ~10 minutes at Microsoft too: clients must not dawdle
_COLLECTION = "#Collection(String)"
_MAILBOX_GRANT_CMDLETS = frozenset(
    {"Add-MailboxPermission", "Remove-MailboxPermission", "Add-RecipientPermission", "Remove-RecipientPermission"}
)

# Which Exchange cmdlet classes each directory role allows (exchange.Spec.level).
_ALL = frozenset({"read", "recipient", "org"})
_LEVELS: dict[str, frozenset[str]] = {
    DIRECTORY_ROLES["Exchange Administrator"]: _ALL,
    DIRECTORY_ROLES["Global Administrator"]: _ALL,
    DIRECTORY_ROLES["Exchange Recipient Administrator"]: frozenset({"read", "recipient"}),
    DIRECTORY_ROLES["Global Reader"]: frozenset({"read"}),
    DIRECTORY_ROLES["Compliance Administrator"]: frozenset({"read"}),
    DIRECTORY_ROLES["Helpdesk Administrator"]: frozenset({"read"}),
    DIRECTORY_ROLES["Security Administrator"]: frozenset({"read"}),
    DIRECTORY_ROLES["Security Reader"]: frozenset({"read"}),
}
_EXO_WWW_AUTH = (
    'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
    'trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
    'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"'
)
_GRAPH_WWW_AUTH = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None,
          content_type: str = ODATA_JSON) -> web.Response:
    h = {"Content-Type": content_type, **(headers or {})}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=h)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def _abort(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a load balancer resetting it would,
    so the client sees a reset and not a clean close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _hash_input(cmdlet_input: Any) -> str:
    return hashlib.sha256(json.dumps(cmdlet_input, sort_keys=True).encode()).hexdigest()[:16]


def _exo_envelope(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "adminapi.warnings@odata.type": _COLLECTION, "@adminapi.warnings": []}


class SandboxServer:
    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg.validate()
        try:
            self.tenant = Tenant.load_or_seed(cfg.state_path, cfg.mailboxes, cfg.upn_domain or TENANT_DOMAIN)
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                f"--state {cfg.state_path} is not a sandbox state file ({exc})",
                hint="delete it to start from the seeded tenant, or point --state elsewhere", usage=False,
            ) from None
        self.mint = TokenMint(cfg.token_lifetime)
        self.faults = Faults.create(
            cfg.seed, cfg.latency_ms, cfg.fault_rate, {s: cfg.rate(s) for s in ("graph", "exchange")}
        )
        self.outlook = graph.OutlookLimit(cfg.outlook_concurrency)
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALL_LOG)
        self.seq = 0
        # Real Entra secrets look like "abc8Q~..." : keep the '~' so clients meet it here first.
        self.client_secret = cfg.client_secret or f"sbx8Q~{secrets.token_urlsafe(30)}"
        self.pfx_password = cfg.pfx_password or secrets.token_urlsafe(18)
        self.esj_password = cfg.esj_password or f"Sbx-{secrets.token_urlsafe(18)}"
        self.prop = Propagation(cfg.propagation_s)
        self.mail = MailContext(self.tenant, self.mint, self.prop, self._log)
        self.imap: ImapServer | None = None
        self.smtp: SmtpServer | None = None
        self.own_dir = cfg.dir is None
        self.dir: Path | None = None if cfg.dir is None else Path(cfg.dir)  # a temp dir is made at start
        self.material: Material | None = None
        self.creds = entra.Credentials(secrets={}, certs={})
        self.port = 0
        self.url = ""
        self.done: asyncio.Event | None = None  # set by --max-runtime
        self._runner: web.AppRunner | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.done = asyncio.Event()
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="esj-sandbox-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.material = generate(self.dir, self.pfx_password, self.cfg.host)
        self.creds = entra.Credentials(
            secrets={PROVISIONING_APP_ID: self.client_secret, **FIXED_SECRETS},
            certs={PROVISIONING_APP_ID: self.material.client_cert},
            passwords={ESJ_ACCOUNT_ID: self.esj_password},
        )
        self.prop.settle(self.tenant)  # what the tenant starts with has long propagated
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.material.server_pem_path)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware])
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cfg.host, self.cfg.port))
        self.port = sock.getsockname()[1]
        host = f"[{self.cfg.host}]" if family == socket.AF_INET6 else self.cfg.host
        self.url = f"https://{host}:{self.port}"
        await web.SockSite(self._runner, sock, ssl_context=ctx).start()
        self.imap, self.smtp = ImapServer(self.mail, ctx), SmtpServer(self.mail, ctx)
        await self.imap.start(self.cfg.host, self.cfg.imap_port)
        await self.smtp.start(self.cfg.host, self.cfg.smtp_port)
        if self.cfg.state_path is not None:
            self._save()
        if self.cfg.max_runtime:
            asyncio.get_running_loop().call_later(self.cfg.max_runtime, self.done.set)

    async def stop(self) -> None:
        for mail_server in (self.imap, self.smtp):
            if mail_server is not None:
                await mail_server.stop()
        self.imap = self.smtp = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._save()
        if self.own_dir and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _save(self) -> None:
        if self.cfg.state_path is None:
            return
        try:
            self.tenant.save(self.cfg.state_path)
        except OSError as exc:  # a full disk must not turn into a 500 for the client under test
            sys.stderr.write(f"sandbox: cannot write state to {self.cfg.state_path}: {exc}\n")

    def env(self) -> dict[str, str]:
        assert self.material is not None
        return {
            "AZURE_TENANT_ID": self.tenant.tenant_id,
            "AZURE_CLIENT_ID": PROVISIONING_APP_ID,
            "AZURE_CLIENT_SECRET": self.client_secret,
            "AZURE_AUTHORITY_HOST": self.url,
            "ESJ_PROVISION_GRAPH_ENDPOINT": f"{self.url}/graph",
            "ESJ_PROVISION_EXCHANGE_ENDPOINT": f"{self.url}/exchange",
            "ESJ_PROVISION_CA_BUNDLE": str(self.material.ca_path),
        }

    def esj_env(self) -> dict[str, str]:
        """What ESJ itself uses: its app's id and secret, its service account's password, and the
        mail endpoints (the env file has both this and :meth:`env`)."""
        return {
            "ESJ_PROVISION_ESJ_CLIENT_ID": ESJ_APP_ID,
            "ESJ_PROVISION_ESJ_CLIENT_SECRET": FIXED_SECRETS[ESJ_APP_ID],
            "ESJ_PROVISION_ESJ_PASSWORD": self.esj_password,
            "ESJ_PROVISION_IMAP_ENDPOINT": f"{self._host()}:{self.imap.port if self.imap else 0}",
            "ESJ_PROVISION_SMTP_ENDPOINT": f"{self._host()}:{self.smtp.port if self.smtp else 0}",
            "ESJ_PROVISION_EWS_ENDPOINT": f"{self.url}/EWS/Exchange.asmx",
        }

    def _host(self) -> str:
        return f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host

    def _bases(self) -> list[str]:
        p = self.port
        return [self.url, f"https://127.0.0.1:{p}", f"https://localhost:{p}", f"https://[::1]:{p}"]

    def _base(self, request: web.Request) -> str:
        # Links point back at the host the client used (127.0.0.1 vs localhost), or msal's
        # issuer/host checks and TLS hostname checks could disagree with what it was given.
        host = request.headers.get("Host", "")
        candidate = f"https://{host}"
        return candidate if candidate in self._bases() else self.url

    # --- operations shared by the control API and the in-process Sandbox ----------------------

    def state_json(self) -> dict[str, Any]:
        return self.tenant.to_json()

    def calls_json(self, since: int = 0, service: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["seq"] > since and (service is None or c["service"] == service)]

    def reset_calls(self) -> None:
        self.calls.clear()

    def queue_fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        fault = parse_fault(spec)
        self.faults.enqueue(fault)
        return fault.to_json()

    def apply_mutation(self, op: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(op, dict):
            raise MutationError("the body must be a JSON object with an 'op'")
        name = op.get("op")
        if name == "expire-tokens":
            self.mint.expire_all()
            return {"op": "expire-tokens", "generation": self.mint.generation}
        if name == "set-propagation":
            seconds = op.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86_400:
                raise MutationError("'seconds' must be a number from 0 to 86400")
            self.prop.delay = float(seconds)
            return {"op": name, "seconds": self.prop.delay}
        if name == "propagate":
            pending = len(self.prop.pending())
            self.prop.settle(self.tenant)
            return {"op": name, "settled": pending}
        if name == "clear-sent":
            cleared = len(self.mail.sent)
            self.mail.sent.clear()
            return {"op": name, "cleared": cleared}
        result = mutate(self.tenant, op)
        self._grants_changed(str(op.get("mailbox") or "") if name in ("add-grant", "remove-grant") else None)
        self._save()
        return result

    def _grants_changed(self, mailbox: str | None) -> None:
        """Stamp new grants now (so they propagate from now) and drop removed ones. A change on one
        mailbox rescans that mailbox only; anything else rescans the tenant (rare org-level writes)."""
        found = self.tenant.find_recipient(mailbox) if mailbox else None
        self.prop.refresh(self.tenant, {found.id} if found is not None else None)

    def sent_json(self) -> list[dict[str, Any]]:
        return [m.to_json() for m in self.mail.sent]

    def propagation_json(self) -> dict[str, Any]:
        return {"seconds": self.prop.delay, "pending": [list(k) for k in self.prop.pending()]}

    # --- plumbing -----------------------------------------------------------------------------

    def _log(self, entry: dict[str, Any]) -> None:
        self.seq += 1
        entry["seq"] = self.seq
        self.calls.append(entry)
        if self.cfg.verbose:
            sys.stderr.write(
                f"{entry['time']} {entry['service']:8} {entry['method']:6} {entry['status']} "
                f"{entry.get('cmdlet') or entry['path']}{' fault=' + entry['fault'] if entry.get('fault') else ''}\n"
            )

    def _fault_response(self, service: str, status: int, retry_after: int | None, meta: dict[str, Any]) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        messages = {
            429: ("TooManyRequests", "Too many requests."),
            503: ("ServiceUnavailable", "The service is temporarily unavailable."),
            504: ("GatewayTimeout", "The gateway did not receive a response in time."),
        }
        code, message = messages[status]
        if service == "graph":
            body = graph.error_body(code, message, meta["request_id"], meta["client_request_id"] or meta["request_id"])
            return _json(body, status, headers)
        if service == "exchange":
            return _json(_exo_envelope({"error": {"code": code, "message": message}}), status, headers)
        err = {429: "temporarily_unavailable", 503: "temporarily_unavailable", 504: "temporarily_unavailable"}[status]
        body = entra.EntraError(status, err, 90033, "A transient error has occurred. Please try again.").body(
            self.url, meta["client_request_id"] or meta["request_id"]
        )
        return _json(body, status, headers, "application/json; charset=utf-8")

    async def _peek_exchange(self, request: web.Request, meta: dict[str, Any]) -> web.Response | None:
        """Read the cmdlet name before the handler runs, so queued faults can match on it. Returns
        an error response only for a body over the size limit."""
        if request.method != "POST":
            return None
        try:
            raw = await request.read()
        except web.HTTPException as exc:  # 413: larger than MAX_BODY_BYTES
            return _json(_exo_envelope({"error": {"code": "RequestEntityTooLarge", "message": exc.reason}}), exc.status)
        try:
            payload = json.loads(raw or b"null")
            cmdlet_input = payload["CmdletInput"]
            name = cmdlet_input["CmdletName"]
            params = cmdlet_input.get("Parameters") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        try:
            canon, spec = exchange.lookup(str(name))
            meta["cmdlet"], meta["write"] = canon, spec.write
        except exchange.CmdletError:
            meta["cmdlet"] = str(name)
        if isinstance(params, dict):
            meta["parameters"] = params
            identity = params.get("Identity")
            meta["identity"] = identity if isinstance(identity, str) else None
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sandbox"):
            if not _is_loopback(request.remote):
                return _json({"error": "the control API answers loopback clients only"}, 403)
            try:
                return await handler(request)
            except web.HTTPException as exc:
                return _json({"error": exc.reason}, exc.status)
        service = (
            "graph" if path.startswith("/graph") else "exchange" if path.startswith("/exchange")
            else "ews" if path.lower().startswith("/ews/") else "entra"
        )
        request_id = str(uuid.uuid4())
        given_crid = request.headers.get("client-request-id")
        meta: dict[str, Any] = {
            "time": _now_iso(), "service": service, "method": request.method, "path": path,
            "query": request.query_string, "cmdlet": None, "parameters": None, "identity": None,
            "status": None, "applied": False, "write": False, "fault": None, "app_id": None,
            "request_id": request_id, "client_request_id": given_crid,
        }
        request[_META] = meta
        started = time.monotonic()
        outlook_app = self._outlook_app(request) if service == "graph" else None
        if outlook_app is not None:
            # The slot is held from arrival to answer (latency included), as a request in flight
            # at Microsoft holds it; over the limit the answer is 429 at once.
            if not self.outlook.take(outlook_app):
                meta["fault"] = "outlook-concurrency"
                body = graph.throttled_body(request_id, given_crid or request_id)
                resp = _json(body, 429, {"Retry-After": str(graph.OUTLOOK_RETRY_AFTER)})
                return self._finish(resp, meta, request_id, given_crid, started)
            try:
                return await self._serve(request, handler, meta, service, started)
            finally:
                self.outlook.give(outlook_app)
        return await self._serve(request, handler, meta, service, started)

    def _outlook_app(self, request: web.Request) -> str | None:
        """The app id of a single Graph Outlook request when the Outlook limit is on (read from the
        token unverified: a bad token is refused by the handler anyway, and holds no slot long)."""
        if not self.outlook.limit:
            return None
        segs = graph.split_path(request.rel_url.raw_path[len("/graph"):])
        if not graph.is_outlook(segs):
            return None
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        try:
            return str(unverified(token)[1].get("appid") or "")
        except ValueError:
            return ""

    def _finish(self, resp: web.Response, meta: dict[str, Any], request_id: str, given_crid: str | None,
                started: float) -> web.Response:
        resp.headers["request-id"] = request_id
        resp.headers["client-request-id"] = given_crid or request_id
        meta["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        meta["status"] = resp.status
        self._log(meta)
        return resp

    async def _serve(self, request: web.Request, handler: Handler, meta: dict[str, Any], service: str,
                     started: float) -> web.StreamResponse:
        """Latency, queued and random faults, the rate limit, then the handler."""
        path, request_id, given_crid = meta["path"], meta["request_id"], meta["client_request_id"]
        delay = self.faults.latency()
        if delay:
            await asyncio.sleep(delay)
        if service == "exchange" and (too_large := await self._peek_exchange(request, meta)) is not None:
            meta["status"] = too_large.status
            self._log(meta)
            return too_large
        picked = self.faults.pick(
            {k: meta[k] for k in ("service", "method", "path", "cmdlet", "identity")},
            random_ok=service != "entra",
        )
        fault, retry_after = picked if picked else (None, None)
        meta["fault"] = fault
        resp: web.StreamResponse | None = None
        reset = False
        if fault == "reset-before":
            reset = True
        elif fault == "503":
            resp = self._fault_response(service, 503, retry_after, meta)
        elif fault == "429":
            resp = self._fault_response(service, 429, 1 if retry_after is None else retry_after, meta)
        else:
            # A Graph batch is charged per item inside the handler, not as one request.
            is_batch = service == "graph" and path.rstrip("/").endswith("/$batch")
            wait = None if service == "entra" or is_batch else self.faults.take(service)
            if wait is not None:
                meta["fault"] = "throttled"
                resp = self._fault_response(service, 429, wait, meta)
            else:
                resp = await self._run(handler, request)
                if fault == "504-after-apply":
                    resp = self._fault_response(service, 504, None, meta)
                elif fault == "reset-after-apply":
                    reset = True
        meta["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        if reset or resp is None:
            meta["status"] = None
            self._log(meta)
            _abort(request)
            return web.Response(status=500)  # never reaches the client: the transport is gone
        resp.headers["request-id"] = request_id
        resp.headers["client-request-id"] = given_crid or request_id
        if service == "entra":
            resp.headers["x-ms-request-id"] = request_id
        meta["status"] = resp.status
        self._log(meta)
        return resp

    async def _run(self, handler: Handler, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            # Router misses (404/405) and oversized bodies (413) as JSON, like the services.
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return _json({"error": {"code": exc.reason.replace(" ", ""), "message": exc.reason}}, exc.status, headers)

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_sandbox/health", self._c_health)
        r.add_get("/_sandbox/state", self._c_state)
        r.add_get("/_sandbox/calls", self._c_calls)
        r.add_post("/_sandbox/calls/reset", self._c_calls_reset)
        r.add_get("/_sandbox/faults", self._c_faults_list)
        r.add_post("/_sandbox/faults", self._c_faults_add)
        r.add_delete("/_sandbox/faults", self._c_faults_clear)
        r.add_post("/_sandbox/mutate", self._c_mutate)
        r.add_get("/_sandbox/sent", self._c_sent)
        r.add_route("*", "/EWS/Exchange.asmx", self._ews)
        r.add_route("*", "/ews/exchange.asmx", self._ews)
        r.add_route("*", "/graph{tail:.*}", self._graph)
        r.add_route("*", "/exchange{tail:.*}", self._exchange)
        r.add_get("/common/discovery/instance", self._e_instance)
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._e_metadata)
        r.add_get("/{tenant}/.well-known/openid-configuration", self._e_metadata)
        r.add_get("/{tenant}/discovery/v2.0/keys", self._e_keys)
        r.add_get("/{tenant}/discovery/keys", self._e_keys)
        r.add_post("/{tenant}/oauth2/v2.0/token", self._e_token)

    # --- Entra --------------------------------------------------------------------------------

    async def _e_metadata(self, request: web.Request) -> web.Response:
        seg = request.match_info["tenant"]
        if not (self.tenant.is_tenant(seg) or seg.lower() in ("common", "organizations")):
            meta = request[_META]
            body = entra.unknown_tenant(seg).body(self._base(request), meta["client_request_id"] or meta["request_id"])
            return _json(body, 400, content_type="application/json; charset=utf-8")
        return _json(entra.metadata(self.tenant, self._base(request), seg), content_type="application/json; charset=utf-8")

    async def _e_instance(self, request: web.Request) -> web.Response:
        base = self._base(request)
        return _json(entra.instance_discovery(base, URL(base).raw_authority), content_type="application/json; charset=utf-8")

    async def _e_keys(self, request: web.Request) -> web.Response:
        # Access tokens are HS256 with a private key: nothing to publish, and clients must not
        # validate Microsoft access tokens anyway.
        return _json({"keys": []}, content_type="application/json; charset=utf-8")

    async def _e_token(self, request: web.Request) -> web.Response:
        meta = request[_META]
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        meta["parameters"] = {"client_id": form.get("client_id"), "scope": form.get("scope"),
                              "grant_type": form.get("grant_type")}
        try:
            issued = entra.issue_token(
                self.tenant, self.creds, self.mint, request.match_info["tenant"], form,
                request.headers.get("Authorization"), self._bases(),
            )
        except entra.EntraError as exc:
            meta["parameters"]["error"] = f"AADSTS{exc.code}"
            body = exc.body(self._base(request), meta["client_request_id"] or str(uuid.uuid4()))
            return _json(body, exc.status, {"Cache-Control": "no-store"}, "application/json; charset=utf-8")
        meta["app_id"] = issued.client_id
        meta["parameters"].update(client_id=issued.client_id, grant=issued.grant, resource=issued.resource)
        if issued.assertion:
            meta["parameters"]["assertion"] = issued.assertion
        return _json(issued.body, 200, {"Cache-Control": "no-store"}, "application/json; charset=utf-8")

    # --- Graph --------------------------------------------------------------------------------

    async def _graph(self, request: web.Request) -> web.Response:
        meta = request[_META]
        rid, crid = meta["request_id"], meta["client_request_id"] or meta["request_id"]
        segs = graph.split_path(request.rel_url.raw_path[len("/graph"):])
        try:
            claims = self.mint.validate(request.headers.get("Authorization"), GRAPH_AUDIENCES)
        except TokenProblem as p:
            err = graph.error_body("InvalidAuthenticationToken", p.message, rid, crid)
            return _json(err, 401, {"WWW-Authenticate": _GRAPH_WWW_AUTH})
        meta["app_id"] = claims.get("appid")
        ctx = graph.Ctx(
            self.tenant, claims, f"{self._base(request)}/graph", rid, crid,
            rbac=lambda app_id, mbx: mail_rbac(self.tenant, self.prop, app_id, mbx),
            record_sent=lambda mbx, msg: self._record_graph_mail(claims, mbx, msg),
            body=await request.read() if request.method == "POST" else b"",
        )
        body: dict[str, Any] | None
        if len(segs) == 2 and segs[1] == "$batch" and request.method == "POST":
            raw = await request.read()

            def log_item(item_id: str, method: str, url: str, status: int, throttled: bool) -> None:
                self._log({
                    "time": _now_iso(), "service": "graph", "method": method, "path": url, "query": "",
                    "cmdlet": None, "parameters": None, "identity": None, "status": status,
                    "applied": False, "write": False, "fault": "throttled" if throttled else None,
                    "app_id": meta["app_id"], "request_id": rid, "client_request_id": meta["client_request_id"],
                    "batch": {"request_id": rid, "id": item_id},
                })

            status, body, headers = await self._batch(ctx, segs[0], raw, str(meta["app_id"] or ""), log_item)
        else:
            status, body, headers = graph.dispatch(ctx, request.method, segs, dict(request.query))
        if body is None:
            return web.Response(status=status, headers=headers)  # 202 from sendMail: no body at all
        return _json(body, status, headers)

    async def _batch(self, ctx: graph.Ctx, version: str, raw: bytes, app_id: str,
                     log_item: Callable[[str, str, str, int, bool], None]) -> graph.Response:
        """A ``$batch``, with the Outlook limit: the batch holds up to four Outlook slots of its app
        (fewer when other requests of the app are in flight) for one latency per wave of four."""
        n = graph.outlook_items(raw) if self.outlook.limit else 0
        if not n:
            return graph.batch(ctx, version, raw, lambda: self.faults.take("graph"), self.faults.rng, log_item)
        waves = -(-n // graph.OUTLOOK_BATCH_WAVE)
        slots = min(graph.OUTLOOK_BATCH_WAVE, n, self.outlook.free(app_id))
        self.outlook.take(app_id, slots)
        try:
            answer = graph.batch(ctx, version, raw, lambda: self.faults.take("graph"), self.faults.rng, log_item,
                                 outlook_slots=slots)
            hold = sum(self.faults.latency() for _ in range(waves))
            if hold and slots:
                await asyncio.sleep(hold)
            return answer
        finally:
            self.outlook.give(app_id, slots)

    def _record_graph_mail(self, claims: dict[str, Any], mbx: Recipient, msg: dict[str, Any]) -> None:
        self.mail.sent.append(SentMail("graph", mbx.mail, msg["to"], msg["subject"],
                                       f"app {claims.get('appid')}", str(claims.get("appid") or ""), mbx.mail))

    # --- EWS ----------------------------------------------------------------------------------

    async def _ews(self, request: web.Request) -> web.Response:
        meta = request[_META]
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        reply = ews.handle(self.mail, request.headers, await request.read())
        meta["parameters"] = reply.log or None
        meta["app_id"] = reply.log.get("app_id")
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    # --- Exchange -----------------------------------------------------------------------------

    def _exo_401(self, reason: str, error: bool = True) -> web.Response:
        www = _EXO_WWW_AUTH + (', error="invalid_token"' if error else "")
        return web.Response(
            status=401,
            headers={
                "WWW-Authenticate": www,
                "x-ms-diagnostics": f'2000001;reason="{reason}";error_category="invalid_token"',
            },
        )

    async def _exchange(self, request: web.Request) -> web.Response:
        meta = request[_META]
        segs = graph.split_path(request.rel_url.raw_path[len("/exchange"):])
        if (
            len(segs) == 4 and segs[0].lower() == "adminapi" and segs[1].lower() == "v1.0"
            and segs[3].lower() == "exomodulefile" and request.method == "GET"
        ):
            return await self._exo_module_file(request, segs[2])
        if (
            len(segs) != 4 or segs[0].lower() != "adminapi" or segs[1].lower() not in ("beta", "v1.0")
            or segs[3].lower() != "invokecommand"
        ):
            return _json({"error": {"code": "NotFound", "message": "The requested resource was not found."}}, 404)
        if request.method != "POST":
            body = {"error": {"code": "MethodNotAllowed",
                              "message": f"The requested resource does not support http method '{request.method}'."}}
            return _json(body, 405, {"Allow": "POST"})
        if not self.tenant.is_tenant(segs[2]):
            return _json(_exo_envelope({"error": {"code": "NotFound", "message": f"Tenant '{segs[2]}' was not found."}}), 404)
        try:
            claims = self.mint.validate(request.headers.get("Authorization"), EXCHANGE_AUDIENCES)
        except TokenProblem as p:
            return self._exo_401(p.message, error=p.kind != "missing")
        meta["app_id"] = claims.get("appid")
        if "Exchange.ManageAsApp" not in (claims.get("roles") or []):
            return self._exo_401("The token does not carry the Exchange.ManageAsApp application role.")
        levels: frozenset[str] = frozenset()
        for wid in claims.get("wids") or []:
            levels |= _LEVELS.get(wid, frozenset())
        if not levels:
            # Live Exchange answers this case with a body of NUL bytes, not JSON; the reason is
            # only in x-ms-diagnostics (reference §3). Clients must not try to parse the body.
            return web.Response(
                status=403, body=b"\x00" * 64,
                headers={
                    "x-ms-diagnostics": '2000008;reason="The application does not have a directory role '
                    'that permits this operation.";error_category="insufficient_role"',
                },
            )
        try:
            payload = json.loads(await request.read() or b"null")
            cmdlet_input = payload["CmdletInput"]
            name = cmdlet_input["CmdletName"]
            params = cmdlet_input.get("Parameters")
            params = {} if params is None else params
            if not isinstance(name, str) or not isinstance(params, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            body = {"error": {"code": "BadRequest", "message": 'The body must be {"CmdletInput":{"CmdletName":'
                              '"...","Parameters":{...}}}.'}}
            return _json(_exo_envelope(body), 400)
        input_hash = _hash_input(cmdlet_input)
        start, emitted = 0, 0
        skiptoken = request.query.get("$skiptoken")
        if skiptoken is not None:
            try:
                tok = json.loads(b64url_decode(skiptoken))
                start, emitted, token_hash, issued = int(tok["p"]), int(tok["e"]), str(tok["h"]), float(tok["t"])
            except (ValueError, KeyError, TypeError):
                return _json(_exo_envelope({"error": {"code": "BadRequest", "message": "The skip token is not valid."}}), 400)
            if token_hash != input_hash:
                msg = "The skip token does not belong to this request: re-POST the same body to the nextLink."
                return _json(_exo_envelope({"error": {"code": "BadRequest", "message": msg}}), 400)
            if time.time() - issued > SKIPTOKEN_TTL:
                return _json(_exo_envelope({"error": {"code": "BadRequest", "message": "The skip token has expired."}}), 400)
        try:
            if skiptoken is not None and exchange.lookup(name)[1].write:
                return _json(_exo_envelope({"error": {"code": "BadRequest", "message": "Writes do not page."}}), 400)
            caller = self.tenant.find_app(str(claims.get("appid")))
            result = exchange.execute(
                self.tenant, name, params, levels, caller.display_name if caller else str(claims.get("appid"))
            )
        except exchange.CmdletError as exc:
            return _json(exc.body(), exc.status)
        if result.applied:
            meta["applied"] = True
            # The admin side sees it now; the mail protocols once it has propagated.
            on_mailbox = meta.get("cmdlet") in _MAILBOX_GRANT_CMDLETS and isinstance(params.get("Identity"), str)
            self._grants_changed(params["Identity"] if on_mailbox else None)
            self._save()
        page_size = self.cfg.page_size
        prefer = request.headers.get("Prefer", "") + "," + request.headers.get("X-Prefer", "")
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        if m and int(m.group(1)) > 0:
            page_size = min(page_size, int(m.group(1)))
        warnings = list(result.warnings)
        size = page_size if result.result_size is None else max(0, min(page_size, result.result_size - emitted))
        rows, nxt = result.pager().page(start, size) if size else ([], None)
        if result.result_size is not None and emitted + len(rows) >= result.result_size and nxt is not None:
            warnings.append(exchange.TRUNCATION_WARNING)
            nxt = None
        select = [p for p in request.query.get("$select", "").split(",") if p.strip()]
        base = f"{self._base(request)}/exchange/adminapi/{segs[1]}/{segs[2]}"
        out: dict[str, Any] = {
            "@odata.context": f"{base}/$metadata#Collection(Exchange.GenericHashTable)",
            "adminapi.warnings@odata.type": _COLLECTION,
            "@adminapi.warnings": warnings,
            "value": [exchange.select(row, select) for row in rows],
        }
        if nxt is not None:
            token = b64url(json.dumps({"p": nxt, "e": emitted + len(rows), "h": input_hash, "t": time.time()}).encode())
            query: dict[str, str] = {"$select": request.query["$select"]} if "$select" in request.query else {}
            out["@odata.nextLink"] = str(URL(f"{base}/InvokeCommand").with_query({**query, "$skiptoken": token}))
        return _json(out)

    async def _exo_module_file(self, request: web.Request, tenant: str) -> web.Response:
        """``GET /adminapi/v1.0/{tenant}/EXOModuleFile?Version=...`` with ``CommandName: *``: the
        cmdlets the app's roles export, as ``value[].exportedCmdlets`` (one comma-separated string).
        Undocumented; shape as CIPP's New-ExoRequest reads it (updates-2026-11.md §3). Without
        ``CommandName`` the module file itself would come back: not served (404)."""
        if not self.tenant.is_tenant(tenant):
            return _json({"error": {"code": "NotFound", "message": f"Tenant '{tenant}' was not found."}}, 404)
        try:
            claims = self.mint.validate(request.headers.get("Authorization"), EXCHANGE_AUDIENCES)
        except TokenProblem as p:
            return self._exo_401(p.message, error=p.kind != "missing")
        request[_META]["app_id"] = claims.get("appid")
        if "Exchange.ManageAsApp" not in (claims.get("roles") or []):
            return self._exo_401("The token does not carry the Exchange.ManageAsApp application role.")
        if request.headers.get("CommandName", "").strip() != "*" or not request.query.get("Version"):
            return _json({"error": {"code": "NotFound", "message": "The requested resource was not found."}}, 404)
        levels: frozenset[str] = frozenset()
        for wid in claims.get("wids") or []:
            levels |= _LEVELS.get(wid, frozenset())
        cmdlets = ",".join(exchange.exported_cmdlets(levels))
        return _json({"@odata.context": "$metadata#EXOModuleFile", "value": [{"exportedCmdlets": cmdlets}]})

    # --- control API --------------------------------------------------------------------------

    async def _c_health(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "url": self.url}, content_type="application/json")

    async def _c_state(self, request: web.Request) -> web.Response:
        return _json(self.state_json(), content_type="application/json")

    async def _c_calls(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return _json({"error": "since must be an integer"}, 400, content_type="application/json")
        calls = self.calls_json(since, request.query.get("service"))
        return _json({"calls": calls, "last_seq": self.seq}, content_type="application/json")

    async def _c_calls_reset(self, request: web.Request) -> web.Response:
        self.reset_calls()
        return _json({"ok": True}, content_type="application/json")

    async def _c_faults_list(self, request: web.Request) -> web.Response:
        return _json({"queued": [q.to_json() for q in self.faults.queue]}, content_type="application/json")

    async def _c_faults_clear(self, request: web.Request) -> web.Response:
        self.faults.queue.clear()
        return _json({"ok": True}, content_type="application/json")

    async def _c_faults_add(self, request: web.Request) -> web.Response:
        try:
            spec = json.loads(await request.read() or b"null")
            specs = spec if isinstance(spec, list) else [spec]
            for s in specs:  # all or nothing: check every spec before queueing any
                parse_fault(s)
            queued = [self.queue_fault(s) for s in specs]
        except ValueError as exc:
            return _json({"error": str(exc)}, 400, content_type="application/json")
        return _json({"queued": queued}, 201, content_type="application/json")

    async def _c_sent(self, request: web.Request) -> web.Response:
        return _json({"sent": self.sent_json(), "propagation": self.propagation_json()},
                     content_type="application/json")

    async def _c_mutate(self, request: web.Request) -> web.Response:
        try:
            op = json.loads(await request.read() or b"null")
            result = self.apply_mutation(op)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400, content_type="application/json")
        return _json(result, content_type="application/json")


__all__ = ["ESJ_APP_ID", "PROVISIONING_APP_ID", "SandboxServer"]
