"""``dsguard quarantine``: list, show, release (relay through the spool) or delete held mail."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail

app = typer.Typer(help="Review mail the gateway quarantined.", no_args_is_help=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="dsguard TOML config file.")]
ACTOR = "cli"


def _clean(text: str | None, limit: int = 80) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in (text or ""))[:limit]


@app.command("list")
def list_cmd(
    verdict: Annotated[str | None, typer.Option(help="malicious or suspicious")] = None,
    finding: Annotated[
        str | None, typer.Option(help="a finding id, e.g. DS_SPOOF_ENVELOPE")
    ] = None,
    sender: Annotated[
        str | None, typer.Option(help="part of the envelope or header sender")
    ] = None,
    recipient: Annotated[str | None, typer.Option(help="a recipient address")] = None,
    status: Annotated[str, typer.Option(help="held, released, deleted or all")] = "held",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List quarantined messages, newest first."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    page = repo.list_quarantine(
        store,
        status=None if status == "all" else status,
        verdict=verdict,
        finding=finding,
        sender=sender,
        recipient=recipient,
        limit=limit,
    )
    for item in page.items:
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "id": item.id,
                        "received_at": item.received_at.isoformat(),
                        "status": item.status,
                        "mail_from": item.mail_from,
                        "header_from": item.header_from,
                        "rcpt_to": list(item.rcpt_to),
                        "subject": item.subject,
                        "verdict": item.verdict,
                        "score": item.score,
                        "findings": list(item.finding_ids),
                        "client_ip": item.client_ip,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            typer.echo(
                f"{item.id}  {item.received_at:%Y-%m-%d %H:%M}  {item.verdict:10} {item.score:5g}  "
                f"{_clean(item.header_from or item.mail_from, 40):40}  {_clean(item.subject, 60)}"
            )


@app.command("show")
def show(
    qid: str,
    raw: Annotated[bool, typer.Option("--raw", help="Write the .eml to stdout.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Show one quarantined message: envelope, findings, IOCs (or its raw bytes)."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    item = repo.get_quarantined(store, qid)
    if item is None:
        fail(f"quarantine show: no message {qid!r}")
    if raw:
        if item.raw is None:
            fail(f"quarantine show: {qid} was deleted")
        sys.stdout.buffer.write(item.raw)
        return
    typer.echo(f"id:          {item.id} ({item.status})")
    typer.echo(
        f"received:    {item.received_at.isoformat()} from {item.client_ip} helo {_clean(item.helo)}"
    )
    typer.echo(f"envelope:    {_clean(item.mail_from)} -> {', '.join(item.rcpt_to)}")
    typer.echo(f"from:        {_clean(item.header_from)}")
    typer.echo(f"subject:     {_clean(item.subject, 200)}")
    typer.echo(f"attribution: {item.attribution}")
    typer.echo(f"verdict:     {item.verdict} (score {item.score:g}) -- {item.reason}")
    for f in item.findings:
        typer.echo(
            f"  {f.get('id', ''):30} {f.get('score', 0):+5g}  {_clean(str(f.get('summary', '')), 120)}"
        )
    urls = item.iocs.get("urls") or []
    if urls:
        typer.echo(
            "urls:        " + " ".join(_clean(u, 200).replace("http", "hxxp") for u in urls[:20])
        )


@app.command("release")
def release(qid: str, config: ConfigOpt = None) -> None:
    """Release a message: it is queued to the downstream server through the gateway's spool."""
    from dsguard.quarantine import ReleaseError
    from dsguard.quarantine import release as release_message

    cfg = config_or_exit(config)
    store = store_or_exit(cfg)
    try:
        released = release_message(store, cfg.gateway.spool_dir, qid, ACTOR)
    except ReleaseError as exc:
        fail(f"quarantine release: {exc}")
    typer.echo(f"released {qid}: queued as {released.spool_id}")


@app.command("delete")
def delete(qid: str, config: ConfigOpt = None) -> None:
    """Delete a quarantined message (its bytes are removed; the record stays for the audit log)."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    if not repo.delete_quarantined(store, qid, ACTOR):
        fail(f"quarantine delete: no held message {qid!r}")
    typer.echo(f"deleted {qid}")
