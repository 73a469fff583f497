"""Reject Direct Send inside Postfix: an SMTP access policy delegation server.

Postfix (``check_policy_service inet:127.0.0.1:PORT`` in ``smtpd_recipient_restrictions``)
sends one request per recipient: ``name=value`` lines ending with an empty line; we answer
``action=...`` and an empty line (Postfix SMTPD_POLICY_README, "Protocol description"). The
decision is the shared P1 rule (``policy.rds.decide_p1``) over the attributes Postfix hands
over: ``client_address``, ``sasl_username``, ``ccert_subject`` (the client certificate's CN;
Postfix passes it only when the certificate verified against ``smtpd_tls_CAfile``), ``sender``
and ``recipient``. No DNS and no message body: the answer is immediate. Events are written by
a background thread so a slow database never delays Postfix.

SECURITY: requests come from Postfix on a local socket, but their values come from the SMTP
client. Requests are capped in size and attribute count; a malformed request or an internal
fault answers ``DEFER_IF_PERMIT`` (a temporary failure), never a permanent reject, and the
connection stays usable. Nothing but our own decision text is ever returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from dsguard.config import Config
from dsguard.mail.addresses import domain_of
from dsguard.model import Envelope, EnvelopeOrigin, TlsInfo
from dsguard.policy.attribution import attribute
from dsguard.policy.domains import AcceptedDomains
from dsguard.policy.rds import decide_p1
from dsguard.store.db import Store
from dsguard.store.events import EventWriter

log = logging.getLogger("dsguard.policyd")

MAX_REQUEST_BYTES = 64 * 1024
MAX_ATTRIBUTES = 100
DUNNO = "DUNNO"
TEMPFAIL = "DEFER_IF_PERMIT Service temporarily unavailable (dsguard policy)"


@dataclass(frozen=True, slots=True)
class PolicyAnswer:
    action: str  # what goes after "action="
    decision: str  # "refused", "audited" or "dunno" (for events/logs)
    reason: str = ""
    attribution: str = ""


class PolicyDecider:
    """The per-recipient decision, shared configuration, no I/O."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.accepted = AcceptedDomains(config.organization.accepted_domains)

    def decide(self, attrs: Mapping[str, str]) -> PolicyAnswer:
        if attrs.get("request") != "smtpd_access_policy":
            return PolicyAnswer(DUNNO, "dunno", "not an smtpd_access_policy request")
        sender = attrs.get("sender", "")
        cert_name = attrs.get("ccert_subject", "").strip()
        envelope = Envelope(
            origin=EnvelopeOrigin.SMTP,
            client_ip=attrs.get("client_address") or None,
            helo=attrs.get("helo_name") or None,
            mail_from=sender,
            rcpt_to=(attrs.get("recipient", ""),),
            auth_user=attrs.get("sasl_username") or None,
            tls=TlsInfo(verified_peer_names=(cert_name.lower(),)) if cert_name else None,
        )
        attribution = attribute(envelope, self.config.connectors)
        mode = self.config.organization.reject_direct_send
        p1 = decide_p1(mode, self.accepted, attribution, domain_of(sender) or None)
        label = attribution.label()
        if p1.enforced:
            # Postfix sends "action=550 5.7.68 ..." to the client as the reply, verbatim.
            return PolicyAnswer(p1.reply, "refused", p1.reason, label)
        if p1.would_reject and mode == "audit":
            return PolicyAnswer(DUNNO, "audited", p1.reason, label)
        return PolicyAnswer(DUNNO, "dunno", p1.reason, label)


def parse_request(lines: list[bytes]) -> dict[str, str] | None:
    attrs: dict[str, str] = {}
    for raw in lines[:MAX_ATTRIBUTES]:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        name, sep, value = line.partition("=")
        if not sep or not name:
            return None
        attrs[name] = value
    return attrs


TOO_LARGE: list[bytes] = []  # RequestReader.next(): a request over MAX_REQUEST_BYTES


