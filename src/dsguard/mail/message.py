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
from dataclasses import dataclass, field
from email.message import Message
from functools import cached_property

from dsguard.config import Limits
from dsguard.mail.addresses import AddressField, decode_words, parse_address_field
from dsguard.mail.headers import Header, split_headers

_ATTACHMENT_TYPES_TEXT = ("text/plain", "text/html")
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
        for h in self.headers:
            index.setdefault(h.key.strip(), []).append(h)
        self._index = index

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

    @cached_property
    def subject(self) -> str | None:
        value = self.first("subject")
        return None if value is None else decode_words(value)

    @cached_property
    def message_id(self) -> str | None:
        return self.first("message-id")

    @cached_property
    def from_fields(self) -> tuple[AddressField, ...]:
        return tuple(parse_address_field(h.value) for h in self.get_all("from"))

    def address_fields(self, key: str) -> tuple[AddressField, ...]:
        return tuple(parse_address_field(h.value) for h in self.get_all(key))

    @cached_property
    def recipients(self) -> tuple[str, ...]:
        out: list[str] = []
        for key in ("to", "cc"):
            for f in self.address_fields(key):
                out.extend(m.addr for m in f.mailboxes)
        return tuple(dict.fromkeys(out))

    # -- body -------------------------------------------------------------------------------
    @cached_property
    def body(self) -> Body:
        body = Body()
        if not self.has_body:
            return body
        if self._single_text_part(body):
            return body
        try:
            _collect(self._mime_root(), body, self.limits)
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

    def _mime_root(self) -> Message:
        # Feed the parser only the MIME headers and the body: the header section was already
        # read, and re-parsing hundreds of Received/X-MS lines is the slow part of stdlib parsing.
        keep = ("content-type", "content-transfer-encoding", "mime-version", "content-disposition")
        lines = [f"{h.name}: {h.value}" for h in self.headers if h.key in keep and not h.malformed]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")
        parser = email.parser.BytesParser(policy=email.policy.compat32)
        return parser.parsebytes(head + self.raw[self.body_offset :])


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
        for defect in getattr(part, "defects", []) if part is not root else []:
            body.defects.append(type(defect).__name__)
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
            continue
        ctype = part.get_content_type().lower()
        disposition = (part.get("content-disposition") or "").split(";")[0].strip().lower()
        filename = _part_filename(part)
        if ctype in _ATTACHMENT_TYPES_TEXT and disposition != "attachment" and not filename:
            data, _ = _payload(part, max(text_budget, 0))
            if not data:
                continue
            text_budget -= len(data)
            charset = part.get_content_charset() or "utf-8"
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
