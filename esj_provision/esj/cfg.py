"""The ESJ options as text: the GAX CFG file (and its parser) and the documented JSON shape.

No rendering for the terminal here (that is cli/render.py), and no file writing (files.py).

CFG format (GAX "Bulk Provisioning of Configuration Options", CFG/CONF): UTF-8, one ``[section]``
or ``option=value`` per line, empty values kept as ``option=``. GAX documents neither comments
nor escaping, so this module writes neither: notes go to stderr, and a value that a line-based
file cannot hold (a line break, a control character) is refused instead of being mangled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, UsageError

if TYPE_CHECKING:
    from .options import EsjOption, EsjOptionSet

# Same rule as esj_options: anything that could split a line, or a control character.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------
# CFG


def render_cfg(option_sets: Sequence[EsjOptionSet]) -> str:
    """The CFG text for one or more mailboxes; each section appears once, in first-seen order."""
    sections: dict[str, list[EsjOption]] = {}
    owner: dict[str, str] = {}
    for option_set in option_sets:
        for section in option_set.sections:
            if section in owner:
                raise UsageError(
                    f"section [{section}] is used by both {owner[section]} and {option_set.mailbox}",
                    hint="give each mailbox its own section index",
                )
        for section in option_set.sections:
            owner[section] = option_set.mailbox
        for o in option_set.options:
            sections.setdefault(o.section, []).append(o)

    lines: list[str] = []
    for section, options in sections.items():
        if not _NAME.match(section):
            raise UsageError(f"section name {section!r} cannot be written to a CFG file")
        lines.append(f"[{section}]")
        seen: set[str] = set()
        for o in options:
            if not _NAME.match(o.name):
                raise UsageError(f"option name {o.key!r} cannot be written to a CFG file")
            if o.name in seen:
                raise UsageError(f"option {o.key} appears twice")
            seen.add(o.name)
            if _BAD_CHARS.search(o.value):
                shown = "(secret)" if o.secret else repr(o.value)
                raise UsageError(
                    f"{o.key} value {shown} contains a line break or control character; "
                    "a CFG file cannot hold it"
                )
            lines.append(f"{o.name}={o.value}")
    return "".join(line + "\n" for line in lines)


def parse_cfg(text: str, source: str = "<cfg>") -> dict[str, dict[str, str]]:
    """Parse CFG text back into section -> option -> value. Exact inverse of :func:`render_cfg`.

    Values are kept byte for byte (no stripping: ESJ reads them as they are); option names and
    section headers are stripped. Tolerates what an exported or hand-edited file may carry: a
    UTF-8 BOM, CRLF line ends, blank lines, ``#``/``;`` comment lines. Raises ConfigError with
    the line number for anything else.
    """
    result: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    current_name = ""
    # Split on "\n" only: str.splitlines() would also split on characters a value may contain.
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current_name = stripped[1:-1].strip()
            if not current_name:
                raise ConfigError(f"{source}: line {number}: empty section name")
            if current_name in result:
                raise ConfigError(f"{source}: line {number}: section [{current_name}] appears twice")
            current = result[current_name] = {}
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{source}: line {number}: expected [section] or option=value, got {line!r}")
        if current is None:
            raise ConfigError(f"{source}: line {number}: option {name!r} before any [section]")
        if name in current:
            raise ConfigError(f"{source}: line {number}: option {current_name}/{name} appears twice")
        current[name] = value
    return result


# --------------------------------------------------------------------------------------------
# JSON


def option_set_to_dict(option_set: EsjOptionSet) -> dict[str, Any]:
    """The documented JSON shape for one mailbox (keys are stable; new keys may be added)."""
    return {
        "mailbox": option_set.mailbox,
        "trustee": option_set.trustee,
        "inbound": option_set.inbound.value,
        "outbound": option_set.outbound.value,
        "auto_response": option_set.auto_response,
        "cloud": option_set.cloud,
        "sections": {"inbound": option_set.inbound_section, "outbound": option_set.outbound_section},
        "options": [
            {
                "section": o.section,
                "name": o.name,
                "value": o.value,
                "confirmed": o.confirmed,
                "source": o.source,
                "placeholder": o.placeholder,
                "secret": o.secret,
                "note": o.note,
            }
            for o in option_set.options
        ],
        "notes": list(option_set.notes),
        "unconfirmed": [o.key for o in option_set.unconfirmed],
        "placeholders": [o.key for o in option_set.placeholders],
    }


def render_json(data: EsjOptionSet | Sequence[EsjOptionSet]) -> str:
    """One option set gives an object; a sequence gives an array (the input decides, not its length)."""
    from .options import EsjOptionSet

    obj: Any = (
        option_set_to_dict(data) if isinstance(data, EsjOptionSet) else [option_set_to_dict(s) for s in data]
    )
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
