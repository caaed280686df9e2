"""Helpers for the sandbox's mail-protocol tests: tokens as ESJ would get them, XOAUTH2, raw IMAP
lines, EWS bodies, and the admin grants made through InvokeCommand (so the tests also show the
admin side sees a grant before the mail protocols do)."""

from __future__ import annotations

import base64
import socket
import ssl
from typing import Any

from sandbox_fixtures import SandboxClient

from esj_provision.sandbox import Sandbox

OUTLOOK = "https://outlook.office.com/.default"  # ESJ's default scope
OUTLOOK365 = "https://outlook.office365.com/.default"
GRAPH = "https://graph.microsoft.com/.default"


def xoauth2(user: str, token: str) -> str:
    """The raw SASL string (imaplib and smtplib base64 it themselves)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def xoauth2_b64(user: str, token: str) -> str:
    return base64.b64encode(xoauth2(user, token).encode()).decode()


def password_token(c: SandboxClient, scope: str = OUTLOOK, **form: str) -> str:
    """The ESJ service account's delegated token (ROPC, public client: no secret)."""
    data = {"grant_type": "password", "client_id": c.sb.esj_app_id, "username": c.sb.esj_account,
            "password": c.sb.esj_password, "scope": scope, **form}
    r = c.token_request(data)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def app_token(c: SandboxClient, scope: str = OUTLOOK365, app: str = "esj") -> str:
    creds = c.sb.apps[app]
    r = c.token_request({"grant_type": "client_credentials", "scope": scope, **creds})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def ok(c: SandboxClient, cmdlet: str, **params: Any) -> list[dict[str, Any]]:
    r = c.invoke(cmdlet, params)
    assert r.status_code == 200, r.text
    return list(r.json()["value"])


def esj_ids(sb: Sandbox) -> tuple[str, str]:
    """(enterprise application object id, app registration object id) of the ESJ app."""
    esj = next(a for a in sb.state()["apps"] if a["client_id"] == sb.esj_app_id)
    return esj["sp_object_id"], esj["app_object_id"]


def register_esj(c: SandboxClient, object_id: str | None = None) -> str:
    """New-ServicePrincipal for the ESJ app (by default with the right, enterprise-app object id)."""
    oid = object_id or esj_ids(c.sb)[0]
    ok(c, "New-ServicePrincipal", AppId=c.sb.esj_app_id, ObjectId=oid, DisplayName="Genesys E-mail Server")
    return oid


def full_access(c: SandboxClient, mailbox: str, user: str) -> None:
    ok(c, "Add-MailboxPermission", Identity=mailbox, User=user, AccessRights=["FullAccess"], AutoMapping=False)


def send_as(c: SandboxClient, mailbox: str, trustee: str) -> None:
    ok(c, "Add-RecipientPermission", Identity=mailbox, Trustee=trustee, AccessRights=["SendAs"], Confirm=False)


def scoped_role(c: SandboxClient, role: str, mailbox: str, name: str = "esj-scope") -> None:
    """RBAC for Applications: the ESJ app's service principal gets ``role`` on ``mailbox`` only."""
    if not any(s["Name"] == name for s in ok(c, "Get-ManagementScope")):
        ok(c, "New-ManagementScope", Name=name, RecipientRestrictionFilter=f"PrimarySmtpAddress -eq '{mailbox}'")
    ok(c, "New-ManagementRoleAssignment", App=c.sb.esj_app_id, Role=role, CustomResourceScope=name,
       Name=f"{role} {name}")


class RawImap:
    """Line-level IMAP over TLS, to see exact server lines (imaplib hides untagged BYE)."""

    def __init__(self, sb: Sandbox) -> None:
        raw = socket.create_connection(("127.0.0.1", sb.imap_port), timeout=10)
        self.sock = sb.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def until_tagged(self, tag: str) -> list[str]:
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(f"{tag} ") or not line:
                return out

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def get_folder(mailbox: str, impersonate: str | None = None) -> str:
    header = (
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{impersonate}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation>" if impersonate else ""
    )
    return (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
        f'<soap:Header><t:RequestServerVersion Version="Exchange2013_SP1"/>{header}</soap:Header>'
        "<soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds>"
        f'<t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>{mailbox}</t:EmailAddress></t:Mailbox>'
        "</t:DistinguishedFolderId></m:FolderIds></m:GetFolder></soap:Body></soap:Envelope>"
    )
