"""``dsguard milter``: Reject Direct Send and content analysis inside Postfix (milter)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsguard import workers as workers_mod
from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail
from dsguard.config import UNIX_PREFIX, Config, check_unix_socket_path, load_config
from dsguard.errors import ConfigError

log = logging.getLogger("dsguard.milter")

# The event loop thread shares the interpreter with the analysis thread and the event writer:
# with Python's default of 5 ms it can wait that long for the GIL before answering Postfix.
SWITCH_INTERVAL = 0.0005
MAX_WORKERS = workers_mod.MAX_WORKERS


_emit = workers_mod.emit


def milter(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen", help="HOST:PORT or unix:/absolute/path (default: milter.listen)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="Worker processes sharing the port (SO_REUSEPORT); one core each at most.",
        ),
    ] = 1,
) -> None:
    """Speak the milter protocol to Postfix: P1 at RCPT, P2 and content analysis at the end
    of each message (reject, hold, add headers).

    In main.cf: smtpd_milters = inet:127.0.0.1:10041 (or unix:/path for --listen unix:/path)
    and milter_default_action = tempfail.
    """
    cfg = config_or_exit(config)
    address = listen or cfg.milter.listen
    if address.startswith(UNIX_PREFIX):
        try:
            check_unix_socket_path(address[len(UNIX_PREFIX) :], "--listen")
        except ValueError as exc:
            fail(str(exc))
        if workers > 1:
            fail("--workers: a unix socket is served by one process; listen on HOST:PORT for workers")
        _serve(cfg, config, "", 0, None, parent=None, unix_path=address[len(UNIX_PREFIX) :])
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        fail(f"--listen: {address!r} is not HOST:PORT")
    host = host.strip("[]")
    if workers == 1:
        _serve(cfg, config, host, int(port), None, parent=None)
        return
    try:
        _supervise(cfg, config, host, int(port), workers)
    except OSError as exc:
        fail(f"milter: {exc.strerror or exc} ({address})")


def _serve(
    cfg: Config,
    config: Path,
    host: str,
    port: int,
    sock: socket.socket | None,
    *,
    parent: int | None,
    unix_path: str | None = None,
) -> None:
    """One milter process: the whole service, or one worker of ``--workers`` (``sock`` is its
    listening socket, ``parent`` the supervisor's pid)."""
    # Imported here, not at the top: every other dsguard command starts without the gateway,
    # the engine and the store.
    from dsguard.gateway.server import configure_logging
    from dsguard.postfix.milter import MilterServer

    store = store_or_exit(cfg)
    configure_logging()
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def run() -> None:
        server = MilterServer(cfg, store)
        bound = await server.start(
            host, port, sock=sock, unix_path=unix_path, socket_mode=cfg.milter.socket_mode
        )
        if server.runtime.resolver is None:
            log.warning("milter: no [gateway] dns_servers configured: live SPF/DKIM/DMARC is off")
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def reload() -> None:
            try:
                new = load_config(config)
                server.reload(new)  # raises before switching when the scoring is invalid
            except ConfigError as exc:
                for problem in exc.problems:
                    _emit({"event": "reload_failed", "problem": problem})
                return
            _emit({"event": "reloaded", "config": new.source, "pid": os.getpid()})

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        if parent is None:
            where = f"unix:{bound[0]}" if unix_path else f"{bound[0]}:{bound[1]}"
            _emit({"event": "ready", "milter": where})
        else:
            workers_mod.watch_parent(loop, parent, stopping.set)
            _emit({"event": "worker_ready", "pid": os.getpid()})
        await stopping.wait()
        await server.stop()
        store.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        fail(f"milter: {exc.strerror or exc} ({f'unix:{unix_path}' if unix_path else f'{host}:{port}'})")


def _supervise(cfg: Config, config: Path, host: str, port: int, count: int) -> None:
    """``--workers N``: N worker processes sharing the port (see dsguard.workers). Each worker
    is a whole milter (engine, resolver cache, event writer); Postfix opens one connection per
    SMTP session, so sessions spread over the workers."""
    # Everything the workers share is imported before they fork (copy-on-write); nothing
    # here has started a thread or an event loop yet.
    import dsguard.postfix.milter  # noqa: F401

    # A storage problem stops the command here, with its message, instead of in every worker
    # (and again in each replacement). Closed before the fork: workers open their own.
    store_or_exit(cfg).close()

    supervisor = os.getpid()
    current = cfg  # what a replacement worker starts with: the last config that loaded

    def on_reload() -> None:
        nonlocal current
        try:
            new = load_config(config)
        except ConfigError:
            return  # every worker says why, and keeps its config; replacements keep it too
        # The store stays the one the running workers write to (a restart changes it).
        current = new.model_copy(update={"storage": cfg.storage})

    def serve(_slot: int, sockets: list[socket.socket]) -> None:
        _serve(current, config, host, port, sockets[0], parent=supervisor)

    code = workers_mod.supervise(
        [(host, port)],
        count,
        serve,
        describe=lambda bound: {"milter": f"{bound[0][0]}:{bound[0][1]}"},
        on_reload=on_reload,
    )
    if code:
        raise typer.Exit(code)
