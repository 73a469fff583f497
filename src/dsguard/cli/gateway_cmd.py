"""``dsguard gateway``: run the SMTP gateway (Reject Direct Send for any mail server)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail, fail_config
from dsguard.config import Config, load_config
from dsguard.errors import ConfigError
from dsguard.workers import MAX_WORKERS

if TYPE_CHECKING:
    from dsguard.gateway.spool import Spool

log = logging.getLogger("dsguard.gateway")
LOCK_FILE = "gateway.lock"


def gateway(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="Worker processes sharing the listeners (default: [gateway] workers).",
        ),
    ] = None,
) -> None:
    """Run the SMTP gateway until SIGTERM (SIGHUP reloads the config)."""
    from dsguard.gateway.server import configure_logging, run_gateway

    cfg = config_or_exit(config)
    count = cfg.gateway.workers if workers is None else workers
    configure_logging()
    try:
        if count == 1:
            asyncio.run(run_gateway(cfg, str(config)))
        else:
            code = _supervise(cfg, config, count)
            if code:
                raise typer.Exit(code)
    except ConfigError as exc:
        fail_config(exc)
    except OSError as exc:
        fail(f"gateway: {exc.strerror or exc} ({cfg.gateway.listen})")


def _supervise(cfg: Config, config: Path, count: int) -> int:
    """``workers`` > 1: recover the spool once, then run the workers (dsguard.workers), each
    a whole gateway on the shared listeners with its own spool slot."""
    # Everything the workers share is imported before they fork (copy-on-write); nothing
    # here starts a thread or an event loop.
    from dsguard.gateway.server import RESTART_KEYS, run_gateway, server_tls_context
    from dsguard.gateway.spool import Spool
    from dsguard.workers import supervise

    spool = Spool(Path(cfg.gateway.spool_dir))
    lock = _lock_spool(spool)  # held (by the workers too, inherited) until the last one exits
    # Before any worker runs, and only here: a worker recovering would take the entries the
    # others are delivering.
    recovered = spool.recover()
    if recovered:
        log.info("spool: %d messages from an interrupted run requeued", recovered)
    # Storage and TLS problems stop the command here, with their message, instead of in every
    # worker (and again in each replacement). The store is closed before the fork: each
    # worker opens its own.
    store_or_exit(cfg).close()
    server_tls_context(cfg)
    names = ["mx"]
    addresses = [_hostport(cfg.gateway.listen)]
    if cfg.gateway.submission_listen:
        names.append("submission")
        addresses.append(_hostport(cfg.gateway.submission_listen))
    supervisor = os.getpid()
    current = cfg  # what a replacement worker starts with: the last config that loaded

    def on_reload() -> None:
        nonlocal current
        try:
            new = load_config(config)
        except ConfigError:
            return  # every worker says why, and keeps its config; replacements keep it too
        # What the running workers cannot change on reload, a replacement must not either
        # (it shares their sockets, spool and store).
        kept = {key: getattr(cfg.gateway, key) for key in RESTART_KEYS}
        current = new.model_copy(
            update={"gateway": new.gateway.model_copy(update=kept), "storage": cfg.storage}
        )

    def serve(slot: int, sockets: list[socket.socket]) -> None:
        try:
            asyncio.run(
                run_gateway(
                    current,
                    str(config),
                    sockets=dict(zip(names, sockets, strict=True)),
                    slot=slot,
                    parent=supervisor,
                )
            )
        except ConfigError as exc:
            fail_config(exc)
        except OSError as exc:
            fail(f"gateway worker: {exc.strerror or exc}")

    def reclaim(slot: int) -> None:
        requeued = spool.recover_slot(slot)
        if requeued:
            log.info(json.dumps({"event": "spool_reclaimed", "slot": slot, "entries": requeued}))

    try:
        return supervise(
            addresses,
            count,
            serve,
            describe=lambda bound: {
                name: f"{host}:{port}" for name, (host, port) in zip(names, bound, strict=True)
            },
            reclaim=reclaim,
            on_reload=on_reload,
        )
    finally:
        lock.close()


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _lock_spool(spool: Spool) -> IO[bytes]:
    """An exclusive lock on the spool for this gateway and its workers. SO_REUSEPORT would let
    a second supervisor bind next to workers still finishing (e.g. orphaned by a killed
    supervisor), and its recover() would take their in-flight entries."""
    handle = open(spool.directory / LOCK_FILE, "ab")  # noqa: SIM115 -- held until exit
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        fail(f"gateway: spool {spool.directory} is in use by another gateway (or its workers)")
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        raise
    return handle
