"""Reading and writing the store: events, quarantine, audit log, users.

Plain functions taking a :class:`~dsguard.store.db.Store`; each runs in its own transaction.
Every timestamp in and out is timezone-aware UTC (naive datetimes are refused). Lists use
keyset pagination — ``(time, id)`` of the last row, as an opaque cursor — so page 2,000 of
a 100,000-row quarantine costs the same index range scan as page 1.

SECURITY: almost every text value here was chosen by the sender of a hostile message
(subject, addresses, HELO, finding evidence). Text is cleaned before it is written — NUL
characters (PostgreSQL refuses them) and unpaired surrogates (from ``surrogateescape``
decoding; neither driver can encode them) are replaced, and each field is cut to a hard
length limit — so a crafted header can neither make the store raise nor bloat it. Search
strings from the web UI are bound parameters with LIKE wildcards escaped; cursors and
quarantine ids from URLs are validated and rejected with ``ValueError`` / ``None``.
Passwords are stored only as argon2id hashes; verifying an unknown user still costs one
argon2 verification so response time does not reveal which users exist.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import math
import re
import secrets
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute

from dsguard.model import Finding, Iocs
from dsguard.store.db import SQLITE_BUSY_TIMEOUT_MS, Store
from dsguard.store.models import (
    Account,
    Audit,
    Event,
    Quarantine,
    QuarantineBlob,
    QuarantineFinding,
    QuarantineRecipient,
)

__all__ = [
    "AuditEntry",
    "EventRecord",
    "Page",
    "QuarantineItem",
    "QuarantineSummary",
    "UserInfo",
    "add_user",
    "audit",
    "delete_quarantined",
    "event_counts",
    "get_quarantined",
    "list_audit",
    "list_events",
    "list_quarantine",
    "list_users",
    "mark_released",
    "quarantine_message",
    "record_event",
    "remove_user",
    "top_sources",
    "top_spoofed_senders",
    "verify_password",
]

T = TypeVar("T")

FRONT_DOORS = frozenset({"gateway", "policyd", "milter", "scan"})
RDS_OUTCOMES = frozenset({"would_reject", "not_applicable", "unknown"})
MODES = frozenset({"on", "off", "audit"})
DECISIONS = frozenset(
    {"refused", "accepted", "audited", "quarantined", "tagged", "delivered", "tempfail"}
)
QUARANTINE_STATUSES = frozenset({"held", "released", "deleted"})
USER_KINDS = frozenset({"smtp", "admin"})
BUCKETS = frozenset({"hour", "day"})
UserKind = Literal["smtp", "admin"]
Bucket = Literal["hour", "day"]

# Hard limits on stored text (characters). RFC 5321 4.5.3.1: a path is at most 256 octets;
# headers may be folded across many lines, so subjects get more room.
MAX_ADDRESS = 512
MAX_SHORT = 1_000  # HELO, IP, attribution, message-id, queue id, actor, target
MAX_SUBJECT = 2_000
MAX_TEXT = 10_000  # reasons, audit details, finding evidence
MAX_RECIPIENTS = 1_000  # more than Postfix's default smtpd_recipient_limit (1000) never helps
MAX_PAGE = 1_000
MAX_USERNAME = 256
MAX_PASSWORD = 4_096

_QID_RE = re.compile(r"[0-9a-f]{32}")
_HASHER = PasswordHasher()  # argon2id with argon2-cffi's RFC 9106 "low memory" profile


# ---------------------------------------------------------------------------------------------
# Return types


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list. Pass ``next_cursor`` back to get the next page (None: last page).

    ``total_estimate`` is the number of matching rows, counted on the first page only (it is
    None on later pages and for the event/audit lists, which can be very long).
    """

    items: list[T]
    next_cursor: str | None
    total_estimate: int | None = None


