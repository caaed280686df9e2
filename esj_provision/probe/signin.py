"""ESJ's own sign-in: client credentials for the ESJ app, or the service account's password (ROPC).

The token form is posted directly (``POST {authority}/{tenant}/oauth2/v2.0/token``) rather than
through msal/azure-identity, for two reasons: msal builds its user-realm lookup URL without the
authority's port before a password sign-in (probe-protocols.md, addendum), and Microsoft says to
branch on the error body's ``error`` and ``error_codes``, never on its description (§3, [AADSTS]),
which msal's exceptions flatten into text. A fresh token is asked for on every call: ``--wait``
must see a grant's effect with a token issued after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..microsoft.credentials import Token

if TYPE_CHECKING:
    import httpx


@dataclass
class SignInFailure:
    """Entra ID's refusal, explained: who is at fault (``app`` or ``account``), reason and fix."""

    error: str
    codes: tuple[int, ...]
    who: str  # app | account | tenant | scope
    reason: str
    fix: str


@dataclass
class SignIn:
    token: Token | None = field(default=None, repr=False)
    failure: SignInFailure | None = None

    @property
    def ok(self) -> bool:
        return self.token is not None


async def client_credentials(
    client: httpx.AsyncClient, authority: str, tenant: str, client_id: str, secret: str, scope: str
) -> SignIn:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope}
    return await _post(client, authority, tenant, form, who=f"the ESJ app {client_id}", account=None)


async def password(
    client: httpx.AsyncClient,
    authority: str,
    tenant: str,
    client_id: str,
    username: str,
    password_value: str,
    scope: str,
    secret: str | None = None,
) -> SignIn:
    """ROPC (§3). ESJ most likely signs in as a public client (❓ inferred, §3): no secret is sent
    unless one is given, and AADSTS7000218 then says the app does not allow public client flows."""
    form = {
        "grant_type": "password",
        "client_id": client_id,
        "username": username,
        "password": password_value,
        "scope": scope,
    }
    if secret:
        form["client_secret"] = secret
    return await _post(client, authority, tenant, form, who=f"the ESJ app {client_id}", account=username)


async def _post(
    client: httpx.AsyncClient, authority: str, tenant: str, form: dict[str, str], *, who: str, account: str | None
) -> SignIn:
    import time

    import httpx

    url = f"{authority.rstrip('/')}/{tenant}/oauth2/v2.0/token"
    try:
        r = await client.post(url, data=form)
    except httpx.HTTPError as exc:
        return SignIn(failure=SignInFailure("", (), "tenant", f"cannot reach Entra ID at {authority}: "
                                            f"{exc.__class__.__name__}", "check the network, "
                                            "AZURE_AUTHORITY_HOST and ESJ_PROVISION_CA_BUNDLE"))
    except Exception as exc:  # the shared transport's TransientError after its retries
        return SignIn(failure=SignInFailure("", (), "tenant", f"cannot reach Entra ID at {authority}: {exc}",
                                            "check the network and AZURE_AUTHORITY_HOST"))
    try:
        data: dict[str, Any] = r.json()
    except ValueError:
        data = {}
    if r.status_code == 200 and isinstance(data.get("access_token"), str):
        now = time.time()
        return SignIn(token=Token.issued(data["access_token"], now + float(data.get("expires_in") or 3599), now))
    return SignIn(failure=explain(data, r.status_code, who=who, account=account, scope=form["scope"]))


def explain(data: dict[str, Any], status: int, *, who: str, account: str | None, scope: str) -> SignInFailure:
    """Entra ID's error body turned into reason and fix, by ``error`` and ``error_codes`` only."""
    error = str(data.get("error") or f"HTTP {status}")
    raw = data.get("error_codes") or []
    codes = tuple(int(c) for c in raw if isinstance(c, int) or (isinstance(c, str) and c.isdigit()))
    shown = f"{error}" + (f" (AADSTS{', AADSTS'.join(str(c) for c in codes)})" if codes else "")
    acct = account or "the account"
    table: list[tuple[set[int], str, str, str]] = [
        ({50126}, "account", f"wrong password, or no such user: {acct}",
         "check the service account's password (ESJ_PROVISION_ESJ_PASSWORD or --password-file) and "
         "pop-client/service-account, smtp-client/user"),
        ({50076, 50079}, "account", f"{acct} must use multifactor authentication, which a password sign-in "
         "(ROPC, what ESJ does) cannot do", f"exclude {acct} from MFA / the Conditional Access policy for this "
         "app, or move ESJ to GRAPH (client credentials)"),
        ({50053}, "account", f"{acct} is locked (too many failed sign-ins)", "wait for the lockout to end, "
         "then check the password ESJ is configured with"),
        ({50055}, "account", f"the password of {acct} has expired", "set a new password and put it in ESJ"),
        ({50057}, "account", f"the account {acct} is disabled", f"enable {acct} (accountEnabled) in Entra ID"),
        ({53003, 530035}, "account", f"a Conditional Access policy or security defaults block {acct}",
         "exclude the service account from the blocking policy, or move ESJ to GRAPH"),
        ({65001}, "app", f"{who} has no consent for the scope {scope}", "grant admin consent for the "
         "ESJ app's permissions in Entra ID (Enterprise applications > Permissions)"),
        ({7000218}, "app", f"{who} does not allow public client flows, and ESJ sends no secret with the "
         "account's password", "in the app registration, Authentication > Allow public client flows: Yes"),
        ({7000215}, "app", f"the client secret of {who} is wrong", "check ESJ_PROVISION_ESJ_CLIENT_SECRET (or "
         "--secret-file) and the options' password"),
        ({7000222}, "app", f"the client secret of {who} has expired", "create a new secret in the app "
         "registration and put it in ESJ"),
        ({700016}, "app", f"{who} does not exist in this tenant", "check client-id and directory-id in the options"),
        ({90002}, "tenant", "the tenant in directory-id does not exist", "check directory-id and the cloud"),
        ({70011, 1002012}, "scope", f"the scope {scope} is invalid", "check the options' scope against ESJ's "
         "documented value for this protocol"),
    ]
    for known, whose, reason, fix in table:
        if known & set(codes):
            return SignInFailure(error, codes, whose, f"Entra ID refused the sign-in ({shown}): {reason}", fix)
    if error == "invalid_client":
        return SignInFailure(error, codes, "app", f"Entra ID refused {who} ({shown})",
                             "check client-id and the ESJ app secret")
    if error == "invalid_grant":
        return SignInFailure(error, codes, "account", f"Entra ID refused the sign-in of {acct} ({shown})",
                             "check the account's password and whether it may sign in with a password")
    if error in ("invalid_scope", "invalid_resource"):
        return SignInFailure(error, codes, "scope", f"the scope {scope} was refused ({shown})",
                             "check the options' scope")
    return SignInFailure(error, codes, "app", f"Entra ID refused the sign-in ({shown})",
                         "check client-id, directory-id and the credentials")
