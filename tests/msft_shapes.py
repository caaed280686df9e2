"""Microsoft's wire formats, copied from ../shared/reference/exchange-and-graph.md.

These are the bodies the respx tests replay and the sandbox's responses are checked against
(``shape_of``), so that neither our client nor the sandbox drifts into a shape only the other
accepts. Keep them as Microsoft sends them; do not "tidy" them.
"""

from __future__ import annotations

from typing import Any

TENANT = "contoso.onmicrosoft.com"

# §1 Tokens
TOKEN_OK: dict[str, Any] = {"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ0eXAiOiJKV1Qi.e30.sig"}
TOKEN_ERROR: dict[str, Any] = {
    "error": "invalid_scope",
    "error_description": "AADSTS70011: The provided request must include a 'scope' input parameter.",
    "error_codes": [70011],
    "timestamp": "2026-01-01 00:00:00Z",
    "trace_id": "00000000-0000-0000-0000-000000000001",
    "correlation_id": "00000000-0000-0000-0000-000000000002",
}

# §3 InvokeCommand success (captured)
INVOKE_OK: dict[str, Any] = {
    "@odata.context": "https://outlook.office.com/adminapi/beta/contoso.onmicrosoft.com/$metadata#Collection(Exchange.GenericHashTable)",
    "adminapi.warnings@odata.type": "#Collection(String)",
    "@adminapi.warnings": [],
    "value": [{"Languages@odata.type": "#Collection(String)", "Languages": ["en-US"]}],
}

# §3 InvokeCommand error
INVOKE_NOT_FOUND: dict[str, Any] = {
    "error": {
        "code": "NotFound",
        "message": "Error executing cmdlet",
        "details": [
            {
                "code": "Client",
                "target": "",
                "message": "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|"
                "The operation couldn't be performed because object 'x@contoso.onmicrosoft.com' couldn't be "
                "found on 'AM0PR01A001.PROD.OUTLOOK.COM'.",
            }
        ],
        "innererror": {
            "message": "Error executing cmdlet",
            "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
            "internalexception": {
                "message": "The operation couldn't be performed because object 'x@contoso.onmicrosoft.com' "
                "couldn't be found on 'AM0PR01A001.PROD.OUTLOOK.COM'.",
                "type": "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeCmdletExecutionException",
            },
        },
    },
    "adminapi.warnings@odata.type": "#Collection(String)",
    "@adminapi.warnings": [],
}

# §2 Admin API access denied (test fixture)
INVOKE_ACCESS_DENIED: dict[str, Any] = {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}

# §4.2 Get-MailboxPermission live rows
MAILBOX_PERMISSION_ROWS: list[dict[str, Any]] = [
    {
        "User": "NT AUTHORITY\\SELF",
        "AccessRights": ["FullAccess, ReadPermission"],
        "Deny": False,
        "IsInherited": False,
        "UserSid": "S-1-5-10",
        "PrimarySmtpAddress": "",
    },
    {
        "User": "rob@m7kni.io",
        "AccessRights": ["FullAccess"],
        "Deny": False,
        "IsInherited": False,
        "UserSid": "S-1-5-21-1-2-3-1001",
        "PrimarySmtpAddress": "",
    },
]

# §4.4 Get-RecipientPermission live row
RECIPIENT_PERMISSION_ROW: dict[str, Any] = {
    "Trustee": "rob@m7kni.io",
    "AccessRights": ["SendAs"],
    "AccessControlType": "Allow",
    "TrusteeSidString": "S-1-5-21-1-2-3-1001",
    "TrusteeWithPrimarySmtpAddress": "",
}

# §4.5 idempotency warnings
WARNING_ALREADY_PRESENT = (
    "The appropriate access control entry is already present on the object "
    '"support@contoso.onmicrosoft.com" for account "esj-svc@contoso.onmicrosoft.com".'
)
WARNING_ACE_MISSING = (
    'Can\'t remove the access control entry on the object "support@contoso.onmicrosoft.com" for account '
    '"esj-svc@contoso.onmicrosoft.com" because the ACE doesn\'t exist on the object.'
)

# §5.1 Graph user
GRAPH_USER: dict[str, Any] = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id,userPrincipalName,mail,displayName,accountEnabled)/$entity",
    "id": "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
    "userPrincipalName": "support@contoso.onmicrosoft.com",
    "mail": "support@contoso.com",
    "displayName": "Customer Support",
    "accountEnabled": False,
}

# §5.2 userPurpose, both forms
USER_PURPOSE_STRING: dict[str, Any] = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('support%40contoso.com')/mailboxSettings/userPurpose",
    "value": "shared",
}
USER_PURPOSE_OBJECT: dict[str, Any] = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('support%40contoso.com')/mailboxSettings",
    "userPurpose": {"value": "user"},
}

# §5.2 / §5.5 Graph errors
GRAPH_NOT_FOUND: dict[str, Any] = {
    "error": {
        "code": "Request_ResourceNotFound",
        "message": "Resource 'nobody@contoso.com' does not exist or one of its queried reference-property objects are not present.",
        "innerError": {
            "date": "2026-01-01T00:00:00",
            "request-id": "5e4a1c3e-0000-4000-8000-000000000001",
            "client-request-id": "5e4a1c3e-0000-4000-8000-000000000002",
        },
    }
}
GRAPH_REST_DISABLED: dict[str, Any] = {
    "error": {
        "code": "MailboxNotEnabledForRESTAPI",
        "message": "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        "innerError": {
            "date": "2026-01-01T00:00:00",
            "request-id": "5e4a1c3e-0000-4000-8000-000000000003",
            "client-request-id": "5e4a1c3e-0000-4000-8000-000000000004",
        },
    }
}
GRAPH_ACCESS_DENIED: dict[str, Any] = {
    "error": {
        "code": "ErrorAccessDenied",
        "message": "Access to OData is disabled.",
        "innerError": {
            "date": "2026-01-01T00:00:00",
            "request-id": "5e4a1c3e-0000-4000-8000-000000000005",
            "client-request-id": "5e4a1c3e-0000-4000-8000-000000000006",
        },
    }
}