@dataclass(frozen=True, slots=True)
class QuarantineSummary:
    id: str
    received_at: datetime
    status: str
    mail_from: str
    header_from: str | None
    rcpt_to: tuple[str, ...]
    subject: str | None
    message_id: str | None
    verdict: str
    score: float
    finding_ids: tuple[str, ...]
    client_ip: str | None
    country: str | None
    attribution: str
    raw_size: int


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """Everything about one quarantined message. ``raw`` is None once it has been deleted."""

    id: str
    received_at: datetime
    status: str
    status_changed_at: datetime | None
    status_changed_by: str | None
    mail_from: str
    header_from: str | None
    rcpt_to: tuple[str, ...]
    client_ip: str | None
    helo: str | None
    country: str | None
    subject: str | None
    message_id: str | None
    verdict: str
    score: float
    findings: list[dict[str, Any]]
    iocs: dict[str, Any]
    attribution: str
    reason: str
    raw_size: int
    raw_sha256: str
    raw: bytes | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    at: datetime
    front_door: str
    client_ip: str | None
    helo: str | None
    country: str | None
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    header_from: str | None
    attribution: str
    p1: str
    p2: str
    mode: str
    decision: str
    verdict: str | None
    score: float | None
    finding_ids: tuple[str, ...]
    message_id: str | None
    subject: str | None
    queue_id: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: str


@dataclass(frozen=True, slots=True)
class UserInfo:
    username: str
    kind: str
    send_as: tuple[str, ...]
    created_at: datetime


# ---------------------------------------------------------------------------------------------
# Helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: naive datetime {value!r}; pass a timezone-aware datetime")
    return value.astimezone(UTC)


def _clean(value: str, limit: int) -> str:
    """Text safe for both backends: no NUL, no unpaired surrogates, at most ``limit`` chars."""
    if len(value) > limit:
        value = value[:limit]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _clean_opt(value: str | None, limit: int) -> str | None:
    return None if value is None else _clean(value, limit)


