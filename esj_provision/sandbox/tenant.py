"""The sandbox tenant: directory objects, apps, Exchange permissions; seed data and persistence.

Pure data and lookups, no HTTP. Everything here runs on the server's event-loop thread, so no
locks are needed. Generated bulk mailboxes (``--mailboxes N``) are not stored: a mailbox
``queueNNNN`` is synthesised from its number on demand, and only materialised (copied into
``overrides``) once a mutation changes it. That keeps a 100k-mailbox tenant at a few kilobytes.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1

TENANT_ID = "b27c3a40-61e3-421c-952d-c89c7f44266f"
TENANT_NAME = "Contoso"
TENANT_DOMAIN = "contoso.onmicrosoft.com"
MAIL_DOMAIN = "contoso.com"

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
GRAPH_RESOURCE = "https://graph.microsoft.com"
EXCHANGE_RESOURCE = "https://outlook.office365.com"
MICROSOFT_TENANT_ID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"  # owner of first-party apps

# Microsoft's app-role ids, so a client that compares ids (not names) sees real ones.
GRAPH_ROLES: dict[str, str] = {
    "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",
    "User.ReadWrite.All": "741f803b-c850-494e-b5df-cde7c675a1ca",
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
    "Application.Read.All": "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30",
    "MailboxSettings.Read": "40f97065-369a-49f4-947c-6a255697ae91",
    "MailboxSettings.ReadWrite": "6931bccd-447a-43d1-b442-00a195474933",
    "Mail.Read": "810c84a8-4a9e-49e6-bf7d-12d183f40d01",
    "Mail.ReadWrite": "e2a3a72e-5f79-4c64-b1b1-878b674786c9",
    "Mail.Send": "b633e1c5-b582-4048-a93e-9f11b44c7e96",
}
# Exchange.ManageAsApp and full_access_as_app: ids from the reference. The protocol roles an ESJ
# app signs in with (IMAP/POP/SMTP as itself) carry the ids published app manifests and
# permission tables use; a client maps ids to names through the resource's appRoles anyway.
EXCHANGE_ROLES: dict[str, str] = {
    "Exchange.ManageAsApp": "dc50a0fb-09a3-484d-be87-e023b12c6440",
    "full_access_as_app": "dc890d15-9560-4a4c-9b7f-a736ec74ec40",
    "IMAP.AccessAsApp": "5e5addcd-3e8d-4e90-baf5-964efab2b20a",
    "POP.AccessAsApp": "cb842b43-da6e-4506-86fe-bb12199c656d",
    "SMTP.SendAsApp": "7146a1f0-8703-45b3-9eae-527a64c00995",
}
# Exchange app roles a token may carry whose appRole id is not confirmed publicly: tokens carry
# role values, so a test can give an app one (set-app-roles), but Graph's appRoleAssignments and
# requiredResourceAccess do not list it (they would need the id). Exchange.ManageAsAppV2 is the Admin
# API v2.0's permission; InvokeCommand refuses a token that has only it (updates-2026-11.md §3).
TOKEN_ONLY_EXCHANGE_ROLES = ("Exchange.ManageAsAppV2",)
DIRECTORY_ROLES: dict[str, str] = {
    "Exchange Administrator": "29232cdf-9323-42fd-ade2-1d097af3e4de",
    "Exchange Recipient Administrator": "31392ffb-586c-42d1-9346-e59415a2cc4e",
    "Global Administrator": "62e90394-69f5-4237-9190-012177145e10",
    "Global Reader": "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
    "Compliance Administrator": "17315797-102d-40b4-93e0-432062caca18",
    "Helpdesk Administrator": "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    "Security Administrator": "194ae4cb-b126-40b2-bd5b-6091b380977d",
    "Security Reader": "5d6b6bb7-de71-4623-b4af-96380a352509",
}

PROVISIONING_APP_ID = "31bde047-a3b3-4cdc-911c-6124c6bbf2cf"
NO_DIRECTORY_ROLE_APP_ID = "7880f2d0-79b9-4d51-935d-ba6a270e41db"
NO_EXCHANGE_ROLE_APP_ID = "5450d7ef-9f97-4011-b1f1-7ee2ac01d537"
ESJ_APP_ID = "2db3fd6d-47fc-4750-ace0-99b31d4ba2de"
# The ESJ service account (esj-svc@): the one user with a password, set per start.
ESJ_ACCOUNT_ID = "6ef40935-da7b-4d8f-bf65-a7ea9ba883d0"
ESJ_ACCOUNT = "esj-svc@contoso.com"
# Documented, deliberately fake secrets of the non-provisioning apps (the provisioning app's is
# chosen per start). They only open this sandbox.
FIXED_SECRETS: dict[str, str] = {
    NO_DIRECTORY_ROLE_APP_ID: "sandbox-no-directory-role~not-a-real-secret",
    NO_EXCHANGE_ROLE_APP_ID: "sandbox-no-exchange-role~not-a-real-secret",
    ESJ_APP_ID: "sandbox-esj-app~not-a-real-secret",
}

# A fixed domain SID for the tenant; user RIDs below are what distinguishes principals.
_DOMAIN_SID = "S-1-5-21-3624139123-1784739471-2910441772"
SELF_SID = "S-1-5-10"
_GEN_RID_BASE = 1_000_000
_GEN_OBJECT_PREFIX = "7e570000-0000-4000-8000-"
_GEN_EXO_PREFIX = "7e570001-0000-4000-8000-"
_GEN_NAME = re.compile(r"^queue(\d{4,})$")
_GEN_DISPLAY = re.compile(r"^queue (\d{4,})$")
_GUID_TEXT = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_GEN_GUID = re.compile(r"^7e57000([01])-0000-4000-8000-(\d{12})$")

USER_PURPOSE = {
    "SharedMailbox": "shared",
    "UserMailbox": "user",
    "RoomMailbox": "room",
    "EquipmentMailbox": "equipment",
    "LinkedMailbox": "linked",
}
RECIPIENT_TYPES = tuple(USER_PURPOSE)


def _exo_guid(object_id: str) -> str:
    # Exchange's mailbox Guid differs from the Entra object id (ExternalDirectoryObjectId); a
    # client that mixes them up should see a mismatch here too.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"exchange:{object_id}"))


@dataclass(slots=True)
class Recipient:
    """A mail-enabled user (mailbox) as both Graph and Exchange see it."""

    id: str  # Entra object id = Exchange ExternalDirectoryObjectId
    name: str  # Exchange Name / Alias / mailNickname
    display_name: str
    upn: str
    mail: str
    recipient_type: str  # SharedMailbox / UserMailbox / RoomMailbox ...
    account_enabled: bool
    sid: str
    exchange_guid: str
    rest_enabled: bool = True  # False: Graph's MailboxNotEnabledForRESTAPI
    smtp_auth_disabled: bool | None = None  # Get-CASMailbox; None = follow the org setting
    ews_enabled: bool | None = True  # Get-CASMailbox EwsEnabled; False blocks EWS for this mailbox
    aliases: list[str] = field(default_factory=list)  # extra SMTP addresses
    user_type: str = "Member"
    index: int | None = None  # set for generated mailboxes

    @property
    def email_addresses(self) -> list[str]:
        out = [f"SMTP:{self.mail}"]
        out += [f"smtp:{a}" for a in [self.upn, *self.aliases] if a.lower() != self.mail.lower()]
        return out

    @property
    def user_purpose(self) -> str:
        return USER_PURPOSE.get(self.recipient_type, "others")

    def lookup_keys(self) -> Iterator[str]:
        yield from (self.id, self.exchange_guid, self.upn, self.mail, self.name, self.display_name, self.sid)
        yield from self.aliases

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class App:
    """An app registration plus its enterprise app (service principal) and what it was granted."""

    client_id: str
    display_name: str
    app_object_id: str  # the App-registration object id
    sp_object_id: str  # the Enterprise-application object id (what New-ServicePrincipal needs)
    graph_roles: list[str] = field(default_factory=list)
    exchange_roles: list[str] = field(default_factory=list)
    wids: list[str] = field(default_factory=list)  # directory role template ids
    # Delegated permissions consented for the app (what a user's token may carry in ``scp``).
    exchange_delegated: list[str] = field(default_factory=list)
    graph_delegated: list[str] = field(default_factory=list)
    public_client: bool = False  # "Allow public client flows": ROPC without a secret

    def delegated_for(self, resource: str) -> list[str]:
        return list(self.graph_delegated if resource == GRAPH_RESOURCE else self.exchange_delegated)

    def roles_for(self, resource: str) -> list[str]:
        return list(self.graph_roles if resource == GRAPH_RESOURCE else self.exchange_roles)


@dataclass(frozen=True)
class ResourceSp:
    """A first-party resource's service principal (Microsoft Graph, Exchange Online)."""

    app_id: str
    sp_object_id: str
    display_name: str
    roles: dict[str, str]  # value -> appRole id


