"""The outer wall of the web UI, in front of every route: security headers, cross-site
refusal, and the sign-in gate.

SECURITY: deny by default. Every request except the public ones (the sign-in page, ``POST
/api/session`` and ``/static``) must carry a live session, or it never reaches a route: pages
redirect to ``/login``, ``/api`` answers 401 JSON. A route added later is protected without
anyone remembering to.

State-changing requests (anything but GET/HEAD/OPTIONS) from another site are refused here
before any route runs, from the browser's own ``Sec-Fetch-Site`` and ``Origin`` headers (a
page on another port of the same host is "same-site", so SameSite cookies alone do not stop
it). Requests without those headers (scripts, curl) are not refused here; they still need
the session's CSRF token (:mod:`.csrf`).

Every response gets the headers in :data:`SECURITY_HEADERS`, and ``Cache-Control: no-store``
unless it is a static file (quarantined mail must not linger in browser or proxy caches).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import anyio.to_thread
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dsguard.store import repository as repo
from dsguard.web.context import WebContext
from dsguard.web.sessions import Session

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# No script may run (none is needed); styles and images only from our own static files; forms
# post only to us; no framing of the UI by anyone. The sandboxed srcdoc iframe that shows an
# HTML body inherits this policy and adds its own (see body.py).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
SESSION_COOKIE = "dsguard_session"
# Over HTTPS the cookie gets the __Host- prefix: the browser then only accepts it Secure,
# host-only and for Path=/ (cannot be set by a sibling subdomain or plain-HTTP page).
SECURE_SESSION_COOKIE = "__Host-dsguard_session"


def is_public(path: str, method: str) -> bool:
    """The sign-in page and call, the style sheet and icon: nothing else works signed out."""
    return (
        path in ("/login", "/favicon.ico")
        or path.startswith("/static/")
        or (path == "/api/session" and method == "POST")
    )


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_https(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def session_cookie_name(scope: Scope) -> str:
    return SECURE_SESSION_COOKIE if is_https(scope) else SESSION_COOKIE


def session_of(scope: Scope) -> Session | None:
    session = scope.get("state", {}).get("session")
    return session if isinstance(session, Session) else None


class WebMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        context: WebContext,
        body_limits: tuple[int, int, tuple[str, ...]],
        too_large: Callable[[Request], Response],
    ) -> None:
        self.app = app
        self.context = context
        # (limit for every request body, limit for the upload paths, the upload paths)
        self.form_limit, self.upload_limit, self.upload_paths = body_limits
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(scope, send)
        path: str = scope["path"]
        method: str = scope["method"]
        headers = Headers(scope=scope)
        if method not in SAFE_METHODS and _cross_site(scope, headers):
            await _plain(send, 403, "cross-site request refused", api=is_api(path))
            return
        session = await self._session(scope, headers)
        scope.setdefault("state", {})["session"] = session
        if session is None and not is_public(path, method):
            if is_api(path):
                await _plain(send, 401, "not signed in", api=True)
            else:
                await _redirect_to_login(scope, send)
            return
        # A too large Content-Length is refused before any byte is read; bodies without one
        # are counted as they are read (413 from the app's error pages either way).
        limit = self.upload_limit if path in self.upload_paths else self.form_limit
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self.too_large(Request(scope))(scope, receive, send)
            return
        await RequestBodyLimitMiddleware(self.app, limit)(scope, receive, send)

    async def _session(self, scope: Scope, headers: Headers) -> Session | None:
        cookie = _cookie(headers, session_cookie_name(scope))
        sessions = self.context.sessions
        session = sessions.resolve(cookie)
        if session is not None and sessions.needs_account_check(session):
            # `dsguard admin remove` ends the removed admin's sessions (within the recheck
            # interval): the account is looked up again now and then.
            admins = await anyio.to_thread.run_sync(repo.list_users, self.context.store, "admin")
            if not any(a.username == session.username for a in admins):
                sessions.end_user(session.username)
                return None
            sessions.account_checked(session)
        return session

    def _with_headers(self, scope: Scope, send: Send) -> Send:
        static = scope["path"].startswith("/static/")
        https = is_https(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers[name] = value
                if https:
                    headers["strict-transport-security"] = "max-age=31536000"
                if static:
                    headers["cache-control"] = "private, max-age=3600"
                else:
                    headers["cache-control"] = "no-store"
            await send(message)

        return send_with_headers


def _cross_site(scope: Scope, headers: Headers) -> bool:
    """True when the browser says the request comes from another site or origin."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        # Sent by every current browser, and not settable by page scripts (a "forbidden"
        # header): the decisive signal when present.
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        # "null": what browsers send for our own forms under Referrer-Policy: no-referrer
        # (Fetch standard, "serializing a request origin"); the CSRF token still decides.
        return False
    host = headers.get("host", "")
    expected = f"{'https' if is_https(scope) else 'http'}://{host}"
    return origin.lower() != expected.lower()


def _cookie(headers: Headers, name: str) -> str | None:
    for raw in headers.getlist("cookie"):
        for part in raw.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip('"')
    return None


async def _plain(send: Send, status: int, detail: str, *, api: bool) -> None:
    if api:
        body = json.dumps({"detail": detail}).encode()
        content_type = b"application/json"
    else:
        body = f"{status} {detail}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect_to_login(scope: Scope, send: Send) -> None:
    target = "/login"
    if scope["method"] in ("GET", "HEAD") and scope["path"] != "/":
        wanted = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            wanted += "?" + query
        target += "?next=" + quote(wanted, safe="")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", target.encode("latin-1")), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})
