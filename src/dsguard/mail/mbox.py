"""Split an mbox file into messages while streaming it (mboxo / mboxrd, LF or CRLF).

The file is read in bounded chunks of one line at most; only the message being assembled is
kept, and of it only the first ``max_message_bytes`` bytes. Memory therefore stays flat however
large the mailbox is.

Separator rule (a deliberately simple reading of the mbox family, cf. RFC 4155 and the
``mboxrd`` convention): a line that starts with ``From `` (five bytes, case-sensitive) separates
messages when it is the first line of the file or the line before it is empty (``\\n`` or
``\\r\\n``). A ``From `` line that follows a non-empty line is body text. The separator line is
dropped, and so is the one empty line before it, which mbox writers add after every message. A
line matching ``^>+From `` loses one ``>`` (mboxrd un-quoting; applied to mboxo files too, where
it is ambiguous but harmless). Messages that hold only whitespace are skipped but keep their
position, so indices match the message's place in the mailbox.

SECURITY: an mbox is sender-controlled text. A hostile file can hold a multi-gigabyte "line"
without a newline, a single huge message, or millions of tiny messages. Lines are read in chunks
of at most ``LINE_CHUNK`` bytes, each message keeps at most ``max_message_bytes`` bytes (the rest
is counted, not stored) and messages are yielded one by one, so memory is bounded by
``max_message_bytes + LINE_CHUNK`` whatever the input. A body line ``From ...`` after an empty
line (an unquoted mboxo body) starts a new message: that can split one message into two, never
hide bytes from the scan.
"""

from __future__ import annotations

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

    __slots__ = ("buffer", "has_content", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.size = 0
        self.has_content = False

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        room = self.limit - len(self.buffer)
        if room > 0:
            self.buffer += piece[:room]
        if not self.has_content and piece.strip():
            self.has_content = True


def _unquote_from(line: bytes) -> bytes:
    """Undo mboxrd quoting: ``>From `` → ``From ``, ``>>From `` → ``>From ``."""
    stripped = line.lstrip(b">")
    if len(stripped) < len(line) and stripped.startswith(SEPARATOR_PREFIX):
        return line[1:]
    return line


def split_mbox(stream: BinaryIO, *, max_message_bytes: int) -> Iterator[MboxMessage]:
    """Yield the messages of the mbox read from ``stream`` (positioned at the first separator).

    Whitespace-only messages are not yielded but do consume an index. Text before the first
    separator, if not blank, is yielded as a message of its own at index 0. OSError from the
    stream propagates: the caller turns it into a load error.
    """
    position = 0  # the index the message being assembled will get
    current = _Accumulator(max_message_bytes)  # starts as the (normally empty) preamble
    in_preamble = True
    at_line_start = True
    in_separator_line = False  # dropping the rest of a separator line longer than LINE_CHUNK
    first_line = True
    held_empty_line: bytes | None = None  # an empty line that may turn out to precede a separator

    while piece := stream.readline(LINE_CHUNK):
        starts_line = at_line_start
        at_line_start = piece.endswith(b"\n")
        if not starts_line:
            # The rest of a line longer than LINE_CHUNK: never a separator, never quoted.
            if not in_separator_line:
                current.add(piece)
            continue
        in_separator_line = False

        if piece.startswith(SEPARATOR_PREFIX) and (first_line or held_empty_line is not None):
            done = _finish(current, position)
            if done is not None:
                yield done
            if done is not None or not in_preamble:
                position += 1
            in_preamble = False
            first_line = False
            held_empty_line = None
            in_separator_line = not at_line_start
            current = _Accumulator(max_message_bytes)
            continue

        first_line = False
        if held_empty_line is not None:
            current.add(held_empty_line)
            held_empty_line = None
        if piece in _EMPTY_LINES:
            held_empty_line = piece
            continue
        current.add(_unquote_from(piece) if piece[:1] == b">" else piece)

    # An empty line just before end of file is the writer's trailing line: dropped as well.
    done = _finish(current, position)
    if done is not None:
        yield done


def _finish(message: _Accumulator, position: int) -> MboxMessage | None:
    if not message.has_content:
        return None
    return MboxMessage(
        index=position,
        data=bytes(message.buffer),
        size=message.size,
        truncated=message.size > len(message.buffer),
    )
