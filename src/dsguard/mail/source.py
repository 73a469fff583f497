"""Turn the PATHs given to ``dsguard scan`` into raw RFC 5322 messages, one at a time.

A PATH may be a single message file (.eml), an Outlook .msg, an mbox, a Maildir, a text file
holding only a pasted header block (Outlook's "Message options → Internet headers" box), or any
directory tree of those. :func:`iter_messages` yields a :class:`RawMessage` per message found
and a :class:`LoadError` per input it could not use, in a deterministic order: PATHs in the
order given, directory contents sorted by name, walked depth-first.

The type of a file is sniffed from its content, not its name:

* OLE2 magic ``D0 CF 11 E0 A1 B1 1A E1`` → Outlook .msg, converted by :mod:`.msg`;
* first non-blank line starting with ``From `` → mbox, split by :mod:`.mbox`;
* first non-blank line shaped like a header field (``Name:``, also the hostile ``Name :`` and a
  line with leading whitespace) → a message: kind ``eml``, or ``headers`` when no empty line
  is followed by a body (a paste of the header block only);
* anything else → "not an e-mail message".

Bytes are kept as they are in the file, with three exceptions: a UTF-8 byte-order mark and
blank lines before the first header line are dropped (they would turn the whole header block
into body text); UTF-16 text (with a byte-order mark, as Windows Notepad saves a paste, or
recognisably without one) is re-encoded as UTF-8; and the text of header pastes and of re-encoded
UTF-16 files gets CRLF line endings (RFC 5322 section 2.1), a final CRLF, and loses an Outlook
2003/2007 "Microsoft Mail Internet Headers Version 2.0" banner line. Lines that Outlook's UI
wrapped are left as they are. Real message files (.eml, mbox, Maildir) are never re-encoded.

Directory walks: a directory holding ``cur/`` and ``new/`` is a Maildir. Its ``cur/`` and
``new/`` files are messages of kind ``maildir``; ``tmp/`` (deliveries in progress) is skipped;
its sub-directories, including Maildir++ ``.Folder`` ones, are walked too. Outside a Maildir,
hidden directories (``.git``...) are skipped with a note. Dovecot / Courier control files are
skipped silently everywhere. A file that is not mail gives a non-fatal "skipped" note unless its
name ends in .eml / .msg / .mbox / .mbx, which makes it a real (fatal) error.

SECURITY: every input is attacker-influenced (a phishing .eml, a hostile mbox, a crafted .msg,
a directory of unknown files). Limits: a message keeps at most ``max_message_bytes`` bytes and
only that much of a file is read (an mbox is streamed, see :mod:`.mbox`); sniffing reads at most
``SNIFF_BYTES``; files are opened non-blocking and must be regular files, so a FIFO or device
cannot hang or flood the scan; directory symlinks are not followed, directories are remembered
by (device, inode) so bind-mount loops end, and nesting stops at ``MAX_DIR_DEPTH``. No exception
leaves this module for any content or path: problems become :class:`LoadError` values.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

from dsguard.mail.mbox import SEPARATOR_PREFIX, split_mbox
from dsguard.mail.msg import ConvertedMsg, convert_msg

Kind = Literal["eml", "msg", "mbox", "maildir", "headers"]

SNIFF_BYTES = 64 * 1024
"""Bytes read to decide what a file is; leading blank lines must end within them."""
MAX_DIR_DEPTH = 64
MAIL_EXTENSIONS = frozenset({".eml", ".msg", ".mbox", ".mbx"})
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_LE_BOM = b"\xff\xfe"
UTF16_BE_BOM = b"\xfe\xff"
OUTLOOK_BANNER = b"Microsoft Mail Internet Headers Version 2.0"

NOT_MAIL = "skipped: not an e-mail message"

# RFC 5322 section 2.2: a field name is printable ASCII except ":" (33-57, 59-126). Whitespace
# before the name or before the colon is tolerated because hostile and pasted input has it. The
# first name must start with a letter or digit, as every real header name does, so one-line JSON
# ({"key": ...}) and similar text files are not taken for a header paste.
_HEADER_LINE = re.compile(rb"[ \t]*[A-Za-z0-9][\x21-\x39\x3b-\x7e]*[ \t]*:")
_EMPTY_LINE = re.compile(rb"\n\r?\n")  # the header / body separator (RFC 5322 section 2.1)
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")

# Dovecot and Courier keep their indexes and settings next to the messages.
_CONTROL_NAMES = frozenset(
    {
        "subscriptions",
        "maildirfolder",
        "maildirsize",
        ".uidvalidity",
        ".quota",
        ".subscriptions",
    }
)
_CONTROL_PREFIXES = ("dovecot", ".dovecot", "courier", ".courier")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as bytes, with where it came from."""

    path: str
    """The file path (as given, or as found in a directory walk)."""
    index: int | None
    """0-based position inside an mbox; None for one-message files."""
    kind: Kind
    data: bytes
    """RFC 5322 message bytes (a .msg is converted); at most max_message_bytes."""
    size: int
    """Original size in bytes (before truncation)."""
    truncated: bool
    """True when ``data`` holds only the first max_message_bytes bytes."""


