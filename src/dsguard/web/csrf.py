"""CSRF protection for every state change: the synchroniser-token pattern.

Each session has a random token (:class:`~dsguard.web.sessions.Session`). Pages put it in a
hidden ``csrf_token`` field of every form; API clients send it in the ``X-CSRF-Token``
header (``GET /api/session`` returns it). :func:`require_csrf` is an app-wide dependency, so
every route that is not GET/HEAD/OPTIONS checks it, including routes added later; a missing
or wrong token is answered 403 before the route runs.

The sign-in form has no session yet; it carries its own token, bound to the browser by a
signed, timestamped cookie (:meth:`SessionStore.login_token`), checked by the sign-in
route itself. ``POST /api/session`` needs none: it takes only ``application/json``, which
no cross-site form can send, and cross-site requests are refused by the middleware anyway.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from dsguard.web.middleware import SAFE_METHODS, is_public, session_of

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def require_csrf(request: Request) -> None:
    if request.method in SAFE_METHODS or is_public(request.url.path, request.method):
        return
    session = session_of(request.scope)
    if session is None:  # the middleware lets no such request through; belt and braces
        raise HTTPException(401, "not signed in")
    token: object = request.headers.get(CSRF_HEADER)
    form = None
    if token is None and request.headers.get("content-type", "").startswith(FORM_TYPES):
        # FastAPI has parsed (and cached) the form already when the route takes form fields.
        form = await request.form()
        token = form.get(CSRF_FIELD)
    if not session.csrf_ok(token):
        if form is not None:
            await form.close()  # uploaded files spooled to disk go now, not at garbage collection
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")
