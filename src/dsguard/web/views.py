"""Data shared by the pages and the API: the actions on a quarantined message, the lists.

Each action writes its audit entry here, so the page and the API cannot differ: release and
delete are audited by the repository (with the admin as actor), downloads and uploads here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dsguard.config import Config
from dsguard.quarantine import Released, release
from dsguard.store import repository as repo
from dsguard.store.db import Store
from dsguard.web.filters import DECISIONS, FRONT_DOORS, FilterError, choice, cursor, moment
from dsguard.web.sessions import Session

EVENTS_PAGE = 100
AUDIT_PAGE = 100


def release_message(config: Config, store: Store, qid: str, session: Session) -> Released:
    return release(store, config.gateway.spool_dir, qid, session.actor)


def delete_message(store: Store, qid: str, session: Session) -> bool:
    return repo.delete_quarantined(store, qid, session.actor)


def download_message(store: Store, qid: str, session: Session) -> repo.QuarantineItem | None:
    """The message with its raw bytes, audited as a download; None if unknown or deleted."""
    item = repo.get_quarantined(store, qid)
    if item is None or item.raw is None:
        return item
    repo.audit(
        store, actor=session.actor, action="download", target=qid, detail=f"{item.raw_size} bytes"
    )
    return item


def audit_upload(store: Store, session: Session, files: list[str], messages: int) -> None:
    names = ", ".join(files)
    repo.audit(
        store,
        actor=session.actor,
        action="upload",
        target="scan",
        detail=f"{len(files)} file(s), {messages} message(s): {names}",
    )


@dataclass(frozen=True, slots=True)
class EventFilters:
    decision: str | None = None
    front_door: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(
        cls,
        decision: str | None,
        front_door: str | None,
        since: str | datetime | None,
        until: str | datetime | None,
    ) -> EventFilters:
        return cls(
            decision=choice("decision", decision, DECISIONS),
            front_door=choice("front_door", front_door, FRONT_DOORS),
            since=moment("since", since),
            until=moment("until", until, end_of_day=True),
        )

    def page(
        self, store: Store, cursor_value: str | None, limit: int
    ) -> repo.Page[repo.EventRecord]:
        try:
            return repo.list_events(
                store,
                since=self.since,
                until=self.until,
                decision=self.decision,
                front_door=self.front_door,
                limit=limit,
                cursor=cursor(cursor_value),
            )
        except ValueError as exc:
            if isinstance(exc, FilterError):
                raise
            raise FilterError("cursor: invalid (start again from the first page)") from None


def audit_page(
    store: Store, cursor_value: str | None, target: str | None, limit: int
) -> repo.Page[repo.AuditEntry]:
    try:
        return repo.list_audit(store, limit, cursor(cursor_value), target=target)
    except ValueError as exc:
        if isinstance(exc, FilterError):
            raise
        raise FilterError("cursor: invalid (start again from the first page)") from None


def organization(config: Config) -> dict[str, Any]:
    org = config.organization
    source = config.source
    if not source.startswith("<"):
        source = str(Path(source).resolve())
    return {
        "config_file": source,
        "accepted_domains": list(org.accepted_domains),
        "reject_direct_send": org.reject_direct_send,
        "check_header_from": org.check_header_from,
        "home_countries": list(org.home_countries),
        "connectors": [
            {
                "name": c.name,
                "sender_ip_ranges": list(c.sender_ip_ranges),
                "tls_certificate_name": c.tls_certificate_name,
                "sender_domains": list(c.sender_domains),
            }
            for c in config.connectors
        ],
    }
