"""EWS in Exchange Online: blocked by default since 1 October 2026, switched off on 1 April 2027.

Where an admin chooses EWS (``emit``, ``onboard``, ``bulk``, inbound or outbound), the tool says
both dates and the way out (GRAPH, ``esj-provision migrate``); from 1 April 2027 it refuses EWS.

Sources (shared/reference/updates-2026-11.md §1): the October 2026 block and the allow-list are
Microsoft's ("Control access to EWS in Exchange"); the 1 April 2027 switch-off is the Exchange
Team's blog (posts 4492361 and 4529471) seen through secondary summaries.

Pure and cheap: ``emit`` imports it and must stay free of network packages.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone

from ..errors import UsageError
from ..models import Inbound, Outbound

EWS_BLOCKED_FROM = date(2026, 10, 1)
EWS_OFF_FROM = date(2027, 4, 1)

# For tests and rehearsals only: pretend today is this date (YYYY-MM-DD). Documented in the README.
TODAY_ENV = "ESJ_PROVISION_TODAY"

WAY_OUT = (
    "move to GRAPH: `esj-provision migrate MANIFEST --to graph` plans and applies it (the ESJ app's Graph "
    "Mail.ReadWrite/Mail.Send confined to its mailboxes, and new options)"
)


def today() -> date:
    """Today in UTC, or the date in ESJ_PROVISION_TODAY (a test override)."""
    raw = os.environ.get(TODAY_ENV, "").strip()
    if raw:
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise UsageError(
                f"{TODAY_ENV}={raw!r} is not a date", hint=f"use YYYY-MM-DD, or unset {TODAY_ENV} (it is for testing)"
            ) from None
    return datetime.now(timezone.utc).date()


def ews_directions(inbound: Inbound | None, outbound: Outbound | None) -> list[str]:
    """Which of inbound/outbound use EWS, for messages."""
    return [d for d, used in (("inbound", inbound is Inbound.EWS), ("outbound", outbound is Outbound.EWS)) if used]


def uses_ews(inbound: Inbound | None, outbound: Outbound | None) -> bool:
    return bool(ews_directions(inbound, outbound))


def ews_warning(inbound: Inbound | None, outbound: Outbound | None, *, on: date | None = None) -> str | None:
    """The warning to show when EWS is chosen, or None when it is not.

    From 1 April 2027 it raises :class:`UsageError` instead: an EWS setup cannot work any more,
    and writing one (grants, options) would only hide that."""
    where = ews_directions(inbound, outbound)
    if not where:
        return None
    return sunset_warning(f"EWS ({' and '.join(where)})", on=on)


def sunset_warning(what: str, *, on: date | None = None) -> str:
    """``what`` (e.g. "EWS (inbound)", "3 EWS rows") is warned about, or refused from 1 April 2027."""
    now = on or today()
    if now >= EWS_OFF_FROM:
        raise UsageError(
            f"{what} cannot be chosen: Exchange Online switched EWS off on {EWS_OFF_FROM:%-d %B %Y}",
            hint=WAY_OUT,
        )
    days = (EWS_OFF_FROM - now).days
    blocked = (
        f"since {EWS_BLOCKED_FROM:%-d %B %Y} Exchange Online blocks EWS unless the organisation enables it and "
        "allow-lists the ESJ app (EwsAllowedAppIDs)"
        if now >= EWS_BLOCKED_FROM
        else f"from {EWS_BLOCKED_FROM:%-d %B %Y} Exchange Online blocks EWS unless the organisation enables it and "
        "allow-lists the ESJ app (EwsAllowedAppIDs)"
    )
    return (
        f"{what}: {blocked}; on {EWS_OFF_FROM:%-d %B %Y} (in {days} days) EWS is switched off for good. "
        f"Way out: {WAY_OUT}."
    )
