"""Every storage test runs twice: on a SQLite file in tmp_path and on a throwaway PostgreSQL
database (tests/fixtures/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401

from dsguard.store import Store, open_store
from dsguard.store.repository import quarantine_message


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store')}/dsguard.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


class Holder:
    """Quarantines messages with sensible defaults; tests override what they look at."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, **overrides: Any) -> str:
        values: dict[str, Any] = {
            "raw": b"From: joe@contoso.com\r\nSubject: New Missed Fax-msg\r\n\r\nListen now\r\n",
            "mail_from": "joe@contoso.com",
            "rcpt_to": ["joe@contoso.com"],
            "client_ip": "139.28.36.10",
            "helo": "WIN-3QDF7A",
            "country": "RO",
            "header_from": "joe@contoso.com",
            "subject": "New Missed Fax-msg",
            "message_id": "<fax-1@contoso.com>",
            "verdict": "malicious",
            "score": 12.5,
            "findings": [
                {"id": "DS_SELF_SENT", "score": 3.0, "summary": "sent to itself", "evidence": ""}
            ],
            "iocs": {"ips": ["139.28.36.10"], "urls": [], "domains": [], "qr_urls": []},
            "attribution": "anonymous",
            "reason": "malicious verdict",
        }
        values.update(overrides)
        return quarantine_message(self.store, **values)


@pytest.fixture
def hold(store: Store) -> Holder:
    return Holder(store)
