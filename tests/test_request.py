"""Request validation in one place: onboard's flags and a manifest's rows follow the same rules,
and say the same words (provision/request.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from esj_provision.errors import ManifestError, UsageError
from esj_provision.fleet.manifest import validate
from esj_provision.models import AppTrustee, Inbound, Outbound, UserTrustee
from esj_provision.provision.request import OnboardRequest, esj_client_id_for, scope_app_for

APP = "9b1c7a52-1111-4222-8333-444455556666"
OTHER = "0a0a0a0a-0000-4000-8000-000000000000"


def flags_error(mailbox: str, trustee: str, inbound: str, outbound: str) -> str:
    with pytest.raises(UsageError) as caught:
        OnboardRequest.create(mailbox=mailbox, trustee=UserTrustee.parse(trustee), inbound=inbound,
                              outbound=outbound)
    return caught.value.message


def row_problems(tmp_path: Path, row: str) -> list[str]:
    path = tmp_path / "m.csv"
    path.write_text("mailbox,trustee,inbound,outbound\n" + row + "\n", encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        validate(path)
    return [text for _, text in caught.value.problems]


@pytest.mark.parametrize(
    "mailbox, trustee, inbound, outbound",
    [
        ("q@contoso.com", "Q@contoso.com", "imap", "smtp"),  # the trustee is the mailbox itself
        ("q@contoso.com", "svc@contoso.com", "pop3", "smtp"),
        ("q@contoso.com", "svc@contoso.com", "imap", "fax"),
    ],
)
def test_flags_and_manifest_rows_refuse_alike_in_the_same_words(
    tmp_path: Path, mailbox: str, trustee: str, inbound: str, outbound: str
) -> None:
    message = flags_error(mailbox, trustee, inbound, outbound)
    problems = row_problems(tmp_path, f"{mailbox},{trustee},{inbound},{outbound}")
    assert len(problems) == 1 and problems[0].startswith(message)


def test_send_as_is_never_asked_for_an_app_trustee() -> None:
    app = OnboardRequest.create(mailbox="q@contoso.com", trustee=AppTrustee.parse(APP.upper()),
                                inbound="imap", outbound="smtp", send_as=True)
    user = OnboardRequest.create(mailbox="q@contoso.com", trustee=UserTrustee.parse("svc@contoso.com"),
                                 inbound="imap", outbound="smtp", send_as=True)
    assert (app.send_as, app.trustee) == (False, AppTrustee(APP)) and user.send_as is True


def test_scope_esj_app_needs_graph() -> None:
    imap = OnboardRequest("q@contoso.com", UserTrustee("svc@contoso.com"), Inbound.IMAP, Outbound.SMTP)
    graph = OnboardRequest("q@contoso.com", UserTrustee("svc@contoso.com"), Inbound.GRAPH, Outbound.SMTP)
    with pytest.raises(UsageError, match="needs --inbound graph"):
        scope_app_for(imap, APP)
    assert scope_app_for(graph, APP.upper()) == APP and scope_app_for(imap, None) is None


def test_the_esj_client_id_names_the_one_app_esj_signs_in_as() -> None:
    by_app = OnboardRequest("q@contoso.com", AppTrustee(APP), Inbound.GRAPH, Outbound.GRAPH)
    by_user = OnboardRequest("q@contoso.com", UserTrustee("svc@contoso.com"), Inbound.GRAPH, Outbound.GRAPH)
    assert esj_client_id_for(by_app, None, None) == APP
    assert esj_client_id_for(by_user, APP, None) == APP
    assert esj_client_id_for(by_user, None, OTHER) == OTHER
    with pytest.raises(UsageError, match="is not the ESJ app"):
        esj_client_id_for(by_app, None, OTHER)
    with pytest.raises(UsageError, match="name different apps"):
        esj_client_id_for(by_app, OTHER, None)


def test_the_trustee_type_carries_the_app_rules() -> None:
    """One typed trustee instead of a trustee_is_app boolean checked at each site: an app has no
    address for the options, its client id is the ESJ app's, and it never gets Send As."""
    from esj_provision.clouds import CLOUDS
    from esj_provision.esj.request import esj_request_for
    from esj_provision.models import AppTrustee, UserTrustee

    app, user = AppTrustee(APP), UserTrustee("svc@contoso.com")
    assert (app.needs_send_as(True), user.needs_send_as(True), user.needs_send_as(False)) == (False, True, False)
    common = dict(mailbox="q@contoso.com", inbound=Inbound.IMAP, outbound=Outbound.SMTP, auto_response=False,
                  cloud=CLOUDS["global"], tenant_id="contoso.onmicrosoft.com")
    as_app = esj_request_for(trustee=app, esj_client_id=None, **common)  # type: ignore[arg-type]
    as_user = esj_request_for(trustee=user, esj_client_id=None, **common)  # type: ignore[arg-type]
    assert (as_app.trustee, as_app.client_id) == (None, APP)
    assert (as_user.trustee, as_user.client_id) == ("svc@contoso.com", None)
    assert as_app.tenant_id is None  # a domain is never passed on as the tenant id: a GUID or a placeholder
