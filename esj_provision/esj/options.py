"""The ESJ option rules for Exchange Online shared mailboxes: the one place they live.

Authority: Genesys, "Configure shared mailbox for Microsoft Exchange Online" (shared/seed/), for
the rules it fixes; ``shared/reference/esj-options.md`` for the connection options around them and
for which literals are confirmed. Every literal that no Genesys document confirms can be
overridden by a *profile* file (INI, see :func:`load_profile` and ``examples/profile.ini``), which
an admin keeps per ESJ release.

What ``confirmed`` means on an option: a Genesys document (docs.genesys.com or the shared-mailbox
guide) states that option *and* that value, or the admin's profile sets it (they vouch for their
release). Everything else is ``confirmed=False`` and reported, so it gets checked before import.

Stdlib only, no CLI or rendering here: the CLI, bulk and audit all build on this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..clouds import CLOUD_NAMES, CLOUDS, Cloud
from ..errors import ConfigError, UsageError
from ..models import Inbound, Outbound, parse_address, parse_guid

POP_CLIENT = "pop-client"
SMTP_CLIENT = "smtp-client"

# Source tags (``EsjOption.source``).
SRC_GUIDE = "guide"  # the Genesys shared-mailbox guide (shared/seed/)
SRC_GENESYS = "genesys-docs"  # docs.genesys.com, tag [C] in esj-options.md
SRC_ENDPOINTS = "endpoints"  # Microsoft endpoint for the cloud (clouds.py), published for it
SRC_CLOUD_UNCONFIRMED = "cloud-unconfirmed"  # endpoint not published for this sovereign cloud
SRC_INFERRED = "inferred"  # tag [I]: follows from confirmed text, written nowhere
SRC_GUESS = "guess"  # tag [G]
SRC_PROFILE = "profile"  # set in the admin's profile file
SRC_OVERRIDE = "override"  # ESJ_PROVISION_{IMAP,SMTP,EWS}_ENDPOINT: a test tenant's endpoint (the sandbox)

SOURCES = (
    SRC_GUIDE,
    SRC_GENESYS,
    SRC_ENDPOINTS,
    SRC_CLOUD_UNCONFIRMED,
    SRC_INFERRED,
    SRC_GUESS,
    SRC_PROFILE,
    SRC_OVERRIDE,
)

PLACEHOLDER_CLIENT_ID = "<set: ESJ app client id>"
PLACEHOLDER_TENANT_ID = "<set: directory (tenant) id>"
PLACEHOLDER_SECRET = "<set: ESJ app client secret>"
PLACEHOLDER_TRUSTEE = "<set: address with Full Access to the shared mailbox>"

FROM_NOTE = (
    "FROM address: outbound e-mail must have the shared mailbox {mailbox} as its FROM address. "
    'Assign it either per agent, in the Business Attribute "E-mail Accounts", or in the '
    "strategy's Send block."
)

# Options whose value the guide fixes (or that carry the secret / come from the command line):
# a profile must not be able to change them, or the output would silently contradict the guide.
_PROTECTED: dict[str, str] = {
    "mailbox": "the guide fixes it: the shared mailbox address",
    "service-account": "the guide fixes it: the account with Full Access, empty for GRAPH",
    "address": "the guide fixes it: the shared mailbox address (with --auto-response)",
    "default-from-address": "the guide fixes it: the shared mailbox address (with --auto-response)",
    "user": "the guide fixes it: the account with Full Access",
    "allow-delegate": "the guide fixes it: true for outbound GRAPH",
    "password": "a secret never goes in a profile; use --include-secret",
    "client-id": "it is per tenant, not per release; use --esj-client-id",
    "directory-id": "it is per tenant, not per release; use --tenant-id",
    "type": "set it in [inbound-type]",
    "server-type": "set it in [outbound-server-type]",
}

_OPTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_URL = re.compile(r"^https://[^\s/]+(?:/\S*)?$")
# Anything a line-oriented reader (GAX, Java's readLine, Python's splitlines) could split on, or a
# control character no ESJ value legitimately holds. Tab is allowed: it survives a CFG line.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


# --------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class EsjOption:
    """One ESJ option, with why we believe its value."""

    section: str
    name: str
    value: str
    confirmed: bool
    source: str
    secret: bool = False  # the value is the real ESJ app secret
    placeholder: bool = False  # the value is a ``<set: …>`` placeholder to replace before import
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.section}/{self.name}"

    def __repr__(self) -> str:
        # Hand-written so the ESJ app secret never lands in a repr, a traceback's locals or a log line.
        value = "'***'" if self.secret else repr(self.value)
        return (
            f"EsjOption(section={self.section!r}, name={self.name!r}, value={value}, confirmed={self.confirmed!r}, "
            f"source={self.source!r}, secret={self.secret!r}, placeholder={self.placeholder!r}, note={self.note!r})"
        )


@dataclass(frozen=True)
class EsjOptionSet:
    """The options for one shared mailbox: a ``pop-client…`` and a ``smtp-client…`` section."""

    mailbox: str
    trustee: str | None
    inbound: Inbound
    outbound: Outbound
    auto_response: bool
    cloud: str
    inbound_section: str
    outbound_section: str
    options: tuple[EsjOption, ...]
    notes: tuple[str, ...] = ()

    @property
    def unconfirmed(self) -> tuple[EsjOption, ...]:
        return tuple(o for o in self.options if not o.confirmed)

    @property
    def placeholders(self) -> tuple[EsjOption, ...]:
        return tuple(o for o in self.options if o.placeholder)

    @property
    def contains_secret(self) -> bool:
        return any(o.secret for o in self.options)

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.section for o in self.options))

    def get(self, section: str, name: str) -> EsjOption | None:
        for o in self.options:
            if o.section == section and o.name == name:
                return o
        return None

    def as_dict(self) -> dict[str, dict[str, str]]:
        """section -> option -> value, the shape :func:`esj_provision.esj.cfg.parse_cfg` returns."""
        out: dict[str, dict[str, str]] = {}
        for o in self.options:
            out.setdefault(o.section, {})[o.name] = o.value
        return out


@dataclass
class EsjRequest:
    """What the admin asked for. Validated by :func:`build_options`, not here."""

    mailbox: str
    # The account with Full Access. None when the delegation goes to the ESJ app's service
    # principal: the guide has no rule for that, so the options it fixes get placeholders.
    trustee: str | None
    inbound: Inbound
    outbound: Outbound
    auto_response: bool = False
    cloud: Cloud = field(default_factory=lambda: CLOUDS["global"])
    client_id: str | None = None  # the ESJ app's client id (not the provisioning app's)
    tenant_id: str | None = None
    # Only when the admin explicitly asked to include it; kept out of repr so it never lands in
    # a traceback or a log line.
    secret: str | None = field(default=None, repr=False)
    # 0 = the first mailbox (``pop-client``); n > 0 uses the profile's "next" section patterns.
    section_index: int = 0
    # Where ESJ connects instead of Exchange Online (config.MailEndpoints: a test tenant such as the
    # sandbox), so the options made against it, and the probe reading them, point at it.
    imap_endpoint: tuple[str, int] | None = None
    smtp_endpoint: tuple[str, int] | None = None
    ews_endpoint: str | None = None


@dataclass(frozen=True)
class Setting:
    """A literal with its provenance."""

    value: str
    confirmed: bool
    source: str


@dataclass(frozen=True)
class _KeySpec:
    default: str
    confirmed: bool
    source: str
    kind: str  # how a profile value is validated, see _check_kind
    doc: str


# Every profile key, its built-in default and its tag. The single declaration: load_profile
# validates against it, Profile.setting falls back to it, and tests check examples/profile.ini
# documents every key with this default.
PROFILE_KEYS: dict[str, dict[str, _KeySpec]] = {
    "inbound-type": {
        "imap": _KeySpec("imap", False, SRC_INFERRED, "token", "pop-client/type for IMAP"),
        "ews": _KeySpec("ews", True, SRC_GENESYS, "token", "pop-client/type for EWS"),
        "graph": _KeySpec("GRAPH", True, SRC_GENESYS, "token", "pop-client/type for GRAPH"),
    },
    "outbound-server-type": {
        "smtp": _KeySpec("smtp", False, SRC_INFERRED, "token", "smtp-client/server-type for SMTP"),
        "ews": _KeySpec("ews", True, SRC_GENESYS, "token", "smtp-client/server-type for EWS"),
        "graph": _KeySpec("graph", False, SRC_INFERRED, "token", "smtp-client/server-type for GRAPH"),
    },
    "inbound-grant-type": {
        "imap": _KeySpec("", False, SRC_INFERRED, "token-or-empty", "pop-client/grant-type for IMAP"),
        "ews": _KeySpec("", False, SRC_INFERRED, "token-or-empty", "pop-client/grant-type for EWS"),
        "graph": _KeySpec(
            "client_credentials", False, SRC_INFERRED, "token-or-empty", "pop-client/grant-type for GRAPH"
        ),
    },
    "outbound-grant-type": {
        "smtp": _KeySpec("", False, SRC_INFERRED, "token-or-empty", "smtp-client/grant-type for SMTP"),
        "ews": _KeySpec("", False, SRC_INFERRED, "token-or-empty", "smtp-client/grant-type for EWS"),
        "graph": _KeySpec(
            "client_credentials", False, SRC_INFERRED, "token-or-empty", "smtp-client/grant-type for GRAPH"
        ),
    },
    "tls": {
        "imap-option": _KeySpec("enable-ssl", True, SRC_GENESYS, "name-or-empty", "IMAP TLS option name"),
        "imap-value": _KeySpec("true", False, SRC_GUESS, "token", "IMAP TLS option value"),
        "smtp-option": _KeySpec(
            "smtp-connection-security", True, SRC_GENESYS, "name-or-empty", "SMTP TLS option name"
        ),
        "smtp-value": _KeySpec("start-tls", False, SRC_GUESS, "token", "SMTP TLS option value"),
    },
    "sections": {
        "inbound-first": _KeySpec("pop-client", True, SRC_GENESYS, "section", "first mailbox, inbound"),
        "inbound-next": _KeySpec("pop-client{n}", False, SRC_GUIDE, "section-pattern", "more mailboxes"),
        "outbound-first": _KeySpec("smtp-client", True, SRC_GENESYS, "section", "first mailbox, outbound"),
        "outbound-next": _KeySpec("smtp-client{n}", False, SRC_INFERRED, "section-pattern", "more mailboxes"),
    },
}

# [cloud:NAME] keys -> the Cloud field they override (graph-scope is derived, see _cloud_setting).
CLOUD_KEYS: dict[str, tuple[str, str]] = {
    "imap-host": ("imap_host", "host"),
    "smtp-host": ("smtp_host", "host"),
    "ews-url": ("ews_url", "url"),
    "outlook-scope": ("esj_outlook_scope", "url"),
    "graph-scope": ("graph_scope", "url"),
    "authority": ("authority_host", "url"),
}

_INBOUND_NAMES = tuple(p.value for p in Inbound)
_OUTBOUND_NAMES = tuple(p.value for p in Outbound)


@dataclass(frozen=True)
class Profile:
    """Per-ESJ-release overrides. ``Profile()`` is the built-in defaults."""

    path: str | None = None
    # (section, key) -> value, only what the file sets.
    settings: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # cloud name -> profile key (imap-host, …) -> value.
    clouds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # "pop-client" / "pop-client:ews" / "smtp-client" / "smtp-client:graph" -> ordered options.
    extras: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def setting(self, section: str, key: str) -> Setting:
        spec = PROFILE_KEYS[section][key]
        if (section, key) in self.settings:
            return Setting(self.settings[(section, key)], True, SRC_PROFILE)
        return Setting(spec.default, spec.confirmed, spec.source)


@dataclass
class _Builder:
    options: list[EsjOption] = field(default_factory=list)

    def add(
        self,
        section: str,
        name: str,
        value: str,
        confirmed: bool,
        source: str,
        *,
        secret: bool = False,
        placeholder: bool = False,
        note: str = "",
    ) -> None:
        self.options.append(EsjOption(section, name, value, confirmed, source, secret, placeholder, note))

    def add_setting(self, section: str, name: str, s: Setting, note: str = "") -> None:
        self.add(section, name, s.value, s.confirmed, s.source, note=note)

    def put(self, section: str, name: str, value: str) -> None:
        """A profile extra: replace in place (keeps the order readable), or append."""
        new = EsjOption(section, name, value, True, SRC_PROFILE)
        for i, o in enumerate(self.options):
            if o.section == section and o.name == name:
                self.options[i] = new
                return
        self.options.append(new)


# --------------------------------------------------------------------------------------------
# Building the options


def build_options(req: EsjRequest, profile: Profile | None = None) -> EsjOptionSet:
    """The ESJ options for one shared mailbox, in a readable order, with notes.

    Raises UsageError for bad input (address, GUID, a value CFG cannot hold) and ConfigError
    when a hand-built profile breaks the rules :func:`load_profile` enforces.
    """
    # Long on purpose: the guide's rules read top to bottom in the order the options are written;
    # the per-protocol parts are already _inbound/_outbound/_oauth.
    prof = profile or Profile()
    mailbox = parse_address(req.mailbox, "mailbox")
    trustee = parse_address(req.trustee, "trustee") if req.trustee is not None else None
    if trustee is not None and trustee.lower() == mailbox.lower():
        raise UsageError(
            f"trustee {trustee!r} is the shared mailbox itself",
            hint="give the account that has (or gets) Full Access to the shared mailbox",
        )
    client_id = parse_guid(req.client_id, "ESJ app client id") if req.client_id else None
    tenant_id = parse_guid(req.tenant_id, "tenant id") if req.tenant_id else None
    secret = req.secret
    if secret is not None:
        # Never echo the secret itself in an error.
        if not secret.strip():
            raise UsageError("the ESJ app secret is empty")
        if _BAD_CHARS.search(secret):
            raise UsageError(
                "the ESJ app secret contains a line break or control character; a CFG file cannot hold it"
            )
    if not isinstance(req.section_index, int) or req.section_index < 0:
        raise UsageError(f"section index {req.section_index!r} must be 0 or a positive integer")
    _check_profile_object(prof)

    pop, pop_from_profile = _section_name(prof, "inbound", req.section_index)
    smtp, smtp_from_profile = _section_name(prof, "outbound", req.section_index)
    if pop == smtp:
        where = prof.path or "(built in code)"
        raise ConfigError(f"profile {where}: [sections]: inbound and outbound sections are both {pop!r}")

    ctx = _Ctx(req, prof, mailbox, trustee, client_id, tenant_id, secret)
    b = _Builder()
    _inbound(b, ctx, pop)
    _outbound(b, ctx, smtp)
    targets = ((POP_CLIENT, pop, req.inbound.value), (SMTP_CLIENT, smtp, req.outbound.value))
    for kind, section, proto in targets:
        for name, value in (*prof.extras.get(kind, ()), *prof.extras.get(f"{kind}:{proto}", ())):
            b.put(section, name, value)

    for o in b.options:
        if not _OPTION_NAME.match(o.name):
            raise UsageError(f"option name {o.key!r} cannot be written to a CFG file")
        if _BAD_CHARS.search(o.value):
            shown = "(secret)" if o.secret else repr(o.value)
            raise UsageError(f"{o.key} value {shown} contains a line break or control character")

    notes = _notes(ctx, b.options, pop, smtp, pop_from_profile and smtp_from_profile)
    return EsjOptionSet(
        mailbox=mailbox,
        trustee=trustee,
        inbound=req.inbound,
        outbound=req.outbound,
        auto_response=req.auto_response,
        cloud=req.cloud.name,
        inbound_section=pop,
        outbound_section=smtp,
        options=tuple(b.options),
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class _Ctx:
    req: EsjRequest
    prof: Profile
    mailbox: str
    trustee: str | None
    client_id: str | None
    tenant_id: str | None
    secret: str | None = field(repr=False)

    def cloud(self, key: str, default_source: str) -> Setting:
        """A per-cloud value: the profile's override, else the cloud table with its tag."""
        cloud = self.req.cloud
        override = self.prof.clouds.get(cloud.name, {}).get(key)
        if override is not None:
            return Setting(override, True, SRC_PROFILE)
        attr = CLOUD_KEYS[key][0]
        value = str(getattr(cloud, attr))
        if attr in cloud.unconfirmed:
            return Setting(value, False, SRC_CLOUD_UNCONFIRMED)
        # Genesys documents the global values; for other clouds Microsoft publishes the host.
        return Setting(value, True, default_source if cloud.name == "global" else SRC_ENDPOINTS)


