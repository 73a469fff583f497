"""Convert an Outlook ``.msg`` file (OLE2 / CFB container, [MS-OXMSG]) into RFC 5322 bytes.

What dsguard needs most from a ``.msg`` is the internet header block a received message kept in
``PR_TRANSPORT_MESSAGE_HEADERS`` (0x007D): the Received / Authentication-Results /
X-MS-Exchange-* stamps of the receiving organisation. That block is copied line for line (only
its MIME headers are dropped, because the body is rebuilt); the body and the attachments are
rebuilt as a fresh MIME tree with :class:`email.message.EmailMessage`. A ``.msg`` without that
property (a draft, a sent item) gets From / To / Cc / Subject / Date / Message-ID synthesised from
MAPI properties and an ``X-Dsguard-Msg-Note`` header saying so.

Property streams are named ``__substg1.0_IIIITTTT`` (IIII = property id, TTTT = property type,
[MS-OXMSG] 2.1.3); fixed-size values (PT_LONG, PT_SYSTIME) live in ``__properties_version1.0``
([MS-OXMSG] 2.4), whose header is 32 bytes for the top-level message, 24 for an embedded message
and 8 for attachment / recipient objects. The compressed RTF body (0x1009) is not decoded.

SECURITY: a ``.msg`` is an attacker-supplied container. A corrupt or hostile file can declare
streams far larger than the file, loop its allocation tables, nest embedded messages deeply, or
carry thousands of attachments. Limits: olefile itself bounds sector chains; before opening a
stream we check its declared size against the container size and a per-stream cap (about twice
``max_message_bytes``, for UTF-16 text); at most ``MAX_ATTACHMENTS`` attachments and
``MAX_RECIPIENTS`` recipients per message and ``MAX_OBJECTS`` objects per file; embedded messages
at most ``MAX_EMBED_DEPTH`` deep; all stream bytes read across the whole tree share one budget of
``4 * max_message_bytes + 1 MiB``, and the output is cut at ``max_message_bytes``. Containers over
``MAX_MSG_FILE_BYTES`` are refused.
Header values synthesised from properties are stripped of control characters so a property
cannot inject header lines. Every olefile / email failure becomes a :class:`MsgProblem`.
"""

from __future__ import annotations

import codecs
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from typing import Any, BinaryIO

import olefile

MAX_ATTACHMENTS = 500
MAX_RECIPIENTS = 500
MAX_EMBED_DEPTH = 3
MAX_MSG_FILE_BYTES = 512 * 1024 * 1024
"""A larger container is refused: olefile keeps its allocation tables and directory in memory."""
MAX_PROPERTIES_STREAM = 1024 * 1024
MAX_OBJECTS = 5000
"""Attachments, recipients and embedded messages converted per file, all levels together."""
NOTE_HEADER = "X-Dsguard-Msg-Note"

# Property types ([MS-OXCDATA] 2.11.1).
PT_LONG = 0x0003
PT_OBJECT = 0x000D
PT_STRING8 = 0x001E
PT_UNICODE = 0x001F
PT_SYSTIME = 0x0040
PT_BINARY = 0x0102

# Property ids ([MS-OXPROPS]).
PR_SUBJECT = 0x0037
PR_CLIENT_SUBMIT_TIME = 0x0039
PR_TRANSPORT_MESSAGE_HEADERS = 0x007D
PR_SENDER_NAME = 0x0C1A
PR_SENDER_EMAIL_ADDRESS = 0x0C1F
PR_RECIPIENT_TYPE = 0x0C15
PR_DISPLAY_CC = 0x0E03
PR_DISPLAY_TO = 0x0E04
PR_MESSAGE_DELIVERY_TIME = 0x0E06
PR_BODY = 0x1000
PR_RTF_COMPRESSED = 0x1009
PR_HTML = 0x1013
PR_INTERNET_MESSAGE_ID = 0x1035
PR_DISPLAY_NAME = 0x3001
PR_EMAIL_ADDRESS = 0x3003
PR_ATTACH_DATA = 0x3701
PR_ATTACH_FILENAME = 0x3704
PR_ATTACH_METHOD = 0x3705
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_MIME_TAG = 0x370E
PR_SMTP_ADDRESS = 0x39FE
PR_INTERNET_CPID = 0x3FDE
PR_MESSAGE_CODEPAGE = 0x3FFD
PR_SENDER_SMTP_ADDRESS = 0x5D01
PR_SENT_REPRESENTING_SMTP_ADDRESS = 0x5D02

ATTACH_EMBEDDED_MSG = 5  # PR_ATTACH_METHOD value afEmbeddedMessage
ATTACH_OLE = 6

