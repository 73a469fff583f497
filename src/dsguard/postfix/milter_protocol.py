"""The Sendmail milter protocol, version 6, as Postfix speaks it: framing, parsing, replies.

No I/O policy lives here, only the wire format; ``postfix.milter`` runs the conversation.

Every packet, both ways, is a 4-byte big-endian length (of what follows), a 1-byte command
and ``length - 1`` bytes of data. The MTA opens with ``SMFIC_OPTNEG`` (protocol version,
the actions it allows, the protocol steps it offers); the filter answers with the subset it
wants, optionally followed by macro lists per stage. Then, per SMTP session, the MTA sends
``D`` (macros) before each event and ``C``/``H``/``M``/``R``/``T``/``L``/``N``/``B``/``E``;
the filter answers each event it did not opt out of replying to (``SMFIP_NR_*``) with one
reply, and at end of message first any modification requests (``h``/``i``/``m``/``q``).

Sources of the constants (the values are the protocol; they are the same in both):

- libmilter ``include/libmilter/mfdef.h`` (Sendmail 8.14+): ``SMFIC_*`` commands,
  ``SMFIR_*`` replies, ``SMFIP_*`` protocol flags, ``SMFIF_*`` action flags, ``SMFIA_*``
  address families, ``MILTER_LEN_BYTES``; ``include/libmilter/mfapi.h``: ``SMFI_VERSION``
  and the ``SMFIM_*`` macro stages (for ``smfi_setsymlist``).
- Postfix ``src/milter/milter8.c``, which defines its own copies and documents what Postfix
  does with them: body chunks of at most 65535 bytes (``MILTER_CHUNK_SIZE``), header values
  without the leading space unless ``SMFIP_HDR_LEADSPC``, multi-line header values separated
  by ``\\n``, 1-based header indexes for ``SMFIR_CHGHEADER`` (an empty value deletes),
  ``SMFIR_INSHEADER`` index 0 = top, ``%`` in ``SMFIR_REPLYCODE`` text doubled,
  ``SMFIR_QUARANTINE`` = Postfix's hold queue, and macro-list overrides sent after the
  three negotiation words. Postfix's MILTER_README lists what it supports.

SECURITY: the peer is the local MTA, but header, body and envelope bytes come from SMTP
clients. Packet lengths are checked as soon as their 4-byte prefix is in, before the packet
is accepted (at most ``MAX_PACKET_BYTES``; zero is malformed), strings must be
NUL-terminated inside their packet, counts of strings and macros are capped, and every
decoder returns :class:`Malformed` (naming the problem) instead of raising; the caller then
closes that one connection, and the MTA applies its ``milter_default_action``. Reply text we
send is checked against Postfix's own reply syntax and stripped of CR/LF/NUL, so message data
cannot inject SMTP lines.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# -- constants (libmilter mfdef.h / mfapi.h; Postfix milter8.c) ---------------------------------

SMFI_VERSION = 6  # mfapi.h SMFI_PROT_VERSION: the protocol version of Sendmail 8.14+ / Postfix
MILTER_LEN_BYTES = 4  # mfdef.h: length of the packet length prefix

# Commands, MTA -> filter (mfdef.h SMFIC_*).
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"  # quit, but keep the connection for a new SMTP session (8.14)
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# Replies, filter -> MTA (mfdef.h SMFIR_*).
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# Actions the filter may take (mfdef.h SMFIF_*), negotiated in OPTNEG.
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100

# Protocol steps (mfdef.h SMFIP_*): NO* = do not send that event, NR_* = the filter sends
# no reply to it, HDR_LEADSPC = keep the space after "Name:" in header values.
SMFIP_NOCONNECT = 0x01
SMFIP_NOHELO = 0x02
SMFIP_NOMAIL = 0x04
SMFIP_NORCPT = 0x08
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80  # a.k.a. SMFIP_NOHREPL
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000

# Macro stages for the macro-list override in the OPTNEG reply (mfapi.h SMFIM_*).
SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6

# Address families in SMFIC_CONNECT (mfdef.h SMFIA_*).
SMFIA_UNKNOWN = b"U"
SMFIA_UNIX = b"L"
SMFIA_INET = b"4"
SMFIA_INET6 = b"6"

# -- limits ------------------------------------------------------------------------------------

# Postfix sends body chunks of at most 65535 bytes and one header per packet (a header is at
# most header_size_limit = 102400 bytes by default); macros are a few short values. 1 MiB
# leaves room for a raised header_size_limit and nothing else legitimate comes close.
MAX_PACKET_BYTES = 1024 * 1024
MAX_STRINGS = 64  # NUL-terminated strings in one packet (MAIL/RCPT arguments, macros)

_LENGTH = struct.Struct(">I")  # the packet length prefix
_REPLY = re.compile(r"\A[45][0-9][0-9] (?:[45]\.[0-9]{1,3}\.[0-9]{1,3} )?[\x20-\x7e]*\Z")


# -- framing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Malformed:
    """A packet or field that does not follow the protocol; ``reason`` says how."""

    reason: str


class Framer:
    """Packets out of the bytes the MTA wrote, however the reads split them.

    :meth:`feed` appends what one read returned; :meth:`next` then gives one packet at a time
    as ``(command byte, data)``, None when the next packet is not complete yet. A read of the
    MTA's burst (a message's header packets, its macros and events come in one write) yields
    every packet in it without another read. A length of 0 or over ``max_bytes`` is
    :class:`Malformed` as soon as its 4-byte prefix is in, before its data arrives, so the
    buffer never holds more than one packet and one read.
    """

    __slots__ = ("_buf", "_max", "_pos")

    def __init__(self, max_bytes: int = MAX_PACKET_BYTES) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._max = max_bytes

    def feed(self, data: bytes) -> None:
        buf = self._buf
        if self._pos >= len(buf):
            # Everything before was returned: keep the read itself, no copy. The usual case,
            # about 40 packets per message: Postfix writes whole packets (milter8.c buffers
            # each batch in a VSTREAM), so most reads end on a packet boundary.
            self._buf = data
        elif isinstance(buf, bytearray):
            del buf[: self._pos]
            buf += data
        else:  # a packet split across reads: collect in a bytearray (no quadratic copies)
            self._buf = bytearray(memoryview(buf)[self._pos :])
            self._buf += data
        self._pos = 0

    def pending(self) -> int:
        """Bytes received and not yet returned as a packet."""
        return len(self._buf) - self._pos

    def next(self) -> tuple[int, bytes] | Malformed | None:
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < MILTER_LEN_BYTES:
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        if length < 1:
            return Malformed("packet length 0 (no command byte)")
        if length > self._max:
            return Malformed(f"packet length {length} over the limit of {self._max}")
        end = pos + MILTER_LEN_BYTES + length
        if end > len(buf):
            return None
        self._pos = end
        data = buf[pos + MILTER_LEN_BYTES + 1 : end]
        return buf[pos + MILTER_LEN_BYTES], data if type(data) is bytes else bytes(data)

    def end_of_stream(self) -> Malformed | None:
        """What an end of stream here means: None between packets, else Malformed."""
        left = self.pending()
        if not left:
            return None
        if left < MILTER_LEN_BYTES:
            return Malformed("stream ended inside a length prefix")
        return Malformed("stream ended inside a packet")


def encode(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


# -- decoding ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptNeg:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: bytes  # SMFIA_*
    port: int
    address: str


def split_strings(data: bytes, *, limit: int = MAX_STRINGS) -> list[bytes] | Malformed:
    """NUL-terminated strings filling ``data`` (the protocol's ``char args[][]``)."""
    if not data:
        return []
    if not data.endswith(b"\0"):
        return Malformed("string not NUL-terminated")
    parts = data[:-1].split(b"\0")
    if len(parts) > limit:
        return Malformed(f"more than {limit} strings in one packet")
    return parts


def text(raw: bytes) -> str:
    """Protocol strings are bytes; we read them as UTF-8 (SMTPUTF8), bad bytes replaced."""
    return raw.decode("utf-8", "replace")


def decode_optneg(data: bytes) -> OptNeg | Malformed:
    if len(data) < 12:
        return Malformed(f"OPTNEG with {len(data)} bytes, need 12")
    version, actions, protocol = struct.unpack(">III", data[:12])
    return OptNeg(version, actions, protocol)


def decode_macros(data: bytes) -> tuple[bytes, dict[str, str]] | Malformed:
    """(the command the macros belong to, {name: value}); names keep their braces."""
    problem = check_macros(data)
    if problem is not None:
        return problem
    return data[:1], parse_macros(data[1:])


def check_macros(data: bytes) -> Malformed | None:
    """The checks of :func:`decode_macros` without building anything: the milter keeps a
    macro packet as it came and parses it only when a value is looked up (most stages, e.g.
    the one before every header, are never looked at)."""
    if not data:
        return Malformed("empty macro packet")
    if len(data) == 1:
        return None
    if data[-1] != 0:
        return Malformed("string not NUL-terminated")
    count = data.count(b"\0", 1)
    if count > 2 * MAX_STRINGS:
        return Malformed(f"more than {2 * MAX_STRINGS} strings in one packet")
    if count % 2:
        return Malformed("macro name without a value")
    return None


def parse_macros(strings: bytes) -> dict[str, str]:
    """{name: value} of a macro packet's strings (after the command byte), already checked
    by :func:`check_macros`."""
    if not strings:
        return {}
    parts = strings[:-1].split(b"\0")
    return {text(parts[i]): text(parts[i + 1]) for i in range(0, len(parts), 2)}


def decode_connect(data: bytes) -> Connect | Malformed:
    nul = data.find(b"\0")
    if nul == -1:
        return Malformed("CONNECT host name not NUL-terminated")
    hostname = text(data[:nul])
    rest = data[nul + 1 :]
    if not rest:
        return Malformed("CONNECT without address family")
    family = rest[:1]
    if family in (SMFIA_UNKNOWN,):
        return Connect(hostname, family, 0, "")
    if len(rest) < 4 or not rest.endswith(b"\0"):
        return Malformed("CONNECT address truncated")
    (port,) = struct.unpack(">H", rest[1:3])
    address = text(rest[3:-1])
    if b"\0" in rest[3:-1]:
        return Malformed("CONNECT address has an embedded NUL")
    return Connect(hostname, family, port, address)


_BAD_NAME = re.compile(rb"[: \t\r\n]")


def decode_header(data: bytes) -> tuple[bytes, bytes] | Malformed:
    """(raw name, raw value): both keep their bytes (DKIM needs them), the value its ``\\n``s."""
    if not data:
        return Malformed("HEADER needs a name and a value")
    if data[-1] != 0:
        return Malformed("string not NUL-terminated")
    nul = data.find(b"\0")
    if nul == len(data) - 1:
        return Malformed("HEADER needs a name and a value")
    value = data[nul + 1 : -1]
    if b"\0" in value:
        return Malformed("more than 2 strings in one packet")
    name = data[:nul]
    if not name or _BAD_NAME.search(name):
        return Malformed("HEADER with an invalid name")
    return name, value


def decode_args(data: bytes) -> list[str] | Malformed:
    """MAIL/RCPT: the address (with its angle brackets) then ESMTP parameters."""
    parts = split_strings(data)
    if isinstance(parts, Malformed):
        return parts
    if not parts:
        return Malformed("MAIL/RCPT without an address")
    return [text(p) for p in parts]


def unbracket(address: str) -> str:
    """``<joe@contoso.com>`` -> ``joe@contoso.com``; ``<>`` -> ``""``."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


# -- encoding replies --------------------------------------------------------------------------


def optneg_reply(
    version: int, actions: int, protocol: int, macros: dict[int, str] | None = None
) -> bytes:
    """Our side of the negotiation, with optional per-stage macro lists (SMFIM_* -> names
    separated by spaces), which Postfix uses instead of its milter_*_macros settings."""
    data = struct.pack(">III", version, actions, protocol)
    for stage, names in (macros or {}).items():
        data += struct.pack(">I", stage) + names.encode("ascii") + b"\0"
    return encode(SMFIC_OPTNEG, data)


def safe_reply_text(reply: str) -> str:
    """``reply`` as one line of printable ASCII, ``%`` doubled (Postfix and Sendmail read the
    text like a format string: milter8.c turns ``%%`` back into ``%`` and drops single ones)."""
    cleaned = re.sub(r"[^\x20-\x7e]", "?", reply)
    return cleaned.replace("%", "%%")


def reply_code(reply: str) -> bytes:
    """SMFIR_REPLYCODE: a full SMTP reply (``550 5.7.68 text``) for the current command."""
    line = safe_reply_text(reply)
    if not _REPLY.match(line.replace("%%", "%")):
        raise ValueError(f"not an SMTP 4xx/5xx reply: {reply!r}")
    return encode(SMFIR_REPLYCODE, line.encode("ascii") + b"\0")


def header_value(value: str, *, leading_space: bool) -> bytes:
    """A header value as the MTA wants it: folded lines separated by ``\\n`` (Postfix splits
    them into records; a CR would end up in the message), with the space after the colon when
    HDR_LEADSPC was negotiated (the MTA then adds none)."""
    value = value.replace("\r\n", "\n").replace("\r", " ").replace("\0", " ")
    if leading_space and not value.startswith((" ", "\t")):
        value = " " + value
    return value.encode("utf-8", "replace")


def insert_header(index: int, name: str, value: bytes) -> bytes:
    """SMFIR_INSHEADER: insert at ``index`` (0 = above every other header)."""
    return encode(SMFIR_INSHEADER, struct.pack(">I", index) + name.encode() + b"\0" + value + b"\0")


def add_header(name: str, value: bytes) -> bytes:
    return encode(SMFIR_ADDHEADER, name.encode() + b"\0" + value + b"\0")


def change_header(index: int, name: str, value: bytes = b"") -> bytes:
    """SMFIR_CHGHEADER: replace the ``index``-th (1-based) field called ``name``; an empty
    value deletes it."""
    return encode(SMFIR_CHGHEADER, struct.pack(">I", index) + name.encode() + b"\0" + value + b"\0")


def quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: Postfix puts the message on hold (its hold queue), reason logged."""
    return encode(SMFIR_QUARANTINE, re.sub(r"[^\x20-\x7e]", "?", reason)[:100].encode() + b"\0")


CONTINUE = encode(SMFIR_CONTINUE)
ACCEPT = encode(SMFIR_ACCEPT)
REJECT = encode(SMFIR_REJECT)
TEMPFAIL = encode(SMFIR_TEMPFAIL)
PROGRESS = encode(SMFIR_PROGRESS)
