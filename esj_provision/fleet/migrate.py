"""Move a manifest's EWS rows (and, on request, IMAP/SMTP rows) to GRAPH.

EWS in Exchange Online is blocked by default since 1 October 2026 and switched off on 1 April
2027 (:mod:`esj_provision.esj.ews_sunset`). With GRAPH, ESJ reads and sends as its app (client
credentials); its Graph ``Mail.ReadWrite``/``Mail.Send`` are confined to its mailboxes with RBAC
for Applications, the ``--scope-esj-app`` machinery (:mod:`esj_provision.provision.scope`).

For every row to move, in manifest order:

1. **plan** (read-only): the ESJ app's Exchange service principal, its management scope with the
   mailbox, the role assignments the new protocols need, and what of the old setup can go;
2. **apply** (not with ``dry_run``): the missing steps through the one write loop, journalled;
   rows of one ESJ app run one after another, because ``Set-ManagementScope`` replaces the whole
   filter; verified with ``Test-ServicePrincipalAuthorization``;
3. the **migrated manifest** (``manifest-graph.csv``: moved rows on GRAPH, a row whose scoping
   failed keeps its old protocols, so a re-run picks it up), then ``bulk`` on it: the delegations
   still needed (none written when in place) and one options file per ESJ application.

Nothing of the old setup is removed: it is listed (``can_go``) for the admin to retire. A re-run
reads the tenant again and writes nothing that is in place: it is resumable and changes nothing
once done. ``dry_run`` makes no write call and writes no file.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AccessDeniedError, AuthError, EsjProvisionError, UsageError
from ..models import AppTrustee, Inbound, Outbound, UserTrustee
from ..provision.scope import roles_for, run_scope
from . import manifest as manifest_mod
from .manifest import COLUMNS, ManifestRow

if TYPE_CHECKING:
    from ..clouds import Cloud
    from ..esj.options import Profile
    from ..microsoft.session import Session
    from ..provision.journal import Journal
    from .bulk import BulkSummary

MIGRATED_MANIFEST = "manifest-graph.csv"
INCLUDABLE = ("imap", "smtp")


def parse_include(text: str | None) -> frozenset[str]:
    """``--include imap,smtp``: which non-EWS protocols move too."""
    if not text:
        return frozenset()
    parts = {p.strip().lower() for p in text.split(",") if p.strip()}
    bad = sorted(parts - set(INCLUDABLE))
    if bad:
        raise UsageError(f"--include: unknown protocol(s) {', '.join(bad)}", hint="choose from: imap, smtp")
    return frozenset(parts)


def moves(row: ManifestRow, include: frozenset[str]) -> tuple[Inbound, Outbound]:
    """The row's protocols after the move (unchanged when nothing of it moves)."""
    inbound = Inbound.GRAPH if row.inbound is Inbound.EWS or row.inbound.value in include else row.inbound
    outbound = Outbound.GRAPH if row.outbound is Outbound.EWS or row.outbound.value in include else row.outbound
    return inbound, outbound


def can_go(row: ManifestRow, inbound: Inbound, outbound: Outbound) -> list[str]:
    """What of the row's old setup is no longer needed once it runs on GRAPH (said, not removed)."""
    out: list[str] = []
    old = {p for p, moved in ((row.inbound.value, row.inbound is not inbound),
                              (row.outbound.value, row.outbound is not outbound)) if moved}
    is_app = isinstance(row.trustee, AppTrustee)
    if "ews" in old:
        if is_app:
            out.append("the ESJ app's Exchange full_access_as_app (tenant-wide) and any Application EWS.AccessAsApp "
                       "role assignment, once no EWS row of this app is left")
        out.append("the ESJ app's entry in EwsAllowedAppIDs, once no EWS row of this app is left (EWS is switched "
                   "off on 1 April 2027 anyway)")
    if "imap" in old and is_app:
        out.append("the ESJ app's Exchange IMAP.AccessAsApp, once no IMAP row of this app is left")
    if "smtp" in old:
        out.append(
            "the ESJ app's SMTP.SendAsApp (and any Application SMTP.SendAsApp role assignment), once no SMTP row of "
            "this app is left" if is_app else
            f"SMTP AUTH for {row.trustee.ref} (Set-CASMailbox -SmtpClientAuthenticationDisabled $true), once no SMTP row "
            "uses it"
        )
    if is_app and inbound is Inbound.GRAPH and outbound is Outbound.GRAPH:
        out.append(f"the Full Access of the ESJ app's Exchange service principal on {row.mailbox}: RBAC for "
                   "Applications grants GRAPH its access (this tool keeps it: bulk grants Full Access to every row)")
    elif isinstance(row.trustee, UserTrustee) and inbound is Inbound.GRAPH and row.inbound is not Inbound.GRAPH:
        out.append(f"pop-client/service-account ({row.trustee.address}) is empty for GRAPH; the account keeps Full Access and "
                   "Send As (smtp-client/user and allow-delegate use it)")
    return out


@dataclass
class MigrateRow:
    line: int
    mailbox: str
    trustee: str
    esj_app: str
    before: tuple[str, str]
    after: tuple[str, str]
    status: str = "planned"  # planned, ok, refused, failed
    scope: dict[str, Any] | None = None
    can_go: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def moved(self) -> bool:
        return self.status in {"ok", "planned"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "mailbox": self.mailbox,
            "trustee": self.trustee,
            "esj_app": self.esj_app,
            "from": {"inbound": self.before[0], "outbound": self.before[1]},
            "to": {"inbound": self.after[0], "outbound": self.after[1]},
            "status": self.status,
            "error": self.error,
            "scope": self.scope,
            "can_go": self.can_go,
        }


