"""Split a raw message into its header fields, fast and without trusting the syntax.

We do not use the stdlib parser for the header section: it is slow on the hot path and it
silently repairs exactly the malformations attackers use to make receivers and mail clients
disagree ("Composition Kills", USENIX Security 2020: space before the colon, folded header
names, a header that starts with whitespace). We keep every field as written and flag the
malformed ones so the checks can report them.

SECURITY: input is attacker-controlled bytes. The header section is cut at ``max_header_bytes``
and ``max_headers`` fields (reported as limits, never an exception); bytes that are not UTF-8 are
replaced, never passed on raw; NUL bytes are kept visible as U+FFFD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Header:
    name: str  # as written, without trailing whitespace
    key: str  # lower-case name used for lookups
    value: (
        str  # unfolded value (CRLF removed before continuation whitespace), leading space stripped
    )
    malformed: str = ""  # why the field is syntactically odd ("" when it is fine)


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    headers: tuple[Header, ...]
    body_offset: int  # index in the raw bytes where the body starts (len(raw) when none)
    has_body_separator: bool
    limit_hit: str = ""  # "", or which limit cut the header section
    defects: tuple[str, ...] = ()


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\x00", "\ufffd")


def split_headers(raw: bytes, *, max_headers: int, max_header_bytes: int) -> HeaderBlock:
    """Return the header fields of ``raw`` in order (topmost first)."""
    # Find the end of the header section: the first empty line (CRLF CRLF or LF LF). Searches
    # are bounded by the limit and by each other, so a large body is never scanned.
    limit = max_header_bytes + 4
    end = -1
    sep_len = 0
    if raw.startswith(b"\r\n"):
        end, sep_len = 0, 2
    elif raw.startswith(b"\n"):
        end, sep_len = 0, 1
    else:
        crlf = raw.find(b"\n\r\n", 0, limit)
        lf = raw.find(b"\n\n", 0, crlf if crlf != -1 else limit)
        if lf != -1:
            end, sep_len = lf, 2
        elif crlf != -1:
            end, sep_len = crlf, 3
    limit_hit = ""
    if end == -1:
        has_sep = False
        if len(raw) > max_header_bytes:
            section = raw[:max_header_bytes]
            limit_hit = "max_header_bytes"
        else:
            section = raw
        body_offset = len(raw)
    else:
        has_sep = True
        section = raw[: end + 1]
        body_offset = end + sep_len
        if end > max_header_bytes:
            section = raw[:max_header_bytes]
            limit_hit = "max_header_bytes"

    text = _decode(section)
    headers: list[Header] = []
    defects: list[str] = []
    # One logical field per chunk: a line break not followed by whitespace ends a field
    # (RFC 5322 section 2.2.3 folding).
    for chunk in _FIELD_BREAK.split(text):
        if not chunk or chunk in ("\r", "\n"):
            continue
        if len(headers) >= max_headers:
            limit_hit = limit_hit or "max_headers"
            break
        m = _SIMPLE_FIELD.match(chunk)
        if m is not None:
            # The common case: name, colon, value on one line.
            value = m.group(2).strip(" \t\r")
            headers.append(Header(m.group(1), m.group(1).lower(), value))
            continue
        header = _odd_field(chunk, first=not headers)
        if isinstance(header, Header):
            headers.append(header)
        elif header:
            defects.append(header)
    return HeaderBlock(tuple(headers), body_offset, has_sep, limit_hit, tuple(defects))


_FIELD_BREAK = re.compile(r"\n(?![ \t])")
# RFC 5322 section 2.2: field-name = 1*ftext, printable US-ASCII except ":".
_SIMPLE_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\n]*)\Z")
_NAME_COLON = re.compile(r"([\x21-\x39\x3b-\x7e]+)([ \t]*):")
_UNFOLD = re.compile(r"\r?\n")
# A hidden field needs what a real one has after the colon (space, "<" or a quote); folded tag
# lists such as DKIM's "h=\r\n From:To:Subject" do not match.
_HIDDEN_LINE = re.compile(r"\n[ \t]+([\x21-\x39\x3b-\x7e]+)[ \t]*:[ \t<\"]")


def _odd_field(chunk: str, *, first: bool) -> Header | str:
    """A field that is folded or malformed; a defect description when it is no field at all."""
    malformed = ""
    hidden = _HIDDEN_LINE.search(chunk)
    if (
        hidden
        and hidden.group(1).lower() in _WATCHED_HIDDEN
        and "signature" not in chunk[:40].lower()
    ):
        malformed = f"a continuation line hides a {hidden.group(1)!r} field"
    flat = _UNFOLD.sub("", chunk)
    if flat[:1] in (" ", "\t"):
        stripped = flat.lstrip(" \t")
        m = _NAME_COLON.match(stripped)
        if not (first and m):
            return "continuation line with no field before it"
        # Whitespace before the first field: a header a lenient parser would read and a strict
        # one would drop (espoofer A9).
        name = m.group(1)
        return Header(
            name,
            name.lower(),
            stripped[m.end() :].strip(" \t\r"),
            "leading whitespace before the field name",
        )
    m = _NAME_COLON.match(flat)
    if m is not None:
        name = m.group(1)
        line_one = chunk.split("\n", 1)[0]
        if ":" not in line_one:
            # "From\r\n : value" -- the name folded away from its colon (espoofer A11).
            malformed = "field name folded away from its colon"
        elif m.group(2):
            malformed = "whitespace between the field name and the colon"
        return Header(name, name.lower(), flat[m.end() :].strip(" \t\r"), malformed)
    colon = flat.find(":")
    if 0 < colon <= 80:
        name = flat[:colon].rstrip(" \t")
        return Header(
            name,
            name.lower(),
            flat[colon + 1 :].strip(" \t\r"),
            "invalid characters in the field name",
        )
    return f"line without a field name: {flat[:60]!r}"


# Continuation lines that look like these fields are reported: they hide an identity header
# inside another field (a folded "From" after a Received line, espoofer A9/A11).
_WATCHED_HIDDEN = frozenset({"from", "sender", "reply-to", "to", "resent-from", "return-path"})
