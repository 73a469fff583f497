"""The event writer: every queued decision lands in the store, bursts share transactions, and
one bad event does not cost the others theirs (on SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from tests.fixtures.events import event_fields

from dsguard.store import Store
from dsguard.store.events import EventWriter
from dsguard.store.repository import list_events, record_events

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _event(n: int, **overrides: Any) -> dict[str, Any]:
    return event_fields(
        **{"message_id": f"<m{n}@example.net>", "at": T0 + timedelta(seconds=n), **overrides}
    )


def _stored_message_ids(store: Store) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = list_events(store, limit=500, cursor=cursor)
        ids.extend(e.message_id or "" for e in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_a_burst_is_written_completely_in_few_transactions(store: Store) -> None:
    commits: list[int] = []
    sa_event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    writer = EventWriter(store)
    try:
        for n in range(500):
            writer.put(_event(n))
        writer.flush()
    finally:
        writer.close()
    stored = _stored_message_ids(store)
    assert sorted(stored) == sorted(f"<m{n}@example.net>" for n in range(500))
    assert writer.dropped == 0
    # Queued faster than one commit takes: the writer drains the queue into shared
    # transactions instead of one commit (and one fsync) per decision.
    assert len(commits) < 100, len(commits)


def test_record_events_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(ValueError, match="decision"):
        record_events(store, [_event(1), _event(2, decision="exploded"), _event(3)])
    assert _stored_message_ids(store) == []
    assert record_events(store, [_event(1), _event(2)]) == 2
    assert sorted(_stored_message_ids(store)) == ["<m1@example.net>", "<m2@example.net>"]


def test_one_bad_event_does_not_cost_the_rest_of_its_batch(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dsguard.events")
    batch = [_event(1), _event(2, p1="maybe"), _event(3)]
    EventWriter._write(store, batch)
    assert sorted(_stored_message_ids(store)) == ["<m1@example.net>", "<m3@example.net>"]
    assert [r.getMessage() for r in caplog.records] == [
        "could not record event: p1: 'maybe' is not one of not_applicable, unknown, would_reject"
    ]


def test_close_writes_what_is_still_queued(store: Store) -> None:
    writer = EventWriter(store)
    for n in range(50):
        writer.put(_event(n))
    writer.close()
    assert len(_stored_message_ids(store)) == 50
    writer.put(_event(99))  # after close: not written, and no hang
    assert len(_stored_message_ids(store)) == 50
