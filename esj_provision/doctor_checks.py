"""doctor's checks for least privilege and for EWS (issue 13), kept beside doctor.py.

* ``least-privilege``: what the provisioning app's directory roles cover, command by command, and
  the least role that works (Exchange Recipient Administrator for grants).
* ``exported-cmdlets``: where the tenant allows it, whether Exchange exports to the app the
  cmdlets each command sends. The listing (EXOModuleFile) is undocumented: optional, and when it is
  not available the directory role is the guide.
* ``ews-sunset`` and ``esj-ews-policy`` (EWS chosen): the end-of-EWS dates, and whether the
  organisation lets the ESJ app use EWS (EwsEnabled, EwsAllowedAppIDs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import EsjProvisionError, UsageError
from .esj.ews_sunset import ews_warning
from .models import Inbound, Outbound
from .provision.ews_policy import EwsState, read_verdict
from .provision.privilege import NEEDS, cmdlet_gaps, role_advice

if TYPE_CHECKING:
    from .doctor import DoctorReport, Status
    from .microsoft.session import Session

UNDOCUMENTED = "EXOModuleFile listing: undocumented endpoint, unconfirmed"


async def least_privilege(session: Session, report: DoctorReport, wids: set[str], exchange_ok: bool) -> None:
    text, advice = role_advice(wids)
    if wids & {w for n in NEEDS for w in n.roles}:
        report.add("least-privilege", "warning" if advice and "Global" in advice else "ok",
                   f"the directory role {text}", advice)
    if not exchange_ok:
        return  # Exchange refuses the app: there is nothing to list
    exported = await session.exchange.exported_cmdlets()
    report.context["exported_cmdlets"] = sorted(exported) if exported is not None else None
    if exported is None:
        report.add("exported-cmdlets", "warning",
                   f"cannot list the cmdlets Exchange exports to the app ({UNDOCUMENTED}); judge by the "
                   "directory role above", None)
        return
    gaps = cmdlet_gaps(exported)
    report.context["cmdlet_gaps"] = gaps
    lines = []
    short = []
    for need in NEEDS:
        missing = gaps[need.name]
        if missing:
            short.append(need)
            lines.append(f"{need.commands}: not exported: {', '.join(missing)}")
        else:
            lines.append(f"{need.commands}: all exported")
    grants_short = any(n.name == "grants" for n in short)
    report.add(
        "exported-cmdlets",
        "missing" if grants_short else ("warning" if short else "ok"),
        "; ".join(lines) + f" ({UNDOCUMENTED})",
        "; ".join(f"for {n.commands}: {n.role_text}" for n in short) or None,
    )


async def ews_checks(
    session: Session,
    report: DoctorReport,
    esj_app: str | None,
    inbound: Inbound | None,
    outbound: Outbound | None,
    exchange_ok: bool,
) -> None:
    group = "ESJ app"
    try:
        sunset = ews_warning(inbound, outbound)
    except UsageError as exc:
        report.add("ews-sunset", "error", exc.message, exc.hint, group=group)
        return
    report.add("ews-sunset", "warning", sunset or "", None, group=group)
    if not exchange_ok:
        report.add("esj-ews-policy", "error", "cannot read the organisation's EWS policy: Exchange refuses the "
                   "provisioning app (see above)", None, group=group)
        return
    try:
        verdict = await read_verdict(session, esj_app, [], service_account=esj_app is None)
    except EsjProvisionError as exc:
        report.add("esj-ews-policy", "error", f"cannot read the EWS policy: {exc.message}", exc.hint, group=group)
        return
    report.context["ews"] = verdict.to_dict()
    status: Status = "ok" if verdict.works else "warning" if verdict.state is EwsState.UNKNOWN else "missing"
    report.add("esj-ews-policy", status, f"EWS: {verdict.state.value}: {verdict.message}", verdict.fix, group=group)
