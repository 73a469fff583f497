"""Value types shared by every front door: envelope, attribution, findings, verdicts.

All types are frozen: a verdict built by the engine cannot be changed by an adapter on its way
out, and values can be passed between processes (``--jobs``) by pickling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

_C = TypeVar("_C", bound=type)
_FACTORY: Any = object()  # stands for "call the field's default_factory"


def quick_init(cls: _C) -> _C:
    """Give a frozen, slotted dataclass an ``__init__`` with the same signature and effect
    that stores the fields faster.

    A frozen dataclass's generated ``__init__`` stores each field through
    ``object.__setattr__``, looked up anew for every field (about 70 ns a field); this one
    calls each slot's own setter (about 25 ns). A scan builds some 150 fields of these types
    per message. Defaults and default factories behave as in the generated one; a class the
    generated code would treat differently (``__post_init__``, fields outside ``__init__``
    or keyword-only) is refused.
    """
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: not a slotted dataclass")
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(not f.init or f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: __init__ has more to do than store the fields")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    params: list[str] = []
    body: list[str] = []
    for i, f in enumerate(fields):
        namespace[f"_set{i}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{i}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _factory{i}()")
        else:
            params.append(f.name)
        body.append(f"    _set{i}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, namespace)  # noqa: S102 -- built from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    # As the generated one has them, for introspection (inspect.signature, get_type_hints).
    init.__annotations__ = {**{f.name: f.type for f in fields}, "return": None}
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class Level(StrEnum):
    """The verdict on one message."""

    CLEAN = "clean"
    SUSPICIOUS = "suspicious"
    MALICIOUS = "malicious"


class Action(StrEnum):
    """What the policy does with a message of a given verdict."""

    DELIVER = "deliver"
    TAG = "tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class EnvelopeOrigin(StrEnum):
    """How much of the envelope is first-hand.

    ``SMTP``: seen on the wire by our own front door (gateway, policyd, milter).
    ``HEADERS``: rebuilt from the receiving organisation's own stamps (a trusted hop was found).
    ``INFERRED``: rebuilt from the topmost hop without a configured or recognised receiver; the
    report says so because a sender could have written everything below the real receiver.
    ``NONE``: no hop at all (e.g. pasted headers without Received lines).
    """

    SMTP = "smtp"
    HEADERS = "headers"
    INFERRED = "inferred"
    NONE = "none"


@quick_init
@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str | None = None
    cipher: str | None = None
    # Names (SAN dNSName entries, else CN) of a client certificate that chained to a trusted CA.
    # Empty when the client sent no certificate or it did not verify.
    verified_peer_names: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class Envelope:
    """What the transport knows about one message (RFC 5321 envelope plus connection facts).

    ``mail_from`` is ``None`` when unknown and ``""`` for the null reverse-path ``<>``.
    For files this is rebuilt from the trusted hop only; ``evidence`` names the headers used.
    """

    origin: EnvelopeOrigin
    client_ip: str | None = None
    client_hostname: str | None = None
    helo: str | None = None
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    tls: TlsInfo | None = None
    auth_user: str | None = None
    country: str | None = None
    receiver: str | None = None
    # Exchange's own attribution stamp (X-MS-Exchange-Organization-AuthAs) when trusted.
    stamped_auth_as: str | None = None
    # Connector Exchange attributed the message to, when a trusted stamp says so.
    stamped_connector: str | None = None
    evidence: tuple[str, ...] = ()


class AttributionKind(StrEnum):
    AUTHENTICATED = "authenticated"
    CONNECTOR = "connector"
    ANONYMOUS = "anonymous"


@quick_init
@dataclass(frozen=True, slots=True)
class Attribution:
    """Who the sender is to the organisation (Microsoft: "attributed to a connector")."""

    kind: AttributionKind
    # Connector name for CONNECTOR, account for AUTHENTICATED.
    name: str | None = None
    # Human-readable: what established it ("client IP 192.0.2.10 in 192.0.2.0/24").
    reason: str = ""
    # Accepted domains a connector may send as; empty tuple means "no restriction given".
    sender_domains: tuple[str, ...] = ()

    def label(self) -> str:
        if self.kind is AttributionKind.ANONYMOUS:
            return "anonymous"
        return f"{self.kind.value}:{self.name}" if self.name else self.kind.value


@quick_init
@dataclass(frozen=True, slots=True)
class Finding:
    """One named observation. ``id`` is stable once released (see docs/findings.md)."""

    id: str
    score: float
    summary: str
    evidence: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class Iocs:
    """Indicators extracted from one message, deduplicated, in first-seen order."""

    ips: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    # URLs that came out of QR codes (also listed in ``urls``).
    qr_urls: tuple[str, ...] = ()


class RdsOutcome(StrEnum):
    """Outcome of the Reject Direct Send rule, independent of the configured mode."""

    NOT_APPLICABLE = "not_applicable"  # attributed, or sender not in an accepted domain
    WOULD_REJECT = "would_reject"


@quick_init
@dataclass(frozen=True, slots=True)
class RdsDecision:
    """The hard pre-result of the Reject Direct Send rule for one stage (P1 or P2)."""

    stage: str  # "P1" (envelope, at MAIL/RCPT) or "P2" (header From, at end of data)
    outcome: RdsOutcome
    enforced: bool  # True only when outcome is WOULD_REJECT and the mode is "on"
    reason: str = ""
    reply: str = ""  # the SMTP reply text to send when enforced

    @property
    def would_reject(self) -> bool:
        return self.outcome is RdsOutcome.WOULD_REJECT


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    level: Level
    score: float
    findings: tuple[Finding, ...]
    direct_send: bool
    attribution: Attribution
    action: Action
    iocs: Iocs = field(default_factory=Iocs)
    rds: tuple[RdsDecision, ...] = ()

    def finding_ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.findings)


@quick_init
@dataclass(frozen=True, slots=True)
class MessageSummary:
    """The few header values a report shows for a message (decoded, display-safe)."""

    message_id: str | None = None
    from_addr: str | None = None
    from_display: str | None = None
    to: tuple[str, ...] = ()
    subject: str | None = None
    date: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class ScanResult:
    """One message (or one unreadable input) of a ``dsguard scan`` run."""

    path: str
    # Position inside an mbox/multi-message file (0-based); None for single-message files.
    index: int | None = None
    summary: MessageSummary | None = None
    envelope: Envelope | None = None
    verdict: Verdict | None = None
    # Set when the input could not be read: one line naming the problem. No verdict then.
    error: str | None = None
    # Remarks the reader must see, e.g. "accepted domains inferred from recipients: contoso.com".
    notes: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return self.path if self.index is None else f"{self.path}#{self.index}"

    @property
    def flagged(self) -> bool:
        return self.verdict is not None and self.verdict.level is not Level.CLEAN
