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
from typing import NamedTuple


class Header(NamedTuple):
    """One header field. A NamedTuple rather than a frozen dataclass: a message has dozens of
    fields and a frozen dataclass costs about five times as much to create. Same constructor,
    attributes, repr, immutability and equality between fields."""

    name: str  # as written, without trailing whitespace
    key: str  # lower-case name used for lookups
    value: str  # unfolded value (CRLF removed before continuation whitespace), leading space stripped
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
        # The earlier of the first LF LF and the first LF CR LF, found in one search that
        # stops there (two bytes.find calls scanned the whole message for the form it does
        # not use). "\n\n\r\n" counts as LF CR LF one byte on, as it always did.
        blank = _BLANK_LINE.search(raw, 0, limit)
        if blank is not None:
            p = blank.start()
            if blank.end() - p == 3:
                end, sep_len = p, 3
            elif raw[p + 2 : p + 4] == b"\r\n" and p + 4 <= limit:
                end, sep_len = p + 1, 3
            else:
                end, sep_len = p, 2
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
    append = headers.append
    new_header = tuple.__new__  # Header(...) without the NamedTuple __new__ call overhead
    # One logical field per chunk: a line break not followed by whitespace ends a field
    # (RFC 5322 section 2.2.3 folding). _CHUNK yields the chunks _FIELD_BREAK.split would,
    # with name and value already split out for the common one-line "Name: value" field (and
    # possibly an extra empty chunk at the end, which is skipped like every empty one).
    chunks = _CHUNK.findall(text)
    # Each chunk gives at most one field: with no more chunks than max_headers the limit
    # cannot be reached, and the per-field test below is skipped for simple fields.
    room = len(chunks) <= max_headers
    for name, value, folded, folded_name, folded_rest, chunk in chunks:
        if name:
            if not room and len(headers) >= max_headers:
                limit_hit = limit_hit or "max_headers"
                break
            append(new_header(Header, (name, name.lower(), value.strip(" \t\r"), "")))
            continue
        if folded_name:
            if not room and len(headers) >= max_headers:
                limit_hit = limit_hit or "max_headers"
                break
            append(_folded_field(folded, folded_name, folded_rest))
            continue
        if not chunk or chunk == "\r":
            continue
        if len(headers) >= max_headers:
            limit_hit = limit_hit or "max_headers"
            break
        header = _odd_field(chunk, first=not headers)
        if isinstance(header, Header):
            append(header)
        elif header:
            defects.append(header)
    return HeaderBlock(tuple(headers), body_offset, has_sep, limit_hit, tuple(defects))


_BLANK_LINE = re.compile(rb"\n\r?\n")
# The field split _CHUNK reproduces (kept as its definition): a line break not followed by
# whitespace ends a field; a chunk that _SIMPLE_FIELD matches is a one-line "Name: value".
_FIELD_BREAK = re.compile(r"\n(?![ \t])")
# RFC 5322 section 2.2: field-name = 1*ftext, printable US-ASCII except ":".
_SIMPLE_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\n]*)\Z")
# One chunk of _FIELD_BREAK.split per match: either a one-line field that _SIMPLE_FIELD matches
# (groups 1 and 2: not followed by a continuation line), or a folded field whose first line
# starts with "Name:" (group 3 the chunk, 4 the name, 5 what follows the colon), or any other
# chunk (group 6: up to the first line break that is not followed by whitespace). The second
# form spans exactly what the third would (the first line and every continuation line).
# Possessive quantifiers: linear time.
_CHUNK = re.compile(
    r"(?:([\x21-\x39\x3b-\x7e]++):([^\n]*+)(?!\n[ \t])"
    r"|(([\x21-\x39\x3b-\x7e]++):([^\n]*+(?:\n[ \t][^\n]*+)++))"
    r"|([^\n]*+(?:\n[ \t][^\n]*+)*+))(?:\n|\Z)"
)
# Possessive quantifiers: a name character is never a space or ":", so giving characters back
# could not make these match; without it, long base64 lines (DKIM b=) were re-tried char by char.
_NAME_COLON = re.compile(r"([\x21-\x39\x3b-\x7e]++)([ \t]*+):")
# A hidden field needs what a real one has after the colon (space, "<" or a quote); folded tag
# lists such as DKIM's "h=\r\n From:To:Subject" do not match.
_HIDDEN_LINE = re.compile(r"\n[ \t]++([\x21-\x39\x3b-\x7e]++)[ \t]*+:[ \t<\"]")


def _hidden_field(chunk: str) -> str:
    """The malformation note for a continuation line that hides a watched field, or ""."""
    hidden = _HIDDEN_LINE.search(chunk)
    if (
        hidden
        and hidden.group(1).lower() in _WATCHED_HIDDEN
        and "signature" not in chunk[:40].lower()
    ):
        return f"a continuation line hides a {hidden.group(1)!r} field"
    return ""


def _folded_field(chunk: str, name: str, rest: str) -> Header:
    """``_odd_field(chunk)`` for a folded field whose first line starts with ``name:``
    (Received, DKIM-Signature ...): the name is already known and no malformation other than
    a hidden field is possible (the colon is on the first line, right after the name)."""
    # Unfolding ``rest`` alone is unfolding the chunk: no CR or LF in "name:".
    value = rest.replace("\r\n", "").replace("\n", "").strip(" \t\r")
    return tuple.__new__(Header, (name, name.lower(), value, _hidden_field(chunk)))


def _odd_field(chunk: str, *, first: bool) -> Header | str:
    """A field that is folded or malformed; a defect description when it is no field at all."""
    malformed = _hidden_field(chunk)
    # Unfold: drop every LF and a CR right before one (what re.sub(r"\r?\n", "") does).
    flat = chunk.replace("\r\n", "").replace("\n", "")
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
        nl = chunk.find("\n")
        if chunk.find(":", 0, len(chunk) if nl == -1 else nl) == -1:
            # "From\r\n : value" -- the name folded away from its colon (espoofer A11).
            malformed = "field name folded away from its colon"
        elif m.group(2):
            malformed = "whitespace between the field name and the colon"
        # tuple.__new__: Header(...) without the NamedTuple __new__ call (see split_headers).
        return tuple.__new__(
            Header, (name, name.lower(), flat[m.end() :].strip(" \t\r"), malformed)
        )
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
