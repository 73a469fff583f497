"""Read the DATA of an SMTP transaction in blocks instead of line by line.

aiosmtpd's ``smtp_DATA`` awaits ``readuntil(b"\\r\\n")`` once per line and does a few Python
steps for each: for a 5 KB message about a hundred coroutine round trips. ``DataScanner``
(used by ``smtpserver.SmtpSession``) takes whatever the socket delivered (one block) and
finds line boundaries, the end of data, line lengths and the size with C-speed byte
operations, falling back to a per-line loop only for a block that breaks a limit.

The outcome is aiosmtpd 1.4.6's, byte for byte and reply for reply (tests/unit/gateway/
test_smtpdata.py runs both over real sockets on the same inputs, including hostile ones):

- Lines end in CRLF only (RFC 5321 2.3.8): a bare LF or CR is part of a line; the data ends at
  the first line that is exactly "." (CRLF "." CRLF, or "." CRLF as the very first line).
  ``<LF>.<LF>``, ``<CR>.<CR>``, ``<LF>.<CR><LF>`` and the like end nothing (SMTP smuggling);
  the handler then refuses the bare newlines.
- Leading dots are removed once per line (RFC 5321 4.5.2).
- Size: the bytes of every line as sent (CRLF and stuffing dots included, the final "."
  line not) above ``data_size_limit`` -> ``552 Error: Too much mail data``.
- Line length: a line (CRLF included) longer than ``line_length_limit`` -> ``500 Line too
  long (see RFC5321 4.5.3.1.6)``. Whichever limit is broken first decides the reply (a line
  whose text alone exceeds the limit is "too long" before its bytes count towards the size,
  as in aiosmtpd, whose stream reader overruns first).
- Either reply comes only after the client sent the whole message (RFC 5321 4.2.5), and from
  the first broken limit on nothing more is kept in memory.
- Commands the client pipelined after the final "." are handed back (``rest``) to the
  command loop.

SECURITY: memory is bounded: at most ``data_size_limit`` bytes of message plus one unfinished
line of at most ``line_length_limit`` + 2 bytes (a longer one is dropped as it arrives, as
aiosmtpd drops the fragments of an overlong line).
"""

from __future__ import annotations

import enum

TOO_LONG_REPLY = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_REPLY = "552 Error: Too much mail data"


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too long"
    TOO_MUCH = "too much"


class DataScanner:
    """Feed the bytes after the 354 block by block until ``done``; then ``state``, ``content()``
    (dot-unstuffed, CRLF kept) and ``rest`` (bytes after the final "." line)."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.state = DataState.NOMINAL
        self.done = False
        self.rest = b""
        self._parts: list[bytes] = []
        self._size = 0
        self._pending = bytearray()  # the unfinished last line
        self._mid_line = False  # _pending continues an overlong line whose start was dropped

    def feed(self, chunk: bytes) -> bool:
        """Take the next block; True once the final "." line was seen."""
        pending = self._pending
        pending += chunk
        # _pending starts at a line start (unless _mid_line), so the end of data is a "."
        # line at offset 0 or the first CRLF "." CRLF.
        if not self._mid_line and pending.startswith(b".\r\n"):
            end, after = 0, 3
        else:
            found = pending.find(b"\r\n.\r\n")
            end, after = (found + 2, found + 5) if found >= 0 else (-1, -1)
        if end >= 0:
            self._lines(bytes(pending[:end]))
            self.rest = bytes(pending[after:])
            pending.clear()
            self.done = True
            return True
        last = pending.rfind(b"\r\n")
        if last >= 0:
            self._lines(bytes(pending[: last + 2]))
            del pending[: last + 2]
        # An unfinished line whose text already exceeds the limit (a trailing CR may be the
        # start of its CRLF) is too long whatever follows: drop it as it comes.
        text = len(pending) - (1 if pending.endswith(b"\r") else 0)
        if text > self.line_limit:
            if self.state is DataState.NOMINAL:
                self._too(DataState.TOO_LONG)
            del pending[:text]
            self._mid_line = True
        return False

    def content(self) -> bytes:
        data = b"".join(self._parts)
        if data.startswith(b"."):
            data = data[1:]
        return data.replace(b"\r\n.", b"\r\n")

    def _lines(self, region: bytes) -> None:
        """Complete lines (``region`` ends with CRLF, or is empty)."""
        continued, self._mid_line = self._mid_line, False
        if self.state is not DataState.NOMINAL or not region:
            return  # a limit is broken: only the end of data matters now
        assert not continued  # only an overlong line (state TOO_LONG) is continued
        size = len(region)
        limit = self.size_limit
        line_limit = self.line_limit
        if (not limit or self._size + size <= limit) and (
            size <= line_limit or max(map(len, region.split(b"\r\n"))) + 2 <= line_limit
        ):
            self._parts.append(region)
            self._size += size
            return
        # A limit breaks in this block: find which first, line by line, in aiosmtpd's order.
        for line in region.split(b"\r\n")[:-1]:
            text = len(line)
            if text > line_limit:  # aiosmtpd's reader overruns before counting it
                self._too(DataState.TOO_LONG)
                return
            self._size += text + 2
            if limit and self._size > limit:
                self._too(DataState.TOO_MUCH)
                return
            if text + 2 > line_limit:
                self._too(DataState.TOO_LONG)
                return
        self._parts.append(region)  # not reached: the fast path took every in-limit block

    def _too(self, state: DataState) -> None:
        self.state = state
        self._parts = []