@dataclass(frozen=True, slots=True)
class LoadError:
    """An input that could not be used, named with a one-line problem."""

    path: str
    index: int | None
    problem: str
    """ONE line, e.g. "not an e-mail message: no header lines at the start"."""
    fatal: bool = True
    """False = a "skipped, not mail" note from a directory walk (does not make exit 2)."""


def iter_messages(
    paths: Sequence[str], *, max_message_bytes: int
) -> Iterator[RawMessage | LoadError]:
    """Yield every message found under ``paths``, and a LoadError for each unusable input.

    Never raises for any path or content. ``max_message_bytes`` below 1 is a programming
    error (ValueError).
    """
    if max_message_bytes < 1:
        raise ValueError("max_message_bytes must be at least 1")
    for item in _file_tasks(paths):
        if isinstance(item, LoadError):
            yield item
        else:
            yield from _load_task(item, max_message_bytes)


def input_size(paths: Sequence[str]) -> int:
    """Total bytes of the files :func:`iter_messages` would read (stat only; never raises)."""
    total = 0
    for item in _file_tasks(paths):
        if isinstance(item, _FileTask):
            try:
                total += os.stat(item.path).st_size
            except (OSError, ValueError):
                continue
    return total


# --- finding the files ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileTask:
    path: str
    in_walk: bool  # found in a directory walk rather than named by the user
    maildir: bool  # a file in a Maildir's cur/ or new/


def _file_tasks(paths: Sequence[str]) -> Iterator[_FileTask | LoadError]:
    for path in paths:
        try:
            info = os.stat(path)  # a path named by the user may be a symlink: follow it
        except (OSError, ValueError) as exc:
            yield LoadError(path, None, _problem(exc))
            continue
        if stat.S_ISDIR(info.st_mode):
            yield from _walk(path, depth=0, seen=set())
        elif stat.S_ISREG(info.st_mode):
            yield _FileTask(path, in_walk=False, maildir=False)
        else:
            yield LoadError(path, None, "not a regular file or directory")


def _is_control_file(name: str) -> bool:
    lowered = name.lower()
    if os.path.splitext(lowered)[1] in MAIL_EXTENSIONS:
        return False
    return lowered in _CONTROL_NAMES or lowered.startswith(_CONTROL_PREFIXES)


def _walk(
    directory: str, *, depth: int, seen: set[tuple[int, int]], maildir_messages: bool = False
) -> Iterator[_FileTask | LoadError]:
    if depth > MAX_DIR_DEPTH:
        yield LoadError(
            directory, None, f"skipped: directories nested deeper than {MAX_DIR_DEPTH}", False
        )
        return
    try:
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            return  # reached again through a bind mount: already walked
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except (OSError, ValueError) as exc:
        yield LoadError(directory, None, _problem(exc))
        return
    names = {entry.name for entry in entries if _is_dir(entry)}
    is_maildir = "cur" in names and "new" in names
    for entry in entries:
        if not maildir_messages and _is_control_file(entry.name):
            continue
        try:
            is_symlink = entry.is_symlink()
            if _is_dir(entry):
                if is_maildir and entry.name == "tmp":
                    continue  # deliveries in progress: incomplete by definition
                if is_maildir and entry.name in ("cur", "new"):
                    yield from _walk(entry.path, depth=depth + 1, seen=seen, maildir_messages=True)
                elif entry.name.startswith(".") and not is_maildir:
                    yield LoadError(entry.path, None, "skipped: hidden directory", False)
                else:
                    yield from _walk(entry.path, depth=depth + 1, seen=seen)
            elif is_symlink and entry.is_dir():
                # Not followed: a link back up the tree would loop (and outside it, surprise).
                yield LoadError(entry.path, None, "skipped: symbolic link to a directory", False)
            elif entry.is_file():
                yield _FileTask(entry.path, in_walk=True, maildir=maildir_messages)
            elif is_symlink and not os.path.exists(entry.path):
                yield LoadError(entry.path, None, "skipped: broken symbolic link", False)
            else:
                yield LoadError(entry.path, None, "skipped: not a regular file", False)
        except OSError as exc:
            yield LoadError(entry.path, None, _problem(exc))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _problem(exc: BaseException) -> str:
    """A one-line, lower-case description of an OS error, without the path."""
    if isinstance(exc, OSError):
        code = exc.errno
        if code == errno.ENOENT:
            return "no such file or directory"
        if code in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if code is not None:
            return os.strerror(code).lower()
    if isinstance(exc, ValueError):
        return "invalid path: " + _one_line(str(exc))
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""