def _clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of ``value`` with every string cleaned; refuses absurd nesting."""
    if depth > 20:
        raise ValueError("JSON value nested more than 20 levels")
    if isinstance(value, str):
        return _clean(value, MAX_TEXT)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity; PostgreSQL refuses them
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {_clean(str(k), MAX_SHORT): _clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v, depth + 1) for v in value]
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _strings(values: Sequence[str], limit: int, name: str) -> list[str]:
    if isinstance(values, str):  # a lone value would otherwise become a list of characters
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    return [_clean(v, limit) for v in list(values)[:MAX_RECIPIENTS]]


def _addresses(values: Sequence[str]) -> list[str]:
    return _strings(values, MAX_ADDRESS, "rcpt_to")


def _choice(value: str, allowed: frozenset[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit: {limit} is not between 1 and {MAX_PAGE}")
    return limit


def _encode_cursor(at: datetime, row_id: int | str) -> str:
    raw = f"{at.astimezone(UTC).isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        stamp, row_id = text.split("|", 1)
        at = datetime.fromisoformat(stamp)
    except (ValueError, UnicodeError, binascii.Error):
        raise ValueError("invalid cursor") from None
    if at.tzinfo is None or not row_id or len(row_id) > 64:
        raise ValueError("invalid cursor")
    return at.astimezone(UTC), row_id


def _int_id(row_id: str) -> int:
    if not (row_id.isascii() and row_id.isdigit()) or len(row_id) > 18:
        raise ValueError("invalid cursor")
    return int(row_id)


def _qid_cursor(row_id: str) -> str:
    if not _QID_RE.fullmatch(row_id):
        raise ValueError("invalid cursor")
    return row_id


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not a finite number")
    return value


def _before(
    time_col: InstrumentedAttribute[datetime],
    id_col: InstrumentedAttribute[Any],
    at: datetime,
    row_id: int | str,
) -> ColumnElement[bool]:
    """Rows after the cursor in ``time DESC, id DESC`` order.

    Written as ``time <= t AND (time < t OR id < i)`` rather than a row-value comparison so
    both SQLite and PostgreSQL turn the leading condition into an index range.
    """
    return and_(time_col <= at, or_(time_col < at, id_col < row_id))


# ---------------------------------------------------------------------------------------------
# Events


def record_event(store: Store, **event: Any) -> int:
    """Append one front-door decision (the fields of :func:`_event_row`); returns its id."""
    row = _event_row(**event)
    with store.session() as session:
        session.add(row)
        session.flush()
        return row.id


def record_events(store: Store, events: Sequence[Mapping[str, Any]]) -> int:
    """Append several front-door decisions (each the keyword arguments of
    :func:`record_event`) in one transaction: one commit, one fsync, for a batch the event
    writer drained from its queue. All or nothing: a bad event raises before anything is
    written. Returns how many were written."""
    rows = [_event_values(**event) for event in events]
    if rows:
        # One Core executemany, not ORM objects through the unit of work: the ORM flush was
        # most of the event writer's CPU (a sixth of the gateway's interpreter time at a few
        # hundred decisions per second). Same columns, same validation (_event_values).
        with store.session() as session:
            session.connection().execute(insert(Event), rows)
    return len(rows)


def _event_row(**event: Any) -> Event:
    """The validated, size-capped row of one event (the fields of :func:`_event_values`)."""
    return Event(**_event_values(**event))


def _event_values(
    *,
    front_door: str,
    client_ip: str | None,
    helo: str | None,
    country: str | None,
    mail_from: str | None,
    rcpt_to: Sequence[str],
    header_from: str | None,
    attribution: str,
    p1: str,
    p2: str,
    mode: str,
    decision: str,
    verdict: str | None,
    score: float | None,
    finding_ids: Sequence[str],
    message_id: str | None,
    subject: str | None,
    queue_id: str | None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The validated, size-capped column values of one event."""
    return dict(
        at=_now() if at is None else _aware(at, "at"),
        front_door=_choice(front_door, FRONT_DOORS, "front_door"),
        client_ip=_clean_opt(client_ip, MAX_SHORT),
        helo=_clean_opt(helo, MAX_SHORT),
        country=_clean_opt(country, 8),
        mail_from=_clean_opt(mail_from, MAX_ADDRESS),
        rcpt_to=_addresses(rcpt_to),
        header_from=_clean_opt(header_from, MAX_ADDRESS),
        attribution=_clean(attribution, MAX_SHORT),
        p1=_choice(p1, RDS_OUTCOMES, "p1"),
        p2=_choice(p2, RDS_OUTCOMES, "p2"),
        mode=_choice(mode, MODES, "mode"),
        decision=_choice(decision, DECISIONS, "decision"),
        verdict=_clean_opt(verdict, 16),
        score=None if score is None else _finite(score, "score"),
        finding_ids=_strings(finding_ids, 64, "finding_ids"),
        message_id=_clean_opt(message_id, MAX_SHORT),
        subject=_clean_opt(subject, MAX_SUBJECT),
        queue_id=_clean_opt(queue_id, MAX_SHORT),
    )


