"""``dsguard user``: SMTP AUTH accounts of the gateway's submission listener."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail

app = typer.Typer(
    help="Manage SMTP AUTH users (passwords stored as argon2id hashes).", no_args_is_help=True
)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="dsguard TOML config file.")]


def read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        fail("password: at least 8 characters")
    return password


@app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="Login name, usually the e-mail address.")],
    send_as: Annotated[
        list[str] | None,
        typer.Option(
            "--send-as", help="Another address (or @domain) this user may send as (repeatable)."
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Add a user."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    password = read_password(password_stdin)
    try:
        repo.add_user(store, username, password, kind="smtp", send_as=send_as or ())
    except ValueError as exc:
        fail(f"user add: {exc}")
    typer.echo(f"added {username}")


@app.command("remove")
def remove(username: str, config: ConfigOpt = None) -> None:
    """Remove a user."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    if not repo.remove_user(store, username, "smtp"):
        fail(f"user remove: no such user {username!r}")
    typer.echo(f"removed {username}")


@app.command("list")
def list_users(config: ConfigOpt = None) -> None:
    """List users and the addresses they may send as."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    for info in repo.list_users(store, "smtp"):
        extra = f"  send-as: {', '.join(info.send_as)}" if info.send_as else ""
        typer.echo(f"{info.username}{extra}")
