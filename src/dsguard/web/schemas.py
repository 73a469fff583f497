"""The JSON shapes of the ``/api`` endpoints (they become the OpenAPI document).

Values are exactly what the store holds (attacker-written text included): JSON escaping makes
them inert, and a client that displays them must escape them itself, as the pages do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorOut(_Out):
    detail: str


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=4096)


class SessionOut(_Out):
    username: str
    csrf_token: str = Field(description="Send it as the X-CSRF-Token header of every POST/DELETE.")
    idle_timeout_seconds: float
    expires_in_seconds: float


class FindingOut(_Out):
    id: str
    score: float | None = None
    summary: str = ""
    evidence: str = ""


class QuarantineSummaryOut(_Out):
    id: str
    received_at: datetime
    status: str
    mail_from: str
    header_from: str | None
    rcpt_to: list[str]
    subject: str | None
    message_id: str | None
    verdict: str
    score: float
    finding_ids: list[str]
    client_ip: str | None
    country: str | None
    attribution: str
    raw_size: int


class QuarantinePageOut(_Out):
    items: list[QuarantineSummaryOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null: last page."
    )
    total_estimate: int | None = Field(description="Matching messages (first page only).")


class HeaderOut(_Out):
    name: str
    value: str


class AttachmentOut(_Out):
    filename: str
    content_type: str
    size: int


class AuditOut(_Out):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: str


class QuarantineDetailOut(QuarantineSummaryOut):
    status_changed_at: datetime | None
    status_changed_by: str | None
    helo: str | None
    reason: str
    raw_sha256: str
    raw_available: bool
    findings: list[FindingOut]
    iocs: dict[str, list[str]]
    headers: list[HeaderOut]
    attachments: list[AttachmentOut]
    audit: list[AuditOut]


class ReleaseOut(_Out):
    id: str
    status: str
    spool_id: str


class DeleteOut(_Out):
    id: str
    status: str


class EventOut(_Out):
    id: int
    at: datetime
    front_door: str
    client_ip: str | None
    helo: str | None
    country: str | None
    mail_from: str | None
    rcpt_to: list[str]
    header_from: str | None
    attribution: str
    p1: str
    p2: str
    mode: str
    decision: str
    verdict: str | None
    score: float | None
    finding_ids: list[str]
    message_id: str | None
    subject: str | None
    queue_id: str | None


class EventPageOut(_Out):
    items: list[EventOut]
    next_cursor: str | None


class AuditPageOut(_Out):
    items: list[AuditOut]
    next_cursor: str | None


class BucketOut(_Out):
    start: datetime
    decision: str
    count: int


class SourceOut(_Out):
    ip: str
    country: str | None
    count: int


class SpoofedOut(_Out):
    address: str
    count: int


class ConnectorOut(_Out):
    name: str
    sender_ip_ranges: list[str]
    tls_certificate_name: str | None
    sender_domains: list[str]


class OrganizationOut(_Out):
    config_file: str
    accepted_domains: list[str]
    reject_direct_send: str
    check_header_from: bool
    home_countries: list[str]
    connectors: list[ConnectorOut]


class DashboardOut(_Out):
    range: str
    since: datetime
    until: datetime
    bucket: str
    direct_send: list[BucketOut] = Field(
        description="Direct Send attempts per bucket and decision."
    )
    direct_send_total: int
    decisions: dict[str, int]
    verdicts: dict[str, int]
    quarantine: dict[str, int]
    top_sources: list[SourceOut]
    top_spoofed_senders: list[SpoofedOut]
    organization: OrganizationOut


class ScanReportOut(_Out):
    schema_: int = Field(alias="schema", description="The --format json schema version.")
    results: list[dict[str, Any]] = Field(
        description="One object per message, as dsguard scan --format json."
    )
    summary: dict[str, Any]
