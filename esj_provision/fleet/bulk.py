"""Bulk provisioning from a manifest: every row onboarded, concurrently, within the tenant's limits.

* Rows are streamed in chunks; each chunk's mailbox and account lookups go to Graph as JSON
  batches (the trustee, usually one service account for all, is looked up once per run).
* Exchange calls are what limit a run, so Send As is read for every row from one listing per
  trustee, joined to the rows through the shared-mailbox listing, which also gives each listed
  mailbox's type (:mod:`.listings`): a new mailbox costs 4 Exchange calls (read Full Access, two
  grants, read Full Access back) and 1 Graph item, an unchanged one 1 and 1; Send As grants are
  verified together by a fresh listing.
* Rows then run the onboarding plan/apply/verify concurrently (``concurrency`` at once); the
  transport paces Exchange adaptively, so a throttled tenant slows everyone down together.
* One row's failure never stops the others. The journal records every write before it is sent,
  so a rerun after a crash or ``kill -9`` finds the tenant as it is, writes only what is still
  missing, and records what became of any write that was in flight (``reconciled``).
* ESJ options are written per ESJ Application: the row's ``esj_instance``, or automatic shards of
  at most 25 mailboxes (Genesys' recommended maximum per E-mail Server).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from ..errors import AccessDeniedError, AuthError, ConfigError, EsjProvisionError, JournalError
from ..esj.request import esj_request_for
from ..models import Outcome, State, UserTrustee
from ..provision.journal import Entry, Journal, open_intents
from ..provision.onboard import Plan, run
from ..provision.request import OnboardRequest, send_as_for
from . import manifest as manifest_mod
from .listings import FleetListings, verify_batch_size, verify_send_as
from .manifest import ManifestRow

if TYPE_CHECKING:
    from ..clouds import Cloud
    from ..config import MailEndpoints
    from ..esj.options import EsjOptionSet, EsjRequest, Profile
    from ..microsoft.graph import LookupResult
    from ..microsoft.session import Session
    from ..probe.checks import Check
    from ..probe.targets import Target

CHUNK_ROWS = 100
VERIFY_EVERY = 200  # rows whose Send As grants one listing verifies at least (see verify_batch_size)
SHARD_SIZE = 25  # Genesys: no more than 25 mailboxes per E-mail Server instance
# Graph admits 4 concurrent requests per app to mailboxes, whichever mailboxes (updates-2026-11.md §5):
# probes run as the ESJ app, so at most this many rows are probed at once.
PROBE_CONCURRENCY = 4
T = TypeVar("T")


def request_for(row: ManifestRow, *, esj_app_id: str | None = None) -> OnboardRequest:
    return OnboardRequest(
        esj_app_id=row.trustee.app_id or esj_app_id,
        mailbox=row.mailbox,
        trustee=row.trustee,
        inbound=row.inbound,
        outbound=row.outbound,
        send_as=send_as_for(row.send_as, row.trustee),
        auto_response=row.auto_response,
    )


def _chunks(rows: Iterator[ManifestRow], size: int, first: int | None = None) -> Iterator[list[ManifestRow]]:
    """Chunks of ``size`` rows; with ``first``, the first ones are smaller (``first`` rows, then
    twice as many each time up to ``size``), so the workers start after one lookup round trip
    instead of waiting for a whole chunk's, and each next chunk is looked up while they work."""
    want = max(1, min(size, first or size))
    chunk: list[ManifestRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= want:
            yield chunk
            chunk = []
            want = min(size, want * 2)
    if chunk:
        yield chunk


async def warm_up(session: Session) -> None:
    """Get both tokens before the first row, so a sign-in problem fails the run at once (exit 1)
    instead of failing every row. Meanwhile a worker thread sets up the Graph SDK, which the first
    lookups would otherwise wait for, with Exchange (the scarce resource) idle."""
    session.graph.prepare_in_background()
    await session.tokens.get(session.http.graph.scope)
    await session.tokens.get(session.http.exchange.scope)


@dataclass
class RowResult:
    line: int
    mailbox: str
    trustee: str
    status: str  # ok, refused, failed, planned (dry run)
    plan: dict[str, Any]
    error: str | None = None
    probe: dict[str, Any] | None = None  # --probe: {"exit_status", "checks"}

    @property
    def failed(self) -> bool:
        return self.status in {"refused", "failed"}

    def to_json(self) -> str:
        return json.dumps(
            {
                "line": self.line,
                "mailbox": self.mailbox,
                "trustee": self.trustee,
                "status": self.status,
                "error": self.error,
                **{k: v for k, v in self.plan.items() if k in {"findings", "delegations"}},
                **({"probe": self.probe} if self.probe is not None else {}),
            },
            ensure_ascii=False,
        )


@dataclass
class BulkSummary:
    rows: int = 0
    ok: int = 0
    planned: int = 0
    refused: int = 0
    failed: int = 0
    writes: int = 0
    already: int = 0
    reconciled: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # line, mailbox, reason
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    probed: dict[str, int] = field(default_factory=dict)  # --probe: rows by probe outcome (ok/pending/failed)

    @property
    def all_ok(self) -> bool:
        return self.refused == 0 and self.failed == 0

    def add(self, row: ManifestRow, result: RowResult) -> None:
        """Count one finished row."""
        self.rows += 1
        if result.status == "ok":
            self.ok += 1
        elif result.status == "planned":
            self.planned += 1
        elif result.status == "refused":
            self.refused += 1
        else:
            self.failed += 1
        for d in result.plan.get("delegations", []):
            outcome = Outcome(d["outcome"]) if d.get("outcome") else None
            if outcome is not None and outcome.changed:
                self.writes += 1
            elif outcome is not None and outcome.already:
                self.already += 1
        if result.failed:
            self.failures.append((row.line, row.mailbox, result.error or result.status))
        if result.probe is not None:
            verdict = {0: "ok", 5: "pending"}.get(result.probe["exit_status"], "failed")
            self.probed[verdict] = self.probed.get(verdict, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "ok": self.ok,
            "planned": self.planned,
            "refused": self.refused,
            "failed": self.failed,
            "writes": self.writes,
            "already_in_place": self.already,
            "reconciled_in_flight_writes": self.reconciled,
            "failures": [{"line": line, "mailbox": m, "reason": r} for line, m, r in self.failures],
            "files": self.files,
            "warnings": self.warnings,
            "elapsed_s": round(self.elapsed_s, 3),
            "calls": self.stats,
            **({"probe": dict(self.probed)} if self.probed else {}),
        }


class OptionFiles:
    """Collects each row's ESJ options and writes one CFG file per ESJ Application."""

    def __init__(
        self,
        out_dir: Path,
        *,
        cloud: Cloud,
        profile: Profile | None,
        esj_client_id: str | None,
        tenant_id: str | None,
        named: set[str] | frozenset[str] = frozenset(),
        endpoints: MailEndpoints | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.endpoints = endpoints
        self.cloud = cloud
        self.profile = profile
        self.esj_client_id = esj_client_id
        self.tenant_id = tenant_id
        self._shard_of_line: dict[int, str] = {}
        self._pending: dict[str, list[ManifestRow]] = {}
        self._expected: dict[str, int] = {}  # rows assigned to a file
        self._finished: dict[str, int] = {}  # rows of it that are done, successful or not
        self._closed: set[str] = set()  # files that can receive no more rows
        # esj_instance names in the manifest (lowercased): an automatic shard never takes one of
        # them, or a row pinned to "auto-001" would share (or overwrite) that shard's file.
        self._named = {n.lower() for n in named}
        self._auto_number = 0  # the current automatic shard, and how many rows it has
        self._auto_count = SHARD_SIZE
        self.files: list[str] = []
        self.warnings: list[str] = []

    def request(self, row: ManifestRow, index: int) -> EsjRequest:
        req = esj_request_for(
            mailbox=row.mailbox,
            trustee=row.trustee,
            inbound=row.inbound,
            outbound=row.outbound,
            auto_response=row.auto_response,
            cloud=self.cloud,
            tenant_id=self.tenant_id,
            esj_client_id=self.esj_client_id,
            section_index=index,
        )
        if self.endpoints is not None:
            # Options made against a test tenant (the sandbox) point at its mail endpoints.
            req.imap_endpoint, req.smtp_endpoint, req.ews_endpoint = (
                self.endpoints.imap, self.endpoints.smtp, self.endpoints.ews)
        return req

    def check(self, samples: Iterable[ManifestRow]) -> None:
        """Build the options of one row of each kind (protocols, app or account trustee), as the
        first and as a later section of a file, before any write: a problem with the options
        (client id, profile) stops the run with nothing changed, not after every grant was made."""
        from ..esj.options import build_options

        for row in samples:
            for index in (0, 1):
                build_options(self.request(row, index), self.profile)

    def assign(self, row: ManifestRow) -> None:
        """Fix the row's file in manifest order, so shards do not depend on completion order."""
        if row.esj_instance:
            name = row.esj_instance
        else:
            if self._auto_count >= SHARD_SIZE:
                self._auto_number += 1
                while f"auto-{self._auto_number:03d}" in self._named:
                    self._auto_number += 1
                self._auto_count = 0
            name = f"auto-{self._auto_number:03d}"
            self._auto_count += 1
            if self._auto_count == SHARD_SIZE:
                self._closed.add(name)
        self._shard_of_line[row.line] = name
        self._pending.setdefault(name, [])
        self._expected[name] = self._expected.get(name, 0) + 1

    def finish(self, row: ManifestRow, *, include: bool) -> None:
        """A row is done; its options go in the file only if it succeeded. A full auto shard whose
        rows are all done is written at once, so memory stays flat on huge manifests."""
        name = self._shard_of_line.pop(row.line)
        if include:
            self._pending[name].append(row)
        self._finished[name] = self._finished.get(name, 0) + 1
        if name in self._closed and self._finished[name] == self._expected[name]:
            self._write(name)

    def flush_all(self) -> None:
        for name in list(self._pending):
            self._write(name)

    def options_for(self, row: ManifestRow) -> EsjOptionSet:
        """The row's options as the first section pair (what the probe reads)."""
        from ..esj.options import build_options

        return build_options(self.request(row, 0), self.profile)

    def _write(self, name: str) -> None:
        from ..esj.cfg import render_cfg
        from ..esj.options import build_options
        from ..files import write_output

        rows = sorted(self._pending.pop(name), key=lambda r: r.line)
        self._expected.pop(name, None)
        self._finished.pop(name, None)
        if not rows:
            return
        if len(rows) > SHARD_SIZE:
            self.warnings.append(
                f"ESJ application {name!r} gets {len(rows)} mailboxes; Genesys recommends at most {SHARD_SIZE} "
                "per E-mail Server"
            )
        sets: list[EsjOptionSet] = [build_options(self.request(row, index), self.profile) for index, row in enumerate(rows)]
        try:
            text = render_cfg(sets)
        except EsjProvisionError as exc:
            self.warnings.append(f"ESJ application {name!r}: options not written: {exc.message}")
            return
        path = write_output(self.out_dir / f"esj-{name}.cfg", text, contains_secret=False)
        self.files.append(str(path))


class Reconciler:
    """Settles the writes an interrupted earlier run left without an outcome: preflight has just
    read the tenant, so whether each was applied is known (never guessed from an unknown read)."""

    def __init__(self, journal: Journal, in_flight: dict[str, dict[str, Any]], summary: BulkSummary) -> None:
        self.journal = journal
        self.in_flight = in_flight
        self.summary = summary

    def _settle(self, entry: Entry, applied: bool) -> None:
        intent = self.in_flight.pop(entry.key, None)
        if intent is None:
            return
        self.journal.event(
            "reconciled",
            entry,
            outcome=(Outcome.APPLIED if applied else Outcome.NOT_APPLIED).value,
            run_of_intent=intent.get("run"),
            note="outcome of an interrupted earlier run, read from the tenant",
        )
        self.summary.reconciled += 1

    def plan(self, plan: Plan) -> None:
        if plan.app is not None:
            # A registration a crashed run started: preflight has just read whether Exchange has it.
            self._settle(Entry("new-service-principal", "(organization)", plan.app.app_id), plan.app.exo is not None)
        for d in plan.delegations:
            entry = Entry(d.op, plan.mailbox_id, plan.trustee_id)
            if d.current is State.UNKNOWN:
                self.in_flight.pop(entry.key, None)  # as before: forgotten here, settled by a later run
                continue
            self._settle(entry, d.current is d.desired)


async def onboard_row(
    session: Session,
    row: ManifestRow,
    lookups: dict[str, LookupResult],
    *,
    dry_run: bool,
    journal: Journal,
    esj_client_id: str | None = None,
    send_as: FleetListings | None = None,
) -> tuple[RowResult | None, Plan | None]:
    """One row's onboarding, its errors turned into the row's result (the run goes on), except the
    ones that would fail every row alike. No result yet (None) while the row's Send As grant
    awaits the verifying listing (``plan.verify_deferred``): :func:`result_of` makes it then."""
    try:
        request = request_for(row, esj_app_id=esj_client_id)
        plan = await run(
            session, request, mode="onboard", dry_run=dry_run, journal=journal, lookups=lookups, send_as=send_as
        )
    except (AccessDeniedError, AuthError, JournalError):
        raise  # the same for every row: stop the run (exit 1) rather than fail each row alike
    except EsjProvisionError as exc:
        return RowResult(row.line, row.mailbox, row.trustee.ref, "failed", {}, exc.message), None
    return (None if plan.verify_deferred else result_of(row, plan, dry_run=dry_run)), plan


def result_of(row: ManifestRow, plan: Plan, *, dry_run: bool) -> RowResult:
    data = plan.to_dict()
    if plan.refused:
        reason = "; ".join(f.message for f in plan.findings if f.level == "error")
        return RowResult(row.line, row.mailbox, row.trustee.ref, "refused", data, reason)
    if plan.failed:
        reason = "; ".join(
            f"{d.right.value}: {d.error or d.outcome}" for d in plan.delegations if d.outcome is not None and d.outcome.bad
        )
        return RowResult(row.line, row.mailbox, row.trustee.ref, "failed", data, reason)
    return RowResult(row.line, row.mailbox, row.trustee.ref, "planned" if dry_run else "ok", data)


def _open_results(out_dir: Path) -> tuple[Path, TextIO]:
    path = out_dir / "results.jsonl"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return path, path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a writable --out-dir") from None


async def probe_options(
    probe: Callable[[list[Target]], Awaitable[list[Check]]], options: EsjOptionSet
) -> dict[str, Any]:
    """One row's probe outcome, as its results line holds it."""
    from ..probe.checks import exit_status
    from ..probe.targets import targets_from_sections

    targets = targets_from_sections(options.as_dict(), options.mailbox, dict.fromkeys(options.sections, options.mailbox))
    checks = await probe(targets)
    return {"exit_status": exit_status(checks), "checks": [c.to_dict() for c in checks]}


async def run_bulk(
    session: Session,
    path: Path,
    *,
    journal: Journal,
    dry_run: bool,
    concurrency: int,
    out_dir: Path,
    cloud: Cloud,
    profile: Profile | None = None,
    esj_client_id: str | None = None,
    on_row: Callable[[RowResult], None] | None = None,
    probe: Callable[[list[Target]], Awaitable[list[Check]]] | None = None,
) -> BulkSummary:
    """Onboard every row of an already validated manifest; with ``probe``, probe each row that
    succeeded (at most PROBE_CONCURRENCY at once) and record the outcome in its results line. (Its
    length is the run's framing in order: checks before the first write, the rows, then the files
    and the summary.)"""
    started = time.monotonic()
    summary = BulkSummary()
    await warm_up(session)
    skipped: list[int] = []
    in_flight = open_intents(journal.path, skipped)  # writes a crashed run started but never finished
    summary.warnings += [f"{journal.path}, line {n}: unreadable journal line skipped" for n in skipped]
    named, samples = _scan(path)
    files = OptionFiles(
        out_dir,
        cloud=cloud,
        profile=profile,
        esj_client_id=esj_client_id,
        tenant_id=await session.tenant_guid(),  # a domain-form tenant becomes the token's tid
        named=named,
        endpoints=session.settings.mail,
    )
    probe_gate = asyncio.Semaphore(PROBE_CONCURRENCY)
    files.check(samples)  # everything validated before the first write
    if in_flight and not dry_run:
        journal.write("resume", note=f"{len(in_flight)} write(s) from an earlier run had no recorded outcome")
    reconciler = Reconciler(journal, in_flight, summary)
    results_path, results = _open_results(out_dir)
    listings = FleetListings(session, confirm_absent=False)
    pending: list[tuple[ManifestRow, Plan]] = []  # rows whose Send As grant awaits the verifying listing

    async def handle(row: ManifestRow, lookups: dict[str, LookupResult]) -> RowResult | Plan:
        result, plan = await onboard_row(
            session, row, lookups, dry_run=dry_run, journal=journal, esj_client_id=esj_client_id, send_as=listings
        )
        if plan is not None and not dry_run:
            reconciler.plan(plan)
        if result is None:
            assert plan is not None
            return plan
        return result

    async def probed(row: ManifestRow, result: RowResult) -> RowResult:
        # A row is probed once its result is final: after its Send As grant was verified.
        if probe is not None and not dry_run and result.status == "ok":
            async with probe_gate:
                result.probe = await probe_options(probe, files.options_for(row))
        return result

    async def verify_pending(batch: list[tuple[ManifestRow, Plan]]) -> None:
        await verify_send_as(session, listings, [plan for _, plan in batch])
        final = await asyncio.gather(*(probed(row, result_of(row, plan, dry_run=dry_run)) for row, plan in batch))
        for (row, _), result in zip(batch, final):
            finish(row, result)

    async def done(row: ManifestRow, outcome: RowResult | Plan) -> None:
        if isinstance(outcome, RowResult):
            finish(row, await probed(row, outcome))
            return
        pending.append((row, outcome))
        if len(pending) >= verify_batch_size(listings, VERIFY_EVERY):
            batch = pending[:]
            pending.clear()
            await verify_pending(batch)

    def finish(row: ManifestRow, result: RowResult) -> None:
        summary.add(row, result)
        files.finish(row, include=not result.failed)
        results.write(result.to_json() + "\n")
        results.flush()
        if on_row is not None:
            on_row(result)

    try:
        await process_rows(
            session,
            manifest_mod.rows(path),
            concurrency,
            handle,
            done,
            on_row_read=files.assign,
            listings=listings,
            types_from_listing=True,
        )
        if pending:
            await verify_pending(pending[:])
            pending.clear()
        files.flush_all()
    finally:
        results.close()
        summary.elapsed_s = time.monotonic() - started
        summary.stats = session.stats()
    summary.files = [str(results_path), *files.files]
    summary.warnings.extend(files.warnings)
    summary.warnings.extend(listings.notes)
    if in_flight and not dry_run:
        summary.warnings.append(
            f"{len(in_flight)} interrupted write(s) in the journal concern mailboxes not in this manifest; "
            "run `esj-provision audit` on their manifest to see where they stand"
        )
    summary.failures.sort()
    return summary


def _scan(path: Path) -> tuple[set[str], list[ManifestRow]]:
    """One more streamed read of the manifest: the esj_instance names it uses, and the first row of
    each kind (protocols, auto-response, app or account trustee) for :meth:`OptionFiles.check`."""
    named: set[str] = set()
    samples: dict[tuple[Any, ...], ManifestRow] = {}
    for row in manifest_mod.rows(path):
        if row.esj_instance:
            named.add(row.esj_instance)
        kind = (row.inbound, row.outbound, row.auto_response, row.trustee.kind, row.trustee.app_id)
        samples.setdefault(kind, row)
    return named, list(samples.values())


async def lookups_for(
    session: Session,
    chunk: list[ManifestRow],
    listings: FleetListings | None = None,
    *,
    types_from_listing: bool | Callable[[ManifestRow], bool] = False,
) -> dict[str, LookupResult]:
    """The chunk's mailbox and account lookups, as Graph JSON batches at low priority. The
    trustee (usually one service account for every row) is looked up once per session, and its
    Send As listing read once, before its rows need it all at once. With ``types_from_listing``
    (bulk: every row; audit: the rows it says), a mailbox the shared-mailbox listing names is not
    asked its type: it is shared."""
    cache = session.cache.trustee_lookups
    graph = session.graph
    mailboxes = list(dict.fromkeys(r.mailbox for r in chunk))
    listed_type_will_do = types_from_listing if callable(types_from_listing) else lambda _: bool(types_from_listing)
    ask_graph = {r.mailbox for r in chunk if not listed_type_will_do(r)}
    shared = {m for m in mailboxes if m not in ask_graph and listings is not None and listings.is_shared(m)}
    # App trustees (client ids) are not directory users: preflight resolves them as apps.
    accounts = [r.trustee.address for r in chunk if isinstance(r.trustee, UserTrustee)]
    new_trustees = [t for t in dict.fromkeys(accounts) if t not in cache]
    listed = [m for m in mailboxes if m in shared]
    # Their object ids come with the listing: Graph reads 15 of them per batch item, not one.
    ids = {m: oid for m in listed if listings is not None and (oid := listings.object_id_of(m))}
    by_listing, others, trustees = await asyncio.gather(
        graph.lookup_many(listed, with_purpose=False, background=True, ids=ids),
        graph.lookup_many([m for m in mailboxes if m not in shared], with_purpose=True, background=True),
        graph.lookup_many(new_trustees, with_purpose=False, background=True),
    )
    found = {ref: replace(r, purpose="shared") if r.user is not None else r for ref, r in by_listing.items()}
    found.update(others)
    if new_trustees:
        cache.update(trustees)
        if listings is not None:
            users = [cache[t].user for t in new_trustees]
            await asyncio.gather(*(listings.grants_of(u) for u in users if u is not None))
    return {**found, **{t: cache[t] for t in accounts if t in cache}}


async def process_rows(
    session: Session,
    rows: Iterator[ManifestRow],
    concurrency: int,
    handle: Callable[[ManifestRow, dict[str, LookupResult]], Awaitable[T]],
    done: Callable[[ManifestRow, T], Awaitable[None] | None],
    *,
    on_row_read: Callable[[ManifestRow], None] | None = None,
    listings: FleetListings | None = None,
    types_from_listing: bool | Callable[[ManifestRow], bool] = False,
) -> None:
    """Stream rows through ``concurrency`` workers. A reader looks up each chunk ahead (batched)
    and feeds a bounded queue, so Graph lookups overlap with the Exchange work of earlier rows,
    no worker idles at a chunk boundary (nor at the start: the first chunks are small), and memory
    holds about two chunks whatever the size. With ``listings``, the shared-mailbox listing is
    read first: it names each mailbox's Exchange Identity for the Send As listings."""
    queue: asyncio.Queue[tuple[ManifestRow, dict[str, LookupResult]] | None] = asyncio.Queue(maxsize=CHUNK_ROWS)
    workers = max(1, concurrency)

    async def reader() -> None:
        if listings is not None:
            await listings.load_shared()
        for chunk in _chunks(rows, CHUNK_ROWS, first=workers):
            if on_row_read is not None:
                for row in chunk:
                    on_row_read(row)
            lookups = await lookups_for(session, chunk, listings, types_from_listing=types_from_listing)
            for row in chunk:
                await queue.put((row, lookups))
        for _ in range(workers):
            await queue.put(None)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            row, lookups = item
            finished = done(row, await handle(row, lookups))
            if inspect.isawaitable(finished):
                await finished

    tasks = [asyncio.ensure_future(reader()), *(asyncio.ensure_future(worker()) for _ in range(workers))]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in finished:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        # On an error (or Ctrl-C) stop everyone, and wait, so nothing runs on a closing client.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
