"""Relay fast paths against a real smtp-sink: downstream connection reuse (and reconnecting
when a cached connection died), entries handed over in memory by ``submit``, and the spool
scan that takes over when the in-memory queue overflows."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from tests.fixtures import smtpsink
from tests.fixtures.smtpsink import SmtpSink, expected_dump

from dsguard.gateway.relay import Downstream, Relay, RetryPolicy
from dsguard.gateway.smtpclient import SmtpConnection
from dsguard.gateway.spool import STATES, Spool, SpoolEntry

smtp_sink = smtpsink.smtp_sink

FAST = RetryPolicy(first_delay=0.05, factor=2.0, max_delay=0.2, max_age=3600.0)
HELO = "gateway.example.com"

Events = list[tuple[str, str, str]]


def message(n: int) -> bytes:
    return f"From: joe@contoso.com\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()


def downstream(sink: SmtpSink) -> Downstream:
    return Downstream(host=sink.host, port=sink.port, timeout=10.0)


def recorder() -> tuple[Events, Callable[[SpoolEntry, str, str], None]]:
    events: Events = []

    def on_result(entry: SpoolEntry, outcome: str, detail: str) -> None:
        events.append((entry.id, outcome, detail))

    return events, on_result


def spool_is_empty(spool: Spool) -> bool:
    return all(spool.list(state) == [] for state in STATES)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts downstream connections the relay opens."""
    calls: list[int] = []
    original = SmtpConnection.open.__func__  # type: ignore[attr-defined]

    async def counting(cls: type[SmtpConnection], *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await original(cls, *args, **kwargs)

    monkeypatch.setattr(SmtpConnection, "open", classmethod(counting))
    return calls


async def until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_one_connection_carries_many_messages(
    tmp_path: Path, smtp_sink: SmtpSink, connects: list[int]
) -> None:
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, concurrency=1, on_result=on_result)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        for n in range(20):
            data = message(n)
            entry = await asyncio.to_thread(
                spool.enqueue, data, "joe@contoso.com", ["ann@contoso.com"], {}
            )
            relay.submit(entry, data)
            await until(lambda n=n: len(smtp_sink.received()) == n + 1)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))

    assert sorted(m.data for m in smtp_sink.received()) == sorted(
        expected_dump(message(n)) for n in range(20)
    )
    assert [outcome for _id, outcome, _d in events] == ["delivered"] * 20
    assert len(connects) == 1
    assert spool_is_empty(spool)


def test_no_reuse_when_connection_idle_is_zero(
    tmp_path: Path, smtp_sink: SmtpSink, connects: list[int]
) -> None:
    spool = Spool(tmp_path / "spool")
    for n in range(3):
        spool.enqueue(message(n), "joe@contoso.com", ["ann@contoso.com"], {})
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, concurrency=1, connection_idle=0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await until(lambda: spool_is_empty(spool))
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len(smtp_sink.received()) == 3
    assert len(connects) == 3


def test_a_cached_connection_that_died_is_replaced_without_a_deferral(
    tmp_path: Path, smtp_sink: SmtpSink, connects: list[int]
) -> None:
    """The downstream restarts between two messages: the cached connection is dead; the
    second message goes out at once on a new connection, nothing is deferred."""
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, concurrency=1, on_result=on_result)

    async def send(n: int) -> None:
        data = message(n)
        entry = await asyncio.to_thread(
            spool.enqueue, data, "joe@contoso.com", ["ann@contoso.com"], {}
        )
        relay.submit(entry, data)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await send(0)
        await until(lambda: len(events) == 1)
        await asyncio.to_thread(smtp_sink.stop)
        await asyncio.to_thread(smtp_sink.start)  # same port, new process
        await send(1)
        await until(lambda: len(events) == 2)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))

    assert [outcome for _id, outcome, _d in events] == ["delivered", "delivered"]
    assert sorted(m.data for m in smtp_sink.received()) == [
        expected_dump(message(0)),
        expected_dump(message(1)),
    ]
    assert len(connects) == 2
    assert spool_is_empty(spool)


def test_overflowing_the_in_memory_queue_falls_back_to_scanning_the_spool(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(
        spool,
        downstream(smtp_sink),
        FAST,
        helo=HELO,
        concurrency=2,
        on_result=on_result,
        poll_interval=3600.0,  # only the backlog scan can find what overflowed
        max_submitted=3,
    )
    ids = []
    for n in range(25):  # submitted before run(): 3 in memory, the rest overflow
        entry = spool.enqueue(message(n), "joe@contoso.com", ["ann@contoso.com"], {})
        relay.submit(entry, message(n))
        ids.append(entry.id)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await until(lambda: len(events) == 25)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))

    assert sorted(i for i, _o, _d in events) == sorted(ids)  # each exactly once
    assert {o for _i, o, _d in events} == {"delivered"}
    assert len(smtp_sink.received()) == 25
    assert spool_is_empty(spool)


def test_a_submitted_entry_already_claimed_by_a_scan_is_not_sent_twice(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, on_result=on_result)
    entries = [
        spool.enqueue(message(n), "joe@contoso.com", ["ann@contoso.com"], {}) for n in range(5)
    ]
    for n, entry in enumerate(entries):
        relay.submit(entry, message(n))
    relay.wake()  # and a scan at once: both paths see the same five entries

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await until(lambda: len(events) == 5 and spool_is_empty(spool))
        await asyncio.sleep(0.3)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert sorted(i for i, _o, _d in events) == sorted(e.id for e in entries)
    assert len(smtp_sink.received()) == 5


class _ClosesIdleConnections:
    """aiosmtpd handler: the second MAIL on a connection gets 421 (like a server that timed
    the idle connection out just as the relay reused it)."""

    def __init__(self) -> None:
        self.mails_per_session: dict[int, int] = {}
        self.received: list[bytes] = []
        self.refused = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        count = self.mails_per_session.get(id(session), 0) + 1
        self.mails_per_session[id(session)] = count
        if count > 1:
            self.refused += 1
            return "421 4.4.2 Idle timeout, closing connection"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.content)
        return "250 OK"


def test_a_421_on_a_reused_connection_is_retried_on_a_new_one(
    tmp_path: Path, connects: list[int]
) -> None:
    handler = _ClosesIdleConnections()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    spool = Spool(tmp_path / "spool")
    events, on_result = recorder()
    relay = Relay(
        spool,
        Downstream(host="127.0.0.1", port=port, timeout=10.0),
        FAST,
        helo=HELO,
        concurrency=1,
        on_result=on_result,
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        for n in range(3):
            data = message(n)
            entry = await asyncio.to_thread(
                spool.enqueue, data, "joe@contoso.com", ["ann@contoso.com"], {}
            )
            relay.submit(entry, data)
            await until(lambda n=n: len(events) == n + 1)
        stop.set()
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        controller.stop()

    assert [outcome for _id, outcome, _d in events] == ["delivered"] * 3
    assert len(handler.received) == 3
    assert handler.refused == 2  # messages 2 and 3 each met a "dead" cached connection
    assert len(connects) == 3
    assert spool_is_empty(spool)
