"""The block DATA reader gives aiosmtpd's outcome exactly: both servers, same bytes, same replies.

Each case runs over real loopback sockets against plain aiosmtpd (its line-by-line
``smtp_DATA``) and against dsguard's ``smtpserver.SmtpSession`` (which reads DATA with
``DataScanner``), the client sending the same bytes cut into the same pieces; the full reply
transcript and the content the handler got must be identical. The cases
are the ones that matter at the gateway: SMTP smuggling (bare LF / CR around a "."), dot
stuffing, the size limit, the line-length limit (at and around 1001 bytes, and far beyond),
both limits broken in either order, the end of data split across reads, and commands pipelined
right after the final ".".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from dsguard.gateway import smtpserver
from dsguard.gateway.smtpdata import DataScanner, DataState
from dsguard.gateway.smtpserver import ConnectionGate, SmtpSession, SmtpSettings

LIMIT = 20_000  # data_size_limit of both servers


@dataclass
class Recorder:
    contents: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        assert envelope.content == envelope.original_content
        self.contents.append(envelope.original_content)
        return "250 2.0.0 kept"


@dataclass
class NewRecorder:
    """The same handler for smtpserver's interface (aiosmtpd's default replies otherwise)."""

    contents: list[bytes] = field(default_factory=list)

    def handle_exception(self, error: Exception) -> str:
        raise AssertionError(error)

    def handle_EHLO(
        self,
        server: object,
        session: smtpserver.Session,
        envelope: smtpserver.Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses

    def handle_AUTH(self, *args: object) -> str | None:
        return None

    def handle_MAIL(
        self,
        server: object,
        session: smtpserver.Session,
        envelope: smtpserver.Envelope,
        address: str,
        options: list[str],
    ) -> str:
        envelope.mail_from = address
        return "250 OK"

    def handle_RCPT(
        self,
        server: object,
        session: smtpserver.Session,
        envelope: smtpserver.Envelope,
        address: str,
        options: list[str],
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: object, session: smtpserver.Session, envelope: smtpserver.Envelope
    ) -> str:
        assert isinstance(envelope.original_content, bytes)
        assert envelope.content == envelope.original_content
        self.contents.append(envelope.original_content)
        return "250 2.0.0 kept"

    def forget(self, session: smtpserver.Session) -> None:
        pass


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        line = await reader.readline()
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out


async def _session(port: int, pieces: Sequence[bytes], after: int) -> list[bytes]:
    """MAIL, RCPT, DATA, then ``pieces`` one write each, then read ``after`` replies, QUIT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await _read_reply(reader)]
    for command in (b"EHLO client.example\r\n", b"MAIL FROM:<a@example.org>\r\n"):
        writer.write(command)
        replies.append(await _read_reply(reader))
    writer.write(b"RCPT TO:<b@contoso.com>\r\n")
    replies.append(await _read_reply(reader))
    writer.write(b"DATA\r\n")
    replies.append(await _read_reply(reader))
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)
    for _ in range(after):
        replies.append(await _read_reply(reader))
    writer.write(b"QUIT\r\n")
    replies.append(await _read_reply(reader))
    writer.close()
    return replies


def _aiosmtpd() -> tuple[Callable[[], Any], Any]:
    handler = Recorder()
    return lambda: SMTP(
        handler,
        hostname="mx.test",
        ident="dsguard ESMTP",
        data_size_limit=LIMIT,
        enable_SMTPUTF8=True,
    ), handler


def _dsguard() -> tuple[Callable[[], Any], Any]:
    handler = NewRecorder()
    settings = SmtpSettings(
        hostname="mx.test",
        ident="dsguard ESMTP",
        data_size_limit=LIMIT,
        idle_timeout=60,
        session_timeout=60,
        max_commands=1000,
    )
    gate = ConnectionGate(10, 10)
    return lambda: SmtpSession(handler, settings, gate), handler


async def _run(
    make: Callable[[], tuple[Callable[[], Any], Any]], pieces: Sequence[bytes], after: int
) -> tuple[Any, ...]:
    factory, handler = make()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        replies = await asyncio.wait_for(_session(port, pieces, after), 30)
    finally:
        server.close()
    # Replies name no server-specific state except the greeting's host name, the same for both.
    return replies, handler.contents


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


