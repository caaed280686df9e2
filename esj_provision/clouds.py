"""Microsoft national clouds: authority, Graph and Exchange hosts, token scopes, mail protocol hosts.

Source: ../shared/reference/exchange-and-graph.md §7 and esj-options.md §4. Values marked
``confirmed=False`` in :data:`UNCONFIRMED_FIELDS` are not published by Microsoft for that cloud
and can be overridden (endpoints by environment/flags, ESJ literals by the profile file).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Cloud:
    name: str
    description: str
    authority_host: str  # Entra ID, https://host (azure-identity appends the tenant)
    graph_endpoint: str  # Graph root, without /v1.0
    exchange_endpoint: str  # Exchange admin API base (InvokeCommand), also the token audience
    # What ESJ itself connects to (emitted as options), per esj-options.md §4.
    imap_host: str
    smtp_host: str
    ews_url: str
    esj_outlook_scope: str  # ESJ `scope` for IMAP/EWS/SMTP XOAUTH2
    # Fields whose value for this cloud is not published by Microsoft or Genesys.
    unconfirmed: frozenset[str] = frozenset()

    @property
    def graph_scope(self) -> str:
        return f"{self.graph_endpoint}/.default"

    @property
    def exchange_scope(self) -> str:
        return f"{self.exchange_endpoint}/.default"


_MAIL_UNCONFIRMED = frozenset({"imap_host", "smtp_host", "ews_url", "esj_outlook_scope"})

CLOUDS: dict[str, Cloud] = {
    "global": Cloud(
        name="global",
        description="Worldwide and GCC",
        authority_host="https://login.microsoftonline.com",
        graph_endpoint="https://graph.microsoft.com",
        exchange_endpoint="https://outlook.office365.com",
        imap_host="outlook.office365.com",
        smtp_host="smtp.office365.com",
        ews_url="https://outlook.office365.com/EWS/Exchange.asmx",
        # Genesys' documented default for pop-client/scope [C: EmSMailAzure].
        esj_outlook_scope="https://outlook.office.com/.default",
    ),
    "usgov-high": Cloud(
        name="usgov-high",
        description="US Government GCC High",
        authority_host="https://login.microsoftonline.us",
        graph_endpoint="https://graph.microsoft.us",
        exchange_endpoint="https://outlook.office365.us",
        imap_host="outlook.office365.us",
        smtp_host="smtp.office365.us",
        ews_url="https://outlook.office365.us/EWS/Exchange.asmx",
        esj_outlook_scope="https://outlook.office365.us/.default",
        unconfirmed=_MAIL_UNCONFIRMED,
    ),
    "usgov-dod": Cloud(
        name="usgov-dod",
        description="US Government DoD",
        authority_host="https://login.microsoftonline.us",
        graph_endpoint="https://dod-graph.microsoft.us",
        exchange_endpoint="https://outlook-dod.office365.us",
        imap_host="outlook-dod.office365.us",
        smtp_host="smtp-dod.office365.us",
        ews_url="https://outlook-dod.office365.us/EWS/Exchange.asmx",
        esj_outlook_scope="https://outlook-dod.office365.us/.default",
        unconfirmed=_MAIL_UNCONFIRMED,
    ),
    "china": Cloud(
        name="china",
        description="21Vianet (China)",
        authority_host="https://login.chinacloudapi.cn",
        graph_endpoint="https://microsoftgraph.chinacloudapi.cn",
        # The Admin API docs say outlook.office365.cn; the EXO module uses partner.outlook.cn.
        # The module's host is the one InvokeCommand is known to answer on; override if needed.
        exchange_endpoint="https://partner.outlook.cn",
        imap_host="partner.outlook.cn",
        smtp_host="smtp.partner.outlook.cn",
        ews_url="https://partner.outlook.cn/EWS/Exchange.asmx",
        esj_outlook_scope="https://partner.outlook.cn/.default",
        unconfirmed=_MAIL_UNCONFIRMED | {"exchange_endpoint"},
    ),
}

CLOUD_NAMES = tuple(CLOUDS)


def get_cloud(name: str) -> Cloud:
    key = (name or "global").strip().lower()
    if key in {"germany", "o365germanycloud"}:
        raise UsageError(
            "Microsoft Cloud Deutschland was closed on 29 October 2021; its tenants moved to the global cloud.",
            hint="use --cloud global",
        )
    try:
        return CLOUDS[key]
    except KeyError:
        raise UsageError(
            f"unknown cloud {name!r}",
            hint=f"choose one of: {', '.join(CLOUD_NAMES)}",
        ) from None
