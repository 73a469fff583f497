"""Multi-process serving shared by ``dsguard milter --workers`` and ``dsguard gateway --workers``.

One supervisor process binds the listening sockets, forks N workers and then only waits: each
worker gets its own socket per address, all in the port's SO_REUSEPORT group, so the kernel
spreads new connections over the workers (one core each at most: the services are single
event loops). The supervisor forwards SIGHUP (reload) and SIGTERM/SIGINT (stop) to every
worker, replaces a worker that dies (after ``reclaim`` has cleaned up what it left behind,
e.g. the gateway's spool entries it had claimed), and a worker stops by itself when the
supervisor is gone (SIGKILL of the supervisor must not leave a headless pool serving on).

Workers are numbered by slot (0..N-1); a replacement takes the slot of the worker it replaces,
so per-worker state on disk (the gateway's ``active/w<slot>/``) has exactly one owner at a time.

SECURITY: the listening sockets face the network, but nothing here reads from them; what is
accepted is the workers' business (each enforces its service's own limits). A worker inherits
only its own sockets: a socket held but never accepted on would strand the connections the
kernel queues on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_WORKERS = 64
RESPAWN_DELAY = 1.0  # seconds before a worker that died is replaced (no busy loop)
PARENT_CHECK = 1.0  # seconds between a worker's checks that its supervisor still runs
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def emit(record: dict[str, object]) -> None:
    """One JSON line on stderr (the services' log format), in one write: the supervisor and
    the workers share the stream, and print() would write the line and its newline
    separately, letting another process's line land in between."""
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


def listener(host: str, port: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group: the kernel spreads new
    connections over the group's sockets, one per worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted
    # sockets whose proto says TCP (asyncio.base_events._set_nodelay), and the accepted
    # socket takes the listener's. Without it every session stalled ~40 ms on Nagle plus
    # delayed ACK between two small replies (seen in bench/gateway.py's session mode).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def watch_parent(loop: asyncio.AbstractEventLoop, parent: int, stop: Callable[[], None]) -> None:
    """In a worker: call ``stop`` once the supervisor ``parent`` is gone (the worker was
    re-parented), so a killed supervisor does not leave workers serving without anyone to
    replace them or forward signals."""

    def check() -> None:
        if os.getppid() != parent:
            stop()
        else:
            loop.call_later(PARENT_CHECK, check)

    loop.call_later(PARENT_CHECK, check)


@dataclass
class _Child:
    slot: int
    started: float


def supervise(
    addresses: Sequence[tuple[str, int]],
    count: int,
    serve: Callable[[int, list[socket.socket]], None],
    *,
    describe: Callable[[list[tuple[str, int]]], dict[str, object]],
    reclaim: Callable[[int], None] | None = None,
    on_reload: Callable[[], None] | None = None,
) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns the exit status (0: every worker
    stopped cleanly).

    ``serve(slot, sockets)`` runs in the worker (one socket per address, in order) and returns
    when the worker is done. ``describe(bound)`` gives the fields of the ``ready`` line for the
    bound addresses (port 0 resolved). ``reclaim(slot)`` runs in the supervisor after a worker
    ended and before its slot is used again. ``on_reload`` runs in the supervisor on SIGHUP,
    before the signal is forwarded (e.g. so that replacements start with the new config).
    Raises OSError when an address cannot be bound.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("worker processes need SO_REUSEPORT (Linux, BSD)")
    first = [listener(host, port) for host, port in addresses]
    # Port 0 means "any": every later worker must join the group of the port the first got.
    bound = [(host, s.getsockname()[1]) for (host, _), s in zip(addresses, first, strict=True)]
    children: dict[int, _Child] = {}
    stopping = False
    supervisor = os.getpid()

    def spawn(slot: int, sockets: list[socket.socket]) -> None:
        # Signals are held during the fork: the child must not run the supervisor's handler
        # (with its copy of ``children``), and the supervisor must know the pid before it
        # forwards anything.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # Until the worker's own handler is in place a reload must not kill it (the
                # default action of SIGHUP); it starts with the current config anyway.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                serve(slot, sockets)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:  # a worker must never return into the supervisor's code
                code = 1
                with contextlib.suppress(Exception):  # say why, as one JSON line like the rest
                    trace = "".join(traceback.format_exception(exc))
                    emit({"event": "worker_failed", "pid": os.getpid(), "error": trace[-4000:]})
            finally:
                sys.stderr.flush()
                os._exit(code)
        children[pid] = _Child(slot, time.monotonic())
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sock in sockets:  # the worker holds them; a copy here would take connections
            sock.close()  # nobody accepts

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        elif on_reload is not None:
            try:
                on_reload()
            except Exception as exc:  # the supervisor must outlive a bad reload; workers report
                emit({"event": "reload_failed", "supervisor": os.getpid(), "problem": str(exc)})
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    # One set of sockets at a time, each closed here right after its fork: a worker must not
    # inherit the sockets of the others.
    spawn(0, first)
    for slot in range(1, count):
        spawn(slot, [listener(host, port) for host, port in bound])
    emit(
        {"event": "ready", **describe(bound), "workers": sorted(children), "supervisor": supervisor}
    )
    failed = False
    while children:
        pid, status = os.wait()
        child = children.pop(pid, None)
        if child is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if reclaim is not None:
            try:
                reclaim(child.slot)
            except Exception as exc:
                emit({"event": "reclaim_failed", "slot": child.slot, "error": str(exc)})
        if stopping:
            failed = failed or code not in (0, -signal.SIGTERM)
            continue
        emit({"event": "worker_exited", "pid": pid, "slot": child.slot, "status": code})
        if time.monotonic() - child.started < RESPAWN_DELAY:
            time.sleep(RESPAWN_DELAY)
        while not stopping:
            try:
                sockets = [listener(host, port) for host, port in bound]
            except OSError as exc:  # e.g. out of file descriptors: the slot is not given up
                emit({"event": "worker_start_failed", "slot": child.slot, "error": str(exc)})
                time.sleep(RESPAWN_DELAY)
                continue
            spawn(child.slot, sockets)
            emit({"event": "worker_started", "slot": child.slot, "workers": sorted(children)})
            break
    return 1 if failed else 0
