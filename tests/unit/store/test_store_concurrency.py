"""Several processes (gateway, policy server, milter, web UI) writing one store at once."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import traceback
from datetime import UTC, datetime
from pathlib import Path

from dsguard.store import open_store
from dsguard.store.repository import (
    list_events,
    list_quarantine,
    mark_released,
    quarantine_message,
    record_event,
)

EVENTS_PER_WORKER = 300


def _write_events(url: str, front_door: str, start: multiprocessing.synchronize.Barrier) -> int:
    try:
        return _write_events_unguarded(url, front_door, start)
    except BaseException as exc:
        # SQLAlchemy/DB-API exceptions do not always unpickle in the parent, which would
        # kill the pool's result thread and hang the test instead of failing it.
        raise RuntimeError("".join(traceback.format_exception(exc))) from None


def _write_events_unguarded(
    url: str, front_door: str, start: multiprocessing.synchronize.Barrier
) -> int:
    store = open_store(url)
    try:
        start.wait(timeout=60)  # both processes hammer the file at the same moment
        for n in range(EVENTS_PER_WORKER):
            record_event(
                store,
                front_door=front_door,
                client_ip="139.28.36.10",
                helo=f"h{n}",
                country="RO",
                mail_from="joe@contoso.com",
                rcpt_to=["joe@contoso.com"],
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
            if n % 50 == 0:
                # Read-then-write transactions are the ones that fail with "database is
                # locked" under deferred BEGIN; mix some in.
                qid = quarantine_message(
                    store,
                    raw=b"Subject: x\r\n\r\nbody\r\n",
                    mail_from="joe@contoso.com",
                    rcpt_to=["joe@contoso.com"],
                    client_ip=None,
                    helo=None,
                    country=None,
                    header_from=None,
                    subject=None,
                    message_id=None,
                    verdict="malicious",
                    score=9,
                    findings=[],
                    iocs={},
                    attribution="anonymous",
                    reason="test",
                    at=datetime.now(UTC),
                )
                assert mark_released(store, qid, front_door)
                list_quarantine(store, status=None, limit=5)
        return EVENTS_PER_WORKER
    finally:
        store.close()


def test_two_processes_write_events_to_one_sqlite_file_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:
        barrier = manager.Barrier(2)
        jobs = [
            pool.apply_async(_write_events, (url, door, barrier)) for door in ("gateway", "milter")
        ]
        assert [job.get(timeout=300) for job in jobs] == [EVENTS_PER_WORKER] * 2

    store = open_store(url)
    try:
        for door in ("gateway", "milter"):
            page = list_events(store, front_door=door, limit=1000)
            assert len(page.items) == EVENTS_PER_WORKER
        released = list_quarantine(store, status="released", limit=100)
        assert released.total_estimate == 2 * (EVENTS_PER_WORKER // 50)
    finally:
        store.close()
