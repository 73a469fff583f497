"""``dsguard milter``: Reject Direct Send and content analysis inside Postfix (milter)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail
from dsguard.config import load_config
from dsguard.errors import ConfigError
from dsguard.gateway.server import configure_logging
from dsguard.postfix.milter import MilterServer

log = logging.getLogger("dsguard.milter")


def milter(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT (default: milter.listen).")
    ] = None,
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
    store = store_or_exit(cfg)
    configure_logging()

    async def run() -> None:
        server = MilterServer(cfg, store)
        bound = await server.start(host.strip("[]"), int(port))
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
                    print(
                        json.dumps({"event": "reload_failed", "problem": problem}), file=sys.stderr
                    )
                return
            print(json.dumps({"event": "reloaded", "config": new.source}), file=sys.stderr)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        print(
            json.dumps({"event": "ready", "milter": f"{bound[0]}:{bound[1]}"}),
            file=sys.stderr,
            flush=True,
        )
        await stopping.wait()
        await server.stop()
        store.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        fail(f"milter: {exc.strerror or exc} ({address})")