RESOURCE_SPS = (
    ResourceSp(GRAPH_APP_ID, "538cd7fe-cf81-413a-8f60-569e9892c308", "Microsoft Graph", GRAPH_ROLES),
    ResourceSp(
        EXCHANGE_APP_ID, "e6b22d0d-0666-47a2-8e94-2b727c1d4df9", "Office 365 Exchange Online",
        EXCHANGE_ROLES,
    ),
)


@dataclass
class Ace:
    """One FullAccess-style access control entry of a mailbox."""

    sid: str
    rights: list[str]
    inheritance: str = "All"
    automapping: bool = True
    deny: bool = False


@dataclass
class ExoServicePrincipal:
    """Exchange's own record of an app (New-ServicePrincipal). Exchange cannot check object_id."""

    app_id: str
    object_id: str
    display_name: str
    sid: str

    @property
    def identity(self) -> str:
        return self.object_id

    def lookup_keys(self) -> Iterator[str]:
        yield from (self.object_id, self.app_id, self.display_name, self.sid)


@dataclass
class ManagementScope:
    name: str
    filter: str


@dataclass
class RoleAssignment:
    name: str
    role: str
    app_sid: str
    scope: str | None = None


Principal = Recipient | ExoServicePrincipal


def _seed_recipients(upn_domain: str = TENANT_DOMAIN) -> list[Recipient]:
    rows: list[tuple[str, str, str, str, bool, dict[str, Any]]] = [
        # id, name, display name, type, accountEnabled, extras
        ("87d349ed-44d7-43e1-9a83-5f2406dee5bd", "support", "Customer Support", "SharedMailbox", False,
         {"smtp_auth_disabled": False, "aliases": ["help@contoso.com"]}),
        ("7578bcc2-b39f-4703-a51f-6818389a59ea", "sales", "Sales", "SharedMailbox", True, {}),
        ("1b3a970e-c72b-4248-8e12-56e2ec15bebc", "billing", "Billing", "SharedMailbox", False, {}),
        ("e348ca23-439c-423d-a1ec-3c70a6ed08cd", "adele", "Adele Vance", "UserMailbox", True, {}),
        # Its SMTP AUTH switch follows the (disabled) organisation: onboarding warns about it, and
        # the SMTP stand-in answers 5.7.139 until an admin turns it on, as Exchange would.
        ("6ef40935-da7b-4d8f-bf65-a7ea9ba883d0", "esj-svc", "ESJ Service Account", "UserMailbox", True, {}),
        ("52cd44a3-432a-4b90-be64-55323884320c", "old-svc", "Old ESJ Service Account", "UserMailbox",
         False, {}),
        ("77cd41f1-1bab-441c-a9e3-9fdadb819c52", "legacy", "Legacy Helpdesk", "SharedMailbox", False,
         {"rest_enabled": False}),
        ("2dedfc54-5585-41a5-b132-ac0c5743fcd4", "room1", "Conference Room 1", "RoomMailbox", False, {}),
        # A mailbox that left ESJ; its grants did not (see _seed_grants).
        ("c0a8e7f2-5b1d-4e3a-9f6c-2d7b8e4a1c90", "returns", "Returns", "SharedMailbox", False, {}),
    ]
    out = []
    for rid, (oid, name, display, rtype, enabled, extra) in enumerate(rows, start=1101):
        out.append(
            Recipient(
                id=oid, name=name, display_name=display, upn=f"{name}@{upn_domain}",
                mail=f"{name}@{MAIL_DOMAIN}", recipient_type=rtype, account_enabled=enabled,
                sid=f"{_DOMAIN_SID}-{rid}", exchange_guid=_exo_guid(oid), **extra,
            )
        )
    return out


