"""Onboarding and offboarding one shared mailbox: preflight, plan, apply, verify.

* **Preflight** (read-only) gathers every problem at once: the mailbox must be a *shared* mailbox,
  the trustee must exist, be enabled and mail-enabled; warnings for a shared mailbox that can
  still sign in and for SMTP AUTH switched off where ESJ sends over SMTP.
* **Plan**: each delegation is ``present``, ``absent`` or ``unknown``; a read that failed is
  never taken for ``absent``.
* **Apply** only what is needed, journalling each write before it is sent. A write whose answer
  was lost (timeout, 5xx) is never repeated blindly: the state is read again first.
* **App trustees** (:class:`~esj_provision.models.AppTrustee`): ESJ signs in as its app, so Full Access goes to the app's
  Exchange service principal, registered first when missing (with the enterprise application's
  object id) and never "repaired" when registered with the wrong one. No Send As for an app.
* **Verify** by reading back. Exchange can take an hour or two before ESJ can use a new grant;
  "granted, pending propagation" is success.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import (
    AccessDeniedError,
    AppLookupError,
    AuthError,
    EsjProvisionError,
    MailboxNotEnabledForRestError,
    NotFoundError,
)
from ..esj.request import esj_request_for
from ..microsoft.exchange import holds
from ..models import AppTrustee, DirectoryUser, Outbound, Outcome, Right, State, Trustee, UserTrustee
from .journal import Entry, Journal
from .request import OnboardRequest

if TYPE_CHECKING:
    from ..clouds import Cloud
    from ..esj.options import EsjRequest
    from ..microsoft.graph import LookupResult
    from ..microsoft.session import Session
    from .esj_app import AppIdentity
    from .ews_policy import EwsVerdict
    from .writes import Step

class Mode(str, Enum):
    """What a plan is for: grant (onboard), revoke (offboard), or only read and compare (audit)."""

    ONBOARD = "onboard"
    OFFBOARD = "offboard"
    AUDIT = "audit"

    def __str__(self) -> str:
        return self.value
PROPAGATION_NOTE = (
    "Exchange can take up to about an hour or two before a new delegation works for ESJ: "
    "'granted, pending propagation' is not a failure. Re-run this command or `esj-provision audit` "
    "later to check; a re-run changes nothing."
)


@dataclass
class Finding:
    level: Literal["error", "warning", "info"]
    code: str
    message: str
    hint: str | None = None


@dataclass
class Delegation:
    right: Right
    desired: State  # PRESENT for onboard, ABSENT for offboard
    current: State = State.UNKNOWN
    error: str | None = None  # why current is UNKNOWN
    outcome: Outcome | None = None
    request_id: str | None = None
    verified: State | None = None

    @property
    def action(self) -> str:
        if self.current is State.UNKNOWN:
            return "unknown"
        if self.current is self.desired:
            return "none"
        return "grant" if self.desired is State.PRESENT else "revoke"

    @property
    def op(self) -> str:
        verb = "add" if self.desired is State.PRESENT else "remove"
        return f"{verb}-{'full-access' if self.right is Right.FULL_ACCESS else 'send-as'}"


@dataclass
class Plan:
    mode: Mode
    request: OnboardRequest
    mailbox: DirectoryUser | None = None
    mailbox_purpose: str | None = None
    trustee: DirectoryUser | None = None
    findings: list[Finding] = field(default_factory=list)
    delegations: list[Delegation] = field(default_factory=list)
    dry_run: bool = False
    app: AppIdentity | None = None  # the trustee app (an AppTrustee request)
    sp_step: Step | None = None  # onboard: register the trustee app's Exchange service principal
    ews: EwsVerdict | None = None  # EWS rows: whether the tenant lets the ESJ app use EWS here
    tenant_id: str | None = None  # the tenant as a GUID (Session.tenant_guid), for the ESJ options
    # Written delegations whose read-back is left to the caller (bulk verifies Send As of many
    # rows with one listing): their ``verified`` stays None until it does.
    verify_deferred: list[Delegation] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return any(f.level == "error" for f in self.findings)

    def esj_request(self, cloud: Cloud, esj_client_id: str | None) -> EsjRequest:
        """The ESJ options request for this mailbox: the resolved addresses, the shared mapping."""
        r = self.request
        trustee: Trustee = r.trustee
        if isinstance(r.trustee, UserTrustee) and self.trustee is not None:
            trustee = UserTrustee(self.trustee.address)  # the resolved address; an app stays as given
        return esj_request_for(
            mailbox=self.mailbox.address if self.mailbox else r.mailbox,
            trustee=trustee,
            inbound=r.inbound,
            outbound=r.outbound,
            auto_response=r.auto_response,
            cloud=cloud,
            tenant_id=self.tenant_id,
            esj_client_id=esj_client_id,
        )

    @property
    def failed(self) -> bool:
        step_failed = self.sp_step is not None and self.sp_step.failed
        return self.refused or step_failed or any(d.outcome is not None and d.outcome.bad for d in self.delegations)

    @property
    def mailbox_id(self) -> str:
        """The identity sent to Exchange: the resolved primary address, else what the admin gave."""
        return self.mailbox.address if self.mailbox else self.request.mailbox

    @property
    def trustee_id(self) -> str:
        """The trustee's identity sent to Exchange: the app's service principal, or the user's UPN."""
        match self.request.trustee:
            case AppTrustee(client_id):
                return self.app.exchange_identity if self.app is not None else client_id
            case UserTrustee(address):
                return self.trustee.user_principal_name if self.trustee else address

    def trustee_aliases(self) -> set[str]:
        if self.app is not None:
            return self.app.aliases()
        values = {self.request.trustee.ref}
        if self.trustee:
            values |= {
                v
                for v in (
                    self.trustee.user_principal_name,
                    self.trustee.mail,
                    self.trustee.id,
                    self.trustee.display_name,
                )
                if v
            }
        return {v.lower() for v in values}

    def add(self, level: Literal["error", "warning", "info"], code: str, message: str, hint: str | None = None) -> None:
        self.findings.append(Finding(level, code, message, hint))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "dry_run": self.dry_run,
            "mailbox": self.mailbox_id,
            "trustee": self.trustee_id,
            "trustee_kind": self.request.trustee.kind,
            **({"trustee_app": self.request.trustee.app_id} if self.request.trustee.app_id else {}),
            "service_principal": self.sp_step.to_dict() if self.sp_step is not None else None,
            "inbound": self.request.inbound.value,
            "outbound": self.request.outbound.value,
            "send_as": self.request.send_as,
            "findings": [asdict(f) for f in self.findings],
            "delegations": [
                {
                    "right": d.right.value,
                    "desired": d.desired.value,
                    "current": d.current.value,
                    "action": d.action,
                    "error": d.error,
                    "outcome": d.outcome,
                    "request_id": d.request_id,
                    "verified": d.verified.value if d.verified else None,
                }
                for d in self.delegations
            ],
            **({"ews": self.ews.to_dict()} if self.ews is not None else {}),
            "refused": self.refused,
            "failed": self.failed,
        }