def _section_name(prof: Profile, direction: str, index: int) -> tuple[str, bool]:
    """The section for mailbox number ``index`` and whether the profile set its naming."""
    key = f"{direction}-first" if index == 0 else f"{direction}-next"
    s = prof.setting("sections", key)
    name = s.value if index == 0 else s.value.replace("{n}", str(index))
    return name, s.confirmed


def _trustee_value(ctx: _Ctx) -> tuple[str, bool]:
    if ctx.trustee is None:
        return PLACEHOLDER_TRUSTEE, True
    return ctx.trustee, False


def _host_and_port(
    b: _Builder, ctx: _Ctx, s: str, endpoint: tuple[str, int] | None, proto: str, key: str, port: str
) -> None:
    """IMAP's or SMTP's server and port: the ESJ_PROVISION_<PROTO>_ENDPOINT override's, or the cloud's."""
    if endpoint:
        _override(b, s, endpoint, f"ESJ_PROVISION_{proto}_ENDPOINT")
    else:
        b.add_setting(s, "server", ctx.cloud(key, SRC_ENDPOINTS))
        b.add(s, "port", port, True, SRC_ENDPOINTS)


def _ews_server(b: _Builder, ctx: _Ctx, s: str, *, port_confirmed: bool, port_source: str) -> None:
    """The EWS URL (the override's, or the cloud's) and port 443: Genesys confirms the port for
    pop-client [EWS814], it is inferred for smtp-client."""
    if ctx.req.ews_endpoint:
        _override(b, s, _url_host_port(ctx.req.ews_endpoint), "ESJ_PROVISION_EWS_ENDPOINT", url=ctx.req.ews_endpoint)
    else:
        b.add_setting(s, "server", ctx.cloud("ews-url", SRC_ENDPOINTS))
        b.add(s, "port", "443", port_confirmed, port_source)


