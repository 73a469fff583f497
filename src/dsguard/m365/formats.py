"""Read what Exchange Online admins can export, as a stream of :class:`TraceRecord`.

Formats, detected from the content (header columns, JSON shape, mail headers), never from the
file name:

==================  ===========================================================================
``message-trace``   ``Get-MessageTrace`` / ``Get-MessageTraceV2`` saved with ``Export-Csv``
                    (an optional ``#TYPE`` first line); columns Received, SenderAddress,
                    RecipientAddress, FromIP ...
``trace-summary``   the portal's Enhanced summary report and Start-HistoricalSearch's
                    MessageTrace / ConnectorReport CSVs: origin_timestamp_utc, sender_address,
                    recipient_status, original_client_ip ...
``trace-extended``  the Extended report / MessageTraceDetail: one row per event (event_id,
                    date_time_utc, client_ip, client_hostname, return_path, custom_data ...)
``emailevents``     Defender Advanced Hunting ``EmailEvents`` CSV: Timestamp,
                    SenderMailFromAddress, SenderFromAddress, SenderIPv4, Connectors,
                    AuthenticationDetails ...
``graph-json``      Graph ``exchangeMessageTrace`` JSON (a ``value`` array, or a bare array)
``graph-jsonl``     the same objects as JSON lines
``mail``            .eml / .msg / mbox / Maildir files, through dsguard's loaders and Scanner
==================  ===========================================================================

Text encodings: UTF-8 with or without a byte-order mark, UTF-16 LE/BE with a BOM (the portal's
downloads are UTF-16 LE) or recognisably without one. Delimiter: comma, or the semicolon / tab
of ``Export-Csv -UseCulture``.

SECURITY: exports are attacker-influenced (subjects, HELO names and addresses are written by
whoever sent the mail) and may be huge. Everything is streamed: CSV through the csv module over
a text stream read in bounded lines (``MAX_LINE_CHARS``; a file without line breaks cannot be
slurped), JSON arrays item by item with an incremental decoder (``MAX_JSON_ITEM_CHARS`` per
item, never ``json.load`` of the whole file). Cells are cut to ``MAX_CELL_CHARS``; IP addresses
are parsed, not trusted; files must be regular files (a FIFO cannot hang the run); directory
walks do not follow symlinks, skip hidden entries and stop at ``MAX_DIR_DEPTH``. No exception
leaves :meth:`ExportReader.records` for any content: a file that cannot be read becomes one
error line naming the file and what was expected, and the other files are still read.
"""

from __future__ import annotations

import codecs
import csv
import email.utils
import io
import ipaddress
import json
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, BinaryIO

from dsguard.auth.summary import summarise
from dsguard.config import Config
from dsguard.m365.records import Direction, TraceRecord, connector_from_export
from dsguard.mail.envelope import analyse_hops
from dsguard.mail.message import ParsedMessage
from dsguard.mail.source import LoadError, RawMessage, iter_messages
from dsguard.model import AttributionKind
from dsguard.scan import Scanner

MAX_LINE_CHARS = 1024 * 1024
MAX_CELL_CHARS = 1000
MAX_ADDRESS_CHARS = 320
MAX_HELO_CHARS = 255
MAX_JSON_ITEM_CHARS = 1024 * 1024
MAX_DIR_DEPTH = 32
SNIFF_BYTES = 64 * 1024
EXTENDED_WINDOW = 10_000  # messages whose events may still be interleaved with others
_READ_CHUNK = 256 * 1024
_CACHE_LIMIT = 65_536


class Format(StrEnum):
    MESSAGE_TRACE = "message-trace"
    TRACE_SUMMARY = "trace-summary"
    TRACE_EXTENDED = "trace-extended"
    EMAILEVENTS = "emailevents"
    GRAPH_JSON = "graph-json"
    GRAPH_JSONL = "graph-jsonl"
    MAIL = "mail"


FORMAT_TITLES: dict[Format, str] = {
    Format.MESSAGE_TRACE: "Get-MessageTrace / Get-MessageTraceV2 (Export-Csv)",
    Format.TRACE_SUMMARY: "Enhanced summary / historical search (MessageTrace, ConnectorReport)",
    Format.TRACE_EXTENDED: "Extended report / historical search MessageTraceDetail",
    Format.EMAILEVENTS: "Defender Advanced Hunting EmailEvents",
    Format.GRAPH_JSON: "Graph exchangeMessageTrace JSON",
    Format.GRAPH_JSONL: "Graph exchangeMessageTrace JSON lines",
    Format.MAIL: "mail files (.eml, .msg, mbox, Maildir)",
}

EXPECTED_COLUMNS = (
    "expected columns such as Received, SenderAddress, RecipientAddress, FromIP (message trace), "
    "origin_timestamp_utc, sender_address, recipient_status, original_client_ip (Enhanced "
    "summary / historical search), date_time_utc, event_id, client_ip (Extended) or Timestamp, "
    "SenderMailFromAddress, SenderFromAddress, SenderIPv4, Connectors (EmailEvents)"
)
NOT_AN_EXPORT = "not a message trace or EmailEvents export"
EXPECTED_GRAPH = (
    "expected Graph exchangeMessageTrace objects with receivedDateTime, senderAddress, "
    "recipientAddress, fromIP"
)


