"""A lean SMTP client for the relay: one asyncio.Protocol, commands pipelined when allowed.

The relay sends the same shape of transaction thousands of times a second; a general client
(aiosmtplib) spends most of its time in per-command machinery and waits one round trip per
command. This one does only what the relay needs:

- ``SmtpConnection.open``: connect, read the 220 greeting, EHLO (HELO if EHLO is refused, RFC
  5321 section 3.2), and with ``starttls`` STARTTLS (RFC 3207: required, the certificate
  verified against the system CAs and the host name) followed by a new EHLO (section 4.2:
  everything learnt before TLS is forgotten).
- ``write`` queues command lines and counts the replies they are owed; ``reply`` returns the
  next reply in order. With PIPELINING (RFC 2920) the relay writes MAIL, every RCPT and DATA
  at once and then reads the replies (section 3.1: DATA may end a group; the message itself
  waits for the 354).
- ``message_wire`` turns stored bytes into the DATA wire form once, with C-speed byte
  operations: line endings made CRLF (RFC 5321 section 2.3.8), lines starting with "."
  doubled (section 4.5.2), a final CRLF if missing, and the terminating "." line.
- ``quit`` reads the replies still owed (a pipelined group after an early refusal; a 354 among
  them gets a lone "." so that QUIT is not taken for message data), sends QUIT and waits for
  its 221 (section 4.1.1.10); ``close`` drops the connection.

A connection is reusable (``reusable``) only while it is open, owes no replies and nothing
unsolicited arrived (a server that timed the connection out while idle sends 421 and closes).

SECURITY: the server's replies are untrusted input. A reply line longer than
``MAX_REPLY_LINE`` bytes, a reply of more than ``MAX_REPLY_LINES`` lines, a line without a
three-digit code or a multi-line reply whose codes differ is a protocol error and ends the
connection; reply text is decoded as UTF-8 with replacement (the relay strips control
characters before storing it). Every wait (connect, TLS handshake, each reply, sending the
message while the socket is full) has the connection's timeout. Command lines are built by the
caller from addresses it has checked for CR, LF and other control characters; this module adds
only the CRLF.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from dataclasses import dataclass
from typing import Final

MAX_REPLY_LINE: Final = 8192  # RFC 5321 4.5.3.1.5 says 512; real servers write longer texts
MAX_REPLY_LINES: Final = 256
_LINE_ENDING: Final = re.compile(rb"\r\n|\r|\n")


class SmtpError(Exception):
    """The SMTP session cannot go on (lost, malformed, refused setup)."""


class SmtpConnectionLostError(SmtpError):
    """The connection was closed or reset."""


class SmtpProtocolError(SmtpError):
    """The server sent something that is not an SMTP reply (or too much of it)."""


class SmtpReplyError(SmtpError):
    """A reply that ends the session setup (greeting, EHLO/HELO, STARTTLS)."""

    def __init__(self, code: int, message: str, during: str) -> None:
        super().__init__(f"{during}: {code} {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    message: str  # the text of every line, joined by "\n"


def message_wire(data: bytes) -> bytes:
    """The DATA wire form of stored message bytes: CRLF line endings, dot-stuffed, ended by
    CRLF "." CRLF (RFC 5321 2.3.8, 4.5.2, 4.1.1.4)."""
    # Mail the gateway accepted has CRLF only (bare CR/LF are refused at DATA): count first,
    # the regex runs only for stored bytes from elsewhere.
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDING.sub(b"\r\n", data)
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def wire_size(data: bytes) -> int:
    """The message size for SIZE= (RFC 1870): the CRLF form, before dot-stuffing."""
    crlf = data.count(b"\r\n")
    size = len(data) + (data.count(b"\n") - crlf) + (data.count(b"\r") - crlf)
    # Each bare LF or CR becomes CRLF (one byte more); a final line gets its CRLF.
    return size if data.endswith((b"\n", b"\r")) or not data else size + 2


class _Protocol(asyncio.Protocol):
    """Splits the byte stream into replies; wakes the one waiting reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.replies: collections.deque[Reply] = collections.deque()
        self.error: SmtpError | None = None  # set once: the connection is finished
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not self._line(line):
                return
        del buffer[:start]
        if len(buffer) > MAX_REPLY_LINE:
            self._fail(SmtpProtocolError(f"reply line over {MAX_REPLY_LINE} bytes"))
            return
        if self.replies:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = SmtpConnectionLostError(f"connection lost{reason}")
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- parsing -----------------------------------------------------------------------------

    def _line(self, line: bytes) -> bool:
        """One reply line (without CRLF); False if it ended the connection."""
        if len(line) > MAX_REPLY_LINE:
            self._fail(SmtpProtocolError(f"reply line over {MAX_REPLY_LINE} bytes"))
            return False
        # "ddd" alone, "ddd text" (last line) or "ddd-text" (more follow): RFC 5321 4.2.
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in b" -"):
            self._fail(SmtpProtocolError(f"not an SMTP reply: {line[:80]!r}"))
            return False
        code = int(line[:3])
        if self._lines and code != self._code:
            self._fail(SmtpProtocolError("multi-line reply with different codes"))
            return False
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if len(line) > 3 and line[3] == 0x2D:  # "-": continued
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail(SmtpProtocolError(f"reply of more than {MAX_REPLY_LINES} lines"))
                return False
            return True
        self.replies.append(Reply(code, "\n".join(self._lines)))
        self._lines = []
        return True

    def _fail(self, error: SmtpError) -> None:
        self.error = error
        self._buffer.clear()
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for SmtpConnection ----------------------------------------------------------------

    async def next_reply(self, timeout: float) -> Reply:
        while not self.replies:
            if self.error is not None:
                raise self.error
            waiter = self._loop.create_future()
            self._waiter = waiter
            timer = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.replies.popleft()

    async def drain(self, timeout: float) -> None:
        while self._paused and self.error is None:
            waiter = self._loop.create_future()
            self._drain_waiter = waiter
            timer = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._drain_waiter = None
        if self.error is not None:
            raise self.error


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply in time"))