def _inbound(b: _Builder, ctx: _Ctx, s: str) -> None:
    proto = ctx.req.inbound
    prof = ctx.prof
    b.add_setting(s, "type", prof.setting("inbound-type", proto.value))
    if proto is Inbound.IMAP:
        _host_and_port(b, ctx, s, ctx.req.imap_endpoint, "IMAP", "imap-host", "993")
        _tls(b, s, prof, "imap")
    elif proto is Inbound.EWS:
        _ews_server(b, ctx, s, port_confirmed=True, port_source=SRC_GENESYS)
        # "(empty) The key must be present." [EWS814]
        b.add(s, "folder-path", "", True, SRC_GENESYS)

    # The rules the guide fixes.
    b.add(s, "mailbox", ctx.mailbox, True, SRC_GUIDE)
    if proto is Inbound.GRAPH:
        b.add(s, "service-account", "", True, SRC_GUIDE, note="empty: GRAPH supports only client credentials")
    else:
        value, ph = _trustee_value(ctx)
        b.add(s, "service-account", value, True, SRC_GUIDE, placeholder=ph)
    if ctx.req.auto_response:
        b.add(s, "address", ctx.mailbox, True, SRC_GUIDE)
        b.add(s, "default-from-address", ctx.mailbox, True, SRC_GUIDE)

    if proto is not Inbound.GRAPH:
        b.add(s, f"mail.{proto.value}.auth.mechanisms", "XOAUTH2", False, SRC_INFERRED)
    _oauth(b, ctx, s, graph=proto is Inbound.GRAPH, grant=prof.setting("inbound-grant-type", proto.value),
           documented=True)