@dataclass(slots=True)
class InputFile:
    """One file that was read (or could not be), for the report's list of inputs."""

    path: str
    format: Format | None = None
    detail: str = ""
    encoding: str = ""
    rows: int = 0
    records: int = 0
    bad_rows: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class _FormatError(Exception):
    """A file turned out unreadable after its start was accepted (syntax error, huge line)."""


# -- small value parsers ---------------------------------------------------------------------

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?\s*"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?\Z",
    re.IGNORECASE,
)
_SLASHED = re.compile(
    r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4})[ T,]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?"
    r"(?:\s*([AaPp])\.?[Mm]\.?)?\s*(Z|UTC|GMT)?\Z"
)


def parse_timestamp(text: str) -> datetime | None:
    """A trace timestamp as an aware UTC datetime, or None.

    Microsoft's exports are in UTC (message-trace docs). Accepted: ISO 8601 with up to 7
    fraction digits (``2026-03-02T09:31:04.1230000Z``, Graph, EmailEvents, portal reports) and
    ``DateTime.ToString()`` as Export-Csv writes it: en-US ``3/2/2026 9:31:04 AM``, invariant
    ``03/02/2026 09:31:04`` (month first), and day-first ``02.03.2026 09:31:04`` / a first
    number above 12.
    """
    value = text.strip()
    if not value:
        return None
    m = _ISO.match(value)
    try:
        if m:
            year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
            second = int(m.group(6) or 0)
            micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
            stamp = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
            zone = m.group(8)
            if zone and zone.upper() != "Z":
                sign = 1 if zone[0] == "+" else -1
                digits = zone[1:].replace(":", "")
                offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
                stamp = stamp.replace(tzinfo=timezone(sign * offset)).astimezone(UTC)
            return stamp
        m = _SLASHED.match(value)
        if m:
            first, sep, second_n, year = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            # Month first (en-US, invariant) unless the separator is '.' (de-DE and others) or
            # the first number cannot be a month.
            if sep == "." or first > 12:
                day, month = first, second_n
            else:
                month, day = first, second_n
            hour, minute, sec = int(m.group(5)), int(m.group(6)), int(m.group(7) or 0)
            half = (m.group(8) or "").lower()
            if half:
                if not 1 <= hour <= 12:
                    return None
                hour = hour % 12 + (12 if half == "p" else 0)
            return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    return None


_ip_cache: dict[str, str | None] = {}


def normalise_ip(text: str) -> str | None:
    """The IP address in an export cell (``[192.0.2.1]``, ``::ffff:192.0.2.1`` too), or None."""
    value = text.strip()
    if not value:
        return None
    if value in _ip_cache:
        return _ip_cache[value]
    candidate = value.strip("[]")
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        found = None
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        found = str(address)
    if len(_ip_cache) >= _CACHE_LIMIT:
        _ip_cache.clear()
    _ip_cache[value] = found
    return found


def normalise_address(text: str | None) -> str | None:
    """An export's e-mail address cell, lower-cased and unwrapped; ``""`` for ``<>``."""
    if text is None:
        return None
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value.lower()[:MAX_ADDRESS_CHARS]


def _cut(text: str, limit: int = MAX_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit]


def _direction(value: str) -> Direction:
    v = value.strip().lower()
    if v in ("1", "incoming", "inbound", "received", "receive"):
        return Direction.INBOUND
    if v in ("2", "originating", "outbound", "outgoing", "sent", "send"):
        return Direction.OUTBOUND
    if v in ("3", "intra-org", "intraorg", "intra_org", "internal"):
        return Direction.INTRA_ORG
    return Direction.UNKNOWN


def _auth_word(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return text[:40] or None


# -- text streams ----------------------------------------------------------------------------


class _CountingRaw(io.RawIOBase):
    """A file object that reports every chunk of bytes read (progress bar)."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n and self._on_bytes is not None:
            self._on_bytes(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _NotRegularFileError(Exception):
    pass


def _open_regular(path: str) -> BinaryIO:
    # O_NONBLOCK: a FIFO put where a file was expected must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegularFileError
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sniff_encoding(head: bytes) -> tuple[str, int]:
    """(codec, length of the byte-order mark) for a file starting with ``head``."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2
    sample = head[:4096]
    half = len(sample) // 2
    if half >= 2:
        # ASCII text in UTF-16 has a NUL in every other byte.
        even_nul, odd_nul = sample[0::2].count(0), sample[1::2].count(0)
        if odd_nul > half * 0.3 and even_nul < half * 0.05:
            return "utf-16-le", 0
        if even_nul > half * 0.3 and odd_nul < half * 0.05:
            return "utf-16-be", 0
    return "utf-8", 0


def _open_text(
    path: str, codec: str, bom: int, on_bytes: Callable[[int], None] | None
) -> io.TextIOWrapper:
    raw = _open_regular(path)
    try:
        raw.seek(bom)
        if bom and on_bytes is not None:
            on_bytes(bom)
        buffered = io.BufferedReader(_CountingRaw(raw, on_bytes), _READ_CHUNK)
        # errors="replace": bad bytes in a hostile export become U+FFFD, never an exception.
        return io.TextIOWrapper(buffered, encoding=codec, errors="replace", newline="")
    except BaseException:
        raw.close()
        raise


class _Lines:
    """Physical lines of a text stream, each at most ``MAX_LINE_CHARS``; counts them."""

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self._stream = stream
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(MAX_LINE_CHARS)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) >= MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise _FormatError(
                f"line {self.number} is longer than {MAX_LINE_CHARS // 1024} KiB: not an export"
            )
        return line


