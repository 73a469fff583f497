"""dsguard's SMTP server protocol: one plain :class:`asyncio.Protocol` per connection.

It replaces aiosmtpd on the gateway's listeners and keeps its behaviour, reply for reply (the
texts clients and tests see; tests/unit/gateway/test_smtpserver.py drives both over real
sockets with the same byte sequences), without its per-connection cost: no introspection of
the handler per connection, no coroutine step per command line, no ``drain`` per reply.

- Each read is split into complete lines (ending in LF, trailing CR/LF stripped, as aiosmtpd
  reads commands) and every command that needs no waiting is answered at once, in order; the
  replies to one read go out in one write (RFC 2920 section 3.1: the server may batch the
  replies to a group of pipelined commands, and sends them when its input is used up).
- Only four things wait: the DATA handler (analysis, spool), MAIL of an authenticated user
  (its send-as list), the AUTH password check (in a worker thread: argon2 takes tens of ms)
  and the STARTTLS handshake (``loop.start_tls``). While one is under way nothing else is read
  from the buffer; commands pipelined behind it are answered after it, in order.
- DATA is read by :class:`~dsguard.gateway.smtpdata.DataScanner` (block by block, same limits
  and replies as aiosmtpd's line loop); commands pipelined after the final "." are served next.
- STARTTLS: whatever the client sent after the STARTTLS line in plain text is discarded, and
  the session starts over (no HELO, no transaction, no AUTH) on the encrypted channel
  (RFC 3207 section 4.2; pipelining plain-text commands behind STARTTLS is a known injection).
- The handler is called like aiosmtpd's (``handle_EHLO/AUTH/MAIL/RCPT/DATA`` with the server,
  a :class:`Session` and an :class:`Envelope` that carry aiosmtpd's field names), but only
  DATA is a coroutine; MAIL returns a reply or an awaitable of one.

Intended differences from aiosmtpd 1.4.6 (each a bug or hazard there, but the first):

- EHLO advertises PIPELINING (RFC 2920), which aiosmtpd never did: a pipelining client (Postfix's
  smtp, Exchange) then sends MAIL, its RCPTs and DATA in one packet and waits once, not once per
  command.

- The MAIL line limit after EHLO is 512 + 26 (SIZE) + 10 (SMTPUTF8) = 548 bytes per session.
  aiosmtpd keeps it in a class-level dict that every EHLO of every session raises by 36 and
  every new connection resets, so it drifts with unrelated traffic.
- A reply echoing client bytes that are not UTF-8 (``VRFY``) carries "?" for them; aiosmtpd
  failed to encode it and answered 451. ``SIZE=`` takes ASCII digits only (aiosmtpd:
  ``isdigit`` then ``int``, a 451 on digits ``int`` does not take).
- After the end of data the transaction is over whatever the reply, a 451 for an internal
  fault included (RFC 5321 section 4.1.1.4); aiosmtpd kept the envelope after a fault, so the
  next MAIL got "503 nested MAIL command".
- An address with a control character (NUL, CR, TAB, DEL...) is malformed (``553 5.1.3``,
  RFC 5321 4.1.2); aiosmtpd's RFC 5322 parse took it, and MAIL FROM:<a\x00b@...> got 250.
- STARTTLS inside TLS: ``554 5.5.1 Error: TLS already active`` (Postfix's reply); aiosmtpd
  tried to stack a second TLS layer. A failed handshake closes the connection with an info
  log line, not an ERROR with a traceback: it is the client's failure.
- An AUTH response line over the line limit: ``500 5.5.6 Authentication Exchange line is too
  long`` (RFC 4954 section 4); aiosmtpd answered 451.
- The idle timer counts from the last command or the last block of message data, and not
  while the server itself is working (analysis); aiosmtpd's counted from the last command
  only, so a large message on a slow link could be cut off mid-DATA.

SECURITY: this faces hostile clients on port 25. Memory per connection is bounded: a command
line of at most 1001 bytes + LF is kept (a longer one is dropped as it arrives and answered
``500 Command line too long``), message data by ``DataScanner`` (size limit + one line), and
input arriving while the server is busy is kept up to ``BUSY_BUFFER_LIMIT`` bytes (plus the
read that crossed it), beyond which reading pauses (as it does while the client does not read
our replies). Limits: admission (total and per-IP sessions, else 421 and close), whole-session
time (421), idle time (421), a per-command budget (``max_commands`` for all but
MAIL/RCPT/DATA/RSET; 421 and close), five unrecognised commands (502 and close), recipients
(the handler), message size and line length (552 / 500 after the data, RFC 5321 section
4.2.5). AUTH is offered only over TLS, checked off the event loop, and failures are throttled
by the authenticator. An internal fault answers the handler's ``handle_exception`` reply
(451), never a 5xx for our own fault. Nothing from an AUTH exchange is logged.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import ssl
from base64 import b64decode
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, NamedTuple, Protocol

from dsguard.gateway.smtpdata import TOO_LONG_REPLY, TOO_MUCH_REPLY, DataScanner, DataState

log = logging.getLogger("dsguard.gateway")

TOO_MANY_SESSIONS = "421 4.7.0 Too many connections, try again later"
SESSION_TOO_LONG = "421 4.4.2 Session time limit reached, closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"
FALLBACK_TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
SETUP_FAILED = "421 4.3.0 Temporary local problem, closing connection"

LINE_LIMIT = 1001  # RFC 5321 4.5.3.1.6: 998 octets + CRLF, + a transparency dot (aiosmtpd)
COMMAND_LIMIT = 512  # RFC 5321 4.5.3.1.4 (aiosmtpd's command_size_limit, CRLF not counted)
MAIL_EXTENSION_BYTES = 26 + 10  # RFC 1870 SIZE=, RFC 6531 SMTPUTF8 (aiosmtpd's additions)
BOGUS_LIMIT = 5  # unrecognised commands before the client is dropped (aiosmtpd's)
BUSY_BUFFER_LIMIT = 64 * 1024  # pipelined input kept while a handler works, then pause reading
# RFC 3207 section 4: before STARTTLS on a listener that requires it.
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
# MAIL/RCPT/DATA/RSET repeat for every message of a reused connection: bounded by the session
# time limit, not by max_commands (aiosmtpd's command_call_limit, as the gateway set it).
TRANSACTION_CALL_LIMITS = {
    "MAIL": 1_000_000,
    "RCPT": 10_000_000,
    "DATA": 1_000_000,
    "RSET": 1_000_000,
}

AUTH_SUCCESS = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"
TLS_ACTIVE = "554 5.5.1 Error: TLS already active"
# aiosmtpd's AUTH LOGIN challenges ("User Name\0", "Password\0", base64).
LOGIN_USER_CHALLENGE = "334 VXNlciBOYW1lAA=="
LOGIN_PASSWORD_CHALLENGE = "334 UGFzc3dvcmQA"  # noqa: S105 -- a prompt, not a password

# HELP texts (aiosmtpd's @syntax decorations); EXPN has none.
_HELP = {
    "AUTH": ("AUTH <mechanism>", ""),
    "DATA": ("DATA", ""),
    "EHLO": ("EHLO hostname", ""),
    "HELO": ("HELO hostname", ""),
    "HELP": ("HELP [command]", ""),
    "MAIL": ("MAIL FROM: <address>", " [SP <mail-parameters>]"),
    "NOOP": ("NOOP [ignored]", ""),
    "QUIT": ("QUIT", ""),
    "RCPT": ("RCPT TO: <address>", " [SP <mail-parameters>]"),
    "RSET": ("RSET", ""),
    "STARTTLS": ("STARTTLS", ""),  # only when TLS is configured
    "VRFY": ("VRFY <address>", ""),
}

# <dot-atom@dot-atom-domain> followed by the end or parameters: the everyday MAIL/RCPT
# argument, for which the full RFC 5322 parse gives the address unchanged.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>[ \t]*(?=[^ \t(\r\n]|\Z)"
)


# C0, DEL, C1 (Unicode category Cc) and the line/paragraph separators (Zl, Zp): none is
# allowed in a path (RFC 5321 4.1.2; RFC 6531 3.3 adds only graphic UTF-8 to it).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class LoginPassword(NamedTuple):
    login: bytes
    password: bytes

    def __repr__(self) -> str:  # never the password, whatever logs it
        return f"LoginPassword(login={self.login!r}, password=...)"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The authenticator's answer: ``message`` replaces the default 235 / 535 reply."""

    success: bool
    message: str | None = None
    auth_data: LoginPassword | None = None