def _outbound(b: _Builder, ctx: _Ctx, s: str) -> None:
    proto = ctx.req.outbound
    prof = ctx.prof
    b.add_setting(s, "server-type", prof.setting("outbound-server-type", proto.value))
    if proto is Outbound.SMTP:
        _host_and_port(b, ctx, s, ctx.req.smtp_endpoint, "SMTP", "smtp-host", "587")
        _tls(b, s, prof, "smtp")
        b.add(s, "enable-authentication", "true", True, SRC_GENESYS)
    elif proto is Outbound.EWS:
        _ews_server(b, ctx, s, port_confirmed=False, port_source=SRC_INFERRED)

    value, ph = _trustee_value(ctx)
    b.add(s, "user", value, True, SRC_GUIDE, placeholder=ph)
    if proto is Outbound.GRAPH:
        b.add(s, "allow-delegate", "true", True, SRC_GUIDE)

    if proto is not Outbound.GRAPH:
        b.add(s, f"mail.{proto.value}.auth.mechanisms", "XOAUTH2", False, SRC_INFERRED)
    # smtp-client's OAuth options are listed in the Options Reference, but their values are
    # documented only for pop-client: hence documented=False (values by analogy).
    _oauth(b, ctx, s, graph=proto is Outbound.GRAPH, grant=prof.setting("outbound-grant-type", proto.value),
           documented=False)