# -- detection -------------------------------------------------------------------------------

_HEADER_FIELD = re.compile(r"[ \t]*[A-Za-z0-9][\x21-\x39\x3b-\x7e]*[ \t]*:")
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _norm_column(name: str) -> str:
    return name.strip().strip("\ufeff\"'<> ").lower()


class Columns:
    """Header column positions by normalised (lower-case) name."""

    def __init__(self, header: Sequence[str]) -> None:
        self.names = [_norm_column(h) for h in header]
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            self._index.setdefault(name, i)

    def has(self, *names: str) -> bool:
        return any(n in self._index for n in names)

    def get(self, *names: str) -> int | None:
        for name in names:
            if name in self._index:
                return self._index[name]
        return None


def _csv_format(cols: Columns) -> Format | None:
    if cols.has("event_id") and cols.has("date_time_utc") and cols.has("sender_address", "return_path") \
            and cols.has("client_ip", "original_client_ip"):
        return Format.TRACE_EXTENDED
    if cols.has("sender_address") and cols.has("origin_timestamp_utc", "origin_timestamp", "date_time_utc") \
            and cols.has("original_client_ip", "client_ip") \
            and cols.has("recipient_status", "recipient_address"):
        return Format.TRACE_SUMMARY
    if cols.has("timestamp", "timegenerated") and cols.has("sendermailfromaddress", "senderfromaddress") \
            and cols.has("senderipv4", "senderipv6") and cols.has("recipientemailaddress"):
        return Format.EMAILEVENTS
    if cols.has("received") and cols.has("senderaddress") and cols.has("recipientaddress") \
            and cols.has("fromip"):
        return Format.MESSAGE_TRACE
    return None


def _delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _header_line(text: str) -> str | None:
    """The first line that is neither blank nor an Export-Csv ``#TYPE`` / ``#`` comment line."""
    for line in text.splitlines():
        stripped = line.strip().lstrip("\ufeff")
        if not stripped or stripped.startswith("#"):
            continue
        return stripped
    return None


@dataclass(frozen=True, slots=True)
class Detected:
    format: Format
    codec: str
    bom: int
    detail: str


def detect(path: str) -> Detected | str:
    """What ``path`` holds, or a one-line problem (without the path)."""
    try:
        with _open_regular(path) as fh:
            head = fh.read(SNIFF_BYTES)
    except _NotRegularFileError:
        return "not a regular file"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if not head.strip():
        return f"empty file: {NOT_AN_EXPORT}"
    if head.startswith(_OLE2_MAGIC):
        return Detected(Format.MAIL, "binary", 0, "Outlook .msg")
    codec, bom = sniff_encoding(head)
    # Cut at a character boundary: a partial UTF-8/UTF-16 sequence at the end is dropped.
    text = codecs.getincrementaldecoder(codec)(errors="replace").decode(head[bom:], final=False)
    first = text.lstrip()
    if not first:
        return f"empty file: {NOT_AN_EXPORT}"
    if first.startswith(("{", "[")):
        return _detect_json(first, codec, bom)
    header = _header_line(text)
    if header is not None:
        row = next(csv.reader([header], delimiter=_delimiter(header)), [])
        found = _csv_format(Columns(row))
        if found is not None:
            variant = ""
            if found is Format.MESSAGE_TRACE:
                cols = Columns(row)
                variant = "Get-MessageTrace (V1)" if cols.has("organization", "index") \
                    else "Get-MessageTraceV2"
            return Detected(found, codec, bom, variant)
        if first.startswith("From ") or _HEADER_FIELD.match(header):
            return Detected(Format.MAIL, codec, bom, "")
        shown = ", ".join(c for c in row[:6] if c.strip())[:120]
        return f"{NOT_AN_EXPORT}: {EXPECTED_COLUMNS}; found: {shown or 'no columns'}"
    return f"{NOT_AN_EXPORT}: {EXPECTED_COLUMNS}"


_GRAPH_KEYS = ("senderaddress", "recipientaddress")


def _looks_graph(obj: object) -> bool:
    if not isinstance(obj, dict):
        return False
    keys = {str(k).lower() for k in obj}
    return all(k in keys for k in _GRAPH_KEYS) and bool(keys & {"receiveddatetime", "received"})