@dataclass
class MigrateReport:
    rows: list[MigrateRow] = field(default_factory=list)
    unchanged: int = 0  # rows with nothing to move
    writes: int = 0
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bulk: dict[str, Any] | None = None
    elapsed_s: float = 0.0
    dry_run: bool = False

    @property
    def all_ok(self) -> bool:
        bulk_ok = self.bulk is None or (self.bulk.get("refused", 0) == 0 and self.bulk.get("failed", 0) == 0)
        return bulk_ok and all(r.status in {"ok", "planned"} for r in self.rows)

    def summary(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "to_move": len(self.rows),
            "moved" if not self.dry_run else "planned": sum(1 for r in self.rows if r.moved),
            "refused": sum(1 for r in self.rows if r.status == "refused"),
            "failed": sum(1 for r in self.rows if r.status == "failed"),
            "unchanged": self.unchanged,
            "scope_writes": self.writes,
            "bulk": self.bulk,
            "files": self.files,
            "warnings": self.warnings,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def esj_app_for(row: ManifestRow, default: str | None) -> str | None:
    return row.trustee.client_id.lower() if isinstance(row.trustee, AppTrustee) else default


def check_apps(path: Path, include: frozenset[str], esj_app: str | None) -> None:
    """Every row to move needs an ESJ app (GRAPH signs in as it): refuse before any call otherwise."""
    missing = [r.line for r in manifest_mod.rows(path) if moves(r, include) != (r.inbound, r.outbound)
               and esj_app_for(r, esj_app) is None]
    if missing:
        raise UsageError(
            f"{len(missing)} row(s) to move have a service account as trustee and no ESJ app was given "
            f"(lines {', '.join(map(str, missing[:20]))}{', …' if len(missing) > 20 else ''})",
            hint="GRAPH signs in as the ESJ app (client credentials): give --esj-app CLIENT_ID "
            "(or ESJ_PROVISION_ESJ_CLIENT_ID)",
        )


def render_manifest(rows: list[tuple[ManifestRow, Inbound, Outbound]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row, inbound, outbound in rows:
        writer.writerow([row.mailbox, row.trustee.ref, inbound.value, outbound.value,
                         "true" if row.send_as else "false", "true" if row.auto_response else "false",
                         row.esj_instance or ""])
    return buf.getvalue()


async def _scope_row(
    session: Session, row: ManifestRow, app_id: str, after: tuple[Inbound, Outbound], *,
    dry_run: bool, journal: Journal | None,
) -> MigrateRow:
    result = MigrateRow(row.line, row.mailbox, row.trustee.ref, app_id, (row.inbound.value, row.outbound.value),
                        (after[0].value, after[1].value), can_go=can_go(row, *after))
    roles = roles_for(*after)
    try:
        plan = await run_scope(session, app_id, row.mailbox, roles, dry_run=dry_run, journal=journal)
    except (AccessDeniedError, AuthError):
        raise  # the provisioning app lacks a role: the same for every row, stop (exit 1)
    except EsjProvisionError as exc:
        result.status, result.error = "failed", exc.message
        return result
    result.scope = plan.to_dict()
    if plan.refused:
        result.status = "refused"
        result.error = "; ".join(f.message for f in plan.findings if f.level == "error")
    elif plan.failed and not dry_run:
        result.status = "failed"
        result.error = "; ".join([*(f.message for f in plan.findings if f.level == "error"),
                                  *(f"{s.target}: {s.error or s.outcome}" for s in plan.steps if s.failed)])
    else:
        result.status = "planned" if dry_run else "ok"
    return result


async def run_migrate(
    session: Session,
    path: Path,
    *,
    include: frozenset[str],
    esj_app: str | None,
    dry_run: bool,
    journal: Journal,
    out_dir: Path,
    concurrency: int,
    cloud: Cloud,
    profile: Profile | None = None,
) -> MigrateReport:
    """The whole move for an already validated manifest (see the module docstring)."""
    from ..files import write_output
    from .bulk import run_bulk

    started = time.monotonic()
    report = MigrateReport(dry_run=dry_run)
    final: list[tuple[ManifestRow, Inbound, Outbound]] = []
    for row in manifest_mod.rows(path):
        after = moves(row, include)
        app_id = esj_app_for(row, esj_app)
        if after == (row.inbound, row.outbound) or app_id is None:
            report.unchanged += 1
            final.append((row, row.inbound, row.outbound))
            continue
        # One row at a time: rows of one ESJ app share its management scope, which each write replaces.
        moved = await _scope_row(session, row, app_id, after, dry_run=dry_run, journal=None if dry_run else journal)
        report.rows.append(moved)
        report.writes += sum(1 for s in (moved.scope or {}).get("steps", []) if s.get("outcome") == "applied")
        final.append((row, *after) if moved.moved else (row, row.inbound, row.outbound))
    if dry_run:
        report.elapsed_s = time.monotonic() - started
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    migrated = write_output(out_dir / MIGRATED_MANIFEST, render_manifest(final), contains_secret=False)
    summary: BulkSummary = await run_bulk(
        session, migrated, journal=journal, dry_run=False, concurrency=concurrency, out_dir=out_dir,
        cloud=cloud, profile=profile, esj_client_id=esj_app,
    )
    report.bulk = {k: v for k, v in summary.to_dict().items() if k in {"rows", "ok", "refused", "failed", "writes",
                                                                      "already_in_place", "failures"}}
    report.files = [str(migrated), *summary.files]
    report.warnings.extend(summary.warnings)
    report.elapsed_s = time.monotonic() - started
    return report