class RequestReader:
    """Requests from one connection, read in chunks rather than line by line: a request is
    the lines up to the first empty one (``\n``, or ``\r\n`` from a lenient client)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = b""

    def _split(self) -> list[bytes] | None:
        buf = self._buf
        if buf.startswith((b"\n", b"\r\n")):  # an empty request
            self._buf = buf[buf.index(b"\n") + 1 :]
            return []
        ends = [i for i in (buf.find(b"\n\n"), buf.find(b"\n\r\n")) if i >= 0]
        if not ends:
            return None
        end = min(ends)
        request, self._buf = buf[:end], buf[buf.index(b"\n", end + 1) + 1 :]
        if end + 1 > MAX_REQUEST_BYTES:
            return TOO_LARGE
        return [line.rstrip(b"\r") for line in request.split(b"\n")]

    async def next(self) -> list[bytes] | None:
        """The lines of the next request (``TOO_LARGE`` when over the limit), None at the end
        of the stream."""
        while True:
            lines = self._split()
            if lines is not None:
                return lines
            if len(self._buf) > MAX_REQUEST_BYTES:
                return TOO_LARGE
            chunk = await self._reader.read(65536)
            if not chunk:
                return None
            self._buf += chunk


class PolicyServer:
    def __init__(self, config: Config, store: Store | None) -> None:
        self.decider = PolicyDecider(config)
        self.events = EventWriter(store)
        self.server: asyncio.base_events.Server | None = None

    def reload(self, config: Config) -> None:
        self.decider = PolicyDecider(config)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Postfix keeps the connection open and sends many requests on it, one at a time.
        # Each reply is one write (the transport sends it at once: asyncio sets TCP_NODELAY),
        # written before the event is queued and the log line is written.
        requests = RequestReader(reader)
        try:
            while True:
                lines = await requests.next()
                if lines is None:
                    return
                if lines is TOO_LARGE:
                    writer.write(f"action={TEMPFAIL}\n\n".encode())
                    await writer.drain()
                    return
                action, attrs, answer = self._answer(lines)
                writer.write(f"action={action}\n\n".encode())
                if attrs is not None and answer is not None:
                    self._record(attrs, answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _answer(
        self, lines: list[bytes]
    ) -> tuple[str, dict[str, str] | None, PolicyAnswer | None]:
        """(the action, and the request and answer to record when there is one to record)."""
        try:
            attrs = parse_request(lines)
            if attrs is None:
                return TEMPFAIL, None, None
            answer = self.decider.decide(attrs)
            if answer.decision in ("refused", "audited"):
                return answer.action, attrs, answer
            return answer.action, None, None
        except Exception as exc:  # never a permanent reject for our fault
            log.error("policy request failed: %s: %s", type(exc).__name__, exc)
            return TEMPFAIL, None, None

    def _record(self, attrs: Mapping[str, str], answer: PolicyAnswer) -> None:
        try:
            self._record_event(attrs, answer)
        except Exception as exc:  # the reply is sent already: only the audit trail suffers
            log.error("policy event failed: %s: %s", type(exc).__name__, exc)

    def _record_event(self, attrs: Mapping[str, str], answer: PolicyAnswer) -> None:
        cfg = self.decider.config
        self.events.put(
            {
                "front_door": "policyd",
                "client_ip": attrs.get("client_address") or None,
                "helo": (attrs.get("helo_name") or "")[:255] or None,
                "country": None,
                "mail_from": attrs.get("sender", ""),
                "rcpt_to": [attrs.get("recipient", "")],
                "header_from": None,
                "attribution": answer.attribution,
                "p1": "would_reject",
                "p2": "unknown",
                "mode": cfg.organization.reject_direct_send,
                "decision": answer.decision,
                "verdict": None,
                "score": None,
                "finding_ids": (),
                "message_id": None,
                "subject": None,
                "queue_id": attrs.get("queue_id") or None,
            }
        )
        log.info(
            json.dumps(
                {
                    "event": "decision",
                    "front_door": "policyd",
                    "decision": answer.decision,
                    "client_ip": attrs.get("client_address"),
                    "attribution": answer.attribution,
                    "mail_from": attrs.get("sender"),
                    "rcpt_to": [attrs.get("recipient")],
                    "reason": answer.reason,
                },
                ensure_ascii=False,
            )
        )

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self.handle, host, port, reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.events.close()