def _override(b: _Builder, s: str, host_port: tuple[str, int], var: str, url: str | None = None) -> None:
    note = f"from {var}: a test endpoint, not Exchange Online"
    b.add(s, "server", url or host_port[0], True, SRC_OVERRIDE, note=note)
    b.add(s, "port", str(host_port[1]), True, SRC_OVERRIDE, note=note)


def _url_host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _tls(b: _Builder, s: str, prof: Profile, proto: str) -> None:
    name = prof.setting("tls", f"{proto}-option")
    if not name.value:  # the profile turned it off
        return
    value = prof.setting("tls", f"{proto}-value")
    # The option name may be confirmed while its value is a guess: the value decides.
    b.add(s, name.value, value.value, value.confirmed and name.confirmed, value.source)


def _oauth(b: _Builder, ctx: _Ctx, s: str, *, graph: bool, grant: Setting, documented: bool) -> None:
    b.add(
        s, "client-id", ctx.client_id or PLACEHOLDER_CLIENT_ID, True, SRC_GENESYS,
        placeholder=ctx.client_id is None,
    )
    b.add(
        s, "directory-id", ctx.tenant_id or PLACEHOLDER_TENANT_ID, True, SRC_GENESYS,
        placeholder=ctx.tenant_id is None,
    )
    authority = ctx.cloud("authority", SRC_GENESYS)
    if authority.source == SRC_ENDPOINTS:
        # Genesys documents only https://login.microsoftonline.com as ESJ's authority
        # (updates-2026-11.md §6): a sovereign cloud's is Microsoft's host, unconfirmed for ESJ.
        authority = Setting(authority.value, False, SRC_CLOUD_UNCONFIRMED)
    b.add_setting(s, "tenant-authority", authority)
    scope = ctx.cloud("graph-scope" if graph else "outlook-scope", SRC_GENESYS)
    if not documented and scope.source == SRC_GENESYS:
        scope = Setting(scope.value, False, SRC_INFERRED)
    b.add_setting(s, "scope", scope)
    if grant.value:
        b.add_setting(s, "grant-type", grant)

    # ESJ reads `password` as the Azure app secret "when type is GRAPH or grant-type is
    # client_credentials" [EmSMailAzure]; otherwise it is the login's own password.
    app_secret = graph or grant.value.lower() == "client_credentials"
    if app_secret:
        src, conf = (SRC_GENESYS, True) if documented else (SRC_INFERRED, False)
        if ctx.secret is not None:
            b.add(s, "password", ctx.secret, conf, src, secret=True)
        else:
            b.add(s, "password", PLACEHOLDER_SECRET, conf, src, placeholder=True)
    else:
        who = ctx.trustee or "the account with Full Access"
        b.add(
            s, "password", f"<set: password of {who}>", False, SRC_INFERRED, placeholder=True,
            note="the login's password unless grant-type is client_credentials (then the app secret)",
        )


