"""``esj-provision sandbox``: run the local Entra ID / Graph / Exchange stand-in until stopped.

It prints the environment a client needs, writes it to ``--env-file`` once the port is open (so a
script can wait for that file), and serves until SIGINT/SIGTERM. aiohttp and cryptography are
imported only inside the command, so ``esj-provision --help`` does not pay for them.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from ..errors import ConfigError, EsjProvisionError, UsageError

if TYPE_CHECKING:
    from ..sandbox.config import SandboxConfig, SandboxError
    from ..sandbox.server import SandboxServer

T = TypeVar("T")

_SAFE = re.compile(r"^[A-Za-z0-9_./:@~+,=%\[\]-]*$")


def _dotenv(value: str) -> str:
    if _SAFE.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"  # single quotes: no escapes, no $ expansion in dotenv readers
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _write_env_file(path: Path, env: dict[str, str]) -> None:
    """Mode 0600 (it holds a secret) and atomic (a waiting script never reads half a file)."""
    text = "".join(f"{k}={_dotenv(v)}\n" for k, v in env.items())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _banner(server: SandboxServer, env_file: Path | None) -> str:
    """What a client needs, as exports to paste; the secret stays in the 0600 --env-file.

    Never-rule: no module prints a secret, not even the sandbox's own throwaway one (a terminal's
    scrollback and a CI log outlive the sandbox).
    """
    from ..sandbox.config import ENV_FILE_ONLY

    env = {k: v for k, v in {**server.env(), **server.esj_env()}.items() if k not in ENV_FILE_ONLY}
    m = server.material
    assert m is not None
    lines = [
        f"# esj-provision sandbox at {server.url} (tenant {server.tenant.domain} = {server.tenant.tenant_id})",
        *(
            (
                f"# AZURE_CLIENT_SECRET=(in --env-file {env_file})"
                if env_file is not None
                else "# AZURE_CLIENT_SECRET=(not shown: give --env-file FILE to get it in a 0600 file)"
            )
            if k == "AZURE_CLIENT_SECRET"
            else f"export {k}={shlex.quote(v)}"
            for k, v in env.items()
        ),
        f"# certificate sign-in: {m.cert_path} (thumbprint {m.client_cert.sha1_hex}),",
        f"#   or {m.pfx_path} with the password in {m.pfx_password_path}",
        f"# ESJ: app {env['ESJ_PROVISION_ESJ_CLIENT_ID']}, service account esj-svc@contoso.com; their secret and "
        "password are in --env-file only",
        f"# mail: IMAP {env['ESJ_PROVISION_IMAP_ENDPOINT']} (TLS), SMTP {env['ESJ_PROVISION_SMTP_ENDPOINT']} (STARTTLS), "
        f"EWS {env['ESJ_PROVISION_EWS_ENDPOINT']}; new grants reach them after {server.prop.delay:g} s",
        f"# control API: {server.url}/_sandbox/ (state, calls, faults, mutate, sent)",
    ]
    return "\n".join(lines) + "\n"


async def _serve(cfg: SandboxConfig, env_file: Path | None) -> None:
    import asyncio
    import contextlib
    import signal

    from ..sandbox.server import SandboxServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGTERM during start-up still ends in a clean stop, never a traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler; there Ctrl-C raises KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    server = _checked(SandboxServer, cfg)
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise EsjProvisionError(
            f"the sandbox cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
            hint="choose another --port, or --port 0 for a free one",
        ) from None
    try:
        sys.stdout.write(_banner(server, env_file))
        sys.stdout.flush()
        if env_file is not None:
            _write_env_file(env_file, {**server.env(), **server.esj_env()})
        sys.stderr.write("sandbox: serving; Ctrl-C or SIGTERM stops it\n")
        sys.stderr.flush()
        assert server.done is not None
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.done.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
    finally:
        if env_file is not None:
            env_file.unlink(missing_ok=True)  # a stale file would send the next waiter to a dead port
        await server.stop()
    sys.stderr.write("sandbox: stopped\n")


def _translated(exc: SandboxError) -> EsjProvisionError:
    """The sandbox's own error as the CLI's: a bad option is a usage error, a bad file a config error."""
    kind = UsageError if exc.usage else ConfigError
    return kind(exc.message, hint=exc.hint)


def _checked(make: Callable[[SandboxConfig], T], cfg: SandboxConfig) -> T:
    from ..sandbox.config import SandboxError

    try:
        return make(cfg)
    except SandboxError as exc:
        raise _translated(exc) from None


def sandbox(
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback address to listen on: 127.0.0.1, ::1 or localhost."),
    port: int = typer.Option(0, "--port", help="TCP port; 0 picks a free one."),
    dir: Path | None = typer.Option(
        None, "--dir", help="Where ca.pem and the app certificate go (kept). Default: a temp dir, removed at stop."
    ),
    state: Path | None = typer.Option(
        None, "--state", help="JSON state file: loaded at start if present, rewritten after every change."
    ),
    env_file: Path | None = typer.Option(
        None, "--env-file", help="Write the client environment here (dotenv, mode 0600) once serving."
    ),
    latency_ms: str | None = typer.Option(None, "--latency-ms", help="Added latency per request: N or MIN-MAX."),
    throttle_rps: float | None = typer.Option(
        None, "--throttle-rps", help="Requests per second per service (Graph, Exchange) before 429."
    ),
    graph_rps: float | None = typer.Option(
        None, "--graph-rps", help="Graph's own requests per second before 429 (overrides --throttle-rps)."
    ),
    exchange_rps: float | None = typer.Option(
        None, "--exchange-rps", help="Exchange's own requests per second before 429 (overrides --throttle-rps)."
    ),
    outlook_concurrency: int = typer.Option(
        0, "--outlook-concurrency",
        help="Graph Outlook requests (mail, mailboxSettings) in flight per app before 429 ApplicationThrottled; "
        "Microsoft's limit is 4, 0 is off.",
    ),
    fault_rate: float = typer.Option(0.0, "--fault-rate", help="Probability (0-1) of a random 503/504/reset."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice (faults, latency, batch order)."),
    page_size: int = typer.Option(1000, "--page-size", help="InvokeCommand rows per page before @odata.nextLink."),
    token_lifetime: int = typer.Option(3599, "--token-lifetime", help="Access-token lifetime in seconds."),
    mailboxes: int = typer.Option(0, "--mailboxes", help="Add N generated shared mailboxes queue0001@..."),
    upn_domain: str | None = typer.Option(
        None, "--upn-domain",
        help="The accounts' sign-in names (UPNs) in this domain; contoso.com makes each UPN its address. "
        "Default: contoso.onmicrosoft.com, so no UPN is an address (Graph finds users by address then).",
    ),
    client_secret_file: Path | None = typer.Option(
        None,
        "--client-secret-file",
        help="Read the provisioning app's secret from this file (default: $ESJ_SANDBOX_CLIENT_SECRET, else random).",
    ),
    pfx_password_file: Path | None = typer.Option(
        None,
        "--pfx-password-file",
        help="Read the password of provisioning-app.pfx from this file (default: $ESJ_SANDBOX_PFX_PASSWORD, else random).",
    ),
    max_runtime: float | None = typer.Option(None, "--max-runtime", help="Stop by itself after this many seconds."),
    imap_port: int = typer.Option(0, "--imap-port", help="IMAP (implicit TLS) port; 0 picks a free one."),
    smtp_port: int = typer.Option(0, "--smtp-port", help="SMTP submission (STARTTLS) port; 0 picks a free one."),
    propagation_s: float = typer.Option(
        0.0, "--propagation-s",
        help="Seconds before a new grant (Full Access, Send As, RBAC, EWS allow-list) reaches IMAP/SMTP/EWS/Graph.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request to stderr."),
) -> None:
    """Run a local HTTPS stand-in for Entra ID, Microsoft Graph and Exchange Online (a sample tenant)."""
    import asyncio

    from ..sandbox.config import PFX_PASSWORD_ENV, SECRET_ENV, SandboxConfig

    # Secrets are never taken as flag values: a file, or the environment.
    secret = _read_secret(client_secret_file, "--client-secret-file") or os.environ.get(SECRET_ENV) or None
    pfx_password = _read_secret(pfx_password_file, "--pfx-password-file") or os.environ.get(PFX_PASSWORD_ENV) or None
    cfg = _checked(lambda c: c.validate(), SandboxConfig(
        host=host, port=port, dir=dir, state_path=state, page_size=page_size, throttle_rps=throttle_rps,
        graph_rps=graph_rps, exchange_rps=exchange_rps, outlook_concurrency=outlook_concurrency,
        fault_rate=fault_rate, seed=seed, latency_ms=latency_ms,  # type: ignore[arg-type]
        token_lifetime=token_lifetime, mailboxes=mailboxes, upn_domain=upn_domain, client_secret=secret,
        pfx_password=pfx_password, max_runtime=max_runtime,
        imap_port=imap_port, smtp_port=smtp_port, propagation_s=propagation_s, verbose=verbose,
    ))
    if env_file is not None:
        env_file.unlink(missing_ok=True)  # waiters must see the NEW file, not a previous run's
    asyncio.run(_serve(cfg, env_file))


def _read_secret(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {flag} {path}: {reason}") from None
    if not value:
        raise ConfigError(f"{flag} {path} is empty")
    return value
