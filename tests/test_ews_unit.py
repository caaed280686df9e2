"""EWS's end (issue 13), without a tenant: the dates and the test override, the policy states,
the least-privilege table, and the Exchange client's requests for the EWS policy and the
EXOModuleFile listing, checked on the wire with respx."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import httpx
import pytest
import respx
from fakes import FakeTokens, run
from fakes import settings as _settings
from msft_shapes import INVOKE_OK, TENANT

from esj_provision.errors import UsageError
from esj_provision.esj.ews_sunset import TODAY_ENV, ews_warning, sunset_warning, today
from esj_provision.microsoft.exchange import ExchangeClient, split_app_ids
from esj_provision.microsoft.http import MicrosoftHttp
from esj_provision.models import CasMailbox, EwsOrgPolicy, Inbound, Outbound
from esj_provision.provision.ews_policy import EwsState, evaluate
from esj_provision.provision.privilege import (
    EXCHANGE_ADMIN,
    EXCHANGE_RECIPIENT_ADMIN,
    GLOBAL_ADMIN,
    cmdlet_gaps,
    role_advice,
)

EXO = "https://outlook.office365.com"
URL = f"{EXO}/adminapi/beta/{TENANT}/InvokeCommand"
MODULE_URL = f"{EXO}/adminapi/v1.0/{TENANT}/EXOModuleFile"
APP = "2db3fd6d-47fc-4750-ace0-99b31d4ba2de"
OTHER = "9e5f94bc-e8a4-4e73-b8be-63364c29d753"
MBX = "support@contoso.com"


def client(router: respx.Router) -> ExchangeClient:
    async def no_sleep(_: float) -> None:
        return None

    http = MicrosoftHttp(
        _settings(TENANT), FakeTokens(),  # type: ignore[arg-type]
        inner=httpx.MockTransport(router.async_handler), sleep=no_sleep,
    )
    return ExchangeClient(http, TENANT)


def ok(rows: list[dict[str, Any]]) -> dict[str, Any]:
    body = json.loads(json.dumps(INVOKE_OK))
    body["value"] = rows
    body["@adminapi.warnings"] = []
    return body


# -- dates ---------------------------------------------------------------------------------------


def test_no_ews_no_warning() -> None:
    assert ews_warning(Inbound.IMAP, Outbound.GRAPH, on=date(2027, 6, 1)) is None


def test_warning_before_october_names_both_dates_and_the_way_out() -> None:
    text = ews_warning(Inbound.EWS, Outbound.SMTP, on=date(2026, 9, 1))
    assert text is not None
    assert "EWS (inbound)" in text and "from 1 October 2026" in text and "1 April 2027" in text
    assert "GRAPH" in text and "migrate" in text


def test_warning_after_october_says_since_and_counts_days() -> None:
    text = ews_warning(Inbound.GRAPH, Outbound.EWS, on=date(2026, 12, 1))
    assert text is not None and "EWS (outbound)" in text and "since 1 October 2026" in text
    assert "in 121 days" in text


@pytest.mark.parametrize("day", [date(2027, 4, 1), date(2028, 1, 1)])
def test_from_first_of_april_ews_is_refused(day: date) -> None:
    with pytest.raises(UsageError) as err:
        ews_warning(Inbound.EWS, Outbound.EWS, on=day)
    assert "switched EWS off on 1 April 2027" in err.value.message and "migrate" in (err.value.hint or "")
    with pytest.raises(UsageError):
        sunset_warning("EWS in 3 row(s)", on=day)


def test_today_override_and_its_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TODAY_ENV, "2027-04-01")
    assert today() == date(2027, 4, 1)
    monkeypatch.setenv(TODAY_ENV, "1st of April")
    with pytest.raises(UsageError, match="is not a date"):
        today()
    monkeypatch.delenv(TODAY_ENV)
    assert today() >= date(2026, 11, 1)  # the real clock


# -- the policy states ---------------------------------------------------------------------------


def cas(enabled: bool | None) -> CasMailbox:
    return CasMailbox(MBX, None, ews_enabled=enabled)


DEC = date(2026, 12, 1)


@pytest.mark.parametrize(
    ("org", "ids", "mailbox", "want"),
    [
        (False, (APP,), True, EwsState.BLOCKED_BY_ORGANISATION),
        (None, (APP,), True, EwsState.BLOCKED_BY_ORGANISATION),  # unset: blocked since October 2026
        (True, (), True, EwsState.NOT_ALLOW_LISTED),
        (True, (OTHER,), True, EwsState.NOT_ALLOW_LISTED),
        (True, (OTHER, APP), False, EwsState.DISABLED_ON_MAILBOX),
        (True, (OTHER, APP), None, EwsState.ALLOWED),
        (True, (OTHER, APP), True, EwsState.ALLOWED),
    ],
)
def test_each_state(org: bool | None, ids: tuple[str, ...], mailbox: bool | None, want: EwsState) -> None:
    verdict = evaluate(EwsOrgPolicy(org, ids), APP, {MBX: cas(mailbox)}, on=DEC)
    assert verdict.state is want, verdict.message
    assert verdict.works is (want is EwsState.ALLOWED)
    if want is not EwsState.ALLOWED:
        assert verdict.fix


def test_unset_before_october_was_allowed() -> None:
    assert evaluate(EwsOrgPolicy(None, (APP,)), APP, {}, on=date(2026, 9, 1)).state is EwsState.ALLOWED


def test_every_reason_is_listed_and_the_first_is_the_state() -> None:
    verdict = evaluate(EwsOrgPolicy(False, ()), APP, {MBX: cas(False)}, on=DEC)
    assert verdict.reasons == [EwsState.BLOCKED_BY_ORGANISATION, EwsState.DISABLED_ON_MAILBOX,
                               EwsState.NOT_ALLOW_LISTED]
    assert "Set-CASMailbox -Identity 'support@contoso.com' -EwsEnabled $true" in (verdict.fix or "")
    assert f"ews allow --esj-app {APP}" in (verdict.fix or "")


def test_service_account_without_app_id_is_unknown_and_says_the_delegated_case_is_unconfirmed() -> None:
    verdict = evaluate(EwsOrgPolicy(True, (OTHER,)), None, {MBX: cas(True)}, service_account=True, on=DEC)
    assert verdict.state is EwsState.UNKNOWN
    assert "not confirmed" in verdict.message and "client id" in verdict.message
    # An empty list blocks every app, whoever it is.
    verdict = evaluate(EwsOrgPolicy(True, ()), None, {}, service_account=True, on=DEC)
    assert verdict.state is EwsState.NOT_ALLOW_LISTED


def test_list_not_returned_is_unknown() -> None:
    verdict = evaluate(EwsOrgPolicy(True, None), APP, {}, on=DEC)
    assert verdict.state is EwsState.UNKNOWN and "not returned" in verdict.message


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ([f"{OTHER},{APP.upper()}"], (OTHER, APP)),  # one comma-joined string in a one-element list
        ([OTHER, APP, OTHER], (OTHER, APP)),
        (f" {OTHER} , ", (OTHER,)),
        (None, ()),
        ([], ()),
    ],
)
def test_split_app_ids(raw: Any, want: tuple[str, ...]) -> None:
    assert split_app_ids(raw) == want


# -- the Exchange client on the wire ------------------------------------------------------------


def test_get_ews_policy_request_and_parsing() -> None:
    router = respx.Router()
    route = router.post(URL).mock(return_value=httpx.Response(200, json=ok(
        [{"Identity": "contoso", "EwsEnabled": True, "EwsAllowedAppIDs": [f"{OTHER},{APP}"]}])))
    policy = run(client(router).get_ews_policy())
    body = json.loads(route.calls[0].request.content)
    assert body == {"CmdletInput": {"CmdletName": "Get-OrganizationConfig",
                                    "Parameters": {"RetrieveEwsOperationAccessPolicy": True}}}
    assert policy == EwsOrgPolicy(True, (OTHER, APP))


def test_get_ews_policy_without_the_property_is_none_not_empty() -> None:
    router = respx.Router()
    router.post(URL).mock(return_value=httpx.Response(200, json=ok([{"EwsEnabled": None}])))
    assert run(client(router).get_ews_policy()) == EwsOrgPolicy(None, None)


def test_set_ews_allowed_app_ids_sends_one_comma_joined_list() -> None:
    router = respx.Router()
    route = router.post(URL).mock(return_value=httpx.Response(200, json=ok([])))
    result = run(client(router).set_ews_allowed_app_ids([OTHER, APP], enable=True))
    request = route.calls[0].request
    assert json.loads(request.content)["CmdletInput"] == {
        "CmdletName": "Set-OrganizationConfig",
        "Parameters": {"EwsEnabled": True, "EwsAllowedAppIDs": f"{OTHER},{APP}"},
    }
    assert request.headers["X-AnchorMailbox"].startswith("UPN:SystemMailbox{")
    assert not result.already_done


def test_exported_cmdlets_request_and_parsing() -> None:
    router = respx.Router()
    route = router.get(MODULE_URL).mock(return_value=httpx.Response(
        200, json={"value": [{"exportedCmdlets": "Get-Mailbox,Add-MailboxPermission, Get-MailboxPermission"}]}))
    got = run(client(router).exported_cmdlets())
    request = route.calls[0].request
    assert request.headers["CommandName"] == "*" and request.url.params["Version"] == "3.9.2"
    assert got == frozenset({"Get-Mailbox", "Add-MailboxPermission", "Get-MailboxPermission"})


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(404, json={"error": {"code": "NotFound", "message": "nope"}}),
        httpx.Response(302, headers={"Location": "https://contoso.outlook.office365.com/adminapi/v1.0/x/EXOModuleFile"}),
        httpx.Response(200, content=b"<xml/>"),
        httpx.Response(200, json={"value": []}),
    ],
)
def test_exported_cmdlets_unavailable_is_none(response: httpx.Response) -> None:
    router = respx.Router()
    router.get(MODULE_URL).mock(return_value=response)
    assert run(client(router).exported_cmdlets()) is None


# -- least privilege -----------------------------------------------------------------------------


def test_recipient_administrator_covers_grants_only() -> None:
    text, advice = role_advice({EXCHANGE_RECIPIENT_ADMIN})
    assert text.startswith("covers onboard/offboard/bulk") and "not onboard --trustee-app" in text
    assert "ews allow" in text and advice is None


def test_exchange_administrator_is_told_the_least_role_for_grants() -> None:
    text, advice = role_advice({EXCHANGE_ADMIN})
    assert "not " not in text
    assert advice is not None and "Exchange Recipient Administrator is enough" in advice
    assert "Mail Recipients" in advice and "--scope-esj-app" in advice


def test_global_administrator_is_far_more() -> None:
    _, advice = role_advice({GLOBAL_ADMIN})
    assert advice is not None and "far more" in advice


def test_cmdlet_gaps_per_command() -> None:
    gaps = cmdlet_gaps(frozenset({"get-casmailbox", "Get-TransportConfig", "Get-MailboxPermission",
                                  "Add-MailboxPermission", "Remove-MailboxPermission", "Get-RecipientPermission",
                                  "Add-RecipientPermission", "Remove-RecipientPermission", "Get-OrganizationConfig"}))
    assert gaps["grants"] == []
    assert "New-ServicePrincipal" in gaps["esj-app"] and gaps["ews-allow"] == ["Set-OrganizationConfig"]
