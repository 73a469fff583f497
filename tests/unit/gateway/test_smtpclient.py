"""The relay's own SMTP client over real sockets: pipelining, per-recipient replies, broken and
hostile servers, STARTTLS.

The scripted server below is a real TCP server on a loopback port whose replies each test
writes by hand, so the awkward cases (a server that pipelines its refusals, says 354 with no
recipient left, drops the connection mid-transaction, sends garbage) can be produced exactly.
A scripted server that reads MAIL, RCPT and DATA *before* answering anything proves the client
pipelines: a lock-step client would wait for the MAIL reply forever.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import Envelope, Session

from dsguard.gateway.relay import Downstream, Relay, RetryPolicy
from dsguard.gateway.smtpclient import (
    MAX_REPLY_LINE,
    SmtpConnection,
    SmtpProtocolError,
    message_wire,
    wire_size,
)
from dsguard.gateway.spool import Spool, SpoolEntry

FAST = RetryPolicy(first_delay=0.05, factor=2.0, max_delay=0.2, max_age=3600.0)
HELO = "gateway.example.com"
MESSAGE = b"Subject: client\r\n\r\n.leading dot\r\nbody\r\n"
EHLO_PIPELINING = b"250-mx.contoso.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"


@dataclass
class Peer:
    """What the scripted server saw on one connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lines: list[bytes] = field(default_factory=list)

    async def line(self) -> bytes:
        line = await self.reader.readline()
        self.lines.append(line)
        return line

    async def expect(self, prefix: bytes) -> bytes:
        line = await self.line()
        assert line.upper().startswith(prefix.upper()), (prefix, line)
        return line

    async def body(self) -> bytes:
        """The message up to the final "." line (as sent: still dot-stuffed)."""
        return await self.reader.readuntil(b"\r\n.\r\n")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def greet(self, ehlo: bytes = EHLO_PIPELINING) -> None:
        self.send(b"220 mx.contoso.com ESMTP\r\n")
        await self.expect(b"EHLO ")
        self.send(ehlo)


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[Downstream, list[Peer]]]:
    peers: list[Peer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        peers.append(peer)
        try:
            await script(peer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Downstream(host="127.0.0.1", port=port, timeout=5.0), peers
    finally:
        server.close()


Events = list[tuple[str, tuple[str, ...], str]]


def enqueue_and_claim(spool: Spool, rcpt_to: list[str]) -> SpoolEntry:
    spool.enqueue(MESSAGE, "joe@contoso.com", rcpt_to, {})
    [entry] = spool.claim_due(datetime.now(UTC), 1)
    return entry


async def deliver(
    spool: Spool, ds: Downstream, rcpt_to: list[str], **kwargs: float
) -> tuple[str, Events]:
    events: Events = []

    def on_result(entry: SpoolEntry, outcome: str, detail: str) -> None:
        events.append((outcome, entry.rcpt_to, detail))

    relay = Relay(spool, ds, FAST, helo=HELO, on_result=on_result, **kwargs)  # type: ignore[arg-type]
    outcome = await relay.deliver_once(enqueue_and_claim(spool, rcpt_to))
    return outcome, events


# -- the wire form -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),  # a final line gets its CRLF
        (b".x\r\n.\r\n..\r\n", b"..x\r\n..\r\n...\r\n.\r\n"),  # RFC 5321 4.5.2
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),  # RFC 5321 2.3.8
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),  # a bare-LF "." line is stuffed too
        (b"", b".\r\n"),
    ],
)
def test_message_wire(stored: bytes, wire: bytes) -> None:
    assert message_wire(stored) == wire


@pytest.mark.parametrize("stored", [b"a\r\nb", b"a\nb\r", b"", b"x\r\r\n\n"])
def test_wire_size_is_the_crlf_form_before_stuffing(stored: bytes) -> None:
    crlf = re.sub(rb"\r\n|\r|\n", b"\r\n", stored)
    if crlf and not crlf.endswith(b"\r\n"):
        crlf += b"\r\n"
    assert wire_size(stored) == len(crlf)


# -- pipelining ------------------------------------------------------------------------------


