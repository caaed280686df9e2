"""``esj-provision bulk``: onboard every mailbox of a manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import ExitStatus, UsageError
from ._common import from_env, run_async
from ._options import EsjClientId, ProbeWait, tenant_command

if TYPE_CHECKING:
    from ..config import Settings


@tenant_command
def bulk(
    manifest: Path = typer.Argument(
        ...,
        metavar="MANIFEST",
        help="CSV (or YAML) manifest: mailbox,trustee,inbound,outbound[,send_as,auto_response,esj_instance].",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="The full plan for every row; no write call at all."),
    prune: bool = typer.Option(
        False,
        "--prune",
        help="Instead of onboarding: remove the manifest trustees' Full Access and Send As on mailboxes the "
        "manifest does not list for them (and nothing else).",
    ),
    as_powershell: bool = typer.Option(
        False, "--as-powershell", help="With --prune --dry-run: print the removals as Exchange Online PowerShell."
    ),
    include_user_mailboxes: bool = typer.Option(
        False, "--include-user-mailboxes", help="With --prune: look at user mailboxes too, not only shared ones."
    ),
    journal: Path | None = typer.Option(
        None,
        "--journal",
        metavar="PATH",
        help="Change journal; a rerun with the same journal resumes (env ESJ_PROVISION_JOURNAL).",
    ),
    out_dir: Path = typer.Option(
        Path("esj-provision-out"),
        "--out-dir",
        metavar="DIR",
        help="Where results.jsonl and one ESJ options file per ESJ Application go.",
    ),
    concurrency: int = typer.Option(
        8,
        "--concurrency",
        min=1,
        max=64,
        metavar="N",
        help="Rows in flight at once (the tenant's throttling paces them further).",
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="table|json",
        help="Summary as a table, or JSON lines (one per row, then the summary).",
    ),
    profile: Path | None = typer.Option(
        None, "--profile", metavar="FILE", help="ESJ literals profile (env ESJ_PROVISION_PROFILE)."
    ),
    esj_client_id: EsjClientId = None,
    probe_after: bool = typer.Option(
        False, "--probe",
        help="Probe each onboarded row as ESJ would (4 at once; secrets from ESJ_PROVISION_ESJ_CLIENT_SECRET / "
        "ESJ_PROVISION_ESJ_PASSWORD); the outcome goes into results.jsonl.",
    ),
    wait: ProbeWait = None,
    *,
    settings: Settings,
) -> None:
    """Onboard every mailbox of a manifest: validated first, then concurrent, resumable, journalled.

    With --prune, instead remove the manifest trustees' grants on mailboxes it does not list for them
    (--dry-run and --as-powershell to review first). Exit status 0 when every row (or removal)
    succeeded, 4 when some failed (listed; with --probe, also a failed probe), 5 with --probe when
    only grants Exchange has not applied yet remain, 1 when the run could not start.
    """
    from ..fleet import manifest as manifest_mod

    profile_path = from_env(profile, "ESJ_PROVISION_PROFILE")
    esj_client_id = from_env(esj_client_id, "ESJ_PROVISION_ESJ_CLIENT_ID")
    journal_path = from_env(journal, "ESJ_PROVISION_JOURNAL")
    journal = Path(journal_path) if journal_path else None
    fmt_key = fmt.strip().lower()
    if fmt_key not in ("table", "json"):
        raise UsageError(f"unknown format {fmt!r}", hint="choose one of: table, json")
    if as_powershell and not (prune and dry_run):
        raise UsageError("--as-powershell goes with --prune --dry-run", hint="review the removals first, then run them")
    if include_user_mailboxes and not prune:
        raise UsageError("--include-user-mailboxes goes with --prune")
    info = manifest_mod.validate(manifest)  # before any call to Microsoft, and before writing anything
    if prune:
        from .prune import prune_command

        kinds = ("SharedMailbox", "UserMailbox") if include_user_mailboxes else ("SharedMailbox",)
        prune_command(settings, info, dry_run, as_powershell, journal, concurrency, kinds, fmt_key)
        return  # a prune onboards nothing: EWS rows are only listed rows to it
    ews_note = ews_rows_warning(info.path)  # from 1 April 2027 EWS rows are refused here (exit 2)
    profile_obj = None
    if profile_path is not None:
        from ..esj.options import load_profile

        profile_obj = load_profile(Path(profile_path))
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir} is not a directory")
    blocking = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # the directory could never be created: say so before any call
        raise UsageError(f"--out-dir {out_dir} cannot be created: {blocking} is not a directory")
    from .probe import probe_after_inputs

    probe_in = probe_after_inputs(probe_after, wait, dry_run, "the mailboxes")
    summary = run_async(
        _bulk(settings, info, dry_run, journal, out_dir, concurrency, profile_obj, esj_client_id, fmt_key, probe_in)
    )
    if ews_note:
        summary.warnings.insert(0, ews_note)
    if fmt_key == "json":
        sys.stdout.write(json.dumps({"summary": summary.to_dict()}, ensure_ascii=False) + "\n")
    else:
        from .render import print_bulk_summary

        print_bulk_summary(summary, dry_run=dry_run)
    if not summary.all_ok or summary.probed.get("failed"):
        raise typer.Exit(int(ExitStatus.PARTIAL))
    if summary.probed.get("pending"):
        raise typer.Exit(int(ExitStatus.PENDING))


def ews_rows_warning(path: Path) -> str | None:
    """The end-of-EWS warning for a manifest with EWS rows (which lines), or a UsageError listing
    them from 1 April 2027, before any call."""
    from ..errors import ManifestError
    from ..esj.ews_sunset import sunset_warning
    from ..fleet import manifest as manifest_mod

    lines = [r.line for r in manifest_mod.rows(path) if ews_warning_needed(r)]
    if not lines:
        return None
    shown = ", ".join(str(n) for n in lines[:20]) + (", …" if len(lines) > 20 else "")
    try:
        return sunset_warning(f"EWS in {len(lines)} row(s) (lines {shown})")
    except UsageError as exc:
        raise ManifestError(exc.message, [(n, "EWS is switched off") for n in lines[:50]], hint=exc.hint) from None


def ews_warning_needed(row: Any) -> bool:
    from ..models import Inbound, Outbound

    return Inbound.EWS is row.inbound or Outbound.EWS is row.outbound


async def _bulk(
    settings: Any,
    info: Any,
    dry_run: bool,
    journal_path: Path | None,
    out_dir: Path,
    concurrency: int,
    profile: Any,
    esj_client_id: str | None,
    fmt_key: str,
    probe_in: tuple[Any, ...] | None = None,
) -> Any:
    import contextlib

    from ..fleet.bulk import run_bulk
    from ..microsoft.session import Session
    from ..provision.journal import default_journal_path, journalled_run
    from ._common import print_warning
    from .render import Progress

    progress = Progress(info.rows, enabled=sys.stderr.isatty())

    def on_row(result: Any) -> None:
        if fmt_key == "json":
            sys.stdout.write(result.to_json() + "\n")
            sys.stdout.flush()
        progress.advance()

    async with Session(settings, max_connections=max(20, concurrency * 2)) as session, \
            contextlib.AsyncExitStack() as stack:
        probe = None
        if probe_in is not None:
            probe = await _row_prober(settings, session, esj_client_id, probe_in, stack)
        with journalled_run(
            journal_path or default_journal_path(), secrets=settings.secrets, command="bulk", manifest=info.path,
            rows=info.rows, dry_run=dry_run, on_notice=print_warning,
        ) as journal:
            with progress:
                summary = await run_bulk(
                    session,
                    info.path,
                    journal=journal,
                    dry_run=dry_run,
                    concurrency=concurrency,
                    out_dir=out_dir,
                    cloud=settings.cloud,
                    profile=profile,
                    esj_client_id=esj_client_id,
                    on_row=on_row,
                    probe=probe,
                )
            if not dry_run:
                counts = {"rows", "ok", "refused", "failed", "writes"}
                journal.write("run-end", command="bulk", **{k: v for k, v in summary.to_dict().items() if k in counts})
            return summary


async def _row_prober(settings: Any, session: Any, esj_client_id: str | None, probe_in: tuple[Any, ...],
                      stack: Any) -> Any:
    """One prober for every row: one HTTP client, and the run's session to read the grants."""
    from ..probe.checks import Prober, probe_until
    from ..probe.run import CLOCK, SLEEP, http_client, setup_from
    from ..provision.grants import ExchangeGrantReader
    from .probe import print_wait

    secret, password, wait_s, _ = probe_in
    setup = setup_from(settings, esj_client_id=esj_client_id, secret=secret, password=password, send_test_to=None)
    client = await stack.enter_async_context(http_client(setup))
    prober = Prober(setup, client, ExchangeGrantReader(session))

    async def probe(targets: Any) -> Any:
        if wait_s <= 0:
            return await prober.probe_all(targets)
        return await probe_until(prober, targets, wait_s, clock=CLOCK, sleep=SLEEP, on_wait=print_wait)

    return probe
