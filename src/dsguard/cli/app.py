"""The ``dsguard`` command: thin typer commands that parse arguments, call, and render."""

from __future__ import annotations

import sys

import typer

from dsguard import __version__
from dsguard.cli import (
    events_cmd,
    findings_cmd,
    gateway_cmd,
    m365_cmd,
    milter_cmd,
    policyd_cmd,
    posture_cmd,
    probe_cmd,
    quarantine_cmd,
    scan_cmd,
    spool_cmd,
    user_cmd,
    web_cmd,
)

app = typer.Typer(
    name="dsguard",
    help="Find, inventory and stop Direct Send spoofing (mail that claims your own domain "
    "without authenticating).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("scan")(scan_cmd.scan)
app.command("findings")(findings_cmd.findings)
app.command("gateway")(gateway_cmd.gateway)
app.command("policyd")(policyd_cmd.policyd)
app.command("posture")(posture_cmd.posture)
app.command("probe")(probe_cmd.probe)
app.command("milter")(milter_cmd.milter)
app.command("events")(events_cmd.events)
app.add_typer(user_cmd.app, name="user")
app.add_typer(quarantine_cmd.app, name="quarantine")
app.add_typer(spool_cmd.app, name="spool")
app.add_typer(m365_cmd.app, name="m365")
app.command("web")(web_cmd.web)
app.add_typer(web_cmd.admin_app, name="admin")


@app.command("version")
def version() -> None:
    """Print the dsguard version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("dsguard: interrupted\n")
        raise SystemExit(130) from None