def test_mail_rcpt_and_data_are_pipelined_and_each_rcpt_keeps_its_reply(tmp_path: Path) -> None:
    bodies: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.greet()
        # Nothing is answered until the whole group is in: a lock-step client hangs here.
        mail = await peer.expect(b"MAIL FROM:<joe@contoso.com>")
        assert b"SIZE=" in mail
        await peer.expect(b"RCPT TO:<ok@contoso.com>")
        await peer.expect(b"RCPT TO:<perm@contoso.com>")
        await peer.expect(b"RCPT TO:<temp@contoso.com>")
        await peer.expect(b"DATA")
        peer.send(
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n"
            b"452 4.2.2 Mailbox full\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        )
        bodies.append(await peer.body())
        peer.send(b"250 2.0.0 Ok: queued\r\n")
        await peer.expect(b"QUIT")
        peer.send(b"221 2.0.0 Bye\r\n")

    async def scenario() -> tuple[str, Events]:
        async with scripted(script) as (ds, _peers):
            return await deliver(
                Spool(tmp_path), ds, ["ok@contoso.com", "perm@contoso.com", "temp@contoso.com"]
            )

    outcome, events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "deferred"
    assert [(o, r) for o, r, _d in events] == [
        ("delivered", ("ok@contoso.com",)),
        ("failed", ("perm@contoso.com",)),
        ("deferred", ("temp@contoso.com",)),
    ]
    assert "550 5.1.1 No such user" in events[1][2]
    assert "452 4.2.2 Mailbox full" in events[2][2]
    assert bodies == [message_wire(MESSAGE)]


def test_no_recipient_left_but_data_accepted_ends_with_an_empty_message(tmp_path: Path) -> None:
    """RFC 2920 3.1: DATA may be accepted although every RCPT was refused; the client must
    then send a lone "." (never the message)."""
    bodies: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.greet()
        for prefix in (b"MAIL", b"RCPT", b"DATA"):
            await peer.expect(prefix)
        peer.send(b"250 Ok\r\n550 5.1.1 No such user\r\n354 go ahead\r\n")
        bodies.append(await peer.reader.readuntil(b".\r\n"))
        peer.send(b"554 5.5.1 No valid recipients\r\n")
        await peer.expect(b"QUIT")
        peer.send(b"221 Bye\r\n")

    async def scenario() -> tuple[str, Events]:
        async with scripted(script) as (ds, _peers):
            return await deliver(Spool(tmp_path), ds, ["perm@contoso.com"])

    outcome, events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "failed"
    assert bodies == [b".\r\n"]
    assert "550 5.1.1" in events[0][2]


def test_a_refused_mail_from_reads_the_pipelined_replies_before_quit(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.greet()
        for prefix in (b"MAIL", b"RCPT", b"DATA"):
            await peer.expect(prefix)
        peer.send(b"451 4.3.0 Try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n")
        await peer.expect(b"QUIT")
        peer.send(b"221 Bye\r\n")

    async def scenario() -> tuple[str, Events, list[Peer]]:
        async with scripted(script) as (ds, peers):
            outcome, events = await deliver(Spool(tmp_path), ds, ["ann@contoso.com"])
            return outcome, events, peers

    outcome, events, peers = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "deferred"
    assert "451 4.3.0 Try later" in events[0][2]
    assert peers[0].lines[-1].startswith(b"QUIT")  # nothing after QUIT, no message data


def test_a_354_after_a_refused_mail_from_gets_a_lone_dot_before_quit(tmp_path: Path) -> None:
    """A server that accepts DATA although MAIL was refused: the client must not send the
    message, and must end the data phase ("." alone) so that its QUIT is a command."""

    async def script(peer: Peer) -> None:
        await peer.greet()
        for prefix in (b"MAIL", b"RCPT", b"DATA"):
            await peer.expect(prefix)
        peer.send(b"451 4.3.0 Try later\r\n250 Ok\r\n354 go ahead\r\n")
        await peer.expect(b".")
        peer.send(b"554 5.5.1 No transaction\r\n")
        await peer.expect(b"QUIT")
        peer.send(b"221 Bye\r\n")

    async def scenario() -> tuple[str, Events, list[Peer]]:
        async with scripted(script) as (ds, peers):
            outcome, events = await deliver(Spool(tmp_path), ds, ["ann@contoso.com"])
            return outcome, events, peers

    outcome, events, peers = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert outcome == "deferred"
    assert "451 4.3.0 Try later" in events[0][2]
    assert peers[0].lines[-2:] == [b".\r\n", b"QUIT\r\n"]


# -- connections that break ------------------------------------------------------------------


def test_connection_lost_after_the_data_is_temporary_and_not_retried_blindly(
    tmp_path: Path,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.greet()
        for prefix in (b"MAIL", b"RCPT", b"DATA"):
            await peer.expect(prefix)
        peer.send(b"250 Ok\r\n250 Ok\r\n354 go ahead\r\n")
        await peer.body()
        peer.writer.transport.abort()  # gone before the final reply

    async def scenario() -> tuple[str, Events, list[Peer]]:
        async with scripted(script) as (ds, peers):
            outcome, events = await deliver(Spool(tmp_path), ds, ["ann@contoso.com"])
            return outcome, events, peers

    outcome, events, peers = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "deferred"
    assert "connection lost" in events[0][2]
    assert len(peers) == 1


def test_connection_lost_in_the_middle_of_the_pipelined_replies(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.greet()
        for prefix in (b"MAIL", b"RCPT", b"RCPT", b"DATA"):
            await peer.expect(prefix)
        peer.send(b"250 Ok\r\n250 Ok\r\n")
        await peer.writer.drain()
        peer.writer.transport.abort()

    async def scenario() -> tuple[str, Events]:
        async with scripted(script) as (ds, _peers):
            return await deliver(Spool(tmp_path), ds, ["a@contoso.com", "b@contoso.com"])

    outcome, events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "deferred"
    [(_o, rcpts, detail)] = events
    assert rcpts == ("a@contoso.com", "b@contoso.com")
    assert "connection lost" in detail


@pytest.mark.parametrize(
    ("greeting", "problem"),
    [
        (b"220-" + b"x" * (MAX_REPLY_LINE + 10) + b"\r\n", "reply line over"),
        (b"220-" + b"x" * (MAX_REPLY_LINE + 10), "reply line over"),  # no line end at all
        (b"hello there\r\n", "not an SMTP reply"),
        (b"220-one\r\n250 two\r\n", "different codes"),
        (b"".join(b"220-x\r\n" for _ in range(300)) + b"220 x\r\n", "more than"),
        (b"421 4.3.2 Not now\r\n", "421 4.3.2 Not now"),
        (b"554 5.7.1 Go away\r\n", "554 5.7.1 Go away"),
    ],
)
def test_bad_or_refusing_greetings_are_temporary(
    tmp_path: Path, greeting: bytes, problem: str
) -> None:
    async def script(peer: Peer) -> None:
        peer.send(greeting)
        await peer.writer.drain()
        await peer.reader.read()  # until the client hangs up

    async def scenario() -> tuple[str, Events]:
        async with scripted(script) as (ds, _peers):
            return await deliver(Spool(tmp_path), ds, ["ann@contoso.com"])

    outcome, events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "deferred"
    assert problem in events[0][2]


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.greet()
        await peer.reader.read()  # never answers MAIL

    async def scenario() -> tuple[str, Events]:
        async with scripted(script) as (ds, _peers):
            ds = Downstream(host=ds.host, port=ds.port, timeout=0.3)
            return await deliver(Spool(tmp_path), ds, ["ann@contoso.com"])

    outcome, events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome == "deferred"
    assert "timed out" in events[0][2] or "no reply in time" in events[0][2]


def test_unsolicited_data_makes_an_idle_connection_unusable() -> None:
    async def script(peer: Peer) -> None:
        await peer.greet()
        peer.send(b"421 4.4.2 Idle timeout\r\n")
        await peer.reader.read()

    async def scenario() -> None:
        async with scripted(script) as (ds, _peers):
            conn = await SmtpConnection.open(ds.host, ds.port, helo=HELO, timeout=5.0)
            assert conn.pipelining and conn.supports("size")
            for _ in range(100):
                if not conn.reusable:
                    break
                await asyncio.sleep(0.01)
            assert not conn.reusable
            conn.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_protocol_error_is_raised_to_the_reader() -> None:
    async def script(peer: Peer) -> None:
        peer.send(b"22\r\n")
        await peer.reader.read()

    async def scenario() -> None:
        async with scripted(script) as (ds, _peers):
            with pytest.raises(SmtpProtocolError):
                await SmtpConnection.open(ds.host, ds.port, helo=HELO, timeout=5.0)

    asyncio.run(asyncio.wait_for(scenario(), 30))


# -- STARTTLS ----------------------------------------------------------------------------------


@dataclass
class Keeper:
    received: list[bytes] = field(default_factory=list)

    async def handle_DATA(
        self, server: aiosmtpd_smtp.SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.original_content, bytes)
        assert session.ssl is not None  # only over TLS
        self.received.append(envelope.original_content)
        return "250 2.0.0 Ok"


def test_starttls_verifies_the_server_and_greets_again(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mx.contoso.test", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    handler = Keeper()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: aiosmtpd_smtp.SMTP(
                handler, hostname="mx", tls_context=server_ctx, require_starttls=True
            ),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            conn = await SmtpConnection.open(
                "127.0.0.1", port, helo=HELO, timeout=5.0, starttls=True, tls_context=client_ctx
            )
            assert "starttls" not in conn.extensions  # the EHLO after TLS
            conn.write([b"MAIL FROM:<joe@contoso.com>"])
            assert (await conn.reply()).code == 250
            conn.write([b"RCPT TO:<ann@contoso.com>"])
            assert (await conn.reply()).code == 250
            conn.write([b"DATA"])
            assert (await conn.reply()).code == 354
            await conn.send_message(message_wire(MESSAGE))
            assert (await conn.reply()).code == 250
            await conn.quit()
            # An unverifiable certificate (no CA configured) is refused.
            with pytest.raises(ssl.SSLError):
                await SmtpConnection.open("127.0.0.1", port, helo=HELO, timeout=5.0, starttls=True)
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert handler.received == [MESSAGE]