class SendAsSource(Protocol):
    """Where bulk and audit read Send As for many rows at once (:mod:`esj_provision.fleet.listings`)."""

    def covers(self, plan: Plan) -> bool:
        """The row's Send As is read and verified through the source, not per mailbox."""
        ...

    async def send_as_state(self, plan: Plan) -> State | None:
        """PRESENT or ABSENT from the source; None: read it per mailbox."""
        ...


async def gather_all(*aws: Awaitable[Any]) -> list[Any]:
    """Like asyncio.gather, but every sibling finishes before the first error is raised, so no
    request is left running against a client that is about to close."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


# -- preflight ---------------------------------------------------------------------------------


def _lookup_failed(plan: Plan, result: LookupResult | None, code: str, noun: str, ref: str) -> bool:
    """Whether Graph's lookup of the mailbox or the account failed; if so, the finding says how."""
    if result is not None and result.error is None:
        return False
    err = result.error if result else None
    if isinstance(err, NotFoundError):
        plan.add("error", f"{code}-not-found", f"{noun} {ref} was not found in the tenant", "check the address")
    elif err is not None:
        plan.add("error", f"{code}-lookup-failed", f"{noun} {ref}: {err.message}", err.hint)
    return True


def _check_mailbox(plan: Plan, result: LookupResult | None) -> None:
    ref = plan.request.mailbox
    if _lookup_failed(plan, result, "mailbox", "mailbox", ref) or result is None:
        return
    plan.mailbox = result.user
    purpose_error = result.purpose_error
    if isinstance(purpose_error, MailboxNotEnabledForRestError):
        plan.add(
            "error",
            "mailbox-not-rest-enabled",
            f"mailbox {ref} is inactive, soft-deleted, unlicensed or hosted on-premises (MailboxNotEnabledForRESTAPI)",
            "only an Exchange Online shared mailbox can be connected",
        )
        return
    if purpose_error is not None:
        if plan.mode is Mode.ONBOARD:
            plan.add(
                "error",
                "mailbox-purpose-unknown",
                f"cannot tell what kind of mailbox {ref} is: {purpose_error.message}",
                purpose_error.hint,
            )
        return
    plan.mailbox_purpose = result.purpose
    if result.purpose != "shared":
        kind = {"user": "a user mailbox", "room": "a room mailbox", "equipment": "an equipment mailbox"}.get(
            str(result.purpose), f"a {result.purpose} mailbox"
        )
        level: Literal["error", "warning"] = "error" if plan.mode is Mode.ONBOARD else "warning"
        plan.add(
            level,
            "mailbox-not-shared",
            f"{ref} is {kind}, not a shared mailbox",
            "convert it to a shared mailbox in the Exchange admin center, or give the shared mailbox's address",
        )
        return
    if result.user is not None and result.user.account_enabled:
        plan.add(
            "warning",
            "shared-mailbox-can-sign-in",
            f"shared mailbox {ref} can still sign in (its account is enabled)",
            "block sign-in for it in Entra ID (Users → the mailbox → Block sign-in); ESJ never signs in as it",
        )


