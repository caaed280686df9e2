"""Property-based tests: CFG round trip, and any input either works or fails with our own errors."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from esj_provision.cli import app
from esj_provision.clouds import CLOUDS
from esj_provision.errors import ConfigError, UsageError
from esj_provision.esj.cfg import parse_cfg, render_cfg, render_json
from esj_provision.esj.options import EsjOption, EsjOptionSet, EsjRequest, Profile, build_options, parse_profile
from esj_provision.models import Inbound, Outbound

NAMES = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,30}\Z")
# Printable text: no control characters (tab aside) and no Unicode line/paragraph separators,
# i.e. everything a one-line CFG value can hold. Leading/trailing spaces, '=', '[', '#' included.
PRINTABLE = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
        st.sampled_from(["\t", "=", "[", "]", "#", ";", " ", "é", "東"]),
    ),
    max_size=40,
)
ANY_TEXT = st.text(max_size=40)


def unprintable(c: str) -> bool:
    return (ord(c) < 32 and c != "\t") or c in "\x7f\x85\u2028\u2029"


def option_set(sections: dict[str, dict[str, str]]) -> EsjOptionSet:
    options = tuple(
        EsjOption(section, name, value, True, "profile")
        for section, values in sections.items()
        for name, value in values.items()
    )
    return EsjOptionSet(
        mailbox="a@b.com", trustee="c@b.com", inbound=Inbound.IMAP, outbound=Outbound.SMTP,
        auto_response=False, cloud="global", inbound_section="pop-client", outbound_section="smtp-client",
        options=options,
    )


@given(st.dictionaries(NAMES, st.dictionaries(NAMES, PRINTABLE, max_size=8), max_size=4))
def test_cfg_round_trip_for_printable_values(sections: dict[str, dict[str, str]]) -> None:
    sections = {k: v for k, v in sections.items() if v}  # a section with no option leaves no trace
    text = render_cfg([option_set(sections)])
    assert parse_cfg(text) == sections
    assert text.encode("utf-8").decode("utf-8") == text


@given(st.dictionaries(NAMES, ANY_TEXT, min_size=1, max_size=6))
def test_cfg_any_value_round_trips_or_is_refused(values: dict[str, str]) -> None:
    try:
        text = render_cfg([option_set({"pop-client": values})])
    except UsageError as exc:
        assert "line break or control character" in str(exc)
        assert any(unprintable(c) for v in values.values() for c in v)
        return
    assert parse_cfg(text) == {"pop-client": values}


@given(st.text(max_size=200))
def test_parse_cfg_any_text_parses_or_config_error(text: str) -> None:
    try:
        parsed = parse_cfg(text)
    except ConfigError as exc:
        assert "line " in str(exc)
        return
    assert all(isinstance(v, str) for section in parsed.values() for v in section.values())


@given(st.text(max_size=300))
def test_parse_profile_any_text_loads_or_config_error(text: str) -> None:
    try:
        profile = parse_profile(text, "fuzz.ini")
    except ConfigError as exc:
        assert str(exc).startswith("profile fuzz.ini:")
        return
    # Whatever loaded must be usable.
    build_options(EsjRequest("a@b.com", "c@b.com", Inbound.EWS, Outbound.GRAPH), profile)


@settings(max_examples=200, deadline=None)  # about rules, not speed: no flake under load
@given(
    mailbox=st.one_of(ANY_TEXT, st.emails()),
    trustee=st.one_of(st.none(), ANY_TEXT, st.emails()),
    client_id=st.one_of(st.none(), ANY_TEXT, st.uuids().map(str)),
    tenant_id=st.one_of(st.none(), ANY_TEXT, st.uuids().map(str)),
    # A space makes the secret impossible to find inside an address or an option name, so seeing
    # it in a note can only mean a leak.
    secret=st.one_of(st.none(), ANY_TEXT, PRINTABLE.map(lambda t: f"sec ret{t}")),
    index=st.integers(min_value=-3, max_value=50),
    inbound=st.sampled_from(list(Inbound)),
    outbound=st.sampled_from(list(Outbound)),
    cloud=st.sampled_from(list(CLOUDS.values())),
    auto=st.booleans(),
    extras=st.lists(st.tuples(ANY_TEXT, ANY_TEXT), max_size=3),
)
def test_build_any_request_works_or_raises_our_errors(
    mailbox: str, trustee: str | None, client_id: str | None, tenant_id: str | None, secret: str | None,
    index: int, inbound: Inbound, outbound: Outbound, cloud: object, auto: bool, extras: list[tuple[str, str]],
) -> None:
    request = EsjRequest(
        mailbox=mailbox, trustee=trustee, inbound=inbound, outbound=outbound, auto_response=auto,
        cloud=cloud, client_id=client_id, tenant_id=tenant_id, secret=secret, section_index=index,  # type: ignore[arg-type]
    )
    profile = Profile(extras={"pop-client": tuple(extras)})
    try:
        s = build_options(request, profile)
    except (UsageError, ConfigError):
        return
    # Whatever builds renders, and the CFG reads back to the very same options.
    assert parse_cfg(render_cfg([s])) == s.as_dict()
    render_json(s)
    # Guide invariants hold for every accepted input.
    pop, smtp = s.as_dict()[s.inbound_section], s.as_dict()[s.outbound_section]
    assert pop["mailbox"] == s.mailbox
    assert (pop["service-account"] == "") == (inbound is Inbound.GRAPH)
    assert ("allow-delegate" in smtp) == (outbound is Outbound.GRAPH)
    if secret is not None:
        assert s.contains_secret == (inbound is Inbound.GRAPH or outbound is Outbound.GRAPH)
        if secret.startswith("sec ret"):
            assert secret.strip() not in " ".join(s.notes)


# No deadline: one CLI invocation can take longer than hypothesis' 200 ms on a loaded machine, and
# this test is about exit statuses, not speed (a deadline made it flaky under load).
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mailbox=ANY_TEXT, inbound=ANY_TEXT, cloud=ANY_TEXT)
def test_cli_any_input_exits_0_or_2_never_crashes(mailbox: str, inbound: str, cloud: str) -> None:
    args = ["emit", mailbox, "--trustee", "svc@contoso.com", "--inbound", inbound, "--outbound", "smtp",
            "--cloud", cloud]
    result = CliRunner().invoke(app, args, env={"ESJ_PROVISION_PROFILE": None})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert result.stdout == ""
