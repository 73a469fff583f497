"""Events: recording, listing, dashboard buckets and top lists on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from tests.fixtures.events import event_fields

from dsguard.store import Store, open_store
from dsguard.store.repository import (
    audit,
    event_counts,
    list_audit,
    list_events,
    list_quarantine,
    record_event,
    top_sources,
    top_spoofed_senders,
)

T0 = datetime(2024, 11, 27, 10, 0, tzinfo=UTC)


def _event(store: Store, **overrides: Any) -> int:
    defaults: dict[str, Any] = {
        "client_ip": "139.28.36.10",
        "helo": "WIN-3QDF7A",
        "country": "RO",
        "header_from": None,
        "p2": "unknown",
        "subject": None,
        "at": T0,
    }
    return record_event(store, **event_fields(**{**defaults, **overrides}))


def test_event_round_trip(store: Store) -> None:
    event_id = _event(
        store,
        front_door="milter",
        rcpt_to=["a@contoso.com", "b@contoso.com"],
        header_from="ceo@contoso.com",
        p1="not_applicable",
        p2="would_reject",
        mode="audit",
        decision="audited",
        verdict="malicious",
        score=14.5,
        finding_ids=["DS_P2_OWN_DOMAIN", "LURE_FAX"],
        message_id="<x@example.net>",
        subject="Fax für dich",
        queue_id="4XyZ1",
        at=datetime(2024, 11, 27, 12, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    (event,) = list_events(store).items
    assert event.id == event_id
    assert event.at == datetime(2024, 11, 27, 10, 30, tzinfo=UTC)
    assert event.at.tzinfo is not None
    assert event.front_door == "milter"
    assert event.rcpt_to == ("a@contoso.com", "b@contoso.com")
    assert event.finding_ids == ("DS_P2_OWN_DOMAIN", "LURE_FAX")
    assert (event.p1, event.p2, event.mode, event.decision) == (
        "not_applicable",
        "would_reject",
        "audit",
        "audited",
    )
    assert (event.verdict, event.score, event.subject, event.queue_id) == (
        "malicious",
        14.5,
        "Fax für dich",
        "4XyZ1",
    )


def test_default_time_is_now_in_utc(store: Store) -> None:
    before = datetime.now(UTC)
    _event(store, at=None)
    after = datetime.now(UTC)
    (event,) = list_events(store).items
    assert before <= event.at <= after


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("front_door", "smtp"),
        ("p1", "reject"),
        ("p2", ""),
        ("mode", "enforce"),
        ("decision", "rejected"),
    ],
)
def test_unknown_enumeration_values_are_refused(store: Store, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        _event(store, **{field: value})
    assert list_events(store).items == []


def test_lists_must_not_be_strings_and_scores_must_be_finite(store: Store) -> None:
    with pytest.raises(TypeError, match="rcpt_to"):
        _event(store, rcpt_to="joe@contoso.com")
    with pytest.raises(TypeError, match="finding_ids"):
        _event(store, finding_ids="DS_SELF_SENT")
    with pytest.raises(ValueError, match="score"):
        _event(store, score=float("nan"))
    assert list_events(store).items == []


def test_cursor_of_another_list_is_refused(store: Store) -> None:
    for _ in range(3):
        _event(store)
    audit(store, actor="a", action="x", target="y")
    audit(store, actor="a", action="x", target="y")
    events_cursor = list_events(store, limit=1).next_cursor
    assert events_cursor is not None
    with pytest.raises(ValueError, match="cursor"):
        list_quarantine(store, cursor=events_cursor)


def test_list_events_filters_and_pages(store: Store) -> None:
    ids = []
    for n in range(25):
        ids.append(
            _event(
                store,
                at=T0 + timedelta(minutes=n // 5),  # ties in groups of five
                decision="refused" if n % 2 else "accepted",
                front_door="policyd" if n % 5 == 0 else "gateway",
            )
        )
    newest_first = sorted(
        ids, key=lambda i: (T0 + timedelta(minutes=ids.index(i) // 5), i), reverse=True
    )
    seen: list[int] = []
    cursor = None
    while True:
        page = list_events(store, limit=4, cursor=cursor)
        seen.extend(e.id for e in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first

    refused = list_events(store, decision="refused").items
    assert len(refused) == 12
    assert all(e.decision == "refused" for e in refused)
    assert len(list_events(store, front_door="policyd").items) == 5
    window = list_events(store, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert len(window.items) == 10


def test_event_counts_by_hour_and_day(store: Store) -> None:
    # 23:30 and 00:30 UTC fall in different days whatever the server's time zone is.
    late = datetime(2024, 11, 26, 23, 30, tzinfo=UTC)
    _event(store, at=late, decision="refused")
    _event(store, at=late + timedelta(minutes=10), decision="refused")
    _event(store, at=late + timedelta(minutes=20), decision="accepted")
    _event(store, at=late + timedelta(hours=1), decision="refused")  # 00:30 next day
    _event(store, at=late + timedelta(hours=1, minutes=5), decision="quarantined")
    _event(store, at=late + timedelta(days=5), decision="refused")  # outside the window

    since = datetime(2024, 11, 26, tzinfo=UTC)
    until = datetime(2024, 11, 28, tzinfo=UTC)
    hourly = event_counts(store, since=since, until=until, bucket="hour")
    assert hourly == [
        (datetime(2024, 11, 26, 23, tzinfo=UTC), "accepted", 1),
        (datetime(2024, 11, 26, 23, tzinfo=UTC), "refused", 2),
        (datetime(2024, 11, 27, 0, tzinfo=UTC), "quarantined", 1),
        (datetime(2024, 11, 27, 0, tzinfo=UTC), "refused", 1),
    ]
    daily = event_counts(store, since=since, until=until, bucket="day")
    assert daily == [
        (datetime(2024, 11, 26, tzinfo=UTC), "accepted", 1),
        (datetime(2024, 11, 26, tzinfo=UTC), "refused", 2),
        (datetime(2024, 11, 27, tzinfo=UTC), "quarantined", 1),
        (datetime(2024, 11, 27, tzinfo=UTC), "refused", 1),
    ]
    assert all(b.tzinfo is not None for b, _, _ in daily)


def test_day_buckets_are_utc_whatever_the_postgres_session_time_zone(postgres_url: str) -> None:
    store = open_store(postgres_url)

    def set_zone(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14
        dbapi_connection.commit()

    try:
        store.engine.dispose()
        sa_event.listen(store.engine, "connect", set_zone)
        _event(store, at=datetime(2024, 11, 26, 23, 30, tzinfo=UTC))
        daily = event_counts(
            store,
            since=datetime(2024, 11, 26, tzinfo=UTC),
            until=datetime(2024, 11, 28, tzinfo=UTC),
            bucket="day",
        )
        assert daily == [(datetime(2024, 11, 26, tzinfo=UTC), "refused", 1)]
        (event,) = list_events(store).items
        assert event.at == datetime(2024, 11, 26, 23, 30, tzinfo=UTC)
    finally:
        store.close()


def test_event_counts_refuses_unknown_bucket(store: Store) -> None:
    with pytest.raises(ValueError, match="bucket"):
        event_counts(store, since=T0, until=T0, bucket="week")  # type: ignore[arg-type]


def test_top_sources_counts_flagged_events_per_ip(store: Store) -> None:
    for _ in range(3):
        _event(store, client_ip="139.28.36.10", country="RO")
    _event(store, client_ip="139.28.36.10", country="NL")  # country changed since
    for _ in range(2):
        _event(store, client_ip="203.0.113.9", country=None, p1="not_applicable")  # not flagged
    _event(
        store,
        client_ip="198.51.100.4",
        country="US",
        p1="not_applicable",
        verdict="malicious",
        decision="quarantined",
    )
    _event(store, client_ip="192.0.2.99", country="DE", at=T0 - timedelta(days=30))  # too old
    _event(store, client_ip=None)  # milter without a peer address
    assert top_sources(store, since=T0 - timedelta(days=1)) == [
        ("139.28.36.10", "RO", 4),
        ("198.51.100.4", "US", 1),
    ]
    assert top_sources(store, since=T0 - timedelta(days=1), limit=1) == [("139.28.36.10", "RO", 4)]


def test_top_spoofed_senders(store: Store) -> None:
    # P1: the envelope sender was forged.
    _event(store, mail_from="Joe@Contoso.com")
    _event(store, mail_from="joe@contoso.com")
    # P2: the header From was forged while the envelope sender was someone else's.
    _event(
        store,
        mail_from="bounce@example.net",
        header_from="ceo@contoso.com",
        p1="not_applicable",
        p2="would_reject",
        decision="quarantined",
    )
    # Legitimate and old mail does not count.
    _event(store, mail_from="ann@contoso.com", p1="not_applicable", decision="accepted")
    _event(store, mail_from="old@contoso.com", at=T0 - timedelta(days=30))
    assert top_spoofed_senders(store, since=T0 - timedelta(days=1)) == [
        ("joe@contoso.com", 2),
        ("ceo@contoso.com", 1),
    ]


def test_audit_log_pages_newest_first(store: Store) -> None:
    for n in range(7):
        audit(store, actor="alice", action="release", target=f"q{n}", detail=f"#{n}")
    first = list_audit(store, limit=3)
    assert [e.target for e in first.items] == ["q6", "q5", "q4"]
    assert first.items[0].at.tzinfo is not None
    second = list_audit(store, limit=3, cursor=first.next_cursor)
    third = list_audit(store, limit=3, cursor=second.next_cursor)
    assert [e.target for e in second.items + third.items] == ["q3", "q2", "q1", "q0"]
    assert third.next_cursor is None
    assert [e.detail for e in list_audit(store, target="q2").items] == ["#2"]