# --- reading one file ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    problem: str
    not_mail: bool  # the content is not mail (rather than unreadable)


def _load_task(task: _FileTask, max_message_bytes: int) -> Iterator[RawMessage | LoadError]:
    has_mail_extension = os.path.splitext(task.path)[1].lower() in MAIL_EXTENSIONS
    for item in _read_file(task, max_message_bytes):
        if not isinstance(item, _Failure):
            yield item
        elif item.not_mail and task.in_walk and not has_mail_extension:
            problem = "skipped: empty file" if item.problem == "empty file" else NOT_MAIL
            yield LoadError(task.path, None, problem, fatal=False)
        else:
            yield LoadError(task.path, None, item.problem)


class _NotRegularFileError(Exception):
    """The path names a directory, FIFO, socket or device where a file was expected."""


def _open_regular(path: str) -> tuple[BinaryIO, int]:
    # O_NONBLOCK: opening a FIFO put in place of a file must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NotRegularFileError
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _read_file(task: _FileTask, max_message_bytes: int) -> Iterator[RawMessage | _Failure]:
    try:
        stream, size = _open_regular(task.path)
    except _NotRegularFileError:
        yield _Failure("not a regular file", not_mail=False)
        return
    except (OSError, ValueError) as exc:
        yield _Failure(_problem(exc), not_mail=False)
        return
    try:
        with stream:
            yield from _read_open_file(task, stream, size, max_message_bytes)
    except OSError as exc:
        yield _Failure(_problem(exc), not_mail=False)


def _read_open_file(
    task: _FileTask, stream: BinaryIO, size: int, max_message_bytes: int
) -> Iterator[RawMessage | _Failure]:
    head = stream.read(SNIFF_BYTES)
    if not head:
        yield _Failure("empty file", not_mail=True)
        return
    single_kind: Kind = "maildir" if task.maildir else "eml"

    if head.startswith(OLE2_MAGIC):
        converted = convert_msg(stream, max_message_bytes=max_message_bytes)
        if isinstance(converted, ConvertedMsg):
            yield RawMessage(task.path, None, "msg", converted.data, size, converted.truncated)
        else:
            yield _Failure(f"not a readable Outlook .msg file: {converted.problem}", not_mail=True)
        return

    utf16 = _utf16_codec(head)
    if utf16 is not None:
        yield _read_utf16(task, stream, head, size, utf16, single_kind, max_message_bytes)
        return

    text_start = _skip_blank_lines(head, len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0)
    if text_start is None:
        yield _Failure(_not_mail_reason(head), not_mail=True)
        return
    if head.startswith(SEPARATOR_PREFIX, text_start) and not task.maildir:
        yield from _read_mbox(task, stream, text_start, max_message_bytes)
        return
    start = _first_header_line(head, text_start)
    if start is None:
        yield _Failure(_not_mail_reason(head[text_start:]), not_mail=True)
        return

    wanted = start + max_message_bytes + 1  # one byte more tells whether the file goes on
    content = head if len(head) >= wanted else head + stream.read(wanted - len(head))
    data = content[start : start + max_message_bytes]
    truncated = len(content) > start + max_message_bytes
    if task.maildir:
        yield RawMessage(task.path, None, "maildir", data, max(size, len(data)), truncated)
    elif truncated or _has_body(data):
        yield RawMessage(task.path, None, "eml", data, max(size, len(data)), truncated)
    else:
        # Only a header block: a paste. Its line endings are normalised (module docstring).
        pasted = _normalise_paste(data)
        truncated = len(pasted) > max_message_bytes
        yield RawMessage(task.path, None, "headers", pasted[:max_message_bytes], size, truncated)


def _read_mbox(
    task: _FileTask, stream: BinaryIO, start: int, max_message_bytes: int
) -> Iterator[RawMessage | _Failure]:
    stream.seek(start)
    found = 0
    for message in split_mbox(stream, max_message_bytes=max_message_bytes):
        found += 1
        yield RawMessage(
            task.path, message.index, "mbox", message.data, message.size, message.truncated
        )
    if found == 0:
        yield _Failure("mbox file holds no messages", not_mail=True)


