"""The gateway's SMTP decisions: the SMTP server's handler over dsguard's policy and engine.

Per transaction:

- MAIL: an authenticated user may only use its own addresses (send-as).
- RCPT: relay control first (anonymous and connector sessions deliver only to accepted
  domains; routing tricks are refused), then the Reject Direct Send P1 rule, decided before any
  data is read, with Microsoft's reply byte for byte. Microsoft decides after RCPT too: the
  tenant is attributed by the recipient.
- DATA: bare CR/LF (SMTP smuggling) refused; live SPF/DKIM/DMARC; the P2 rule on the header
  From; content analysis by the engine; then per action: reject, quarantine (store), tag or
  deliver. Accepted mail is written to the spool and fsync'd before the 250.

In ``audit`` mode nothing is refused for Direct Send: the would-be refusal is recorded as an
event and stamped into the message, so an admin sees what switching it on would break.

The end-of-data decision (``policy.judge``), the header fields (``gateway.headers``) and the
event and log records (``store.events``) are shared with the milter: one behaviour, two doors.

SECURITY: this faces hostile clients on port 25. Internal faults never become a permanent
5xx: ``handle_exception`` answers 451 (design contract), and every step that touches disk or
the database is wrapped the same way. Incoming headers that claim to be ours (our
authserv-id's Authentication-Results, any ``X-Dsguard-*``) are removed before ours are added
(RFC 8601 section 5). Nothing secret (passwords, AUTH data) is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dsguard.auth.resolver import Resolver
from dsguard.config import Config
from dsguard.engine import Engine
from dsguard.gateway.headers import fold, received_header, verdict_fields
from dsguard.gateway.relay import Relay
from dsguard.gateway.smtpserver import Envelope as SmtpEnvelope
from dsguard.gateway.smtpserver import Session, SmtpSession
from dsguard.gateway.spool import Spool, SpoolEntry
from dsguard.intel.geo import country_of
from dsguard.mail.addresses import domain_of
from dsguard.mail.message import ParsedMessage
from dsguard.model import (
    Action,
    Attribution,
    AttributionKind,
    Envelope,
    EnvelopeOrigin,
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
from dsguard.policy.relay import check_recipient, check_send_as
from dsguard.store import repository as repo
from dsguard.store.db import Store
from dsguard.store.events import EventWriter, decision_event, decision_log_record

log = logging.getLogger("dsguard.gateway")

TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
BARE_NEWLINE = "550 5.5.2 Message rejected: bare <CR> or <LF> in message data (RFC 5321 2.3.8)"
NO_MAIL_FROM = "503 5.5.1 Error: need MAIL command"
# Postfix's wording when SASL is off; AUTH belongs to the submission listener.
AUTH_NOT_HERE = "503 5.5.1 Error: authentication not enabled"


def has_bare_newline(raw: bytes) -> bool:
    """A CR not followed by LF or an LF not preceded by CR (RFC 5321 2.3.8). Three C-speed
    counts instead of a look-around regex: every CRLF holds one CR and one LF, so any extra
    CR or LF is a bare one."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\n") != crlf or raw.count(b"\r") != crlf


@dataclass(slots=True)
class Transaction:
    """What one MAIL..DATA transaction has decided so far."""

    attribution: Attribution | None = None
    p1_outcome: str = "unknown"
    p1_reason: str = ""
    refused_recorded: bool = False
    audit_notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Runtime:
    """What the handler works with; replaced as a whole on reload (SIGHUP)."""

    config: Config
    engine: Engine
    resolver: Resolver | None
    spool: Spool
    store: Store
    relay: Relay | None = None
    events: EventWriter | None = None


def verified_peer_names(session: Session) -> tuple[str, ...]:
    """DNS names (SAN dNSName, else CN) of a client certificate that verified against the
    configured CA during STARTTLS; () when none was presented."""
    extra = session.ssl
    if not extra:
        return ()
    ssl_object = extra.get("ssl_object") if isinstance(extra, dict) else None
    if ssl_object is None:
        return ()
    try:
        cert = ssl_object.getpeercert()
    except ValueError:
        return ()
    if not cert:
        return ()
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    names.append(value)
    return tuple(n.lower() for n in names)


