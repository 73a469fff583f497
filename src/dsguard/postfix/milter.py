"""Reject Direct Send and content analysis inside Postfix (or Sendmail): a milter.

Postfix (``smtpd_milters = inet:127.0.0.1:10041``) opens one connection per SMTP session and
speaks the milter protocol (``postfix.milter_protocol``). Per transaction:

- MAIL: attribution from what Postfix knows: ``{auth_authen}`` (the SASL user), the client
  address (``{client_addr}``, else the CONNECT packet), ``{cert_subject}`` (the client
  certificate's CN; Postfix sends it only when the certificate verified) -- the same
  connectors and rule as the gateway and the policy server.
- RCPT: the P1 rule; when enforced, Microsoft's ``550 5.7.68`` text via SMFIR_REPLYCODE (with
  ``check_policy_service`` in front, the policy server has already refused these).
- End of message: the message is rebuilt from the header and body packets and judged exactly
  like the gateway judges it (``policy.judge``: our forged headers dropped, live SPF/DKIM/DMARC
  through ``[gateway] dns_servers`` when set, the engine, P2). Then: P2 refusal (5.7.68),
  reject (5.7.1) for a ``reject`` action, or accept -- after deleting incoming headers that
  claim to be ours (SMFIR_CHGHEADER, empty value), inserting ours at the top (SMFIR_INSHEADER
  0: Authentication-Results with ``[gateway] hostname`` as authserv-id, ``X-Dsguard-Verdict``,
  ``-Findings``, ``-Audit``) and, for ``quarantine``, putting the message on hold
  (SMFIR_QUARANTINE: Postfix's hold queue; ``postqueue -j`` lists it, ``postsuper -H ID``
  releases it). Audit mode refuses nothing and stamps what it would have refused.
- Every decision (accepted mail too, as in the gateway) is one event in the shared store
  (front door ``milter``, queue id = Postfix's) and one JSON log line.

Relay control and SASL sender ownership stay Postfix's job (``reject_unauth_destination``,
``smtpd_sender_login_maps``).

SECURITY: headers, body and envelope come from SMTP clients. Per message we keep at most
``[limits] max_message_bytes`` and ``max_headers`` + 1 header fields (then stop collecting:
the verdict carries LIMIT_MESSAGE_SIZE / LIMIT_HEADERS and P2 is not enforced on a message we
could not read whole); more than ``MAX_OWN_FIELD_EDITS`` forged dsguard fields tempfail the
message rather than make Postfix rewrite its queue file thousands of times. A malformed packet
closes that connection only (Postfix then applies ``milter_default_action``); an idle
connection is closed after ``IDLE_TIMEOUT``; connections are capped at ``MAX_CONNECTIONS``.
Any internal fault answers tempfail, never a permanent reject. The analysis runs on the event
loop only when nothing in it can block (every DNS answer cached, no attachment for the engine's
decoder child, at most ``policy.judge.INLINE_MAX_BYTES``); otherwise in a worker thread, and meanwhile the
milter reads nothing more from that connection and sends SMFIR_PROGRESS so Postfix's
``milter_content_timeout`` does not fire.

I/O: each connection is a plain :class:`asyncio.Protocol`; a read is split into packets that
are handled synchronously, and the replies they produce go out in one write, before the
events and log lines of the decisions they carry are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import socket
import stat
import threading
import time
from asyncio import trsock
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsguard.auth.resolver import Resolver
from dsguard.config import Config
from dsguard.engine import Engine
from dsguard.gateway.headers import fold, is_own_field, verdict_fields
from dsguard.intel.geo import country_of
from dsguard.mail.addresses import domain_of
from dsguard.mail.message import ParsedMessage
from dsguard.model import (
    Action,
    Attribution,
    Envelope,
    EnvelopeOrigin,
    RdsDecision,
    TlsInfo,
    Verdict,
)
from dsguard.policy.attribution import attribute
from dsguard.policy.judge import (
    MALICIOUS_REJECT,
    TEMPFAIL,
    Judgement,
    judge_message,
    judge_on_loop,
)
from dsguard.policy.rds import decide_p1
from dsguard.postfix import milter_protocol as mp
from dsguard.store.db import Store
from dsguard.store.events import EventWriter, decision_event, decision_log_record

log = logging.getLogger("dsguard.milter")

IDLE_TIMEOUT = 1800.0  # seconds without a packet: Postfix's own session limits are shorter
PROGRESS_INTERVAL = 10.0  # well inside Postfix's milter_content_timeout (300 s)
MAX_CONNECTIONS = 1000  # one per SMTP session; Postfix's default smtpd limit is 100
MAX_OWN_FIELD_EDITS = 100
ANALYSTS = 4  # threads for the end-of-message analysis (DNS lookups and the engine block)
TOO_MANY_FORGED = "451 4.7.0 Too many header fields claiming to be ours, try again later"

WANTED_ACTIONS = mp.SMFIF_ADDHDRS | mp.SMFIF_CHGHDRS | mp.SMFIF_QUARANTINE | mp.SMFIF_SETSYMLIST
# Events we do not need (unknown commands) and replies we never send (we always continue
# after CONNECT, HELO, MAIL, DATA, headers, end of headers and body chunks): fewer round trips
# per message, for Postfix as much as for us (each is a write, a wake-up and a read on both
# sides). Postfix (milter8.c, milter8_event) does not even flush what it wrote for an event
# without a reply: the MAIL macros and MAIL go out with the first RCPT, the header, EOH and
# body packets with the end of message, each batch in one write. What is left: one reply per
# RCPT (P1 refuses there) and the end of message.
# Without a reply to DATA, the small DATA packet Postfix's smtpd writes last before handing the
# socket to its cleanup process sits unacknowledged when our kernel delays its ACK, and
# Nagle's algorithm on Postfix's side then holds the header packets cleanup writes next until
# that delayed ACK: 40 ms per message on Linux. So a connection that cannot send its ACKs at
# once (TCP_QUICKACK, Linux; see MilterSession._ack_now) still answers DATA (NO_QUICKACK_REPLIES).
# Header values keep their leading space so the rebuilt message is the received one, byte
# for byte (DKIM "simple" canonicalisation).
WANTED_PROTOCOL = (
    mp.SMFIP_NOUNKNOWN
    | mp.SMFIP_NR_CONN
    | mp.SMFIP_NR_HELO
    | mp.SMFIP_NR_MAIL
    | mp.SMFIP_NR_DATA
    | mp.SMFIP_NR_UNKN
    | mp.SMFIP_NR_HDR
    | mp.SMFIP_NR_EOH
    | mp.SMFIP_NR_BODY
    | mp.SMFIP_HDR_LEADSPC
)
NO_QUICKACK_REPLIES = mp.SMFIP_NR_DATA  # replies we keep when ACKs cannot be sent at once
_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only; 0: not here
# The macros we read, per stage (Postfix then sends these instead of milter_*_macros). Every
# stage has a list, also those we read nothing from (DATA, and end of headers, whose macros
# Postfix sends before every header field): an empty list would mean "the global
# milter_*_macros" (milter.c, MILTER_MACRO_EVAL), which an admin may have made long for
# another milter. A macro packet goes out before every event in any case (milter8.c,
# milter8_event sends one whenever the list exists, even empty), so "i" (the queue id, always
# set) is as small as it gets.
MACRO_LISTS = {
    mp.SMFIM_CONNECT: "j {client_addr} {client_name}",
    mp.SMFIM_HELO: "{tls_version} {cipher} {cert_subject} {cert_issuer}",
    mp.SMFIM_ENVFROM: "i {auth_type} {auth_authen}",
    mp.SMFIM_ENVRCPT: "i",
    mp.SMFIM_DATA: "i",
    mp.SMFIM_EOH: "i",
    mp.SMFIM_EOM: "i",
}
_NO_REPLY_FLAG = {
    mp.SMFIC_CONNECT[0]: mp.SMFIP_NR_CONN,
    mp.SMFIC_HELO[0]: mp.SMFIP_NR_HELO,
    mp.SMFIC_MAIL[0]: mp.SMFIP_NR_MAIL,
    mp.SMFIC_RCPT[0]: mp.SMFIP_NR_RCPT,
    mp.SMFIC_DATA[0]: mp.SMFIP_NR_DATA,
    mp.SMFIC_UNKNOWN[0]: mp.SMFIP_NR_UNKN,
    mp.SMFIC_HEADER[0]: mp.SMFIP_NR_HDR,
    mp.SMFIC_EOH[0]: mp.SMFIP_NR_EOH,
    mp.SMFIC_BODY[0]: mp.SMFIP_NR_BODY,
}
# Where a macro is looked up: the latest stage first.
_MACRO_STAGES = tuple(c[0] for c in (b"E", b"B", b"N", b"L", b"T", b"R", b"M", b"H", b"C"))
_TRANSACTION_STAGES = tuple(c[0] for c in (b"M", b"R", b"T", b"L", b"N", b"B", b"E"))
_OPTNEG = mp.SMFIC_OPTNEG[0]
_QUIT = mp.SMFIC_QUIT[0]
_BODYEOB = mp.SMFIC_BODYEOB[0]
# One encoder for every decision line (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


@functools.lru_cache(maxsize=1024)
def _insert_on_top(name: str, value: str, leading_space: bool) -> bytes:
    """SMFIR_INSHEADER at 0 for one of our fields, folded. Remembered: the same few values
    (a verdict line, an Authentication-Results for a sending domain) recur message after
    message."""
    folded = fold(f"{name}: {value}")[len(name) + 1 :]
    return mp.insert_header(0, name, mp.header_value(folded, leading_space=leading_space))


@dataclass(slots=True)
class MilterRuntime:
    """What sessions work with; replaced as a whole on reload (SIGHUP)."""

    config: Config
    engine: Engine
    resolver: Resolver | None
    events: EventWriter
    # Derived once per configuration, not per header packet.
    own_prefix: bytes = b""  # b"x-dsguard-": a field name starting so claims to be ours
    own_by_name: bool = True  # the prefix has no ":", so the name alone decides (see header)

    def __post_init__(self) -> None:
        prefix = self.config.gateway.header_prefix.lower().encode() + b"-"
        self.own_prefix = prefix
        self.own_by_name = b":" not in prefix


@dataclass(slots=True)
class Transaction:
    """One MAIL..end-of-message transaction."""

    mail_from: str
    attribution: Attribution
    # The envelope as of MAIL: what the connection and the MAIL stage's macros say. Later
    # stages send only the queue id (MACRO_LISTS), so the end of message (and a refusal at
    # RCPT) uses this one with the recipients filled in instead of looking the macros up again.
    envelope: Envelope
    rcpts: list[str] = field(default_factory=list)
    p1: RdsDecision | None = None  # decided at the first RCPT (the same for every recipient)
    p1_runtime: MilterRuntime | None = None  # ... with this configuration
    p1_outcome: str = "unknown"
    refused_recorded: bool = False
    audit_notes: list[str] = field(default_factory=list)
    # b"Name:value" as received, folded lines rejoined with CRLF (Postfix sends "\n").
    headers: list[bytes] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    collected: int = 0  # bytes kept (headers + body)
    size: int = 0  # bytes seen
    truncated: bool = False
    field_counts: dict[bytes, int] = field(default_factory=dict)  # lower-case name -> count
    own_fields: list[tuple[str, int]] = field(default_factory=list)  # (name, 1-based index)
    forged_overflow: bool = False
    fault: bool = False

    def message(self) -> bytes:
        # Postfix sends the body with CRLF line ends, without the empty line that separates it
        # from the header (milter8.c, milter8_body); header() already restored the CRLFs.
        if not self.headers:
            return b"\r\n" + self.body
        return b"".join((b"\r\n".join(self.headers), b"\r\n\r\n", self.body))


class Analysts:
    """Threads that run the end-of-message analysis and hand each result back to the event
    loop: live DNS and the engine's attachment decoder block, so they never run on the loop.
    Lighter than ``run_in_executor`` (no pair of chained futures per message): one queue put,
    one ``call_soon_threadsafe`` back."""

    def __init__(self, threads: int = ANALYSTS) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Any], Callable[[Any, BaseException | None], None], asyncio.AbstractEventLoop]
            | None
        ] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"dsguard-analyst-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, work: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
    ) -> None:
        """Run ``work()`` in a thread, then ``done(result, None)`` (or ``done(None, exc)``)
        in the calling thread's event loop."""
        self._jobs.put((work, done, asyncio.get_running_loop()))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, done, loop = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:  # handed to the loop, which answers tempfail
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(done, result, error)
            del job, work, done, result, error

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)


