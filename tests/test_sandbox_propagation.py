"""Grant propagation on a fake clock: a grant counts from when it was made, not from when it is
first checked; removals are immediate; a per-mailbox refresh leaves other mailboxes alone."""

from __future__ import annotations

from esj_provision.sandbox.mail import Propagation
from esj_provision.sandbox.tenant import Tenant, mutate

SUPPORT, SALES, SVC = "support@contoso.com", "sales@contoso.com", "esj-svc@contoso.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[Tenant, Propagation, Clock, str, str, str]:
    t, clock = Tenant(), Clock()
    prop = Propagation(60, clock)
    prop.settle(t)
    support, sales, svc = (t.find_recipient(x) for x in (SUPPORT, SALES, SVC))
    assert support and sales and svc
    return t, prop, clock, support.id, sales.id, svc.sid


def test_a_grant_counts_from_when_it_was_made() -> None:
    t, prop, clock, support, _, svc = setup()
    key = ("FullAccess", support, svc)
    assert prop.state(key) == "absent"
    mutate(t, {"op": "add-grant", "mailbox": SUPPORT, "trustee": SVC})
    prop.refresh(t, {support})
    clock.now += 59
    prop.refresh(t, set())  # a later check does not restart the clock
    assert prop.state(key) == "pending" and prop.pending() == [key]
    clock.now += 1
    assert prop.state(key) == "effective" and prop.pending() == []


def test_removal_is_immediate_and_a_regrant_starts_over() -> None:
    t, prop, clock, support, _, svc = setup()
    key = ("SendAs", support, svc)
    mutate(t, {"op": "add-grant", "mailbox": SUPPORT, "trustee": SVC, "right": "SendAs"})
    prop.refresh(t, {support})
    clock.now += 3600
    assert prop.state(key) == "effective"
    mutate(t, {"op": "remove-grant", "mailbox": SUPPORT, "trustee": SVC, "right": "SendAs"})
    prop.refresh(t, {support})
    assert prop.state(key) == "absent"
    mutate(t, {"op": "add-grant", "mailbox": SUPPORT, "trustee": SVC, "right": "SendAs"})
    prop.refresh(t, {support})
    assert prop.state(key) == "pending"


def test_a_per_mailbox_refresh_leaves_other_mailboxes_and_a_full_one_finds_all() -> None:
    t, prop, _, support, sales, svc = setup()
    mutate(t, {"op": "add-grant", "mailbox": SALES, "trustee": SVC})
    prop.refresh(t, {support})  # told about another mailbox: sales@ is not rescanned
    assert prop.state(("FullAccess", sales, svc)) == "absent"
    prop.refresh(t)
    assert prop.state(("FullAccess", sales, svc)) == "pending"
    prop.settle(t)
    assert prop.state(("FullAccess", sales, svc)) == "effective"


def test_organisation_grants_and_a_zero_delay() -> None:
    t, prop, *_ = setup()
    prop.delay = 0
    mutate(t, {"op": "set-ews-allowed-apps", "apps": ["11111111-2222-3333-4444-555555555555"]})
    prop.refresh(t, set())
    assert prop.state(("EwsAllowedAppId", "11111111-2222-3333-4444-555555555555")) == "effective"
