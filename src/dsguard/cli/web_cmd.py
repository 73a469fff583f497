"""``dsguard web`` (the admin web UI) and ``dsguard admin`` (its accounts)."""

from __future__ import annotations

import ipaddress
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from dsguard.cli.common import config_or_exit, store_or_exit
from dsguard.cli.errors import fail, fail_config
from dsguard.cli.user_cmd import read_password
from dsguard.errors import ConfigError, InputError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="dsguard TOML config file.")]
MIN_ADMIN_PASSWORD = 12


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8025"`` / ``"[::1]:8025"`` -> (host, port); the config validated it."""
    host, _sep, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web(
    config: Annotated[Path, typer.Option("--config", "-c", help="dsguard TOML config file.")],
) -> None:
    """Run the admin web UI ([web] listen, 127.0.0.1:8025 by default) until SIGTERM."""
    import uvicorn

    from dsguard.web.app import create_app

    cfg = config_or_exit(config)
    settings = cfg.web
    host, port = split_listen(settings.listen)
    try:
        app = create_app(cfg)
    except ConfigError as exc:
        fail_config(exc)
    except InputError as exc:
        fail(f"{exc.name}: {exc.problem}")
    tls = bool(settings.tls_cert)
    if not _is_loopback(host) and not tls and not settings.trusted_proxies:
        sys.stderr.write(
            f"dsguard: warning: web UI on {settings.listen} without TLS: passwords and session "
            "cookies cross the network in clear; set [web] tls_cert/tls_key or use a TLS proxy\n"
        )
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(
        f"dsguard: web UI on {scheme}://{shown}:{port}/ (store {app.state.web.store.url})\n"
    )
    sys.stderr.flush()
    # uvicorn shuts down gracefully on SIGTERM, restores the previous handler and raises the
    # signal again; with this handler that ends the process with status 0, as the gateway does.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        server_header=False,
        log_level="info",
        timeout_keep_alive=5,
    )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


admin_app = typer.Typer(
    help="Manage admin accounts of the web UI (passwords stored as argon2id hashes).",
    no_args_is_help=True,
)


@admin_app.command("add")
def admin_add(
    username: Annotated[str, typer.Argument(help="Login name of the admin.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Add an admin account."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    password = read_password(password_stdin)
    if len(password) < MIN_ADMIN_PASSWORD:
        fail(f"password: at least {MIN_ADMIN_PASSWORD} characters for an admin")
    try:
        repo.add_user(store, username, password, kind="admin")
    except ValueError as exc:
        fail(f"admin add: {exc}")
    repo.audit(store, actor="cli", action="admin_add", target=username)
    typer.echo(f"added admin {username}")


@admin_app.command("remove")
def admin_remove(username: str, config: ConfigOpt = None) -> None:
    """Remove an admin account (its web sessions end within 15 seconds)."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    if not repo.remove_user(store, username, "admin"):
        fail(f"admin remove: no such admin {username!r}")
    repo.audit(store, actor="cli", action="admin_remove", target=username)
    typer.echo(f"removed admin {username}")


@admin_app.command("list")
def admin_list(config: ConfigOpt = None) -> None:
    """List admin accounts."""
    from dsguard.store import repository as repo

    store = store_or_exit(config_or_exit(config))
    for info in repo.list_users(store, "admin"):
        typer.echo(f"{info.username}  created {info.created_at:%Y-%m-%d %H:%M} UTC")
