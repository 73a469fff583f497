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

# RFC 5322 section 2.2: field-name = 1*ftext, printable US-ASCII except ":".
_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)([ \t]*):")
# A continuation line that itself looks like a field (" From: x"): a hidden header.
_HIDDEN_FIELD = re.compile(r"^[ \t]+([\x21-\x39\x3b-\x7e]+)[ \t]*:")


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
    # Find the end of the header section: the first empty line (CRLF CRLF or LF LF).
    end = -1
    sep_len = 0
    window = raw[: max_header_bytes + 4]
    for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        pos = window.find(sep)
        if pos != -1 and (end == -1 or pos < end):
            end, sep_len = pos, len(sep)
    if window.startswith((b"\r\n", b"\n")):
        end, sep_len = 0, (2 if window.startswith(b"\r\n") else 1)
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

    headers: list[Header] = []
    defects: list[str] = []
    name_b: bytes | None = None
    parts: list[bytes] = []
    malformed = ""
    awaiting_colon = False  # a bare field name on its own line, colon expected on the next

    def flush() -> None:
        nonlocal name_b, parts, malformed, awaiting_colon
        if name_b is not None:
            value = _decode(b"".join(parts)).strip(" \t")
            name = _decode(name_b)
            headers.append(Header(name, name.lower(), value, malformed))
        name_b, parts, malformed, awaiting_colon = None, [], "", False

    for line in section.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            stripped = line.lstrip(b" \t")
            if awaiting_colon and stripped.startswith(b":"):
                # "From\r\n : value" -- the name folded away from its colon (espoofer A11).
                parts = [stripped[1:]]
                awaiting_colon = False
                continue
            if name_b is None:
                # Whitespace before the first field: a header a lenient parser would read
                # and a strict one would drop (espoofer A9).
                m = _FIELD_NAME.match(stripped)
                if m:
                    name_b, parts = m.group(1), [stripped[m.end() :]]
                    malformed = "leading whitespace before the field name"
                else:
                    defects.append("continuation line with no field before it")
                continue
            hidden = _HIDDEN_FIELD.match(_decode(line[:200]))
            if hidden and hidden.group(1).lower() in _WATCHED_HIDDEN and not malformed:
                malformed = f"a continuation line hides a {hidden.group(1)!r} field"
            parts.append(line)
            continue
        flush()
        if len(headers) >= max_headers:
            limit_hit = limit_hit or "max_headers"
            break
        m = _FIELD_NAME.match(line)
        if m is not None:
            name_b, parts = m.group(1), [line[m.end() :]]
            if m.group(2):
                malformed = "whitespace between the field name and the colon"
            continue
        if _BARE_NAME.match(line):
            name_b, parts, awaiting_colon = line, [], True
            malformed = "field name folded away from its colon"
            continue
        text = _decode(line[:200])
        colon = text.find(":")
        if 0 < colon <= 80:
            name_b, parts = line[:colon].rstrip(b" \t"), [line[colon + 1 :]]
            malformed = "invalid characters in the field name"
        else:
            defects.append(f"line without a field name: {text[:60]!r}")
    flush()
    return HeaderBlock(tuple(headers), body_offset, has_sep, limit_hit, tuple(defects))


_BARE_NAME = re.compile(rb"^[A-Za-z][A-Za-z0-9-]{0,76}$")


# Continuation lines that look like these fields are reported: they hide an identity header
# inside another field (a folded "From" after a Received line, espoofer A9/A11).
_WATCHED_HIDDEN = frozenset({"from", "sender", "reply-to", "to", "resent-from", "return-path"})