PROPERTIES_STREAM = "__properties_version1.0"
ATTACH_PREFIX = "__attach_version1.0_#"
RECIP_PREFIX = "__recip_version1.0_#"
SUBSTG_PREFIX = "__substg1.0_"

# The rebuilt body replaces the original MIME structure, so the transport block's MIME headers
# (RFC 2045 section 3 / RFC 2183) would describe a body that is no longer there.
_MIME_HEADERS = frozenset(
    {"content-type", "content-transfer-encoding", "mime-version", "content-disposition"}
)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Windows code page numbers ([MS-OXCDATA]) that Python does not know as "cpNNNN".
_CODEPAGES = {
    1200: "utf-16-le",
    1201: "utf-16-be",
    20127: "ascii",
    20866: "koi8-r",
    21866: "koi8-u",
    50220: "iso-2022-jp",
    50221: "iso-2022-jp",
    50222: "iso-2022-jp",
    51932: "euc-jp",
    51949: "euc-kr",
    52936: "hz",
    54936: "gb18030",
    65001: "utf-8",
    **{28590 + n: f"iso-8859-{n}" for n in range(1, 16) if n != 12},
}


@dataclass(frozen=True, slots=True)
class ConvertedMsg:
    """The RFC 5322 rendering of a ``.msg``; ``truncated`` when something was left out for size."""

    data: bytes
    truncated: bool


@dataclass(frozen=True, slots=True)
class MsgProblem:
    """Why a ``.msg`` could not be converted (one short line, no path)."""

    problem: str