# §5.4 JSON batching response
GRAPH_BATCH_RESPONSE: dict[str, Any] = {
    "responses": [
        {"id": "1", "status": 200, "headers": {"Content-Type": "application/json"}, "body": GRAPH_USER},
        {"id": "2", "status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"code": "TooManyRequests", "message": "Too many requests"}}},
    ]
}


def shape_of(value: Any) -> Any:
    """The structure of a JSON value: dict keys (recursively) and element shapes, not the values.

    Used to check that a sandbox response has every key Microsoft's example has. Lists collapse to
    the shape of their first element.
    """
    if isinstance(value, dict):
        return {k: shape_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape_of(value[0])] if value else []
    return type(value).__name__


def has_shape(actual: Any, example: Any) -> list[str]:
    """Every key path of ``example`` missing (or of another JSON type) in ``actual``; [] when it fits."""
    problems: list[str] = []

    def walk(a: Any, e: Any, path: str) -> None:
        if isinstance(e, dict):
            if not isinstance(a, dict):
                problems.append(f"{path or '<root>'}: expected object, got {type(a).__name__}")
                return
            for k, v in e.items():
                if k not in a:
                    problems.append(f"{path}/{k}: missing")
                else:
                    walk(a[k], v, f"{path}/{k}")
        elif isinstance(e, list):
            if not isinstance(a, list):
                problems.append(f"{path}: expected array, got {type(a).__name__}")
            elif e and a:
                walk(a[0], e[0], f"{path}[0]")
        elif e is None or a is None:
            return
        elif isinstance(e, bool) != isinstance(a, bool) or (
            isinstance(e, (int, float)) != isinstance(a, (int, float))
        ) or (isinstance(e, str) != isinstance(a, str)):
            problems.append(f"{path}: expected {type(e).__name__}, got {type(a).__name__}")

    walk(actual, example, "")
    return problems

# Get-ManagementScope row. The filter property is RecipientFilter (Exchange's ManagementScope class
# lists DatabaseFilter, Exclusive, RecipientFilter, RecipientRoot, ScopeRestrictionType,
# ServerFilter; Microsoft365DSC's EXOManagementScope reads $scope.RecipientFilter).
# RecipientRestrictionFilter is only the parameter of New-/Set-ManagementScope.
MANAGEMENT_SCOPE_ROW: dict[str, Any] = {
    "Name": "esj-2db3fd6d-47fc-4750-ace0-99b31d4ba2de",
    "Identity": "esj-2db3fd6d-47fc-4750-ace0-99b31d4ba2de",
    "RecipientRoot": None,
    "RecipientFilter": "PrimarySmtpAddress -eq 'support@contoso.com'",
    "ScopeRestrictionType": "RecipientScope",
    "Exclusive": False,
}

# Get-RecipientPermission rows: property names as a 2026 app-only capture of the cmdlet lists them
# (Identity, Trustee, AccessControlType, AccessRights, IsInherited, InheritanceType,
# TrusteeSidString, PrimarySmtpAddress, TrusteeWithPrimarySmtpAddress); values invented.
SEND_AS_ROWS_OF_TRUSTEE: list[dict[str, Any]] = [
    {
        "Identity": "support",
        "Trustee": "esj-svc@contoso.com",
        "AccessControlType": "Allow",
        "AccessRights@odata.type": "#Collection(String)",
        "AccessRights": ["SendAs"],
        "IsInherited": False,
        "InheritanceType": "None",
        "TrusteeSidString": "S-1-5-21-1-2-3-1105",
        "TrusteeWithPrimarySmtpAddress": "",
    },
    {
        "Identity": "returns",
        "Trustee": "esj-svc@contoso.com",
        "AccessControlType": "Allow",
        "AccessRights@odata.type": "#Collection(String)",
        "AccessRights": ["SendAs"],
        "IsInherited": False,
        "InheritanceType": "None",
        "TrusteeSidString": "S-1-5-21-1-2-3-1105",
        "TrusteeWithPrimarySmtpAddress": "",
    },
]

# Get-Mailbox row, reduced to names of the Get-EXOMailbox "Minimum" property set (Microsoft's
# cmdlet-property-sets page), which Get-Mailbox's output carries too.
MAILBOX_ROW: dict[str, Any] = {
    "Identity": "support",
    "Name": "support",
    "Alias": "support",
    "DisplayName": "Customer Support",
    "UserPrincipalName": "support@contoso.onmicrosoft.com",
    "PrimarySmtpAddress": "support@contoso.com",
    "RecipientType": "UserMailbox",
    "RecipientTypeDetails": "SharedMailbox",
    "ExternalDirectoryObjectId": "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
    "Guid": "5b2c0c2e-3e0b-5e4a-9a57-7c3c0b8a0b11",
    "EmailAddresses@odata.type": "#Collection(String)",
    "EmailAddresses": ["SMTP:support@contoso.com", "smtp:support@contoso.onmicrosoft.com"],
}