LONG = b"x" * 5000
CASES: dict[str, tuple[bytes, int]] = {
    # name: (bytes after the 354, replies expected after them)
    "plain": (b"Subject: hi\r\n\r\nbody\r\n.\r\n", 1),
    "empty": (b".\r\n", 1),
    "dot-stuffing": (b"..first\r\n.\r\x00\r\n..\r\n...x\r\nlast\r\n.\r\n", 1),
    "lf-dot-lf smuggling": (b"a\r\n\n.\nMAIL FROM:<evil@x>\n\r\nb\r\n.\r\n", 1),
    "cr-dot-cr smuggling": (b"a\r\n\r.\rRCPT TO:<evil@x>\r\r\n.\r\n", 1),
    "lf-dot-crlf smuggling": (b"a\n.\r\nRSET\r\nb\r\n.\r\n", 1),
    "crlf-dot-lf smuggling": (b"a\r\n.\nNOOP\r\nb\r\n.\r\n", 1),
    "no final crlf before dot": (b"a\r\nb.\r\n.\r\n", 1),
    "line 999": (b"y" * 999 + b"\r\n.\r\n", 1),
    "line 1000": (b"y" * 1000 + b"\r\n.\r\n", 1),
    "line 1001": (b"y" * 1001 + b"\r\n.\r\n", 1),
    "line 1002": (b"y" * 1002 + b"\r\n.\r\n", 1),
    "line with cr at 1001": (b"y" * 1001 + b"\r\r\n.\r\n", 1),
    "long line then dot": (b"a\r\n" + LONG + b"\r\n.\r\n", 1),
    "long line with a dot line inside": (LONG + b"\n.\r\n" + LONG + b"\r\n.\r\n", 1),
    "very long line": (b"z" * 100_000 + b"\r\n.\r\n", 1),
    "at the size limit": (b"s" * 98 + b"\r\n" + (b"s" * 98 + b"\r\n") * 199 + b".\r\n", 1),
    "one byte over": (b"s" * 99 + b"\r\n" + (b"s" * 98 + b"\r\n") * 199 + b".\r\n", 1),
    "too much, then too long": ((b"s" * 98 + b"\r\n") * 250 + LONG + b"\r\n.\r\n", 1),
    "too long, then too much": (LONG + b"\r\n" + (b"s" * 98 + b"\r\n") * 250 + b".\r\n", 1),
    "1002 line crossing the size limit": (
        (b"s" * 98 + b"\r\n") * 195 + b"y" * 1000 + b"\r\n.\r\n",
        1,
    ),
    "stuffing dots count towards the size": ((b"." * 98 + b"\r\n") * 200 + b".\r\n", 1),
    "pipelined after the data": (b"one\r\n.\r\nRSET\r\nNOOP\r\n", 3),
    "pipelined next message": (
        b"one\r\n.\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<d@contoso.com>\r\nDATA\r\ntwo\r\n.\r\n",
        5,
    ),
    "binary": (bytes(range(256)).replace(b"\n", b"") + b"\r\n.\r\n", 1),
}


# One byte per write only for the short cases (a 100 KB line byte by byte is minutes of
# round trips and tests nothing the 3-byte cut does not).
_CUTS = [
    (name, piece)
    for piece in (0, 1, 3, 1000, 4096)
    for name, (data, _after) in CASES.items()
    if not (piece == 1 and len(data) > 12_000)
]


@pytest.mark.parametrize(("name", "piece"), _CUTS)
def test_same_outcome_as_aiosmtpd(name: str, piece: int) -> None:
    data, after = CASES[name]
    pieces = [data] if piece == 0 else _cut(data, piece)

    async def both() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        return await _run(_aiosmtpd, pieces, after), await _run(_dsguard, pieces, after)

    theirs, (replies, contents) = asyncio.run(both())
    # The DATA phase is compared; EHLO differs by design (ours also offers PIPELINING).
    assert ([r.replace(b"250-PIPELINING\r\n", b"", 1) for r in replies], contents) == theirs


# -- the scanner alone: every way of cutting the input gives the same result ------------------


@pytest.mark.parametrize("name", [n for n, (d, _a) in CASES.items() if len(d) < 3000])
def test_any_cut_gives_the_same_result(name: str) -> None:
    data, _after = CASES[name]
    whole = DataScanner(LIMIT, 1001)
    assert whole.feed(data)
    expected = (whole.state, whole.content(), whole.rest)
    for cut in range(1, len(data)):
        scanner = DataScanner(LIMIT, 1001)
        if scanner.feed(data[:cut]):
            rest = scanner.rest + data[cut:]  # the command loop reads the second part
        else:
            scanner.feed(data[cut:])
            rest = scanner.rest
        assert (scanner.state, scanner.content(), rest) == expected, cut


def test_an_overlong_line_is_not_kept_in_memory() -> None:
    scanner = DataScanner(LIMIT, 1001)
    for _ in range(1000):
        scanner.feed(b"w" * 10_000)
        assert len(scanner._pending) <= 1001 + 2
    scanner.feed(b"\r\n.\r\nQUIT\r\n")
    assert (scanner.done, scanner.state, scanner.rest) == (True, DataState.TOO_LONG, b"QUIT\r\n")


def test_past_the_size_limit_nothing_more_is_kept() -> None:
    scanner = DataScanner(LIMIT, 1001)
    for _ in range(1000):
        scanner.feed(b"s" * 98 + b"\r\n")
    assert scanner.state is DataState.TOO_MUCH
    assert scanner._parts == []
    assert scanner.feed(b".\r\n")