def convert_msg(fp: BinaryIO, *, max_message_bytes: int) -> ConvertedMsg | MsgProblem:
    """Convert the ``.msg`` in ``fp`` (seekable, binary). Never raises on bad input."""
    try:
        fp.seek(0, 2)
        container_size = fp.tell()
        fp.seek(0)
    except (OSError, ValueError) as exc:
        return MsgProblem(_short_reason(exc))
    if container_size > MAX_MSG_FILE_BYTES:
        return MsgProblem(f"file larger than {MAX_MSG_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        ole = olefile.OleFileIO(fp)
    except Exception as exc:  # olefile raises many types on corrupt input
        return MsgProblem(_short_reason(exc))
    try:
        if not _is_outlook_message(ole.root):
            return MsgProblem("no Outlook message properties in this OLE2 file")
        converter = _Converter(ole, container_size, max_message_bytes)
        data = converter.message(ole.root, [], depth=0)
        truncated = converter.truncated or len(data) > max_message_bytes
        return ConvertedMsg(data=data[:max_message_bytes], truncated=truncated)
    except Exception as exc:  # hostile structure: report, never crash the scan
        return MsgProblem(_short_reason(exc))
    finally:
        ole.close()


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[0] if text else ""
    return (reason or type(exc).__name__)[:120]


def _is_outlook_message(root: Any) -> bool:
    names = [str(kid.name).lower() for kid in root.kids]
    return PROPERTIES_STREAM in names and any(n.startswith(SUBSTG_PREFIX) for n in names)


def _clean(value: str) -> str:
    """One header-safe line: control characters (CR, LF, NUL...) become single spaces."""
    return _CONTROL_CHARS.sub(" ", value).strip()


def _python_codec(codepage: int | None) -> str | None:
    if codepage is None or codepage <= 0:
        return None
    name = _CODEPAGES.get(codepage, f"cp{codepage}")
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


class _PropertyObject:
    """The properties of one MAPI object: a message, an attachment or a recipient storage."""

    def __init__(self, converter: _Converter, entry: Any, path: list[str], header_len: int):
        self._converter = converter
        self.entry = entry
        self.path = path
        self.kids: dict[str, Any] = {str(kid.name).lower(): kid for kid in entry.kids}
        self._fixed = self._read_fixed(header_len)

    def _read_fixed(self, header_len: int) -> dict[int, bytes]:
        """PT_LONG / PT_SYSTIME values from ``__properties_version1.0`` ([MS-OXMSG] 2.4.2)."""
        raw = self._converter.read_stream(self, PROPERTIES_STREAM, MAX_PROPERTIES_STREAM)
        values: dict[int, bytes] = {}
        if raw is None:
            return values
        for offset in range(header_len, len(raw) - 15, 16):
            tag = int.from_bytes(raw[offset : offset + 4], "little")
            values[tag] = raw[offset + 8 : offset + 16]
        return values

    def long(self, prop_id: int) -> int | None:
        value = self._fixed.get(prop_id << 16 | PT_LONG)
        return None if value is None else int.from_bytes(value[:4], "little", signed=True)

    def time(self, prop_id: int) -> dt.datetime | None:
        value = self._fixed.get(prop_id << 16 | PT_SYSTIME)
        if value is None:
            return None
        ticks = int.from_bytes(value, "little")  # 100 ns units since 1601-01-01 UTC (FILETIME)
        try:
            return dt.datetime(1601, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ticks // 10)
        except OverflowError:
            return None

    def has(self, prop_id: int, prop_type: int) -> bool:
        return f"{SUBSTG_PREFIX}{prop_id:04x}{prop_type:04x}" in self.kids

    def raw(self, prop_id: int, prop_type: int, cap: int) -> bytes | None:
        return self._converter.read_stream(
            self, f"{SUBSTG_PREFIX}{prop_id:04X}{prop_type:04X}", cap
        )

    def string(self, prop_id: int) -> str | None:
        cap = self._converter.stream_cap
        unicode = self.raw(prop_id, PT_UNICODE, cap)
        if unicode is not None:
            return unicode.decode("utf-16-le", errors="replace").rstrip("\x00")
        eight_bit = self.raw(prop_id, PT_STRING8, cap)
        if eight_bit is None:
            return None
        codec = self.string8_codec()
        return eight_bit.rstrip(b"\x00").decode(codec, errors="replace")

    def string8_codec(self) -> str:
        for prop_id in (PR_MESSAGE_CODEPAGE, PR_INTERNET_CPID):
            codec = _python_codec(self.long(prop_id))
            if codec is not None and not codec.startswith("utf_16"):
                return codec
        return "cp1252"

    def storages(self, prefix: str) -> list[Any]:
        """Sub-storages whose name starts with ``prefix`` (attachments, recipients), by name."""
        return [
            kid
            for name, kid in sorted(self.kids.items())
            if name.startswith(prefix) and kid.entry_type == olefile.STGTY_STORAGE
        ]


class _Converter:
    """Walks one ``.msg`` container, sharing the read budget across embedded messages."""

    def __init__(self, ole: Any, container_size: int, max_message_bytes: int) -> None:
        self.ole = ole
        self.container_size = container_size
        self.max_message_bytes = max_message_bytes
        # A UTF-16 string stream is up to twice the size of its UTF-8 rendering.
        self.stream_cap = 2 * max_message_bytes + 64 * 1024
        # Bytes that may still be read from streams, across the whole tree: enough for the
        # header block and both bodies in UTF-16 plus attachments up to the output limit.
        self.read_budget = 4 * max_message_bytes + 1024 * 1024
        self.objects_left = MAX_OBJECTS
        self.truncated = False

    def take_object(self) -> bool:
        """Count one more attachment / recipient / embedded message against MAX_OBJECTS."""
        self.objects_left -= 1
        if self.objects_left < 0:
            self.truncated = True
            return False
        return True

    def read_stream(self, obj: _PropertyObject, name: str, cap: int) -> bytes | None:
        """Read the stream ``name`` of ``obj``, or None when absent, not a stream or too big."""
        entry = obj.kids.get(name.lower())
        if entry is None or entry.entry_type != olefile.STGTY_STREAM:
            return None
        size = int(entry.size)
        if size > self.container_size:
            raise ValueError(f"stream {name} declares {size} bytes, more than the file holds")
        if size > cap or size > self.read_budget:
            self.truncated = True
            return None
        self.read_budget -= size
        data = self.ole.openstream([*obj.path, str(entry.name)]).read(size)
        return bytes(data)

    # --- one message -------------------------------------------------------------------------

    def message(self, entry: Any, path: list[str], depth: int) -> bytes:
        props = _PropertyObject(self, entry, path, header_len=32 if depth == 0 else 24)
        headers = self._transport_headers(props)  # first: it matters most, budget is shared
        notes: list[str] = []
        body = self._body(props, notes, depth)
        if headers is None:
            headers = self._synthesized_headers(props)
            notes.insert(0, "no transport headers in .msg")
        lines = headers + [f"{NOTE_HEADER}: {_clean(note)}" for note in notes]
        header_block = "".join(line + "\r\n" for line in lines).encode("utf-8", "replace")
        return header_block + body.as_bytes(policy=SMTP)

    def _transport_headers(self, props: _PropertyObject) -> list[str] | None:
        text = props.string(PR_TRANSPORT_MESSAGE_HEADERS)
        if text is None or not text.strip():
            return None
        kept: list[str] = []
        dropping = False
        for line in _LINE_BREAK.split(text):
            if not line.strip():
                continue  # an empty line would end the header block early
            if line[0] in " \t":
                if not dropping:
                    kept.append(line)
                continue
            name = line.split(":", 1)[0].strip().lower() if ":" in line else ""
            dropping = name in _MIME_HEADERS
            if not dropping:
                kept.append(line.replace("\x00", " "))
        return kept or None

    def _synthesized_headers(self, props: _PropertyObject) -> list[str]:
        lines: list[str] = []
        sender = _first_address(
            props.string(PR_SENT_REPRESENTING_SMTP_ADDRESS),
            props.string(PR_SENDER_SMTP_ADDRESS),
            props.string(PR_SENDER_EMAIL_ADDRESS),
        )
        sender_name = _clean(props.string(PR_SENDER_NAME) or "")
        if sender or sender_name:
            lines.append("From: " + _address(sender_name, sender))
        to, cc = self._recipients(props)
        if not to and (display_to := _clean(props.string(PR_DISPLAY_TO) or "")):
            to = [_address(name.strip(), "") for name in display_to.split(";") if name.strip()]
        if not cc and (display_cc := _clean(props.string(PR_DISPLAY_CC) or "")):
            cc = [_address(name.strip(), "") for name in display_cc.split(";") if name.strip()]
        if to:
            lines.append("To: " + ",\r\n ".join(to))
        if cc:
            lines.append("Cc: " + ",\r\n ".join(cc))
        subject = props.string(PR_SUBJECT)
        if subject is not None:
            lines.append("Subject: " + _unstructured("Subject", _clean(subject)))
        when = props.time(PR_CLIENT_SUBMIT_TIME) or props.time(PR_MESSAGE_DELIVERY_TIME)
        if when is not None:
            lines.append("Date: " + format_datetime(when))
        message_id = _clean(props.string(PR_INTERNET_MESSAGE_ID) or "")
        if message_id:
            lines.append("Message-ID: " + message_id)
        return lines

    def _recipients(self, props: _PropertyObject) -> tuple[list[str], list[str]]:
        to: list[str] = []
        cc: list[str] = []
        for kid in props.storages(RECIP_PREFIX)[:MAX_RECIPIENTS]:
            if not self.take_object():
                break
            recipient = _PropertyObject(self, kid, [*props.path, str(kid.name)], header_len=8)
            address = _first_address(
                recipient.string(PR_SMTP_ADDRESS), recipient.string(PR_EMAIL_ADDRESS)
            )
            name = _clean(recipient.string(PR_DISPLAY_NAME) or "")
            if not address and not name:
                continue
            kind = recipient.long(PR_RECIPIENT_TYPE)
            if kind == 2:  # MAPI_CC; MAPI_BCC (3) recipients are not internet headers
                cc.append(_address(name, address))
            elif kind != 3:
                to.append(_address(name, address))
        return to, cc

    # --- body and attachments ---------------------------------------------------------------

    def _body(self, props: _PropertyObject, notes: list[str], depth: int) -> EmailMessage:
        part = EmailMessage(policy=SMTP)
        text = props.string(PR_BODY)
        html = self._html(props)
        fingerprint = hashlib.sha256()
        fingerprint.update((text or "").encode("utf-8", "replace"))
        fingerprint.update(html[0] if html else b"")
        if text is not None:
            part.set_content(text)
        if html is not None:
            html_bytes, charset = html
            if text is None:
                part.set_content(html_bytes, "text", "html", params={"charset": charset})
            else:
                part.add_alternative(html_bytes, "text", "html", params={"charset": charset})
        if text is None and html is None:
            part.set_content("")
            if props.has(PR_RTF_COMPRESSED, PT_BINARY):
                notes.append("body only as compressed RTF (PR_RTF_COMPRESSED), not converted")
        attachments = props.storages(ATTACH_PREFIX)
        if len(attachments) > MAX_ATTACHMENTS:
            notes.append(
                f"{len(attachments) - MAX_ATTACHMENTS} attachments left out "
                f"(limit {MAX_ATTACHMENTS})"
            )
            self.truncated = True
        for number, kid in enumerate(attachments[:MAX_ATTACHMENTS]):
            data = self._attachment(part, props, kid, number, notes, depth)
            fingerprint.update(data)
        _set_boundaries(part, fingerprint.hexdigest()[:32])
        return part

    def _html(self, props: _PropertyObject) -> tuple[bytes, str] | None:
        raw = props.raw(PR_HTML, PT_BINARY, self.stream_cap)
        if raw is None:
            as_text = props.raw(PR_HTML, PT_UNICODE, self.stream_cap)
            if as_text is None:
                return None
            return as_text.decode("utf-16-le", "replace").encode("utf-8", "replace"), "utf-8"
        codec = _python_codec(props.long(PR_INTERNET_CPID))
        if codec is None or codec.startswith("utf_16"):
            try:
                raw.decode("utf-8")
                codec = "utf-8"
            except UnicodeDecodeError:
                codec = "cp1252"  # Windows' default ANSI code page for western Outlook
        return raw, codec

    def _attachment(
        self,
        part: EmailMessage,
        props: _PropertyObject,
        kid: Any,
        number: int,
        notes: list[str],
        depth: int,
    ) -> bytes:
        """Add attachment ``kid`` to ``part`` (or a note why not); return the bytes added."""
        if not self.take_object():
            notes.append(f"attachment {number} left out: more than {MAX_OBJECTS} objects")
            return b""
        path = [*props.path, str(kid.name)]
        attach = _PropertyObject(self, kid, path, header_len=8)
        filename = _clean(
            attach.string(PR_ATTACH_LONG_FILENAME)
            or attach.string(PR_ATTACH_FILENAME)
            or attach.string(PR_DISPLAY_NAME)
            or f"attachment-{number}"
        )[:255]
        method = attach.long(PR_ATTACH_METHOD)
        embedded = attach.kids.get(f"{SUBSTG_PREFIX}{PR_ATTACH_DATA:04x}{PT_OBJECT:04x}")
        if embedded is not None and embedded.entry_type == olefile.STGTY_STORAGE:
            if method == ATTACH_OLE or PROPERTIES_STREAM not in {
                str(k.name).lower() for k in embedded.kids
            }:
                notes.append(f"attachment {number} ({filename}) is an OLE object, left out")
                return b""
            if depth + 1 > MAX_EMBED_DEPTH:
                notes.append(
                    f"embedded message {number} ({filename}) left out: nesting deeper than "
                    f"{MAX_EMBED_DEPTH}"
                )
                return b""
            inner = self.message(embedded, [*path, str(embedded.name)], depth + 1)
            _attach_message(part, inner, filename)
            return inner
        entry = attach.kids.get(f"{SUBSTG_PREFIX}{PR_ATTACH_DATA:04x}{PT_BINARY:04x}")
        if entry is None or entry.entry_type != olefile.STGTY_STREAM:
            return b""  # a by-reference or empty attachment: nothing to carry
        data = attach.raw(PR_ATTACH_DATA, PT_BINARY, self.max_message_bytes)
        if data is None:
            size = int(entry.size)
            notes.append(f"attachment {number} ({filename}, {size} bytes) left out: size limit")
            return b""
        mime_type = (attach.string(PR_ATTACH_MIME_TAG) or "").strip().lower()
        if mime_type == "message/rfc822":
            _attach_message(part, data, filename)
            return data
        if not _MIME_TYPE.fullmatch(mime_type) or mime_type.split("/")[0] in {
            "multipart",
            "message",
        }:
            mime_type = "application/octet-stream"
        maintype, subtype = mime_type.split("/", 1)
        part.add_attachment(data, maintype, subtype, filename=filename)
        return data


def _set_boundaries(part: EmailMessage, digest: str) -> None:
    """Deterministic MIME boundaries, so the same .msg always converts to the same bytes.

    The stdlib picks random boundaries. Ours derive from a hash of the content they separate,
    which that content cannot contain (it would have to include its own hash).
    """
    multiparts = [sub for sub in part.walk() if sub.is_multipart()]
    for number, sub in enumerate(multiparts):
        sub.set_boundary(f"=_dsguard_{digest}_{number}")


def _attach_message(part: EmailMessage, data: bytes, filename: str) -> None:
    # RFC 2046 section 5.2.1: message/rfc822 allows only 7bit, 8bit or binary encodings.
    part.add_attachment(data, "message", "rfc822", cte="8bit", filename=filename)


def _first_address(*candidates: str | None) -> str:
    for candidate in candidates:
        value = _clean(candidate or "")
        if "@" in value:
            return value
    return ""


def _address(name: str, address: str) -> str:
    """An address for a synthesised header; a name without address becomes an empty group."""
    if address:
        # Outlook often stores the address as the display name too; writing it back would
        # fake the "address as display name" spoofing shape that later checks look for.
        if name.strip("'\" ").lower() == address.lower():
            name = ""
        return formataddr((name, address), charset="utf-8")
    # RFC 5322 section 3.4: `display-name ":" ";"` is a valid group with no members, the only
    # way to keep a bare name (PR_DISPLAY_TO holds names only) parseable in an address header.
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    if quoted.isascii():
        return f'"{quoted}":;'
    return _unstructured("To", name) + ":;"


def _unstructured(name: str, value: str) -> str:
    """RFC 2047-encode a non-ASCII value; ASCII is kept as it is."""
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