def _seed_apps() -> list[App]:
    ex_admin = DIRECTORY_ROLES["Exchange Administrator"]
    return [
        App(PROVISIONING_APP_ID, "esj-provision (sandbox)", "3428b707-7e52-4939-b4ae-80e2b4fce1e3",
            "e004551d-4393-418f-98f1-80bf8a28833c",
            graph_roles=["User.Read.All", "MailboxSettings.Read", "Application.Read.All"],
            exchange_roles=["Exchange.ManageAsApp"], wids=[ex_admin]),
        App(NO_DIRECTORY_ROLE_APP_ID, "provisioning app without directory role (sandbox)",
            "8dcc5b12-86d0-47cb-9684-778202857006", "47e535a4-8ae6-4e97-873d-17b10b564e7c",
            graph_roles=["User.Read.All"], exchange_roles=["Exchange.ManageAsApp"]),
        App(NO_EXCHANGE_ROLE_APP_ID, "provisioning app without Exchange permission (sandbox)",
            "3b515d56-29a2-4f21-9a08-78270db16ca6", "55c4cbc5-fe99-4650-bb71-a7b5159d1ab9"),
        App(ESJ_APP_ID, "Genesys E-mail Server (sandbox)", "c6ede48f-f90c-465e-8591-e00089307328",
            "4dff7df5-6bb2-41a3-8d9f-4d274f8dd038", graph_roles=["Mail.ReadWrite", "Mail.Send"],
            # ESJ's non-client_credentials mode signs its service account in with a password (ROPC), most
            # likely as a public client (probe-protocols.md §3, inferred): the sample app allows that.
            exchange_delegated=["IMAP.AccessAsUser.All", "SMTP.Send", "EWS.AccessAsUser.All"],
            graph_delegated=["Mail.ReadWrite", "Mail.Send"], public_client=True),
    ]


