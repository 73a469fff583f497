"""Query-string filters of the list pages and the API, validated in one place.

SECURITY: every value comes from a URL anyone can craft. Text filters are length-capped and
refused when they hold control characters (PostgreSQL refuses NUL in text; nothing legitimate
needs them); the store binds them as parameters with LIKE wildcards escaped. Dates out of
range and malformed cursors are a 400 with one line, never an exception further down.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta

from dsguard.store import repository as repo
from dsguard.store.db import Store

MAX_FILTER_CHARS = 512
STATUSES = ("held", "released", "deleted", "all")
VERDICTS = ("malicious", "suspicious", "clean")
DECISIONS = tuple(sorted(repo.DECISIONS))
FRONT_DOORS = tuple(sorted(repo.FRONT_DOORS))
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_FINDING_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


class FilterError(ValueError):
    """A filter value that cannot be used; the message names the parameter."""


def text(name: str, value: str | None, limit: int = MAX_FILTER_CHARS) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        raise FilterError(f"{name}: longer than {limit} characters")
    if _CONTROL.search(value):
        raise FilterError(f"{name}: control characters are not allowed")
    return value


def choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    value = text(name, value)
    if value is not None and value not in allowed:
        raise FilterError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def finding_id(value: str | None) -> str | None:
    value = text("finding", value, 64)
    if value is not None and not _FINDING_ID.fullmatch(value):
        raise FilterError("finding: a finding id is letters, digits and _")
    return value.upper() if value else None


def moment(name: str, value: str | datetime | None, *, end_of_day: bool = False) -> datetime | None:
    """A date (``YYYY-MM-DD``; ``end_of_day``: the day after it, for exclusive upper bounds)
    or an ISO 8601 date-time (naive = UTC), as an aware UTC datetime."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            value = value.strip()
            if len(value) == 10:
                day = date.fromisoformat(value)
                parsed = datetime.combine(day, time.min, tzinfo=UTC)
                return parsed + timedelta(days=1) if end_of_day else parsed
            value = datetime.fromisoformat(value)
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise FilterError(f"{name}: not a date (YYYY-MM-DD) or date-time (ISO 8601)") from None


def cursor(value: str | None) -> str | None:
    value = text("cursor", value, 200)
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise FilterError("cursor: invalid")
    return value


@dataclass(frozen=True, slots=True)
class QuarantineFilters:
    status: str = "held"
    verdict: str | None = None
    finding: str | None = None
    sender: str | None = None
    recipient: str | None = None
    q: str | None = None
    since: str | None = None  # as typed, for the form and the links
    until: str | None = None

    @classmethod
    def parse(cls, **raw: str | None) -> QuarantineFilters:
        status = choice("status", raw.get("status"), STATUSES) or "held"
        filters = cls(
            status=status,
            verdict=choice("verdict", raw.get("verdict"), VERDICTS),
            finding=finding_id(raw.get("finding")),
            sender=text("sender", raw.get("sender")),
            recipient=text("recipient", raw.get("recipient")),
            q=text("q", raw.get("q")),
            since=text("since", raw.get("since"), 40),
            until=text("until", raw.get("until"), 40),
        )
        filters.window()  # validates the dates now
        return filters

    def window(self) -> tuple[datetime | None, datetime | None]:
        return moment("since", self.since), moment("until", self.until, end_of_day=True)

    def list_page(
        self, store: Store, *, limit: int, cursor_value: str | None
    ) -> repo.Page[repo.QuarantineSummary]:
        since, until = self.window()
        try:
            return repo.list_quarantine(
                store,
                status=None if self.status == "all" else self.status,
                verdict=self.verdict,
                finding=self.finding,
                sender=self.sender,
                recipient=self.recipient,
                since=since,
                until=until,
                search=self.q,
                limit=limit,
                cursor=cursor_value,
            )
        except ValueError:
            raise FilterError("cursor: invalid (start again from the first page)") from None

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for links that keep them)."""
        values = {k: v for k, v in asdict(self).items() if v}
        if values.get("status") == "held":
            del values["status"]
        return values

    @property
    def active(self) -> bool:
        return bool(self.params())
