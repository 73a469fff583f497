"""Jinja2 pages of the web UI.

SECURITY: autoescaping is on for every template whatever its name (``autoescape=True``), and
``StrictUndefined`` turns a misspelt variable into an error instead of an empty string.
Nothing is marked ``|safe`` except the chart's numbers and the sanitised ``srcdoc``, which goes
into an attribute and is therefore escaped again by Jinja. Indicators go through ``defang``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from dsguard import __version__
from dsguard.report.html import visible
from dsguard.report.serialize import defang, one_line
from dsguard.web.middleware import session_of

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s|<>\"']+")


def defang_urls(value: object, domains: Iterable[str] = ()) -> str:
    """Free text (finding evidence and summaries) with every URL in it defanged, and the
    message's indicator ``domains`` where they stand alone; the rest shown as :func:`visible`
    shows it."""
    text = _URL.sub(lambda m: defang(m.group()), visible(value))
    for domain in sorted({d for d in domains if "." in d}, key=len, reverse=True)[:200]:
        if domain in text:
            text = text.replace(domain, domain.replace(".", "[.]"))
    return text


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _number(value: int) -> str:
    return f"{value:,}"


def human_size(value: int) -> str:
    if value < 1024:
        return f"{value:,} bytes"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value / (1024 * 1024):.1f} MB"


def link(path: str, params: dict[str, Any] | None = None, **more: Any) -> str:
    """``path`` with the non-empty query parameters (the rest dropped)."""
    merged = {**(params or {}), **more}
    query = urlencode([(k, str(v)) for k, v in merged.items() if v not in (None, "")])
    return f"{path}?{query}" if query else path


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("dsguard.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        defang=defang,
        defang_urls=defang_urls,
        line=one_line,
        visible=visible,
        when=_when,
        score=_score,
        number=_number,
        size=human_size,
    )
    env.globals.update(link=link, version=__version__)
    return env


ENVIRONMENT = _environment()


def render(
    request: Request, template: str, *, status: int = 200, nav: str = "", **context: Any
) -> HTMLResponse:
    session = session_of(request.scope)
    page = ENVIRONMENT.get_template(template).render(
        user=session.username if session else None,
        csrf_token=session.csrf_token if session else "",
        nav=nav,
        **context,
    )
    return HTMLResponse(page, status_code=status)