class SmtpConnection:
    """One client connection (see the module docstring)."""

    def __init__(self, protocol: _Protocol, host: str, timeout: float) -> None:
        self._protocol = protocol
        self._host = host
        self._timeout = timeout
        self._owed = 0  # replies due for commands written
        self.extensions: dict[str, str] = {}  # EHLO keyword (lower case) -> parameters
        self.esmtp = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        helo: str,
        timeout: float,
        starttls: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> SmtpConnection:
        """Connect and greet (see the module docstring). Raises OSError, TimeoutError or
        SmtpError; nothing is left open then."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _transport, protocol = await loop.create_connection(lambda: _Protocol(loop), host, port)
        conn = cls(protocol, host, timeout)
        try:
            await conn._greet(helo, starttls, tls_context)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _greet(self, helo: str, starttls: bool, tls_context: ssl.SSLContext | None) -> None:
        self._owed = 1
        banner = await self.reply()
        if banner.code != 220:
            raise SmtpReplyError(banner.code, banner.message, "greeting")
        await self._hello(helo)
        if not starttls:
            return
        if "starttls" not in self.extensions:
            raise SmtpError("STARTTLS is required but the server does not offer it (RFC 3207)")
        reply = await self.command(b"STARTTLS")
        if reply.code != 220:
            raise SmtpReplyError(reply.code, reply.message, "STARTTLS")
        protocol = self._protocol
        transport = protocol.transport
        assert transport is not None
        if protocol.replies or protocol._buffer:
            # Bytes after the 220 came before the handshake: injected plaintext (RFC 3207 6).
            raise SmtpProtocolError("data after the STARTTLS reply")
        context = tls_context or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        tls_transport = await loop.start_tls(
            transport,
            protocol,
            context,
            server_hostname=self._host,
            ssl_handshake_timeout=self._timeout,
        )
        if tls_transport is None:  # the peer closed during the handshake
            raise SmtpConnectionLostError("connection lost during the TLS handshake")
        protocol.transport = tls_transport
        self.extensions = {}
        self.esmtp = False
        await self._hello(helo)

    async def _hello(self, helo: str) -> None:
        reply = await self.command(b"EHLO " + helo.encode("ascii"))
        if 200 <= reply.code < 300:
            self.esmtp = True
            extensions: dict[str, str] = {}
            for line in reply.message.split("\n")[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    extensions[keyword.lower()] = params
            self.extensions = extensions
            return
        reply = await self.command(b"HELO " + helo.encode("ascii"))  # pre-ESMTP (RFC 5321 3.2)
        if not 200 <= reply.code < 300:
            raise SmtpReplyError(reply.code, reply.message, "HELO")

    # -- use -----------------------------------------------------------------------------------

    def supports(self, extension: str) -> bool:
        return extension in self.extensions

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    @property
    def reusable(self) -> bool:
        """Open, nothing owed and nothing unsolicited received: ready for the next MAIL."""
        protocol = self._protocol
        transport = protocol.transport
        return (
            protocol.error is None
            and transport is not None
            and not transport.is_closing()
            and self._owed == 0
            and not protocol.replies
            and not protocol._buffer
            and not protocol._lines
        )

    def write(self, commands: list[bytes]) -> None:
        """Send command lines (without CRLF) at once; each is owed one reply."""
        self._send(b"".join(command + b"\r\n" for command in commands))
        self._owed += len(commands)

    async def send_message(self, wire: bytes) -> None:
        """Send the message (``message_wire``) after a 354; its final reply is owed."""
        self._send(wire)
        self._owed += 1
        await self._protocol.drain(self._timeout)

    async def reply(self) -> Reply:
        """The next owed reply, in order."""
        reply = await self._protocol.next_reply(self._timeout)
        self._owed -= 1
        return reply

    async def command(self, command: bytes) -> Reply:
        self.write([command])
        return await self.reply()

    async def quit(self, timeout: float | None = None) -> None:
        """Read what is still owed, say QUIT, wait for its reply, close. Never raises."""
        if timeout is not None:
            self._timeout = min(self._timeout, timeout)
        try:
            while self._owed > 0:
                if (await self.reply()).code == 354:
                    # A pipelined DATA the server accepted after all (RFC 2920 3.1): end that
                    # transaction with an empty message, or QUIT would be read as data.
                    self.write([b"."])
            await self.command(b"QUIT")
        except (SmtpError, OSError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.abort() if self._protocol.error is not None else transport.close()

    def _send(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.error is not None:
            raise protocol.error
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise SmtpConnectionLostError("connection closed")
        transport.write(data)
