"""Relay against a real smtp-sink: what was spooled arrives, once, with its envelope."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.fixtures import smtpsink
from tests.fixtures.smtpsink import SmtpSink, expected_dump

from dsguard.gateway.relay import Downstream, Relay, RetryPolicy
from dsguard.gateway.spool import STATES, Spool, SpoolEntry

smtp_sink = smtpsink.smtp_sink

FAST = RetryPolicy(first_delay=0.05, factor=2.0, max_delay=0.2, max_age=3600.0)
HELO = "gateway.example.com"

# A lone "." line (needs dot-stuffing), a bare LF and a bare CR (RFC 5321 2.3.8), 8-bit bytes.
TRICKY = (
    b"From: Joe <joe@contoso.com>\r\nTo: ann@contoso.com\r\nSubject: tricky\r\n\r\n"
    b"line one\r\n.\r\n..starts with dots\r\nbare lf\nbare\rcr\r\n\xe9t\xe9 8-bit\r\n"
    b"last line without CRLF"
)

Events = list[tuple[str, str, tuple[str, ...], str]]


def downstream(sink: SmtpSink) -> Downstream:
    return Downstream(host=sink.host, port=sink.port, timeout=10.0)


def recorder() -> tuple[Events, Callable[[SpoolEntry, str, str], None]]:
    events: Events = []

    def on_result(entry: SpoolEntry, outcome: str, detail: str) -> None:
        events.append((entry.id, outcome, entry.rcpt_to, detail))

    return events, on_result


def spool_is_empty(spool: Spool) -> bool:
    return all(spool.list(state) == [] for state in STATES)


async def run_until(relay: Relay, condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Run the relay until ``condition()`` holds (the limit only stops a broken test)."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while not condition():
            assert not task.done(), "relay.run() returned before it was stopped"
            assert loop.time() < deadline, "condition not reached"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task


def test_delivered_bytes_and_envelope_are_the_enqueued_ones(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.enqueue(
        TRICKY, "joe@contoso.com", ["ann@contoso.com", "bob@contoso.com"], {"verdict": "clean"}
    )
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, on_result=on_result)

    asyncio.run(run_until(relay, lambda: spool_is_empty(spool)))

    [received] = smtp_sink.received()
    assert received.data == expected_dump(TRICKY)
    assert received.data.count(b"\n.\n") == 1  # dot-stuffed on the wire, unstuffed by the sink
    assert received.mail_from == "joe@contoso.com"
    assert received.rcpt_to == ("ann@contoso.com", "bob@contoso.com")
    assert received.helo == HELO
    assert "BODY=8BITMIME" in received.mail_params  # RFC 6152: the body has 8-bit bytes
    assert [(e[0], e[1], e[2]) for e in events] == [
        (entry.id, "delivered", ("ann@contoso.com", "bob@contoso.com"))
    ]
    assert "250" in events[0][3]


def test_null_sender_is_relayed_as_empty_reverse_path(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    spool = Spool(tmp_path / "spool")
    spool.enqueue(b"Subject: bounce\r\n\r\nx\r\n", "", ["postmaster@contoso.com"], {})
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO)

    asyncio.run(run_until(relay, lambda: spool_is_empty(spool)))

    [received] = smtp_sink.received()
    assert received.mail_from == ""
    assert "BODY=8BITMIME" not in received.mail_params


def test_many_messages_with_concurrency_arrive_exactly_once(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    sent = {}
    for n in range(60):
        data = f"Message-ID: <m{n}@contoso.com>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()
        sent[n] = data
        spool.enqueue(data, "a@contoso.com", [f"user{n}@contoso.com"], {})
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, concurrency=8, helo=HELO, on_result=on_result)

    asyncio.run(run_until(relay, lambda: spool_is_empty(spool)))

    received = smtp_sink.wait_for(60)
    assert len(received) == 60
    assert sorted(received) == sorted(expected_dump(d) for d in sent.values())
    assert len(events) == 60
    assert {e[1] for e in events} == {"delivered"}


def test_wake_starts_delivery_without_waiting_for_the_poll(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    # Polling once an hour: only wake() can make this delivery happen within the test.
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, poll_interval=3600.0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await asyncio.sleep(0.1)  # let run() go idle first
        spool.enqueue(b"Subject: now\r\n\r\nx\r\n", "a@contoso.com", ["b@contoso.com"], {})
        relay.wake()
        await asyncio.to_thread(smtp_sink.wait_for, 1)
        stop.set()
        await task

    asyncio.run(scenario())

    assert spool_is_empty(spool)


def test_wake_from_another_thread_is_safe(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    spool = Spool(tmp_path / "spool")
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, poll_interval=3600.0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await asyncio.sleep(0.1)
        spool.enqueue(b"Subject: t\r\n\r\nx\r\n", "a@contoso.com", ["b@contoso.com"], {})
        await asyncio.to_thread(relay.wake)
        await asyncio.to_thread(smtp_sink.wait_for, 1)
        stop.set()
        await task

    asyncio.run(scenario())


def test_deliver_once_reports_delivered(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    spool = Spool(tmp_path / "spool")
    spool.enqueue(b"Subject: one\r\n\r\nx\r\n", "a@contoso.com", ["b@contoso.com"], {})
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO)
    [entry] = spool.claim_due(datetime.now(UTC), 1)

    assert asyncio.run(relay.deliver_once(entry)) == "delivered"

    assert spool_is_empty(spool)
    assert len(smtp_sink.messages()) == 1


def test_stop_lets_an_in_flight_delivery_finish(tmp_path: Path) -> None:
    # The sink waits 1 s before answering DATA, so the delivery is in flight when stop comes.
    with SmtpSink(tmp_path / "sink", options=["-w", "1"]) as sink:
        spool = Spool(tmp_path / "spool")
        spool.enqueue(b"Subject: slow\r\n\r\nx\r\n", "a@contoso.com", ["b@contoso.com"], {})
        relay = Relay(spool, downstream(sink), FAST, helo=HELO, shutdown_timeout=30.0)

        asyncio.run(run_until(relay, lambda: spool.list("active") != []))

        assert spool_is_empty(spool)
        assert len(sink.messages()) == 1


def test_stop_interrupting_a_delivery_puts_the_entry_back(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "sink", options=["-w", "5"]) as sink:
        spool = Spool(tmp_path / "spool")
        entry = spool.enqueue(b"Subject: x\r\n\r\nx\r\n", "a@contoso.com", ["b@contoso.com"], {})
        relay = Relay(spool, downstream(sink), FAST, helo=HELO, shutdown_timeout=0.1)

        asyncio.run(run_until(relay, lambda: spool.list("active") != []))

        assert spool.list("active") == []
        [back] = spool.list("deferred")
        assert back.id == entry.id
        assert "interrupted" in back.last_error
        assert back.next_attempt <= datetime.now(UTC)  # due again at once


def test_interrupted_after_the_downstream_took_it_is_not_sent_again(tmp_path: Path) -> None:
    # The sink answers QUIT only after 5 s: the message is delivered (250 after DATA) when
    # the relay is stopped and the session is cut during QUIT.
    with SmtpSink(tmp_path / "sink", options=["-W", "QUIT:5"]) as sink:
        spool = Spool(tmp_path / "spool")
        spool.enqueue(b"Subject: x\r\n\r\nx\r\n", "a@contoso.com", ["b@contoso.com"], {})
        events, on_result = recorder()
        relay = Relay(
            spool, downstream(sink), FAST, helo=HELO, on_result=on_result, shutdown_timeout=0.1
        )

        asyncio.run(run_until(relay, lambda: sink.messages() != []))

        assert spool_is_empty(spool)
        assert [e[1] for e in events] == ["delivered"]


def _submit_and_run(spool: Spool, relay: Relay, count: int) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        for n in range(count):
            data = f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()
            entry = await asyncio.to_thread(
                spool.enqueue, data, "a@contoso.com", [f"u{n}@contoso.com"], {}
            )
            relay.submit(entry, data)
        while not spool_is_empty(spool):
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_delivered_entries_are_committed_before_run_returns(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """The relay retires delivered entries on its loop and group-commits the fsync of active/
    in the background; by the time run() returns every removal is committed and every file
    is parked for reuse."""
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, concurrency=4, helo=HELO, on_result=on_result)

    _submit_and_run(spool, relay, 30)

    assert [e[1] for e in events] == ["delivered"] * 30
    assert len(smtp_sink.wait_for(30)) == 30
    parked = os.listdir(tmp_path / "spool" / "tmp")
    # Every parked file was committed, then offered for reuse (the later enqueues reused some).
    assert parked and sorted(parked) == sorted(spool._free)
    assert all(os.path.getsize(tmp_path / "spool" / "tmp" / p) == 0 for p in parked)


def test_a_failed_commit_after_delivery_loses_nothing_and_reuses_nothing(
    tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")

    def broken(names: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(spool, "commit_retired", broken)
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, concurrency=2, helo=HELO, on_result=on_result)

    _submit_and_run(spool, relay, 5)

    assert [e[1] for e in events] == ["delivered"] * 5
    assert len(smtp_sink.wait_for(5)) == 5
    assert spool._free == []  # not known durable: never rewritten


def test_a_slot_goes_on_with_submitted_entries_and_stops_cleanly(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """One slot chains submitted entries on its connection; stopping mid-way leaves the rest
    in new/ (nothing stuck in active/), and the next run delivers them, each exactly once."""
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, concurrency=1, helo=HELO, on_result=on_result)
    sent = [f"Subject: {n}\r\n\r\nchained {n}\r\n".encode() for n in range(40)]

    async def first_run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        for data in sent:
            entry = spool.enqueue(data, "a@contoso.com", ["u@contoso.com"], {})
            relay.submit(entry, data)
        while len(events) < 5:
            await asyncio.sleep(0.001)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(first_run(), 60))
    assert spool.list("active") == []
    assert len(events) + len(spool.list("new")) == 40

    relay2 = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, on_result=on_result)
    asyncio.run(run_until(relay2, lambda: spool_is_empty(spool)))
    assert [e[1] for e in events] == ["delivered"] * 40
    assert sorted(smtp_sink.wait_for(40)) == sorted(expected_dump(d) for d in sent)
