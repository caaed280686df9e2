"""What an admin asks for, validated once: the rules shared by ``onboard``'s flags and a
manifest's rows, so a row and the same command line are accepted or refused alike, in the same
words.

Each rule raises :class:`~esj_provision.errors.UsageError` (message and hint); the CLI prints it,
a manifest lists it with the row's line number.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..models import Inbound, Outbound, Trustee, parse_address, parse_guid, parse_inbound, parse_outbound

__all__ = [
    "OnboardRequest",
    "check_not_the_mailbox",
    "esj_client_id_for",
    "parse_protocols",
    "scope_app_for",
    "send_as_for",
]


@dataclass
class OnboardRequest:
    mailbox: str
    # A user account (ESJ signs in with it) or the ESJ app's client id (the delegation goes to its
    # Exchange service principal): each kind knows what it needs (models.UserTrustee/AppTrustee).
    trustee: Trustee
    inbound: Inbound = Inbound.IMAP
    outbound: Outbound = Outbound.SMTP
    send_as: bool = True
    auto_response: bool = False
    # The ESJ app's client id when known (--esj-client-id): what EWS's allow-list is checked for.
    esj_app_id: str | None = None

    @classmethod
    def create(
        cls,
        *,
        mailbox: str,
        trustee: Trustee,
        inbound: str | Inbound,
        outbound: str | Outbound,
        send_as: bool = True,
        auto_response: bool = False,
    ) -> OnboardRequest:
        """A validated request (flags or a manifest row): addresses, protocols, the trustee rules.
        The trustee comes checked from the edge (``UserTrustee.parse``/``AppTrustee.parse``)."""
        mailbox = parse_address(mailbox, "mailbox")
        inbound_p, outbound_p = parse_protocols(inbound, outbound)
        check_not_the_mailbox(mailbox, trustee.ref)
        return cls(
            mailbox=mailbox,
            trustee=trustee,
            inbound=inbound_p,
            outbound=outbound_p,
            send_as=send_as_for(send_as, trustee),
            auto_response=auto_response,
        )


def check_not_the_mailbox(mailbox: str, trustee: str) -> None:
    if mailbox.strip().lower() == trustee.strip().lower():
        raise UsageError("the trustee is the shared mailbox itself", hint="give the account ESJ signs in with")


def parse_protocols(inbound: str | Inbound, outbound: str | Outbound) -> tuple[Inbound, Outbound]:
    """Both protocols, each with the one message for an unknown value (models.parse_*)."""
    i = inbound if isinstance(inbound, Inbound) else parse_inbound(inbound)
    o = outbound if isinstance(outbound, Outbound) else parse_outbound(outbound)
    return i, o


def send_as_for(requested: bool, trustee: Trustee) -> bool:
    """Send As needs a user trustee: an app sends with its own permission (SMTP.SendAsApp,
    Mail.Send), never with a mailbox Send As grant, so for an app it is simply not asked."""
    return trustee.needs_send_as(requested)


def scope_app_for(request: OnboardRequest, scope_esj_app: str | None) -> str | None:
    """``--scope-esj-app`` confines the ESJ app's *Graph* mail access: it needs a GRAPH protocol."""
    if not scope_esj_app:
        return None
    app = parse_guid(scope_esj_app, "--scope-esj-app client id")
    if request.inbound is not Inbound.GRAPH and request.outbound is not Outbound.GRAPH:
        raise UsageError(
            "--scope-esj-app confines the ESJ app's Graph mail access: it needs --inbound graph and/or --outbound graph",
            hint="for IMAP/SMTP/EWS as the app, --trustee-app grants Full Access to the onboarded mailbox only",
        )
    return app


def esj_client_id_for(request: OnboardRequest, scope_app: str | None, esj_client_id: str | None) -> str | None:
    """The ESJ app's client id for the options: given, or the app that is the trustee or is
    scoped. They must all name the same app: the one ESJ signs in as."""
    app_ids = {a for a in (request.trustee.app_id, scope_app) if a}
    given = parse_guid(esj_client_id, "--esj-client-id") if esj_client_id else None
    if given and app_ids and given not in app_ids:
        raise UsageError(
            f"--esj-client-id {given} is not the ESJ app given to --trustee-app/--scope-esj-app",
            hint="they name the same app: the one ESJ signs in as",
        )
    if len(app_ids) > 1:
        raise UsageError("--trustee-app and --scope-esj-app name different apps", hint="ESJ signs in as one app")
    return given or next(iter(app_ids), None)