def _tls_info(session: Session) -> TlsInfo | None:
    extra = session.ssl
    if not extra or not isinstance(extra, dict):
        return None
    ssl_object = extra.get("ssl_object")
    version = ssl_object.version() if ssl_object is not None else None
    cipher = extra.get("cipher")
    return TlsInfo(
        version=version,
        cipher=cipher[0] if isinstance(cipher, tuple) and cipher else None,
        verified_peer_names=verified_peer_names(session),
    )


def _auth_user(session: Session) -> str | None:
    if not session.authenticated:
        return None
    data = session.auth_data
    login = getattr(data, "login", None)
    if isinstance(login, bytes):
        return login.decode("utf-8", "replace")
    return str(login) if login else None


class GatewayHandler:
    """The SMTP server's handler (``smtpserver.Handler``: aiosmtpd's hook names; only DATA,
    and MAIL of an authenticated user, wait for anything). One instance serves every session;
    ``runtime`` can be swapped."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        submission: bool = False,
        alone: Callable[[], bool] | None = None,
    ) -> None:
        self.runtime = runtime
        self.submission = submission
        # True while this process serves no other session (the server's admission gate).
        self._alone = alone
        self._transactions: dict[int, Transaction] = {}

    # -- helpers ------------------------------------------------------------------------------
    def _txn(self, session: Session) -> Transaction:
        return self._transactions.setdefault(id(session), Transaction())

    def forget(self, session: Session) -> None:
        self._transactions.pop(id(session), None)

    def _envelope(self, session: Session, smtp_env: SmtpEnvelope) -> Envelope:
        peer = session.peer
        client_ip = peer[0] if isinstance(peer, tuple) else None
        return Envelope(
            origin=EnvelopeOrigin.SMTP,
            client_ip=client_ip,
            helo=session.host_name,
            mail_from=smtp_env.mail_from,
            rcpt_to=tuple(smtp_env.rcpt_tos),
            tls=_tls_info(session),
            auth_user=_auth_user(session),
            receiver=self.runtime.config.gateway.hostname,
            country=country_of(client_ip) if client_ip else None,
        )

    # -- SMTP hooks -----------------------------------------------------------------------------
    def handle_exception(self, error: Exception) -> str:
        # Design contract: an internal fault is a temporary failure, never a permanent 5xx.
        log.error("internal error: %s: %s", type(error).__name__, error, exc_info=error)
        return TEMPFAIL

    def handle_EHLO(  # noqa: N802 -- aiosmtpd's hook name (5-argument form)
        self,
        server: SmtpSession,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the hook sets it (as aiosmtpd's 5-argument hook must)
        if self.submission:
            return responses
        # The server advertises AUTH after STARTTLS on every listener, but the MX listener has
        # no authenticator: every attempt would fail with 535, and an MTA that has SASL
        # credentials for this host would defer or bounce its mail. Do not offer it.
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    def handle_AUTH(  # noqa: N802 -- aiosmtpd's hook name
        self, server: SmtpSession, session: Session, envelope: SmtpEnvelope, args: list[str]
    ) -> str | None:
        # None: the server runs the AUTH exchange (the submission listener).
        return None if self.submission else AUTH_NOT_HERE

    def handle_MAIL(  # noqa: N802 -- aiosmtpd's hook name
        self,
        server: SmtpSession,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str | Awaitable[str]:
        """The reply, or (an authenticated user: the send-as list is in the database) an
        awaitable of it."""
        rt = self.runtime
        txn = Transaction()
        self._transactions[id(session)] = txn
        env = self._envelope(session, envelope)
        attribution = attribute(env, rt.config.connectors)
        txn.attribution = attribution
        if attribution.kind is AttributionKind.AUTHENTICATED:
            return self._mail_as(envelope, env, attribution, address, mail_options)
        return self._mail_accepted(envelope, address, mail_options)

    async def _mail_as(
        self,
        envelope: SmtpEnvelope,
        env: Envelope,
        attribution: Attribution,
        address: str,
        mail_options: list[str],
    ) -> str:
        user = attribution.name or ""
        allowed = await asyncio.to_thread(_send_as, self.runtime.store, user)
        refusal = check_send_as(address, user, allowed)
        if refusal:
            self._log_decision(env, attribution, "refused", reason="send-as", mail_from=address)
            return refusal
        return self._mail_accepted(envelope, address, mail_options)

    @staticmethod
    def _mail_accepted(envelope: SmtpEnvelope, address: str, mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    def handle_RCPT(  # noqa: N802 -- aiosmtpd's hook name
        self,
        server: SmtpSession,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rt = self.runtime
        txn = self._txn(session)
        if envelope.mail_from is None or txn.attribution is None:
            return NO_MAIL_FROM
        if len(envelope.rcpt_tos) >= rt.config.gateway.limits.max_recipients:
            return TOO_MANY_RCPTS
        refusal = check_recipient(address, txn.attribution, rt.engine.accepted)
        if refusal:
            self._log_decision(
                self._envelope(session, envelope),
                txn.attribution,
                "refused",
                reason="relay",
                rcpt=address,
            )
            return refusal
        mode = rt.config.organization.reject_direct_send
        p1 = decide_p1(
            mode, rt.engine.accepted, txn.attribution, domain_of(envelope.mail_from) or None
        )
        txn.p1_outcome = p1.outcome.value
        txn.p1_reason = p1.reason
        if p1.enforced:
            if not txn.refused_recorded:
                txn.refused_recorded = True
                env = self._envelope(session, envelope)
                env = Envelope(**{**_env_dict(env), "rcpt_to": (*env.rcpt_to, address)})
                self._record(
                    env,
                    txn.attribution,
                    p1=p1.outcome.value,
                    p2="unknown",
                    decision="refused",
                    verdict=None,
                )
                self._log_decision(env, txn.attribution, "refused", reason="P1 " + p1.reason)
            return p1.reply
        if p1.would_reject and mode == "audit":
            note = f"would refuse (P1): {p1.reason}"
            if note not in txn.audit_notes:
                txn.audit_notes.append(note)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 -- aiosmtpd's hook name
        self, server: SmtpSession, session: Session, envelope: SmtpEnvelope
    ) -> str:
        txn = self._txn(session)
        if txn.attribution is None or not envelope.rcpt_tos:
            return "503 5.5.1 Error: need RCPT command"
        raw = envelope.original_content or b""
        env = self._envelope(session, envelope)
        if has_bare_newline(raw):
            self._record(
                env,
                txn.attribution,
                p1=txn.p1_outcome,
                p2="unknown",
                decision="refused",
                verdict=None,
            )
            self._log_decision(env, txn.attribution, "refused", reason="bare newline")
            return BARE_NEWLINE
        try:
            return await self._accept(session, env, txn, raw)
        finally:
            self.forget(session)

    # -- the accept path -----------------------------------------------------------------------
    async def _accept(self, session: Session, env: Envelope, txn: Transaction, raw: bytes) -> str:
        rt = self.runtime
        assert txn.attribution is not None
        # The analysis runs here on the loop when nothing in it can block (as the milter does):
        # DNS answered from the resolver's cache only, no attachment for the engine's decoder
        # child, a message of at most INLINE_MAX_BYTES; then only the fsync'd spool write goes
        # to a thread. Otherwise (a cache miss, an attachment, an error) that work is thrown
        # away and everything is done in one worker-thread trip, as before. Analysis in a
        # thread competes with the loop for the GIL on every message.
        attempt = judge_on_loop(rt.engine, rt.resolver, rt.config, env, raw)
        # An error is not answered from here: it is done again in the thread, where a fault
        # answers 451.
        inline = attempt.judgement if attempt is not None else None
        if inline is not None:
            judged = inline
            stamped, queue_id, to_spool = self._stamp_judged(rt, env, txn, judged)
            spooled: SpoolEntry | OSError | None = None
            if to_spool:
                if self._alone is not None and self._alone():
                    # The only session: nothing else on the loop waits while the disk syncs,
                    # and the thread hand-off (a wake-up each way) would be pure latency for
                    # a lone client (bench/gateway.py c=1: 0.93 -> 0.97x of Postfix in
                    # transaction mode). Under concurrency the loop must not block: a thread.
                    spooled = self._spool(rt, env, stamped, judged, queue_id)
                else:
                    spooled = await asyncio.to_thread(
                        self._spool, rt, env, stamped, judged, queue_id
                    )
        else:
            # One worker-thread trip for analysis, stamping and (for mail to relay) the fsync'd
            # spool write: each trip costs a thread hand-off and a GIL round.
            judged, stamped, queue_id, spooled = await asyncio.to_thread(
                self._judge_and_spool, rt, env, txn, raw
            )
        msg, header_from, verdict = judged.msg, judged.header_from, judged.verdict
        if judged.p2_refused:
            assert judged.p2 is not None
            self._record(
                env,
                txn.attribution,
                p1=txn.p1_outcome,
                p2=judged.p2_value,
                decision="refused",
                verdict=verdict,
                msg=msg,
            )
            self._log_decision(
                env, txn.attribution, "refused", reason="P2 " + judged.p2.reason, verdict=verdict
            )
            return judged.p2.reply

        action = verdict.action
        p2_value = judged.p2_value
        if action is Action.REJECT:
            self._record(
                env,
                txn.attribution,
                p1=txn.p1_outcome,
                p2=p2_value,
                decision="refused",
                verdict=verdict,
                msg=msg,
            )
            self._log_decision(env, txn.attribution, "refused", reason="malicious", verdict=verdict)
            return MALICIOUS_REJECT
        if action is Action.QUARANTINE:
            try:
                qid = await asyncio.to_thread(
                    repo.quarantine_message,
                    rt.store,
                    raw=stamped,
                    mail_from=env.mail_from or "",
                    rcpt_to=env.rcpt_to,
                    client_ip=env.client_ip,
                    helo=env.helo,
                    country=env.country,
                    header_from=header_from.addr if header_from else None,
                    subject=(msg.subject or "")[:500] or None,
                    message_id=msg.message_id,
                    verdict=verdict.level.value,
                    score=verdict.score,
                    findings=verdict.findings,
                    iocs=verdict.iocs,
                    attribution=txn.attribution.label(),
                    reason=f"verdict {verdict.level.value}",
                )
            except Exception as exc:
                log.error("quarantine failed, answering 451: %s", exc)
                await self._tempfail(env, txn, p2_value, verdict, msg, "quarantine failed")
                return TEMPFAIL
            self._record(
                env,
                txn.attribution,
                p1=txn.p1_outcome,
                p2=p2_value,
                decision="quarantined",
                verdict=verdict,
                msg=msg,
                queue_id=qid,
            )
            self._log_decision(env, txn.attribution, "quarantined", verdict=verdict, queue_id=qid)
            return f"250 2.0.0 OK: queued as {queue_id}"
        if not isinstance(spooled, SpoolEntry):  # the OSError of the spool write
            log.error("spool write failed, answering 451: %s", spooled)
            await self._tempfail(env, txn, p2_value, verdict, msg, "spool write failed")
            return TEMPFAIL
        entry = spooled
        if rt.relay is not None:
            rt.relay.submit(entry, stamped)  # relayed from memory, no spool scan
        decision = (
            "audited" if txn.audit_notes else ("tagged" if action is Action.TAG else "accepted")
        )
        self._record(
            env,
            txn.attribution,
            p1=txn.p1_outcome,
            p2=p2_value,
            decision=decision,
            verdict=verdict,
            msg=msg,
            queue_id=entry.id,
        )
        self._log_decision(env, txn.attribution, decision, verdict=verdict, queue_id=entry.id)
        return f"250 2.0.0 OK: queued as {queue_id}"

    def _judge_and_spool(
        self, rt: Runtime, env: Envelope, txn: Transaction, raw: bytes
    ) -> tuple[Judgement, bytes, str, SpoolEntry | OSError | None]:
        """In a worker thread: judge; unless refused or quarantined, stamp and spool (fsync'd).
        Returns the judgement, the stamped message, its queue id and the spool entry (the
        OSError if the spool write failed; None if nothing was to be spooled)."""
        judged = judge_message(rt.engine, rt.resolver, rt.config, env, raw)
        stamped, queue_id, to_spool = self._stamp_judged(rt, env, txn, judged)
        if not to_spool:
            return judged, stamped, queue_id, None
        return judged, stamped, queue_id, self._spool(rt, env, stamped, judged, queue_id)

    def _stamp_judged(
        self, rt: Runtime, env: Envelope, txn: Transaction, judged: Judgement
    ) -> tuple[bytes, str, bool]:
        """Take the judgement's audit notes, stamp our header fields (unless P2 refused it);
        returns the stamped message, its queue id and whether it goes to the spool."""
        txn.audit_notes.extend(judged.notes)
        queue_id = secrets.token_hex(8)
        if judged.p2_refused:
            return b"", queue_id, False
        verdict = judged.verdict
        stamped = self._stamp(judged.cleaned, env, txn, verdict, judged.ar_value, queue_id)
        return stamped, queue_id, verdict.action not in (Action.REJECT, Action.QUARANTINE)

    @staticmethod
    def _spool(
        rt: Runtime, env: Envelope, stamped: bytes, judged: Judgement, queue_id: str
    ) -> SpoolEntry | OSError:
        """The fsync'd spool write (a worker thread); the OSError if it failed."""
        verdict = judged.verdict
        meta = {
            "client_ip": env.client_ip or "",
            "verdict": verdict.level.value,
            "score": str(verdict.score),
            "queue_id": queue_id,
        }
        try:
            return rt.spool.enqueue(stamped, env.mail_from or "", env.rcpt_to, meta)
        except OSError as exc:
            return exc

    async def _tempfail(
        self,
        env: Envelope,
        txn: Transaction,
        p2: str,
        verdict: Verdict,
        msg: ParsedMessage,
        reason: str,
    ) -> None:
        """The transaction's decision was "try again later": one decision line and one event,
        like every other decision (the error itself is logged by the caller)."""
        assert txn.attribution is not None
        self._record(
            env,
            txn.attribution,
            p1=txn.p1_outcome,
            p2=p2,
            decision="tempfail",
            verdict=verdict,
            msg=msg,
        )
        self._log_decision(env, txn.attribution, "tempfail", reason=reason, verdict=verdict)

    def _stamp(
        self,
        raw: bytes,
        env: Envelope,
        txn: Transaction,
        verdict: Verdict,
        ar_value: str | None,
        queue_id: str,
    ) -> bytes:
        cfg = self.runtime.config.gateway
        lines = [received_header(env, cfg.hostname, queue_id, self.submission)]
        lines.extend(
            f"{name}: {value}"
            for name, value in verdict_fields(cfg.header_prefix, verdict, txn.audit_notes, ar_value)
        )
        head = "".join(fold(line) + "\r\n" for line in lines).encode("utf-8", "replace")
        return head + raw

    def _record(
        self,
        env: Envelope,
        attribution: Attribution,
        *,
        p1: str,
        p2: str,
        decision: str,
        verdict: Verdict | None,
        msg: ParsedMessage | None = None,
        queue_id: str | None = None,
    ) -> None:
        rt = self.runtime
        if rt.events is None:
            return
        # Queued for the single event-writer thread: the reply never waits for the database.
        rt.events.put(
            decision_event(
                "gateway",
                env,
                attribution,
                p1=p1,
                p2=p2,
                mode=rt.config.organization.reject_direct_send,
                decision=decision,
                verdict=verdict,
                msg=msg,
                queue_id=queue_id,
            )
        )

    def _log_decision(
        self,
        env: Envelope,
        attribution: Attribution,
        decision: str,
        *,
        reason: str = "",
        verdict: Verdict | None = None,
        queue_id: str | None = None,
        mail_from: str | None = None,
        rcpt: str | None = None,
    ) -> None:
        record = decision_log_record(
            env,
            attribution,
            decision,
            mode=self.runtime.config.organization.reject_direct_send,
            reason=reason,
            verdict=verdict,
            queue_id=queue_id,
            mail_from=mail_from,
            rcpt=rcpt,
        )
        log.info(json.dumps(record, ensure_ascii=False, default=str))


def _env_dict(env: Envelope) -> dict[str, Any]:
    return {f: getattr(env, f) for f in env.__dataclass_fields__}


def _send_as(store: Store, user: str) -> list[str]:
    for info in repo.list_users(store, "smtp"):
        if info.username.lower() == user.lower():
            return list(info.send_as)
    return []