def _read_utf16(
    task: _FileTask,
    stream: BinaryIO,
    head: bytes,
    size: int,
    codec: str,
    single_kind: Kind,
    max_message_bytes: int,
) -> RawMessage | _Failure:
    # Each UTF-8 byte we may keep needs at most two UTF-16 bytes; two more tell if there is more.
    wanted = 2 * max_message_bytes + 4
    raw = head if len(head) >= wanted else head + stream.read(wanted - len(head))
    more_in_file = len(raw) > wanted - 2
    raw = raw[: wanted - 2]
    if raw[:2] in (UTF16_LE_BOM, UTF16_BE_BOM):
        raw = raw[2:]
    raw = raw[: len(raw) - len(raw) % 2]
    text = raw.decode(codec, errors="replace").encode("utf-8", errors="replace")
    if text.startswith(UTF8_BOM):
        text = text[len(UTF8_BOM) :]
    text_start = _skip_blank_lines(text, 0)
    start = None if text_start is None else _first_header_line(text, text_start)
    if start is None:
        return _Failure(_not_mail_reason(text) + " (UTF-16 text)", not_mail=True)
    text = text[start:]
    data = _normalise_paste(text)
    truncated = more_in_file or len(data) > max_message_bytes
    kind: Kind = single_kind
    if kind == "eml" and not truncated and not _has_body(text):
        kind = "headers"
    return RawMessage(task.path, None, kind, data[:max_message_bytes], size, truncated)


def _utf16_codec(head: bytes) -> str | None:
    """The UTF-16 codec of text with a BOM, or of text that is plainly ASCII in UTF-16."""
    if head.startswith(UTF16_LE_BOM):
        return "utf-16-le"
    if head.startswith(UTF16_BE_BOM):
        return "utf-16-be"
    if len(head) >= 4:
        # Without a BOM: printable ASCII interleaved with NULs, e.g. b"R\x00e\x00".
        if head[1] == 0 and head[3] == 0 and 0x20 <= head[0] < 0x7F and 0x20 <= head[2] < 0x7F:
            return "utf-16-le"
        if head[0] == 0 and head[2] == 0 and 0x20 <= head[1] < 0x7F and 0x20 <= head[3] < 0x7F:
            return "utf-16-be"
    return None


def _skip_blank_lines(data: bytes, start: int) -> int | None:
    """Offset of the first line at or after ``start`` with a non-blank character, or None."""
    position = start
    while position < len(data):
        end = data.find(b"\n", position)
        line_end = len(data) if end < 0 else end + 1
        if data[position:line_end].strip(b" \t\r\n"):
            return position
        if end < 0:
            return None
        position = line_end
    return None


def _first_header_line(data: bytes, start: int) -> int | None:
    """Offset of the header line the message starts with, at or after the line at ``start``.

    One line above the headers is tolerated and dropped: Outlook 2003/2007's "Microsoft Mail
    Internet Headers Version 2.0" banner in a paste, or the mbox "From " envelope line that
    some delivery agents keep in Maildir files.
    """
    line = _first_line(data, start)
    if line.startswith(SEPARATOR_PREFIX) or line.rstrip(b"\r\n") == OUTLOOK_BANNER:
        after = _skip_blank_lines(data, start + len(line))
        if after is None:
            return None
        start, line = after, _first_line(data, after)
    return start if _HEADER_LINE.match(line) else None


def _first_line(data: bytes, start: int) -> bytes:
    end = data.find(b"\n", start)
    return data[start:] if end < 0 else data[start : end + 1]


def _has_body(data: bytes) -> bool:
    """True when an empty line is followed by some text: not just a pasted header block."""
    separator = _EMPTY_LINE.search(data)
    return separator is not None and _NOT_WHITESPACE.search(data, separator.end()) is not None


def _not_mail_reason(head: bytes) -> str:
    if b"\x00" in head[:1024]:
        return "not an e-mail message: binary data, no header lines at the start"
    if not head.strip(UTF8_BOM + b" \t\r\n"):
        return "not an e-mail message: only blank lines"
    return "not an e-mail message: no header lines at the start"


def _normalise_paste(data: bytes) -> bytes:
    """CRLF line endings, one final CRLF, no leading whitespace on the first line."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").lstrip(b" \t")
    text = text.rstrip(b"\n") + b"\n"
    return text.replace(b"\n", b"\r\n")
