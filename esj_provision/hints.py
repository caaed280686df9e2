"""Fix-it texts that more than one part gives: the same problem gets the same advice, whether
Exchange refused a call, doctor found the gap, or an organisation-level write failed."""

from __future__ import annotations

# The provisioning app lacks an Exchange admin role (Exchange answered 403 to an admin cmdlet).
EXCHANGE_ROLE = (
    "in Entra ID > Roles and administrators, assign Exchange Administrator (or Exchange Recipient "
    "Administrator, which covers mailbox and Send As grants) to the provisioning app's service "
    "principal (its enterprise application); a new role can take a while to reach Exchange"
)

# The provisioning app's token holds no Exchange.ManageAsApp (Exchange answered 401).
EXCHANGE_CONSENT = (
    "in the app registration add API permission Office 365 Exchange Online > Exchange.ManageAsApp "
    "(Application) and grant admin consent; check that the token is for this tenant and cloud"
)

# Organisation-level cmdlets need Role Management (Organization Management role group), which
# Exchange Recipient Administrator does not include (reference §3, requirements).
ORG_ROLE = (
    "this cmdlet needs Exchange's Role Management role: assign Exchange Administrator to the provisioning "
    "app's service principal in Entra ID > Roles and administrators (Exchange Recipient Administrator is "
    "enough for mailbox grants, not for service principals, scopes and role assignments)"
)
