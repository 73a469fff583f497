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
Any internal fault answers tempfail, never a permanent reject. While the analysis runs the
milter sends SMFIR_PROGRESS so Postfix's ``milter_content_timeout`` does not fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from dsguard.auth.resolver import Resolver
from dsguard.config import Config
from dsguard.engine import Engine
from dsguard.gateway.headers import fold, is_own_field, verdict_fields
from dsguard.intel.geo import country_of
from dsguard.mail.addresses import domain_of
from dsguard.mail.message import ParsedMessage
from dsguard.model import Action, Attribution, Envelope, EnvelopeOrigin, TlsInfo, Verdict
from dsguard.policy.attribution import attribute
from dsguard.policy.judge import MALICIOUS_REJECT, TEMPFAIL, Judgement, judge_message
from dsguard.policy.rds import decide_p1
from dsguard.postfix import milter_protocol as mp
from dsguard.store.db import Store
from dsguard.store.events import EventWriter, decision_event, decision_log_record

log = logging.getLogger("dsguard.milter")

IDLE_TIMEOUT = 1800.0  # seconds without a packet: Postfix's own session limits are shorter
PROGRESS_INTERVAL = 10.0  # well inside Postfix's milter_content_timeout (300 s)
MAX_CONNECTIONS = 1000  # one per SMTP session; Postfix's default smtpd limit is 100
MAX_OWN_FIELD_EDITS = 100
TOO_MANY_FORGED = "451 4.7.0 Too many header fields claiming to be ours, try again later"

WANTED_ACTIONS = mp.SMFIF_ADDHDRS | mp.SMFIF_CHGHDRS | mp.SMFIF_QUARANTINE | mp.SMFIF_SETSYMLIST
# Events we do not need (unknown commands) and replies we never send (we always continue
# after CONNECT, HELO, MAIL, headers, end of headers and body chunks): fewer round trips per
# message. DATA is the exception: we answer it although we only continue, because without a
# reply the small DATA-macro packet Postfix's smtpd sends sits unacknowledged (our side
# delays its ACK) and Nagle's algorithm then holds the header packets the cleanup process
# writes next on the same socket until that delayed ACK: 40 ms per message on Linux.
# Header values keep their leading space so the rebuilt message is the received one, byte
# for byte (DKIM "simple" canonicalisation).
WANTED_PROTOCOL = (
    mp.SMFIP_NOUNKNOWN
    | mp.SMFIP_NR_CONN
    | mp.SMFIP_NR_HELO
    | mp.SMFIP_NR_MAIL
    | mp.SMFIP_NR_UNKN
    | mp.SMFIP_NR_HDR
    | mp.SMFIP_NR_EOH
    | mp.SMFIP_NR_BODY
    | mp.SMFIP_HDR_LEADSPC
)
# The macros we read, per stage (Postfix then sends these instead of milter_*_macros).
MACRO_LISTS = {
    mp.SMFIM_CONNECT: "j {client_addr} {client_name}",
    mp.SMFIM_HELO: "{tls_version} {cipher} {cert_subject} {cert_issuer}",
    mp.SMFIM_ENVFROM: "i {auth_type} {auth_authen}",
    mp.SMFIM_ENVRCPT: "i",
    mp.SMFIM_EOM: "i",
}
_NO_REPLY_FLAG = {
    mp.SMFIC_CONNECT: mp.SMFIP_NR_CONN,
    mp.SMFIC_HELO: mp.SMFIP_NR_HELO,
    mp.SMFIC_MAIL: mp.SMFIP_NR_MAIL,
    mp.SMFIC_RCPT: mp.SMFIP_NR_RCPT,
    mp.SMFIC_DATA: mp.SMFIP_NR_DATA,
    mp.SMFIC_UNKNOWN: mp.SMFIP_NR_UNKN,
    mp.SMFIC_HEADER: mp.SMFIP_NR_HDR,
    mp.SMFIC_EOH: mp.SMFIP_NR_EOH,
    mp.SMFIC_BODY: mp.SMFIP_NR_BODY,
}
# Where a macro is looked up: the latest stage first.
_MACRO_STAGES = (b"E", b"B", b"N", b"L", b"T", b"R", b"M", b"H", b"C")
_TRANSACTION_STAGES = (b"M", b"R", b"T", b"L", b"N", b"B", b"E")

