"""The options file that emit/onboard/bulk wrote, read back as what ESJ will do per section.

Accepts the CFG file (GAX import format) and the JSON those commands print (one option set, an
array of them, or onboard's document with ``esj_options``). ``<set: …>`` placeholders are
recognised: the probe fills them from the environment where it can (client id, tenant, secrets)
and otherwise says which one to replace.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..esj.options import POP_CLIENT, SMTP_CLIENT
from ..files import read_user_file

INBOUND, OUTBOUND = "inbound", "outbound"
_INBOUND_PROTOCOLS = ("imap", "ews", "graph")
_OUTBOUND_PROTOCOLS = ("smtp", "ews", "graph")


def is_placeholder(value: str | None) -> bool:
    return bool(value) and value.startswith("<set:") and value.endswith(">")  # type: ignore[union-attr]


@dataclass
class Target:
    """One ESJ section: how ESJ signs in and which mailbox it opens over which protocol."""

    section: str
    direction: str  # inbound | outbound
    protocol: str  # imap | ews | graph | smtp
    mailbox: str
    account: str | None  # pop-client/service-account or smtp-client/user; None: empty or placeholder
    app_only: bool  # client credentials (GRAPH, or grant-type client_credentials)
    client_id: str | None
    tenant: str | None
    authority: str | None
    scope: str | None
    server: str | None
    port: int | None
    # The options' own password (app secret or account password) when it is not a placeholder.
    password: str | None = field(default=None, repr=False)
    placeholders: tuple[str, ...] = ()  # option names still <set: …>

    @property
    def principal(self) -> str:
        """Who signs in, for the report: the account, or the ESJ app."""
        if self.app_only:
            return f"the ESJ app {self.client_id or '(client-id not set)'}"
        return self.account or "(service account not set)"


def load_targets(path: Path) -> list[Target]:
    return targets_from_text(read_user_file(path, "options"), str(path))


def targets_from_text(text: str, source: str) -> list[Target]:
    stripped = text.lstrip("\ufeff").lstrip()
    first = stripped.split("\n", 1)[0].strip()
    # A CFG file starts with "[pop-client]", which is no JSON; a JSON array starts with "[" and a value.
    if stripped.startswith("{") or (stripped.startswith("[") and not re.fullmatch(r"\[[^\]\[\"{]+\]", first)):
        sections, mailboxes = _from_json(stripped, source)
    else:
        from ..esj.cfg import parse_cfg

        sections, mailboxes = parse_cfg(text, source), {}
    return targets_from_sections(sections, source, mailboxes)


def _from_json(text: str, source: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("esj_options"), dict):
        data = data["esj_options"]  # onboard --format json
    sets = data if isinstance(data, list) else [data]
    sections: dict[str, dict[str, str]] = {}
    mailboxes: dict[str, str] = {}  # section -> the shared mailbox its option set is for
    for item in sets:
        if not isinstance(item, dict) or not isinstance(item.get("options"), list):
            raise UsageError(f"{source}: not the JSON that emit/onboard/bulk write (no 'options' list)")
        for o in item["options"]:
            try:
                section, name, value = str(o["section"]), str(o["name"]), str(o["value"])
            except (KeyError, TypeError):
                raise UsageError(f"{source}: an option lacks section, name or value") from None
            sections.setdefault(section, {})[name] = value
            if item.get("mailbox"):
                mailboxes[section] = str(item["mailbox"])
    return sections, mailboxes


def targets_from_sections(
    sections: dict[str, dict[str, str]], source: str = "<options>", mailboxes: dict[str, str] | None = None
) -> list[Target]:
    """One target per pop-client…/smtp-client… section (told apart by ``type``/``server-type``)."""
    mailboxes = dict(mailboxes or {})
    inbound = {n: s for n, s in sections.items() if "type" in s and "server-type" not in s}
    outbound = {n: s for n, s in sections.items() if "server-type" in s}
    if not inbound and not outbound:
        raise UsageError(
            f"{source}: no pop-client or smtp-client section",
            hint="give the options file that emit, onboard or bulk wrote",
        )
    for name, opts in inbound.items():
        if opts.get("mailbox") and not is_placeholder(opts["mailbox"]):
            mailboxes.setdefault(name, opts["mailbox"])
    targets = [_target(name, opts, INBOUND, opts.get("mailbox", ""), source) for name, opts in inbound.items()]
    for name, opts in outbound.items():
        targets.append(_target(name, opts, OUTBOUND, _outbound_mailbox(name, inbound, mailboxes, source), source))
    return targets


def _outbound_mailbox(name: str, inbound: dict[str, dict[str, str]], mailboxes: dict[str, str], source: str) -> str:
    """smtp-client has no mailbox option: ESJ sends FROM the shared mailbox of the same index
    (smtp-client ↔ pop-client, smtp-clientN ↔ pop-clientN)."""
    if name in mailboxes:
        return mailboxes[name]
    twin = POP_CLIENT + name.removeprefix(SMTP_CLIENT) if name.startswith(SMTP_CLIENT) else None
    if twin and twin in mailboxes:
        return mailboxes[twin]
    if len(inbound) == 1:
        only = next(iter(inbound))
        if only in mailboxes:
            return mailboxes[only]
    raise UsageError(
        f"{source}: [{name}]: cannot tell which shared mailbox it sends from",
        hint=f"keep its inbound section ({twin or 'pop-client…'}) in the same file",
    )


def _target(name: str, o: dict[str, str], direction: str, mailbox: str, source: str) -> Target:
    kind = (o.get("type") if direction == INBOUND else o.get("server-type")) or ""
    known = _INBOUND_PROTOCOLS if direction == INBOUND else _OUTBOUND_PROTOCOLS
    protocol = kind.strip().lower()
    if protocol not in known:
        # A profile may rename the type literal: the auth-mechanism option still names the protocol.
        protocol = next((p for p in known if f"mail.{p}.auth.mechanisms" in o), "")
    if not protocol:
        opt = "type" if direction == INBOUND else "server-type"
        raise UsageError(f"{source}: [{name}] {opt}={kind!r}: not a protocol the probe knows",
                         hint="expected " + ", ".join(known))
    if not mailbox or is_placeholder(mailbox):
        raise UsageError(f"{source}: [{name}]: no shared mailbox address")
    account_key = "service-account" if direction == INBOUND else "user"
    account = o.get(account_key) or None
    grant = (o.get("grant-type") or "").strip().lower()
    port = o.get("port")
    password = o.get("password")

    def real(value: str | None) -> str | None:
        return value if value and not is_placeholder(value) else None

    return Target(
        section=name,
        direction=direction,
        protocol=protocol,
        mailbox=mailbox,
        account=real(account),
        app_only=protocol == "graph" or grant == "client_credentials",
        client_id=real(o.get("client-id")),
        tenant=real(o.get("directory-id")),
        authority=real(o.get("tenant-authority")),
        scope=real(o.get("scope")),
        server=real(o.get("server")),
        port=int(port) if port and port.isdigit() else None,
        password=real(password),
        placeholders=tuple(k for k, v in o.items() if is_placeholder(v)),
    )
