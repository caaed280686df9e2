"""Unit tests: the ESJ option rules (esj_options) and the renderers/file writer (output)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from esj_provision.clouds import CLOUDS
from esj_provision.errors import ConfigError, EsjProvisionError, UsageError
from esj_provision.esj.cfg import parse_cfg, render_cfg, render_json
from esj_provision.esj.options import (
    CLOUD_KEYS,
    PLACEHOLDER_CLIENT_ID,
    PLACEHOLDER_SECRET,
    PLACEHOLDER_TENANT_ID,
    PLACEHOLDER_TRUSTEE,
    PROFILE_KEYS,
    SOURCES,
    EsjOption,
    EsjOptionSet,
    EsjRequest,
    Profile,
    build_options,
    load_profile,
    parse_profile,
)
from esj_provision.files import write_output
from esj_provision.models import Inbound, Outbound

MAILBOX = "support@contoso.com"
TRUSTEE = "svc-genesys@contoso.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
TENANT_ID = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"
SECRET = "s3cr3t~Value.With=Signs"
EXAMPLE_PROFILE = Path(__file__).resolve().parent.parent / "examples" / "profile.ini"


def req(inbound: Inbound = Inbound.IMAP, outbound: Outbound = Outbound.SMTP, **kw: object) -> EsjRequest:
    base: dict[str, object] = {"mailbox": MAILBOX, "trustee": TRUSTEE, "inbound": inbound, "outbound": outbound}
    base.update(kw)
    return EsjRequest(**base)  # type: ignore[arg-type]


def opts(option_set: EsjOptionSet, section: str) -> dict[str, str]:
    return option_set.as_dict().get(section, {})


# ---------------------------------------------------------------------------- guide rules


@pytest.mark.parametrize("inbound", [Inbound.IMAP, Inbound.EWS])
def test_imap_ews_service_account_is_the_full_access_account(inbound: Inbound) -> None:
    s = build_options(req(inbound))
    pop = opts(s, "pop-client")
    assert pop["mailbox"] == MAILBOX
    assert pop["service-account"] == TRUSTEE


def test_graph_service_account_is_present_and_empty() -> None:
    s = build_options(req(Inbound.GRAPH))
    pop = opts(s, "pop-client")
    assert "service-account" in pop and pop["service-account"] == ""
    assert pop["mailbox"] == MAILBOX


def test_auto_response_sets_address_and_default_from_to_mailbox() -> None:
    on = opts(build_options(req(auto_response=True)), "pop-client")
    off = opts(build_options(req(auto_response=False)), "pop-client")
    assert on["address"] == on["mailbox"] == MAILBOX
    assert on["default-from-address"] == MAILBOX
    assert "address" not in off and "default-from-address" not in off


@pytest.mark.parametrize("outbound", list(Outbound))
def test_smtp_user_and_allow_delegate(outbound: Outbound) -> None:
    smtp = opts(build_options(req(outbound=outbound)), "smtp-client")
    assert smtp["user"] == TRUSTEE
    if outbound is Outbound.GRAPH:
        assert smtp["allow-delegate"] == "true"
    else:
        assert "allow-delegate" not in smtp


def test_from_address_note_names_mailbox_and_both_ways() -> None:
    notes = " ".join(build_options(req()).notes)
    assert f"shared mailbox {MAILBOX} as its FROM address" in notes
    assert '"E-mail Accounts"' in notes and "Send block" in notes


def test_guide_options_are_confirmed_with_source_guide() -> None:
    s = build_options(req(Inbound.EWS, Outbound.GRAPH, auto_response=True))
    for key in ("mailbox", "service-account", "address", "default-from-address"):
        o = s.get("pop-client", key)
        assert o is not None and o.confirmed and o.source == "guide"
    for key in ("user", "allow-delegate"):
        o = s.get("smtp-client", key)
        assert o is not None and o.confirmed and o.source == "guide"
    assert {o.source for o in s.options} <= set(SOURCES)


# ---------------------------------------------------------------------------- connection options


def test_imap_connection_options() -> None:
    s = build_options(req(Inbound.IMAP))
    pop = opts(s, "pop-client")
    assert pop["type"] == "imap"
    assert pop["server"] == "outlook.office365.com" and pop["port"] == "993"
    assert pop["enable-ssl"] == "true"
    assert pop["mail.imap.auth.mechanisms"] == "XOAUTH2"
    assert pop["scope"] == "https://outlook.office.com/.default"
    assert pop["tenant-authority"] == "https://login.microsoftonline.com"
    assert "folder-path" not in pop
    # Unconfirmed literals are flagged; the guide's and Genesys' documented ones are not.
    assert not s.get("pop-client", "type").confirmed  # type: ignore[union-attr]
    assert not s.get("pop-client", "enable-ssl").confirmed  # type: ignore[union-attr]
    assert s.get("pop-client", "scope").confirmed  # type: ignore[union-attr]


def test_ews_inbound_has_empty_folder_path_and_documented_type() -> None:
    s = build_options(req(Inbound.EWS))
    pop = opts(s, "pop-client")
    assert pop["type"] == "ews" and s.get("pop-client", "type").confirmed  # type: ignore[union-attr]
    assert pop["server"] == "https://outlook.office365.com/EWS/Exchange.asmx"
    assert "folder-path" in pop and pop["folder-path"] == ""
    assert pop["mail.ews.auth.mechanisms"] == "XOAUTH2"


def test_graph_inbound_uses_graph_scope_and_app_secret_placeholder() -> None:
    s = build_options(req(Inbound.GRAPH))
    pop = opts(s, "pop-client")
    assert pop["type"] == "GRAPH" and s.get("pop-client", "type").confirmed  # type: ignore[union-attr]
    assert pop["scope"] == "https://graph.microsoft.com/.default"
    assert pop["grant-type"] == "client_credentials"
    assert pop["password"] == PLACEHOLDER_SECRET
    assert "server" not in pop and "port" not in pop


def test_smtp_outbound_options() -> None:
    s = build_options(req(outbound=Outbound.SMTP))
    smtp = opts(s, "smtp-client")
    assert smtp["server-type"] == "smtp" and not s.get("smtp-client", "server-type").confirmed  # type: ignore[union-attr]
    assert smtp["server"] == "smtp.office365.com" and smtp["port"] == "587"
    assert smtp["enable-authentication"] == "true"
    assert smtp["mail.smtp.auth.mechanisms"] == "XOAUTH2"
    assert smtp["smtp-connection-security"] == "start-tls"
    assert not s.get("smtp-client", "smtp-connection-security").confirmed  # type: ignore[union-attr]


def test_ews_outbound_server_type_is_confirmed() -> None:
    s = build_options(req(outbound=Outbound.EWS))
    o = s.get("smtp-client", "server-type")
    assert o is not None and o.value == "ews" and o.confirmed


def test_password_of_delegated_login_is_a_placeholder_naming_the_account() -> None:
    pop = opts(build_options(req(Inbound.IMAP)), "pop-client")
    assert pop["password"] == f"<set: password of {TRUSTEE}>"
    assert "grant-type" not in pop


# ---------------------------------------------------------------------------- placeholders, secret


def test_placeholders_without_ids_and_values_with_ids() -> None:
    s = build_options(req(Inbound.GRAPH, Outbound.GRAPH))
    for section in ("pop-client", "smtp-client"):
        assert opts(s, section)["client-id"] == PLACEHOLDER_CLIENT_ID
        assert opts(s, section)["directory-id"] == PLACEHOLDER_TENANT_ID
    assert {"pop-client/client-id", "smtp-client/directory-id"} <= {o.key for o in s.placeholders}

    s = build_options(req(Inbound.GRAPH, Outbound.GRAPH, client_id=CLIENT_ID, tenant_id=TENANT_ID))
    for section in ("pop-client", "smtp-client"):
        assert opts(s, section)["client-id"] == CLIENT_ID
        assert opts(s, section)["directory-id"] == TENANT_ID.lower()
    assert not any(o.name in ("client-id", "directory-id") for o in s.placeholders)


def test_secret_only_when_given_and_only_in_password() -> None:
    without = build_options(req(Inbound.GRAPH, Outbound.GRAPH))
    assert not without.contains_secret
    with_secret = build_options(req(Inbound.GRAPH, Outbound.GRAPH, secret=SECRET))
    assert with_secret.contains_secret
    holders = [o for o in with_secret.options if SECRET in o.value]
    assert [o.key for o in holders] == ["pop-client/password", "smtp-client/password"]
    assert all(o.secret and not o.placeholder for o in holders)
    # Never in a note (the smtp-client password is unconfirmed and listed by key only).
    assert SECRET not in " ".join(with_secret.notes)
    assert "smtp-client/password" in " ".join(with_secret.notes)


def test_secret_not_in_request_repr() -> None:
    assert SECRET not in repr(req(secret=SECRET))


def test_unused_secret_gives_a_note_and_stays_out() -> None:
    s = build_options(req(Inbound.IMAP, Outbound.SMTP, secret=SECRET))
    assert not s.contains_secret
    assert any("secret was not used" in n for n in s.notes)


def test_secret_with_line_break_is_refused_without_echo() -> None:
    with pytest.raises(UsageError) as err:
        build_options(req(Inbound.GRAPH, secret="abc\ndef"))
    assert "abc" not in str(err.value)


def test_no_trustee_gives_placeholders_and_note() -> None:
    s = build_options(req(Inbound.EWS, Outbound.GRAPH, trustee=None))
    assert opts(s, "pop-client")["service-account"] == PLACEHOLDER_TRUSTEE
    assert opts(s, "smtp-client")["user"] == PLACEHOLDER_TRUSTEE
    assert any("No account with Full Access" in n for n in s.notes)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"mailbox": "not-an-address"}, "mailbox 'not-an-address'"),
        ({"trustee": "svc@"}, "trustee 'svc@'"),
        ({"trustee": MAILBOX.upper()}, "is the shared mailbox itself"),
        ({"client_id": "abc"}, "ESJ app client id 'abc'"),
        ({"tenant_id": "contoso.com"}, "tenant id 'contoso.com'"),
        ({"section_index": -1}, "section index -1"),
        ({"secret": "  "}, "secret is empty"),
    ],
)
def test_bad_request_is_a_usage_error(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(UsageError) as err:
        build_options(req(**kw))
    assert needle in str(err.value)


# ---------------------------------------------------------------------------- clouds


@pytest.mark.parametrize(
    ("cloud", "imap", "smtp_host", "authority", "graph_scope"),
    [
        ("usgov-high", "outlook.office365.us", "smtp.office365.us", "https://login.microsoftonline.us",
         "https://graph.microsoft.us/.default"),
        ("usgov-dod", "outlook-dod.office365.us", "smtp-dod.office365.us", "https://login.microsoftonline.us",
         "https://dod-graph.microsoft.us/.default"),
        ("china", "partner.outlook.cn", "smtp.partner.outlook.cn", "https://login.chinacloudapi.cn",
         "https://microsoftgraph.chinacloudapi.cn/.default"),
    ],
)
def test_sovereign_cloud_hosts_and_scopes(
    cloud: str, imap: str, smtp_host: str, authority: str, graph_scope: str
) -> None:
    s = build_options(req(Inbound.IMAP, Outbound.SMTP, cloud=CLOUDS[cloud]))
    pop, smtp = opts(s, "pop-client"), opts(s, "smtp-client")
    assert pop["server"] == imap and smtp["server"] == smtp_host
    assert pop["tenant-authority"] == smtp["tenant-authority"] == authority
    assert "office.com" not in pop["scope"]  # not the worldwide scope
    # Microsoft publishes no mail hosts for these clouds: flagged, never silently confirmed.
    assert not s.get("pop-client", "server").confirmed  # type: ignore[union-attr]
    assert s.get("pop-client", "server").source == "cloud-unconfirmed"  # type: ignore[union-attr]
    g = build_options(req(Inbound.GRAPH, Outbound.GRAPH, cloud=CLOUDS[cloud]))
    assert opts(g, "pop-client")["scope"] == opts(g, "smtp-client")["scope"] == graph_scope


# ---------------------------------------------------------------------------- profile


def write(tmp_path: Path, text: str, name: str = "p.ini") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_profile_overrides_every_kind_of_literal(tmp_path: Path) -> None:
    p = write(tmp_path, """
