"""The ``dsguard`` command: thin typer commands that parse arguments, call, and render."""

from __future__ import annotations

import sys

import typer

from dsguard import __version__
from dsguard.cli import findings_cmd, scan_cmd

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