def _check_trustee(plan: Plan, result: LookupResult | None) -> None:
    ref = plan.request.trustee.ref
    if _lookup_failed(plan, result, "trustee", "account", ref) or result is None:
        return
    plan.trustee = result.user
    user = result.user
    if user is None:
        return
    if user.account_enabled is False:
        level: Literal["error", "warning"] = "error" if plan.mode is Mode.ONBOARD else "warning"
        plan.add(
            level,
            "trustee-disabled",
            f"account {ref} is disabled",
            "enable the account ESJ signs in with, or choose another",
        )
    if not user.mail:
        plan.add(
            "error" if plan.mode is Mode.ONBOARD else "warning",
            "trustee-not-mail-enabled",
            f"account {ref} is not mail-enabled; Exchange can only delegate to mailbox or mail users",
            "give the account a mailbox (or make it a mail user), or choose another",
        )


async def _check_smtp_auth(session: Session, plan: Plan) -> None:
    """SMTP AUTH must be on for the account ESJ authenticates as: smtp-client/user = the trustee,
    or, when ESJ signs in as its app, the shared mailbox itself (XOAUTH2 user= is the mailbox)."""
    if isinstance(plan.request.trustee, AppTrustee):
        who = plan.mailbox_id
        cas_read = session.exchange.get_cas_mailbox(who)
    else:
        # A service account is usually the trustee of every row of a bulk run: read it once per session.
        who = plan.trustee_id
        cas_read = session.trustee_cas_mailbox(who)
    try:
        org, cas = await gather_all(session.transport_config(), cas_read)
    except EsjProvisionError as exc:
        plan.add("warning", "smtp-auth-unknown", f"cannot read the SMTP AUTH settings: {exc.message}", exc.hint)
        return
    if cas.smtp_client_authentication_disabled is True:
        plan.add(
            "warning",
            "smtp-auth-disabled-mailbox",
            f"SMTP AUTH is disabled for {who} (Set-CASMailbox -SmtpClientAuthenticationDisabled $true)",
            f"ESJ sends over SMTP as {who}: run Set-CASMailbox -Identity '{who}' -SmtpClientAuthenticationDisabled $false",
        )
    elif cas.smtp_client_authentication_disabled is None and org.smtp_client_authentication_disabled:
        plan.add(
            "warning",
            "smtp-auth-disabled-tenant",
            f"SMTP AUTH is disabled for the tenant (Set-TransportConfig -SmtpClientAuthenticationDisabled $true) "
            f"and {who} has no override",
            f"enable it for that mailbox only: Set-CASMailbox -Identity '{who}' -SmtpClientAuthenticationDisabled $false",
        )