def _detect_json(text: str, codec: str, bom: int) -> Detected:
    first_line = text.split("\n", 1)[0].strip()
    if first_line.startswith("{"):
        try:
            obj = json.loads(first_line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and _looks_graph(obj):
            return Detected(Format.GRAPH_JSONL, codec, bom, "")
    return Detected(Format.GRAPH_JSON, codec, bom, "")


# -- CSV readers: one function per format ----------------------------------------------------


def _cell(row: list[str], i: int | None) -> str:
    if i is None or i >= len(row):
        return ""
    value = row[i]
    return value.strip() if len(value) <= MAX_CELL_CHARS else value[:MAX_CELL_CHARS].strip()


def read_message_trace(rows: Iterable[list[str]], cols: Columns) -> Iterator[TraceRecord]:
    """Get-MessageTrace / Get-MessageTraceV2 rows (one per recipient).

    ``FromIP`` is the connecting server for inbound mail and blank for mail submitted inside
    Exchange Online; ``ToIP`` is set for outbound mail (message-trace docs). The summary rows
    carry no connector, HELO or authentication results (dszp's README: V2 summary rows do not
    expose the connector); scripts that enrich them from Get-MessageTraceDetailV2 add
    ``ConnectorId`` and ``ProxiedClientHostname`` columns, which are used when present.
    """
    i_received = cols.get("received")
    i_sender = cols.get("senderaddress")
    i_rcpt = cols.get("recipientaddress")
    i_subject = cols.get("subject")
    i_status = cols.get("status")
    i_from = cols.get("fromip")
    i_to = cols.get("toip")
    i_key = cols.get("messagetraceid", "messageid")
    i_connector = cols.get("connectorid")
    i_helo = cols.get("proxiedclienthostname")
    for row in rows:
        from_ip = normalise_ip(_cell(row, i_from))
        if from_ip:
            direction = Direction.INBOUND
        elif _cell(row, i_to):
            direction = Direction.OUTBOUND
        else:
            direction = Direction.INTRA_ORG
        rcpt = normalise_address(_cell(row, i_rcpt))
        helo = _cell(row, i_helo)[:MAX_HELO_CHARS] or None
        yield TraceRecord(
            timestamp=parse_timestamp(_cell(row, i_received)),
            sender_ip=from_ip,
            helo=helo,
            mail_from=normalise_address(_cell(row, i_sender)),
            header_from=None,
            recipients=(rcpt,) if rcpt else (),
            subject=_cell(row, i_subject) if i_subject is not None else None,
            direction=direction,
            connector=connector_from_export(_cell(row, i_connector)) if i_connector is not None
            else None,
            status=_cell(row, i_status) or None,
            message_key=_cell(row, i_key) or None,
        )


def _status_from_events(events: str) -> str:
    lowered = events.lower()
    for word, status in (("filteredasspam", "FilteredAsSpam"), ("quarantined", "Quarantined"),
                         ("fail", "Failed"), ("deliver", "Delivered"), ("send", "Delivered")):
        if word in lowered:
            return status
    return events.strip()[:40]


def parse_recipient_status(value: str) -> tuple[tuple[str, ...], str | None]:
    """``bob@contoso.com##Receive, Deliver;ann@contoso.com##Receive, Fail`` -> recipients, status."""
    recipients: list[str] = []
    status: str | None = None
    for part in value.split(";")[:1000]:
        address, _, events = part.partition("##")
        addr = normalise_address(address)
        if addr:
            recipients.append(addr)
        if events and status is None:
            status = _status_from_events(events)
    return tuple(recipients), status


def read_trace_summary(rows: Iterable[list[str]], cols: Columns) -> Iterator[TraceRecord]:
    """Enhanced summary / Start-HistoricalSearch MessageTrace and ConnectorReport rows.

    One row per message; ``recipient_status`` lists ``address##events`` per recipient;
    ``directionality`` is 1 (inbound) / 2 (outbound) per Microsoft's page, or a word.
    """
    i_time = cols.get("origin_timestamp_utc", "origin_timestamp", "date_time_utc")
    i_sender = cols.get("sender_address")
    i_return = cols.get("return_path")
    i_status = cols.get("recipient_status")
    i_rcpt = cols.get("recipient_address")
    i_subject = cols.get("message_subject")
    i_ip = cols.get("original_client_ip", "client_ip")
    i_dir = cols.get("directionality")
    i_connector = cols.get("connector_id")
    i_key = cols.get("network_message_id", "message_id")
    i_helo = cols.get("client_hostname")
    for row in rows:
        ip = normalise_ip(_cell(row, i_ip))
        direction = _direction(_cell(row, i_dir))
        if direction is Direction.UNKNOWN:
            direction = Direction.INBOUND if ip else Direction.UNKNOWN
        recipients, status = parse_recipient_status(_cell(row, i_status))
        if not recipients and i_rcpt is not None:
            recipients = tuple(a for a in (normalise_address(x) for x in
                                           _cell(row, i_rcpt).split(";")[:1000]) if a)
        sender = _cell(row, i_return) or _cell(row, i_sender)
        yield TraceRecord(
            timestamp=parse_timestamp(_cell(row, i_time)),
            sender_ip=ip,
            helo=_cell(row, i_helo)[:MAX_HELO_CHARS] or None,
            mail_from=normalise_address(sender),
            header_from=None,
            recipients=recipients,
            subject=_cell(row, i_subject) if i_subject is not None else None,
            direction=direction,
            connector=connector_from_export(_cell(row, i_connector)) if i_connector is not None
            else None,
            status=status,
            message_key=_cell(row, i_key) or None,
        )


def parse_custom_data(value: str) -> dict[str, str]:
    """The Extended report's ``custom_data``: ``S:KEY=value;S:SFA=SUM|H=...|CIP=...`` entries.

    Returns upper-case keys: ``SPF``, ``DKIM``, ``DMARC``, ``SCL`` (from ``S:KEY=value``) and the
    spam-filter summary's ``H`` (HELO), ``CIP``, ``CTRY``, ``PTR``/``RD``, ``SFV``.
    """
    out: dict[str, str] = {}
    for entry in value.split(";")[:200]:
        entry = entry.strip()
        if entry.startswith("S:"):
            entry = entry[2:]
        key, sep, rest = entry.partition("=")
        if not sep:
            continue
        key = key.strip().upper()
        if key == "SFA":
            for item in rest.split("|")[:200]:
                k, s, v = item.partition("=")
                if s and k.strip().upper() in ("H", "CIP", "CTRY", "PTR", "RD", "SFV", "SCL", "IPV"):
                    out.setdefault(k.strip().upper(), v.strip()[:MAX_HELO_CHARS])
        elif key in ("SPF", "DKIM", "DMARC", "COMPAUTH", "SCL"):
            out.setdefault(key, rest.strip().split("|", 1)[0][:40])
    return out


@dataclass(slots=True)
class _PendingMessage:
    first: datetime | None = None
    ip: str | None = None
    hostname: str = ""
    helo: str = ""
    mail_from: str | None = None
    recipients: list[str] = field(default_factory=list)
    subject: str | None = None
    direction: Direction = Direction.UNKNOWN
    connector: str | None = None
    auth: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    key: str | None = None


def _finish_extended(p: _PendingMessage) -> TraceRecord:
    country = p.auth.get("CTRY") or None
    return TraceRecord(
        timestamp=p.first,
        sender_ip=p.ip,
        helo=(p.helo or p.hostname)[:MAX_HELO_CHARS] or None,
        mail_from=p.mail_from,
        header_from=None,
        recipients=tuple(dict.fromkeys(p.recipients)),
        subject=p.subject,
        direction=p.direction if p.direction is not Direction.UNKNOWN else
        (Direction.INBOUND if p.ip else Direction.UNKNOWN),
        connector=p.connector,
        spf=_auth_word(p.auth.get("SPF")),
        dkim=_auth_word(p.auth.get("DKIM")),
        dmarc=_auth_word(p.auth.get("DMARC")),
        compauth=_auth_word(p.auth.get("COMPAUTH")),
        country=country.upper()[:2] if country and len(country) == 2 else None,
        status=p.status,
        message_key=p.key,
    )


def read_trace_extended(rows: Iterable[list[str]], cols: Columns) -> Iterator[TraceRecord]:
    """Extended report rows: one per event, merged per message.

    A message's RECEIVE (client IP, HELO, connector, P1), AGENTINFO (``custom_data`` with the
    spam filter's HELO/country and SPF/DKIM/DMARC) and DELIVER/FAIL events are merged by
    network message id. Events of concurrent messages interleave, so up to ``EXTENDED_WINDOW``
    messages are kept open; the oldest is emitted when the window is full (bounded memory,
    whatever the file size) and every open one at the end.
    """
    i_time = cols.get("date_time_utc")
    i_event = cols.get("event_id")
    i_ip = cols.get("client_ip")
    i_orig_ip = cols.get("original_client_ip")
    i_host = cols.get("client_hostname")
    i_connector = cols.get("connector_id")
    i_rcpt = cols.get("recipient_address")
    i_subject = cols.get("message_subject")
    i_sender = cols.get("sender_address")
    i_return = cols.get("return_path")
    i_dir = cols.get("directionality")
    i_custom = cols.get("custom_data")
    i_key = cols.get("network_message_id", "message_id", "internal_message_id")
    pending: OrderedDict[str, _PendingMessage] = OrderedDict()
    anonymous = 0
    for row in rows:
        key = _cell(row, i_key)
        if not key:
            anonymous += 1
            key = f"\x00row{anonymous}"
        p = pending.get(key)
        if p is None:
            if len(pending) >= EXTENDED_WINDOW:
                yield _finish_extended(pending.popitem(last=False)[1])
            p = pending[key] = _PendingMessage(key=key if not key.startswith("\x00") else None)
        event = _cell(row, i_event).upper()
        when = parse_timestamp(_cell(row, i_time))
        if when is not None and (p.first is None or when < p.first):
            p.first = when
        if p.direction is Direction.UNKNOWN:
            p.direction = _direction(_cell(row, i_dir))
        if p.subject is None and i_subject is not None and _cell(row, i_subject):
            p.subject = _cell(row, i_subject)
        if p.mail_from is None:
            sender = _cell(row, i_return) or _cell(row, i_sender)
            if sender:
                p.mail_from = normalise_address(sender)
        if len(p.recipients) < 1000:
            for r in _cell(row, i_rcpt).split(";")[:1000]:
                addr = normalise_address(r)
                if addr:
                    p.recipients.append(addr)
        if event == "RECEIVE":
            ip = normalise_ip(_cell(row, i_ip)) or normalise_ip(_cell(row, i_orig_ip))
            if ip and p.ip is None:
                p.ip = ip
                p.hostname = _cell(row, i_host)
                if i_connector is not None:
                    p.connector = connector_from_export(_cell(row, i_connector))
        custom = _cell(row, i_custom) if i_custom is not None else ""
        if custom:
            for k, v in parse_custom_data(row[i_custom] if i_custom is not None else "").items():
                p.auth.setdefault(k, v)
            if not p.helo and p.auth.get("H"):
                p.helo = p.auth["H"]
        if event in ("DELIVER", "SEND"):
            p.status = p.status or "Delivered"
        elif event == "FAIL":
            p.status = "Failed"
    for p in pending.values():
        yield _finish_extended(p)


_auth_cache: dict[str, dict[str, str]] = {}


def parse_authentication_details(value: str) -> dict[str, str]:
    """EmailEvents ``AuthenticationDetails``: ``{"SPF":"pass","DKIM":"none",...}`` -> lower-case
    keys ``spf``, ``dkim``, ``dmarc``, ``compauth``. Anything else gives an empty dict."""
    if not value or len(value) > 4096:
        return {}
    cached = _auth_cache.get(value)
    if cached is not None:
        return cached
    out: dict[str, str] = {}
    try:
        obj = json.loads(value)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = str(k).lower()
            if key in ("spf", "dkim", "dmarc", "compauth") and isinstance(v, str | int | float):
                word = _auth_word(v)
                if word:
                    out[key] = word
    if len(_auth_cache) >= 4096:
        _auth_cache.clear()
    _auth_cache[value] = out
    return out


def read_emailevents(rows: Iterable[list[str]], cols: Columns) -> Iterator[TraceRecord]:
    """Defender Advanced Hunting ``EmailEvents`` rows (one per recipient).

    ``Connectors`` is empty for Direct Send (Microsoft's Exchange Team post, quoted by the
    dszp README); when the export leaves the column out, the connector is unknown.
    """
    i_time = cols.get("timestamp", "timegenerated")
    i_p1 = cols.get("sendermailfromaddress")
    i_p2 = cols.get("senderfromaddress")
    i_ip4 = cols.get("senderipv4")
    i_ip6 = cols.get("senderipv6")
    i_rcpt = cols.get("recipientemailaddress")
    i_subject = cols.get("subject")
    i_dir = cols.get("emaildirection")
    i_connectors = cols.get("connectors")
    i_auth = cols.get("authenticationdetails")
    i_action = cols.get("deliveryaction")
    i_key = cols.get("networkmessageid")
    for row in rows:
        ip = normalise_ip(_cell(row, i_ip4)) or normalise_ip(_cell(row, i_ip6))
        auth = parse_authentication_details(_cell(row, i_auth)) if i_auth is not None else {}
        rcpt = normalise_address(_cell(row, i_rcpt))
        direction = _direction(_cell(row, i_dir))
        yield TraceRecord(
            timestamp=parse_timestamp(_cell(row, i_time)),
            sender_ip=ip,
            helo=None,
            mail_from=normalise_address(_cell(row, i_p1)) if i_p1 is not None else None,
            header_from=normalise_address(_cell(row, i_p2)) if i_p2 is not None else None,
            recipients=(rcpt,) if rcpt else (),
            subject=_cell(row, i_subject) if i_subject is not None else None,
            direction=direction,
            connector=connector_from_export(_cell(row, i_connectors))
            if i_connectors is not None else None,
            spf=auth.get("spf"),
            dkim=auth.get("dkim"),
            dmarc=auth.get("dmarc"),
            compauth=auth.get("compauth"),
            status=_cell(row, i_action) or None,
            message_key=_cell(row, i_key) or None,
        )


_CSV_READERS: dict[Format, Callable[[Iterable[list[str]], Columns], Iterator[TraceRecord]]] = {
    Format.MESSAGE_TRACE: read_message_trace,
    Format.TRACE_SUMMARY: read_trace_summary,
    Format.TRACE_EXTENDED: read_trace_extended,
    Format.EMAILEVENTS: read_emailevents,
}


# -- Graph JSON ------------------------------------------------------------------------------


def graph_record(obj: dict[str, Any]) -> TraceRecord:
    """One ``exchangeMessageTrace`` object (keys matched case-insensitively, so PowerShell's
    ``ConvertTo-Json`` of Get-MessageTraceV2 output reads too)."""
    lower = {str(k).lower(): v for k, v in list(obj.items())[:100]}

    def text(*keys: str) -> str:
        for key in keys:
            value = lower.get(key)
            if isinstance(value, str | int | float):
                return _cut(str(value)).strip()
        return ""

    from_ip = normalise_ip(text("fromip"))
    if from_ip:
        direction = Direction.INBOUND
    elif text("toip"):
        direction = Direction.OUTBOUND
    else:
        direction = Direction.INTRA_ORG
    rcpt = normalise_address(text("recipientaddress"))
    subject = text("subject")
    return TraceRecord(
        timestamp=parse_timestamp(text("receiveddatetime", "received")),
        sender_ip=from_ip,
        helo=None,
        mail_from=normalise_address(text("senderaddress")),
        header_from=None,
        recipients=(rcpt,) if rcpt else (),
        subject=subject if "subject" in lower else None,
        direction=direction,
        connector=None,
        status=text("status") or None,
        message_key=text("messagetraceid", "messageid") or None,
    )


class _JsonStream:
    """Incremental JSON over a text stream: values are decoded one at a time from a buffer
    that holds at most one item plus a read chunk."""

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self._stream = stream
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder()
        self.consumed = 0

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._stream.read(_READ_CHUNK)
        if not chunk:
            self._eof = True
            return False
        if self._pos:
            self.consumed += self._pos
            self._buf = self._buf[self._pos:]
            self._pos = 0
        self._buf += chunk
        return True

    def peek(self) -> str:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def take(self, char: str) -> None:
        if self.peek() != char:
            got = self.peek() or "end of file"
            raise _FormatError(f"JSON: expected {char!r} at character {self.offset}, got {got!r}")
        self._pos += 1

    @property
    def offset(self) -> int:
        return self.consumed + self._pos

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buf) - self._pos > MAX_JSON_ITEM_CHARS:
                    raise _FormatError(
                        f"JSON item at character {self.offset} is larger than "
                        f"{MAX_JSON_ITEM_CHARS // 1024} KiB or malformed"
                    ) from None
                if not self._fill():
                    raise _FormatError(
                        f"JSON syntax error at character {self.consumed + exc.pos}: {exc.msg}"
                    ) from None
                continue
            if end == len(self._buf) and not self._eof and self._fill():
                continue  # a number may go on in the next chunk
            self._pos = end
            return obj


