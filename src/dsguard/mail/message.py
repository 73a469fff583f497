"""A parsed message: headers at once, the MIME body only when a check asks for it.

Most verdicts are decided by the header section; the body (text for lures and links,
attachments for QR codes) is parsed lazily and only once, with the stdlib's compat32 parser
fed the body alone.

SECURITY: every size is capped by ``config.Limits``: header count and bytes (``headers``),
MIME depth and part count, decoded text bytes, attachment bytes. Hitting a cap is recorded in
``limit_hits`` for the checks to report, never raised. Parser crashes on hostile MIME
(including RecursionError on absurd nesting) become a recorded defect.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from itertools import pairwise
from typing import Any, Generic, Self, TypeVar, overload

from dsguard.config import Limits
from dsguard.mail.addresses import AddressField, decode_words, parse_address_field
from dsguard.mail.headers import Header, split_headers
from dsguard.mail.memo import adaptive_memo

_T = TypeVar("_T")


class lazy_attribute(Generic[_T]):  # noqa: N801 -- used as a decorator, like cached_property
    """``functools.cached_property`` without its lock: computed on first access and stored in
    the instance ``__dict__`` under the same name (later reads never reach this descriptor).

    Python 3.11's cached_property takes a class-wide RLock on every first access (removed in
    3.12, gh-87634); a scan reads some twenty such values per message, where the lock cost as
    much as the work. Two threads reading the same new value at once may both compute it; the
    values here are pure functions of the message, so either result is the same.
    """

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Self: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Self | _T:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.func(obj)
        return value


_ATTACHMENT_TYPES_TEXT = ("text/plain", "text/html")
# The trace fields ParsedMessage locates, by exact (unstripped) key.
_TRACE_FIELDS = {"received": 0, "authentication-results": 1, "received-spf": 2}
_CHARSET = re.compile(r"charset\s*=\s*(\"[^\"]{1,40}\"|[^\s;]{1,40})", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes  # decoded, at most limits.max_attachment_bytes
    size: int  # decoded size before capping
    inline: bool


@dataclass(slots=True)
class Body:
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    limit_hits: list[tuple[str, str]] = field(default_factory=list)  # (finding id, detail)


class ParsedMessage:
    def __init__(
        self, raw: bytes, limits: Limits, *, truncated: bool = False, size: int | None = None
    ):
        self.raw = raw
        self.limits = limits
        self.size = len(raw) if size is None else size
        block = split_headers(
            raw, max_headers=limits.max_headers, max_header_bytes=limits.max_header_bytes
        )
        self.headers: tuple[Header, ...] = block.headers
        self.body_offset = block.body_offset
        self.has_body = block.has_body_separator
        self.header_defects = block.defects
        self.limit_hits: list[tuple[str, str]] = []
        if truncated:
            self.limit_hits.append(
                ("LIMIT_MESSAGE_SIZE", f"{self.size} bytes; analysed the first {len(raw)}")
            )
        if block.limit_hit:
            self.limit_hits.append(("LIMIT_HEADERS", f"{block.limit_hit} reached"))
        index: dict[str, list[Header]] = {}
        malformed: list[Header] = []
        # Where the trace fields are (mail.envelope reads them by position), found in this
        # pass rather than in a second one over every field: (position, value) of each
        # Received field, positions of Authentication-Results and Received-SPF fields.
        received: list[tuple[int, str]] = []
        auth_results: list[int] = []
        received_spf: list[int] = []
        trace_kind = _TRACE_FIELDS.get
        # h[1] is h.key and h[3] h.malformed: plain indexing skips the NamedTuple properties,
        # and get() skips the empty list setdefault() builds for every field (35 a message).
        for i, h in enumerate(self.headers):
            key = h[1]
            kind = trace_kind(key)
            if kind is not None:
                if kind == 0:
                    received.append((i, h[2]))
                elif kind == 1:
                    auth_results.append(i)
                else:
                    received_spf.append(i)
            if h[3]:
                malformed.append(h)
                # Only a malformed field can have whitespace around its name (split_headers).
                index.setdefault(key.strip(), []).append(h)
                continue
            found = index.get(key)
            if found is None:
                index[key] = [h]
            else:
                found.append(h)
        self._index = index
        self.received_fields = received
        self.auth_results_positions = auth_results
        self.received_spf_positions = received_spf
        # The fields split_headers flagged, in order (most messages have none).
        self.malformed_fields: tuple[Header, ...] = tuple(malformed)

    # -- headers ----------------------------------------------------------------------------
    def get_all(self, key: str) -> list[Header]:
        return self._index.get(key, [])

    def first(self, key: str) -> str | None:
        found = self._index.get(key)
        return found[0].value if found else None

    def index_of(self, header: Header) -> int:
        for i, h in enumerate(self.headers):
            if h is header:
                return i
        return -1

    @lazy_attribute
    def subject(self) -> str | None:
        value = self.first("subject")
        return None if value is None else decode_words(value)

    @lazy_attribute
    def message_id(self) -> str | None:
        return self.first("message-id")

    @lazy_attribute
    def from_fields(self) -> tuple[AddressField, ...]:
        return self.address_fields("from")

    def address_fields(self, key: str) -> tuple[AddressField, ...]:
        found = self._index.get(key)
        if found is None:
            return ()  # the usual answer for Sender, Resent-From, Reply-To, Cc
        # A list comprehension, not a generator: no generator object per call.
        return tuple([parse_address_field(h[2]) for h in found])

    @lazy_attribute
    def recipients(self) -> tuple[str, ...]:
        out: list[str] = []
        for key in ("to", "cc"):
            for f in self.address_fields(key):
                out.extend(m.addr for m in f.mailboxes)
        return tuple(dict.fromkeys(out))

    # -- body -------------------------------------------------------------------------------
    @lazy_attribute
    def body(self) -> Body:
        body = Body()
        if not self.has_body:
            return body
        if self._single_text_part(body):
            return body
        try:
            root = self._flat_multipart_root()
            _collect(root if root is not None else self._mime_root(), body, self.limits)
        except RecursionError:
            body.defects.append("MIME nesting too deep for the parser")
            body.limit_hits.append(("LIMIT_MIME_DEPTH", "parser recursion limit"))
        except Exception as exc:
            body.defects.append(f"MIME parse failed: {type(exc).__name__}")
        return body

    def _single_text_part(self, body: Body) -> bool:
        """Decode a non-multipart text/plain or text/html body without the MIME parser (most
        mail); False when the structure needs the parser."""
        ctype_raw = self.first("content-type") or "text/plain"
        main, _, params = ctype_raw.partition(";")
        ctype = main.strip().lower()
        if ctype not in _ATTACHMENT_TYPES_TEXT or len(self.get_all("content-type")) > 1:
            return False
        if (
            "name=" in params.lower()
            or "attachment" in (self.first("content-disposition") or "").lower()
        ):
            return False
        cte = (self.first("content-transfer-encoding") or "7bit").strip().lower()
        data = self.raw[self.body_offset : self.body_offset + self.limits.max_text_bytes * 2]
        try:
            if cte == "base64":
                data = binascii.a2b_base64(data)
            elif cte == "quoted-printable":
                data = binascii.a2b_qp(data)
            elif cte not in ("7bit", "8bit", "binary"):
                return False
        except (binascii.Error, ValueError):
            return False
        data = data[: self.limits.max_text_bytes]
        m = _CHARSET.search(params)
        charset = m.group(1).strip('"').lower() if m else "utf-8"
        try:
            text = data.decode(charset, "replace")
        except LookupError:
            text = data.decode("utf-8", "replace")
        (body.htmls if ctype == "text/html" else body.texts).append(text)
        return True

    def _mime_head(self) -> bytes:
        # Only the MIME headers and the body go to the parser: the header section was already
        # read, and re-parsing hundreds of Received/X-MS lines is the slow part of stdlib parsing.
        keep = ("content-type", "content-transfer-encoding", "mime-version", "content-disposition")
        lines = [f"{h.name}: {h.value}" for h in self.headers if h.key in keep and not h.malformed]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")

    def _mime_root(self) -> Message:
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        return parser.parsebytes(self._mime_head() + self.raw[self.body_offset :])

    def _flat_multipart_root(self) -> Message | None:
        """The tree ``_mime_root`` builds, for a multipart whose parts are not multiparts
        themselves and whose structure is clean; None for anything else.

        The stdlib parser takes a Python step per body line, so a message with a base64
        attachment costs it hundreds of microseconds. Here the body is cut at the boundary
        lines with ``str.find``, and the stdlib still parses the root's and each part's header
        block and decodes every payload, so content types, parameters, file names, charsets,
        transfer encodings and header defects mean exactly what they meant. Any shape whose
        parse involves more than that -- a missing start or close boundary, adjacent boundary
        lines, a part without its blank line, nested multiparts or message/* parts, a bare CR,
        a "From " header line, multipart/digest -- is left to the parser
        (tests/unit/perf/test_perf_multipart.py compares both on hostile structures).
        """
        try:
            return self._flat_multipart_root_or_none()
        except Exception:
            return None  # the general path decides what this input means

    def _flat_multipart_root_or_none(self) -> Message | None:
        ctype = (self.first("content-type") or "").lstrip().lower()
        if not ctype.startswith("multipart/") or ctype.startswith("multipart/digest"):
            return None
        compat = email.policy.compat32
        root = email.parser.BytesParser(policy=compat).parsebytes(
            self._mime_head(), headersonly=True
        )
        if root.defects or root.get_content_maintype() != "multipart":
            return None
        if root.get_content_type() == "multipart/digest":
            return None  # parts default to message/rfc822 there
        boundary = root.get_boundary()
        if not boundary:
            return None
        if str(root.get("content-transfer-encoding", "8bit")).lower() not in _MULTIPART_CTES:
            return None  # the parser records a defect for these
        # BytesParser reads bytes as ASCII with surrogateescape; lines end at CRLF, CR or LF.
        text = self.raw[self.body_offset :].decode("ascii", "surrogateescape")
        if text.count("\r") != text.count("\r\n"):
            return None  # a bare CR ends a line for the parser; not handled here
        separator = "--" + boundary
        marks: list[tuple[int, int, bool]] = []  # (line start, line end, closing?) per boundary
        at = text.find(separator)
        while at != -1:
            if at == 0 or text[at - 1] == "\n":
                eol = text.find("\n", at)
                end = len(text) if eol == -1 else eol + 1
                closing = _boundary_line(text[at + len(separator) : end])
                if closing is not None:
                    marks.append((at, end, closing))
            at = text.find(separator, at + 1)
        if not marks or marks[0][2]:
            return None  # no start boundary
        parts: list[Message | str] = []
        # Each part runs from the end of one delimiter line to the start of the next boundary
        # line; the first close delimiter ends the multipart (what follows is epilogue).
        for (_, start, _), (next_at, _, next_closing) in pairwise(marks):
            if next_at == start:
                return None  # adjacent boundary lines: the parser skips them its own way
            part = _flat_part(text, start, next_at)
            if part is None:
                return None
            parts.append(part)
            if next_closing:
                break
        else:
            return None  # no close boundary: a defect for the parser
        root.set_payload(parts)
        return root


_MULTIPART_CTES = ("7bit", "8bit", "binary")
# The stdlib feedparser's header-line test (email.feedparser.headerRE).
_PART_HEADER_LINE = re.compile(r"^(From |[\041-\071\073-\176]*:|[\t ])")


def _boundary_line(rest: str) -> bool | None:
    """What follows "--boundary" on a line: True for a close delimiter, False for a part
    delimiter, None when it is no delimiter line. The feedparser's test, without compiling a
    pattern per boundary: ``(--)?[ \\t]*(\\r\\n|\\r|\\n)?$``."""
    closing = rest.startswith("--")
    if closing:
        rest = rest[2:]
    return closing if rest.lstrip(" \t") in ("", "\n", "\r\n", "\r") else None


@dataclass(frozen=True, slots=True)
class PartFacts:
    """What ``_collect`` reads from a leaf part's header block, read by the stdlib's own
    methods (so it means what it means for a parsed part)."""

    headers: tuple[tuple[str, str], ...]  # the parsed fields, for the payload decoder
    defects: tuple[str, ...]  # defect class names
    content_type: str  # lower case
    disposition: str  # the disposition token, lower case ("" without the field)
    filename: str
    charset: str  # "utf-8" when none is given


def _read_part_head(head: str) -> PartFacts | None:
    """A part's header block (ending with its blank line) as the stdlib reads it; None for a
    multipart or message/* part, which the flat path does not take."""
    part = email.parser.Parser(policy=email.policy.compat32).parsestr(head, headersonly=True)
    if part.get_content_maintype() in ("multipart", "message"):
        return None
    return _facts_of(part, tuple(part._headers))  # type: ignore[attr-defined]  # as parsed


def _facts_of(part: Message, headers: tuple[tuple[str, str], ...] = ()) -> PartFacts:
    return PartFacts(
        headers=headers,
        defects=_defect_names(part),
        content_type=part.get_content_type().lower(),
        disposition=(part.get("content-disposition") or "").split(";")[0].strip().lower(),
        filename=_part_filename(part),
        charset=part.get_content_charset() or "utf-8",
    )


# Part header blocks recur: a mailer writes the same "Content-Type: text/plain;
# charset=utf-8 / Content-Transfer-Encoding: quoted-printable" into every message, while the
# stdlib spends ~20 us a part parsing it and reading its parameters again. Pure function of
# the text, immutable answer; the memo stops storing when the heads are all different (e.g.
# every part an attachment with its own file name).
_part_head = adaptive_memo(_read_part_head, 1024)


def _defect_names(part: Message) -> tuple[str, ...]:
    return tuple(type(defect).__name__ for defect in getattr(part, "defects", []))


class _LeafPart(Message):
    """A leaf part of the flat path: a compat32 Message (``get_payload(decode=True)`` decodes
    it exactly as a parsed part) that carries its header facts."""

    facts: PartFacts


def _flat_part(text: str, start: int, end: int) -> Message | None:
    """One part between two boundary lines, parsed as the feedparser would: header lines up to
    a blank line, then the payload without the line ending that belongs to the next boundary."""
    pos = start
    while True:
        eol = text.find("\n", pos, end)
        if eol == -1:
            return None  # no blank line before the next boundary
        line = text[pos : eol + 1]
        if line in ("\n", "\r\n"):
            break
        if not _PART_HEADER_LINE.match(line) or line.startswith("From "):
            return None  # the parser would record a defect or an envelope line
        pos = eol + 1
    facts = _part_head(text[start : eol + 1])
    if facts is None:
        return None
    part = _LeafPart(email.policy.compat32)
    part._headers = list(facts.headers)  # type: ignore[attr-defined]  # Message internals
    part.facts = facts
    payload = text[eol + 1 : end]
    # The feedparser strips NLCRE_eol.search(payload); testing the end is the same (and does
    # not try the pattern at every character of a large attachment).
    if payload.endswith("\r\n"):
        payload = payload[:-2]
    elif payload.endswith(("\r", "\n")):
        payload = payload[:-1]
    part.set_payload(payload)
    return part


def _part_filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except Exception:
        return ""
    if isinstance(name, tuple):  # RFC 2231 value triple
        name = name[2] or ""
    return decode_words(str(name))[:255]


def _payload(part: Message, cap: int) -> tuple[bytes, int]:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return b"", 0
    if not isinstance(data, bytes):
        return b"", 0
    return data[:cap], len(data)


def _collect(root: Message, body: Body, limits: Limits) -> None:
    stack: list[tuple[Message, int]] = [(root, 0)]
    parts = 0
    text_budget = limits.max_text_bytes
    for defect in getattr(root, "defects", []):
        body.defects.append(type(defect).__name__)
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > limits.max_mime_parts:
            body.limit_hits.append(("LIMIT_MIME_PARTS", f"more than {limits.max_mime_parts} parts"))
            return
        if depth > limits.max_mime_depth:
            body.limit_hits.append(("LIMIT_MIME_DEPTH", f"deeper than {limits.max_mime_depth}"))
            continue
        if part.is_multipart():
            for defect in getattr(part, "defects", []) if part is not root else []:
                body.defects.append(type(defect).__name__)
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
            continue
        if isinstance(part, _LeafPart):
            facts = part.facts
            body.defects.extend(facts.defects)  # a flat path leaf is never the root
        else:
            if part is not root:
                body.defects.extend(_defect_names(part))
            facts = _facts_of(part)
        ctype = facts.content_type
        disposition = facts.disposition
        filename = facts.filename
        if ctype in _ATTACHMENT_TYPES_TEXT and disposition != "attachment" and not filename:
            data, _ = _payload(part, max(text_budget, 0))
            if not data:
                continue
            text_budget -= len(data)
            charset = facts.charset
            try:
                text = data.decode(charset, "replace")
            except LookupError:
                text = data.decode("utf-8", "replace")
            (body.htmls if ctype == "text/html" else body.texts).append(text)
            continue
        data, size = _payload(part, limits.max_attachment_bytes)
        body.attachments.append(
            Attachment(filename, ctype, data, size, inline=disposition == "inline")
        )
