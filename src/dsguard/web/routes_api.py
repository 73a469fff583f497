"""The JSON API under ``/api``: the same data and actions as the pages.

Authentication is the session cookie (``POST /api/session``); every POST/DELETE also needs the
``X-CSRF-Token`` header. Errors are ``{"detail": "..."}`` with the status saying what kind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, HTTPException, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from dsguard.quarantine import NotFoundError, ReleaseError
from dsguard.store import repository as repo
from dsguard.web import stats
from dsguard.web.body import MAX_HEADER_CHARS, MAX_HEADERS
from dsguard.web.context import context_of
from dsguard.web.filters import QuarantineFilters
from dsguard.web.routes_pages import _session, eml_response, read_uploads
from dsguard.web.scanning import UploadError
from dsguard.web.schemas import (
    AuditOut,
    AuditPageOut,
    DashboardOut,
    DeleteOut,
    ErrorOut,
    EventOut,
    EventPageOut,
    QuarantineDetailOut,
    QuarantinePageOut,
    QuarantineSummaryOut,
    ReleaseOut,
    ScanReportOut,
)
from dsguard.web.views import (
    EventFilters,
    audit_page,
    audit_upload,
    delete_message,
    organization,
    release_message,
)

router = APIRouter(prefix="/api")

QID = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Quarantine id (32 hex digits).")]
Text = Annotated[str | None, Query(max_length=512)]
Cursor = Annotated[
    str | None, Query(max_length=200, description="next_cursor of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=500)]
E400 = {"model": ErrorOut, "description": "A filter or cursor that cannot be used."}
E401 = {"model": ErrorOut, "description": "Not signed in."}
E403 = {"model": ErrorOut, "description": "CSRF token missing or wrong, or a cross-site request."}
E404 = {"model": ErrorOut, "description": "No such message."}
E409 = {"model": ErrorOut, "description": "The message is not in a state that allows this."}


@router.get(
    "/quarantine",
    tags=["quarantine"],
    response_model=QuarantinePageOut,
    responses={400: E400, 401: E401},
)
def list_quarantine(
    request: Request,
    status: Literal["held", "released", "deleted", "all"] = "held",
    verdict: Literal["malicious", "suspicious", "clean"] | None = None,
    finding: Annotated[str | None, Query(max_length=64)] = None,
    sender: Text = None,
    recipient: Text = None,
    q: Text = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> QuarantinePageOut:
    """Quarantined messages, newest first, filtered; keyset-paginated with ``cursor``."""
    filters = QuarantineFilters.parse(
        status=status,
        verdict=verdict,
        finding=finding,
        sender=sender,
        recipient=recipient,
        q=q,
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
    )
    page = filters.list_page(context_of(request).store, limit=limit, cursor_value=cursor or None)
    return QuarantinePageOut(
        items=[_summary(i) for i in page.items],
        next_cursor=page.next_cursor,
        total_estimate=page.total_estimate,
    )


def _summary(item: repo.QuarantineSummary) -> QuarantineSummaryOut:
    return QuarantineSummaryOut(
        id=item.id,
        received_at=item.received_at,
        status=item.status,
        mail_from=item.mail_from,
        header_from=item.header_from,
        rcpt_to=list(item.rcpt_to),
        subject=item.subject,
        message_id=item.message_id,
        verdict=item.verdict,
        score=item.score,
        finding_ids=list(item.finding_ids),
        client_ip=item.client_ip,
        country=item.country,
        attribution=item.attribution,
        raw_size=item.raw_size,
    )


@router.get(
    "/quarantine/{qid}",
    tags=["quarantine"],
    response_model=QuarantineDetailOut,
    responses={401: E401, 404: E404},
)
def get_message(request: Request, qid: QID) -> QuarantineDetailOut:
    """One message: envelope, findings with evidence, IOCs, headers, attachments, audit trail."""
    from dsguard.mail.message import ParsedMessage

    context = context_of(request)
    item = repo.get_quarantined(context.store, qid)
    if item is None:
        raise HTTPException(404, "no such message in the quarantine")
    headers: list[dict[str, str]] = []
    attachments: list[dict[str, Any]] = []
    if item.raw is not None:
        parsed = ParsedMessage(item.raw, context.config.limits)
        headers = [
            {"name": h.name, "value": h.value[:MAX_HEADER_CHARS]}
            for h in parsed.headers[:MAX_HEADERS]
        ]
        attachments = [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size}
            for a in parsed.body.attachments[:100]
        ]
    audit = repo.list_audit(context.store, 100, target=qid).items
    return QuarantineDetailOut.model_validate(
        {
            **_summary(
                repo.QuarantineSummary(
                    id=item.id,
                    received_at=item.received_at,
                    status=item.status,
                    mail_from=item.mail_from,
                    header_from=item.header_from,
                    rcpt_to=item.rcpt_to,
                    subject=item.subject,
                    message_id=item.message_id,
                    verdict=item.verdict,
                    score=item.score,
                    finding_ids=tuple(str(f.get("id")) for f in item.findings),
                    client_ip=item.client_ip,
                    country=item.country,
                    attribution=item.attribution,
                    raw_size=item.raw_size,
                )
            ).model_dump(),
            "status_changed_at": item.status_changed_at,
            "status_changed_by": item.status_changed_by,
            "helo": item.helo,
            "reason": item.reason,
            "raw_sha256": item.raw_sha256,
            "raw_available": item.raw is not None,
            "findings": [_finding(f) for f in item.findings],
            "iocs": {
                k: [str(v) for v in vs] for k, vs in item.iocs.items() if isinstance(vs, list)
            },
            "headers": headers,
            "attachments": attachments,
            "audit": [_audit(a) for a in audit],
        }
    )


def _finding(raw: dict[str, Any]) -> dict[str, Any]:
    score = raw.get("score")
    return {
        "id": str(raw.get("id", "")),
        "score": float(score) if isinstance(score, int | float) else None,
        "summary": str(raw.get("summary") or ""),
        "evidence": str(raw.get("evidence") or ""),
    }


def _audit(entry: repo.AuditEntry) -> AuditOut:
    return AuditOut(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        detail=entry.detail,
    )


@router.get(
    "/quarantine/{qid}/raw",
    tags=["quarantine"],
    responses={
        200: {"content": {"message/rfc822": {}}, "description": "The message as received."},
        401: E401,
        404: E404,
        410: {"model": ErrorOut, "description": "Deleted: only the record remains."},
    },
)
def download(request: Request, qid: QID) -> Response:
    """The raw message (.eml) as an attachment; audited as a download."""
    return eml_response(request, qid)


@router.post(
    "/quarantine/{qid}/release",
    tags=["quarantine"],
    response_model=ReleaseOut,
    responses={401: E401, 403: E403, 404: E404, 409: E409},
)
def release(request: Request, qid: QID) -> ReleaseOut:
    """Release: queue the message in the gateway's spool for the downstream server."""
    context = context_of(request)
    try:
        released = release_message(context.config, context.store, qid, _session(request))
    except NotFoundError:
        raise HTTPException(404, "no such message in the quarantine") from None
    except ReleaseError as exc:
        raise HTTPException(409, str(exc)) from None
    return ReleaseOut(id=qid, status="released", spool_id=released.spool_id)


