"""Links in message bodies (plain text and HTML), and the host a browser would contact.

Extraction returns URLs as written, normalised only where it cannot change their meaning: the
scheme and host are lower-cased; userinfo, port, path, query and fragment are kept as written.
The fragment is kept on purpose: phishing kits often carry the victim's address there, which is
evidence (IOC matching ignores it). Hosts keep the form they were written in (punycode stays
punycode, ``%``-escapes stay escaped); ``url_host`` is where hosts are canonicalised.

``url_host`` follows the WHATWG URL standard (what browsers do) on the points attackers use to
make a link's visible host differ from the one contacted: a backslash ends the authority like a
slash (``https://evil.example\\@contoso.com`` goes to evil.example), userinfo is dropped,
``%``-escapes in the host are decoded, Unicode hosts are converted to punycode, and numeric IPv4
forms (``http://3232235777/``, ``http://0x7f.1/``) are read as the dotted address.

SECURITY: bodies are attacker-controlled and may be megabytes of crafted text. The text pattern
is a fixed prefix followed by one character class with nothing after it, so it cannot backtrack;
trailing-punctuation trimming is linear. HTML is read the way the stdlib ``html.parser`` reads it
(``feed`` once, ``convert_charrefs``), which is robust to broken markup but quadratic in
``close()`` on unterminated constructs (CPython gh-135462: 295 s for ``'<a href=' * 50000`` on
3.11.7) and raises ``AssertionError`` on some ``<![`` input; so the parser is only ever fed once
and never closed, and an unterminated tail (which a browser drops too, HTML5 "EOF in tag") is
searched as plain text instead. At most ``limit`` URLs are collected, and parsing stops as soon
as one more is seen.

Most mail HTML is tokenized by ``_feed_fast``, a copy of ``HTMLParser.goahead`` for that mode
which reads start tags with one pattern of possessive quantifiers (no backtracking) instead of
the stdlib's per-tag regex round trips; comments, declarations, marked sections, processing
instructions, script/style content and stray ``<`` follow the stdlib code step for step. At the
first start or end tag outside that pattern (unusual quoting or names, ``</a b>``...) it hands
the rest of the document, with its state, to ``html.parser``: each position is scanned a bounded
number of times before that, so the work stays linear, and the results are the stdlib's
(tests/unit/attachments/test_html_fast_path.py compares them with the parser-only reader).
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Iterator
from functools import lru_cache
from html.parser import HTMLParser
from typing import NamedTuple
from urllib.parse import unquote

# http/https/ftp URL or a bare "www." host, up to whitespace, markup delimiters, controls or
# typographic quotes. Nothing follows the character class, so matching is linear.
_URL_IN_TEXT = re.compile(
    r"(?:\b(?:https?|ftp)://|(?<![\w@./:-])www\.)"
    r"[^\s<>\"\x00-\x1f\x7f\u201c\u201d\u2018\u2019\u00ab\u00bb\u2039\u203a]+",
    re.IGNORECASE,
)
# The same matches as _URL_IN_TEXT, found from the few "://" and "www." positions instead of
# trying the pattern at every character (several times faster on long bodies).
_URL_TAIL = re.compile(r"[^\s<>\"\x00-\x1f\x7f\u201c\u201d\u2018\u2019\u00ab\u00bb\u2039\u203a]+")
_SCHEMES_BEFORE_SLASHES = ("https", "http", "ftp")


def iter_text_urls(text: str) -> Iterator[str]:
    """Yield what ``_URL_IN_TEXT.finditer(text)`` would match, in order."""
    lowered = text.lower()
    if len(lowered) != len(text):  # case mapping changed lengths (rare scripts): use the regex
        for m in _URL_IN_TEXT.finditer(text):
            yield m.group()
        return
    candidates: list[tuple[int, int]] = []  # (match start, tail start)
    pos = lowered.find("://")
    while pos != -1:
        for scheme in _SCHEMES_BEFORE_SLASHES:
            start = pos - len(scheme)
            if start >= 0 and lowered.startswith(scheme, start) and (
                start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_")
            ):
                candidates.append((start, pos + 3))
                break
        pos = lowered.find("://", pos + 3)
    pos = lowered.find("www.")
    while pos != -1:
        before = text[pos - 1] if pos else ""
        if not before or not (before.isalnum() or before in "_@./:-"):
            candidates.append((pos, pos + 4))
        pos = lowered.find("www.", pos + 4)
    candidates.sort()
    end = 0
    for start, tail in candidates:
        if start < end:
            continue
        tail_match = _URL_TAIL.match(text, tail)
        if tail_match is None:
            continue
        end = tail_match.end()
        yield text[start:end]


# scheme ":" slashes authority rest. The classes are disjoint, so this cannot backtrack.
_URL_PARTS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):([\\/]*)([^\\/?#]*)(.*)", re.DOTALL)
# A literal in an href attribute: only these schemes are links worth reporting.
_LINK_SCHEMES = ("http", "https", "ftp")
# WHATWG "special" schemes: any run of / or \ after the colon introduces the authority.
_SPECIAL_SCHEMES = frozenset(("http", "https", "ftp", "ws", "wss"))

_TRAILING_PUNCTUATION = frozenset(".,;:!?'\"")
_CLOSING_BRACKETS = {")": "(", "]": "[", "}": "{"}
_TRIM_CANDIDATES = _TRAILING_PUNCTUATION | frozenset(_CLOSING_BRACKETS)
# WHATWG forbidden host code points (plus the percent sign, which must be decoded by now).
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")
_C0_AND_SPACE = "".join(chr(code) for code in range(0x21))

_URL_ATTRIBUTES = frozenset(("href", "src", "action", "formaction", "background"))
_META_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\"]+)", re.IGNORECASE)
_HIDDEN_TEXT_ELEMENTS = frozenset(("script", "style"))
# Elements that do not break text flow: text on both sides joins ("http://ev<b></b>il.com").
_INLINE_ELEMENTS = frozenset((
    "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "dfn", "em", "font", "i",
    "kbd", "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "time",
    "tt", "u", "var", "wbr",
))


def extract_urls(text: str, *, html: bool, limit: int) -> tuple[list[str], bool]:
    """URLs in first-seen order, deduplicated; the flag is True if more than ``limit`` exist.

    Plain text: http/https/ftp URLs and ``www.`` hosts (given ``http://``), without trailing
    punctuation or unbalanced closing brackets. HTML: href/src/action/formaction/background
    attributes and meta refresh targets (``javascript:``, ``mailto:``, ``data:`` and relative
    links are ignored; ``//host`` becomes ``http://host``), plus URLs in the visible text.
    """
    collector = _Collector(limit)
    if html:
        _scan_html(text, collector)
    else:
        _scan_text(text, collector)
    return list(collector.urls), collector.limit_hit


class UrlParts(NamedTuple):
    """A hierarchical URL split the way browsers split it; ``host`` is canonical."""

    scheme: str  # lower-case
    host: str  # as returned by url_host
    port: str  # digits as written, "" when absent
    path: str  # as written, backslashes read as slashes for http(s)/ftp/ws(s)
    query: str  # without the "?"
    fragment: str  # without the "#"


def url_host(url: str) -> str | None:
    """The lower-case host a browser would contact, without userinfo, port or trailing dot.

    IPv6 hosts come back without brackets. None when there is no authority or it is invalid.
    """
    parts = url_parts(url)
    return parts.host if parts is not None else None


@lru_cache(maxsize=65536)
def url_parts(url: str) -> UrlParts | None:
    """Split a URL with an authority (``scheme://host...``); None when it has none or the host
    or port is invalid."""
    plain = _PLAIN_CLEAN_URL.fullmatch(url)
    if plain is not None:
        # Fast path: nothing to clean, no userinfo or port; the general path below would split
        # it the same way (tests/unit/perf/test_perf_parsers.py).
        scheme, raw_host, rest = plain.group(1, 2, 3)
        host = canonical_host(raw_host)
        if host is None:
            return None
        rest, _, fragment = rest.partition("#")
        path, _, query = rest.partition("?")
        return UrlParts(scheme, host, "", path.replace("\\", "/"), query, fragment)
    return _url_parts_general(url)


def _url_parts_general(url: str) -> UrlParts | None:
    split = _split(_browser_clean(url))
    if split is None:
        return None
    scheme, authority, rest = split
    host_port = authority.rpartition("@")[2]
    host: str | None
    if host_port.startswith("["):
        end = host_port.find("]")
        if end < 0 or not _valid_port(host_port[end + 1:], bracketed=True):
            return None
        host, port = canonical_host(host_port[: end + 1]), host_port[end + 2:]
    else:
        raw_host, _, port = host_port.partition(":")
        if not _valid_port(port, bracketed=False):
            return None
        host = canonical_host(raw_host)
    if host is None:
        return None
    rest, _, fragment = rest.partition("#")
    path, _, query = rest.partition("?")
    if scheme in _SPECIAL_SCHEMES:
        path = path.replace("\\", "/")
    return UrlParts(scheme, host, port, path, query, fragment)


@lru_cache(maxsize=65536)
def canonical_host(host: str) -> str | None:
    """A host as browsers resolve it: %-decoded, lower-case, punycode, no trailing dot,
    numeric IPv4 forms as dotted quads, IPv6 compressed without brackets. None when it is not
    a valid host."""
    if (host.startswith("[") and host.endswith("]")) or ":" in host:
        try:
            return ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]")).compressed
        except ValueError:
            return None
    if "%" in host:
        host = unquote(host, errors="strict") if _decodable(host) else host
    host = host.lower().rstrip(".")
    if not host:
        return None
    if not host.isascii():
        try:
            # IDNA 2003 (nameprep) lower-cases, maps full-width dots and encodes to punycode.
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if _FORBIDDEN_HOST.search(host):
        return None
    if _ends_in_number(host):
        # Browsers read such a host as an IPv4 address, or refuse the URL (None here).
        return _whatwg_ipv4(host)
    return host


@lru_cache(maxsize=65536)
def is_ip_literal_host(host: str) -> bool:
    """True for IPv4/IPv6 literals, bracketed IPv6 and browser-accepted numeric IPv4 forms."""
    candidate = host.strip().lower().rstrip(".")
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        ipaddress.ip_address(candidate)
        return True
    except ValueError:
        pass
    return _ends_in_number(candidate) and _whatwg_ipv4(candidate) is not None


# ------------------------------------------------------------------------------- plain text
class _Collector:
    """Distinct URLs in first-seen order; refuses (returns False) once over the limit."""

    def __init__(self, limit: int) -> None:
        self.urls: dict[str, None] = {}
        self.seen_raw: set[str] = set()  # matches already normalised, to skip repeats cheaply
        self.limit = limit
        self.limit_hit = False

    def add(self, url: str) -> bool:
        if url in self.urls:
            return True
        if len(self.urls) >= self.limit:
            self.limit_hit = True
            return False
        self.urls[url] = None
        return True


def _scan_text(text: str, collector: _Collector) -> bool:
    """Add the URLs in ``text``; False once the collector is full."""
    for found in iter_text_urls(text):
        url = _trim(found)
        if url in collector.seen_raw:
            continue
        collector.seen_raw.add(url)
        bare_www = url[:4].lower() == "www."
        if bare_www:
            url = "http://" + url
        normal = _normalise(url)
        if normal is None:
            continue
        if bare_www and normal.count(".") < 2:
            continue  # "www.something" with no further dot is a word, not a host
        if not collector.add(normal):
            return False
    return True


def _trim(url: str) -> str:
    """Drop trailing sentence punctuation and closing brackets that were not opened inside.

    Counts are taken once and updated while trimming, so this is linear in ``len(url)``.
    """
    if url and url[-1] not in _TRIM_CANDIDATES:
        return url  # the loop below would stop at once (most URLs end in a letter or "/")
    opened = {opener: url.count(opener) for opener in _CLOSING_BRACKETS.values()}
    closed = {closer: url.count(closer) for closer in _CLOSING_BRACKETS}
    end = len(url)
    while end:
        last = url[end - 1]
        if last in _TRAILING_PUNCTUATION:
            end -= 1
        elif last in _CLOSING_BRACKETS and closed[last] > opened[_CLOSING_BRACKETS[last]]:
            closed[last] -= 1
            end -= 1
        else:
            break
    return url[:end]


# ------------------------------------------------------------------------------------- HTML
class _UrlLimitReachedError(Exception):
    """Raised from a handler to abandon the document once the URL limit is passed."""


class _LinkParser(HTMLParser):
    def __init__(self, collector: _Collector) -> None:
        super().__init__(convert_charrefs=True)
        self._collector = collector
        self._text: list[str] = []
        self._hidden_depth = 0

    # Tags -------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _INLINE_ELEMENTS:
            self.flush_text()
        if tag in _HIDDEN_TEXT_ELEMENTS:
            self._hidden_depth += 1
        for name, value in attrs:
            if value is None:
                continue
            if name in _URL_ATTRIBUTES:
                self._add_link(value)
            elif tag == "meta" and name == "content" and _is_refresh(attrs):
                found = _META_REFRESH_URL.search(value)
                if found:
                    self._add_link(found.group(1))

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TEXT_ELEMENTS and self._hidden_depth:
            self._hidden_depth -= 1
        if tag not in _INLINE_ELEMENTS:
            self.flush_text()

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self._text.append(data)

    # Markup sections the stdlib rejects with AssertionError become bogus comments, as in
    # HTML5 ("<![foo" in HTML content is a bogus comment).
    def parse_marked_section(self, i: int, report: bool = True) -> int:
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i)

    # Helpers ----------------------------------------------------------------------------
    def flush_text(self) -> None:
        # The buffer only ever spans inline elements (block tags flush it), so the pieces
        # join without a separator, as the reader sees them.
        if self._text:
            text = "".join(self._text)
            self._text.clear()  # in place: _feed_fast appends to this list
            # _scan_text finds nothing without "://" or a case-insensitive "www.": no other
            # code point lower-cases or case-folds to "w", ".", ":" or "/" (most runs of text
            # between tags have neither).
            if ("://" in text or "www." in text.lower()) and not _scan_text(
                text, self._collector
            ):
                raise _UrlLimitReachedError

    def unparsed_tail(self) -> str:
        return self.rawdata

    def _add_link(self, value: str) -> None:
        url = _link_target(value)
        if url is None:
            return
        self.flush_text()  # keep first-seen order between text and attributes
        if not self._collector.add(url):
            raise _UrlLimitReachedError


def _scan_html(document: str, collector: _Collector) -> None:
    parser = _LinkParser(collector)
    try:
        # Never parser.close(): see SECURITY above. What feeding left unparsed is an
        # unterminated construct at the end; browsers drop it, we still search its text.
        tail = _feed_fast(parser, document)
        parser.flush_text()
        if tail:
            _scan_text(html.unescape(tail), collector)
    except _UrlLimitReachedError:
        return
    except Exception:  # html.parser on hostile input: fall back to plain-text search
        _scan_text(html.unescape(document), collector)


# --------------------------------------------------------------------------- HTML fast path
# A text run, then a start tag in the common form or an end tag (html.parser's endtagfind).
# Start tags: an ASCII name, attributes each preceded by ASCII whitespace, a plain name with an
# optional double-quoted, single-quoted or bare value, then ">" or "/>". On such a tag every
# html.parser pattern (locatestarttagend_tolerant, tagfind_tolerant, attrfind_tolerant) stops
# where this one does, so it yields the same end, name, attributes and self-closing flag (a bare
# value takes a "/" before ">" in both). The quantifiers are possessive and the pieces disjoint:
# no backtracking, a failed attempt reads at most to the end of the document once.
_WS = r"[ \t\n\r\f]"  # ASCII whitespace; html.parser's \s also takes \v, \x1c-\x1f, \xa0 ...
_ATTRIBUTE_NAME = r"[a-zA-Z_:][-a-zA-Z0-9_:.]*+"
_ATTRIBUTE_VALUE = r"\"[^\"]*+\"|'[^']*+'|[^\s\"'>=][^\s>]*+"
_FAST_ATTRIBUTES = re.compile(rf"({_ATTRIBUTE_NAME})(?:{_WS}*+={_WS}*+({_ATTRIBUTE_VALUE}))?")
_FAST_TOKEN = re.compile(
    r"([^<]*+)(?:"
    rf"<([a-zA-Z][-a-zA-Z0-9:_.]*+)"
    rf"((?:{_WS}++{_ATTRIBUTE_NAME}(?:{_WS}*+={_WS}*+(?:{_ATTRIBUTE_VALUE}))?)*+)"
    rf"{_WS}*+(/?)>"
    r"|</\s*+([a-zA-Z][-.a-zA-Z0-9:_]*+)\s*+>"
    r")?"
)
# A start tag that may carry a URL attribute (the names are ASCII here).
_URL_ATTRIBUTE_HINT = re.compile("href|src|action|background", re.IGNORECASE)
# html.parser and _markupbase patterns, for the constructs _feed_fast follows step for step.
_ENDTAG = re.compile(r"</\s*([a-zA-Z][-.a-zA-Z0-9:_]*)\s*>")  # endtagfind
_COMMENT_CLOSE = re.compile(r"--\s*>")
_DECLARATION_NAME = re.compile(r"[a-zA-Z][-_.a-zA-Z0-9]*\s*")
_MARKED_SECTION_CLOSE = re.compile(r"]\s*]\s*>")
_MS_MARKED_SECTION_CLOSE = re.compile(r"]\s*>")
_WHITESPACE_OR_SEMICOLON = re.compile(r"[\s;]")
_CDATA_CLOSE = {
    name: re.compile(rf"</\s*{name}\s*>", re.IGNORECASE) for name in ("script", "style")
}
_STANDARD_SECTIONS = frozenset(("temp", "cdata", "ignore", "include", "rcdata"))
_MS_SECTIONS = frozenset(("if", "else", "endif"))
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _feed_fast(parser: _LinkParser, document: str) -> str:
    """``parser.feed(document)`` without most of its per-token cost; returns the unparsed tail.

    A transcription of CPython 3.11 ``HTMLParser.goahead(0)`` with ``convert_charrefs``: the
    parser's handlers see what ``feed`` would have given them, except for tags whose handlers
    would only flush the text buffer (no URL attribute, not script/style), which are done here.
    A start tag outside ``_FAST_TOKEN`` or an end tag outside ``endtagfind`` is left to the
    parser itself, with the rest of the document.
    """
    n = len(document)
    text = parser._text  # the parser's buffer, flushed in place by its handlers
    collector = parser._collector
    token = _FAST_TOKEN.match
    unescape = html.unescape
    inline = _INLINE_ELEMENTS
    hidden = _HIDDEN_TEXT_ELEMENTS
    pos = 0
    while True:
        match = token(document, pos)
        assert match is not None  # every part of the pattern is optional
        run, name, attributes, slash, end_name = match.groups()
        start = pos + len(run)  # the "<" after the run, or the end
        if start == n:  # no "<" left: the last text run
            if run:
                # html.parser holds back a run that may end in half a character reference.
                amp = document.rfind("&", max(pos, n - 34))
                if amp >= 0 and not _WHITESPACE_OR_SEMICOLON.search(document, amp):
                    return run
                if not parser._hidden_depth:
                    text.append(unescape(run) if "&" in run else run)
            return ""
        if run and not parser._hidden_depth:
            text.append(unescape(run) if "&" in run else run)
        if name is not None:  # start tag
            pos = match.end()
            tag = name.lower()
            if tag in hidden or (
                attributes and (tag == "meta" or _URL_ATTRIBUTE_HINT.search(attributes))
            ):
                # Only URL attributes and meta refresh are looked at (handle_starttag).
                attrs = _fast_attributes(attributes) if attributes else []
                if slash:
                    parser.handle_startendtag(tag, attrs)
                elif tag in _CDATA_CLOSE:  # script, style
                    parser.handle_starttag(tag, attrs)
                    pos = _skip_cdata(parser, document, pos, tag)
                    if pos < 0:  # no end tag: html.parser leaves the content unparsed
                        return document[~pos:]
                else:
                    parser.handle_starttag(tag, attrs)
                continue
        elif end_name is not None:  # end tag
            pos = match.end()
            tag = end_name.lower()
            if tag in hidden:
                parser.handle_endtag(tag)
                continue
        else:  # other markup at "<", in html.parser's order of tests
            after = document[start + 1:start + 2]
            if after in _ASCII_LETTERS or after == "/":
                # A start or end tag in another form: html.parser reads the rest, in this state.
                parser.feed(document[start:])
                return parser.unparsed_tail()
            if document.startswith("<!--", start):
                found = _COMMENT_CLOSE.search(document, start + 4)
                if found is None:
                    return document[start:]
                pos = found.end()
            elif after == "?":
                end = document.find(">", start + 2)
                if end < 0:
                    return document[start:]
                pos = end + 1
            elif after == "!":
                pos = _skip_declaration(document, start)
                if pos < 0:
                    return document[start:]
            elif start + 1 < n:
                if not parser._hidden_depth:
                    text.append("<")
                pos = start + 1
            else:
                return "<"
            continue
        # A start, self-closing or end tag whose handlers would only flush the buffer (for
        # all but inline elements): _LinkParser.flush_text, inlined.
        if text and tag not in inline:
            buffered = "".join(text)
            text.clear()
            if ("://" in buffered or "www." in buffered.lower()) and not _scan_text(
                buffered, collector
            ):
                raise _UrlLimitReachedError


def _fast_attributes(attributes: str) -> list[tuple[str, str | None]]:
    """``attrfind_tolerant``'s reading of the attributes of a ``_FAST_TOKEN`` start tag."""
    attrs: list[tuple[str, str | None]] = []
    for attribute, raw in _FAST_ATTRIBUTES.findall(attributes):
        value: str | None
        if not raw:  # present values are never empty: quotes or a character
            value = None
        elif raw[0] == '"' or raw[0] == "'":
            value = html.unescape(raw[1:-1])
        else:
            value = html.unescape(raw)
        attrs.append((attribute.lower(), value))
    return attrs


def _skip_cdata(parser: _LinkParser, document: str, pos: int, tag: str) -> int:
    """After ``<script>``/``<style>``: the end of its end tag, or ``~pos`` if there is none.

    html.parser's CDATA mode: content (hidden text) runs to the next ``</tag>``; a candidate
    that ``endtagfind`` does not read as that tag is content too.
    """
    close = _CDATA_CLOSE[tag]
    while True:
        found = close.search(document, pos)
        if found is None:
            return ~pos
        end_tag = _ENDTAG.match(document, found.start())
        pos = found.end()  # the first ">" after "</", where both matches end
        if end_tag is not None and end_tag.group(1).lower() == tag:
            parser.handle_endtag(tag)
            return pos


def _skip_declaration(document: str, start: int) -> int:
    """The end of the ``<!`` construct at ``start`` (not a comment), or -1 if unterminated.

    ``HTMLParser.parse_html_declaration``, with ``_LinkParser.parse_marked_section``.
    """
    if document.startswith("<![", start):
        name_start = start + 3
        found = _DECLARATION_NAME.match(document, name_start)
        if name_start == len(document) or (found is not None and found.end() == len(document)):
            return -1
        if found is not None:
            section = found.group().strip().lower()
            close = (
                _MARKED_SECTION_CLOSE if section in _STANDARD_SECTIONS
                else _MS_MARKED_SECTION_CLOSE if section in _MS_SECTIONS
                else None
            )
            if close is not None:
                found = close.search(document, name_start)
                return -1 if found is None else found.end()
        # Rejected by the stdlib (AssertionError): a bogus comment.
    elif document[start:start + 9].lower() == "<!doctype":
        end = document.find(">", start + 9)
        return -1 if end < 0 else end + 1
    end = document.find(">", start + 2)  # bogus comment
    return -1 if end < 0 else end + 1


def _is_refresh(attrs: list[tuple[str, str | None]]) -> bool:
    return any(
        name == "http-equiv" and (value or "").strip().lower() == "refresh"
        for name, value in attrs
    )


def _link_target(value: str) -> str | None:
    """An absolute http(s)/ftp URL from an attribute value, as a browser would read it."""
    value = _browser_clean(value)
    if value.startswith("//"):
        return _normalise("http:" + value)
    if value[:4].lower() == "www.":
        return _normalise("http://" + value)
    scheme = value.partition(":")[0].lower()
    if scheme not in _LINK_SCHEMES:
        return None  # relative, javascript:, mailto:, data:, cid:, tel: ...
    return _normalise(value)


# ---------------------------------------------------------------------------------- parsing
def _split(url: str) -> tuple[str, str, str] | None:
    """(scheme, authority, rest) of a hierarchical URL, or None."""
    match = _URL_PARTS.fullmatch(url)
    if match is None:
        return None
    scheme, slashes, authority, rest = match.groups()
    scheme = scheme.lower()
    if scheme not in _SPECIAL_SCHEMES and slashes != "//":
        return None  # mailto:, javascript:, urn: ... have no authority
    return scheme, authority, rest


# A lower-case http(s)/ftp URL whose authority is a plain host name (most links): the general
# path below would rebuild exactly the same string.
_PLAIN_URL = re.compile(r"(?:https?|ftp)://[a-z0-9.-]+(?:[/?#\\].*)?", re.DOTALL)
# The same without any control character or space, which browser cleaning would touch.
_PLAIN_CLEAN_URL = re.compile(r"(https?|ftp)://([a-z0-9.-]+)((?:[/?#\\][^\x00-\x20]*)?)")


def _normalise(url: str) -> str | None:
    """``scheme://authority rest`` with scheme and host lower-cased; None if the host is bad."""
    if _PLAIN_URL.fullmatch(url) is not None:
        return url if url_parts(url) is not None else None
    return _normalise_general(url)


def _normalise_general(url: str) -> str | None:
    parts = _split(url)
    if parts is None:
        return None
    if url_parts(url) is None:  # the host or port is invalid
        return None
    scheme, authority, rest = parts
    userinfo, at, host_port = authority.rpartition("@")
    if host_port.startswith("["):
        end = host_port.find("]")
        host, port = host_port[: end + 1], host_port[end + 1:]
    else:
        host, colon, port = host_port.partition(":")
        port = colon + port
    return f"{scheme}://{userinfo}{at}{host.lower()}{port}{rest}"


def _browser_clean(url: str) -> str:
    """WHATWG: strip leading/trailing C0 controls and spaces, remove tabs and newlines inside."""
    return url.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")


def _valid_port(port: str, *, bracketed: bool) -> bool:
    if bracketed:
        if not port:
            return True
        if not port.startswith(":"):
            return False
        port = port[1:]
    return port == "" or (port.isascii() and port.isdigit() and len(port) <= 5)


def _decodable(host: str) -> bool:
    try:
        unquote(host, errors="strict")
        return True
    except UnicodeDecodeError:
        return False


def _ends_in_number(host: str) -> bool:
    """WHATWG "ends in a number": the last label (ignoring one trailing dot) is numeric."""
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    return _is_number_part(labels[-1])


def _whatwg_ipv4(host: str) -> str | None:
    """WHATWG "IPv4 parser": the dotted quad for ``0x7f.1``, ``3232235777`` ..., else None."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        value = _ipv4_number(part)
        if value is None:
            return None
        numbers.append(value)
    if any(value > 255 for value in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    address = numbers[-1]
    for position, value in enumerate(numbers[:-1]):
        address += value * 256 ** (3 - position)
    return str(ipaddress.IPv4Address(address))


def _is_number_part(part: str) -> bool:
    if part[:2] in ("0x", "0X"):
        return all(char in "0123456789abcdefABCDEF" for char in part[2:])
    return part != "" and part.isascii() and part.isdigit()


def _ipv4_number(part: str) -> int | None:
    if part == "":
        return None
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    digits = digits.lstrip("0") or "0"
    if len(digits) > 11:
        return 2**40  # certainly too large; avoids int() on huge strings
    try:
        return int(digits, base) if digits.isascii() else None
    except ValueError:
        return None
