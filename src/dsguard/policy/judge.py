"""The end-of-data decision shared by the front doors that see a message on the wire.

The SMTP gateway and the milter both call :func:`judge_message` once the data is complete:
incoming headers claiming to be ours are dropped, live SPF/DKIM/DMARC runs through the injected
resolver (when one is configured), the engine gives its verdict, and the P2 rule (header From)
is decided with the same guard in both: without a resolver nothing can prove an own-domain
From, and in a message that was cut at a size limit a DKIM body hash cannot verify, so there
P2 is recorded (an audit note), never enforced -- enforcing it would refuse legitimate
DKIM-signed mail. The caller maps the result to its own protocol (SMTP reply or milter action).

Synchronous on purpose (DNS, DKIM and the engine block): callers use a thread, or (the milter)
run it on the event loop only with every DNS answer cached and no attachment to decode.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsguard.auth.live import authenticate
from dsguard.auth.resolver import Resolver
from dsguard.auth.summary import AuthSummary
from dsguard.config import Config
from dsguard.engine import Engine
from dsguard.gateway.headers import strip_our_headers
from dsguard.mail.addresses import Mailbox
from dsguard.mail.message import ParsedMessage
from dsguard.model import Envelope, RdsDecision, Verdict

# The replies every front door gives for these outcomes (the P1/P2 refusals are Microsoft's
# text, in policy.rds). An internal fault is never a permanent 5xx (design contract).
TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
MALICIOUS_REJECT = "550 5.7.1 Message rejected as malicious by policy"
# Messages up to this size may be judged on an event loop (judge_on_loop): that saves the hand-
# off to a thread and back, two wake-ups per message. A larger one is parsed in a thread so the
# loop (every other session on it) never stalls on it.
INLINE_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the end-of-data stage decided about one message."""

    cleaned: bytes  # the message without header fields that claim to be ours
    msg: ParsedMessage
    header_from: Mailbox | None
    auth: AuthSummary
    ar_value: str | None  # our Authentication-Results value (None without a resolver)
    verdict: Verdict
    p2: RdsDecision | None
    p2_refused: bool  # refuse now with ``p2.reply``
    notes: tuple[str, ...]  # audit notes this stage adds (X-Dsguard-Audit)

    @property
    def p2_value(self) -> str:
        return self.p2.outcome.value if self.p2 else "unknown"


def first_from(msg: ParsedMessage) -> Mailbox | None:
    for fld in msg.from_fields:
        if fld.first is not None:
            return fld.first
    return None


def judge_message(
    engine: Engine,
    resolver: Resolver | None,
    config: Config,
    env: Envelope,
    raw: bytes,
    *,
    truncated: bool = False,
    size: int | None = None,
) -> Judgement:
    """Judge ``raw`` (received from ``env``); ``truncated``: only the first bytes were kept
    (``size`` is the full size), which the verdict reports as LIMIT_MESSAGE_SIZE."""
    judged = _judge(engine, resolver, config, env, raw, truncated, size, attachments=True)
    assert judged is not None
    return judged


def judge_without_attachments(
    engine: Engine,
    resolver: Resolver | None,
    config: Config,
    env: Envelope,
    raw: bytes,
    *,
    truncated: bool = False,
    size: int | None = None,
) -> Judgement | None:
    """:func:`judge_message`, or None (judging nothing) when the message has attachments:
    the engine decodes those (PDF, images) in a child process, which blocks. The milter judges
    mail without them on its event loop (with DNS answered from the cache only) and the rest
    in a thread."""
    return _judge(engine, resolver, config, env, raw, truncated, size, attachments=False)


@dataclass(frozen=True, slots=True)
class LoopAttempt:
    """What :func:`judge_on_loop` got: the judgement, or the exception the analysis raised."""

    judgement: Judgement | None
    error: Exception | None


def judge_on_loop(
    engine: Engine,
    resolver: Resolver | None,
    config: Config,
    env: Envelope,
    raw: bytes,
    *,
    truncated: bool = False,
    size: int | None = None,
) -> LoopAttempt | None:
    """:func:`judge_without_attachments` where nothing may block (an event loop): DNS is answered
    from the resolver's cache only. None when the message must be judged in a thread instead
    (over ``INLINE_MAX_BYTES``, an attachment for the decoder child, or a DNS answer not in the
    cache: the partial work is thrown away). The gateway and the milter both use it; what a
    caller does with ``error`` (answer it, or try again in a thread) is its own policy."""
    if len(raw) > INLINE_MAX_BYTES:
        return None
    judgement: Judgement | None = None
    error: Exception | None = None
    with Resolver.cache_only() as probe:
        try:
            judgement = judge_without_attachments(
                engine, resolver, config, env, raw, truncated=truncated, size=size
            )
        except Exception as exc:
            error = exc
    if probe.missed or (judgement is None and error is None):
        return None
    return LoopAttempt(judgement, error)


def _judge(
    engine: Engine,
    resolver: Resolver | None,
    config: Config,
    env: Envelope,
    raw: bytes,
    truncated: bool,
    size: int | None,
    *,
    attachments: bool,
) -> Judgement | None:
    authserv_id = config.gateway.hostname
    cleaned = strip_our_headers(raw, authserv_id, config.gateway.header_prefix)
    msg = ParsedMessage(cleaned, config.limits, truncated=truncated, size=size)
    if not attachments and msg.body.attachments:
        return None
    header_from = first_from(msg)
    auth: AuthSummary = AuthSummary(source="none")
    ar_value: str | None = None
    if resolver is not None:
        live = authenticate(
            cleaned,
            client_ip=env.client_ip or "",
            helo=env.helo or "",
            mail_from=env.mail_from or "",
            header_from_domain=header_from.domain if header_from else None,
            resolver=resolver,
            authserv_id=authserv_id,
        )
        auth = live.summary
        ar_value = auth.evidence  # authenticate() wrote our Authentication-Results value there
    verdict = engine.evaluate(msg, env, auth, accepted=engine.accepted)
    p2 = verdict.rds[1] if len(verdict.rds) > 1 else None
    notes: list[str] = []
    refused = False
    if p2 is not None and p2.enforced and not auth.known:
        notes.append(f"would refuse (P2, not enforced without DNS): {p2.reason}")
    elif p2 is not None and p2.enforced and truncated:
        notes.append(f"would refuse (P2, not enforced on a truncated message): {p2.reason}")
    elif p2 is not None and p2.enforced:
        refused = True
    elif p2 is not None and p2.would_reject and config.organization.reject_direct_send == "audit":
        notes.append(f"would refuse (P2): {p2.reason}")
    return Judgement(
        cleaned=cleaned,
        msg=msg,
        header_from=header_from,
        auth=auth,
        ar_value=ar_value,
        verdict=verdict,
        p2=p2,
        p2_refused=refused,
        notes=tuple(notes),
    )
