"""EWS ``GetFolder`` as Exchange Online answers it in late 2026: the organisation's EWS policy
(HTTP 403 with ``X-EWS-Policy-Reason``), app-only impersonation and delegated access, and the
error shapes of probe-protocols.md §4 (HTTP 200 with ResponseClass Error, SOAP faults with 500,
401 with ``x-ms-diagnostics``).

A pure function of the request; the HTTPS server routes ``POST /EWS/Exchange.asmx`` here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from .mail import Caller, MailContext, caller, full_access, rbac, same_mailbox
from .tenant import Recipient
from .tokens import TokenProblem

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"
MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages"
ERRORS = "http://schemas.microsoft.com/exchange/services/2006/errors"
XML = "text/xml; charset=utf-8"

# ✅ EWS-CTRL ("Control access to EWS in Exchange", 2025-04 revision): the only two header values.
EWS_DISABLED = "EWS is disabled for this user or tenant"
EWS_BLOCKED = "EWS is blocked by policy for this user or tenant"
ACCESS_DENIED = "Access is denied. Check credentials and try again."  # 🔶 EWSJ-598
NO_MAILBOX = "The SMTP address has no mailbox associated with it."  # 🔶
IMPERSONATE_DENIED = "The account does not have permission to impersonate the requested user."  # 🔶 EWSMA-223
HEADER_REQUIRED = "ExchangeImpersonation SOAP header must be present for this type of OAuth token."  # 🔶 EWSMA-245
HEADER_FORBIDDEN = "ExchangeImpersonation SOAP header must not exist for this type of OAuth token."  # 🔶 EWSMA-212
WWW_AUTH = (
    'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
    'trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
    'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"'
)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)  # for the call log: never a token


def _envelope(body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}"><s:Header>'
        f'<h:ServerVersionInfo MajorVersion="15" MinorVersion="20" MajorBuildNumber="8293" MinorBuildNumber="23" '
        f'Version="V2018_01_08" xmlns:h="{TYPES}" xmlns="{TYPES}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault(code: str, message: str, why: str) -> Reply:
    """A SOAP fault with HTTP 500, as EWS sends for impersonation and token-type errors (🔶 EWSMA-223)."""
    body = (
        f'<s:Fault><faultcode xmlns:a="{TYPES}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(message)}</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="{ERRORS}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{ERRORS}">{escape(message)}</e:Message></detail></s:Fault>'
    )
    return Reply(500, _envelope(body), {"Content-Type": XML}, {"result": code, "why": why})


def _response(message: str) -> str:
    return (
        f'<m:GetFolderResponse xmlns:m="{MESSAGES}" xmlns:t="{TYPES}"><m:ResponseMessages>'
        f"{message}</m:ResponseMessages></m:GetFolderResponse>"
    )


def error(code: str, text: str, why: str) -> Reply:
    """An error inside HTTP 200 (✅ EWS-GETFOLDER): the probe must read ResponseClass, not the status."""
    msg = (
        f'<m:GetFolderResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Folders/>"
        "</m:GetFolderResponseMessage>"
    )
    return Reply(200, _envelope(_response(msg)), {"Content-Type": XML}, {"result": code, "why": why})


def success(mbx: Recipient) -> Reply:
    folder_id = f"AAMkAD{mbx.id.replace('-', '')}AAAAAAEMAAA="
    msg = (
        '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>'
        f'<t:Folder><t:FolderId Id="{folder_id}" ChangeKey="AQAAABYAAAA="/><t:DisplayName>Inbox</t:DisplayName>'
        "<t:TotalCount>0</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount>"
        "</t:Folder></m:Folders></m:GetFolderResponseMessage>"
    )
    return Reply(200, _envelope(_response(msg)), {"Content-Type": XML}, {"result": "NoError", "mailbox": mbx.mail})


def unauthorized(problem: TokenProblem) -> Reply:
    """401 with the reason in x-ms-diagnostics (🔶 PB-CODE-XMS for the audience case)."""
    if problem.kind == "audience":
        diag = "2000003;reason=\"The audience claim value is invalid 'aud'.\";error_category=\"invalid_resource\""
    else:
        diag = f'2000001;reason="{problem.message}";error_category="invalid_token"'
    www = WWW_AUTH + (', error="invalid_token"' if problem.kind != "missing" else "")
    return Reply(401, b"", {"WWW-Authenticate": www, "x-ms-diagnostics": diag}, {"result": f"401 {problem.kind}"})


def policy_block(reason: str, why: str) -> Reply:
    return Reply(403, b"", {"X-EWS-Policy-Reason": reason}, {"result": "403", "why": why})


@dataclass
class _Request:
    operation: str  # local name of the first element in the Body
    impersonated: str | None  # ConnectingSID address, when the header is there
    has_impersonation: bool
    folder_mailbox: str | None  # DistinguishedFolderId/Mailbox/EmailAddress
    folder_id: str | None


def _parse(body: bytes) -> _Request | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    soap_body = root.find(f"{{{SOAP}}}Body")
    if root.tag != f"{{{SOAP}}}Envelope" or soap_body is None or len(soap_body) == 0:
        return None
    op = soap_body[0]
    imp = root.find(f"{{{SOAP}}}Header/{{{TYPES}}}ExchangeImpersonation")
    who = None
    if imp is not None:
        sid = imp.find(f"{{{TYPES}}}ConnectingSID")
        for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName", "SID"):
            el = sid.find(f"{{{TYPES}}}{name}") if sid is not None else None
            if el is not None and (el.text or "").strip():
                who = el.text.strip() if el.text else None
                break
    dfid = op.find(f".//{{{TYPES}}}DistinguishedFolderId")
    email = dfid.find(f"{{{TYPES}}}Mailbox/{{{TYPES}}}EmailAddress") if dfid is not None else None
    return _Request(
        op.tag.rsplit("}", 1)[-1], who, imp is not None,
        (email.text or "").strip() or None if email is not None else None,
        dfid.get("Id") if dfid is not None else None,
    )


def _policy(ctx: MailContext, who: Caller, mailboxes: list[Recipient]) -> Reply | None:
    """The EWS organisation policy (✅ EWS-CTRL, updates-2026-11.md §1). EwsEnabled null: the 2025 doc
    says it counts as True, but since October 2026 EWS is blocked "unless the organisation has
    EwsEnabled = $true" (updates-2026-11.md, which wins); which header null gives is ❓ (we say disabled)."""
    t = ctx.tenant
    if t.ews_enabled is not True:
        return policy_block(EWS_DISABLED, f"organisation EwsEnabled is {t.ews_enabled}")
    for mbx in mailboxes:
        if mbx.ews_enabled is False:  # a per-mailbox True cannot lift an org block (checked above)
            return policy_block(EWS_DISABLED, f"EwsEnabled is False for {mbx.mail}")
    state = ctx.prop.state(("EwsAllowedAppId", who.app_id.lower()))
    if state != "effective":
        return policy_block(EWS_BLOCKED, f"app {who.app_id} not in EwsAllowedAppIDs ({state})")
    return None