class MilterSession(asyncio.Protocol):
    """One MTA connection (one SMTP session, or several after SMFIC_QUIT_NC).

    A plain :class:`asyncio.Protocol`: each read is split into packets and handled at once,
    synchronously, and the replies it produced go out in one write. Only an end of message
    analysed in a thread waits; reading pauses until it is answered.
    """

    def __init__(self, server: MilterServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.negotiated = False
        self.protocol = 0
        self._replies: frozenset[int] = frozenset(_NO_REPLY_FLAG)  # events answered (negotiate)
        self.leading_space = False
        self._framer = mp.Framer()
        self._out: list[bytes] = []
        self._after: list[Callable[[], None]] = []  # records to make once _out is written
        self._write_paused = False
        self._time: Callable[[], float] = time.monotonic  # the loop's clock once connected
        self._busy = False  # an end of message is being analysed
        self._closed = False
        self._counted = False
        self._last_packet = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._progress: asyncio.TimerHandle | None = None
        self._ack_sock: trsock.TransportSocket | None = None  # see _ack_now
        self._unix = False  # a unix-domain connection (see connection_made)
        self._handlers: dict[int, Callable[[bytes], bool]] = {
            mp.SMFIC_MACRO[0]: self._on_macro,
            mp.SMFIC_CONNECT[0]: self._on_connect,
            mp.SMFIC_HELO[0]: self._on_helo,
            mp.SMFIC_MAIL[0]: self._on_mail,
            mp.SMFIC_RCPT[0]: self._on_rcpt,
            mp.SMFIC_HEADER[0]: self._on_header,
            mp.SMFIC_BODY[0]: self._on_body,
            mp.SMFIC_BODYEOB[0]: self._on_eom,
            mp.SMFIC_ABORT[0]: self._on_abort,
            mp.SMFIC_QUIT_NC[0]: self._on_quit_nc,
            mp.SMFIC_DATA[0]: self._on_data,
            mp.SMFIC_EOH[0]: self._on_eoh,
            mp.SMFIC_UNKNOWN[0]: self._on_unknown,
        }
        self._reset_connection()

    def _reset_connection(self) -> None:
        # Macro packets as received, per stage, and parsed on first lookup.
        self._macro_raw: dict[int, bytes] = {}
        self._macro_values: dict[int, dict[str, str]] = {}
        self.client_ip: str | None = None
        self.helo: str | None = None
        self.txn: Transaction | None = None
        # An internal fault outside a transaction (CONNECT, HELO, macros, MAIL): what we know
        # about the session may be wrong, so its transactions are tempfailed, never judged.
        self.session_fault = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if server.connections >= MAX_CONNECTIONS:
            log.warning("milter: %d connections open, refusing another", server.connections)
            self._closed = True
            transport.close()
            return
        server.connections += 1
        self._counted = True
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._last_packet = loop.time()
        # One timer per connection, not one per packet: it fires every IDLE_TIMEOUT and
        # closes the connection when no packet came in that long.
        self._watchdog = loop.call_later(IDLE_TIMEOUT, self._check_idle)
        sock = transport.get_extra_info("socket")
        # A unix socket has no Nagle delay and no delayed ACK: the DATA reply is never needed.
        self._unix = sock is not None and sock.family == socket.AF_UNIX
        if _TCP_QUICKACK and sock is not None and sock.family in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                self._ack_sock = sock

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._progress is not None:
            self._progress.cancel()
        if self._counted:
            self._counted = False
            self.server.connections -= 1

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._framer.feed(data)
        self._last_packet = self._time()
        if not self._busy:
            self._process()

    def eof_received(self) -> bool | None:
        if not self._busy:
            problem = self._framer.end_of_stream()
            if problem is not None:
                self.malformed(problem)
        return None  # close the transport

    def pause_writing(self) -> None:
        # Postfix does not read our replies: stop reading its packets until it does.
        self._write_paused = True
        if self.transport is not None and not self._busy:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self._busy:
            self.transport.resume_reading()

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._last_packet + IDLE_TIMEOUT - loop.time()
        if left > 0:
            self._watchdog = loop.call_later(left, self._check_idle)
            return
        log.info("milter: connection idle for %.0f s, closing", IDLE_TIMEOUT)
        self._abort()

    def _abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        """Close after what is queued for Postfix has been written."""
        self._closed = True
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def _flush(self) -> None:
        """Write the queued replies in one write, then make the records of the decisions
        they carry: the reply first, the event and the log line after."""
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
        if self._after:
            after, self._after = self._after, []
            for record in after:
                try:
                    record()
                except Exception as exc:
                    # Logged, never answered: a second reply to the same event would put
                    # Postfix and us out of step.
                    log.error(
                        "milter: recording a decision failed: %s: %s", type(exc).__name__, exc
                    )

    def _process(self) -> None:
        """Handle every complete packet received, then send the replies in one write."""
        framer = self._framer
        handlers = self._handlers
        while not self._busy and not self._closed:
            packet = framer.next()
            if packet is None:
                break
            if isinstance(packet, mp.Malformed):
                self.malformed(packet)
                self._close()
                return
            # The events of a negotiated session straight to their handler (some 40 packets a
            # message); negotiation, QUIT and unknown commands through handle().
            command, data = packet
            handler = handlers.get(command) if self.negotiated else None
            if handler is None:
                ok = self.handle(command, data)
            else:
                try:
                    ok = handler(data)
                except Exception as exc:  # design contract: our fault is a temporary failure
                    ok = self._fault(command, exc)
            if not ok:
                self._close()
                return
        replied = bool(self._out)
        self._flush()
        if not replied and self._ack_sock is not None:
            self._ack_now()

    def _ack_now(self) -> None:
        """Acknowledge what we read at once, when we have no reply to carry the ACK.

        Linux delays the ACK of data it receives by up to 40 ms (and only "quick ACKs" a
        peer it does not think of as interactive); TCP_QUICKACK, set after a read, sends the
        pending ACK now (tcp(7); it does not stay set, hence once per read). Postfix needs it:
        with no reply to DATA (SMFIP_NR_DATA), the DATA packet its smtpd wrote is unacked when
        its cleanup process writes the message's header packets on the same socket, and
        Nagle's algorithm holds those until the ACK comes (milter8.c writes through a VSTREAM;
        Postfix does not set TCP_NODELAY on milter sockets)."""
        assert self._ack_sock is not None
        try:
            self._ack_sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            self._ack_sock = None

    # -- helpers ------------------------------------------------------------------------------
    @property
    def runtime(self) -> MilterRuntime:
        return self.server.runtime

    def macro(self, name: str) -> str | None:
        """The value of macro ``name`` from the latest stage that sent it."""
        raw_stages = self._macro_raw
        needle = name.encode("utf-8", "replace") + b"\0"
        for stage in _MACRO_STAGES:
            raw = raw_stages.get(stage)
            # A stage whose packet does not contain the name is skipped unparsed.
            if raw is None or needle not in raw:
                continue
            values = self._macro_values.get(stage)
            if values is None:
                values = self._macro_values[stage] = mp.parse_macros(raw)
            if name in values:
                return values[name]
        return None

    def expects_reply(self, command: int) -> bool:
        return command in self._replies

    def envelope(
        self, txn: Transaction | None, rcpts: tuple[str, ...] = (), *, mail_from: str | None = None
    ) -> Envelope:
        client_ip = self.client_ip
        tls_version = self.macro("{tls_version}")
        cert_name = (self.macro("{cert_subject}") or "").strip()
        tls = None
        if tls_version or cert_name:
            tls = TlsInfo(
                version=tls_version or None,
                cipher=self.macro("{cipher}") or None,
                verified_peer_names=(cert_name.lower(),) if cert_name else (),
            )
        return Envelope(
            origin=EnvelopeOrigin.SMTP,
            client_ip=client_ip,
            client_hostname=self.macro("{client_name}") or None,
            helo=self.helo,
            mail_from=txn.mail_from if txn else mail_from,
            rcpt_to=rcpts or (tuple(txn.rcpts) if txn else ()),
            tls=tls,
            auth_user=self.macro("{auth_authen}") or None,
            receiver=self.runtime.config.gateway.hostname,
            country=country_of(client_ip) if client_ip else None,
        )

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, command: int, data: bytes) -> bool:
        """Handle one packet; False when the connection must close."""
        if command == _OPTNEG:
            return self.negotiate(data)
        if not self.negotiated:
            log.warning("milter: %r before option negotiation; closing", bytes((command,)))
            return False
        if command == _QUIT:
            return False
        handler = self._handlers.get(command)
        if handler is None:
            return self.malformed(mp.Malformed(f"unknown command {bytes((command,))!r}"))
        try:
            return handler(data)
        except Exception as exc:  # design contract: our fault is a temporary failure
            return self._fault(command, exc)

    def _fault(self, command: int, exc: Exception) -> bool:
        """An internal error handling ``command``: tempfail, never a permanent reject."""
        log.error(
            "milter: internal error on %r: %s: %s", bytes((command,)), type(exc).__name__, exc
        )
        if self.txn is not None:
            self.txn.fault = True  # its end of message answers tempfail
        else:
            self.session_fault = True
        if command == _BODYEOB or self.expects_reply(command):
            self._out.append(mp.reply_code(TEMPFAIL))
        return True

    def malformed(self, problem: mp.Malformed) -> bool:
        log.warning("milter: malformed packet, closing the connection: %s", problem.reason)
        return False

    def _reply_continue(self, command: int) -> None:
        if command in self._replies:
            self._out.append(mp.CONTINUE)

    def _on_data(self, data: bytes) -> bool:
        self._reply_continue(mp.SMFIC_DATA[0])
        return True

    def _on_eoh(self, data: bytes) -> bool:
        self._reply_continue(mp.SMFIC_EOH[0])
        return True

    def _on_unknown(self, data: bytes) -> bool:
        self._reply_continue(mp.SMFIC_UNKNOWN[0])
        return True

    def _on_macro(self, data: bytes) -> bool:
        problem = mp.check_macros(data)
        if problem is not None:
            return self.malformed(problem)
        stage = data[0]
        self._macro_raw[stage] = data[1:]
        self._macro_values.pop(stage, None)
        return True

    def _on_connect(self, data: bytes) -> bool:
        conn = mp.decode_connect(data)
        if isinstance(conn, mp.Malformed):
            return self.malformed(conn)
        # {client_addr} is Postfix's RFC form ("IPv6:2001:db8::1" for IPv6).
        addr = (self.macro("{client_addr}") or conn.address).removeprefix("IPv6:")
        self.client_ip = addr or None
        self.helo, self.txn = None, None
        self._reply_continue(mp.SMFIC_CONNECT[0])
        return True

    def _on_helo(self, data: bytes) -> bool:
        parts = mp.split_strings(data, limit=1)
        if isinstance(parts, mp.Malformed):
            return self.malformed(parts)
        self.helo = mp.text(parts[0])[:255] if parts else ""
        self._reply_continue(mp.SMFIC_HELO[0])
        return True

    def _on_mail(self, data: bytes) -> bool:
        args = mp.decode_args(data)
        if isinstance(args, mp.Malformed):
            return self.malformed(args)
        self.mail(mp.unbracket(args[0]))
        return True

    def _on_rcpt(self, data: bytes) -> bool:
        args = mp.decode_args(data)
        if isinstance(args, mp.Malformed):
            return self.malformed(args)
        self.rcpt(mp.unbracket(args[0]))
        return True

    def _on_header(self, data: bytes) -> bool:
        header = mp.decode_header(data)
        if isinstance(header, mp.Malformed):
            return self.malformed(header)
        self.header(*header)
        self._reply_continue(mp.SMFIC_HEADER[0])
        return True

    def _on_body(self, data: bytes) -> bool:
        self.body(data)
        self._reply_continue(mp.SMFIC_BODY[0])
        return True

    def _on_eom(self, data: bytes) -> bool:
        self.body(data)  # Sendmail may send the last chunk with the EOB
        self.end_of_message()
        return True

    def _on_abort(self, data: bytes) -> bool:
        self.txn = None
        for stage in _TRANSACTION_STAGES:
            self._macro_raw.pop(stage, None)
            self._macro_values.pop(stage, None)
        return True

    def _on_quit_nc(self, data: bytes) -> bool:
        self._reset_connection()
        return True

    # -- negotiation ----------------------------------------------------------------------------
    def negotiate(self, data: bytes) -> bool:
        offer = mp.decode_optneg(data)
        if isinstance(offer, mp.Malformed):
            return self.malformed(offer)
        if offer.version < 2:
            return self.malformed(mp.Malformed(f"milter protocol version {offer.version}"))
        actions = WANTED_ACTIONS & offer.actions
        wanted = (
            WANTED_PROTOCOL
            if self._ack_sock is not None or self._unix
            else WANTED_PROTOCOL & ~NO_QUICKACK_REPLIES
        )
        self.protocol = wanted & offer.protocol
        self._replies = frozenset(c for c, flag in _NO_REPLY_FLAG.items() if not self.protocol & flag)
        self.leading_space = bool(self.protocol & mp.SMFIP_HDR_LEADSPC)
        macros = MACRO_LISTS if actions & mp.SMFIF_SETSYMLIST else None
        self.negotiated = True
        version = min(offer.version, mp.SMFI_VERSION)
        self._out.append(mp.optneg_reply(version, actions, self.protocol, macros))
        return True

    # -- envelope ---------------------------------------------------------------------------
    def mail(self, sender: str) -> None:
        env = self.envelope(None, mail_from=sender)
        attribution = attribute(env, self.runtime.config.connectors)
        self.txn = Transaction(mail_from=sender, attribution=attribution, envelope=env)
        self._reply_continue(mp.SMFIC_MAIL[0])

    def rcpt(self, recipient: str) -> None:
        txn = self.txn
        if txn is None or txn.fault or self.session_fault:
            # No transaction to judge (MAIL failed inside, or never came): never let a
            # message through unjudged.
            self._out.append(mp.reply_code(TEMPFAIL))
            return
        rt = self.runtime
        mode = rt.config.organization.reject_direct_send
        p1 = txn.p1
        if p1 is None or txn.p1_runtime is not rt:
            # P1 depends on the sender and the attribution only: the same for every RCPT.
            sender_domain = domain_of(txn.mail_from) or None
            p1 = txn.p1 = decide_p1(mode, rt.engine.accepted, txn.attribution, sender_domain)
            txn.p1_runtime = rt
        txn.p1_outcome = p1.outcome.value
        if p1.enforced:
            self._out.append(mp.reply_code(p1.reply))  # the reply first, the records after
            if not txn.refused_recorded:
                txn.refused_recorded = True
                reason = "P1 " + p1.reason

                def refused() -> None:
                    env = dataclasses.replace(txn.envelope, rcpt_to=(*txn.rcpts, recipient))
                    self.record(env, txn, p2="unknown", decision="refused", verdict=None)
                    self.log_decision(env, txn.attribution, "refused", reason=reason)

                self.after_reply(refused)
            return
        if p1.would_reject and mode == "audit":
            note = f"would refuse (P1): {p1.reason}"
            if note not in txn.audit_notes:
                txn.audit_notes.append(note)
        txn.rcpts.append(recipient)
        self._reply_continue(mp.SMFIC_RCPT[0])

    # -- content ----------------------------------------------------------------------------
    def header(self, name: bytes, value: bytes) -> None:
        txn = self.txn
        if txn is None:
            return
        raw = name + b":" + (value if self.leading_space else b" " + value)
        txn.size += len(raw) + 2
        # Postfix numbers fields per name, case-insensitively (ASCII): so do we.
        key = name.lower()
        index = txn.field_counts.get(key, 0) + 1
        txn.field_counts[key] = index
        rt = self.runtime
        # Only names with our prefix and Authentication-Results can be ours: the full check
        # (is_own_field, the authserv-id) runs for those alone.
        if (
            not rt.own_by_name
            or key.startswith(rt.own_prefix)
            or key == b"authentication-results"
        ):
            cfg = rt.config.gateway
            if is_own_field(raw.replace(b"\n", b" "), cfg.hostname, cfg.header_prefix):
                if len(txn.own_fields) < MAX_OWN_FIELD_EDITS:
                    txn.own_fields.append((mp.text(name), index))
                else:
                    txn.forged_overflow = True
        limits = rt.config.limits
        if (
            txn.truncated
            or len(txn.headers) > limits.max_headers
            or txn.collected + len(raw) > limits.max_message_bytes
        ):
            txn.truncated = True
            return
        # Postfix sends header values with "\n" between folded lines (milter8.c,
        # milter8_header: "Sendmail 8 sends multi-line headers as text separated by newline").
        txn.headers.append(
            raw if b"\n" not in raw else raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        )
        txn.collected += len(raw) + 2

    def body(self, chunk: bytes) -> None:
        txn = self.txn
        if txn is None or not chunk:
            return
        txn.size += len(chunk)
        room = self.runtime.config.limits.max_message_bytes - txn.collected
        if len(chunk) > room:
            txn.truncated = True
            chunk = chunk[: max(room, 0)]
        txn.body += chunk
        txn.collected += len(chunk)

    def end_of_message(self) -> None:
        txn, self.txn = self.txn, None
        if txn is None or txn.fault or self.session_fault:
            self._out.append(mp.reply_code(TEMPFAIL))
            return
        env = dataclasses.replace(
            txn.envelope,
            rcpt_to=tuple(txn.rcpts),
            receiver=self.runtime.config.gateway.hostname,
        )
        queue_id = self.macro("i") or None
        if txn.forged_overflow:
            self._out.append(mp.reply_code(TOO_MANY_FORGED))

            def tempfailed() -> None:
                self.record(
                    env, txn, p2="unknown", decision="tempfail", verdict=None, queue_id=queue_id
                )
                self.log_decision(env, txn.attribution, "tempfail", reason="too many forged fields")

            self.after_reply(tempfailed)
            return
        rt = self.runtime
        raw = txn.message()
        # On the loop when nothing in it can block: DNS from the cache only, no attachment for
        # the engine's decoder child. Else (rarely: a sender's first message, a TTL run out, an
        # attachment) the work is thrown away and done again in a thread.
        attempt = judge_on_loop(
            rt.engine, rt.resolver, rt.config, env, raw, truncated=txn.truncated, size=txn.size
        )
        if attempt is not None:
            self._answer(env, txn, queue_id, rt, attempt.judgement, attempt.error)
            return
        work = functools.partial(
            judge_message,
            rt.engine,
            rt.resolver,
            rt.config,
            env,
            raw,
            truncated=txn.truncated,
            size=txn.size,
        )

        def judged(result: Judgement | None, error: BaseException | None) -> None:
            self._analysed(env, txn, queue_id, rt, result, error)

        self.server.analysts.submit(work, judged)  # judged() runs in a later loop iteration
        # Nothing more comes from Postfix before our answer; should it, it waits unread
        # until the answer is out.
        self._busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._start_progress()

    def _start_progress(self) -> None:
        """Tell the MTA every PROGRESS_INTERVAL that we are still on it, so its
        milter_content_timeout does not fire while the analysis runs."""
        loop = asyncio.get_running_loop()

        def progress() -> None:
            if self._busy and not self._closed and self.transport is not None:
                self.transport.write(mp.PROGRESS)
                self._progress = loop.call_later(PROGRESS_INTERVAL, progress)

        self._progress = loop.call_later(PROGRESS_INTERVAL, progress)

    def _analysed(
        self,
        env: Envelope,
        txn: Transaction,
        queue_id: str | None,
        rt: MilterRuntime,
        result: Judgement | None,
        error: BaseException | None,
    ) -> None:
        """The analysis in a thread is done (back in the loop): answer, record, read on."""
        if self._progress is not None:
            self._progress.cancel()
            self._progress = None
        self._busy = False
        if self._closed:
            return  # Postfix gave up on this connection; nothing to answer
        self._answer(env, txn, queue_id, rt, result, error)
        self._flush()  # the reply first: the event and the log line after
        if self.transport is not None and not self._write_paused:
            self.transport.resume_reading()
        self._process()

    def _answer(
        self,
        env: Envelope,
        txn: Transaction,
        queue_id: str | None,
        rt: MilterRuntime,
        result: Judgement | None,
        error: BaseException | None,
    ) -> None:
        """Queue the answer to the end of message and the records to make once it is sent."""
        done: list[Callable[[], None]] = []
        try:
            if error is not None or result is None:
                raise error or RuntimeError("the analysis returned nothing")
            packets = self.verdict_packets(env, txn, result, queue_id, done, rt)
        except BaseException as exc:  # design contract: our fault is a temporary failure
            log.error("milter: internal error on %r: %s: %s", b"E", type(exc).__name__, exc)
            packets, done = [mp.reply_code(TEMPFAIL)], []
        self._out.extend(packets)
        self._after.extend(done)

    def after_reply(self, record: Callable[[], None]) -> None:
        """Record a decision once the reply queued for it is written (see :meth:`_flush`)."""
        self._after.append(record)

    def verdict_packets(
        self,
        env: Envelope,
        txn: Transaction,
        judged: Judgement,
        queue_id: str | None,
        done: list[Callable[[], None]],
        rt: MilterRuntime | None = None,
    ) -> list[bytes]:
        """The packets that answer the end of message; what to record once they are sent is
        appended to ``done``."""
        rt = rt or self.runtime
        verdict = judged.verdict
        notes = txn.audit_notes + list(judged.notes)
        msg = judged.msg

        def decide(decision: str, reason: str = "") -> None:
            done.append(functools.partial(record, decision, reason))

        def record(decision: str, reason: str) -> None:
            self.record(
                env,
                txn,
                p2=judged.p2_value,
                decision=decision,
                verdict=verdict,
                msg=msg,
                queue_id=queue_id,
            )
            self.log_decision(
                env, txn.attribution, decision, reason=reason, verdict=verdict, queue_id=queue_id
            )

        if judged.p2_refused and judged.p2 is not None:
            decide("refused", "P2 " + judged.p2.reason)
            return [mp.reply_code(judged.p2.reply)]
        action = verdict.action
        if action is Action.REJECT:
            decide("refused", "malicious")
            return [mp.reply_code(MALICIOUS_REJECT)]
        packets = self.header_edits(txn, verdict, notes, judged.ar_value, rt)
        if action is Action.QUARANTINE:
            decide("quarantined")
            packets.append(mp.quarantine(f"dsguard: verdict {verdict.level.value}"))
        else:
            decision = "audited" if notes else ("tagged" if action is Action.TAG else "accepted")
            decide(decision)
        packets.append(mp.ACCEPT)
        return packets

    def header_edits(
        self,
        txn: Transaction,
        verdict: Verdict,
        notes: list[str],
        ar_value: str | None,
        rt: MilterRuntime | None = None,
    ) -> list[bytes]:
        """Delete the forged fields first (indexes count the fields as received; Postfix skips
        deleted ones, so the last of a name goes first), then insert ours at the top, the last
        one first so they end up in order."""
        cfg = (rt or self.runtime).config.gateway
        packets = [
            mp.change_header(index, name)
            for name, index in sorted(txn.own_fields, key=lambda f: (f[0].lower(), -f[1]))
        ]
        ours = verdict_fields(cfg.header_prefix, verdict, notes, ar_value)
        for name, value in reversed(ours):
            packets.append(_insert_on_top(name, value, self.leading_space))
        return packets

    # -- records ----------------------------------------------------------------------------
    def record(
        self,
        env: Envelope,
        txn: Transaction,
        *,
        p2: str,
        decision: str,
        verdict: Verdict | None,
        msg: ParsedMessage | None = None,
        queue_id: str | None = None,
    ) -> None:
        self.runtime.events.put(
            decision_event(
                "milter",
                env,
                txn.attribution,
                p1=txn.p1_outcome,
                p2=p2,
                mode=self.runtime.config.organization.reject_direct_send,
                decision=decision,
                verdict=verdict,
                msg=msg,
                queue_id=queue_id,
            )
        )

    def log_decision(
        self,
        env: Envelope,
        attribution: Attribution,
        decision: str,
        *,
        reason: str = "",
        verdict: Verdict | None = None,
        queue_id: str | None = None,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        record = decision_log_record(
            env,
            attribution,
            decision,
            mode=self.runtime.config.organization.reject_direct_send,
            reason=reason,
            verdict=verdict,
            queue_id=queue_id,
            front_door="milter",
        )
        log.info(_JSON.encode(record))


def make_runtime(config: Config, events: EventWriter) -> MilterRuntime:
    from dsguard.gateway.server import make_resolver

    return MilterRuntime(config, Engine(config), make_resolver(config), events)


class MilterServer:
    def __init__(self, config: Config, store: Store | None) -> None:
        self.events = EventWriter(store)
        self.runtime = make_runtime(config, self.events)
        self.analysts = Analysts()
        self.server: asyncio.base_events.Server | None = None
        self._unix_path: str | None = None
        self.connections = 0

    def reload(self, config: Config) -> None:
        """New transactions use ``config`` at once; the old engine's decoder child is stopped
        a minute later (a transaction may still be using it)."""
        old = self.runtime
        self.runtime = make_runtime(config, self.events)
        asyncio.get_running_loop().call_later(60, old.engine.close)

    async def start(
        self,
        host: str,
        port: int,
        *,
        sock: socket.socket | None = None,
        unix_path: str | None = None,
        socket_mode: int = 0o660,
    ) -> tuple[str, int]:
        """Listen on ``host:port``, on the unix socket ``unix_path`` (created with
        ``socket_mode``; a stale socket left there by a dead milter is replaced, anything
        else there is an error), or accept on ``sock``, a listening socket made by the caller
        (the worker processes of ``dsguard milter --workers``)."""
        loop = asyncio.get_running_loop()
        if unix_path is not None:
            _remove_stale_socket(unix_path)
            self.server = await loop.create_unix_server(lambda: MilterSession(self), unix_path)
            self._unix_path = unix_path
            os.chmod(unix_path, socket_mode)
            return unix_path, 0
        if sock is not None:
            self.server = await loop.create_server(lambda: MilterSession(self), sock=sock)
        else:
            self.server = await loop.create_server(
                lambda: MilterSession(self), host, port, reuse_address=True
            )
        bound = self.server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
        self.analysts.close()
        self.runtime.engine.close()
        self.events.close()


def _remove_stale_socket(path: str) -> None:
    """Make room for our socket at ``path``: a socket file nobody accepts on (a milter that
    died) goes; a live one, or anything that is not a socket, is an error (OSError)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # refused: nobody listens there any more
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another milter is listening there")
