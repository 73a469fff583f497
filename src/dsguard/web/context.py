"""Everything the web UI's routes share: settings, store, sessions, throttle, scanner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from dsguard.config import Config
from dsguard.store.db import Store
from dsguard.web.scanning import ScanService
from dsguard.web.sessions import SessionStore
from dsguard.web.throttle import LoginThrottle


@dataclass
class WebContext:
    config: Config
    store: Store
    sessions: SessionStore
    throttle: LoginThrottle
    scans: ScanService
    clock: Callable[[], float]


def context_of(request: Request) -> WebContext:
    context = request.app.state.web
    assert isinstance(context, WebContext)
    return context
