"""``dsguard events``: the decisions the gateway (and policy server, milter) recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit


def events(
    decision: Annotated[
        str | None, typer.Option(help="refused, accepted, audited, quarantined, ...")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="dsguard TOML config file.")
    ] = None,
) -> None:
    """List recorded decisions, newest first."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    page = repo.list_events(store, decision=decision, limit=limit)
    for ev in page.items:
        if as_json:
            row = dataclasses.asdict(ev)
            row["at"] = ev.at.isoformat()
            typer.echo(json.dumps(row, ensure_ascii=False, default=str))
        else:
            typer.echo(
                f"{ev.at:%Y-%m-%d %H:%M:%S}  {ev.front_door:8} {ev.decision:11} {ev.client_ip or '-':15} "
                f"{(ev.mail_from or '<>')[:40]:40} p1={ev.p1} p2={ev.p2} {ev.verdict or ''}"
            )
