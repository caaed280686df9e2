"""Each section of the options, probed as ESJ would, and Microsoft's answer turned into a verdict.

A check is ``ok``, ``pending`` (granted, Exchange has not applied it yet), ``failed`` or ``skipped``
(not asked, or not provable without a message). What proves what: probe-protocols.md §0. Where the
mail protocol refuses for lack of access, the probe asks Exchange (through the caller's
:class:`GrantReader`, with the provisioning app) whether the grant exists: present means Exchange
has not applied it yet (up to 60 minutes for Full Access and Send As, 30 minutes to 2 hours for
RBAC for Applications, §6), absent means it is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..models import AppGrant
from . import signin, wire
from .targets import INBOUND, Target

if TYPE_CHECKING:
    import ssl

    import httpx

    from ..microsoft.credentials import Token

OK, PENDING, FAILED, SKIPPED = "ok", "pending", "failed", "skipped"
STATUSES = (OK, PENDING, FAILED, SKIPPED)

EWS_END = "EWS in Exchange Online is switched off for good on 1 April 2027: move ESJ to GRAPH"
WAIT_FIX = ("nothing to change: wait (Full Access and Send As take up to 60 minutes, RBAC for Applications "
            "30 minutes to 2 hours), or run `esj-provision probe OPTIONS --wait 2h`")
SEND_NOT_PROVEN = ("sending FROM {mailbox} (Send As) is not proven: no test message was sent; "
                   "Exchange checks Send As only when a message is submitted")
GRAPH_SEND_NOT_PROVEN = "sending FROM {mailbox} is not proven: no test message was sent"


@dataclass
class Check:
    section: str
    protocol: str
    direction: str
    check: str  # what was tried: sign-in, open mailbox, authenticate, send
    status: str
    reason: str
    fix: str = ""
    mailbox: str = ""
    principal: str = ""
    answer: str = ""  # Microsoft's own words (reply line, error code), never a token

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "protocol": self.protocol,
            "direction": self.direction,
            "check": self.check,
            "status": self.status,
            "reason": self.reason,
            "fix": self.fix,
            "mailbox": self.mailbox,
            "principal": self.principal,
            "answer": self.answer,
        }


class GrantReader(Protocol):
    """What Exchange holds, read with the provisioning app. ``None``: could not be read."""

    async def full_access(self, mailbox: str, *, account: str | None, app_id: str | None) -> bool | None: ...

    async def send_as(self, mailbox: str, account: str) -> bool | None: ...

    async def app_grants(self, app_id: str, mailbox: str) -> list[AppGrant] | None: ...

    async def app_registration_problem(self, app_id: str) -> tuple[str, str] | None:
        """(what, fix) when the app's Exchange service principal carries the wrong object id: its
        grants then show in Exchange but never work, so waiting would not help."""
        ...


@dataclass
class ProbeSetup:
    """Where to connect and with which secrets, beyond what the options file says."""

    graph_endpoint: str
    default_authority: str  # the cloud's, or AZURE_AUTHORITY_HOST
    authority_override: bool  # AZURE_AUTHORITY_HOST was set: it wins over tenant-authority
    ssl_context: ssl.SSLContext
    tenant: str | None = None  # AZURE_TENANT_ID, when directory-id is a placeholder
    client_id: str | None = None  # ESJ_PROVISION_ESJ_CLIENT_ID, when client-id is a placeholder
    secret: str | None = field(default=None, repr=False)  # the ESJ app's secret
    password: str | None = field(default=None, repr=False)  # the service account's password
    send_test_to: str | None = None
    timeout: float = 30.0


def exit_status(checks: Sequence[Check]) -> int:
    """0 all passed (skipped counts as passed), 5 only grants Exchange has not applied yet, else 1."""
    statuses = {c.status for c in checks}
    if FAILED in statuses:
        return 1
    if PENDING in statuses:
        return 5
    return 0


class Prober:
    def __init__(self, setup: ProbeSetup, http: httpx.AsyncClient, grants: GrantReader | None = None) -> None:
        self.setup = setup
        self.http = http
        self.grants = grants

    async def probe_all(self, targets: Sequence[Target], concurrency: int = 4) -> list[Check]:
        """Every target, ``concurrency`` at once (Graph admits 4 concurrent mail requests per app)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(t: Target) -> list[Check]:
            async with gate:
                return await self.probe(t)

        results = await asyncio.gather(*(one(t) for t in targets))
        return [c for checks in results for c in checks]

    async def probe(self, t: Target) -> list[Check]:
        s = self.setup
        mk = _maker(t)
        client_id = t.client_id or s.client_id
        tenant = t.tenant or s.tenant
        missing: list[tuple[str, str | None]] = []
        if not client_id:
            missing.append(("client-id", "ESJ_PROVISION_ESJ_CLIENT_ID"))
        if not tenant:
            missing.append(("directory-id", "AZURE_TENANT_ID"))
        if not t.scope:
            missing.append(("scope", None))
        if t.protocol in ("imap", "smtp") and (not t.server or not t.port):
            missing.append(("server/port", None))
        if not t.app_only and not t.account:
            missing.append(("service-account" if t.direction == INBOUND else "user", None))
        secret = t.password if t.app_only else None
        secret = secret or (s.secret if t.app_only else None)
        pwd = (t.password or s.password) if not t.app_only else None
        if t.app_only and not secret:
            missing.append(("password (the ESJ app secret)", "ESJ_PROVISION_ESJ_CLIENT_SECRET or --secret-file"))
        if not t.app_only and not pwd:
            missing.append(("password (the service account's)", "ESJ_PROVISION_ESJ_PASSWORD or --password-file"))
        if missing:
            names = ", ".join(f"{t.section}/{n}" for n, _ in missing)
            envs = [e for _, e in missing if e]
            return [mk("sign-in", FAILED, f"cannot sign in as ESJ: {names} not set (placeholder or empty)",
                       "replace the placeholders in the options" + (f", or set {', '.join(envs)}" if envs else ""))]
        assert client_id and tenant and t.scope
        authority = s.default_authority if s.authority_override or not t.authority else t.authority
        if t.app_only:
            sign = await signin.client_credentials(self.http, authority, tenant, client_id, str(secret), t.scope)
        else:
            sign = await signin.password(self.http, authority, tenant, client_id, str(t.account), str(pwd), t.scope)
        if sign.failure is not None:
            f = sign.failure
            return [mk("sign-in", FAILED, f.reason, f.fix, answer=f.error + "".join(f" AADSTS{c}" for c in f.codes))]
        assert sign.token is not None
        run = {
            "imap": self._imap, "ews": self._ews, "graph": self._graph if t.direction == INBOUND else self._graph_send,
            "smtp": self._smtp,
        }[t.protocol]
        return await run(t, sign.token, client_id)

    # -- IMAP -------------------------------------------------------------------------------------

    async def _imap(self, t: Target, token: Token, client_id: str) -> list[Check]:
        mk = _maker(t)
        # user= is the shared mailbox in both modes (§1.3): app-only, and delegated to a shared mailbox.
        res = await asyncio.to_thread(
            wire.imap_examine, str(t.server), int(t.port or 993), t.mailbox, token.value,
            context=self.setup.ssl_context, timeout=self.setup.timeout,
        )
        if res.ok:
            return [mk("open mailbox", OK, f"{t.principal} signed in over IMAP and opened the INBOX of {t.mailbox} "
                       "(EXAMINE, read-only)", answer=res.answer)]
        if res.stage in ("connect", "tls"):
            return [mk("open mailbox", FAILED, res.answer, _connect_fix(t), answer=res.answer)]
        claims = token.claims()
        if t.app_only and "IMAP.AccessAsApp" not in _roles(claims):
            return [mk("open mailbox", FAILED, f"IMAP refused the ESJ app ({res.answer}): its token has no "
                       "IMAP.AccessAsApp application permission", f"grant the ESJ app {client_id} the Office 365 "
                       "Exchange Online application permission IMAP.AccessAsApp, with admin consent",
                       answer=res.answer)]
        if not t.app_only and "IMAP.AccessAsUser.All" not in _scopes(claims) and res.stage == "auth":
            return [mk("open mailbox", FAILED, f"IMAP refused the token of {t.account} ({res.answer}): it has no "
                       "IMAP.AccessAsUser.All delegated permission", "consent to IMAP.AccessAsUser.All for the ESJ "
                       "app and check the options' scope", answer=res.answer)]
        return [await self._access_verdict(t, client_id, "open mailbox", f"IMAP refused to open {t.mailbox} "
                                           f"({res.answer})", res.answer)]

    # -- SMTP -------------------------------------------------------------------------------------

    async def _smtp(self, t: Target, token: Token, client_id: str) -> list[Check]:
        mk = _maker(t)
        # Delegated: user= is the account itself, not the shared mailbox (§2.2: otherwise 535 5.7.3);
        # app-only: user= is the mailbox being sent from.
        user = t.mailbox if t.app_only else str(t.account)
        to = self.setup.send_test_to
        msg = wire.probe_message(t.mailbox, to) if to else None
        res = await asyncio.to_thread(
            wire.smtp_session, str(t.server), int(t.port or 587), user, token.value, mail_from=t.mailbox,
            rcpt_to=to or t.mailbox, context=self.setup.ssl_context, timeout=self.setup.timeout, message=msg,
        )
        if res.stage in ("connect", "tls"):
            return [mk("authenticate", FAILED, res.answer, _connect_fix(t), answer=res.answer)]
        if res.stage == "auth":
            return [await self._smtp_auth_failure(t, client_id, user, res, token.claims())]
        if res.stage in ("mail", "rcpt"):
            return [mk("authenticate", FAILED, f"SMTP refused the envelope ({res.answer})",
                       "check the shared mailbox address and the recipient", answer=res.answer)]
        auth = mk("authenticate", OK, f"{t.principal} passed SMTP AUTH XOAUTH2 as {user} over STARTTLS, and "
                  f"MAIL FROM:<{t.mailbox}> was accepted", answer=res.answer if msg is None else "")
        if msg is None:
            return [auth, await self._send_as_unproven(t)]
        if res.ok:
            return [auth, mk("send", OK, f"a test message FROM {t.mailbox} to {to} was accepted over SMTP: Send As "
                             "works", answer=res.answer)]
        # Send As refused at submission: 554 5.2.252 SendAsDenied or 550 5.7.60, after DATA (§2.3, §2.5).
        if "5.2.252" in res.answer or "SendAsDenied" in res.answer or "5.7.60" in res.answer:
            return [auth, await self._send_as_verdict(t, client_id, res.answer)]
        return [auth, mk("send", FAILED, f"the test message was refused ({res.answer})",
                         "see Microsoft's reply", answer=res.answer)]

    async def _smtp_auth_failure(
        self, t: Target, client_id: str, user: str, res: wire.WireResult, claims: dict[str, Any]
    ) -> Check:
        mk = _maker(t)
        text = res.answer
        # 535 5.7.139 names the switch: "... disabled for the Tenant." or "... for the Mailbox." (§2.3).
        if "5.7.139" in text:
            if "Tenant" in text:
                return mk("authenticate", FAILED, f"SMTP AUTH is disabled for the organisation, and {user} does not "
                          f"override it ({text})", f"Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled "
                          "$false (this mailbox only), or Set-TransportConfig -SmtpClientAuthenticationDisabled "
                          "$false (the whole organisation)", answer=text)
            if "Mailbox" in text:
                return mk("authenticate", FAILED, f"SMTP AUTH is disabled for the mailbox {user} ({text})",
                          f"Set-CASMailbox -Identity {user} -SmtpClientAuthenticationDisabled $false "
                          "($null follows the organisation's setting)", answer=text)
            return mk("authenticate", FAILED, f"the sign-in was blocked by Conditional Access or security defaults "
                      f"({text})", f"exclude {t.principal} from the blocking policy", answer=text)
        if not t.app_only:
            if "SMTP.Send" not in _scopes(claims):
                return mk("authenticate", FAILED, f"SMTP refused the token of {t.account} ({text}): it has no SMTP.Send "
                          "delegated permission", "consent to SMTP.Send for the ESJ app and check the options' scope",
                          answer=text)
            return mk("authenticate", FAILED, f"SMTP refused the token of {t.account} ({text})",
                      f"check that {t.account} may use SMTP.Send and that smtp-client/user is the account itself",
                      answer=text)
        refused = f"SMTP refused the ESJ app as {t.mailbox} ({text})"
        if "SMTP.SendAsApp" not in _roles(claims):
            # Then only RBAC for Applications can authorise it (SMTP-RBAC): in scope means not applied yet.
            grants = await self.grants.app_grants(client_id, t.mailbox) if self.grants else None
            if grants and any(g.in_scope and "SMTP.SendAsApp" in g.permissions for g in grants):
                return mk("authenticate", PENDING, f"{refused}: RBAC for Applications grants SMTP.SendAsApp on it, "
                          "Exchange has not applied it yet", WAIT_FIX, answer=text)
            return mk("authenticate", FAILED, f"{refused}: the ESJ app has no SMTP.SendAsApp, neither as an "
                      "application permission nor through RBAC for Applications covering the mailbox",
                      f"grant the ESJ app {client_id} SMTP.SendAsApp (Office 365 Exchange Online, admin consent) and "
                      f"Full Access for its service principal (esj-provision onboard {t.mailbox} --trustee-app "
                      f"{client_id} ...), or the RBAC role Application SMTP.SendAsApp scoped to the mailbox",
                      answer=text)
        return await self._access_verdict(t, client_id, "authenticate", refused, text)

    async def _send_as_unproven(self, t: Target) -> Check:
        mk = _maker(t)
        reason = SEND_NOT_PROVEN.format(mailbox=t.mailbox)
        fix = "to prove it, run again with --send-test-to ADDRESS (one real message FROM the shared mailbox)"
        if self.setup.send_test_to and t.protocol == "ews":
            # EWS CreateItem is not implemented: EWS ends on 1 April 2027, and no stand-in serves it here.
            reason += " (--send-test-to sends over SMTP and GRAPH only, not over EWS)"
            fix = EWS_END
        if t.app_only or self.grants is None or not t.account:
            return mk("send", SKIPPED, reason, fix)
        held = await self.grants.send_as(t.mailbox, t.account)
        if held is False:
            return mk("send", FAILED, f"{t.account} has no Send As on {t.mailbox}: Exchange will refuse ESJ's "
                      "messages FROM it (554 5.2.252 SendAsDenied)", f"esj-provision onboard {t.mailbox} --trustee "
                      f"{t.account} ... (grants Send As), or Add-RecipientPermission -Identity {t.mailbox} -Trustee "
                      f"{t.account} -AccessRights SendAs")
        if held:
            reason += f"; Exchange shows Send As for {t.account} (read with the provisioning app)"
        return mk("send", SKIPPED, reason, fix)

    async def _send_as_verdict(self, t: Target, client_id: str, answer: str) -> Check:
        mk = _maker(t)
        who = t.account or f"the ESJ app {client_id}"
        held = await self.grants.send_as(t.mailbox, t.account) if self.grants and t.account else None
        if held:
            return mk("send", PENDING, f"Send As for {who} on {t.mailbox} is granted, Exchange has not applied it "
                      f"yet ({answer})", WAIT_FIX, answer=answer)
        grant = (f"esj-provision onboard {t.mailbox} --trustee {who} ..., or Add-RecipientPermission -Identity "
                 f"{t.mailbox} -Trustee {who} -AccessRights SendAs")
        if held is False:
            return mk("send", FAILED, f"no Send As for {who} on {t.mailbox} ({answer})", grant, answer=answer)
        return mk("send", FAILED, f"Exchange refused to send FROM {t.mailbox} as {who} ({answer}): Send As is "
                  "missing, or granted and not applied yet (configure the provisioning app to tell which)",
                  grant, answer=answer)

    # -- EWS --------------------------------------------------------------------------------------

    async def _ews(self, t: Target, token: Token, client_id: str) -> list[Check]:
        mk = _maker(t)
        url = t.server or ""
        if not url.startswith("https://") and not url.startswith("http://"):
            return [mk("open mailbox", FAILED, f"{t.section}/server={url!r} is not the EWS URL",
                       "set server to https://outlook.office365.com/EWS/Exchange.asmx")]
        res = await wire.ews_get_folder(self.http, url, t.mailbox, token.value, impersonate=t.app_only)
        tail = "" if t.direction == INBOUND else "; nothing was sent"
        if res.ok:
            return [mk("open mailbox", OK, f"{t.principal} opened the Inbox of {t.mailbox} over EWS (GetFolder"
                       f"{', impersonation' if t.app_only else ', as a delegate'}){tail}", answer=res.answer),
                    *([] if t.direction == INBOUND else [await self._send_as_unproven(t)])]
        return [await self._ews_failure(t, client_id, res)]

    async def _ews_failure(self, t: Target, client_id: str, res: wire.WireResult) -> Check:
        mk = _maker(t)
        policy = res.headers.get("x-ews-policy-reason")
        if res.stage == "connect":
            return mk("open mailbox", FAILED, res.answer, _connect_fix(t), answer=res.answer)
        if res.code == 403 and policy:
            # Read the header, not the body (EWS-CTRL): it is what tells this 403 from other policies.
            return mk("open mailbox", FAILED, f"EWS is blocked by the organisation's policy ({policy})",
                      f"Set-OrganizationConfig -EwsEnabled $true, and add the ESJ app {client_id} to "
                      "-EwsAllowedAppIDs (the list is overwritten: include the ids already there); it takes up to "
                      f"24 hours. {EWS_END}", answer=f"HTTP 403 X-EWS-Policy-Reason: {policy}")
        if res.code == 403:
            return mk("open mailbox", FAILED, f"EWS refused {t.principal} with HTTP 403 and no policy header: an "
                      "application access policy or an RBAC scope excludes the mailbox", "check "
                      "Test-ApplicationAccessPolicy / Test-ServicePrincipalAuthorization for the ESJ app",
                      answer=res.answer)
        if res.code == 401:
            diag = res.headers.get("x-ms-diagnostics", "")
            return mk("open mailbox", FAILED, f"EWS rejected the token ({diag or res.answer})",
                      "check the options' scope (the token's audience must be Exchange Online)",
                      answer=f"HTTP 401 {diag}".strip())
        code = res.fields.get("faultcode", "") + res.fields.get("ResponseCode", "")
        if "ErrorNonExistentMailbox" in code:
            return mk("open mailbox", FAILED, f"{t.mailbox} has no mailbox ({res.answer})",
                      "check the mailbox address in the options", answer=res.answer)
        if t.app_only and ("ErrorImpersonateUserDenied" in code or "ErrorAccessDenied" in code):
            return await self._ews_app_verdict(t, client_id, res)
        if "ErrorImpersonateUserDenied" in code or "ErrorAccessDenied" in code:
            return await self._access_verdict(t, client_id, "open mailbox", f"EWS refused to open {t.mailbox} "
                                              f"({res.answer})", res.answer)
        return mk("open mailbox", FAILED, f"EWS answered {res.answer}", "see Microsoft's answer", answer=res.answer)

    async def _ews_app_verdict(self, t: Target, client_id: str, res: wire.WireResult) -> Check:
        """App-only EWS is authorised by the application permission full_access_as_app, or by RBAC
        for Applications (Application EWS.AccessAsApp) in scope (§4): not by Full Access."""
        mk = _maker(t)
        refused = f"EWS refused the ESJ app access to {t.mailbox} ({res.answer})"
        grants = await self.grants.app_grants(client_id, t.mailbox) if self.grants else None
        scoped = [g for g in grants or [] if "EWS.AccessAsApp" in g.permissions]
        if any(g.in_scope for g in scoped):
            return mk("open mailbox", PENDING, f"{refused}: RBAC for Applications grants EWS.AccessAsApp on it, "
                      "Exchange has not applied it yet", WAIT_FIX, answer=res.answer)
        if scoped:
            return mk("open mailbox", FAILED, f"{refused}: the mailbox is outside the RBAC scope of the ESJ app's "
                      "EWS.AccessAsApp", f"add {t.mailbox} to the management scope of that role assignment",
                      answer=res.answer)
        return mk("open mailbox", FAILED, f"{refused}: the ESJ app {client_id} has neither the application permission "
                  "full_access_as_app nor an RBAC Application EWS.AccessAsApp role covering the mailbox",
                  "grant the ESJ app full_access_as_app (Office 365 Exchange Online, admin consent), or "
                  f"New-ManagementRoleAssignment -App <its service principal> -Role 'Application EWS.AccessAsApp' "
                  f"-CustomResourceScope <a scope holding {t.mailbox}>. " + EWS_END, answer=res.answer)

    # -- Graph ------------------------------------------------------------------------------------

    def _graph_url(self, mailbox: str, tail: str) -> str:
        from urllib.parse import quote

        return f"{self.setup.graph_endpoint.rstrip('/')}/v1.0/users/{quote(mailbox, safe='@')}/{tail}"

    async def _graph(self, t: Target, token: Token, client_id: str) -> list[Check]:
        mk = _maker(t)
        url = self._graph_url(t.mailbox, "mailFolders/inbox?$select=displayName,totalItemCount")
        res = await wire.graph_request(self.http, "GET", url, token.value)
        if res.ok:
            return [mk("open mailbox", OK, f"the ESJ app {client_id} read the Inbox of {t.mailbox} through Graph",
                       answer=res.answer)]
        return [await self._graph_failure(t, client_id, res, {"Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic"},
                                          token, "open mailbox")]

    async def _graph_send(self, t: Target, token: Token, client_id: str) -> list[Check]:
        mk = _maker(t)
        to = self.setup.send_test_to
        if to:
            body = {"message": {"subject": "esj-provision probe: test message",
                                "body": {"contentType": "Text", "content": "Sent by esj-provision probe "
                                         f"--send-test-to to prove ESJ can send FROM {t.mailbox}."},
                                "toRecipients": [{"emailAddress": {"address": to}}]},
                    "saveToSentItems": False}
            res = await wire.graph_request(self.http, "POST", self._graph_url(t.mailbox, "sendMail"), token.value, body)
            if res.ok:
                return [mk("send", OK, f"Graph accepted a test message FROM {t.mailbox} to {to} (202: accepted for "
                           "delivery, not yet delivered)", answer=res.answer)]
            return [await self._graph_failure(t, client_id, res, {"Mail.Send"}, token, "send")]
        roles = _roles(token.claims())
        if "Mail.Send" in roles:
            return [mk("send permission", OK, f"the ESJ app {client_id}'s token carries Mail.Send (unscoped: any "
                       "mailbox)", answer="roles: " + " ".join(sorted(roles))),
                    mk("send", SKIPPED, GRAPH_SEND_NOT_PROVEN.format(mailbox=t.mailbox),
                       "to prove it, run again with --send-test-to ADDRESS")]
        grants = await self.grants.app_grants(client_id, t.mailbox) if self.grants else None
        if grants is None:
            return [mk("send permission", SKIPPED, "the ESJ app's token carries no Mail.Send; an RBAC for "
                       "Applications grant (not in the token) cannot be checked without the provisioning app",
                       "configure the provisioning app (AZURE_*), or run with --send-test-to ADDRESS")]
        scoped = [g for g in grants if "Mail.Send" in g.permissions]
        if any(g.in_scope for g in scoped):
            return [mk("send permission", OK, f"RBAC for Applications gives the ESJ app Mail.Send on {t.mailbox} "
                       "(Test-ServicePrincipalAuthorization; a new assignment may take 30 minutes to 2 hours to "
                       "reach Graph)", answer="InScope: True"),
                    mk("send", SKIPPED, GRAPH_SEND_NOT_PROVEN.format(mailbox=t.mailbox),
                       "to prove it, run again with --send-test-to ADDRESS")]
        if scoped:
            return [mk("send permission", FAILED, f"{t.mailbox} is outside the RBAC scope of the ESJ app's Mail.Send "
                       f"({', '.join(g.role for g in scoped)})", f"esj-provision onboard {t.mailbox} ... "
                       f"--scope-esj-app {client_id} (adds it to the scope)", answer="InScope: False")]
        return [mk("send permission", FAILED, f"the ESJ app {client_id} has no Mail.Send: neither in its token nor "
                   "through RBAC for Applications", f"grant Mail.Send (application) with admin consent, or esj-provision "
                   f"onboard {t.mailbox} ... --scope-esj-app {client_id}")]

    async def _graph_failure(
        self, t: Target, client_id: str, res: wire.WireResult, wanted: set[str], token: Token, check: str
    ) -> Check:
        mk = _maker(t)
        code = res.fields.get("code", "")
        if res.stage == "connect":
            return mk(check, FAILED, res.answer, "check ESJ_PROVISION_GRAPH_ENDPOINT and the network",
                      answer=res.answer)
        if res.code == 404 or code in ("MailboxNotEnabledForRESTAPI", "ErrorNonExistentMailbox", "ResourceNotFound"):
            return mk(check, FAILED, f"Graph cannot reach the mailbox {t.mailbox} ({res.answer})", "check the address; "
                      "an inactive, unlicensed or on-premises mailbox has no Graph access", answer=res.answer)
        if res.code == 401:
            return mk(check, FAILED, f"Graph rejected the ESJ app's token ({res.answer})", "check the options' "
                      "scope (https://graph.microsoft.com/.default)", answer=res.answer)
        if code != "ErrorAccessDenied" and res.code != 403:
            return mk(check, FAILED, f"Graph answered {res.answer}", "see Microsoft's answer", answer=res.answer)
        roles = _roles(token.claims())
        need = "/".join(sorted(wanted))
        if roles & wanted:
            return mk(check, FAILED, f"Graph denied {t.mailbox} although the token carries {need} ({res.answer}): an "
                      "application access policy excludes the mailbox", f"Test-ApplicationAccessPolicy -Identity "
                      f"{t.mailbox} -AppId {client_id}", answer=res.answer)
        grants = await self.grants.app_grants(client_id, t.mailbox) if self.grants else None
        if grants is None:
            return mk(check, FAILED, f"Graph denied {t.mailbox} to the ESJ app ({res.answer}): it has no {need} "
                      "permission, or the mailbox is outside its RBAC scope", f"grant {need} (application), or "
                      f"esj-provision onboard {t.mailbox} ... --scope-esj-app {client_id}", answer=res.answer)
        scoped = [g for g in grants if g.permissions & wanted]
        if any(g.in_scope for g in scoped):
            return mk(check, PENDING, f"RBAC for Applications grants the ESJ app {need} on {t.mailbox}, Exchange has "
                      f"not applied it yet ({res.answer})", WAIT_FIX, answer=res.answer)
        if scoped:
            return mk(check, FAILED, f"{t.mailbox} is outside the RBAC scope of the ESJ app's {need} "
                      f"({', '.join(g.role for g in scoped)})", f"esj-provision onboard {t.mailbox} ... "
                      f"--scope-esj-app {client_id} (adds it to the scope)", answer=res.answer)
        return mk(check, FAILED, f"the ESJ app {client_id} has no {need} permission ({res.answer})",
                  f"grant {need} (application) with admin consent, or esj-provision onboard {t.mailbox} ... "
                  f"--scope-esj-app {client_id}", answer=res.answer)

    # -- the grant behind a refusal ---------------------------------------------------------------

    async def _access_verdict(self, t: Target, client_id: str, check: str, refused: str, answer: str) -> Check:
        """A refusal for lack of access: pending when Exchange already holds the grant, failed when not."""
        mk = _maker(t)
        who = t.account if not t.app_only else f"the ESJ app {client_id}"
        grant_fix = (f"esj-provision onboard {t.mailbox} --trustee {t.account} ..." if not t.app_only else
                     f"esj-provision onboard {t.mailbox} --trustee-app {client_id} ... (registers its Exchange "
                     "service principal and gives it Full Access)")
        if self.grants is None:
            return mk(check, FAILED, f"{refused}: {who} has no Full Access on {t.mailbox}, or it was granted and "
                      "Exchange has not applied it yet (configure the provisioning app to tell which)",
                      grant_fix, answer=answer)
        if t.app_only:
            problem = await self.grants.app_registration_problem(client_id)
            if problem is not None:
                return mk(check, FAILED, f"{refused}: {problem[0]}", problem[1], answer=answer)
        held = await self.grants.full_access(
            t.mailbox, account=None if t.app_only else t.account, app_id=client_id if t.app_only else None
        )
        if held:
            return mk(check, PENDING, f"{refused}: Full Access for {who} is granted, Exchange has not applied it "
                      "yet", WAIT_FIX, answer=answer)
        if held is None:
            return mk(check, FAILED, f"{refused}: could not read whether {who} has Full Access on {t.mailbox}",
                      grant_fix, answer=answer)
        return mk(check, FAILED, f"{refused}: no Full Access for {who} on {t.mailbox}", grant_fix, answer=answer)


