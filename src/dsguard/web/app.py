"""The web UI as an ASGI application: :func:`create_app`.

Layers, outermost first: FastAPI's error middleware; :class:`~.middleware.WebMiddleware`
(security headers, cross-site refusal, sign-in gate, body-size limit: 64 KiB, or ``[web]
max_upload_bytes`` on the upload routes); the app-wide CSRF dependency; the routes.

The OpenAPI document is at ``/api/openapi.json`` for signed-in users only (it describes the
admin surface; there is nothing public to describe). FastAPI's interactive /docs pages are
off: they load scripts from a CDN, which the Content-Security-Policy forbids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsguard import __version__
from dsguard.config import Config
from dsguard.store.db import Store, open_store
from dsguard.web import routes_api, routes_auth, routes_pages
from dsguard.web.context import WebContext
from dsguard.web.csrf import require_csrf
from dsguard.web.filters import FilterError
from dsguard.web.middleware import WebMiddleware, is_api
from dsguard.web.scanning import ScanService
from dsguard.web.secret import load_or_create_secret
from dsguard.web.sessions import SessionStore
from dsguard.web.templating import human_size, render
from dsguard.web.throttle import LoginThrottle

log = logging.getLogger("dsguard.web")

# Bodies of forms and JSON calls; the upload routes get [web] max_upload_bytes instead.
MAX_FORM_BYTES = 64 * 1024
# Room for the multipart framing around the files of one upload.
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_PATHS = ("/scan", "/api/scan")


def create_app(
    config: Config,
    *,
    store: Store | None = None,
    secret: bytes | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The web UI for ``config``. ``store`` (else opened from ``[storage] url``, closed on
    shutdown), ``secret`` (else ``[web] session_secret_file``, created when absent) and
    ``clock`` (monotonic seconds, for session expiry and throttling) may be given."""
    own_store = store is None
    opened = open_store(config.storage.url) if store is None else store
    web = config.web
    context = WebContext(
        config=config,
        store=opened,
        sessions=SessionStore(
            secret if secret is not None else load_or_create_secret(web.session_secret_file),
            idle_timeout=web.session_idle_timeout,
            max_age=web.session_max_age,
            clock=clock,
        ),
        throttle=LoginThrottle(web.login_max_failures, web.login_window, clock),
        scans=ScanService(config),
        clock=clock,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if own_store:
                opened.close()

    app = FastAPI(
        title="dsguard admin API",
        version=__version__,
        description=(
            "Quarantine, Direct Send events, dashboard figures and scan uploads of dsguard. "
            "Sign in with POST /api/session; send the returned csrf_token as X-CSRF-Token "
            "with every POST and DELETE."
        ),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        dependencies=[Depends(require_csrf)],
        lifespan=lifespan,
    )
    app.state.web = context
    app.include_router(routes_auth.pages)
    app.include_router(routes_auth.api)
    app.include_router(routes_pages.router)
    app.include_router(routes_api.router)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(_openapi(app))

    static = resources.files("dsguard.web").joinpath("static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        # Browsers ask for it on their own; answering saves a redirect to the sign-in page.
        icon = static.joinpath("favicon.svg").read_bytes()
        return Response(
            icon, media_type="image/svg+xml", headers={"cache-control": "max-age=86400"}
        )

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    too_large = _error_pages(app, web.max_upload_bytes)
    app.add_middleware(
        WebMiddleware,
        context=context,
        body_limits=(MAX_FORM_BYTES, web.max_upload_bytes + MULTIPART_OVERHEAD, UPLOAD_PATHS),
        too_large=too_large,
    )
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = app.openapi()
        schema["components"]["securitySchemes"] = {
            "session": {"type": "apiKey", "in": "cookie", "name": "dsguard_session"},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
        }
        schema["security"] = [{"session": [], "csrf": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def _error_pages(app: FastAPI, max_upload_bytes: int) -> Callable[[Request], Response]:
    """Errors as JSON under /api and as a page elsewhere; never a traceback. Returns the 413
    answer for the middleware (which refuses a too large Content-Length itself)."""

    def respond(request: Request, status: int, detail: str) -> Response:
        if is_api(request.url.path):
            headers = {"retry-after": "60"} if status == 429 else None
            return JSONResponse({"detail": detail}, status_code=status, headers=headers)
        return render(request, "error.html", status=status, status_code=status, detail=detail)

    def too_large(request: Request) -> Response:
        if request.url.path in UPLOAD_PATHS:
            detail = (
                f"Upload too large: at most {human_size(max_upload_bytes)} per upload "
                "(all files together)."
            )
        else:
            detail = "Request too large."
        return respond(request, 413, detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if exc.status_code == 413:
            return too_large(request)
        if exc.status_code == 405:
            detail = "Method not allowed."
        elif exc.status_code == 404 and detail == "Not Found":
            detail = "No such page."
        return respond(request, exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(
                str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")
            )
            problems.append(
                f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg"))
            )
        if is_api(request.url.path):
            # FastAPI's own 422 shape, as the OpenAPI document describes it.
            return await request_validation_exception_handler(request, exc)
        return respond(request, 400, "Invalid request: " + "; ".join(problems))

    @app.exception_handler(FilterError)
    async def filter_error(request: Request, exc: FilterError) -> Response:
        return respond(request, 400, str(exc))

    return too_large