def _notes(ctx: _Ctx, options: list[EsjOption], pop: str, smtp: str, sections_known: bool) -> list[str]:
    from .ews_sunset import ews_warning

    notes = []
    try:
        ews = ews_warning(ctx.req.inbound, ctx.req.outbound)
    except UsageError as exc:  # after the switch-off: commands refuse EWS before they get here
        ews = f"{exc.message}; {exc.hint}"
    if ews:
        notes.append(ews)
    notes.append(FROM_NOTE.format(mailbox=ctx.mailbox))
    if ctx.trustee is not None:
        notes.append(
            f"Exchange Online: {ctx.trustee} needs Full Access (Delegation, Read and manage) "
            f"on {ctx.mailbox}."
        )
    else:
        notes.append(
            "No account with Full Access was given: the guide expects its address in "
            f"{pop}/service-account (IMAP, EWS) and {smtp}/user; replace the placeholders."
        )
    if ctx.req.outbound is Outbound.GRAPH:
        notes.append(
            f"{smtp}/allow-delegate=true needs Send As and/or Send on Behalf permission on "
            f"{ctx.mailbox} (Genesys Options Reference, smtp-client)."
        )
    if Inbound.GRAPH is ctx.req.inbound or Outbound.GRAPH is ctx.req.outbound:
        notes.append(
            "GRAPH needs a recent ESJ 8.5.2xx release; the exact release is not confirmed "
            "(8.5.205.03 or later is inferred)."
        )
    if ctx.req.section_index > 0 and not sections_known:
        notes.append(
            f"Section names {pop} and {smtp} for an additional mailbox are not confirmed by Genesys "
            "documentation; check them and pin them in a profile ([sections])."
        )
    overridden = [f"{o.key}={o.value}" for o in options if o.source == SRC_OVERRIDE]
    if overridden:
        notes.append(
            "These options point at a test endpoint (ESJ_PROVISION_*_ENDPOINT), not Exchange Online: "
            + ", ".join(overridden) + "."
        )
    placeholders = [o.key for o in options if o.placeholder]
    if placeholders:
        notes.append("Replace the <set: ...> placeholders before importing: " + ", ".join(placeholders) + ".")
    if ctx.secret is not None and not any(o.secret for o in options):
        notes.append("The ESJ app secret was not used: no option of this combination holds it.")
    # Never the secret's value in a note: notes go to the terminal.
    unconfirmed = [
        o.key if o.secret else f"{o.key}={o.value}" for o in options if not o.confirmed and not o.placeholder
    ]
    if unconfirmed:
        notes.append(
            "Not confirmed by Genesys documentation; check against your ESJ release, then pin in a "
            "profile (--profile): " + ", ".join(unconfirmed) + "."
        )
    return notes


