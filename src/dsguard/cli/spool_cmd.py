"""``dsguard spool``: what waits for delivery, what failed permanently, and retrying it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit
from dsguard.cli.errors import fail
from dsguard.gateway.spool import Spool

app = typer.Typer(help="Inspect the gateway's delivery spool.", no_args_is_help=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="dsguard TOML config file.")]


@app.command("list")
def list_cmd(
    state: Annotated[str, typer.Argument(help="new, active, deferred or failed")] = "failed",
    config: ConfigOpt = None,
) -> None:
    """List spool entries in one state (default: permanent failures)."""
    if state not in ("new", "active", "deferred", "failed"):
        fail(f"spool list: unknown state {state!r}")
    spool = Spool(Path(config_or_exit(config).gateway.spool_dir))
    for entry in spool.list(state):
        typer.echo(
            f"{entry.id}  attempts={entry.attempts}  {entry.mail_from or '<>'} -> "
            f"{', '.join(entry.rcpt_to)}  {entry.last_error[:120]}"
        )


@app.command("retry")
def retry(entry_id: str, config: ConfigOpt = None) -> None:
    """Move a permanently failed entry back to the queue."""
    spool = Spool(Path(config_or_exit(config).gateway.spool_dir))
    if not spool.requeue_failed(entry_id):
        fail(f"spool retry: no failed entry {entry_id!r}")
    typer.echo(f"requeued {entry_id}")
