"""The sign-in page, sign-out, and ``/api/session`` for scripts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response

from dsguard.web.auth import (
    LOGIN_COOKIE,
    attempt_login,
    clear_login_cookie,
    clear_session_cookie,
    client_ip,
    logout,
    safe_next,
    set_login_cookie,
    set_session_cookie,
)
from dsguard.web.context import context_of
from dsguard.web.middleware import session_of
from dsguard.web.schemas import ErrorOut, LoginIn, SessionOut
from dsguard.web.templating import render

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["session"])

FAILED = "Wrong user name or password."


def _login_page(
    request: Request, *, status: int = 200, error: str = "", next_url: str = "/"
) -> Response:
    context = context_of(request)
    token, cookie = context.sessions.login_token(request.cookies.get(LOGIN_COOKIE))
    response = render(
        request, "login.html", status=status, error=error, login_token=token, next_url=next_url
    )
    set_login_cookie(response, request, cookie)
    return response


@pages.get("/login")
def login_form(
    request: Request, next_url: Annotated[str | None, Query(alias="next", max_length=2000)] = None
) -> Response:
    if session_of(request.scope) is not None:
        return RedirectResponse(safe_next(next_url), status_code=303)
    return _login_page(request, next_url=safe_next(next_url))


@pages.post("/login")
async def login_submit(
    request: Request,
    username: Annotated[str, Form(max_length=256)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
    login_token: Annotated[str, Form(max_length=200)] = "",
    next_url: Annotated[str, Form(alias="next", max_length=2000)] = "/",
) -> Response:
    context = context_of(request)
    target = safe_next(next_url)
    if not context.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), login_token):
        return _login_page(
            request,
            status=403,
            error="The sign-in form expired or was not sent by this browser. Please try again.",
            next_url=target,
        )
    if not username or not password:
        return _login_page(
            request, status=400, error="Enter your user name and password.", next_url=target
        )
    outcome = await run_in_threadpool(
        attempt_login, context, client_ip(request), username, password
    )
    if outcome.retry_after:
        response = _login_page(
            request,
            status=429,
            error=f"Too many failed sign-ins. Try again in {_minutes(outcome.retry_after)}.",
            next_url=target,
        )
        response.headers["retry-after"] = str(outcome.retry_after)
        return response
    if outcome.session is None:
        return _login_page(request, status=401, error=FAILED, next_url=target)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, outcome.cookie, context.sessions.max_age)
    clear_login_cookie(response, request)
    return response


@pages.post("/logout")
async def logout_submit(request: Request) -> Response:
    session = session_of(request.scope)
    if session is not None:
        await run_in_threadpool(logout, context_of(request), session, client_ip(request))
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, request)
    return response


def _minutes(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = (seconds + 59) // 60
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def _session_out(request: Request) -> SessionOut:
    session = session_of(request.scope)
    if session is None:
        raise HTTPException(401, "not signed in")
    sessions = context_of(request).sessions
    now = context_of(request).clock()
    return SessionOut(
        username=session.username,
        csrf_token=session.csrf_token,
        idle_timeout_seconds=sessions.idle_timeout,
        expires_in_seconds=max(sessions.max_age - (now - session.created), 0.0),
    )


@api.get("/session", response_model=SessionOut, responses={401: {"model": ErrorOut}})
def session_info(request: Request) -> SessionOut:
    """Who is signed in, and the CSRF token to send with state changes."""
    return _session_out(request)


@api.post(
    "/session",
    response_model=SessionOut,
    responses={
        400: {"model": ErrorOut, "description": "A body that is not JSON."},
        401: {"model": ErrorOut, "description": "Wrong user name or password."},
        403: {"model": ErrorOut, "description": "A cross-site request."},
        429: {"model": ErrorOut, "description": "Too many failed sign-ins: see Retry-After."},
    },
)
async def session_login(request: Request, credentials: LoginIn) -> Response:
    """Sign in (an admin account from `dsguard admin add`); sets the session cookie."""
    context = context_of(request)
    outcome = await run_in_threadpool(
        attempt_login, context, client_ip(request), credentials.username, credentials.password
    )
    if outcome.retry_after:
        return JSONResponse(
            {"detail": "too many failed sign-ins"},
            status_code=429,
            headers={"retry-after": str(outcome.retry_after)},
        )
    if outcome.session is None:
        return JSONResponse({"detail": FAILED}, status_code=401)
    request.scope.setdefault("state", {})["session"] = outcome.session
    response = JSONResponse(_session_out(request).model_dump(mode="json"))
    set_session_cookie(response, request, outcome.cookie, context.sessions.max_age)
    return response


@api.delete(
    "/session", status_code=204, responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}}
)
async def session_logout(request: Request) -> Response:
    """Sign out: the session ends on the server."""
    session = session_of(request.scope)
    if session is not None:
        await run_in_threadpool(logout, context_of(request), session, client_ip(request))
    response = Response(status_code=204)
    clear_session_cookie(response, request)
    return response