async def _check_trustee_app(session: Session, plan: Plan) -> None:
    """The app must have an enterprise application here; its Exchange registration, if any, must
    carry that object id. A wrong registration is explained, never changed behind the admin's back."""
    from .esj_app import Registration, cached_app, registration_step

    ref = plan.request.trustee.ref
    try:
        ident = await cached_app(session, ref)
    except AppLookupError as exc:
        plan.add("error", "trustee-app-lookup-failed", f"ESJ app {ref}: {exc.message}", exc.hint)
        return
    except (AccessDeniedError, AuthError):
        raise  # Exchange refuses the app itself: every read would fail, so stop and say so
    except EsjProvisionError as exc:
        plan.add("error", "trustee-app-lookup-failed", f"ESJ app {ref}: {exc.message}", exc.hint)
        return
    plan.app = ident
    if ident.sp is None:
        plan.add(
            "error",
            "trustee-app-not-found",
            f"ESJ app {ref} has no enterprise application (service principal) in this tenant",
            "grant admin consent for the ESJ app in this tenant (its API permissions page), or create its "
            "enterprise application (Entra ID > Enterprise applications); check the client id",
        )
        return
    registration = ident.registration
    if registration.wrong:
        what, fix = ident.mismatch()
        # Offboarding still removes what Exchange holds for that registration; anything else stops.
        level: Literal["error", "warning"] = "warning" if plan.mode is Mode.OFFBOARD else "error"
        plan.add(level, "trustee-app-wrong-object-id", what, fix)
        return
    if registration is Registration.ABSENT:
        if plan.mode is Mode.ONBOARD:
            plan.sp_step = registration_step(ident)
        elif plan.mode is Mode.AUDIT:
            plan.add(
                "warning",
                "trustee-app-not-registered",
                f"ESJ app {ident.name} ({ident.app_id}) is not registered in Exchange (no service principal): "
                "it cannot hold Full Access",
                f"run esj-provision onboard {plan.request.mailbox} --trustee-app {ident.app_id} ...",
            )


async def _lookups(session: Session, refs: list[str]) -> dict[str, LookupResult]:
    """The Graph lookups of one request and, meanwhile, the Exchange token every later step needs:
    it depends on nothing they return, so asking for it after them would add a round trip to
    Entra ID. A failure of that early token request is left for the first Exchange call to report."""
    tokens, http = session.tokens, session.http
    await tokens.get(http.graph.scope)  # first alone, so the sign-in is set up once

    async def exchange_token() -> None:
        with contextlib.suppress(Exception):
            await tokens.get(http.exchange.scope)

    found, _ = await gather_all(session.graph.lookup_many(refs, with_purpose=True), exchange_token())
    return found


async def preflight(
    session: Session,
    request: OnboardRequest,
    *,
    mode: Mode | str = Mode.ONBOARD,
    desired: State | None = None,
    lookups: dict[str, LookupResult] | None = None,
    send_as: SendAsSource | None = None,
) -> Plan:
    """Read-only checks and, with ``desired``, the plan: every problem is reported together in
    ``plan.findings``. The SMTP AUTH check and the delegation reads do not depend on each other,
    so they go out concurrently, after the (batched) Graph lookups. ``send_as`` (bulk, audit)
    answers Send As from an organisation-wide listing instead of a read per mailbox."""
    mode = Mode(mode)
    plan = Plan(mode=mode, request=request)
    match request.trustee:
        case AppTrustee():
            # The app is not a directory user: only the mailbox goes to the batched user lookups.
            if lookups is None or request.mailbox not in lookups:
                lookups = await _lookups(session, [request.mailbox])
            _check_mailbox(plan, lookups.get(request.mailbox))
            await _check_trustee_app(session, plan)
        case UserTrustee(address):
            if lookups is None:
                lookups = await _lookups(session, [request.mailbox, address])
            _check_mailbox(plan, lookups.get(request.mailbox))
            _check_trustee(plan, lookups.get(address))
    if isinstance(request.trustee, AppTrustee) and mode is Mode.ONBOARD:
        plan.add(
            "info",
            "no-send-as-app",
            "Send As is not granted to an app: when ESJ signs in as its app it sends with the app's own "
            "permission (SMTP.SendAsApp for SMTP, Mail.Send for GRAPH), not a mailbox Send As grant",
        )
    elif mode is Mode.ONBOARD and not request.send_as:
        plan.add(
            "info",
            "no-send-as",
            "Send As is not granted (--no-send-as): ESJ can read the mailbox, but Exchange will refuse mail "
            "sent FROM the shared address unless Send As or Send on Behalf is granted another way",
        )
    if desired is not None:
        rights = [Right.FULL_ACCESS]
        if request.trustee.needs_send_as(desired is State.ABSENT or request.send_as):
            rights.append(Right.SEND_AS)
        plan.delegations = [Delegation(right=r, desired=desired) for r in rights]
    if plan.refused:
        return plan  # nothing more to learn that would change the answer
    checks: list[Awaitable[Any]] = []
    if mode is not Mode.OFFBOARD and request.outbound is Outbound.SMTP and (plan.trustee is not None or plan.app is not None):
        checks.append(_check_smtp_auth(session, plan))
    if mode != "offboard":
        from .ews_policy import check_ews

        checks.append(check_ews(session, plan))
    reads = [
        _read_send_as(session, plan, send_as)
        if send_as is not None and d.right is Right.SEND_AS
        else read_state(session, plan, d.right)
        for d in plan.delegations
    ]
    results = await gather_all(*reads, *checks)
    for d, (state, error) in zip(plan.delegations, results[: len(reads)]):
        d.current, d.error = state, error
    return plan


