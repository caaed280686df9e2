"""The tenant given as its domain (``AZURE_TENANT_ID=contoso.onmicrosoft.com``): ``bulk`` used to
make every grant, then stop with exit 2 ("tenant id ... is not a GUID"), write no options file and
journal run-interrupted; with 25 rows or more it stopped mid-run (issue 11, defect 1). The tenant
is now normalised once (the token's ``tid``), and the options are checked before the first write."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esj_provision.cli import app
from esj_provision.clouds import CLOUDS
from esj_provision.config import load_settings
from esj_provision.errors import UsageError
from esj_provision.esj.cfg import parse_cfg
from esj_provision.fleet.bulk import run_bulk
from esj_provision.microsoft.session import Session
from esj_provision.provision.journal import Journal, read_journal
from esj_provision.sandbox import Sandbox

TRUSTEE = "esj-svc@contoso.com"
WRITES = {"Add-MailboxPermission", "Add-RecipientPermission"}
pytestmark = pytest.mark.tenant(mailboxes=80)  # the conftest tenant, one for the module


def manifest(path: Path, first: int, count: int) -> None:
    lines = ["mailbox,trustee,inbound,outbound"]
    lines += [f"queue{n:04d}@contoso.com,{TRUSTEE},graph,graph" for n in range(first, first + count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def domain_env(sb: Sandbox, journal: Path) -> dict[str, str]:
    return {**sb.env, "AZURE_TENANT_ID": sb.tenant_domain, "ESJ_PROVISION_JOURNAL": str(journal)}


def test_bulk_with_the_tenant_as_its_domain_writes_options_with_the_tenant_guid(
    tenant: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest(tmp_path / "m.csv", 1, 30)  # more than one shard of 25: the first is written mid-run
    r = CliRunner().invoke(
        app, ["bulk", "m.csv", "--out-dir", "out"], env=domain_env(tenant, tmp_path / "j.jsonl"), catch_exceptions=False
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    files = sorted(p.name for p in (tmp_path / "out").glob("*.cfg"))
    assert files == ["esj-auto-001.cfg", "esj-auto-002.cfg"]
    for name in files:
        sections = parse_cfg((tmp_path / "out" / name).read_text(encoding="utf-8"))
        ids = {v["directory-id"] for v in sections.values() if "directory-id" in v}
        assert ids == {tenant.tenant_id.lower()}, name
    events = [x["event"] for x in read_journal(tmp_path / "j.jsonl")]
    assert events[0] == "run-start" and events[-1] == "run-end"


def test_onboard_with_the_tenant_as_its_domain_gets_the_guid_too(
    tenant: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onboard used to write a placeholder for a domain-form tenant; the same mapping as bulk now."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        app,
        ["onboard", "queue0040@contoso.com", "--trustee", TRUSTEE, "--inbound", "graph", "--outbound", "graph",
         "--format", "json"],
        env=domain_env(tenant, tmp_path / "j.jsonl"),
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    options = json.loads(r.stdout)["esj_options"]["options"]
    directory = [o for o in options if o["name"] == "directory-id"]
    assert directory and all(o["value"] == tenant.tenant_id.lower() and not o["placeholder"] for o in directory)


def test_bad_options_stop_bulk_before_the_first_write(tenant: Sandbox, tmp_path: Path) -> None:
    manifest(tmp_path / "m.csv", 50, 3)
    settings = load_settings(environ=domain_env(tenant, tmp_path / "j.jsonl"), dotenv_path=tmp_path / ".env")
    mark = len(tenant.calls())

    async def go() -> None:
        async with Session(settings) as session:
            with Journal(tmp_path / "j.jsonl") as journal:
                await run_bulk(
                    session, tmp_path / "m.csv", journal=journal, dry_run=False, concurrency=2,
                    out_dir=tmp_path / "out", cloud=CLOUDS["global"], esj_client_id="not-a-guid",
                )

    with pytest.raises(UsageError, match="not a GUID"):
        asyncio.run(go())
    assert not [c for c in tenant.calls()[mark:] if c.get("cmdlet") in WRITES]
