"""Reject Direct Send inside Postfix: an SMTP access policy delegation server.

Postfix (``check_policy_service inet:127.0.0.1:PORT`` in ``smtpd_recipient_restrictions``)
sends one request per recipient: ``name=value`` lines ending with an empty line; we answer
``action=...`` and an empty line (Postfix SMTPD_POLICY_README, "Protocol description"). The
decision is the shared P1 rule (``policy.rds.decide_p1``) over the attributes Postfix hands
over: ``client_address``, ``sasl_username``, ``ccert_subject`` (the client certificate's CN;
Postfix passes it only when the certificate verified against ``smtpd_tls_CAfile``), ``sender``
and ``recipient``. No DNS and no message body: the answer is immediate. Events are written by
a background thread so a slow database never delays Postfix.

I/O: each connection is a plain :class:`asyncio.Protocol`; every complete request in a read is
answered, the answers go out in one write, and only then are events queued and log lines
written. A decision is a pure function of the client, the SASL user, the certificate name and
the sender, so it is remembered per configuration (bounded): Postfix asks once per recipient.

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
DECISIONS_KEPT = 4096  # remembered (client, SASL user, certificate, sender) decisions
_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps with options builds one per call
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
        self._known: dict[tuple[str, str, str, str], PolicyAnswer] = {}

    def decide(self, attrs: Mapping[str, str]) -> PolicyAnswer:
        if attrs.get("request") != "smtpd_access_policy":
            return PolicyAnswer(DUNNO, "dunno", "not an smtpd_access_policy request")
        sender = attrs.get("sender", "")
        cert_name = attrs.get("ccert_subject", "").strip()
        # Everything the decision reads (attribute() and decide_p1); not the recipient.
        key = (
            attrs.get("client_address", ""),
            attrs.get("sasl_username", ""),
            cert_name,
            sender,
        )
        answer = self._known.get(key)
        if answer is None:
            answer = self._decide(attrs, sender, cert_name)
            if len(self._known) >= DECISIONS_KEPT:
                self._known.clear()
            self._known[key] = answer
        return answer

    def _decide(self, attrs: Mapping[str, str], sender: str, cert_name: str) -> PolicyAnswer:
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


TOO_LARGE: list[bytes] = []  # RequestBuffer.next(): a request over MAX_REQUEST_BYTES


class RequestBuffer:
    """Requests from one connection, however the reads split them: a request is the lines up
    to the first empty one (``\n``, or ``\r\n`` from a lenient client)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> list[bytes] | None:
        """The lines of the next complete request (``TOO_LARGE`` when over the limit), None
        until one is complete."""
        buf = self._buf
        if buf.startswith((b"\n", b"\r\n")):  # an empty request
            self._buf = buf[buf.index(b"\n") + 1 :]
            return []
        ends = [i for i in (buf.find(b"\n\n"), buf.find(b"\n\r\n")) if i >= 0]
        if not ends:
            return TOO_LARGE if len(buf) > MAX_REQUEST_BYTES else None
        end = min(ends)
        request, self._buf = buf[:end], buf[buf.index(b"\n", end + 1) + 1 :]
        if end + 1 > MAX_REQUEST_BYTES:
            return TOO_LARGE
        return [line.rstrip(b"\r") for line in request.split(b"\n")]


class PolicyProtocol(asyncio.Protocol):
    """One Postfix connection: it keeps it open and sends many requests, one at a time."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.requests = RequestBuffer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.requests.feed(data)
        answers: list[bytes] = []
        records: list[tuple[dict[str, str], PolicyAnswer]] = []
        close = False
        while True:
            lines = self.requests.next()
            if lines is None:
                break
            if lines is TOO_LARGE:
                answers.append(_encoded(TEMPFAIL))
                close = True
                break
            action, attrs, answer = self.server._answer(lines)
            answers.append(_encoded(action))
            if attrs is not None and answer is not None:
                records.append((attrs, answer))
        if answers:
            # One write (asyncio sets TCP_NODELAY: it goes out at once), before the events.
            transport.write(b"".join(answers) if len(answers) > 1 else answers[0])
        for attrs, answer in records:
            self.server._record(attrs, answer)
        if close:
            transport.close()


_ENCODED: dict[str, bytes] = {}


def _encoded(action: str) -> bytes:
    """``action=...`` and the empty line, as bytes (the few distinct answers are kept)."""
    out = _ENCODED.get(action)
    if out is None:
        out = f"action={action}\n\n".encode()
        if len(_ENCODED) < 64:
            _ENCODED[action] = out
    return out


class PolicyServer:
    def __init__(self, config: Config, store: Store | None) -> None:
        self.decider = PolicyDecider(config)
        self.events = EventWriter(store)
        self.server: asyncio.base_events.Server | None = None

    def reload(self, config: Config) -> None:
        self.decider = PolicyDecider(config)

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
            _JSON.encode(
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
            )
        )

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: PolicyProtocol(self), host, port, reuse_address=True
        )
        sock = self.server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.events.close()
