"""list_quarantine: every filter, and keyset pagination without duplicates, gaps or reordering."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from dsguard.store import Store
from dsguard.store.repository import (
    QuarantineSummary,
    delete_quarantined,
    list_quarantine,
    mark_released,
)

Hold = Callable[..., str]
T0 = datetime(2024, 11, 1, 8, 0, tzinfo=UTC)


def _ids(page_items: Sequence[QuarantineSummary]) -> list[str]:
    return [item.id for item in page_items]


@pytest.fixture
def mixed(hold: Hold) -> dict[str, str]:
    """A small quarantine with one distinguishing value per message."""
    return {
        "fax": hold(
            at=T0,
            subject="New Missed Fax-msg",
            mail_from="joe@contoso.com",
            header_from="joe@contoso.com",
            rcpt_to=["Joe@Contoso.com"],
            verdict="malicious",
            findings=[{"id": "LURE_FAX", "score": 3, "summary": "fax lure"}],
            message_id="<a1@contoso.com>",
        ),
        "payroll": hold(
            at=T0 + timedelta(hours=1),
            subject="Payroll update",
            mail_from="bounce@example.net",
            header_from="hr@contoso.com",
            rcpt_to=["ann@contoso.com", "bob@contoso.com"],
            verdict="suspicious",
            findings=[
                {"id": "DS_P2_OWN_DOMAIN", "score": 4, "summary": "header From own domain"},
                {"id": "AUTH_DMARC_FAIL", "score": 2, "summary": "dmarc fail"},
            ],
            message_id="<payroll-77@example.net>",
        ),
        "voicemail": hold(
            at=T0 + timedelta(days=2),
            subject="Voicemail 100% urgent_now",
            mail_from="",
            header_from=None,
            rcpt_to=["bob@contoso.com"],
            verdict="malicious",
            findings=[{"id": "LURE_VOICEMAIL", "score": 3, "summary": "voicemail lure"}],
            message_id=None,
        ),
    }


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["voicemail", "payroll", "fax"]),
        ({"verdict": "malicious"}, ["voicemail", "fax"]),
        ({"verdict": "clean"}, []),
        ({"finding": "AUTH_DMARC_FAIL"}, ["payroll"]),
        ({"finding": "LURE"}, []),  # finding ids match exactly
        ({"sender": "BOUNCE@example"}, ["payroll"]),  # envelope sender, any case
        ({"sender": "hr@"}, ["payroll"]),  # header From
        ({"sender": "joe"}, ["fax"]),
        ({"recipient": "bob@contoso.com"}, ["voicemail", "payroll"]),
        ({"recipient": "JOE@contoso.COM"}, ["fax"]),
        ({"recipient": "contoso.com"}, []),  # whole addresses only
        ({"since": T0 + timedelta(hours=1)}, ["voicemail", "payroll"]),
        ({"until": T0 + timedelta(hours=1)}, ["fax"]),  # until is exclusive
        ({"since": T0, "until": T0 + timedelta(days=1)}, ["payroll", "fax"]),
        ({"search": "fax"}, ["fax"]),  # subject
        ({"search": "payroll-77"}, ["payroll"]),  # message-id
        ({"search": "100%"}, ["voicemail"]),  # LIKE wildcards are literal
        ({"search": "_now"}, ["voicemail"]),
        ({"search": "%"}, ["voicemail"]),
        ({"verdict": "malicious", "recipient": "bob@contoso.com"}, ["voicemail"]),
    ],
)
def test_filters(
    store: Store, mixed: dict[str, str], filters: dict[str, object], expected: list[str]
) -> None:
    page = list_quarantine(store, **filters)  # type: ignore[arg-type]
    names = {qid: name for name, qid in mixed.items()}
    assert [names[i] for i in _ids(page.items)] == expected
    assert page.total_estimate == len(expected)
    assert page.next_cursor is None


def test_status_filter(store: Store, mixed: dict[str, str]) -> None:
    mark_released(store, mixed["fax"], "alice")
    delete_quarantined(store, mixed["payroll"], "alice")
    assert _ids(list_quarantine(store).items) == [mixed["voicemail"]]
    assert _ids(list_quarantine(store, status="released").items) == [mixed["fax"]]
    assert _ids(list_quarantine(store, status="deleted").items) == [mixed["payroll"]]
    assert len(list_quarantine(store, status=None).items) == 3


def test_summary_carries_what_the_list_page_shows(store: Store, mixed: dict[str, str]) -> None:
    (summary,) = list_quarantine(store, finding="AUTH_DMARC_FAIL").items
    assert summary.received_at == T0 + timedelta(hours=1)
    assert summary.rcpt_to == ("ann@contoso.com", "bob@contoso.com")
    assert summary.finding_ids == ("DS_P2_OWN_DOMAIN", "AUTH_DMARC_FAIL")
    assert summary.verdict == "suspicious"
    assert summary.header_from == "hr@contoso.com"
    assert summary.raw_size > 0


def test_keyset_pagination_over_thousands_of_rows(store: Store, hold: Hold) -> None:
    # 2,400 messages, 8 per timestamp: ties must be ordered by id and never split wrongly.
    expected: list[tuple[datetime, str]] = []
    for n in range(2_400):
        at = T0 + timedelta(seconds=n // 8)
        verdict = "malicious" if n % 3 else "suspicious"
        qid = hold(at=at, verdict=verdict, subject=f"msg {n}")
        expected.append((at, qid))
    expected.sort(reverse=True)

    seen: list[tuple[datetime, str]] = []
    cursor = None
    pages = 0
    while True:
        page = list_quarantine(store, limit=100, cursor=cursor)
        if cursor is None:
            assert page.total_estimate == 2_400
        else:
            assert page.total_estimate is None
        seen.extend((s.received_at, s.id) for s in page.items)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 24
    assert seen == expected  # same order, no duplicates, no gaps

    # Filters and cursors combine; page boundaries inside a run of tied timestamps.
    suspicious_ids = _suspicious_ids(store)
    suspicious = [e for e in expected if e[1] in suspicious_ids]
    got: list[tuple[datetime, str]] = []
    cursor = None
    while True:
        page = list_quarantine(store, verdict="suspicious", limit=7, cursor=cursor)
        got.extend((s.received_at, s.id) for s in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert got == suspicious
    assert len(got) == 800


def _suspicious_ids(store: Store) -> set[str]:
    page = list_quarantine(store, verdict="suspicious", limit=1000)
    return {s.id for s in page.items}


def test_new_messages_do_not_shift_later_pages(store: Store, hold: Hold) -> None:
    ids = [hold(at=T0 + timedelta(minutes=n)) for n in range(10)]
    first = list_quarantine(store, limit=4)
    hold(at=T0 + timedelta(days=1))  # arrives while the admin reads page 1
    second = list_quarantine(store, limit=4, cursor=first.next_cursor)
    assert _ids(second.items) == list(reversed(ids))[4:8]


@pytest.mark.parametrize("cursor", ["garbage", "", "AAAA", "MjAyNC0wMS0wMXwx"])
def test_malformed_cursor_is_a_value_error(store: Store, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        list_quarantine(store, cursor=cursor)


def test_limit_is_bounded(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        list_quarantine(store, limit=0)
    with pytest.raises(ValueError, match="limit"):
        list_quarantine(store, limit=100_000)
