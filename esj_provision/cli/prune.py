"""``esj-provision bulk MANIFEST --prune``: the run, its journal records, and its output.

Not a command of its own: ``bulk`` hands over to :func:`prune_command` when ``--prune`` is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from ..errors import ExitStatus
from ._common import run_async


def prune_command(
    settings: Any,
    info: Any,
    dry_run: bool,
    as_powershell: bool,
    journal_path: Path | None,
    concurrency: int,
    kinds: tuple[str, ...],
    fmt_key: str,
) -> None:
    report = run_async(_prune(settings, info, dry_run, journal_path, concurrency, kinds))
    if as_powershell:
        sys.stdout.write(report.powershell())
    elif fmt_key == "json":
        for r in report.removals:
            sys.stdout.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.write(json.dumps({"summary": report.summary()}, ensure_ascii=False) + "\n")
    else:
        from .access import print_prune

        print_prune(report)
    if not report.all_ok:
        raise typer.Exit(int(ExitStatus.PARTIAL))


async def _prune(
    settings: Any, info: Any, dry_run: bool, journal_path: Path | None, concurrency: int, kinds: tuple[str, ...]
) -> Any:
    from ..fleet.prune import run_prune
    from ..microsoft.session import Session
    from ..provision.journal import default_journal_path, journalled_run
    from ._common import print_warning
    from .render import Progress

    async with Session(settings, max_connections=max(20, concurrency * 2)) as session:
        with journalled_run(
            journal_path or default_journal_path(), secrets=settings.secrets, command="bulk --prune",
            manifest=info.path, rows=info.rows, dry_run=dry_run,
            on_notice=print_warning,
        ) as journal:
            with Progress(None, enabled=sys.stderr.isatty(), label="mailboxes") as progress:
                report = await run_prune(
                    session,
                    info.path,
                    journal=journal,
                    dry_run=dry_run,
                    concurrency=concurrency,
                    kinds=kinds,
                    on_progress=progress.update,
                )
            if not dry_run:
                s = report.summary()
                journal.write(
                    "run-end",
                    command="bulk --prune",
                    **{k: s[k] for k in ("unlisted_grants", "removed", "already_absent", "failed", "unknown")},
                )
            return report
