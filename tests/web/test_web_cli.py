"""The commands: ``dsguard admin add|remove|list``, ``dsguard web``, and ``dsguard quarantine
release`` going through the release shared with the web UI."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
from tests.web.conftest import (
    ADMIN,
    PASSWORD,
    WebProcess,
    config_text,
    dsguard_cli,
    write_config,
)

from dsguard.config import Config
from dsguard.gateway.spool import Spool
from dsguard.store import repository as repo
from dsguard.store.db import Store


def _listening(port: int) -> str:
    return config_text(f'listen = "127.0.0.1:{port}"')


def test_admin_accounts_are_managed_from_the_command_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    added = dsguard_cli(
        "admin", "add", "alice", "--password-stdin", config=config, stdin="a long enough secret\n"
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added admin alice\n"
    again = dsguard_cli(
        "admin", "add", "alice", "--password-stdin", config=config, stdin="a long enough secret\n"
    )
    assert again.returncode == 2
    assert again.stderr == "dsguard: admin add: admin user 'alice' already exists\n"
    short = dsguard_cli(
        "admin", "add", "bob", "--password-stdin", config=config, stdin="tooshort1\n"
    )
    assert short.returncode == 2
    assert short.stderr == "dsguard: password: at least 12 characters for an admin\n"
    listed = dsguard_cli("admin", "list", config=config)
    assert re.fullmatch(r"alice  created \d{4}-\d\d-\d\d \d\d:\d\d UTC\n", listed.stdout)
    # Admins are not SMTP AUTH users and vice versa.
    assert dsguard_cli("user", "list", config=config).stdout == ""
    removed = dsguard_cli("admin", "remove", "alice", config=config)
    assert removed.stdout == "removed admin alice\n"
    assert dsguard_cli("admin", "remove", "alice", config=config).returncode == 2
    assert dsguard_cli("admin", "list", config=config).stdout == ""


def test_dsguard_web_serves_on_loopback_with_a_private_key_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert (
        dsguard_cli(
            "admin", "add", ADMIN, "--password-stdin", config=config, stdin=PASSWORD + "\n"
        ).returncode
        == 0
    )
    web = WebProcess(config, tmp_path, _listening).start()
    try:
        key = tmp_path / "web-session.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert len(key.read_bytes().strip()) == 64
        with httpx.Client(base_url=web.url) as client:
            assert client.get("/").status_code == 303
            page = client.get("/login")
            assert page.headers["x-frame-options"] == "DENY"
            assert "server" not in page.headers  # no version banner
            token = re.search(r'name="login_token" value="([^"]+)"', page.text)
            assert token
            response = client.post(
                "/login",
                data={
                    "username": ADMIN,
                    "password": PASSWORD,
                    "login_token": token.group(1),
                    "next": "/",
                },
                follow_redirects=True,
            )
            assert response.status_code == 200
            assert "Direct Send dashboard" in response.text
    finally:
        web.stop()
    assert f"web UI on http://127.0.0.1:{web.port}/" in web.log()
    key_before = key.read_bytes()
    WebProcess(config, tmp_path, _listening).start().stop()  # a restart keeps the key
    assert key.read_bytes() == key_before


def test_dsguard_web_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    key = tmp_path / "web-session.key"
    key.write_text("0" * 64)
    os.chmod(key, 0o644)
    done = dsguard_cli("web", config=config)
    assert done.returncode == 2
    assert done.stderr == (
        f"dsguard: config web.session_secret_file: {key} is accessible by other users (mode 644); "
        f"run: chmod 600 {key}\n"
    )


def test_quarantine_release_command_uses_the_shared_release(
    config: Config, store: Store, hold: Callable[..., str], tmp_path: Path
) -> None:
    qid = hold(rcpt_to=["joe@contoso.com"])
    done = dsguard_cli("quarantine", "release", qid, config=Path(config.source))
    assert done.returncode == 0, done.stderr
    [entry] = Spool(Path(config.gateway.spool_dir)).list("new")
    assert done.stdout == f"released {qid}: queued as {entry.id}\n"
    assert entry.meta == {"released_from": qid}
    again = dsguard_cli("quarantine", "release", qid, config=Path(config.source))
    assert (again.returncode, again.stderr) == (
        2,
        f"dsguard: quarantine release: {qid} is released\n",
    )
    [audit] = repo.list_audit(store, target=qid).items
    assert (audit.actor, audit.action) == ("cli", "release")
