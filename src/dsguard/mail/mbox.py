"""Split an mbox file into messages while streaming it (mboxo / mboxrd, LF or CRLF).

The file is read in blocks of 256 KiB and searched for separators with C-level scans; only the
message being assembled is kept, and of it only the first ``max_message_bytes`` bytes. Memory
therefore stays flat however large the mailbox is.

Separator rule (a deliberately simple reading of the mbox family, cf. RFC 4155 and the
``mboxrd`` convention): a line that starts with ``From `` (five bytes, case-sensitive) separates
messages when it is the first line of the file or the line before it is empty (``\\n`` or
``\\r\\n``). A ``From `` line that follows a non-empty line is body text. The separator line is
dropped, and so is the one empty line before it, which mbox writers add after every message. A
line matching ``^>+From `` loses one ``>`` (mboxrd un-quoting; applied to mboxo files too, where
it is ambiguous but harmless). Messages that hold only whitespace are skipped but keep their
position, so indices match the message's place in the mailbox.

SECURITY: an mbox is sender-controlled text. A hostile file can hold a multi-gigabyte "line"
without a newline, a single huge message, or millions of tiny messages. At most a few read
blocks are held at once (a line with no newline is passed on once it exceeds ``LINE_CHUNK``),
each message keeps at most ``max_message_bytes`` bytes (the rest is counted, not stored) and
messages are yielded one by one, so memory is bounded by ``max_message_bytes`` plus about
1 MiB whatever the input. A body line ``From ...`` after an empty
line (an unquoted mboxo body) starts a new message: that can split one message into two, never
hide bytes from the scan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

LINE_CHUNK = 64 * 1024
"""Largest piece of a line read at once; longer lines are handled in several pieces."""

SEPARATOR_PREFIX = b"From "
_EMPTY_LINES = (b"\n", b"\r\n")


@dataclass(frozen=True, slots=True)
class MboxMessage:
    """One message cut out of an mbox, separator line removed, mboxrd quoting undone."""

    index: int
    data: bytes
    size: int
    truncated: bool


class _Accumulator:
    """The message being assembled: stores up to ``limit`` bytes and counts the rest."""

    __slots__ = ("has_content", "limit", "pieces", "size", "stored")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Pieces joined once at the end: a message read in one piece is passed on without
        # being copied (b"".join of one bytes object returns it).
        self.pieces: list[bytes] = []
        self.stored = 0
        self.size = 0
        self.has_content = False

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        room = self.limit - self.stored
        if room > 0:
            kept = piece[:room]
            self.pieces.append(kept)
            self.stored += len(kept)
        if not self.has_content and _NOT_WHITESPACE.search(piece) is not None:
            self.has_content = True  # what piece.strip() being non-empty says, without a copy

    def data(self) -> bytes:
        return b"".join(self.pieces)


def _unquote_from(line: bytes) -> bytes:
    """Undo mboxrd quoting: ``>From `` → ``From ``, ``>>From `` → ``>From ``."""
    stripped = line.lstrip(b">")
    if len(stripped) < len(line) and stripped.startswith(SEPARATOR_PREFIX):
        return line[1:]
    return line


_BLOCK = 256 * 1024
_LINE_START_FROM = b"\nFrom "
_NOT_WHITESPACE = re.compile(rb"[^ \t\n\r\x0b\x0c]")  # bytes.strip() removes exactly these


def _from_line_starts(region: bytes) -> Iterator[int]:
    """Offsets of the lines of ``region`` that start with "From ", in order: what
    ``re.finditer(rb"^From ", region, re.MULTILINE)`` finds, with ``bytes.find`` (a regex
    anchored at line starts is tried at every byte; find skips ahead in C)."""
    if region.startswith(SEPARATOR_PREFIX):
        yield 0
    p = region.find(_LINE_START_FROM)
    while p != -1:
        yield p + 1
        p = region.find(_LINE_START_FROM, p + 1)


_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)


def split_mbox(stream: BinaryIO, *, max_message_bytes: int) -> Iterator[MboxMessage]:
    """Yield the messages of the mbox read from ``stream`` (positioned at the first separator).

    Whitespace-only messages are not yielded but do consume an index. Text before the first
    separator, if not blank, is yielded as a message of its own at index 0. OSError from the
    stream propagates: the caller turns it into a load error.

    The stream is read in blocks and searched for separators with ``bytes``/``re`` scans (a
    Python step per line was the cost of reading a large mailbox); only complete lines are
    examined, and a line longer than ``LINE_CHUNK`` with no newline yet is passed on in pieces.
    """
    position = 0  # the index the message being assembled will get
    current = _Accumulator(max_message_bytes)  # starts as the (normally empty) preamble
    in_preamble = True
    first_line = True
    prev_empty = False  # the last complete line seen was empty
    mid_line = False  # the unprocessed bytes continue a line already passed on
    skip_separator_rest = False  # dropping the rest of an overlong separator line
    held = b""  # an empty line that may turn out to precede a separator
    buf = b""

    def emit(content: bytes, at_line_start: bool) -> None:
        nonlocal held
        if held:
            current.add(held)
            held = b""
        if b">From " in content:
            if at_line_start:
                content = _QUOTED_FROM.sub(rb"\1", content)
            else:
                nl = content.find(b"\n")
                if nl != -1:
                    content = content[: nl + 1] + _QUOTED_FROM.sub(rb"\1", content[nl + 1 :])
        current.add(content)

    def separator() -> Iterator[MboxMessage]:
        nonlocal current, position, in_preamble, held
        held = b""
        done = _finish(current, position)
        if done is not None:
            yield done
        if done is not None or not in_preamble:
            position += 1
        in_preamble = False
        current = _Accumulator(max_message_bytes)

    eof = False
    while not eof:
        block = stream.read(_BLOCK)
        eof = not block
        buf += block
        if skip_separator_rest:
            nl = buf.find(b"\n")
            if nl == -1:
                buf = b""
                continue
            buf = buf[nl + 1 :]
            skip_separator_rest = False
            prev_empty = False
            first_line = False
        if mid_line:
            # The rest of a line longer than LINE_CHUNK: never a separator, never quoted.
            nl = buf.find(b"\n")
            if nl == -1 and not eof:
                emit(buf, False)
                buf = b""
                continue
            cut = len(buf) if nl == -1 else nl + 1
            emit(buf[:cut], False)
            buf = buf[cut:]
            mid_line = False
            prev_empty = False
            first_line = False
        limit = len(buf) if eof else buf.rfind(b"\n") + 1
        if limit == 0:
            if len(buf) > LINE_CHUNK:
                # A line with no newline yet, longer than a read chunk.
                if buf.startswith(SEPARATOR_PREFIX) and (first_line or prev_empty):
                    yield from separator()
                    skip_separator_rest = True
                else:
                    emit(buf, True)
                    mid_line = True
                first_line = False
                buf = b""
            continue
        region, buf = buf[:limit], buf[limit:]
        start = 0  # where the pending content of the current message begins in region
        for p in _from_line_starts(region):
            if p == 0:
                is_sep = first_line or prev_empty
                empty_len = 0
            elif p >= 2 and region[p - 2 : p] == b"\n\n":
                is_sep, empty_len = True, 1
            elif p >= 3 and region[p - 3 : p] == b"\n\r\n":
                is_sep, empty_len = True, 2
            elif p == 1 and region[:1] == b"\n":
                is_sep, empty_len = True, 1
            elif p == 2 and region[:2] == b"\r\n":
                is_sep, empty_len = True, 2
            else:
                is_sep = False
            if not is_sep:
                continue
            if p - empty_len > start:
                emit(region[start : p - empty_len], True)
            yield from separator()
            nl = region.find(b"\n", p)
            start = len(region) if nl == -1 else nl + 1
        if start < len(region):
            rest = region[start:]
            # Hold a final empty line: it may precede a separator in the next region.
            if rest.endswith(b"\n\r\n") or rest == b"\r\n":
                if len(rest) > 2:
                    emit(rest[:-2], True)
                held = b"\r\n"
            elif rest.endswith(b"\n\n") or rest == b"\n":
                if len(rest) > 1:
                    emit(rest[:-1], True)
                held = b"\n"
            else:
                emit(rest, True)
        # State for the first line of the next region.
        last_nl = region.rfind(b"\n", 0, len(region) - 1)
        last_line = region[last_nl + 1 :]
        prev_empty = last_line in _EMPTY_LINES
        first_line = False

    # An empty line just before end of file is the writer's trailing line: dropped as well.
    done = _finish(current, position)
    if done is not None:
        yield done


def _finish(message: _Accumulator, position: int) -> MboxMessage | None:
    if not message.has_content:
        return None
    return MboxMessage(
        index=position,
        data=message.data(),
        size=message.size,
        truncated=message.size > message.stored,
    )
