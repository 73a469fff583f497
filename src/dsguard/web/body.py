"""A quarantined message made safe to look at: headers, text parts, HTML parts, attachments.

How an HTML body is shown, and why. Three walls, each enough on its own for the common
attacks:

1. **nh3 sanitising** (the Rust ``ammonia`` library, an html5ever parser): an allow-list of
   text-formatting tags and a few presentational attributes. No ``<script>``, ``<style>``,
   ``<iframe>``, ``<form>``, ``<svg>``, no event handlers, no ``style`` attributes (CSS
   ``url()`` fetches), no ``background``/``src``/``srcset`` that loads anything. Links lose
   their ``href``: the target is shown defanged in brackets before the link text and in its
   tooltip, never clickable. Images are replaced by a ``[image not loaded: hxxps://...]``
   placeholder. Because ammonia re-serialises canonical HTML, these rewrites work on a known
   shape; a final check refuses the result (and falls back to plain text) should any
   ``src``/``href`` remain.
2. **A sandboxed iframe** (``sandbox`` with no permissions: no script, no forms, no
   navigation of the top page, an opaque origin without our cookies) whose ``srcdoc`` carries
   the sanitised document, with its own ``Content-Security-Policy: default-src 'none'`` (no
   fetch of any kind) on top of the page's policy, which it inherits.
3. **The page's CSP** forbids every script anyway.

The default view is the text part when the message has one (escaped text is the safest
rendering and what analysts read); the sanitised HTML view is one click away, and the raw
source is available escaped. Plain text is never turned into links.

SECURITY: parsing goes through :class:`dsguard.mail.message.ParsedMessage` with the
configured limits (header count and bytes, MIME depth and parts, decoded text bytes); what is
shown is capped again here (``MAX_*``) so a huge message cannot produce a huge page.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import nh3

from dsguard.config import Limits
from dsguard.mail.message import ParsedMessage
from dsguard.report.html import visible
from dsguard.report.serialize import defang

MAX_HEADERS = 300
MAX_HEADER_CHARS = 4_000
MAX_PARTS = 5
MAX_TEXT_CHARS = 200_000
MAX_HTML_CHARS = 1_000_000
MAX_SOURCE_BYTES = 256 * 1024
MAX_ATTACHMENTS = 100

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "dd",
        "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
        "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small", "span",
        "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
        "tr", "tt", "u", "ul",
    }
)  # fmt: skip
_CELL = {"align", "valign", "colspan", "rowspan", "width", "height", "bgcolor", "nowrap"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href"},
    "img": {"src", "alt"},
    "td": _CELL,
    "th": _CELL,
    "tr": {"align", "valign", "bgcolor"},
    "table": {"align", "width", "border", "cellpadding", "cellspacing", "bgcolor"},
    "font": {"color", "face", "size"},
    "p": {"align"},
    "div": {"align"},
    "h1": {"align"},
    "h2": {"align"},
    "h3": {"align"},
    "ol": {"start", "type"},
}
# Removed together with their content (nh3 default plus what could carry a payload as text).
CLEAN_CONTENT_TAGS = frozenset({"script", "style", "title", "template", "noscript", "object"})

# The iframe's own document: no fetch of any kind, whatever survived.
FRAME_CSP = "default-src 'none'"
_FRAME_HEAD = (
    '<!DOCTYPE html><html><head><meta charset="utf-8">'
    f'<meta http-equiv="Content-Security-Policy" content="{FRAME_CSP}">'
    '<meta name="referrer" content="no-referrer"></head><body>'
)
_FRAME_TAIL = "</body></html>"

_A_TAG = re.compile(r'<a href="([^"]*)">')
_IMG_TAG = re.compile(r"<img\b([^>]*)>")
_ATTR = re.compile(r'([a-z][a-z0-9-]*)="([^"]*)"')
_LEFTOVER = re.compile(r"<[a-z][^>]*\s(?:src|href|srcset|background|action)=", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HeaderLine:
    name: str
    value: str
    malformed: str


@dataclass(frozen=True, slots=True)
class AttachmentLine:
    filename: str
    content_type: str
    size: int
    inline: bool


@dataclass(frozen=True, slots=True)
class MessageView:
    headers: list[HeaderLine]
    headers_left_out: int
    texts: list[str]
    html_documents: list[str]  # full srcdoc documents, sanitised
    attachments: list[AttachmentLine]
    defects: list[str]
    source: str
    source_truncated: bool
    notes: list[str] = field(default_factory=list)


def message_view(raw: bytes, limits: Limits) -> MessageView:
    msg = ParsedMessage(raw, limits)
    headers = [
        HeaderLine(visible(h.name)[:200], _cap(visible(h.value), MAX_HEADER_CHARS), h.malformed)
        for h in msg.headers[:MAX_HEADERS]
    ]
    body = msg.body
    texts = [_cap(visible(_lf(t)), MAX_TEXT_CHARS) for t in body.texts[:MAX_PARTS]]
    documents = [frame_document(sanitise_html(h)) for h in body.htmls[:MAX_PARTS]]
    notes = []
    if len(body.texts) > MAX_PARTS or len(body.htmls) > MAX_PARTS:
        notes.append(f"only the first {MAX_PARTS} text and HTML parts are shown")
    attachments = [
        AttachmentLine(visible(a.filename)[:300], visible(a.content_type)[:200], a.size, a.inline)
        for a in body.attachments[:MAX_ATTACHMENTS]
    ]
    source = raw[:MAX_SOURCE_BYTES].decode("utf-8", "replace")
    return MessageView(
        headers=headers,
        headers_left_out=max(len(msg.headers) - MAX_HEADERS, 0),
        texts=texts,
        html_documents=documents,
        attachments=attachments,
        defects=[visible(d) for d in (*msg.header_defects, *body.defects)][:50],
        source=visible(_lf(source)),
        source_truncated=len(raw) > MAX_SOURCE_BYTES,
        notes=notes,
    )


def sanitise_html(markup: str) -> str:
    """An HTML fragment that loads nothing, runs nothing and links nowhere (module doc)."""
    cleaned = nh3.clean(
        markup[:MAX_HTML_CHARS],
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(CLEAN_CONTENT_TAGS),
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel=None,
        strip_comments=True,
    )
    cleaned = _IMG_TAG.sub(_image_placeholder, cleaned)
    cleaned = _A_TAG.sub(_inert_link, cleaned)
    if "<img" in cleaned or _LEFTOVER.search(cleaned):
        # Not the canonical shape these rewrites expect: show the text only.
        text_only = nh3.clean(
            markup[:MAX_HTML_CHARS], tags=set(), clean_content_tags=set(CLEAN_CONTENT_TAGS)
        )
        return html.escape(html.unescape(text_only))
    return cleaned


def frame_document(fragment: str) -> str:
    """The ``srcdoc`` document for a sanitised fragment."""
    return _FRAME_HEAD + fragment + _FRAME_TAIL


def _inert_link(match: re.Match[str]) -> str:
    target = _shown_url(match.group(1))
    return f'<a title="Link not opened: {target}"><small>[{target}]</small> '


def _image_placeholder(match: re.Match[str]) -> str:
    attrs = dict(_ATTR.findall(match.group(1)))
    parts = []
    if attrs.get("alt"):
        parts.append(html.escape(html.unescape(attrs["alt"])[:200], quote=True))
    if attrs.get("src"):
        parts.append(_shown_url(attrs["src"]))
    detail = ": " + " ".join(parts) if parts else ""
    return f"<small>[image not loaded{detail}]</small>"


def _shown_url(escaped: str) -> str:
    """An attribute value from nh3's output (HTML-escaped) as escaped, defanged text."""
    return html.escape(defang(html.unescape(escaped))[:500], quote=True)


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit} more characters)"
