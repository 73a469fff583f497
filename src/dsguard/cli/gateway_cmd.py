"""``dsguard gateway``: run the SMTP gateway (Reject Direct Send for any mail server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit
from dsguard.cli.errors import fail, fail_config
from dsguard.errors import ConfigError


def gateway(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
) -> None:
    """Run the SMTP gateway until SIGTERM (SIGHUP reloads the config)."""
    from dsguard.gateway.server import configure_logging, run_gateway

    cfg = config_or_exit(config)
    configure_logging()
    try:
        asyncio.run(run_gateway(cfg, str(config)))
    except ConfigError as exc:
        fail_config(exc)
    except OSError as exc:
        fail(f"gateway: {exc.strerror or exc} ({cfg.gateway.listen})")