def iter_json_items(stream: io.TextIOWrapper) -> Iterator[Any]:
    """The items of a top-level array, or of the ``value`` array of a top-level object."""
    js = _JsonStream(stream)
    start = js.peek()
    if start == "[":
        yield from _array_items(js)
        return
    js.take("{")
    found = False
    if js.peek() == "}":
        raise _FormatError(f"JSON object without a 'value' array: {EXPECTED_GRAPH}")
    while True:
        key = js.value()
        if not isinstance(key, str):
            raise _FormatError(f"JSON: expected a key at character {js.offset}")
        js.take(":")
        if key == "value" and js.peek() == "[":
            found = True
            yield from _array_items(js)
        else:
            js.value()  # @odata.context, @odata.nextLink ...: skipped (bounded like an item)
        sep = js.peek()
        if sep == ",":
            js.take(",")
            continue
        js.take("}")
        break
    if not found:
        raise _FormatError(f"JSON object without a 'value' array: {EXPECTED_GRAPH}")


def _array_items(js: _JsonStream) -> Iterator[Any]:
    js.take("[")
    if js.peek() == "]":
        js.take("]")
        return
    while True:
        yield js.value()
        if js.peek() == ",":
            js.take(",")
            continue
        js.take("]")
        return


# -- the driver ------------------------------------------------------------------------------