# -- --wait ------------------------------------------------------------------------------------------


async def probe_until(
    prober: Prober,
    targets: Sequence[Target],
    wait_s: float,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[Any]],
    on_wait: Callable[[list[Check], float], None] = lambda pending, delay: None,
    first_delay: float = 2.0,
    max_delay: float = 120.0,
) -> list[Check]:
    """Probe, then retry the sections still pending with backoff (a fresh sign-in each time) until
    they pass or ``wait_s`` runs out. Sections that failed are not retried: waiting won't fix them."""
    checks = await prober.probe_all(targets)
    deadline = clock() + wait_s
    delay = first_delay
    while True:
        pending = [c for c in checks if c.status == PENDING]
        left = deadline - clock()
        if not pending or left <= 0:
            return checks
        pause = min(delay, left)
        on_wait(pending, pause)
        await sleep(pause)
        delay = min(delay * 2, max_delay)
        again = {c.section for c in pending}
        fresh = await prober.probe_all([t for t in targets if t.section in again])
        by_section: dict[str, list[Check]] = {}
        for c in fresh:
            by_section.setdefault(c.section, []).append(c)
        merged: list[Check] = []
        done: set[str] = set()
        for c in checks:
            if c.section in by_section:
                if c.section not in done:
                    merged.extend(by_section[c.section])
                    done.add(c.section)
            else:
                merged.append(c)
        checks = merged


# -- helpers -----------------------------------------------------------------------------------------


def _maker(t: Target) -> Callable[..., Check]:
    def mk(check: str, status: str, reason: str, fix: str = "", answer: str = "") -> Check:
        return Check(t.section, t.protocol, t.direction, check, status, reason, fix, t.mailbox, t.principal, answer)

    return mk


def _roles(claims: dict[str, Any]) -> set[str]:
    roles = claims.get("roles") or []
    return {str(r) for r in roles} if isinstance(roles, list) else set()


def _scopes(claims: dict[str, Any]) -> set[str]:
    return set(str(claims.get("scp") or "").split())


def _connect_fix(t: Target) -> str:
    return (f"check {t.section}/server and port, the network, and ESJ_PROVISION_CA_BUNDLE when a private CA "
            "signs the server's certificate")