[inbound-type]
imap = IMAP
[outbound-server-type]
smtp = SMTP
graph = GRAPH
[inbound-grant-type]
imap = client_credentials
[tls]
imap-option = pop-connection-security
imap-value = ssl-tls
smtp-option =
[sections]
inbound-next = pop-client-{n}
outbound-next = smtp-client-{n}
[cloud:usgov-high]
imap-host = imap.example.us
[extra:pop-client]
port = 1993
mail.imap.peek = true
[extra:pop-client:ews]
exchange-version = Exchange2010_SP2
[extra:smtp-client]
cnx-max-idle-time = 00:04:00
""")
    prof = load_profile(p)
    s = build_options(req(Inbound.IMAP, Outbound.SMTP, cloud=CLOUDS["usgov-high"], section_index=2), prof)
    assert s.inbound_section == "pop-client-2" and s.outbound_section == "smtp-client-2"
    pop, smtp = opts(s, "pop-client-2"), opts(s, "smtp-client-2")
    assert pop["type"] == "IMAP"
    assert pop["pop-connection-security"] == "ssl-tls" and "enable-ssl" not in pop
    assert pop["server"] == "imap.example.us"
    assert pop["grant-type"] == "client_credentials" and pop["password"] == PLACEHOLDER_SECRET
    assert pop["mail.imap.peek"] == "true"
    assert "exchange-version" not in pop  # EWS-only extra
    assert smtp["server-type"] == "SMTP"
    assert "smtp-connection-security" not in smtp
    assert smtp["cnx-max-idle-time"] == "00:04:00"
    # An extra replaces in place (same position), and counts as confirmed by the admin.
    names = [o.name for o in s.options if o.section == "pop-client-2"]
    assert pop["port"] == "1993" and names.index("port") == 2
    port = s.get("pop-client-2", "port")
    assert port is not None and port.source == "profile" and port.confirmed
    t = s.get("pop-client-2", "type")
    assert t is not None and t.confirmed and t.source == "profile"
    # Section naming came from the profile: no "not confirmed" note about it.
    assert not any("Section names" in n for n in s.notes)


def test_additional_mailbox_default_sections_are_flagged() -> None:
    s = build_options(req(section_index=1))
    assert s.inbound_section == "pop-client1" and s.outbound_section == "smtp-client1"
    assert any("Section names pop-client1 and smtp-client1" in n for n in s.notes)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[inbound-type]\nimap = imap\nimap = IMAP\n", ["does not parse", "imap"]),
        ("imap = imap\n", ["does not parse"]),
        ("[inbound-type]\nimapp = IMAP\n", ["[inbound-type] imapp: unknown key"]),
        ("[inbound-typ]\nimap = IMAP\n", ["[inbound-typ]: unknown section"]),
        ("[inbound-type]\ngraph = \"GRAPH\"\n", ["[inbound-type] graph", "bare word"]),
        ("[inbound-type]\ngraph =\n", ["[inbound-type] graph", "bare word"]),
        ("[sections]\ninbound-next = pop-client\n", ["[sections] inbound-next", "{n}"]),
        ("[cloud:germany]\nimap-host = x.de\n", ["unknown cloud 'germany'"]),
        ("[cloud:global]\nimap-host = https://x\n", ["[cloud:global] imap-host", "host name"]),
        ("[cloud:global]\nauthority = login.microsoftonline.com\n", ["[cloud:global] authority", "https"]),
        ("[extra:pop-client]\nmailbox = x@y.com\n", ["[extra:pop-client] mailbox", "guide fixes it"]),
        ("[extra:smtp-client]\npassword = hunter2\n", ["[extra:smtp-client] password", "secret"]),
        ("[extra:pop-client:smtp]\nx = 1\n", ["[extra:pop-client:smtp]: unknown section"]),
        ("[extra:pop-client]\nport = 1\n  2\n", ["multi-line"]),
        ("[DEFAULT]\nport = 1\n", ["[DEFAULT]: unknown section"]),
    ],
)
def test_bad_profile_is_a_config_error_naming_file_and_key(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_profile(p)
    message = str(err.value)
    assert message.startswith(f"profile {p}:")
    for needle in needles:
        assert needle in message
    assert err.value.exit_status == 1


def test_profile_unknown_key_hint_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_profile(write(tmp_path, "[tls]\nimap-opton = x\n"))
    assert err.value.hint is not None and "did you mean imap-option" in err.value.hint


def test_profile_missing_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_profile(tmp_path / "nope.ini")
    bad = tmp_path / "latin1.ini"
    bad.write_bytes(b"[extra:pop-client]\nx = caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_profile(bad)


def test_profile_keeps_case_and_percent_and_hash(tmp_path: Path) -> None:
    prof = load_profile(write(tmp_path, "[extra:pop-client]\nMail.Debug.X = 100% #not-a-comment\n"))
    s = build_options(req(), prof)
    assert opts(s, "pop-client")["Mail.Debug.X"] == "100% #not-a-comment"


def test_hand_built_profile_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="guide fixes it"):
        build_options(req(), Profile(extras={"smtp-client": (("user", "x@y.com"),)}))
    with pytest.raises(ConfigError, match="unknown key"):
        build_options(req(), Profile(settings={("tls", "nope"): "x"}))


def test_example_profile_documents_every_key_with_its_default() -> None:
    # As shipped (everything commented out) it loads and changes nothing.
    shipped = load_profile(EXAMPLE_PROFILE)
    assert not shipped.settings and not any(shipped.clouds.values()) and not shipped.extras
    # Uncommenting every ";key = value" line must give exactly the built-in defaults.
    text = EXAMPLE_PROFILE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^;([A-Za-z0-9.-]+ =.*)$", r"\1", text)
    prof = parse_profile(uncommented, "example")
    expected = {(sec, key): spec.default for sec, keys in PROFILE_KEYS.items() for key, spec in keys.items()}
    assert dict(prof.settings) == expected
    for name, cloud in CLOUDS.items():
        assert set(prof.clouds[name]) == set(CLOUD_KEYS), name
        for key, (attr, _) in CLOUD_KEYS.items():
            assert prof.clouds[name][key] == getattr(cloud, attr), (name, key)


# ---------------------------------------------------------------------------- CFG / JSON


def test_cfg_keeps_empty_values_equals_and_non_ascii() -> None:
    s = EsjOptionSet(
        mailbox=MAILBOX, trustee=TRUSTEE, inbound=Inbound.EWS, outbound=Outbound.SMTP, auto_response=False,
        cloud="global", inbound_section="pop-client", outbound_section="smtp-client",
        options=(
            EsjOption("pop-client", "folder-path", "", True, "genesys-docs"),
            EsjOption("pop-client", "x", "a=b==c", True, "profile"),
            EsjOption("pop-client", "y", " Zoë ☃ 東京 ", True, "profile"),
            EsjOption("smtp-client", "z", "[not-a-section]", True, "profile"),
        ),
    )
    text = render_cfg([s])
    assert text == (
        "[pop-client]\nfolder-path=\nx=a=b==c\ny= Zoë ☃ 東京 \n[smtp-client]\nz=[not-a-section]\n"
    )
    assert parse_cfg(text) == s.as_dict()


def test_cfg_several_mailboxes_and_duplicate_sections() -> None:
    a = build_options(req())
    b = build_options(req(mailbox="sales@contoso.com", section_index=1))
    parsed = parse_cfg(render_cfg([a, b]))
    assert list(parsed) == ["pop-client", "smtp-client", "pop-client1", "smtp-client1"]
    assert parsed["pop-client1"]["mailbox"] == "sales@contoso.com"
    with pytest.raises(UsageError, match=r"section \[pop-client\] is used by both"):
        render_cfg([a, build_options(req(mailbox="sales@contoso.com"))])


def test_cfg_refuses_a_value_with_a_newline() -> None:
    s = EsjOptionSet(
        mailbox=MAILBOX, trustee=TRUSTEE, inbound=Inbound.IMAP, outbound=Outbound.SMTP, auto_response=False,
        cloud="global", inbound_section="pop-client", outbound_section="smtp-client",
        options=(EsjOption("pop-client", "x", "a\nb", True, "profile"),),
    )
    with pytest.raises(UsageError, match="line break"):
        render_cfg([s])


def test_parse_cfg_tolerates_bom_crlf_comments_blank_lines() -> None:
    text = "\ufeff# exported\r\n[pop-client]\r\n\r\n; c\r\nmailbox=a@b.com\r\n folder-path =\r\n"
    assert parse_cfg(text) == {"pop-client": {"mailbox": "a@b.com", "folder-path": ""}}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mailbox=a\n", "line 1: option 'mailbox' before any [section]"),
        ("[a]\nx=1\nx=2\n", "line 3: option a/x appears twice"),
        ("[a]\n[a]\n", "line 2: section [a] appears twice"),
        ("[a]\njust words\n", "line 2: expected [section] or option=value"),
        ("[ ]\n", "line 1: empty section name"),
    ],
)
def test_parse_cfg_errors_name_the_line(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cfg(text, "f.cfg")
    assert str(err.value).startswith(f"f.cfg: {needle}")


def test_json_shape_is_documented_and_stable() -> None:
    s = build_options(req(Inbound.GRAPH, Outbound.GRAPH, auto_response=True))
    obj = json.loads(render_json(s))
    assert list(obj) == [
        "mailbox", "trustee", "inbound", "outbound", "auto_response", "cloud", "sections", "options",
        "notes", "unconfirmed", "placeholders",
    ]
    assert obj["mailbox"] == MAILBOX and obj["trustee"] == TRUSTEE
    assert obj["inbound"] == "graph" and obj["outbound"] == "graph"
    assert obj["sections"] == {"inbound": "pop-client", "outbound": "smtp-client"}
    first = obj["options"][0]
    assert list(first) == ["section", "name", "value", "confirmed", "source", "placeholder", "secret", "note"]
    assert "smtp-client/server-type" in obj["unconfirmed"] and "pop-client/type" not in obj["unconfirmed"]
    assert isinstance(json.loads(render_json([s, s])), list)


# ---------------------------------------------------------------------------- write_output


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_write_output_secret_file_is_0600_even_with_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "esj.cfg"
        target.write_text("old")
        target.chmod(0o644)
        write_output(target, "password=x\n", contains_secret=True)
        assert mode(target) == 0o600
        write_output(tmp_path / "plain.cfg", "a=b\n", contains_secret=False)
        assert mode(tmp_path / "plain.cfg") == 0o666
    finally:
        os.umask(old)
    assert target.read_text() == "password=x\n"


def test_write_output_honours_umask_for_plain_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_output(tmp_path / "plain.cfg", "a=b\n", contains_secret=False)
    finally:
        os.umask(old)
    assert mode(tmp_path / "plain.cfg") == 0o644


def test_write_output_refuses_missing_directory_and_directory_target(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        write_output(tmp_path / "missing" / "x.cfg", "a", contains_secret=False)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(UsageError, match="is a directory"):
        write_output(tmp_path, "a", contains_secret=False)


def test_write_output_leaves_no_partial_file_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "esj.cfg"
    target.write_text("previous\n")

    def boom(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(EsjProvisionError, match="No space left"):
        write_output(target, "new\n", contains_secret=True)
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esj.cfg"]