@router.delete(
    "/quarantine/{qid}",
    tags=["quarantine"],
    response_model=DeleteOut,
    responses={401: E401, 403: E403, 404: E404, 409: E409},
)
def delete(request: Request, qid: QID) -> DeleteOut:
    """Delete the message bytes; the record stays (status ``deleted``) for the audit log."""
    context = context_of(request)
    if not delete_message(context.store, qid, _session(request)):
        if repo.get_quarantined(context.store, qid) is None:
            raise HTTPException(404, "no such message in the quarantine")
        raise HTTPException(409, "the message was deleted already")
    return DeleteOut(id=qid, status="deleted")


@router.get(
    "/events", tags=["events"], response_model=EventPageOut, responses={400: E400, 401: E401}
)
def list_events(
    request: Request,
    decision: Literal[
        "refused", "accepted", "audited", "quarantined", "tagged", "delivered", "tempfail"
    ]
    | None = None,
    front_door: Literal["gateway", "policyd", "milter", "scan"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> EventPageOut:
    """Front-door decisions (gateway, policy server, milter), newest first."""
    filters = EventFilters.parse(decision, front_door, since, until)
    page = filters.page(context_of(request).store, cursor or None, limit)
    return EventPageOut(
        items=[EventOut.model_validate(_event(e)) for e in page.items], next_cursor=page.next_cursor
    )


def _event(e: repo.EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "front_door": e.front_door,
        "client_ip": e.client_ip,
        "helo": e.helo,
        "country": e.country,
        "mail_from": e.mail_from,
        "rcpt_to": list(e.rcpt_to),
        "header_from": e.header_from,
        "attribution": e.attribution,
        "p1": e.p1,
        "p2": e.p2,
        "mode": e.mode,
        "decision": e.decision,
        "verdict": e.verdict,
        "score": e.score,
        "finding_ids": list(e.finding_ids),
        "message_id": e.message_id,
        "subject": e.subject,
        "queue_id": e.queue_id,
    }


@router.get("/dashboard", tags=["dashboard"], response_model=DashboardOut, responses={401: E401})
def dashboard(
    request: Request,
    time_range: Annotated[Literal["24h", "7d", "30d"], Query(alias="range")] = "7d",
) -> DashboardOut:
    """Direct Send attempts over time, decisions, verdicts, top sources and spoofed senders,
    quarantine counts, and the organisation settings in force."""
    context = context_of(request)
    window = stats.Window.ending_now(time_range)
    figures = stats.dashboard(context.store, window)
    return DashboardOut.model_validate(
        {
            "range": time_range,
            "since": window.since,
            "until": window.until,
            "bucket": window.bucket,
            "direct_send": [
                {"start": start, "decision": decision, "count": n}
                for start, decision, n in figures.direct_send
            ],
            "direct_send_total": figures.direct_send_total,
            "decisions": figures.decisions,
            "verdicts": figures.verdicts,
            "quarantine": figures.quarantine,
            "top_sources": [
                {"ip": s.ip, "country": s.country, "count": s.count} for s in figures.top_sources
            ],
            "top_spoofed_senders": [{"address": a, "count": n} for a, n in figures.top_spoofed],
            "organization": organization(context.config),
        }
    )


@router.get("/audit", tags=["audit"], response_model=AuditPageOut, responses={400: E400, 401: E401})
def list_audit(
    request: Request,
    target: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> AuditPageOut:
    """The audit log, newest first: sign-ins, releases, deletions, downloads, uploads."""
    page = audit_page(context_of(request).store, cursor or None, target or None, limit)
    return AuditPageOut(items=[_audit(a) for a in page.items], next_cursor=page.next_cursor)


@router.post(
    "/scan",
    tags=["scan"],
    response_model=ScanReportOut,
    responses={
        400: E400,
        401: E401,
        403: E403,
        413: {"model": ErrorOut, "description": "Upload too large."},
    },
)
async def scan(request: Request, files: Annotated[list[UploadFile], File()]) -> Response:
    """Scan .eml/.msg/mbox files: the same results as ``dsguard scan --format json``."""
    context = context_of(request)
    session = _session(request)
    uploads = await read_uploads(files)
    try:
        report = await run_in_threadpool(
            context.scans.scan, [(name, f.file) for name, f in uploads], session.username
        )
    except UploadError as exc:
        raise HTTPException(400, str(exc)) from None
    await run_in_threadpool(
        audit_upload, context.store, session, report.files, report.summary["messages"]
    )
    out = ScanReportOut.model_validate(report.document())
    return Response(out.model_dump_json(by_alias=True), media_type="application/json")