def handle(ctx: MailContext, headers: Mapping[str, str], body: bytes) -> Reply:
    """One POST to /EWS/Exchange.asmx."""
    t = ctx.tenant
    ctx.refresh()
    scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise TokenProblem("missing", "Access token is empty.")
        who = caller(t, ctx.mint, token.strip())
    except TokenProblem as p:
        return unauthorized(p)
    reply = _authorised(ctx, who, headers, body)
    reply.log["app_id"] = who.app_id
    return reply


def _authorised(ctx: MailContext, who: Caller, headers: Mapping[str, str], body: bytes) -> Reply:
    t = ctx.tenant
    req = _parse(body)
    anchor = (headers.get("X-AnchorMailbox") or "").strip()
    named = [a for a in ((req.impersonated, req.folder_mailbox) if req else ()) if a] + ([anchor] if anchor else [])
    involved = [r for r in (t.find_recipient(a) for a in named) if r is not None]
    if who.user is not None:
        involved.append(who.user)
    blocked = _policy(ctx, who, involved)
    if blocked is not None:
        return blocked
    if req is None:
        return fault("ErrorSchemaValidation", "The request failed schema validation.", "not a SOAP envelope")
    if req.operation != "GetFolder":
        return fault("ErrorInvalidRequest", f"The sandbox serves GetFolder only, not {req.operation}.", "operation")
    if req.folder_id and req.folder_id.lower() != "inbox":
        return error("ErrorFolderNotFound", "The specified folder could not be found in the store.", "folder")
    return _app_only(ctx, who, req, anchor) if who.app_only else _delegated(ctx, who, req)


def _app_only(ctx: MailContext, who: Caller, req: _Request, anchor: str) -> Reply:
    """App-only: "you will also need to explicitly impersonate a mailbox", and always send
    X-AnchorMailbox with it (✅ EWS-OAUTH)."""
    t = ctx.tenant
    if not req.has_impersonation or not req.impersonated:
        return fault("ErrorInvalidExchangeImpersonationHeaderData", HEADER_REQUIRED, "app token without impersonation")
    if not anchor:
        # 🔶 EWSMA-212: the same "must not exist" text comes back when X-AnchorMailbox is missing.
        return fault("ErrorInvalidExchangeImpersonationHeaderData", HEADER_FORBIDDEN, "no X-AnchorMailbox")
    mbx = t.find_recipient(req.impersonated)
    if mbx is None:
        return fault("ErrorNonExistentMailbox", NO_MAILBOX, "impersonated mailbox not found")
    scoped = rbac(t, ctx.prop, who.app_id, mbx).get("EWS.AccessAsApp")
    if "full_access_as_app" not in who.roles and scoped != "effective":
        why = f"no full_access_as_app, RBAC EWS.AccessAsApp {scoped or 'not in scope'}"
        return fault("ErrorImpersonateUserDenied", IMPERSONATE_DENIED, why)
    if req.folder_mailbox and not same_mailbox(t, req.folder_mailbox, mbx):
        other = t.find_recipient(req.folder_mailbox)
        if other is None:
            return error("ErrorNonExistentMailbox", NO_MAILBOX, "folder mailbox not found")
        if not full_access(t, ctx.prop, other, mbx.sid).ok:
            return error("ErrorAccessDenied", ACCESS_DENIED, "impersonated user has no Full Access")
        mbx = other
    return success(mbx)


def _delegated(ctx: MailContext, who: Caller, req: _Request) -> Reply:
    """Explicit (delegate) access: the account opens the mailbox named in the folder id (✅ EWS-DELEG)."""
    t = ctx.tenant
    assert who.user is not None
    if "EWS.AccessAsUser.All" not in who.scopes:
        # The sandbox's wording: Microsoft's answer to a delegated token without the EWS scope is not documented.
        return unauthorized(TokenProblem("scope", "The token does not carry the EWS.AccessAsUser.All scope."))
    if req.has_impersonation:
        return fault("ErrorInvalidExchangeImpersonationHeaderData", HEADER_FORBIDDEN, "delegated token with impersonation")
    mbx = who.user if not req.folder_mailbox else t.find_recipient(req.folder_mailbox)
    if mbx is None:
        return error("ErrorNonExistentMailbox", NO_MAILBOX, "mailbox not found")
    access = full_access(t, ctx.prop, mbx, who.user.sid)
    if not access.ok:
        return error("ErrorAccessDenied", ACCESS_DENIED, access.why)
    return success(mbx)
