"""The dashboard's figures, read from the store.

The lists come from :mod:`dsguard.store.repository` (top sources, top spoofed senders); the
counts the repository has no function for are small aggregate queries here, each an index
range scan on ``event.at`` (``ix_event_at``) or a count over the quarantine status index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, literal_column, or_, select

from dsguard.intel.geo import country_of
from dsguard.store import repository as repo
from dsguard.store.db import Store
from dsguard.store.models import Event, Quarantine

Bucket = Literal["hour", "day"]

# Range name -> (length, bucket).
RANGES: dict[str, tuple[timedelta, Bucket]] = {
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "hour"),
    "30d": (timedelta(days=30), "day"),
}
DEFAULT_RANGE = "7d"
TOP_N = 10


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    since: datetime
    until: datetime
    bucket: Bucket

    @classmethod
    def ending_now(cls, name: str, now: datetime | None = None) -> Window:
        length, bucket = RANGES[name]
        now = (now or datetime.now(UTC)).astimezone(UTC)
        step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
        floor = now.replace(minute=0, second=0, microsecond=0)
        if bucket == "day":
            floor = floor.replace(hour=0)
        until = floor + step  # the current (partial) bucket is the last one shown
        return cls(name, until - length, until, bucket)


@dataclass(frozen=True, slots=True)
class Source:
    ip: str
    country: str | None
    count: int


@dataclass(frozen=True, slots=True)
class Dashboard:
    window: Window
    direct_send: list[tuple[datetime, str, int]]  # (bucket start, decision, count)
    decisions: dict[str, int]  # every event in the window, by decision
    verdicts: dict[str, int]  # every event in the window, by verdict ("none": no content)
    quarantine: dict[str, int]  # all quarantined messages by status
    top_sources: list[Source]
    top_spoofed: list[tuple[str, int]]

    @property
    def direct_send_total(self) -> int:
        return sum(n for _start, _decision, n in self.direct_send)


def dashboard(store: Store, window: Window) -> Dashboard:
    sources = [
        Source(ip, country or country_of(ip), n)
        for ip, country, n in repo.top_sources(store, since=window.since, limit=TOP_N)
    ]
    return Dashboard(
        window=window,
        direct_send=direct_send_counts(store, window),
        decisions=_grouped(store, Event.decision, window),
        verdicts=_grouped(store, func.coalesce(Event.verdict, "none"), window),
        quarantine=quarantine_counts(store),
        top_sources=sources,
        top_spoofed=repo.top_spoofed_senders(store, since=window.since, limit=TOP_N),
    )


def _spoof_attempt() -> ColumnElement[bool]:
    # The same definition as the repository's top lists: P1 or P2 would reject (Direct Send).
    return or_(Event.p1 == "would_reject", Event.p2 == "would_reject")


def _bucket_start(store: Store, bucket: Bucket) -> ColumnElement[Any]:
    if store.dialect == "postgresql":
        # UTC buckets whatever the server's TimeZone; the unit is a literal from RANGES.
        return func.date_trunc(literal_column(f"'{bucket}'"), func.timezone("UTC", Event.at))
    # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff" in UTC (store.models.UtcDateTime).
    pattern = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
    return func.strftime(literal_column(f"'{pattern}'"), Event.at)


def direct_send_counts(store: Store, window: Window) -> list[tuple[datetime, str, int]]:
    """Direct Send attempts per bucket and decision (refused, audited, quarantined...)."""
    start = _bucket_start(store, window.bucket)
    stmt = (
        select(start, Event.decision, func.count())
        .where(Event.at >= window.since, Event.at < window.until, _spoof_attempt())
        .group_by(start, Event.decision)
        .order_by(start)
    )
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
    return [(_as_utc(value), str(decision), int(n)) for value, decision, n in rows]


def _grouped(store: Store, column: Any, window: Window) -> dict[str, int]:
    stmt = (
        select(column, func.count())
        .where(Event.at >= window.since, Event.at < window.until)
        .group_by(column)
    )
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
    return {str(key): int(n) for key, n in sorted(rows, key=lambda r: -int(r[1]))}


def quarantine_counts(store: Store) -> dict[str, int]:
    stmt = select(Quarantine.status, func.count()).group_by(Quarantine.status)
    with store.session(write=False) as session:
        rows = session.execute(stmt).all()
    counts = {"held": 0, "released": 0, "deleted": 0}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
