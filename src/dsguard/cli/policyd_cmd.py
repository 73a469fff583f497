"""``dsguard policyd``: Reject Direct Send inside Postfix (policy delegation)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail
from dsguard.config import load_config
from dsguard.errors import ConfigError

SWITCH_INTERVAL = 0.0005


def policyd(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT (default [policyd] listen).")
    ] = None,
) -> None:
    """Answer Postfix's check_policy_service requests with the Reject Direct Send rule.

    main.cf:  smtpd_recipient_restrictions = ..., check_policy_service inet:127.0.0.1:10040
    """
    from dsguard.gateway.server import configure_logging
    from dsguard.postfix.policyd import PolicyServer

    cfg = config_or_exit(config)
    address = listen or cfg.policyd.listen
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        fail(f"--listen: {address!r} is not HOST:PORT")
    store = store_or_exit(cfg)
    configure_logging()
    # The event writer thread must not hold the GIL for Python's default 5 ms while a reply
    # waits (the milter's setting, for the same reason).
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def run() -> None:
        server = PolicyServer(cfg, store)
        bound = await server.start(host.strip("[]"), int(port))
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def reload() -> None:
            try:
                server.reload(load_config(config))
            except ConfigError as exc:
                for problem in exc.problems:
                    print(
                        json.dumps({"event": "reload_failed", "problem": problem}), file=sys.stderr
                    )

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        print(
            json.dumps({"event": "ready", "policyd": f"{bound[0]}:{bound[1]}"}),
            file=sys.stderr,
            flush=True,
        )
        await stopping.wait()
        await server.stop()
        store.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        fail(f"policyd: {exc.strerror or exc} ({address})")
