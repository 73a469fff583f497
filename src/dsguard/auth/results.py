"""Read ``Authentication-Results`` (RFC 8601) tolerantly, including Microsoft's variant.

Exchange Online writes the header without the authserv-id that RFC 8601 section 2.2 requires,
and inserts the receiving domain as a stray token (``...smtp.mailfrom=fabrikam.com; contoso.com;
dkim=none...``). The ``authres`` library rejects that form and costs about 2 ms per header
(measured here), too slow for the scan hot path, so reading is done by this small parser; the
gateway writes its own header with ``authres``.

SECURITY: values are attacker-controlled below the trusted hop. The parser never raises, caps
the header length and the number of results, and callers decide trust by position and
authserv-id (see ``mail.envelope``), never by what the header says about itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from dsguard.mail.memo import adaptive_memo

_MAX_CHARS = 8192
_MAX_RESULTS = 64
_MAX_DEPTH = 8
_METHOD = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)(?:/\d+)?\s*=\s*([A-Za-z][A-Za-z0-9_-]*)")
_PROP = re.compile(
    r"([A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)?)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]+)"
)


@dataclass(frozen=True, slots=True)
class MethodResult:
    method: str  # lower case: spf, dkim, dmarc, compauth, arc, ...
    result: str  # lower case: pass, fail, softfail, none, ...
    props: tuple[tuple[str, str], ...]  # ("smtp.mailfrom", "contoso.com"), ("reason", "601"), ...
    comment: str

    def prop(self, name: str) -> str | None:
        for key, value in self.props:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class AuthResultsHeader:
    authserv_id: str | None  # None for Microsoft's id-less form
    results: tuple[MethodResult, ...]
    index: int  # position among the message's header fields (0 = topmost)
    raw: str


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside comments and quoted strings."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    skip = -1  # index of a character escaped by a backslash
    # Only the characters that change the state are visited (C-level search), not every one.
    for m in _special_chars(sep).finditer(text):
        i = m.start()
        if i == skip:
            continue
        ch = m.group()
        if ch == "\\":
            skip = i + 1
        elif ch == '"' and depth == 0:
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


@lru_cache(maxsize=8)
def _special_chars(sep: str) -> re.Pattern[str]:
    return re.compile("[" + re.escape("\\\"()" + sep) + "]")


_INNER_COMMENT = re.compile(r"\(([^()]*)\)")
_PLAIN_COMMENTS = re.compile(r'[^()"\\]*+(?:\([^();"\\]*+\)[^()"\\]*+)*+')


def _strip_comments(text: str) -> tuple[str, str]:
    """Remove RFC 5322 comments (nesting allowed, innermost first); return text and comments."""
    if "(" not in text:
        return text, ""
    found = _INNER_COMMENT.findall(text)
    if not found:
        return text, ""  # the first pass below would change nothing
    stripped = _INNER_COMMENT.sub(" ", text)
    if "(" not in stripped:
        # Flat comments (the usual case): the first pass below, and the last.
        return stripped, " ".join([c.strip() for c in found])
    comments: list[str] = []

    def keep(m: re.Match[str]) -> str:
        comments.append(m.group(1).strip())
        return " "

    for _ in range(_MAX_DEPTH):
        stripped = _INNER_COMMENT.sub(keep, text)
        if stripped == text:
            break
        text = stripped
        if "(" not in text:
            break  # another pass could not change anything
    return text, " ".join(comments)


def parse_authentication_results(value: str, index: int = 0) -> AuthResultsHeader:
    text = value[:_MAX_CHARS]
    parse = _parse_results if len(text) <= _CACHED_CHARS else _parse_results_uncached
    authserv_id, results = parse(text)
    return AuthResultsHeader(authserv_id, results, index, value)


# Cached on the (capped) text: a receiver writes the same results for every message from the
# same sender (EOP's "spf=pass (sender IP is ...) smtp.mailfrom=...; dkim=pass ..."), and a
# parse costs microseconds. The answer is immutable (frozen MethodResults in a tuple). Only
# headers of ordinary length are kept (keys of at most 2 M characters in each of the two caches).
# An lru_cache, not an adaptive memo (mail.memo): on mail from new senders it still hits about a
# fifth of the time, and with segments remembered below a miss is cheap; swapped for adaptive
# memos, these two cost more instructions per message in both of bench/scan.py's varieties.
_CACHED_CHARS = 2048


@lru_cache(maxsize=1024)
def _parse_results(text: str) -> tuple[str | None, tuple[MethodResult, ...]]:
    return _results_of_segments(_segments(text), _parse_segment)


def _parse_results_uncached(text: str) -> tuple[str | None, tuple[MethodResult, ...]]:
    """_parse_results for a header too long to be a cache key: its segments are not kept
    either."""
    return _results_of_segments(_segments(text), _parse_segment.__wrapped__)


def _segments(text: str) -> list[str]:
    # Fast paths: without quoted strings or comments a plain split is the same split; so it is
    # when the comments are flat and hold no ";", '"' or backslash (Exchange's "(sender IP
    # is ...)") -- _split_top would find the same semicolons.
    if '"' not in text and ("(" not in text or _PLAIN_COMMENTS.fullmatch(text)):
        return text.split(";")
    return _split_top(text, ";")


def _results_of_segments(
    segments: list[str], parse_segment: Callable[[str], MethodResult | None]
) -> tuple[str | None, tuple[MethodResult, ...]]:
    authserv_id: str | None = None
    # parse_segment gives None exactly when the segment does not start "method=result".
    if parse_segment(segments[0]) is None:
        # RFC 8601: authserv-id [CFWS authres-version] first; Microsoft omits it.
        tokens = _strip_comments(segments[0])[0].split()
        authserv_id = tokens[0].lower() if tokens else ""
        segments = segments[1:]
    results: list[MethodResult] = []
    for segment in segments:
        if len(results) >= _MAX_RESULTS:
            break
        result = parse_segment(segment)
        if result is not None:  # None: "none", Microsoft's stray domain token, or junk
            results.append(result)
    return authserv_id, tuple(results)


# Cached per "method=result props" segment as well: on mail from new senders the header as a
# whole is new (the client IP in the SPF comment, the sender's local part), while most of its
# segments ("dkim=none (message not signed) header.d=none", "compauth=pass reason=100") are
# not. Only segments of cacheable headers (at most _CACHED_CHARS characters) get here.
@lru_cache(maxsize=4096)
def _parse_segment(segment: str) -> MethodResult | None:
    plain, comment = _strip_comments(segment)
    plain = plain.strip()
    m = _METHOD.match(plain)
    if not m:
        return None
    props = tuple([(k.lower(), v.strip('"')) for k, v in _PROP.findall(plain[m.end() :])])
    return MethodResult(m.group(1).lower(), m.group(2).lower(), props, comment)


def parse_received_spf(value: str) -> tuple[str | None, dict[str, str]]:
    """``Received-SPF: Pass (comment) key=value; ...`` (RFC 7208 section 9.1)."""
    text = value[:_MAX_CHARS]
    parse = _parse_received_spf if len(text) <= _CACHED_CHARS else _read_received_spf
    result, pairs = parse(text)
    return result, dict(pairs)  # a dict of the caller's own: the remembered answer is shared


def _read_received_spf(text: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    text, _ = _strip_comments(text)
    words = text.split()
    result = words[0].lower() if words else None
    pairs = {k.lower(): v.strip('"') for k, v in _PROP.findall(text)}
    return result, tuple(pairs.items())


# Memoised like _parse_results, for the same reason, but adaptively (mail.memo): the field names
# the client IP twice (comment and client-ip=), so on mail from new senders it is new every time
# (1 % hits in bench/scan.py's "unique" variety) and is then not kept.
_parse_received_spf = adaptive_memo(_read_received_spf, 1024)
