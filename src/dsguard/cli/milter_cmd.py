"""``dsguard milter``: Reject Direct Send and content analysis inside Postfix (milter)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail
from dsguard.config import Config, load_config
from dsguard.errors import ConfigError

log = logging.getLogger("dsguard.milter")

# The event loop thread shares the interpreter with the analysis thread and the event writer:
# with Python's default of 5 ms it can wait that long for the GIL before answering Postfix.
SWITCH_INTERVAL = 0.0005
MAX_WORKERS = 64
RESPAWN_DELAY = 1.0  # seconds before a worker that died is replaced (no busy loop)
PARENT_CHECK = 1.0  # seconds between a worker's checks that its parent still runs


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record), file=sys.stderr, flush=True)


def milter(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT (default: milter.listen).")
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

    In main.cf: smtpd_milters = inet:127.0.0.1:10041 and milter_default_action = tempfail.
    """
    cfg = config_or_exit(config)
    address = listen or cfg.milter.listen
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
        bound = await server.start(host, port, sock=sock)
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

        def orphaned() -> None:  # the supervisor is gone (killed): do not serve on alone
            if os.getppid() != parent:
                stopping.set()
            else:
                loop.call_later(PARENT_CHECK, orphaned)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        if parent is None:
            _emit({"event": "ready", "milter": f"{bound[0]}:{bound[1]}"})
        else:
            loop.call_later(PARENT_CHECK, orphaned)
            _emit({"event": "worker_ready", "pid": os.getpid()})
        await stopping.wait()
        await server.stop()
        store.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        fail(f"milter: {exc.strerror or exc} ({host}:{port})")


def _listener(host: str, port: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group: the kernel spreads new
    connections over the group's sockets, one per worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _supervise(cfg: Config, config: Path, host: str, port: int, count: int) -> None:
    """``--workers N``: N worker processes, each with its own listening socket on the same
    port. Each worker is a whole milter (engine, resolver cache, event writer); Postfix opens
    one connection per SMTP session, so sessions spread over the workers. The supervisor
    forwards SIGHUP (reload) and SIGTERM/SIGINT (stop) and replaces a worker that dies."""
    if not hasattr(socket, "SO_REUSEPORT"):
        fail("--workers needs SO_REUSEPORT (Linux, BSD)")
    # Everything the workers share is imported before they fork (copy-on-write); nothing
    # here has started a thread or an event loop yet.
    import dsguard.postfix.milter  # noqa: F401

    # A storage problem stops the command here, with its message, instead of in every worker
    # (and again in each replacement). Closed before the fork: workers open their own.
    store_or_exit(cfg).close()
    first = _listener(host, port)
    port = first.getsockname()[1]
    children: dict[int, float] = {}  # pid -> start time
    stopping = False

    def spawn(sock: socket.socket) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _serve(cfg, config, host, port, sock, parent=supervisor)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # a worker must never return into the supervisor's code
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children[pid] = time.monotonic()
        sock.close()  # the worker holds it; a copy here would take connections nobody accepts

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    supervisor = os.getpid()
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    # One socket at a time, each closed here right after its fork: a worker must not inherit
    # the sockets of the others (one it holds but never accepts on would strand connections
    # after their worker died).
    spawn(first)
    for _ in range(count - 1):
        spawn(_listener(host, port))
    _emit(
        {
            "event": "ready",
            "milter": f"{host}:{port}",
            "workers": sorted(children),
            "supervisor": supervisor,
        }
    )
    failed = False
    while children:
        pid, status = os.wait()
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code not in (0, -signal.SIGTERM)
            continue
        _emit({"event": "worker_exited", "pid": pid, "status": code})
        if time.monotonic() - started < RESPAWN_DELAY:
            time.sleep(RESPAWN_DELAY)
        if not stopping:
            spawn(_listener(host, port))
            _emit({"event": "worker_started", "workers": sorted(children)})
    if failed:
        raise typer.Exit(1)