# --------------------------------------------------------------------------------------------
# Profile file


def load_profile(path: str | Path) -> Profile:
    """Read an INI profile. Raises ConfigError naming the file, the key and what is wrong."""
    p = Path(path)
    where = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"profile {where}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"profile {where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"profile {where}: cannot read it ({exc.strerror or exc})") from None
    return parse_profile(text, where)


def parse_profile(text: str, where: str = "<profile>") -> Profile:
    # Long on purpose: the parser's settings and one check per profile section, each with its own
    # message naming the line; splitting them would scatter the profile format over several places.
    import configparser  # only when a profile is given: keeps `emit` start-up lean

    parser = configparser.ConfigParser(
        interpolation=None,  # '%' is an ordinary character in ESJ values
        strict=True,  # duplicate sections/keys are errors, not silent last-wins
        empty_lines_in_values=False,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,  # a '#' inside a value stays part of it
        default_section="\x00no-defaults",  # [DEFAULT] would leak keys into every section
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # option names are case-sensitive
    try:
        parser.read_string(text.removeprefix("\ufeff"), source=where)
    except configparser.Error as exc:
        raise ConfigError(f"profile {where}: does not parse: {_one_line(str(exc))}") from None

    settings: dict[tuple[str, str], str] = {}
    clouds: dict[str, dict[str, str]] = {}
    extras: dict[str, tuple[tuple[str, str], ...]] = {}
    for section in parser.sections():
        items = list(parser.items(section, raw=True))
        for key, value in items:
            if "\n" in value:
                raise ConfigError(
                    f"profile {where}: [{section}] {key}: multi-line values cannot be written to a CFG file",
                    hint="an indented line continues the previous value; remove the indentation",
                )
        if section in PROFILE_KEYS:
            specs = PROFILE_KEYS[section]
            for key, value in items:
                if key not in specs:
                    raise ConfigError(
                        f"profile {where}: [{section}] {key}: unknown key",
                        hint=_choices(key, specs),
                    )
                _check_kind(where, section, key, value, specs[key].kind)
                settings[(section, key)] = value
        elif section.startswith("cloud:"):
            name = section.removeprefix("cloud:")
            if name not in CLOUDS:
                raise ConfigError(f"profile {where}: [{section}]: unknown cloud {name!r}",
                                  hint=_choices(name, CLOUD_NAMES))
            for key, value in items:
                if key not in CLOUD_KEYS:
                    raise ConfigError(f"profile {where}: [{section}] {key}: unknown key",
                                      hint=_choices(key, CLOUD_KEYS))
                _check_kind(where, section, key, value, CLOUD_KEYS[key][1])
                clouds.setdefault(name, {})[key] = value
        elif section.startswith("extra:"):
            target = section.removeprefix("extra:")
            if target not in _EXTRA_TARGETS:
                raise ConfigError(f"profile {where}: [{section}]: unknown section",
                                  hint=_choices(target, _EXTRA_TARGETS, prefix="extra:"))
            for key, value in items:
                _check_extra(where, section, key, value)
            extras[target] = tuple(items)
        else:
            known = [*PROFILE_KEYS, "cloud:<name>", "extra:<section>[:<protocol>]"]
            raise ConfigError(f"profile {where}: [{section}]: unknown section",
                              hint="known sections: " + ", ".join(known))
    return Profile(path=where, settings=settings, clouds=clouds, extras=extras)


_EXTRA_TARGETS = (
    POP_CLIENT,
    *(f"{POP_CLIENT}:{p}" for p in _INBOUND_NAMES),
    SMTP_CLIENT,
    *(f"{SMTP_CLIENT}:{p}" for p in _OUTBOUND_NAMES),
)


def _check_profile_object(prof: Profile) -> None:
    """Re-check a Profile built in code (tests, bulk) against the rules load_profile enforces."""
    where = prof.path or "(built in code)"
    for (section, key), value in prof.settings.items():
        spec = PROFILE_KEYS.get(section, {}).get(key)
        if spec is None:
            raise ConfigError(f"profile {where}: [{section}] {key}: unknown key")
        _check_kind(where, section, key, value, spec.kind)
    for cloud, values in prof.clouds.items():
        for key, value in values.items():
            if key not in CLOUD_KEYS:
                raise ConfigError(f"profile {where}: [cloud:{cloud}] {key}: unknown key")
            _check_kind(where, f"cloud:{cloud}", key, value, CLOUD_KEYS[key][1])
    for target, items in prof.extras.items():
        if target not in _EXTRA_TARGETS:
            raise ConfigError(f"profile {where}: [extra:{target}]: unknown section")
        for key, value in items:
            _check_extra(where, f"extra:{target}", key, value)


def _check_kind(where: str, section: str, key: str, value: str, kind: str) -> None:
    def bad(what: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"profile {where}: [{section}] {key}: {what} (got {value!r})", hint=hint)

    if _BAD_CHARS.search(value):
        raise bad("contains a line break or control character")
    if kind in ("token", "token-or-empty"):
        if value == "" and kind == "token-or-empty":
            return
        if not _TOKEN.match(value):
            raise bad("must be one bare word such as GRAPH or client_credentials",
                      "write the value without quotes or spaces")
    elif kind == "name-or-empty":
        if value and not _OPTION_NAME.match(value):
            raise bad("must be an option name (letters, digits, '.', '-', '_'), or empty to omit it")
    elif kind == "section":
        if not _OPTION_NAME.match(value) or "{n}" in value:
            raise bad("must be a section name such as pop-client")
    elif kind == "section-pattern":
        if value.count("{n}") != 1 or not _OPTION_NAME.match(value.replace("{n}", "1")):
            raise bad("must be a section name containing {n} once, such as pop-client{n}")
    elif kind == "host":
        if not _HOST.match(value):
            raise bad("must be a host name such as outlook.office365.com")
    elif kind == "url":
        if not _URL.match(value):
            raise bad("must be an https:// URL")
    else:  # pragma: no cover - a PROFILE_KEYS typo
        raise AssertionError(kind)


def _check_extra(where: str, section: str, key: str, value: str) -> None:
    if not _OPTION_NAME.match(key):
        raise ConfigError(f"profile {where}: [{section}] {key}: not a valid ESJ option name")
    if key in _PROTECTED:
        raise ConfigError(f"profile {where}: [{section}] {key}: cannot be set here: {_PROTECTED[key]}")
    if _BAD_CHARS.search(value):
        raise ConfigError(
            f"profile {where}: [{section}] {key}: contains a line break or control character"
        )


def _choices(got: str, known: Iterable[str], prefix: str = "") -> str:
    import difflib

    known = list(known)
    close = difflib.get_close_matches(got, known, n=1)
    lead = f"did you mean {prefix}{close[0]}? " if close else ""
    return lead + "known: " + ", ".join(prefix + k for k in known)


def _one_line(text: str) -> str:
    return " ".join(text.split())