# -- plan --------------------------------------------------------------------------------------


async def _read_send_as(session: Session, plan: Plan, source: SendAsSource) -> tuple[State, str | None]:
    state = await source.send_as_state(plan)
    if state is None:
        return await read_state(session, plan, Right.SEND_AS)
    return state, None


async def read_state(session: Session, plan: Plan, right: Right) -> tuple[State, str | None]:
    """Whether the trustee holds ``right`` on the mailbox; UNKNOWN (with the error) if unreadable."""
    is_app = isinstance(plan.request.trustee, AppTrustee)
    if is_app and (plan.app is None or plan.app.exo is None):
        # Not registered in Exchange: nothing there can name it, so it holds nothing.
        return State.ABSENT, None
    try:
        if is_app:
            # Every row, matched on every alias: how Exchange resolves a service principal given
            # as -User is not confirmed, and a mailbox has at most 500 entries.
            rows = await session.exchange.get_mailbox_permissions(plan.mailbox_id)
            present = holds(rows, plan.trustee_aliases(), right.value)
        elif right is Right.FULL_ACCESS:
            rows = await session.exchange.get_mailbox_permissions(plan.mailbox_id, user=plan.trustee_id)
            present = holds(rows, plan.trustee_aliases())
        else:
            rrows = await session.exchange.get_recipient_permissions(plan.mailbox_id, trustee=plan.trustee_id)
            present = holds(rrows, plan.trustee_aliases())
    except NotFoundError as exc:
        # Get-MailboxPermission -User for a trustee without any entry can answer "not found" on some
        # tenants; only the mailbox itself missing is a real error, and preflight caught that.
        if plan.trustee and plan.trustee_id.lower() in exc.message.lower():
            return State.ABSENT, None
        return State.UNKNOWN, exc.message
    except (AccessDeniedError, AuthError):
        raise  # the app itself lacks a permission or role: every read would fail, so stop and say so
    except EsjProvisionError as exc:
        return State.UNKNOWN, exc.message
    return (State.PRESENT if present else State.ABSENT), None


# -- apply and verify --------------------------------------------------------------------------


async def _write(session: Session, plan: Plan, d: Delegation) -> Any:
    ex = session.exchange
    mbx, who = plan.mailbox_id, plan.trustee_id
    if d.right is Right.FULL_ACCESS:
        if d.desired is State.PRESENT:
            return await ex.add_mailbox_permission(mbx, who)
        return await ex.remove_mailbox_permission(mbx, who)
    if d.desired is State.PRESENT:
        return await ex.add_recipient_permission(mbx, who)
    return await ex.remove_recipient_permission(mbx, who)