T = TypeVar("T")


@dataclass(slots=True)
class MilterRuntime:
    """What sessions work with; replaced as a whole on reload (SIGHUP)."""

    config: Config
    engine: Engine
    resolver: Resolver | None
    events: EventWriter


@dataclass(slots=True)
class Transaction:
    """One MAIL..end-of-message transaction."""

    mail_from: str
    attribution: Attribution
    rcpts: list[str] = field(default_factory=list)
    p1_outcome: str = "unknown"
    refused_recorded: bool = False
    audit_notes: list[str] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)  # b"Name:value" as received
    body: bytearray = field(default_factory=bytearray)
    collected: int = 0  # bytes kept (headers + body)
    size: int = 0  # bytes seen
    truncated: bool = False
    field_counts: dict[str, int] = field(default_factory=dict)  # lower-case name -> count
    own_fields: list[tuple[str, int]] = field(default_factory=list)  # (name, 1-based index)
    forged_overflow: bool = False
    fault: bool = False

    def message(self) -> bytes:
        # Postfix sends header values with "\n" between folded lines, and the body with CRLF
        # line ends, without the empty line that separates them (milter8.c).
        head = b"".join(h.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n" for h in self.headers)
        return head + b"\r\n" + bytes(self.body)


class MilterSession:
    """One MTA connection (one SMTP session, or several after SMFIC_QUIT_NC)."""

    def __init__(self, server: MilterServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.negotiated = False
        self.protocol = 0
        self.leading_space = False
        self._reset_connection()

    def _reset_connection(self) -> None:
        self.macros: dict[bytes, dict[str, str]] = {}
        self.client_ip: str | None = None
        self.helo: str | None = None
        self.txn: Transaction | None = None
        # An internal fault outside a transaction (CONNECT, HELO, macros, MAIL): what we know
        # about the session may be wrong, so its transactions are tempfailed, never judged.
        self.session_fault = False

    # -- helpers ----------------------------------------------------------------------------
    @property
    def runtime(self) -> MilterRuntime:
        return self.server.runtime

    def macro(self, name: str) -> str | None:
        for stage in _MACRO_STAGES:
            values = self.macros.get(stage)
            if values is not None and name in values:
                return values[name]
        return None

    def expects_reply(self, command: bytes) -> bool:
        flag = _NO_REPLY_FLAG.get(command)
        return flag is not None and not self.protocol & flag

    def envelope(self, txn: Transaction | None, rcpts: tuple[str, ...] = ()) -> Envelope:
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
            mail_from=txn.mail_from if txn else None,
            rcpt_to=rcpts or (tuple(txn.rcpts) if txn else ()),
            tls=tls,
            auth_user=self.macro("{auth_authen}") or None,
            receiver=self.runtime.config.gateway.hostname,
            country=country_of(client_ip) if client_ip else None,
        )

    async def send(self, *packets: bytes) -> None:
        self.writer.write(b"".join(packets))
        await self.writer.drain()

    async def in_thread(self, func: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """``func(*args, **kwargs)`` in a worker thread (what ``asyncio.to_thread`` does,
        without its Task), telling the MTA every PROGRESS_INTERVAL that we are still on it."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        future = loop.run_in_executor(None, call)
        timer: asyncio.TimerHandle | None = None

        def progress() -> None:
            nonlocal timer
            if not future.done() and not self.writer.is_closing():
                self.writer.write(mp.PROGRESS)
                timer = loop.call_later(PROGRESS_INTERVAL, progress)

        timer = loop.call_later(PROGRESS_INTERVAL, progress)
        try:
            return await future
        finally:
            timer.cancel()

    # -- dispatch ---------------------------------------------------------------------------
    async def handle(self, packet: mp.Packet) -> bool:
        """Handle one packet; False when the connection must close."""
        command = packet.command
        if command == mp.SMFIC_OPTNEG:
            return await self.negotiate(packet.data)
        if not self.negotiated:
            log.warning("milter: %r before option negotiation; closing", command)
            return False
        if command == mp.SMFIC_QUIT:
            return False
        try:
            return await self.dispatch(command, packet.data)
        except Exception as exc:  # design contract: our fault is a temporary failure
            log.error("milter: internal error on %r: %s: %s", command, type(exc).__name__, exc)
            if self.txn is not None:
                self.txn.fault = True  # its end of message answers tempfail
            else:
                self.session_fault = True
            if command == mp.SMFIC_BODYEOB or self.expects_reply(command):
                await self.send(mp.reply_code(TEMPFAIL))
            return True

    async def dispatch(self, command: bytes, data: bytes) -> bool:
        if command == mp.SMFIC_MACRO:
            decoded = mp.decode_macros(data)
            if isinstance(decoded, mp.Malformed):
                return self.malformed(decoded)
            stage, values = decoded
            self.macros[stage] = values
            return True
        if command == mp.SMFIC_CONNECT:
            conn = mp.decode_connect(data)
            if isinstance(conn, mp.Malformed):
                return self.malformed(conn)
            # {client_addr} is Postfix's RFC form ("IPv6:2001:db8::1" for IPv6).
            addr = (self.macro("{client_addr}") or conn.address).removeprefix("IPv6:")
            self.client_ip = addr or None
            self.helo, self.txn = None, None
            return await self.reply_continue(command)
        if command == mp.SMFIC_HELO:
            parts = mp.split_strings(data, limit=1)
            if isinstance(parts, mp.Malformed):
                return self.malformed(parts)
            self.helo = mp.text(parts[0])[:255] if parts else ""
            return await self.reply_continue(command)
        if command == mp.SMFIC_MAIL:
            args = mp.decode_args(data)
            if isinstance(args, mp.Malformed):
                return self.malformed(args)
            return await self.mail(mp.unbracket(args[0]))
        if command == mp.SMFIC_RCPT:
            args = mp.decode_args(data)
            if isinstance(args, mp.Malformed):
                return self.malformed(args)
            return await self.rcpt(mp.unbracket(args[0]))
        if command == mp.SMFIC_HEADER:
            header = mp.decode_header(data)
            if isinstance(header, mp.Malformed):
                return self.malformed(header)
            self.header(*header)
            return await self.reply_continue(command)
        if command == mp.SMFIC_BODY:
            self.body(data)
            return await self.reply_continue(command)
        if command == mp.SMFIC_BODYEOB:
            self.body(data)  # Sendmail may send the last chunk with the EOB
            await self.end_of_message()
            return True
        if command == mp.SMFIC_ABORT:
            self.txn = None
            for stage in _TRANSACTION_STAGES:
                self.macros.pop(stage, None)
            return True
        if command == mp.SMFIC_QUIT_NC:
            self._reset_connection()
            return True
        if command in (mp.SMFIC_DATA, mp.SMFIC_EOH, mp.SMFIC_UNKNOWN):
            return await self.reply_continue(command)
        return self.malformed(mp.Malformed(f"unknown command {command!r}"))

    def malformed(self, problem: mp.Malformed) -> bool:
        log.warning("milter: malformed packet, closing the connection: %s", problem.reason)
        return False

    async def reply_continue(self, command: bytes) -> bool:
        if self.expects_reply(command):
            await self.send(mp.CONTINUE)
        return True

    # -- negotiation ------------------------------------------------------------------------
    async def negotiate(self, data: bytes) -> bool:
        offer = mp.decode_optneg(data)
        if isinstance(offer, mp.Malformed):
            return self.malformed(offer)
        if offer.version < 2:
            return self.malformed(mp.Malformed(f"milter protocol version {offer.version}"))
        actions = WANTED_ACTIONS & offer.actions
        self.protocol = WANTED_PROTOCOL & offer.protocol
        self.leading_space = bool(self.protocol & mp.SMFIP_HDR_LEADSPC)
        macros = MACRO_LISTS if actions & mp.SMFIF_SETSYMLIST else None
        self.negotiated = True
        version = min(offer.version, mp.SMFI_VERSION)
        await self.send(mp.optneg_reply(version, actions, self.protocol, macros))
        return True

    # -- envelope ---------------------------------------------------------------------------
    async def mail(self, sender: str) -> bool:
        env = replace(self.envelope(None), mail_from=sender)
        attribution = attribute(env, self.runtime.config.connectors)
        self.txn = Transaction(mail_from=sender, attribution=attribution)
        return await self.reply_continue(mp.SMFIC_MAIL)

    async def rcpt(self, recipient: str) -> bool:
        txn = self.txn
        if txn is None or txn.fault or self.session_fault:
            # No transaction to judge (MAIL failed inside, or never came): never let a
            # message through unjudged.
            await self.send(mp.reply_code(TEMPFAIL))
            return True
        rt = self.runtime
        mode = rt.config.organization.reject_direct_send
        p1 = decide_p1(mode, rt.engine.accepted, txn.attribution, domain_of(txn.mail_from) or None)
        txn.p1_outcome = p1.outcome.value
        if p1.enforced:
            await self.send(mp.reply_code(p1.reply))  # the reply first, the records after
            if not txn.refused_recorded:
                txn.refused_recorded = True

                def refused() -> None:
                    env = self.envelope(txn, (*txn.rcpts, recipient))
                    self.record(env, txn, p2="unknown", decision="refused", verdict=None)
                    self.log_decision(env, txn.attribution, "refused", reason="P1 " + p1.reason)

                self.after_reply(refused)
            return True
        if p1.would_reject and mode == "audit":
            note = f"would refuse (P1): {p1.reason}"
            if note not in txn.audit_notes:
                txn.audit_notes.append(note)
        txn.rcpts.append(recipient)
        return await self.reply_continue(mp.SMFIC_RCPT)

    # -- content ----------------------------------------------------------------------------
    def header(self, name: str, value: bytes) -> None:
        txn = self.txn
        if txn is None:
            return
        raw = name.encode("utf-8", "replace") + b":" + (value if self.leading_space else b" " + value)
        txn.size += len(raw) + 2
        key = name.lower()
        index = txn.field_counts.get(key, 0) + 1
        txn.field_counts[key] = index
        cfg = self.runtime.config
        if is_own_field(raw.replace(b"\n", b" "), cfg.gateway.hostname, cfg.gateway.header_prefix):
            if len(txn.own_fields) < MAX_OWN_FIELD_EDITS:
                txn.own_fields.append((name, index))
            else:
                txn.forged_overflow = True
        limits = cfg.limits
        if (
            txn.truncated
            or len(txn.headers) > limits.max_headers
            or txn.collected + len(raw) > limits.max_message_bytes
        ):
            txn.truncated = True
            return
        txn.headers.append(raw)
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

    async def end_of_message(self) -> None:
        txn, self.txn = self.txn, None
        if txn is None or txn.fault or self.session_fault:
            await self.send(mp.reply_code(TEMPFAIL))
            return
        env = self.envelope(txn)
        queue_id = self.macro("i") or None
        if txn.forged_overflow:
            await self.send(mp.reply_code(TOO_MANY_FORGED))

            def tempfailed() -> None:
                self.record(
                    env, txn, p2="unknown", decision="tempfail", verdict=None, queue_id=queue_id
                )
                self.log_decision(env, txn.attribution, "tempfail", reason="too many forged fields")

            self.after_reply(tempfailed)
            return
        rt = self.runtime
        judged = await self.in_thread(
            judge_message,
            rt.engine,
            rt.resolver,
            rt.config,
            env,
            txn.message(),
            truncated=txn.truncated,
            size=txn.size,
        )
        done: list[Callable[[], None]] = []
        packets = self.verdict_packets(env, txn, judged, queue_id, done)
        await self.send(*packets)  # the reply first: the event and the log line after
        for record in done:
            self.after_reply(record)

    def after_reply(self, record: Callable[[], None]) -> None:
        """Record a decision whose reply is sent: a fault here is logged, never answered (a
        second reply to the same event would put Postfix and us out of step)."""
        try:
            record()
        except Exception as exc:
            log.error("milter: recording a decision failed: %s: %s", type(exc).__name__, exc)

    def verdict_packets(
        self,
        env: Envelope,
        txn: Transaction,
        judged: Judgement,
        queue_id: str | None,
        done: list[Callable[[], None]],
    ) -> list[bytes]:
        """The packets that answer the end of message; what to record once they are sent is
        appended to ``done``."""
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
        packets = self.header_edits(txn, verdict, notes, judged.ar_value)
        if action is Action.QUARANTINE:
            decide("quarantined")
            packets.append(mp.quarantine(f"dsguard: verdict {verdict.level.value}"))
        else:
            decision = "audited" if notes else ("tagged" if action is Action.TAG else "accepted")
            decide(decision)
        packets.append(mp.ACCEPT)
        return packets

    def header_edits(
        self, txn: Transaction, verdict: Verdict, notes: list[str], ar_value: str | None
    ) -> list[bytes]:
        """Delete the forged fields first (indexes count the fields as received; Postfix skips
        deleted ones, so the last of a name goes first), then insert ours at the top, the last
        one first so they end up in order."""
        cfg = self.runtime.config.gateway
        packets = [
            mp.change_header(index, name)
            for name, index in sorted(txn.own_fields, key=lambda f: (f[0].lower(), -f[1]))
        ]
        ours = verdict_fields(cfg.header_prefix, verdict, notes, ar_value)
        for name, value in reversed(ours):
            folded = fold(f"{name}: {value}")[len(name) + 1 :]
            packets.append(
                mp.insert_header(0, name, mp.header_value(folded, leading_space=self.leading_space))
            )
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
        log.info(json.dumps(record, ensure_ascii=False, default=str))


def make_runtime(config: Config, events: EventWriter) -> MilterRuntime:
    from dsguard.gateway.server import make_resolver

    return MilterRuntime(config, Engine(config), make_resolver(config), events)


class MilterServer:
    def __init__(self, config: Config, store: Store | None) -> None:
        self.events = EventWriter(store)
        self.runtime = make_runtime(config, self.events)
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0

    def reload(self, config: Config) -> None:
        """New transactions use ``config`` at once; the old engine's decoder child is stopped
        a minute later (a transaction may still be using it)."""
        old = self.runtime
        self.runtime = make_runtime(config, self.events)
        asyncio.get_running_loop().call_later(60, old.engine.close)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            log.warning("milter: %d connections open, refusing another", self.connections)
            writer.close()
            return
        self.connections += 1
        session = MilterSession(self, writer)
        packets = mp.PacketReader(reader)
        # One timer per connection, not one per packet: it fires every IDLE_TIMEOUT and
        # closes the connection when no packet came in that long.
        loop = asyncio.get_running_loop()
        last_packet = loop.time()
        idle = False
        watchdog: asyncio.TimerHandle | None = None

        def check_idle() -> None:
            nonlocal watchdog, idle
            left = last_packet + IDLE_TIMEOUT - loop.time()
            if left > 0:
                watchdog = loop.call_later(left, check_idle)
                return
            idle = True
            log.info("milter: connection idle for %.0f s, closing", IDLE_TIMEOUT)
            writer.transport.abort()

        watchdog = loop.call_later(IDLE_TIMEOUT, check_idle)
        try:
            while True:
                packet = await packets.next()
                if idle or packet is None:
                    return
                last_packet = loop.time()
                if isinstance(packet, mp.Malformed):
                    session.malformed(packet)
                    return
                if not await session.handle(packet):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            watchdog.cancel()
            self.connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def start(
        self, host: str, port: int, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Listen on ``host:port``, or accept on ``sock``, a listening socket made by the caller
        (the worker processes of ``dsguard milter --workers``)."""
        if sock is not None:
            self.server = await asyncio.start_server(self.handle, sock=sock)
        else:
            self.server = await asyncio.start_server(self.handle, host, port, reuse_address=True)
        bound = self.server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.runtime.engine.close()
        self.events.close()
