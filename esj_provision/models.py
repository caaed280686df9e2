"""Plain data types shared by every layer: protocols, directory objects, Exchange permission rows.

Nothing here talks to the network; everything is cheap to import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .errors import UsageError


class Inbound(str, Enum):
    IMAP = "imap"
    EWS = "ews"
    GRAPH = "graph"


class Outbound(str, Enum):
    SMTP = "smtp"
    EWS = "ews"
    GRAPH = "graph"


class Right(str, Enum):
    FULL_ACCESS = "FullAccess"
    SEND_AS = "SendAs"


class State(str, Enum):
    """Tri-state: a read that failed is UNKNOWN, never ABSENT (M365DSC's false-drift lesson)."""

    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"


class Outcome(str, Enum):
    """What became of one change (a delegation, a registration, a scope step). The values are the
    words the JSON output and the journal have always carried."""

    APPLIED = "applied"
    REMOVED = "removed"
    ALREADY_PRESENT = "already-present"
    ALREADY_ABSENT = "already-absent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"
    NOT_APPLIED = "not-applied"  # journal only: a read-back found a lost write had not been applied

    def __str__(self) -> str:
        return self.value

    @property
    def changed(self) -> bool:
        return self in {Outcome.APPLIED, Outcome.REMOVED}

    @property
    def already(self) -> bool:
        return self in {Outcome.ALREADY_PRESENT, Outcome.ALREADY_ABSENT}

    @property
    def bad(self) -> bool:
        """Failed, or not known to have worked: the row (or step) did not reach its goal."""
        return self in {Outcome.FAILED, Outcome.UNKNOWN}


def parse_inbound(value: str) -> Inbound:
    try:
        return Inbound(value.strip().lower())
    except ValueError:
        raise UsageError(f"unknown inbound protocol {value!r}", hint="choose one of: imap, ews, graph") from None


def parse_outbound(value: str) -> Outbound:
    try:
        return Outbound(value.strip().lower())
    except ValueError:
        raise UsageError(f"unknown outbound protocol {value!r}", hint="choose one of: smtp, ews, graph") from None


# Deliberately simple: one @, a non-empty local part without spaces, a dotted domain. Exchange
# accepts more exotic addresses, but none of those are realistic ESJ mailboxes, and a typo caught
# here costs nothing while one caught by Exchange costs a round trip and a confusing error.
_ADDRESS = re.compile(
    r"^[^@\s\"<>(),;:\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_address(value: str) -> bool:
    return bool(_ADDRESS.match(value)) and len(value) <= 320


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


def parse_address(value: str, what: str = "address") -> str:
    """Validate an e-mail address (or UPN) and return it stripped. Raises UsageError."""
    v = (value or "").strip()
    if not is_address(v):
        raise UsageError(
            f"{what} {value!r} is not an e-mail address",
            hint="give the address in the form name@domain, e.g. support@contoso.com",
        )
    return v


def parse_guid(value: str, what: str = "id") -> str:
    v = (value or "").strip()
    if not is_guid(v):
        raise UsageError(
            f"{what} {value!r} is not a GUID",
            hint="give the id in the form 00000000-0000-0000-0000-000000000000",
        )
    return v.lower()


@dataclass(frozen=True)
class DirectoryUser:
    """A user object as Graph returns it (mailbox or account)."""

    id: str
    user_principal_name: str
    mail: str | None
    display_name: str | None
    account_enabled: bool | None
    # Graph's onPremisesSyncEnabled: None when the account was never synced from an on-premises
    # directory, so it cannot carry SID history (which Get-RecipientPermission -Trustee misses).
    on_premises_sync_enabled: bool | None = None

    @property
    def address(self) -> str:
        return self.mail or self.user_principal_name


@dataclass(frozen=True)
class AppGrant:
    """One row of Test-ServicePrincipalAuthorization: an RBAC role, its permissions, in scope or not."""

    role: str
    permissions: frozenset[str]
    in_scope: bool


@dataclass(frozen=True)
class ServicePrincipal:
    """An Entra enterprise application (service principal) as Graph returns it."""

    id: str  # the Enterprise-application object id: the one Exchange's New-ServicePrincipal needs
    app_id: str
    display_name: str | None


@dataclass(frozen=True)
class ExchangeMailbox:
    identity: str
    primary_smtp_address: str
    recipient_type_details: str  # SharedMailbox, UserMailbox, RoomMailbox, ...
    external_directory_object_id: str | None
    email_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class PermissionRow:
    """One Get-MailboxPermission row, rights already split on commas."""

    user: str
    access_rights: frozenset[str]
    deny: bool
    is_inherited: bool
    user_sid: str | None = None

    @property
    def is_delegation(self) -> bool:
        """Explicit, allowing, non-system: the only rows that count as a delegation."""
        return not self.deny and not self.is_inherited and self.user.upper() != "NT AUTHORITY\\SELF"


@dataclass(frozen=True)
class RecipientPermissionRow:
    """One Get-RecipientPermission row (Send As). Allow or deny is ``AccessControlType`` (these rows
    have no ``Deny`` field); ``IsInherited`` is there (a 2026 capture of the cmdlet's output)."""

    trustee: str
    access_rights: frozenset[str]
    allow: bool
    trustee_sid: str | None = None
    is_inherited: bool = False


@dataclass(frozen=True)
class SendAsGrant:
    """One row of the organisation-wide Send As listing of a trustee (``Get-RecipientPermission
    -Trustee X`` without ``-Identity``): the recipient X can send as.

    ``mailbox`` is the row's ``Identity``, which is how Exchange names the recipient (its Name,
    not necessarily an address): join it with :attr:`ExchangeMailbox.identity` from
    ``list_mailboxes``, not with a manifest address.
    """

    mailbox: str
    trustee: str
    access_rights: frozenset[str]
    allow: bool
    trustee_sid: str | None = None
    is_inherited: bool = False

    @property
    def row(self) -> RecipientPermissionRow:
        """The same grant as a per-mailbox row, for :func:`esj_provision.microsoft.exchange.holds`."""
        return RecipientPermissionRow(self.trustee, self.access_rights, self.allow, self.trustee_sid, self.is_inherited)


@dataclass(frozen=True)
class ManagementScope:
    """A Get-ManagementScope row. The filter comes back in ``RecipientFilter``;
    ``RecipientRestrictionFilter`` is only the parameter of New-/Set-ManagementScope."""

    name: str
    recipient_filter: str


@dataclass(frozen=True)
class CasMailbox:
    identity: str
    # None means "follow the organisation setting" (Exchange's $null).
    smtp_client_authentication_disabled: bool | None
    ews_enabled: bool | None = None  # Get-CASMailbox EwsEnabled; None: not set (follows the organisation)


@dataclass(frozen=True)
class EwsOrgPolicy:
    """Get-OrganizationConfig -RetrieveEwsOperationAccessPolicy, the EWS part.

    ``allowed_app_ids`` is None when the answer had no EwsAllowedAppIDs property at all (it is
    returned only with -RetrieveEwsOperationAccessPolicy), and empty when the list is empty."""

    ews_enabled: bool | None
    allowed_app_ids: tuple[str, ...] | None


@dataclass(frozen=True)
class TransportConfig:
    smtp_client_authentication_disabled: bool


@dataclass(frozen=True)
class WriteResult:
    """What a write returned: Microsoft's request id and any cmdlet warnings."""

    cmdlet: str
    request_id: str | None
    warnings: tuple[str, ...] = ()
    already_done: bool = False  # "already present" / "doesn't exist" warning: success, no change


@dataclass(frozen=True)
class UserTrustee:
    """ESJ signs in with a service account: the account gets Full Access, and Send As unless the
    admin declined it."""

    address: str
    kind = "user"

    @classmethod
    def parse(cls, text: str, what: str = "trustee") -> UserTrustee:
        """The account as the admin typed it (a flag), checked and normalised: the edge's constructor."""
        return cls(parse_address(text, what))

    @property
    def ref(self) -> str:
        """How the admin named the trustee: what results, the journal and Graph lookups key on."""
        return self.address

    @property
    def options_address(self) -> str | None:
        """The delegate's address the ESJ options name (the guide's rules)."""
        return self.address

    @property
    def app_id(self) -> str | None:
        return None

    def needs_send_as(self, requested: bool) -> bool:
        return requested


@dataclass(frozen=True)
class AppTrustee:
    """ESJ signs in as its app (client credentials): the app's Exchange service principal gets Full
    Access. Never Send As: the app sends with its own permission (SMTP.SendAsApp, Mail.Send)."""

    client_id: str
    kind = "app"

    @classmethod
    def parse(cls, text: str, what: str = "trustee app client id") -> AppTrustee:
        """The client id as given, checked and lowercased (one spelling, so a run caches it once)."""
        return cls(parse_guid(text, what))

    @property
    def ref(self) -> str:
        return self.client_id

    @property
    def options_address(self) -> str | None:
        return None  # an app has no address: the options the guide fixes to it get placeholders

    @property
    def app_id(self) -> str | None:
        """The ESJ app's client id, which is the client id ESJ signs in with."""
        return self.client_id

    def needs_send_as(self, requested: bool) -> bool:
        return False


Trustee = UserTrustee | AppTrustee
