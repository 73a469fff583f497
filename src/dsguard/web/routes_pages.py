"""The HTML pages: dashboard, quarantine list and message, audit log, events, scan uploads.

Every page is rendered on the server; the only client-side code is the browser's own (forms,
links, ``<details>``). State changes are POST forms carrying the session's CSRF token
(checked app-wide by :mod:`.csrf`) and answer with a redirect (post/redirect/get).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile as StarletteUploadFile

from dsguard.quarantine import NotFoundError, ReleaseError
from dsguard.store import repository as repo
from dsguard.web import stats
from dsguard.web.body import message_view
from dsguard.web.chart import SERIES, build_chart
from dsguard.web.context import context_of
from dsguard.web.filters import DECISIONS, FRONT_DOORS, STATUSES, VERDICTS, QuarantineFilters
from dsguard.web.middleware import session_of
from dsguard.web.scanning import UploadError
from dsguard.web.sessions import Session
from dsguard.web.templating import render
from dsguard.web.views import (
    AUDIT_PAGE,
    EVENTS_PAGE,
    EventFilters,
    audit_page,
    audit_upload,
    delete_message,
    download_message,
    organization,
    release_message,
)

router = APIRouter(include_in_schema=False)

QID = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
LIST_PAGE = 50
DONE_MESSAGES = {
    "released": "Released: the message is queued in the gateway's spool for the downstream server.",
    "deleted": "Deleted: the message bytes are gone; the record stays for the audit log.",
}


def _session(request: Request) -> Session:
    session = session_of(request.scope)
    if session is None:  # the middleware lets no such request through
        raise HTTPException(401, "not signed in")
    return session


# -- dashboard ------------------------------------------------------------------------------


@router.get("/")
def dashboard(
    request: Request,
    time_range: Annotated[str, Query(alias="range", max_length=8)] = stats.DEFAULT_RANGE,
) -> Response:
    context = context_of(request)
    if time_range not in stats.RANGES:
        time_range = stats.DEFAULT_RANGE
    window = stats.Window.ending_now(time_range)
    figures = stats.dashboard(context.store, window)
    return render(
        request,
        "dashboard.html",
        nav="dashboard",
        figures=figures,
        chart=build_chart(figures.direct_send, window),
        series=SERIES,
        ranges=list(stats.RANGES),
        org=organization(context.config),
        store_url=context.store.url,
    )


# -- quarantine -----------------------------------------------------------------------------


@router.get("/quarantine")
def quarantine_list(
    request: Request,
    status: str | None = None,
    verdict: str | None = None,
    finding: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    q: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    context = context_of(request)
    filters = QuarantineFilters.parse(
        status=status,
        verdict=verdict,
        finding=finding,
        sender=sender,
        recipient=recipient,
        q=q,
        since=since,
        until=until,
    )
    page = filters.list_page(context.store, limit=LIST_PAGE, cursor_value=cursor or None)
    return render(
        request,
        "quarantine_list.html",
        nav="quarantine",
        filters=filters,
        page=page,
        cursor=cursor,
        statuses=STATUSES,
        verdicts=VERDICTS,
    )


@router.get("/quarantine/{qid}")
def quarantine_message(
    request: Request, qid: QID, view: str | None = None, done: str | None = None
) -> Response:
    context = context_of(request)
    item = repo.get_quarantined(context.store, qid)
    if item is None:
        raise HTTPException(404, "no such message in the quarantine")
    shown = message_view(item.raw, context.config.limits) if item.raw is not None else None
    if view not in ("text", "html", "source"):
        view = "text"
        if shown is not None and not shown.texts:
            view = "html" if shown.html_documents else "source"
    audit = repo.list_audit(context.store, 100, target=qid).items
    findings = sorted(item.findings, key=lambda f: -(f.get("score") or 0))
    return render(
        request,
        "message.html",
        nav="quarantine",
        item=item,
        findings=findings,
        shown=shown,
        view=view,
        audit=audit,
        done=DONE_MESSAGES.get(done or ""),
    )


@router.post("/quarantine/{qid}/release")
def quarantine_release(request: Request, qid: QID) -> Response:
    context = context_of(request)
    try:
        release_message(context.config, context.store, qid, _session(request))
    except NotFoundError:
        raise HTTPException(404, "no such message in the quarantine") from None
    except ReleaseError as exc:
        raise HTTPException(409, f"Not released: {exc}") from None
    return RedirectResponse(f"/quarantine/{qid}?done=released", status_code=303)


@router.post("/quarantine/{qid}/delete")
def quarantine_delete(request: Request, qid: QID) -> Response:
    context = context_of(request)
    if not delete_message(context.store, qid, _session(request)):
        if repo.get_quarantined(context.store, qid) is None:
            raise HTTPException(404, "no such message in the quarantine")
        raise HTTPException(409, "Not deleted: the message was deleted already")
    return RedirectResponse(f"/quarantine/{qid}?done=deleted", status_code=303)


@router.get("/quarantine/{qid}/download")
def quarantine_download(request: Request, qid: QID) -> Response:
    return eml_response(request, qid)


def eml_response(request: Request, qid: str) -> Response:
    """The raw message as an attachment (never displayed inline by the browser)."""
    context = context_of(request)
    item = download_message(context.store, qid, _session(request))
    if item is None:
        raise HTTPException(404, "no such message in the quarantine")
    if item.raw is None:
        raise HTTPException(410, "the message was deleted; only its record remains")
    return Response(
        item.raw,
        media_type="message/rfc822",
        headers={"content-disposition": f'attachment; filename="dsguard-{qid}.eml"'},
    )


# -- audit log and events -------------------------------------------------------------------


@router.get("/audit")
def audit_log(
    request: Request,
    target: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    page = audit_page(context_of(request).store, cursor or None, target or None, AUDIT_PAGE)
    return render(request, "audit.html", nav="audit", page=page, target=target or "", cursor=cursor)


@router.get("/events")
def events(
    request: Request,
    decision: str | None = None,
    front_door: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    filters = EventFilters.parse(decision, front_door, since, until)
    page = filters.page(context_of(request).store, cursor or None, EVENTS_PAGE)
    params = {
        "decision": decision or "",
        "front_door": front_door or "",
        "since": since or "",
        "until": until or "",
    }
    return render(
        request,
        "events.html",
        nav="events",
        page=page,
        params=params,
        cursor=cursor,
        decisions=DECISIONS,
        front_doors=FRONT_DOORS,
    )


# -- scan uploads ---------------------------------------------------------------------------


@router.get("/scan")
def scan_form(request: Request) -> Response:
    return _scan_page(request)


def _scan_page(request: Request, *, status: int = 200, error: str = "") -> Response:
    web = context_of(request).config.web
    return render(
        request,
        "scan.html",
        nav="scan",
        status=status,
        error=error,
        max_upload_bytes=web.max_upload_bytes,
        max_upload_files=web.max_upload_files,
        report=None,
    )


async def read_uploads(
    files: Sequence[StarletteUploadFile],
) -> list[tuple[str, StarletteUploadFile]]:
    # Browsers send one empty part with no name when no file was chosen.
    return [(f.filename or "", f) for f in files if f.filename or (f.size or 0) > 0]


@router.post("/scan")
async def scan_upload(request: Request) -> Response:
    context = context_of(request)
    session = _session(request)
    limit = context.config.web.max_upload_files
    # Read here rather than as a File() parameter: a form sent with no file chosen has a
    # part without a file name, which is a plain field, not a validation error to show.
    form = await request.form(max_files=limit + 1, max_fields=10)
    try:
        files = [v for v in form.getlist("files") if isinstance(v, StarletteUploadFile)]
        uploads = await read_uploads(files)
        report = await run_in_threadpool(
            context.scans.scan, [(name, f.file) for name, f in uploads], session.username
        )
    except UploadError as exc:
        return _scan_page(request, status=400, error=str(exc))
    finally:
        await form.close()
    await run_in_threadpool(
        audit_upload, context.store, session, report.files, report.summary["messages"]
    )
    return render(
        request,
        "scan.html",
        nav="scan",
        error="",
        max_upload_bytes=context.config.web.max_upload_bytes,
        max_upload_files=context.config.web.max_upload_files,
        report=report,
    )


@router.get("/scan/reports/{report_id}.json")
def scan_report_json(
    request: Request, report_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{10,40}$")]
) -> Response:
    report = context_of(request).scans.report(report_id, _session(request).username)
    if report is None:
        raise HTTPException(404, "no such report (reports are kept for the last uploads only)")
    body = json.dumps(report.document(), ensure_ascii=False, indent=1)
    return Response(
        body.encode("utf-8"),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="dsguard-scan-{report_id}.json"'},
    )
