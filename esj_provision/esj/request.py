"""The one mapping from what was provisioned (a mailbox, its trustee, the protocols) to the request
for ESJ options: ``onboard`` and ``bulk`` both use it, so their options cannot drift apart.

Two rules live here and nowhere else:

* an **app trustee** (ESJ signs in as its app) has no address: the options the guide fixes to the
  delegate's address get placeholders, and the app's client id is the ESJ app's client id;
* the **tenant** goes into the options as a GUID only. A tenant given as its domain
  (``contoso.onmicrosoft.com``, which sign-in accepts) is replaced by the GUID the tenant's own
  token names (its ``tid`` claim, see :func:`tenant_guid`), or else left as a placeholder.
"""

from __future__ import annotations

from ..clouds import Cloud
from ..models import Inbound, Outbound, Trustee, is_guid
from .options import EsjRequest


def tenant_guid(configured: str | None, token_tid: object = None) -> str | None:
    """The tenant as a GUID: the configured value when it is one, else the token's ``tid`` claim
    when that is one, else None (a placeholder in the options). Lowercased."""
    for value in (configured, token_tid):
        if isinstance(value, str) and is_guid(value.strip()):
            return value.strip().lower()
    return None


def esj_request_for(
    *,
    mailbox: str,
    trustee: Trustee,
    inbound: Inbound,
    outbound: Outbound,
    auto_response: bool,
    cloud: Cloud,
    tenant_id: str | None,
    esj_client_id: str | None,
    section_index: int = 0,
) -> EsjRequest:
    """The ESJ options request for one provisioned mailbox; ``tenant_id`` as :func:`tenant_guid` gives it."""
    return EsjRequest(
        mailbox=mailbox,
        trustee=trustee.options_address,
        inbound=inbound,
        outbound=outbound,
        auto_response=auto_response,
        cloud=cloud,
        client_id=esj_client_id or trustee.app_id,
        tenant_id=tenant_guid(tenant_id),
        section_index=section_index,
    )
