"""open_store: migrations, idempotence, concurrent first start, URL errors without passwords."""

from __future__ import annotations

import multiprocessing
import socket
import stat
import traceback
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from dsguard.errors import ConfigError
from dsguard.store import DEFAULT_URL, Store, open_store
from dsguard.store.db import redact_url, schema_revision
from dsguard.store.models import Base
from dsguard.store.repository import list_quarantine, record_event

TABLES = {
    "alembic_version",
    "quarantine",
    "quarantine_blob",
    "quarantine_recipient",
    "quarantine_finding",
    "event",
    "audit",
    "account",
}


def test_migrations_create_the_schema_the_models_describe(store: Store) -> None:
    assert set(inspect(store.engine).get_table_names()) == TABLES
    assert schema_revision(store) == "0001"
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_indexes_cover_the_list_filters_and_keyset_order(store: Store) -> None:
    inspector = inspect(store.engine)
    quarantine = {tuple(ix["column_names"]) for ix in inspector.get_indexes("quarantine")}
    assert ("status", "received_at", "id") in quarantine
    assert ("received_at", "id") in quarantine
    events = {tuple(ix["column_names"]) for ix in inspector.get_indexes("event")}
    assert ("at", "id") in events
    findings = {tuple(ix["column_names"]) for ix in inspector.get_indexes("quarantine_finding")}
    assert ("finding_id", "quarantine_id") in findings


def test_open_store_twice_is_idempotent_and_keeps_data(store_url: str) -> None:
    first = open_store(store_url)
    try:
        record_event(
            first,
            front_door="gateway",
            client_ip="192.0.2.1",
            helo="a",
            country=None,
            mail_from="a@example.com",
            rcpt_to=["b@example.com"],
            header_from=None,
            attribution="anonymous",
            p1="would_reject",
            p2="unknown",
            mode="on",
            decision="refused",
            verdict=None,
            score=None,
            finding_ids=[],
            message_id=None,
            subject=None,
            queue_id=None,
        )
    finally:
        first.close()
    second = open_store(store_url)
    try:
        assert schema_revision(second) == "0001"
        with second.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM event").scalar() == 1
            versions = connection.exec_driver_sql("SELECT count(*) FROM alembic_version")
            assert versions.scalar() == 1
    finally:
        second.close()


def test_schema_from_a_newer_version_is_a_config_error(store_url: str) -> None:
    store = open_store(store_url)
    with store.session() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    with pytest.raises(ConfigError, match="newer dsguard"):
        open_store(store_url)


def _open_and_list(url: str) -> int:
    try:
        store = open_store(url)
        try:
            return len(list_quarantine(store).items)
        finally:
            store.close()
    except BaseException as exc:
        # Driver exceptions do not always unpickle in the parent; that would hang the pool.
        raise RuntimeError("".join(traceback.format_exception(exc))) from None


def test_two_processes_opening_a_new_store_at_once_both_succeed(store_url: str) -> None:
    # Both race to run the initial migration; the lock makes one wait for the other.
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = [pool.apply_async(_open_and_list, (store_url,)) for _ in range(2)]
        assert [r.get(timeout=120) for r in results] == [0, 0]


def test_sqlite_store_creates_missing_directories_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "dsguard.sqlite3"
    store = open_store(f"sqlite:///{path}")
    try:
        assert path.is_file()
        # Quarantined mail and password hashes: readable by the owner only.
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with store.engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            timeout = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert mode == "wal"
        assert timeout is not None
        assert int(timeout) >= 5000
    finally:
        store.close()


def test_default_url_is_a_relative_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(DEFAULT_URL)
    store.close()
    assert (tmp_path / "var" / "dsguard.sqlite3").is_file()


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://admin:s3cr3tpass@db.example.com/dsguard",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://admin:s3cr3tpass@db.example.com",
        "postgresql://admin:s3cr3tpass@db.example.com:notaport/dsguard",
        "sqlite:///var/dsguard.sqlite3?password=s3cr3tpass",
    ],
)
def test_bad_url_gives_one_line_config_error_without_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = str(caught.value)
    assert caught.value.source == "storage.url"
    assert "s3cr3tpass" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("postgresql://dsguard:s3cr3tpass@127.0.0.1:{port}/dsguard", "dsguard:***@127.0.0.1"),
        ("postgresql://dsguard@127.0.0.1:{port}/dsguard?password=s3cr3tpass", "password=***"),
    ],
)
def test_unreachable_postgres_gives_config_error_without_password(
    template: str, shown: str
) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError) as caught:
        open_store(template.format(port=port))
    message = str(caught.value)
    assert message.startswith("storage.url: cannot open database postgresql://")
    assert "s3cr3tpass" not in message
    assert shown in message
    assert "\n" not in message


def test_unwritable_sqlite_location_gives_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot open database"):
        open_store(f"sqlite:///{blocker}/dsguard.sqlite3")


def test_redact_url_hides_passwords_even_in_unparseable_strings() -> None:
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "pw" not in redact_url("weird+scheme://u:pw@[broken")
