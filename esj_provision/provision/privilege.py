"""Least privilege for the provisioning app: which Exchange role each command needs.

Sources (shared/reference/updates-2026-11.md §3, exchange-and-graph.md §3):

* Full Access and Send As grants need the ``Mail Recipients`` role (role group Recipient
  Management); reading them ``View-Only Recipients`` (Microsoft365DSC 1.26.x declarations, 🔶).
  The Entra directory role **Exchange Recipient Administrator** with ``Exchange.ManageAsApp``
  works for InvokeCommand (a 2026-08 field note, 🔶). Exchange Administrator is more than grants need.
* ``New-ServicePrincipal``, management scopes and role assignments need **Role Management**
  (Organization Management: Exchange Administrator), and so does ``Set-OrganizationConfig``
  (Organization Configuration, also only in Organization Management).
* ``Exchange.ManageAsAppV2`` alone does not work for InvokeCommand (ExchangeOnlineManagement 3.9.2
  fails with V2 only); V2 is for the Admin API v2.0 (🔶).

The table of cmdlets per command is this tool's own (what each command really sends).
"""

from __future__ import annotations

from dataclasses import dataclass

# Directory role template ids (the ``wids`` claim).
EXCHANGE_ADMIN = "29232cdf-9323-42fd-ade2-1d097af3e4de"
EXCHANGE_RECIPIENT_ADMIN = "31392ffb-586c-42d1-9346-e59415a2cc4e"
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"

MANAGE_AS_APP = "Exchange.ManageAsApp"
MANAGE_AS_APP_V2 = "Exchange.ManageAsAppV2"

V2_ONLY = (
    f"only {MANAGE_AS_APP_V2} is consented: that permission is for the Exchange Admin API v2.0, and the "
    f"InvokeCommand endpoint this tool uses refuses it (the ExchangeOnlineManagement module fails the same way)"
)
V2_ONLY_FIX = (
    f"in the provisioning app's registration add Office 365 Exchange Online > {MANAGE_AS_APP} (Application) "
    f"and grant admin consent; keep {MANAGE_AS_APP_V2} if other tools use it"
)


@dataclass(frozen=True)
class CommandNeed:
    """A group of commands, the cmdlets they send, and the directory roles that cover them."""

    name: str
    commands: str
    cmdlets: tuple[str, ...]
    roles: frozenset[str]
    role_text: str


GRANTS = CommandNeed(
    "grants",
    "onboard/offboard/bulk with --trustee ACCOUNT, audit",
    ("Get-CASMailbox", "Get-TransportConfig", "Get-MailboxPermission", "Add-MailboxPermission",
     "Remove-MailboxPermission", "Get-RecipientPermission", "Add-RecipientPermission", "Remove-RecipientPermission"),
    frozenset({EXCHANGE_RECIPIENT_ADMIN, EXCHANGE_ADMIN, GLOBAL_ADMIN}),
    "Exchange Recipient Administrator (role Mail Recipients)",
)
ESJ_APP = CommandNeed(
    "esj-app",
    "onboard --trustee-app (first time: registers the service principal), --scope-esj-app, migrate",
    ("Get-ServicePrincipal", "New-ServicePrincipal", "Get-ManagementScope", "New-ManagementScope",
     "Set-ManagementScope", "Get-ManagementRoleAssignment", "New-ManagementRoleAssignment",
     "Test-ServicePrincipalAuthorization"),
    frozenset({EXCHANGE_ADMIN, GLOBAL_ADMIN}),
    "Exchange Administrator (Role Management)",
)
EWS_ALLOW = CommandNeed(
    "ews-allow",
    "ews allow (EwsAllowedAppIDs)",
    ("Get-OrganizationConfig", "Set-OrganizationConfig"),
    frozenset({EXCHANGE_ADMIN, GLOBAL_ADMIN}),
    "Exchange Administrator (Organization Configuration)",
)
NEEDS = (GRANTS, ESJ_APP, EWS_ALLOW)


def role_advice(wids: set[str]) -> tuple[str, str | None]:
    """What the directory roles in the token allow, command by command, and the least-privilege
    advice (None when the roles are already the least that covers grants)."""
    covered = [n for n in NEEDS if n.roles & wids]
    missing = [n for n in NEEDS if not n.roles & wids]
    parts = []
    if covered:
        parts.append("covers " + "; ".join(n.commands for n in covered))
    if missing:
        parts.append("not " + "; ".join(f"{n.commands} (needs {n.role_text})" for n in missing))
    text = ", ".join(parts)
    advice: str | None = None
    if GLOBAL_ADMIN in wids:
        advice = (
            "Global Administrator is far more than this tool needs: assign Exchange Recipient Administrator for "
            "grants, and Exchange Administrator only while registering or scoping the ESJ app"
        )
    elif EXCHANGE_ADMIN in wids and EXCHANGE_RECIPIENT_ADMIN not in wids:
        advice = (
            "for grants alone, Exchange Recipient Administrator is enough (least privilege; or the Mail Recipients "
            "role of the Recipient Management role group); keep Exchange Administrator only for registering or "
            "scoping the ESJ app (--trustee-app the first time, --scope-esj-app, migrate) and for ews allow"
        )
    return text, advice


def cmdlet_gaps(exported: frozenset[str]) -> dict[str, list[str]]:
    """Per command group, the cmdlets it sends that Exchange does not export to the app."""
    names = {c.lower() for c in exported}
    return {n.name: [c for c in n.cmdlets if c.lower() not in names] for n in NEEDS}