def list_events(
    store: Store,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    decision: str | None = None,
    front_door: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[EventRecord]:
    """Events newest first; ``since`` inclusive, ``until`` exclusive."""
    _check_limit(limit)
    stmt = select(Event)
    if since is not None:
        stmt = stmt.where(Event.at >= _aware(since, "since"))
    if until is not None:
        stmt = stmt.where(Event.at < _aware(until, "until"))
    if decision is not None:
        stmt = stmt.where(Event.decision == _choice(decision, DECISIONS, "decision"))
    if front_door is not None:
        stmt = stmt.where(Event.front_door == _choice(front_door, FRONT_DOORS, "front_door"))
    if cursor is not None:
        at, row_id = _decode_cursor(cursor)
        stmt = stmt.where(_before(Event.at, Event.id, at, _int_id(row_id)))
    stmt = stmt.order_by(Event.at.desc(), Event.id.desc()).limit(limit + 1)
    with store.session(write=False) as session:
        rows = list(session.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_event_record(r) for r in rows]
    next_cursor = _encode_cursor(rows[-1].at, rows[-1].id) if more else None
    return Page(items, next_cursor)


def _event_record(row: Event) -> EventRecord:
    return EventRecord(
        id=row.id,
        at=row.at,
        front_door=row.front_door,
        client_ip=row.client_ip,
        helo=row.helo,
        country=row.country,
        mail_from=row.mail_from,
        rcpt_to=tuple(row.rcpt_to),
        header_from=row.header_from,
        attribution=row.attribution,
        p1=row.p1,
        p2=row.p2,
        mode=row.mode,
        decision=row.decision,
        verdict=row.verdict,
        score=row.score,
        finding_ids=tuple(row.finding_ids),
        message_id=row.message_id,
        subject=row.subject,
        queue_id=row.queue_id,
    )


def event_counts(
    store: Store, *, since: datetime, until: datetime, bucket: Bucket
) -> list[tuple[datetime, str, int]]:
    """Events per (UTC hour or day, decision) in ``[since, until)``, oldest bucket first.

    Only buckets with events are returned; the chart fills the gaps with zeros.
    """
    _choice(bucket, BUCKETS, "bucket")
    since, until = _aware(since, "since"), _aware(until, "until")
    if store.dialect == "postgresql":
        # timezone('UTC', timestamptz) -> timestamp in UTC, so day buckets do not follow the
        # server's TimeZone setting. The unit is a literal (validated above): with a bound
        # parameter, PostgreSQL would not see SELECT and GROUP BY as the same expression.
        start: ColumnElement[Any] = func.date_trunc(
            literal_column(f"'{bucket}'"), func.timezone("UTC", Event.at)
        )
    else:
        # SQLite stores "YYYY-MM-DD HH:MM:SS.ffffff" in UTC (see models.UtcDateTime).
        pattern = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
        start = func.strftime(literal_column(f"'{pattern}'"), Event.at)
    stmt = (
        select(start.label("bucket_start"), Event.decision, func.count())
        .where(Event.at >= since, Event.at < until)
        .group_by(start, Event.decision)
        .order_by(start, Event.decision)
    )
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
    return [(_bucket_time(value), decision, int(count)) for value, decision, count in rows]


def _bucket_time(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _spoof_attempt() -> ColumnElement[bool]:
    """The message claimed an accepted domain without attribution: Direct Send."""
    return or_(Event.p1 == "would_reject", Event.p2 == "would_reject")


def top_sources(
    store: Store, *, since: datetime, limit: int = 10
) -> list[tuple[str, str | None, int]]:
    """Client IPs with the most flagged events since ``since``: Direct Send attempts (P1 or P2
    would reject) or a suspicious/malicious verdict. Country is the latest one seen."""
    _check_limit(limit)
    flagged = or_(_spoof_attempt(), Event.verdict.in_(("suspicious", "malicious")))
    count = func.count().label("n")
    stmt = (
        select(Event.client_ip, func.max(Event.country), count)
        .where(Event.at >= _aware(since, "since"), Event.client_ip.is_not(None), flagged)
        .group_by(Event.client_ip)
        .order_by(count.desc(), Event.client_ip)
        .limit(limit)
    )
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
    return [(str(ip), country, int(n)) for ip, country, n in rows]


def top_spoofed_senders(store: Store, *, since: datetime, limit: int = 10) -> list[tuple[str, int]]:
    """Own-domain addresses most often forged since ``since`` (lower-cased): the header From
    when P2 would reject, else the envelope sender when P1 would reject."""
    _check_limit(limit)
    address = func.lower(
        case(
            (Event.p2 == "would_reject", Event.header_from),
            (Event.p1 == "would_reject", Event.mail_from),
        )
    ).label("address")
    count = func.count().label("n")
    stmt = (
        select(address, count)
        .where(Event.at >= _aware(since, "since"), _spoof_attempt())
        .group_by(address)
        .having(address.is_not(None))
        .order_by(count.desc(), address)
        .limit(limit)
    )
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
    return [(str(a), int(n)) for a, n in rows]


# ---------------------------------------------------------------------------------------------
# Quarantine


def _finding_dict(finding: Mapping[str, Any] | Finding) -> dict[str, Any]:
    if isinstance(finding, Finding):
        return {
            "id": finding.id,
            "score": finding.score,
            "summary": finding.summary,
            "evidence": finding.evidence,
        }
    if "id" not in finding:
        raise ValueError("findings: every finding needs an 'id'")
    return dict(finding)


def _iocs_dict(iocs: Mapping[str, Any] | Iocs) -> dict[str, Any]:
    if is_dataclass(iocs) and not isinstance(iocs, type):
        return {k: list(v) for k, v in asdict(iocs).items()}
    return dict(iocs)


def quarantine_message(
    store: Store,
    *,
    raw: bytes,
    mail_from: str,
    rcpt_to: Sequence[str],
    client_ip: str | None,
    helo: str | None,
    country: str | None,
    header_from: str | None,
    subject: str | None,
    message_id: str | None,
    verdict: str,
    score: float,
    findings: Sequence[Mapping[str, Any] | Finding],
    iocs: Mapping[str, Any] | Iocs,
    attribution: str,
    reason: str,
    at: datetime | None = None,
) -> str:
    """Hold a message. Returns its quarantine id (uuid4 hex). ``raw`` is stored zlib-compressed
    with the SHA-256 and size of the original bytes. ``findings``/``iocs`` may be the model
    types (:class:`~dsguard.model.Finding`, :class:`~dsguard.model.Iocs`) or plain dicts."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw must be bytes")
    raw = bytes(raw)
    finding_dicts = _clean_json([_finding_dict(f) for f in findings])
    recipients = _addresses(rcpt_to)
    qid = uuid.uuid4().hex
    # Compress before the transaction: keeps the SQLite write lock short.
    compressed = zlib.compress(raw, 6)
    row = Quarantine(
        id=qid,
        received_at=_now() if at is None else _aware(at, "at"),
        status="held",
        mail_from=_clean(mail_from, MAX_ADDRESS),
        header_from=_clean_opt(header_from, MAX_ADDRESS),
        rcpt_to=recipients,
        client_ip=_clean_opt(client_ip, MAX_SHORT),
        helo=_clean_opt(helo, MAX_SHORT),
        country=_clean_opt(country, 8),
        subject=_clean_opt(subject, MAX_SUBJECT),
        message_id=_clean_opt(message_id, MAX_SHORT),
        verdict=_clean(verdict, 16),
        score=_finite(score, "score"),
        findings=finding_dicts,
        iocs=_clean_json(_iocs_dict(iocs)),
        attribution=_clean(attribution, MAX_SHORT),
        reason=_clean(reason, MAX_TEXT),
        raw_size=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
    )
    row.blob = QuarantineBlob(quarantine_id=qid, compression="zlib", data=compressed)
    finding_ids = dict.fromkeys(_clean(str(f["id"]), 64) for f in finding_dicts)
    with store.session() as session:
        session.add(row)
        session.add_all(
            QuarantineRecipient(quarantine_id=qid, address=a)
            for a in dict.fromkeys(r.lower() for r in recipients)
        )
        session.add_all(QuarantineFinding(quarantine_id=qid, finding_id=f) for f in finding_ids)
    return qid


_SUMMARY_COLUMNS = (
    Quarantine.id,
    Quarantine.received_at,
    Quarantine.status,
    Quarantine.mail_from,
    Quarantine.header_from,
    Quarantine.rcpt_to,
    Quarantine.subject,
    Quarantine.message_id,
    Quarantine.verdict,
    Quarantine.score,
    Quarantine.findings,
    Quarantine.client_ip,
    Quarantine.country,
    Quarantine.attribution,
    Quarantine.raw_size,
)


def list_quarantine(
    store: Store,
    *,
    status: str | None = "held",
    verdict: str | None = None,
    finding: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    search: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[QuarantineSummary]:
    """Quarantined messages, newest first (ties broken by id), filtered.

    ``status=None`` lists every status. ``sender``: case-insensitive substring of the
    envelope or header From. ``recipient``: one exact address (case-insensitive).
    ``finding``: a finding id. ``since`` inclusive, ``until`` exclusive. ``search``:
    case-insensitive substring of subject, Message-ID or either sender. ``cursor`` comes from
    the previous page's ``next_cursor``; a malformed cursor raises ``ValueError``.
    """
    _check_limit(limit)
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(Quarantine.status == _choice(status, QUARANTINE_STATUSES, "status"))
    if verdict is not None:
        conditions.append(Quarantine.verdict == verdict)
    if finding is not None:
        conditions.append(
            Quarantine.id.in_(
                select(QuarantineFinding.quarantine_id).where(
                    QuarantineFinding.finding_id == finding
                )
            )
        )
    if recipient is not None:
        conditions.append(
            Quarantine.id.in_(
                select(QuarantineRecipient.quarantine_id).where(
                    QuarantineRecipient.address == recipient.strip().lower()
                )
            )
        )
    if sender:
        conditions.append(
            or_(
                Quarantine.mail_from.icontains(sender, autoescape=True),
                Quarantine.header_from.icontains(sender, autoescape=True),
            )
        )
    if search:
        conditions.append(
            or_(
                Quarantine.subject.icontains(search, autoescape=True),
                Quarantine.message_id.icontains(search, autoescape=True),
                Quarantine.mail_from.icontains(search, autoescape=True),
                Quarantine.header_from.icontains(search, autoescape=True),
            )
        )
    if since is not None:
        conditions.append(Quarantine.received_at >= _aware(since, "since"))
    if until is not None:
        conditions.append(Quarantine.received_at < _aware(until, "until"))

    page_conditions = list(conditions)
    if cursor is not None:
        at, row_id = _decode_cursor(cursor)
        page_conditions.append(
            _before(Quarantine.received_at, Quarantine.id, at, _qid_cursor(row_id))
        )
    stmt = (
        select(*_SUMMARY_COLUMNS)
        .where(*page_conditions)
        .order_by(Quarantine.received_at.desc(), Quarantine.id.desc())
        .limit(limit + 1)
    )
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
        total = None
        if cursor is None:
            total = session.scalar(select(func.count()).select_from(Quarantine).where(*conditions))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        QuarantineSummary(
            id=r.id,
            received_at=r.received_at,
            status=r.status,
            mail_from=r.mail_from,
            header_from=r.header_from,
            rcpt_to=tuple(r.rcpt_to),
            subject=r.subject,
            message_id=r.message_id,
            verdict=r.verdict,
            score=r.score,
            finding_ids=tuple(str(f.get("id")) for f in r.findings),
            client_ip=r.client_ip,
            country=r.country,
            attribution=r.attribution,
            raw_size=r.raw_size,
        )
        for r in rows
    ]
    next_cursor = _encode_cursor(items[-1].received_at, items[-1].id) if more else None
    return Page(items, next_cursor, total)


def get_quarantined(store: Store, qid: str) -> QuarantineItem | None:
    """One quarantined message with its raw bytes (None if deleted); None if no such id.

    Raises ``ValueError`` if the stored bytes do not inflate to the recorded size.
    """
    if not isinstance(qid, str) or not _QID_RE.fullmatch(qid):
        return None
    with store.session(write=False) as session:
        row = session.get(Quarantine, qid)
        if row is None:
            return None
        blob = session.get(QuarantineBlob, qid)
        raw = None if blob is None else _decompress(blob.data, row.raw_size)
        return QuarantineItem(
            id=row.id,
            received_at=row.received_at,
            status=row.status,
            status_changed_at=row.status_changed_at,
            status_changed_by=row.status_changed_by,
            mail_from=row.mail_from,
            header_from=row.header_from,
            rcpt_to=tuple(row.rcpt_to),
            client_ip=row.client_ip,
            helo=row.helo,
            country=row.country,
            subject=row.subject,
            message_id=row.message_id,
            verdict=row.verdict,
            score=row.score,
            findings=list(row.findings),
            iocs=dict(row.iocs),
            attribution=row.attribution,
            reason=row.reason,
            raw_size=row.raw_size,
            raw_sha256=row.raw_sha256,
            raw=raw,
        )


def _decompress(data: bytes, size: int) -> bytes:
    # Bounded by the recorded size: a corrupted or tampered blob cannot inflate without limit.
    inflater = zlib.decompressobj()
    raw = inflater.decompress(data, size + 1)
    if len(raw) != size or not inflater.eof:
        raise ValueError("quarantined message is corrupt (size mismatch)")
    return raw


def mark_released(store: Store, qid: str, actor: str) -> bool:
    """Mark a held message released (the caller delivers it). False unless it was held."""
    return _change_status(store, qid, actor, new="released", action="release")


def delete_quarantined(store: Store, qid: str, actor: str) -> bool:
    """Delete a message's raw bytes; its row stays as a tombstone with status ``deleted``.

    False if there is no such message or it was already deleted. On SQLite the WAL is then
    checkpointed so the bytes leave the disk too, not only the live database
    (``secure_delete`` zeroes freed pages); PostgreSQL reclaims them at the next VACUUM.
    """
    changed = _change_status(store, qid, actor, new="deleted", action="delete")
    if changed and store.dialect == "sqlite":
        _sqlite_checkpoint(store)
    return changed


def _change_status(store: Store, qid: str, actor: str, *, new: str, action: str) -> bool:
    if not isinstance(qid, str) or not _QID_RE.fullmatch(qid):
        return False
    from_statuses = ("held",) if new == "released" else ("held", "released")
    now = _now()
    actor = _clean(actor, MAX_SHORT)
    with store.session() as session:
        result = session.execute(
            update(Quarantine)
            .where(Quarantine.id == qid, Quarantine.status.in_(from_statuses))
            .values(status=new, status_changed_at=now, status_changed_by=actor)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        if new == "deleted":
            session.execute(delete(QuarantineBlob).where(QuarantineBlob.quarantine_id == qid))
        session.add(Audit(at=now, actor=actor, action=action, target=qid, detail=""))
    return True


def _sqlite_checkpoint(store: Store) -> None:
    """Best effort: copy the WAL into the database and truncate it, waiting at most 2 s for
    readers. A busy checkpoint is harmless; the WAL is recycled later anyway."""
    connection = store.engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout = 2000")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.fetchall()
        finally:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------
# Audit log


def audit(store: Store, *, actor: str, action: str, target: str, detail: str = "") -> None:
    """Record who did what to which object (message id, user name, setting)."""
    with store.session() as session:
        session.add(
            Audit(
                at=_now(),
                actor=_clean(actor, MAX_SHORT),
                action=_clean(action, 32),
                target=_clean(target, MAX_SHORT),
                detail=_clean(detail, MAX_TEXT),
            )
        )


def list_audit(
    store: Store, limit: int = 100, cursor: str | None = None, *, target: str | None = None
) -> Page[AuditEntry]:
    """Audit entries newest first; ``target`` narrows to one object (e.g. a quarantine id)."""
    _check_limit(limit)
    stmt = select(Audit)
    if target is not None:
        stmt = stmt.where(Audit.target == target)
    if cursor is not None:
        _, row_id = _decode_cursor(cursor)
        stmt = stmt.where(Audit.id < _int_id(row_id))
    # Ids grow in insertion order; ordering by id alone keeps this an index-only walk.
    stmt = stmt.order_by(Audit.id.desc()).limit(limit + 1)
    with store.session(write=False) as session:
        rows = list(session.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [AuditEntry(r.id, r.at, r.actor, r.action, r.target, r.detail) for r in rows]
    next_cursor = _encode_cursor(rows[-1].at, rows[-1].id) if more else None
    return Page(items, next_cursor)


# ---------------------------------------------------------------------------------------------
# Users


def _check_user(username: str, kind: str) -> None:
    _choice(kind, USER_KINDS, "kind")
    if not username or len(username) > MAX_USERNAME:
        raise ValueError(f"username must be 1 to {MAX_USERNAME} characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in username) or username != username.strip():
        raise ValueError("username must not contain control characters or surrounding spaces")


def _check_password(password: str) -> None:
    if not password:
        raise ValueError("password must not be empty")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"password longer than {MAX_PASSWORD} characters")


def add_user(
    store: Store,
    username: str,
    password: str,
    *,
    kind: UserKind,
    send_as: Sequence[str] = (),
) -> None:
    """Create a user with an argon2id password hash. ``ValueError`` if it already exists.

    ``send_as`` (SMTP users): the addresses or domains the user may use as sender.
    """
    _check_user(username, kind)
    _check_password(password)
    if isinstance(send_as, str):
        raise TypeError("send_as must be a sequence of addresses or domains, not a string")
    allowed = [_clean(s.strip().lower(), MAX_ADDRESS) for s in send_as if s.strip()]
    password_hash = _HASHER.hash(password)  # slow on purpose; outside the transaction
    now = _now()
    try:
        with store.session() as session:
            exists = session.scalar(
                select(Account.id).where(Account.kind == kind, Account.username == username)
            )
            if exists is not None:
                raise ValueError(f"{kind} user {username!r} already exists")
            session.add(
                Account(
                    kind=kind,
                    username=username,
                    password_hash=password_hash,
                    send_as=allowed,
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError:  # another process added the same user in between
        raise ValueError(f"{kind} user {username!r} already exists") from None


def remove_user(store: Store, username: str, kind: UserKind) -> bool:
    """Delete a user; False if there was none."""
    _choice(kind, USER_KINDS, "kind")
    with store.session() as session:
        result = session.execute(
            delete(Account).where(Account.kind == kind, Account.username == username)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def list_users(store: Store, kind: UserKind) -> list[UserInfo]:
    _choice(kind, USER_KINDS, "kind")
    with store.session(write=False) as session:
        rows = session.scalars(
            select(Account).where(Account.kind == kind).order_by(Account.username)
        ).all()
        return [_user_info(r) for r in rows]


def _user_info(row: Account) -> UserInfo:
    return UserInfo(row.username, row.kind, tuple(row.send_as), row.created_at)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _HASHER.hash(secrets.token_urlsafe(16))


def verify_password(store: Store, username: str, password: str, kind: UserKind) -> UserInfo | None:
    """The user if the password is right, else None (unknown user, wrong password, bad hash).

    An unknown user costs one argon2 verification against a dummy hash, like a known one, so
    timing does not tell which accounts exist. A hash made with older parameters is replaced
    by one with the current parameters after a successful check.
    """
    _choice(kind, USER_KINDS, "kind")
    with store.session(write=False) as session:
        row = session.scalars(
            select(Account).where(Account.kind == kind, Account.username == username)
        ).one_or_none()
    if row is None or not password or len(password) > MAX_PASSWORD:
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_dummy_hash(), (password or "-")[:MAX_PASSWORD])
        return None
    try:
        _HASHER.verify(row.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if _HASHER.check_needs_rehash(row.password_hash):
        new_hash = _HASHER.hash(password)
        with store.session() as session:
            # Compare-and-set: a concurrent password change wins over this rehash.
            session.execute(
                update(Account)
                .where(Account.id == row.id, Account.password_hash == row.password_hash)
                .values(password_hash=new_hash, updated_at=_now())
                .execution_options(synchronize_session=False)
            )
    return _user_info(row)
