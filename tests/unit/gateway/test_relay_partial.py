"""Per-recipient outcomes and the exact wire bytes.

smtp-sink answers every RCPT alike and drops CRs from what it stores, so these tests use an
aiosmtpd server on a loopback port instead: a real SMTP server whose handler refuses chosen
recipients (RFC 5321 3.3: each RCPT has its own reply) and keeps the DATA bytes as received.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import Envelope, Session

from dsguard.gateway.relay import Downstream, Relay, RetryPolicy
from dsguard.gateway.spool import STATES, Spool, SpoolEntry

FAST = RetryPolicy(first_delay=0.05, factor=2.0, max_delay=0.2, max_age=3600.0)
HELO = "gateway.example.com"
MESSAGE = b"Subject: partial\r\n\r\nbody\r\n"


@dataclass
class PickyDownstream:
    """Refuses rcpts starting with "perm" (550) and, while ``busy``, "temp" ones (452)."""

    busy: bool = True
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: aiosmtpd_smtp.SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.startswith("perm"):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        if address.startswith("temp") and self.busy:
            return "452 4.2.2 Mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(
        self, server: aiosmtpd_smtp.SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)
        assert isinstance(envelope.mail_from, str)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), content))
        return "250 2.0.0 Ok: queued"


@asynccontextmanager
async def serve(handler: PickyDownstream) -> AsyncIterator[Downstream]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: aiosmtpd_smtp.SMTP(handler, hostname="mx.contoso.com", enable_SMTPUTF8=True),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield Downstream(host="127.0.0.1", port=port, timeout=10.0)
    finally:
        server.close()
        await server.wait_closed()


Events = list[tuple[str, str, tuple[str, ...], str]]


def recorder() -> tuple[Events, Callable[[SpoolEntry, str, str], None]]:
    events: Events = []

    def on_result(entry: SpoolEntry, outcome: str, detail: str) -> None:
        events.append((entry.id, outcome, entry.rcpt_to, detail))

    return events, on_result


def claim(spool: Spool) -> SpoolEntry:
    [entry] = spool.claim_due(datetime.now(UTC), 1)
    return entry


def test_mixed_replies_deliver_fail_and_defer_per_recipient(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    rcpts = ["ok1@contoso.com", "perm1@contoso.com", "temp1@contoso.com", "ok2@contoso.com"]
    entry = spool.enqueue(MESSAGE, "joe@contoso.com", rcpts, {"session": "s9"})
    handler = PickyDownstream()
    events, on_result = recorder()

    async def scenario() -> str:
        async with serve(handler) as ds:
            relay = Relay(spool, ds, FAST, helo=HELO, on_result=on_result)
            return await relay.deliver_once(claim(spool))

    assert asyncio.run(scenario()) == "deferred"

    # Delivered once, to the accepted recipients only.
    assert [(r[0], r[1]) for r in handler.received] == [
        ("joe@contoso.com", ["ok1@contoso.com", "ok2@contoso.com"])
    ]
    [failed] = spool.list("failed")
    assert failed.rcpt_to == ("perm1@contoso.com",)
    assert "550 5.1.1" in failed.last_error
    assert failed.meta == {"session": "s9", "split_from": entry.id}
    assert spool.read(failed) == MESSAGE
    [deferred] = spool.list("deferred")
    assert deferred.id == entry.id
    assert deferred.rcpt_to == ("temp1@contoso.com",)
    assert "452 4.2.2" in deferred.last_error
    assert [(e[1], e[2]) for e in events] == [
        ("delivered", ("ok1@contoso.com", "ok2@contoso.com")),
        ("failed", ("perm1@contoso.com",)),
        ("deferred", ("temp1@contoso.com",)),
    ]


def test_the_retry_goes_only_to_the_recipients_still_pending(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(MESSAGE, "joe@contoso.com", ["ok@contoso.com", "temp@contoso.com"], {})
    handler = PickyDownstream()

    async def scenario() -> None:
        async with serve(handler) as ds:
            relay = Relay(spool, ds, FAST, helo=HELO)
            assert await relay.deliver_once(claim(spool)) == "deferred"
            handler.busy = False  # the mailbox has room again
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            while any(spool.list(s) for s in STATES):
                await asyncio.sleep(0.02)
            stop.set()
            await task

    asyncio.run(scenario())

    assert [r[1] for r in handler.received] == [["ok@contoso.com"], ["temp@contoso.com"]]


def test_accepted_plus_permanent_only_narrows_the_failed_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.enqueue(MESSAGE, "joe@contoso.com", ["ok@contoso.com", "perm@contoso.com"], {})
    handler = PickyDownstream()
    events, on_result = recorder()

    async def scenario() -> str:
        async with serve(handler) as ds:
            relay = Relay(spool, ds, FAST, helo=HELO, on_result=on_result)
            return await relay.deliver_once(claim(spool))

    assert asyncio.run(scenario()) == "failed"

    assert [r[1] for r in handler.received] == [["ok@contoso.com"]]
    [failed] = spool.list("failed")
    assert (failed.id, failed.rcpt_to) == (entry.id, ("perm@contoso.com",))
    assert [e[1] for e in events] == ["delivered", "failed"]


def test_all_recipients_refused_sends_no_data(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(MESSAGE, "joe@contoso.com", ["perm@contoso.com", "temp@contoso.com"], {})
    handler = PickyDownstream()

    async def scenario() -> str:
        async with serve(handler) as ds:
            return await Relay(spool, ds, FAST, helo=HELO).deliver_once(claim(spool))

    assert asyncio.run(scenario()) == "deferred"

    assert handler.received == []
    assert [e.rcpt_to for e in spool.list("failed")] == [("perm@contoso.com",)]
    assert [e.rcpt_to for e in spool.list("deferred")] == [("temp@contoso.com",)]


def test_wire_bytes_are_the_stored_bytes_with_crlf_line_endings(tmp_path: Path) -> None:
    stored = (
        b"Subject: wire\r\nX-Bare-LF: yes\n\r\n"
        b".leading dot\r\nbare lf\nbare cr\rcrlf\r\n\x00\xff\xfe binary\r\n..\r\nend"
    )
    spool = Spool(tmp_path)
    spool.enqueue(stored, "joe@contoso.com", ["ok@contoso.com"], {})
    handler = PickyDownstream()

    async def scenario() -> str:
        async with serve(handler) as ds:
            return await Relay(spool, ds, FAST, helo=HELO).deliver_once(claim(spool))

    assert asyncio.run(scenario()) == "delivered"

    [(_sender, _rcpts, wire)] = handler.received
    # RFC 5321 2.3.8: every line ends in CRLF on the wire; nothing else changes.
    assert wire == re.sub(rb"\r\n|\r|\n", b"\r\n", stored) + b"\r\n"


def test_utf8_addresses_go_out_with_smtputf8_when_offered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(MESSAGE, "j\u00f6rg@contoso.com", ["\u00e5sa@contoso.com"], {})
    handler = PickyDownstream()

    async def scenario() -> str:
        async with serve(handler) as ds:
            return await Relay(spool, ds, FAST, helo=HELO).deliver_once(claim(spool))

    assert asyncio.run(scenario()) == "delivered"

    assert [(r[0], r[1]) for r in handler.received] == [
        ("j\u00f6rg@contoso.com", ["\u00e5sa@contoso.com"])
    ]


def test_addresses_that_could_inject_commands_are_refused_before_sending(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(MESSAGE, "joe@contoso.com", ["ok@contoso.com", "x@contoso.com>\r\nRSET\r\n"], {})
    handler = PickyDownstream()

    async def scenario() -> str:
        async with serve(handler) as ds:
            return await Relay(spool, ds, FAST, helo=HELO).deliver_once(claim(spool))

    assert asyncio.run(scenario()) == "failed"

    assert [r[1] for r in handler.received] == [["ok@contoso.com"]]
    [failed] = spool.list("failed")
    assert "invalid recipient address" in failed.last_error