async def apply_delegation(session: Session, plan: Plan, d: Delegation, journal: Journal) -> None:
    """Send one delegation through the one write loop (:func:`.writes.send`)."""
    from .writes import send

    async def read_back() -> tuple[bool | None, str | None]:
        state, error = await read_state(session, plan, d.right)
        return (None if state is State.UNKNOWN else state is d.desired), error

    adding = d.desired is State.PRESENT
    sent = await send(
        session.http,
        journal,
        Entry(d.op, plan.mailbox_id, plan.trustee_id),
        lambda: _write(session, plan, d),
        read_back,
        done=Outcome.APPLIED if adding else Outcome.REMOVED,
        already=Outcome.ALREADY_PRESENT if adding else Outcome.ALREADY_ABSENT,
    )
    d.outcome, d.request_id = sent.outcome, sent.request_id
    if sent.error is not None:
        d.error = sent.error


async def _register_trustee_app(session: Session, plan: Plan, journal: Journal) -> bool:
    """Register the trustee app's Exchange service principal; False (grants marked) if that failed."""
    from .esj_app import ensure_registered

    step = plan.sp_step
    assert step is not None and plan.app is not None
    await ensure_registered(session, plan.app, step, journal)
    if not step.failed:
        return True
    for d in plan.delegations:
        if d.action == "grant":
            d.outcome = Outcome.FAILED
            d.error = "not attempted: the app's service principal could not be registered in Exchange"
    return False


async def apply(session: Session, plan: Plan, journal: Journal | None) -> Plan:
    """Write only what the plan says is needed. The writes are independent (each is journalled
    and reconciled on its own), so they go out together, after the trustee app's registration."""
    if plan.sp_step is not None and plan.sp_step.action == "create":
        assert journal is not None, "a write needs a journal"
        if not await _register_trustee_app(session, plan, journal):
            return plan
    elif plan.sp_step is not None and plan.sp_step.action == "none":
        plan.sp_step.outcome = Outcome.ALREADY_PRESENT
    writes = []
    for d in plan.delegations:
        if d.action in {"grant", "revoke"}:
            assert journal is not None, "a write needs a journal"
            writes.append(apply_delegation(session, plan, d, journal))
        elif d.action == "none":
            d.outcome = Outcome.ALREADY_PRESENT if d.desired is State.PRESENT else Outcome.ALREADY_ABSENT
        else:
            d.outcome = Outcome.UNKNOWN  # never write on a state we could not read
    await gather_all(*writes)
    return plan


async def verify(session: Session, plan: Plan, send_as: SendAsSource | None = None) -> Plan:
    """Read back every delegation that was written; Send As covered by ``send_as`` is left to
    the caller (``plan.verify_deferred``), who verifies many rows with one listing."""
    written = [d for d in plan.delegations if d.outcome is not None and d.outcome.changed]
    if send_as is not None and send_as.covers(plan):
        plan.verify_deferred = [d for d in written if d.right is Right.SEND_AS]
        written = [d for d in written if d.right is not Right.SEND_AS]
    states = await gather_all(*(read_state(session, plan, d.right) for d in written))
    for d, (state, error) in zip(written, states):
        d.verified = state
        if state is State.UNKNOWN:
            d.error = error
        elif state is not d.desired:
            d.outcome = Outcome.FAILED
            d.error = f"read back {state.value} after the write; Exchange did not keep the change"
    for d in plan.delegations:
        if d.outcome is not None and d.outcome.already:
            d.verified = d.current if d.current is not State.UNKNOWN else d.verified
    return plan


async def run(
    session: Session,
    request: OnboardRequest,
    *,
    mode: Mode | str,
    dry_run: bool,
    journal: Journal | None,
    lookups: dict[str, LookupResult] | None = None,
    send_as: SendAsSource | None = None,
) -> Plan:
    """The whole job for one mailbox. ``dry_run`` makes no write call at all."""
    mode = Mode(mode)
    if mode is Mode.AUDIT:
        raise ValueError("run() writes: audit plans come from preflight()")
    desired = State.PRESENT if mode is Mode.ONBOARD else State.ABSENT
    plan = await preflight(session, request, mode=mode, desired=desired, lookups=lookups, send_as=send_as)
    plan.dry_run = dry_run
    plan.tenant_id = await session.tenant_guid()  # the token preflight signed in with: no new call
    if dry_run or plan.refused:
        return plan
    writes = any(d.action in {"grant", "revoke"} for d in plan.delegations) or (
        plan.sp_step is not None and plan.sp_step.action == "create"
    )
    if writes and journal is None:
        raise EsjProvisionError("internal: a write needs a journal")
    await apply(session, plan, journal)
    if writes:
        await verify(session, plan, send_as)
    return plan
