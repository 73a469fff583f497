"""Signing in and out (shared by the sign-in page and ``/api/session``).

SECURITY: passwords are checked by :func:`dsguard.store.repository.verify_password`
(argon2id; an unknown user costs the same as a wrong password) in a worker thread, after the
throttle (:mod:`.throttle`) has had its say. Every outcome that matters is in the audit log:
sign-in, failed sign-in (with the client IP), sign-out. The answer to a failure never says
whether the user exists. Cookies: HttpOnly, SameSite=Strict, Path=/, Secure and ``__Host-``
over HTTPS, ``Max-Age`` = the absolute session lifetime (the server enforces both limits
anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from dsguard.store import repository as repo
from dsguard.web.context import WebContext
from dsguard.web.middleware import (
    SECURE_SESSION_COOKIE,
    SESSION_COOKIE,
    is_https,
    session_cookie_name,
)
from dsguard.web.sessions import LOGIN_FORM_MAX_AGE, Session

LOGIN_COOKIE = "dsguard_login"


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    session: Session | None = None
    cookie: str = ""
    retry_after: int = 0  # > 0: throttled, nothing was checked


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def attempt_login(context: WebContext, ip: str, username: str, password: str) -> LoginOutcome:
    """Check a sign-in (blocking: argon2). Returns a new session, a throttle delay, or neither."""
    wait = context.throttle.retry_after(ip, username)
    if wait:
        return LoginOutcome(retry_after=wait)
    user = repo.verify_password(context.store, username, password, "admin")
    if user is None:
        context.throttle.failed(ip, username)
        repo.audit(
            context.store,
            actor=f"web:{username}",
            action="login_failed",
            target="web",
            detail=f"from {ip}",
        )
        return LoginOutcome()
    context.throttle.succeeded(username)
    session, cookie = context.sessions.create(user.username)
    repo.audit(
        context.store, actor=session.actor, action="login", target="web", detail=f"from {ip}"
    )
    return LoginOutcome(session=session, cookie=cookie)


def logout(context: WebContext, session: Session, ip: str) -> None:
    context.sessions.end(session.id)
    repo.audit(
        context.store, actor=session.actor, action="logout", target="web", detail=f"from {ip}"
    )


def set_session_cookie(response: Response, request: Request, value: str, max_age: float) -> None:
    response.set_cookie(
        session_cookie_name(request.scope),
        value,
        max_age=int(max_age),
        path="/",
        secure=is_https(request.scope),
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    for name in (SESSION_COOKIE, SECURE_SESSION_COOKIE):
        if name in request.cookies:
            response.delete_cookie(
                name,
                path="/",
                secure=name == SECURE_SESSION_COOKIE,
                httponly=True,
                samesite="strict",
            )


def set_login_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        value,
        max_age=LOGIN_FORM_MAX_AGE,
        path="/login",
        secure=is_https(request.scope),
        httponly=True,
        samesite="strict",
    )


def clear_login_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        LOGIN_COOKIE,
        path="/login",
        secure=is_https(request.scope),
        httponly=True,
        samesite="strict",
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a local path only (no open redirect)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(c in target for c in "\r\n\t\\")
        or len(target) > 2000
    ):
        return "/"
    return target