class Session:
    """One SMTP session (a new one after STARTTLS); aiosmtpd's field names."""

    __slots__ = ("auth_data", "authenticated", "extended_smtp", "host_name", "peer", "ssl")

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.ssl: dict[str, Any] | None = None
        self.host_name: str | None = None
        self.extended_smtp = False
        self.authenticated: bool | None = None
        self.auth_data: LoginPassword | None = None


class Envelope:
    """One mail transaction; aiosmtpd's field names."""

    __slots__ = (
        "content",
        "mail_from",
        "mail_options",
        "original_content",
        "rcpt_options",
        "rcpt_tos",
        "smtp_utf8",
    )

    def __init__(self) -> None:
        self.mail_from: str | None = None
        self.mail_options: list[str] = []
        self.smtp_utf8 = False
        self.content: bytes | None = None
        self.original_content: bytes | None = None
        self.rcpt_tos: list[str] = []
        self.rcpt_options: list[str] = []


class Handler(Protocol):
    """What the server asks of its handler (``GatewayHandler``)."""

    def handle_exception(self, error: Exception) -> str: ...

    def handle_EHLO(  # noqa: N802 -- the hook names are aiosmtpd's
        self,
        server: SmtpSession,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]: ...

    def handle_AUTH(  # noqa: N802
        self, server: SmtpSession, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None: ...

    def handle_MAIL(  # noqa: N802
        self,
        server: SmtpSession,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str | Awaitable[str]: ...

    def handle_RCPT(  # noqa: N802
        self,
        server: SmtpSession,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str: ...

    def handle_DATA(  # noqa: N802
        self, server: SmtpSession, session: Session, envelope: Envelope
    ) -> Coroutine[Any, Any, str]: ...

    def forget(self, session: Session) -> None: ...


# Runs in a worker thread: may block (password hashing, the database).
Authenticator = Callable[[Session, str, LoginPassword], AuthResult]


@dataclass
class ConnectionGate:
    """Admission control: total and per-IP concurrent sessions."""

    max_sessions: int
    max_per_ip: int
    active: Counter[str] = field(default_factory=Counter)
    sessions: set[SmtpSession] = field(default_factory=set)
    admitted: int = 0  # sessions so far (a worker reports it when it stops)

    def admit(self, ip: str) -> bool:
        if sum(self.active.values()) >= self.max_sessions or self.active[ip] >= self.max_per_ip:
            return False
        self.active[ip] += 1
        self.admitted += 1
        return True

    def release(self, ip: str) -> None:
        self.active[ip] -= 1
        if self.active[ip] <= 0:
            del self.active[ip]


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """One listener's settings, shared by its sessions (built once per configuration)."""

    hostname: str
    ident: str
    data_size_limit: int
    idle_timeout: float
    session_timeout: float
    max_commands: int
    tls_context: ssl.SSLContext | None = None
    require_starttls: bool = False
    auth_required: bool = False
    authenticator: Authenticator | None = None

    @property
    def greeting(self) -> bytes:
        return f"220 {self.hostname} {self.ident}\r\n".encode()

    def ehlo_lines(self, tls_active: bool) -> list[str]:
        """The EHLO keywords: aiosmtpd's, plus PIPELINING (RFC 2920: commands are served in
        order from whatever one read brought and the replies to it go out together, which is
        what the RFC asks of a server); no ENHANCEDSTATUSCODES, as not every reply carries
        one. AUTH only over TLS, STARTTLS only before it."""
        lines = [f"250-{self.hostname}", f"250-SIZE {self.data_size_limit}", "250-8BITMIME"]
        lines.append("250-PIPELINING")
        lines.append("250-SMTPUTF8")
        if self.tls_context is not None and not tls_active:
            lines.append("250-STARTTLS")
        if tls_active:
            lines.append("250-AUTH LOGIN PLAIN")
        lines.append("250 HELP")
        return lines

    def help_commands(self) -> str:
        names = [n for n in _HELP if n != "STARTTLS" or self.tls_context is not None]
        return " ".join(sorted(names))


def parse_path(arg: str) -> tuple[str | None, str | None]:
    """The address and what follows it in a MAIL/RCPT/VRFY argument, as aiosmtpd's
    ``_getaddr``: ("", "") for nothing, (None, None) when it does not parse. The plain
    ``<local@domain>`` form by a regex; anything else (quoted local parts, source routes,
    comments...) by the email package's RFC 5322 parser, so the handler sees exactly the
    address aiosmtpd gave it and its relay checks refuse the same tricks."""
    match = _SIMPLE_PATH.match(arg)
    if match is not None:
        return match.group(1), arg[match.end() :]
    if not arg:
        return "", ""
    try:
        parsed = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    address, rest = parsed
    spec = str(address.addr_spec)
    if _CONTROL.search(spec):
        # RFC 5321 4.1.2: no control character is allowed in a path, not even quoted
        # (qtextSMTP and quoted-pairSMTP are %d32-126; RFC 6531 adds only non-ASCII UTF-8).
        # The RFC 5322 parser takes them; a NUL or CR/LF would go on to the spool, the
        # events and the downstream MTA.
        return None, None
    return spec, str(rest)


def parse_params(params: list[str]) -> dict[str, str | bool] | None:
    """RFC 1869 ``keyword[=value]`` parameters; None when one is malformed (aiosmtpd's)."""
    result: dict[str, str | bool] = {}
    for param in params:
        name, eq, value = param.partition("=")
        if not name.isalnum() or (eq and not value):
            return None
        result[name] = value if eq else True
    return result


def _strip_keyword(keyword: str, arg: str) -> str | None:
    if arg[: len(keyword)].upper() == keyword:
        return arg[len(keyword) :].strip()
    return None


class SmtpSession(asyncio.Protocol):
    """One SMTP connection; see the module docstring."""

    def __init__(self, handler: Handler, settings: SmtpSettings, gate: ConnectionGate) -> None:
        self.handler = handler
        self.settings = settings
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.envelope = Envelope()
        self.tls_active = False
        self._peer_ip = "unknown"
        self._admitted = False
        self._closed = False
        self._told_to_leave = False
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._overlong: str | None = None  # inside an overlong line: the reply at its end
        self._scanner: DataScanner | None = None
        self._line_handler: Callable[[bytes], None] | None = None  # AUTH exchange lines
        self._task: asyncio.Future[Any] | None = None  # the one thing we wait for
        self._ends_transaction = False  # what _task answers is the end of data's reply
        self._handshaking = False
        self._read_paused = False
        self._write_paused = False
        self._calls: dict[str, int] = {}
        self._bogus = BOGUS_LIMIT
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self._mail_limit = COMMAND_LIMIT

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self._peer_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        self.session = Session(peer)
        if not self.gate.admit(self._peer_ip):
            self._closed = True
            transport.write(TOO_MANY_SESSIONS.encode() + b"\r\n")
            transport.close()
            return
        self._admitted = True
        self.gate.sessions.add(self)
        loop = self._loop = asyncio.get_running_loop()
        settings = self.settings
        self._last_active = loop.time()
        self._idle_timer = loop.call_later(settings.idle_timeout, self._check_idle)
        self._session_timer = loop.call_later(settings.session_timeout, self._session_expired)
        transport.write(settings.greeting)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for timer in (self._idle_timer, self._session_timer):
            if timer is not None:
                timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._admitted:
            self._admitted = False
            self.gate.release(self._peer_ip)
            self.gate.sessions.discard(self)
            if self.session is not None:
                self.handler.forget(self.session)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._scanner is not None:
            try:
                self._feed_data(data)
            except Exception as error:  # our fault while reading the data: 451, then close
                # (what is still on its way of the message must not be read as commands)
                self._scanner = None
                self._new_envelope()
                self._reply(self._fault(error))
                self._close_after_replies()
                return
        else:
            self._buf += data
        if self._task is None:
            self._process()
        elif len(self._buf) > BUSY_BUFFER_LIMIT:
            self._update_reading()

    def eof_received(self) -> bool | None:
        return None  # close: a client that stops sending gets no more replies (as aiosmtpd)

    def pause_writing(self) -> None:
        # The client does not read our replies: stop reading its commands until it does.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- for GatewayServer ------------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        """A MAIL transaction is under way (MAIL accepted, not yet ended by DATA or RSET)."""
        return self.envelope.mail_from is not None

    def shutdown(self) -> None:
        """Tell a session still open at shutdown to come back later, then close it (once:
        ``stop`` may see the session again before its connection is gone)."""
        if self._told_to_leave:
            return
        self._told_to_leave = True
        self._say_and_close(SHUTTING_DOWN)

    # -- timers -----------------------------------------------------------------------------------
    def _check_idle(self) -> None:
        loop = self._loop
        assert loop is not None
        idle = self.settings.idle_timeout
        left = self._last_active + idle - loop.time()
        if self._task is not None and not self._handshaking:
            left = idle  # we are working, not the client idling
        if left > 0:
            self._idle_timer = loop.call_later(left, self._check_idle)
            return
        # RFC 5321 section 3.8: a server that closes the channel on its own SHOULD send 421.
        self._say_and_close(IDLE_TIMEOUT)

    def _session_expired(self) -> None:
        self._say_and_close(SESSION_TOO_LONG)

    def _say_and_close(self, reply: str) -> None:
        transport = self.transport
        if transport is None or self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if not self._handshaking and not transport.is_closing():
            self._flush()
            with contextlib.suppress(Exception):  # the peer may already be gone
                transport.write(reply.encode() + b"\r\n")
        transport.close()

    # -- reading ----------------------------------------------------------------------------------
    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self._closed or self._handshaking:
            return
        pause = self._write_paused or (
            self._task is not None and len(self._buf) > BUSY_BUFFER_LIMIT
        )
        if pause != self._read_paused:
            self._read_paused = pause
            with contextlib.suppress(Exception):
                if pause:
                    transport.pause_reading()
                else:
                    transport.resume_reading()

    def _process(self) -> None:
        """Serve every complete line in the buffer, then write the replies in one write."""
        buf = self._buf
        while self._task is None and not self._closed and self._scanner is None and buf:
            if self._overlong is not None:
                # Inside a line over the limit: drop it up to its end, then say so.
                end = buf.find(b"\n")
                if end < 0:
                    buf.clear()
                    break
                del buf[: end + 1]
                reply, self._overlong = self._overlong, None
                self._reply(reply)
                continue
            end = buf.find(b"\n")
            if end < 0 or end > LINE_LIMIT:
                # aiosmtpd's stream limit: a line whose LF is not within LINE_LIMIT + 1 bytes.
                if end >= 0 or len(buf) > LINE_LIMIT:
                    self._overlong = (
                        AUTH_LINE_TOO_LONG
                        if self._line_handler is not None
                        else "500 Command line too long"
                    )
                    if self._line_handler is not None:
                        self._line_handler = None
                    continue
                break
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            if self._line_handler is not None:
                line_handler, self._line_handler = self._line_handler, None
                self._guarded(line_handler, line)
            else:
                self._command(line)
        self._flush()
        self._update_reading()

    def _feed_data(self, chunk: bytes) -> None:
        scanner = self._scanner
        assert scanner is not None
        if self._loop is not None:
            self._last_active = self._loop.time()
        if not scanner.feed(chunk):
            return
        self._scanner = None
        self._buf += scanner.rest  # commands pipelined after the final "." (buf was empty)
        if scanner.state is not DataState.NOMINAL:
            too_long = scanner.state is DataState.TOO_LONG
            self._new_envelope()
            self._reply(TOO_LONG_REPLY if too_long else TOO_MUCH_REPLY)
            return
        content = scanner.content()
        envelope = self.envelope
        envelope.content = envelope.original_content = content
        assert self.session is not None
        self._wait_for(self.handler.handle_DATA(self, self.session, envelope), end_of_data=True)

    # -- writing ----------------------------------------------------------------------------------
    def _reply(self, text: str) -> None:
        self._out.append((text + "\r\n").encode("utf-8", "replace"))

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_after_replies(self) -> None:
        self._closed = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # -- waiting ----------------------------------------------------------------------------------
    def _wait_for(self, work: Awaitable[str], *, end_of_data: bool = False) -> None:
        """Answer with what ``work`` returns; nothing else is served meanwhile."""
        self._flush()  # the replies before it go out now (the 354, pipelined RCPTs...)
        self._ends_transaction = end_of_data
        # The handler's coroutine is the task itself (no wrapper): cancelled before it ran,
        # it is closed, never left "never awaited".
        task = self._task = asyncio.ensure_future(work)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[str]) -> None:
        if task.cancelled() or task is not self._task:
            return  # the connection is gone
        error = task.exception()
        if error is None:
            reply = task.result()
        else:
            reply = self._fault(error) if isinstance(error, Exception) else FALLBACK_TEMPFAIL
        if self._ends_transaction:
            self._new_envelope()  # RFC 5321 4.1.1.4: the transaction ends with the data
        self._reply(reply)
        self._resume()

    def _resume(self) -> None:
        self._task = None
        if self._closed:
            return
        self._process()

    def _fault(self, error: Exception) -> str:
        try:
            return self.handler.handle_exception(error)
        except Exception:
            log.exception("handle_exception failed")
            return FALLBACK_TEMPFAIL

    def _guarded(self, step: Callable[[bytes], None], line: bytes) -> None:
        try:
            step(line)
        except Exception as error:
            self._reply(self._fault(error))

    # -- commands ---------------------------------------------------------------------------------
    def _command(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r\n")
        if not line:
            self._reply("500 Error: bad syntax")
            return
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            self._reply("500 Error: bad syntax")
            return
        # The argument keeps non-UTF-8 bytes recoverable (aiosmtpd: SMTPUTF8 on).
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape") if arg_bytes else None
        session = self.session
        assert session is not None
        limit = self._mail_limit if command == "MAIL" and session.extended_smtp else COMMAND_LIMIT
        if len(line) > limit:
            self._reply("500 Command line too long")
            return
        settings = self.settings
        if (
            settings.require_starttls
            and not self.tls_active
            and command not in ALLOWED_BEFORE_STARTTLS
        ):
            self._reply("530 Must issue a STARTTLS command first")  # RFC 3207 section 4
            return
        used = self._calls.get(command, 0)
        if used >= TRANSACTION_CALL_LIMITS.get(command, settings.max_commands):
            log.warning("%r over limit for %s", session.peer, command)
            self._reply(f"421 4.7.0 {command} sent too many times")
            self._close_after_replies()
            return
        self._calls[command] = used + 1
        method = _COMMANDS.get(command)
        if method is None:
            log.warning("%r unrecognised: %s", session.peer, command)
            self._bogus -= 1
            if self._bogus < 1:
                log.warning("%r too many bogus commands", session.peer)
                self._reply("502 5.5.1 Too many unrecognized commands, goodbye.")
                self._close_after_replies()
                return
            self._reply(f'500 Error: command "{command}" not recognized')
            return
        assert self._loop is not None
        self._last_active = self._loop.time()
        try:
            method(self, arg)
        except Exception as error:
            self._reply(self._fault(error))

    def _helo_needed(self, helo: str = "HELO") -> bool:
        assert self.session is not None
        if not self.session.host_name:
            self._reply(f"503 Error: send {helo} first")
            return True
        return False

    def _auth_needed(self) -> bool:
        assert self.session is not None
        if self.settings.auth_required and not self.session.authenticated:
            self._reply("530 5.7.0 Authentication required")
            return True
        return False

    def _new_envelope(self) -> None:
        self.envelope = Envelope()

    def smtp_HELO(self, arg: str | None) -> None:  # noqa: N802 -- SMTP command names
        if not arg:
            self._reply("501 Syntax: HELO hostname")
            return
        assert self.session is not None
        self._new_envelope()
        self.session.extended_smtp = False
        self.session.host_name = arg
        self._reply(f"250 {self.settings.hostname}")

    def smtp_EHLO(self, arg: str | None) -> None:  # noqa: N802
        if not arg:
            self._reply("501 Syntax: EHLO hostname")
            return
        session = self.session
        assert session is not None
        self._new_envelope()
        session.extended_smtp = True
        self._mail_limit = COMMAND_LIMIT + MAIL_EXTENSION_BYTES
        lines = self.handler.handle_EHLO(
            self, session, self.envelope, arg, self.settings.ehlo_lines(self.tls_active)
        )
        for line in lines:
            self._reply(line)

    def smtp_NOOP(self, arg: str | None) -> None:  # noqa: N802
        self._reply("250 OK")

    def smtp_QUIT(self, arg: str | None) -> None:  # noqa: N802
        if arg:
            self._reply("501 Syntax: QUIT")
            return
        self._reply("221 Bye")
        self._close_after_replies()

    def smtp_RSET(self, arg: str | None) -> None:  # noqa: N802
        if arg:
            self._reply("501 Syntax: RSET")
            return
        self._new_envelope()
        self._reply("250 OK")

    def smtp_EXPN(self, arg: str | None) -> None:  # noqa: N802
        self._reply("502 EXPN not implemented")

    def smtp_HELP(self, arg: str | None) -> None:  # noqa: N802
        if self._auth_needed():
            return
        code = 250
        if arg:
            name = arg.upper()
            texts = _HELP.get(name)
            if texts is not None and (name != "STARTTLS" or self.settings.tls_context):
                assert self.session is not None
                text, extended = texts
                suffix = extended if self.session.extended_smtp else ""
                self._reply(f"250 Syntax: {text}{suffix}")
                return
            code = 501
        self._reply(f"{code} Supported commands: {self.settings.help_commands()}")

    def smtp_VRFY(self, arg: str | None) -> None:  # noqa: N802
        if self._auth_needed():
            return
        if not arg:
            self._reply("501 Syntax: VRFY <address>")
            return
        address, _params = parse_path(arg)
        if address is None:
            self._reply("502 Could not VRFY " + arg)
        else:
            self._reply("252 Cannot VRFY user, but will accept message and attempt delivery")

    def _syntax(self, usage: str) -> str:
        """aiosmtpd's 501 for MAIL/RCPT: parameters are mentioned after EHLO only."""
        assert self.session is not None
        suffix = " [SP <mail-parameters>]" if self.session.extended_smtp else ""
        return f"501 Syntax: {usage}{suffix}"

    def _path_argument(
        self, keyword: str, arg: str | None, syntax: str
    ) -> tuple[str, list[str]] | None:
        """MAIL's ``FROM:<path> params`` or RCPT's ``TO:<path> params``: the address and the
        upper-cased parameters, or None after replying why not (parameters only after EHLO)."""
        assert self.session is not None
        path = _strip_keyword(keyword, arg) if arg is not None else None
        if path is None:
            self._reply(syntax)
            return None
        address, rest = parse_path(path)
        if address is None:
            self._reply("553 5.1.3 Error: malformed address")
            return None
        if not address or (not self.session.extended_smtp and rest):
            self._reply(syntax)
            return None
        return address, (rest or "").upper().split()

    def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        if self._helo_needed() or self._auth_needed():
            return
        session = self.session
        assert session is not None
        syntax = self._syntax("MAIL FROM: <address>")
        parsed = self._path_argument("FROM:", arg, syntax)
        if parsed is None:
            return
        address, options = parsed
        envelope = self.envelope
        if envelope.mail_from:
            self._reply("503 Error: nested MAIL command")
            return
        refusal = self._mail_params(options, syntax)
        if refusal:
            self._reply(refusal)
            return
        status = self.handler.handle_MAIL(self, session, envelope, address, options)
        if isinstance(status, str):
            self._reply(status)
        else:
            self._wait_for(status)

    def _mail_params(self, options: list[str], syntax: str) -> str | None:
        """The refusal of MAIL's parameters (RFC 1869 syntax; BODY RFC 6152, SMTPUTF8
        RFC 6531, SIZE RFC 1870), in aiosmtpd's order; None when they are fine."""
        params = parse_params(options)
        if params is None:
            return syntax
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            return "501 Error: BODY can only be one of 7BIT, 8BITMIME"
        smtputf8 = params.pop("SMTPUTF8", False)
        if not isinstance(smtputf8, bool):
            return "501 Error: SMTPUTF8 takes no arguments"
        self.envelope.smtp_utf8 = smtputf8
        size = params.pop("SIZE", None)
        if size:
            if isinstance(size, bool) or not (size.isascii() and size.isdigit()):
                return syntax
            if int(size) > self.settings.data_size_limit:
                return "552 Error: message size exceeds fixed maximum message size"
        if params:
            return "555 MAIL FROM parameters not recognized or not implemented"
        return None

    def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        if self._helo_needed() or self._auth_needed():
            return
        envelope = self.envelope
        if not envelope.mail_from:
            self._reply("503 Error: need MAIL command")
            return
        session = self.session
        assert session is not None
        syntax = self._syntax("RCPT TO: <address>")
        parsed = self._path_argument("TO:", arg, syntax)
        if parsed is None:
            return
        address, options = parsed
        params = parse_params(options)
        if params is None:
            self._reply(syntax)
            return
        if params:  # no RCPT parameter is supported (aiosmtpd)
            self._reply("555 RCPT TO parameters not recognized or not implemented")
            return
        self._reply(self.handler.handle_RCPT(self, session, envelope, address, options))

    def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802
        if self._helo_needed() or self._auth_needed():
            return
        if not self.envelope.rcpt_tos:
            self._reply("503 Error: need RCPT command")
            return
        if arg:
            self._reply("501 Syntax: DATA")
            return
        self._reply("354 End data with <CR><LF>.<CR><LF>")
        self._scanner = DataScanner(self.settings.data_size_limit, LINE_LIMIT)
        rest = bytes(self._buf)  # message data pipelined behind DATA (a client error, RFC 2920)
        self._buf.clear()
        if rest:
            self._feed_data(rest)

    # -- STARTTLS (RFC 3207) ----------------------------------------------------------------------
    def smtp_STARTTLS(self, arg: str | None) -> None:  # noqa: N802
        if arg:
            self._reply("501 Syntax: STARTTLS")
            return
        context = self.settings.tls_context
        if context is None:
            self._reply("454 TLS not available")
            return
        if self.tls_active:
            self._reply(TLS_ACTIVE)
            return
        self._reply("220 Ready to start TLS")
        self._flush()
        # RFC 3207 section 4.2: plain text pipelined behind STARTTLS is discarded, and no more
        # is read until the handshake owns the socket.
        self._buf.clear()
        transport = self.transport
        assert transport is not None
        transport.pause_reading()
        self._handshaking = True
        self._task = asyncio.ensure_future(self._start_tls(transport, context))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(transport, self, context, server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client's handshake failed; start_tls closed the socket
            log.info("%r TLS handshake failed: %s", self.session.peer if self.session else "?", exc)
            self._closed = True
            transport.abort()
            return
        self._handshaking = False
        self._read_paused = False
        if tls_transport is None or self._closed:
            return
        self.transport = tls_transport
        self.tls_active = True
        try:
            old = self.session
            if old is not None:
                self.handler.forget(old)
            # A new session: the client must say EHLO again; nothing from before TLS carries
            # over.
            session = self.session = Session(tls_transport.get_extra_info("peername"))
            session.ssl = {
                name: tls_transport.get_extra_info(name)
                for name in ("ssl_object", "cipher", "peercert", "compression")
            }
            self._new_envelope()
        except Exception:
            # Our fault, not the client's: say so (a temporary failure) and end the session;
            # left as it was, the session would serve nothing until its time limit.
            log.exception("session setup after STARTTLS failed")
            self._task = None
            self._say_and_close(SETUP_FAILED)
            return
        self._resume()

    # -- AUTH (RFC 4954) --------------------------------------------------------------------------
    def smtp_AUTH(self, arg: str | None) -> None:  # noqa: N802
        if self._helo_needed("EHLO"):
            return
        session = self.session
        assert session is not None
        if not session.extended_smtp:
            self._reply("500 Error: command 'AUTH' not recognized")
            return
        if not self.tls_active:
            self._reply("538 5.7.11 Encryption required for requested authentication mechanism")
            return
        if session.authenticated:
            self._reply("503 Already authenticated")
            return
        if not arg:
            self._reply("501 Not enough value")
            return
        args = arg.split()
        if len(args) > 2:
            self._reply("501 Too many values")
            return
        if args[0] not in ("LOGIN", "PLAIN"):
            self._reply("504 5.5.4 Unrecognized authentication type")
            return
        status = self.handler.handle_AUTH(self, session, self.envelope, args)
        if status is not None:
            self._reply(status)
            return
        if args[0] == "PLAIN":
            self._auth_plain(args)
        else:
            self._auth_login(args)

    def _challenge(self, challenge: str, then: Callable[[bytes], None]) -> None:
        self._reply(challenge)
        self._line_handler = lambda line: self._response(line, then)

    def _response(self, line: bytes, then: Callable[[bytes], None]) -> None:
        blob = line.strip()
        if blob == b"*":  # RFC 4954 section 4: the client cancels
            self._reply("501 5.7.0 Auth aborted")
            return
        try:
            decoded = b64decode(blob, validate=True)
        except binascii.Error:
            self._reply("501 5.5.2 Can't decode base64")
            return
        then(decoded)

    @staticmethod
    def _initial(arg: str) -> bytes | None:
        try:
            return b64decode(arg.encode(), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None

    def _auth_plain(self, args: list[str]) -> None:
        if len(args) == 1:
            self._challenge("334 ", self._plain_credentials)
            return
        decoded = self._initial(args[1])
        if decoded is None:
            self._reply("501 5.5.2 Can't decode base64")
            return
        self._plain_credentials(decoded)

    def _plain_credentials(self, decoded: bytes) -> None:
        # RFC 4616: [authzid] NUL authcid NUL passwd; the authorisation identity is ignored.
        parts = decoded.split(b"\x00")
        if len(parts) != 3:
            self._reply("501 5.5.2 Can't split auth value")
            return
        self._authenticate("PLAIN", LoginPassword(parts[1], parts[2]))

    def _auth_login(self, args: list[str]) -> None:
        if len(args) == 1:
            self._challenge(LOGIN_USER_CHALLENGE, self._login_user)
            return
        login = self._initial(args[1])
        if login is None:
            self._reply("501 5.5.2 Can't decode base64")
            return
        self._login_user(login)

    def _login_user(self, login: bytes) -> None:
        self._challenge(
            LOGIN_PASSWORD_CHALLENGE,
            lambda password: self._authenticate("LOGIN", LoginPassword(login, password)),
        )

    def _authenticate(self, mechanism: str, credentials: LoginPassword) -> None:
        authenticator = self.settings.authenticator
        session = self.session
        assert session is not None
        if authenticator is None:
            self._reply(AUTH_INVALID)
            return
        # Off the event loop: a password hash takes tens of milliseconds.
        self._wait_for(self._checked(authenticator, session, mechanism, credentials))

    async def _checked(
        self,
        authenticator: Authenticator,
        session: Session,
        mechanism: str,
        credentials: LoginPassword,
    ) -> str:
        result = await asyncio.to_thread(authenticator, session, mechanism, credentials)
        if result.success:
            session.authenticated = True
            session.auth_data = result.auth_data or credentials
            return result.message or AUTH_SUCCESS
        return result.message or AUTH_INVALID


_COMMANDS: dict[str, Callable[[SmtpSession, str | None], None]] = {
    name[5:]: method
    for name, method in vars(SmtpSession).items()
    if name.startswith("smtp_") and callable(method)
}