class ExportReader:
    """Reads the PATHs of ``dsguard m365 inventory`` into one stream of records.

    ``inputs`` lists every file seen (format, rows, error) once :meth:`records` is exhausted;
    ``errors`` the one-line problems (``path: problem``) of files that could not be read.
    """

    def __init__(
        self, config: Config, *, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        self.config = config
        self.on_bytes = on_bytes
        self.inputs: list[InputFile] = []
        self.skipped: list[str] = []
        self._scanner: Scanner | None = None

    @property
    def errors(self) -> list[str]:
        return [f"{i.path}: {i.error}" for i in self.inputs if i.error]

    def records(self, paths: Sequence[str]) -> Iterator[TraceRecord]:
        for path, in_walk in _expand(paths, self.skipped):
            yield from self._read_file(path, in_walk)

    def _read_file(self, path: str, in_walk: bool) -> Iterator[TraceRecord]:
        found = detect(path)
        if isinstance(found, str):
            if in_walk:
                self.skipped.append(f"{path}: {found}")
                return
            self.inputs.append(InputFile(path, error=found))
            return
        info = InputFile(path, found.format, found.detail,
                         "" if found.format is Format.MAIL else
                         f"{found.codec}{' with BOM' if found.bom else ''}")
        self.inputs.append(info)
        try:
            if found.format is Format.MAIL:
                yield from self._read_mail(path, info)
            elif found.format is Format.GRAPH_JSON:
                yield from self._read_graph(path, found, info, lines=False)
            elif found.format is Format.GRAPH_JSONL:
                yield from self._read_graph(path, found, info, lines=True)
            else:
                yield from self._read_csv(path, found, info)
        except _FormatError as exc:
            info.error = _one_line(str(exc))
        except _NotRegularFileError:
            info.error = "not a regular file"
        except (OSError, csv.Error, UnicodeError, ValueError, RecursionError) as exc:
            where = f"after {info.rows} rows: " if info.rows else ""
            info.error = _one_line(f"{where}{type(exc).__name__}: {exc}")
        if info.error and info.records:
            info.error += f" (the {info.records} records before it were used)"

    def _read_csv(self, path: str, found: Detected, info: InputFile) -> Iterator[TraceRecord]:
        with _open_text(path, found.codec, found.bom, self.on_bytes) as text:
            lines = _Lines(text)
            header: str | None = None
            for line in lines:
                stripped = line.strip().lstrip("\ufeff")
                if stripped and not stripped.startswith("#"):
                    header = stripped
                    break
            if header is None:
                raise _FormatError(f"{NOT_AN_EXPORT}: {EXPECTED_COLUMNS}")
            delimiter = _delimiter(header)
            cols = Columns(next(csv.reader([header], delimiter=delimiter)))
            reader_fn = _CSV_READERS[found.format]
            rows = _count_rows(csv.reader(lines, delimiter=delimiter), info, lines)
            for record in reader_fn(rows, cols):
                info.records += 1
                yield record

    def _read_graph(
        self, path: str, found: Detected, info: InputFile, *, lines: bool
    ) -> Iterator[TraceRecord]:
        with _open_text(path, found.codec, found.bom, self.on_bytes) as text:
            items: Iterator[Any] = _jsonl_items(_Lines(text), info) if lines \
                else iter_json_items(text)
            checked = False
            for obj in items:
                info.rows += 1
                if not isinstance(obj, dict):
                    info.bad_rows += 1
                    continue
                if not checked:
                    if not _looks_graph(obj):
                        raise _FormatError(f"{NOT_AN_EXPORT}: {EXPECTED_GRAPH}")
                    checked = True
                info.records += 1
                yield graph_record(obj)
            if not checked:
                info.notes.append("no message-trace objects found")

    def _read_mail(self, path: str, info: InputFile) -> Iterator[TraceRecord]:
        if self._scanner is None:
            self._scanner = Scanner(self.config)
        size = _file_size(path)
        for item in read_mail(
            iter_messages([path], max_message_bytes=self.config.limits.max_message_bytes),
            self._scanner,
        ):
            if isinstance(item, LoadError):
                if item.fatal:
                    where = item.path if item.index is None else f"{item.path}#{item.index}"
                    info.notes.append(_one_line(f"{where}: {item.problem}"))
                    info.bad_rows += 1
                continue
            info.rows += 1
            info.records += 1
            yield item
        if self.on_bytes is not None and size:
            self.on_bytes(size)
        if info.rows == 0 and info.bad_rows:
            info.error = info.notes[0] if info.notes else "no readable message"


def _jsonl_items(lines: _Lines, info: InputFile) -> Iterator[Any]:
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        try:
            yield json.loads(stripped)
        except ValueError:
            info.bad_rows += 1
            if info.bad_rows == 1:
                info.notes.append(f"line {lines.number} is not a JSON object (skipped)")


def _count_rows(
    rows: Iterator[list[str]], info: InputFile, lines: _Lines
) -> Iterator[list[str]]:
    for row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        info.rows += 1
        yield row


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def _expand(paths: Sequence[str], skipped: list[str]) -> Iterator[tuple[str, bool]]:
    """Files to read: each PATH as given; directories walked (sorted, no symlinks followed)."""
    for path in paths:
        if os.path.isdir(path):
            yield from _walk(path, 0, skipped)
        else:
            yield path, False


def _walk(directory: str, depth: int, skipped: list[str]) -> Iterator[tuple[str, bool]]:
    if depth > MAX_DIR_DEPTH:
        skipped.append(f"{directory}: deeper than {MAX_DIR_DEPTH} levels (not read)")
        return
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        skipped.append(f"{directory}: cannot list: {exc.strerror or exc}")
        return
    names = {e.name for e in entries}
    maildir = {"cur", "new"} <= names
    for entry in entries:
        if entry.name.startswith(".") and not maildir:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if maildir and entry.name == "tmp":
                    continue  # deliveries in progress
                yield from _walk(entry.path, depth + 1, skipped)
            elif entry.is_file(follow_symlinks=False):
                yield entry.path, True
        except OSError:
            continue


def mail_date(value: str | None) -> datetime | None:
    """The Date header as UTC (RFC 5322 section 3.3), or None."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def read_mail(
    items: Iterable[RawMessage | LoadError], scanner: Scanner
) -> Iterator[TraceRecord | LoadError]:
    """.eml / .msg / mbox / Maildir messages as records, through dsguard's Scanner.

    The envelope comes from the receiving organisation's trusted hop (``mail.envelope``): the
    client IP and HELO of Exchange Online's frontend stamp, the envelope sender, the connector
    or authentication Exchange attributed the message to. Authentication verdicts are the
    receiver's own (its Authentication-Results), and the scan's verdict and finding ids ride
    along as extra evidence for the classification.
    """
    limits = scanner.config.limits
    for item in items:
        if isinstance(item, LoadError):
            yield item
            continue
        try:
            result = scanner.scan(item)
            msg = ParsedMessage(item.data, limits, truncated=item.truncated, size=item.size)
            auth = summarise(*_trusted_auth(msg, scanner))
        except Exception as exc:  # a scanner fault must not end the inventory
            where = item.path if item.index is None else f"{item.path}#{item.index}"
            yield LoadError(item.path, item.index,
                            _one_line(f"internal error while analysing {where}: "
                                      f"{type(exc).__name__}: {exc}"))
            continue
        envelope, verdict, summary = result.envelope, result.verdict, result.summary
        if envelope is None or verdict is None:
            yield LoadError(item.path, item.index, result.error or "could not be analysed")
            continue
        kind = verdict.attribution.kind
        if kind is AttributionKind.AUTHENTICATED:
            direction = Direction.INTRA_ORG
        elif envelope.client_ip:
            direction = Direction.INBOUND
        else:
            direction = Direction.UNKNOWN
        dkim_results = [r for r, _ in auth.dkim]
        dkim = "pass" if "pass" in dkim_results else (dkim_results[0] if dkim_results else None)
        known = auth.known
        yield TraceRecord(
            timestamp=mail_date(summary.date if summary else None),
            sender_ip=normalise_ip(envelope.client_ip or ""),
            helo=(envelope.helo or envelope.client_hostname or "")[:MAX_HELO_CHARS] or None,
            mail_from=normalise_address(envelope.mail_from),
            header_from=normalise_address(summary.from_addr) if summary and summary.from_addr
            else None,
            recipients=tuple(a for a in (normalise_address(r) for r in
                                         (envelope.rcpt_to or (summary.to if summary else ())))
                             if a),
            subject=summary.subject if summary else None,
            direction=direction,
            connector=(verdict.attribution.name or "connector")
            if kind is AttributionKind.CONNECTOR else "",
            spf=_auth_word(auth.spf) if known else None,
            dkim=_auth_word(dkim) if known else None,
            dmarc=_auth_word(auth.dmarc) if known else None,
            compauth=_auth_word(auth.compauth) if known else None,
            dkim_pass_domains=tuple(d for r, d in auth.dkim if r == "pass" and d),
            country=envelope.country,
            message_key=summary.message_id if summary else None,
            verdict=verdict.level.value,
            findings=verdict.finding_ids(),
        )


def _trusted_auth(
    msg: ParsedMessage, scanner: Scanner
) -> tuple[Any, Any]:
    hops = analyse_hops(msg, scanner.config.trust)
    return hops.trusted_results, hops.received_spf