class Tenant:
    def __init__(self, generated: int = 0, *, upn_domain: str = TENANT_DOMAIN) -> None:
        self.tenant_id = TENANT_ID
        self.name = TENANT_NAME
        self.domain = TENANT_DOMAIN
        self.mail_domain = MAIL_DOMAIN
        # The accounts' sign-in names: by default in the initial domain, so a UPN differs from the
        # address (Graph's /users/{key} then finds no one by address); the mail domain makes
        # UPN = primary address, as in most tenants.
        self.upn_domain = upn_domain
        self.seeded: list[Recipient] = _seed_recipients(upn_domain)
        self.generated = generated
        self.overrides: dict[int, Recipient] = {}
        self.apps: dict[str, App] = {a.client_id: a for a in _seed_apps()}
        self.transport_smtp_auth_disabled = True
        # Get-OrganizationConfig EwsEnabled: Microsoft set it to False in tenants that had not chosen
        # by 1 October 2026 (updates-2026-11.md §1); None (never set) is treated as blocked too.
        self.ews_enabled: bool | None = False
        self.ews_allowed_app_ids: list[str] = []  # EwsAllowedAppIDs; empty blocks every app
        self.mailbox_permissions: dict[str, list[Ace]] = {}
        self.recipient_permissions: dict[str, list[str]] = {}
        self.exo_sps: list[ExoServicePrincipal] = []
        self.scopes: list[ManagementScope] = []
        self.assignments: list[RoleAssignment] = []
        self.next_rid = 5001
        self._reindex()
        self._seed_grants()

    def _seed_grants(self) -> None:
        r"""Grants a real tenant has before esj-provision ever runs, each one a trap for the search
        for unlisted grants (issue 15): only ``returns@`` may be reported for the ESJ account.

        Every mailbox also lists NT AUTHORITY\SELF and the inherited admin rows (Allow and Deny)
        in Get-MailboxPermission, computed in exchange.py. Grants through a mail-enabled security
        group are not modelled: Exchange lists the group as the trustee, not its members, and
        ``-Trustee <member>`` does not find them.
        """
        by_name = {r.name: r for r in self.seeded}
        adele, svc, old = by_name["adele"], by_name["esj-svc"], by_name["old-svc"]
        # A pre-existing delegate, stored as two ACEs as Exchange sometimes shows it (same SID,
        # different rights): audits must not flag it, and parsers must cope with the duplicate.
        self.mailbox_permissions[by_name["sales"].id] = [
            Ace(adele.sid, ["FullAccess"], "All", True),
            Ace(adele.sid, ["ReadPermission"], "None", True),
        ]
        self.recipient_permissions[by_name["sales"].id] = [adele.sid]  # another trustee's Send As
        # The forgotten grant: the ESJ account still opens and sends as a mailbox no manifest lists.
        self.mailbox_permissions[by_name["returns"].id] = [Ace(svc.sid, ["FullAccess"], "All", False)]
        self.recipient_permissions[by_name["returns"].id] = [svc.sid]
        # An explicit Deny for the ESJ account: a row naming it that grants nothing.
        self.mailbox_permissions[by_name["legacy"].id] = [Ace(svc.sid, ["FullAccess"], "All", True, deny=True)]
        # A retired account's leftover Full Access on a listed mailbox: another trustee's grant.
        self.mailbox_permissions[by_name["billing"].id] = [Ace(old.sid, ["FullAccess"], "All", False)]

    # --- directory ----------------------------------------------------------------------------

    def _reindex(self) -> None:
        self._keys: dict[str, list[Recipient]] = {}
        for r in [*self.seeded, *self.overrides.values()]:
            self._index(r)

    def _index(self, r: Recipient) -> None:
        for k in {k.lower() for k in r.lookup_keys()}:
            self._keys.setdefault(k, []).append(r)

    @property
    def recipient_count(self) -> int:
        return len(self.seeded) + self.generated

    def _synth(self, i: int) -> Recipient:
        name = f"queue{i:04d}"
        oid = f"{_GEN_OBJECT_PREFIX}{i:012d}"
        return Recipient(
            id=oid, name=name, display_name=f"Queue {i:04d}", upn=f"{name}@{self.upn_domain}",
            mail=f"{name}@{self.mail_domain}", recipient_type="SharedMailbox", account_enabled=False,
            sid=f"{_DOMAIN_SID}-{_GEN_RID_BASE + i}", exchange_guid=f"{_GEN_EXO_PREFIX}{i:012d}",
            index=i,
        )

    def generated_at(self, i: int) -> Recipient:
        return self.overrides.get(i) or self._synth(i)

    def at(self, pos: int) -> Recipient:
        """The recipient at a stable position: seeded first, then queue0001, queue0002, ..."""
        if pos < len(self.seeded):
            return self.seeded[pos]
        return self.generated_at(pos - len(self.seeded) + 1)

    def _generated_index(self, key: str) -> int | None:
        k = key.lower()
        m = None
        local, at, domain = k.partition("@")
        if at and domain in (self.domain, self.mail_domain):
            m = _GEN_NAME.match(local)
        elif not at:
            m = _GEN_NAME.match(k) or _GEN_DISPLAY.match(k)
        digits: str | None = m.group(1) if m else None
        if digits is None:
            g = _GEN_GUID.match(k)
            if g:
                digits = str(int(g.group(2)))
                digits = digits.rjust(4, "0")
            elif k.startswith(_DOMAIN_SID.lower() + "-"):
                rid = k.rsplit("-", 1)[1]
                if rid.isdigit() and int(rid) > _GEN_RID_BASE:
                    digits = f"{int(rid) - _GEN_RID_BASE:04d}"
        if digits is None:
            return None
        i = int(digits)
        if f"{i:04d}" != digits or not 1 <= i <= self.generated:
            return None
        return i

    def find_recipients(self, key: str) -> list[Recipient]:
        """Every recipient ``key`` names (case-insensitive): id, Guid, UPN, any address, name,
        display name or SID. More than one only for a shared display name."""
        k = (key or "").strip().lower()
        if k.startswith("smtp:"):
            k = k[5:]
        found = list(self._keys.get(k, []))
        i = self._generated_index(k)
        if i is not None and i not in self.overrides:
            found.append(self._synth(i))
        return found

    def find_recipient(self, key: str) -> Recipient | None:
        found = self.find_recipients(key)
        return found[0] if len(found) == 1 else None

    def materialise(self, r: Recipient) -> Recipient:
        """The stored copy of ``r`` that a mutation may change (generated ones are copied in)."""
        if r.index is not None and r.index not in self.overrides:
            self.overrides[r.index] = r
            self._index(r)  # incremental: mutating thousands of generated mailboxes stays linear
        return r

    # --- principals (trustees) ----------------------------------------------------------------

    def find_exo_sps(self, key: str) -> list[ExoServicePrincipal]:
        k = (key or "").strip().lower()
        return [sp for sp in self.exo_sps if k in {x.lower() for x in sp.lookup_keys()}]

    def find_principals(self, key: str) -> list[Principal]:
        return [*self.find_recipients(key), *self.find_exo_sps(key)]

    def principal_by_sid(self, sid: str) -> Principal | None:
        for p in self.find_principals(sid):
            if p.sid.lower() == sid.lower():
                return p
        return None

    def render(self, sid: str) -> str:
        """How Exchange shows a trustee: a user's UPN, a service principal's Identity, or the raw
        SID once the principal is gone (as Exchange shows orphaned ACEs)."""
        p = self.principal_by_sid(sid)
        if p is None:
            return sid
        return p.upn if isinstance(p, Recipient) else p.identity

    def allocate_sid(self) -> str:
        sid = f"{_DOMAIN_SID}-{self.next_rid}"
        self.next_rid += 1
        return sid

    # --- apps ---------------------------------------------------------------------------------

    def find_app(self, client_id: str) -> App | None:
        return self.apps.get((client_id or "").strip().lower())

    def app_by_sp(self, sp_object_id: str) -> App | None:
        k = sp_object_id.lower()
        return next((a for a in self.apps.values() if a.sp_object_id == k), None)

    def is_tenant(self, segment: str) -> bool:
        s = (segment or "").strip().lower()
        return s in (self.tenant_id, self.domain, self.mail_domain)

    # --- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole state (no secrets: those are per start and never stored)."""
        return {
            "version": STATE_VERSION,
            "tenant": {
                "id": self.tenant_id, "name": self.name, "domain": self.domain,
                "mail_domain": self.mail_domain, "upn_domain": self.upn_domain,
            },
            "recipients": [r.to_json() for r in self.seeded],
            "generated": {
                "count": self.generated,
                "overrides": {str(i): r.to_json() for i, r in sorted(self.overrides.items())},
            },
            "apps": [asdict(a) for a in self.apps.values()],
            "resource_service_principals": [asdict(sp) for sp in RESOURCE_SPS],
            "transport_config": {"SmtpClientAuthenticationDisabled": self.transport_smtp_auth_disabled},
            "organization_config": {"EwsEnabled": self.ews_enabled, "EwsAllowedAppIDs": list(self.ews_allowed_app_ids)},
            "mailbox_permissions": {
                k: [asdict(a) for a in v] for k, v in self.mailbox_permissions.items() if v
            },
            "recipient_permissions": {k: list(v) for k, v in self.recipient_permissions.items() if v},
            "exchange_service_principals": [asdict(sp) for sp in self.exo_sps],
            "management_scopes": [asdict(s) for s in self.scopes],
            "role_assignments": [asdict(a) for a in self.assignments],
            "next_rid": self.next_rid,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tenant:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        t = cls(generated=int(data["generated"]["count"]), upn_domain=data["tenant"].get("upn_domain", TENANT_DOMAIN))
        t.seeded = [Recipient(**r) for r in data["recipients"]]
        t.overrides = {int(i): Recipient(**r) for i, r in data["generated"]["overrides"].items()}
        t.apps = {a["client_id"]: App(**a) for a in data["apps"]}
        t.transport_smtp_auth_disabled = bool(data["transport_config"]["SmtpClientAuthenticationDisabled"])
        org = data.get("organization_config") or {}  # absent in state files written before EWS was modelled
        t.ews_enabled = org.get("EwsEnabled", False)
        t.ews_allowed_app_ids = [str(a) for a in org.get("EwsAllowedAppIDs", [])]
        t.mailbox_permissions = {
            k: [Ace(**a) for a in v] for k, v in data["mailbox_permissions"].items()
        }
        t.recipient_permissions = {k: list(v) for k, v in data["recipient_permissions"].items()}
        t.exo_sps = [ExoServicePrincipal(**sp) for sp in data["exchange_service_principals"]]
        t.scopes = [ManagementScope(**s) for s in data["management_scopes"]]
        t.assignments = [RoleAssignment(**a) for a in data["role_assignments"]]
        t.next_rid = int(data["next_rid"])
        t._reindex()
        return t

    def save(self, path: Path) -> None:
        """Write atomically (temp file in the same directory, then rename), so a crash or a
        concurrent reader never sees half a file."""
        data = json.dumps(self.to_json(), indent=1, sort_keys=False).encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load_or_seed(cls, path: Path | None, generated: int, upn_domain: str = TENANT_DOMAIN) -> Tenant:
        if path is not None and path.exists():
            return cls.from_json(json.loads(path.read_text()))
        return cls(generated=generated, upn_domain=upn_domain)


# --- drift for audit tests (POST /_sandbox/mutate) -----------------------------------------------


class MutationError(ValueError):
    pass


def _one_recipient(t: Tenant, key: Any, what: str) -> Recipient:
    if not isinstance(key, str) or not key:
        raise MutationError(f"{what!r} must be an address or id")
    r = t.find_recipient(key)
    if r is None:
        raise MutationError(f"no single recipient matches {what} {key!r}")
    return t.materialise(r)


def _app(t: Tenant, key: Any) -> App:
    app = t.find_app(str(key or ""))
    if app is None:
        raise MutationError(f"unknown app {key!r} (give its client id)")
    return app


def mutate(t: Tenant, op: dict[str, Any]) -> dict[str, Any]:
    """Apply one drift operation; returns a short description. Raises MutationError."""
    name = op.get("op")
    if name in ("remove-grant", "add-grant"):
        mbx = _one_recipient(t, op.get("mailbox"), "mailbox")
        principals = t.find_principals(str(op.get("trustee") or ""))
        if len(principals) != 1:
            raise MutationError(f"no single principal matches trustee {op.get('trustee')!r}")
        sid = principals[0].sid
        right = op.get("right", "FullAccess")
        if right == "SendAs":
            lst = t.recipient_permissions.setdefault(mbx.id, [])
            had = sid in lst
            if name == "remove-grant" and had:
                lst.remove(sid)
            elif name == "add-grant" and not had:
                lst.append(sid)
            return {"op": name, "changed": had == (name == "remove-grant")}
        if right not in MAILBOX_RIGHTS:
            raise MutationError(f"right must be SendAs or one of {', '.join(MAILBOX_RIGHTS)}")
        aces = t.mailbox_permissions.setdefault(mbx.id, [])
        if name == "add-grant":
            if any(a.sid == sid and right in a.rights and not a.deny for a in aces):
                return {"op": name, "changed": False}
            aces.append(Ace(sid, [right], "All", bool(op.get("automapping", True))))
            return {"op": name, "changed": True}
        changed = False
        for a in aces:
            if a.sid == sid and right in a.rights:
                a.rights.remove(right)
                changed = True
        t.mailbox_permissions[mbx.id] = [a for a in aces if a.rights]
        return {"op": name, "changed": changed}
    if name == "set-recipient-type":
        mbx = _one_recipient(t, op.get("mailbox"), "mailbox")
        rtype = op.get("type")
        if rtype not in RECIPIENT_TYPES:
            raise MutationError(f"type must be one of {', '.join(RECIPIENT_TYPES)}")
        mbx.recipient_type = str(rtype)
        return {"op": name, "mailbox": mbx.mail, "type": rtype, "userPurpose": mbx.user_purpose}
    if name == "set-account-enabled":
        user = _one_recipient(t, op.get("user"), "user")
        user.account_enabled = bool(op.get("enabled"))
        return {"op": name, "user": user.upn, "enabled": user.account_enabled}
    if name == "set-rest-enabled":
        mbx = _one_recipient(t, op.get("mailbox"), "mailbox")
        mbx.rest_enabled = bool(op.get("enabled"))
        return {"op": name, "mailbox": mbx.mail, "enabled": mbx.rest_enabled}
    if name == "set-smtp-auth":
        disabled = op.get("disabled")
        if op.get("mailbox") is None:
            if not isinstance(disabled, bool):
                raise MutationError("the organisation setting 'disabled' must be true or false")
            t.transport_smtp_auth_disabled = disabled
            return {"op": name, "scope": "organization", "disabled": disabled}
        if disabled is not None and not isinstance(disabled, bool):
            raise MutationError("'disabled' must be true, false or null")
        mbx = _one_recipient(t, op.get("mailbox"), "mailbox")
        mbx.smtp_auth_disabled = disabled
        return {"op": name, "mailbox": mbx.mail, "disabled": disabled}
    if name == "set-ews-enabled":
        enabled = op.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise MutationError("'enabled' must be true, false or null")
        if op.get("mailbox") is None:
            t.ews_enabled = enabled
            return {"op": name, "scope": "organization", "enabled": enabled}
        mbx = _one_recipient(t, op.get("mailbox"), "mailbox")
        mbx.ews_enabled = enabled
        return {"op": name, "mailbox": mbx.mail, "enabled": enabled}
    if name == "set-ews-allowed-apps":
        apps = op.get("apps")
        if not isinstance(apps, list) or not all(isinstance(a, str) and _GUID_TEXT.match(a.strip()) for a in apps):
            raise MutationError("'apps' must be a list of application (client) ids")
        t.ews_allowed_app_ids = [a.strip().lower() for a in apps]  # overwrites, as Set-OrganizationConfig does
        return {"op": name, "apps": t.ews_allowed_app_ids}
    if name == "set-public-client":
        app = _app(t, op.get("app"))
        if not isinstance(op.get("enabled"), bool):
            raise MutationError("'enabled' must be true or false")
        app.public_client = bool(op["enabled"])
        return {"op": name, "app": app.client_id, "enabled": app.public_client}
    if name == "set-app-roles":
        app = _app(t, op.get("app"))
        resource = op.get("resource")
        roles = op.get("roles")
        known: Any = (
            GRAPH_ROLES if resource == "graph"
            else [*EXCHANGE_ROLES, *TOKEN_ONLY_EXCHANGE_ROLES] if resource == "exchange" else None
        )
        if known is None:
            raise MutationError("resource must be 'graph' or 'exchange'")
        if not isinstance(roles, list) or any(r not in known for r in roles):
            raise MutationError(f"roles must be a list drawn from {', '.join(known)}")
        if resource == "graph":
            app.graph_roles = list(roles)
        else:
            app.exchange_roles = list(roles)
        return {"op": name, "app": app.client_id, "resource": resource, "roles": roles}
    if name == "set-directory-roles":
        app = _app(t, op.get("app"))
        roles = op.get("roles")
        if not isinstance(roles, list):
            raise MutationError("roles must be a list of role names or template ids")
        wids: list[str] = []
        for r in roles:
            wid = DIRECTORY_ROLES.get(str(r), str(r))
            if wid not in DIRECTORY_ROLES.values():
                raise MutationError(f"unknown directory role {r!r}: use one of {', '.join(DIRECTORY_ROLES)}")
            wids.append(wid)
        app.wids = wids
        return {"op": name, "app": app.client_id, "wids": wids}
    raise MutationError(
        f"unknown op {name!r}: use remove-grant, add-grant, set-recipient-type, set-account-enabled, "
        "set-rest-enabled, set-smtp-auth, set-ews-enabled, set-ews-allowed-apps, set-public-client, set-app-roles, "
        "set-directory-roles, expire-tokens, set-propagation, propagate or clear-sent"
    )


MAILBOX_RIGHTS = ("ChangeOwner", "ChangePermission", "DeleteItem", "ExternalAccount", "FullAccess", "ReadPermission")
