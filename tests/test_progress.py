"""bulk and audit show a progress bar on a terminal (stderr a tty), and nothing of it otherwise."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from esj_provision.sandbox import Sandbox


def _run(sb: Sandbox, cwd: Path, args: list[str], *, tty: bool) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "ESJ_PROVISION_"))}
    env.update(sb.env, ESJ_PROVISION_JOURNAL=str(cwd / "journal.jsonl"), COLUMNS="100", TERM="xterm")
    env.pop("NO_COLOR", None)
    if not tty:
        proc = subprocess.run(
            [sys.executable, "-m", "esj_provision", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        return proc.returncode, proc.stderr
    master, slave = pty.openpty()
    proc2 = subprocess.Popen(
        [sys.executable, "-m", "esj_provision", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc2.wait(60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("command", ["audit", "bulk"])
def test_progress_bar_on_a_terminal_only(command: str, tmp_path: Path) -> None:
    with Sandbox(mailboxes=5) as sb:
        (tmp_path / "m.csv").write_text(
            "mailbox,trustee,inbound,outbound\n"
            + "".join(f"queue{i:04d}@contoso.com,esj-svc@contoso.com,imap,ews\n" for i in range(1, 4))
        )
        args = [command, "m.csv", *(["--out-dir", "out"] if command == "bulk" else [])]
        status, stderr = _run(sb, tmp_path, args, tty=True)
        assert status in (0, 3), stderr
        assert command in stderr and "3/3" in stderr
        status, stderr = _run(sb, tmp_path, args, tty=False)
        assert status in (0, 3), stderr
        assert "3/3" not in stderr
