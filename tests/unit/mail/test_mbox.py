"""mbox splitting: separator rule, mboxrd un-quoting, size limit, CRLF, streaming memory."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

from dsguard.mail.mbox import LINE_CHUNK, split_mbox
from dsguard.mail.source import LoadError, RawMessage, iter_messages


def _scan(path: Path, max_message_bytes: int = 1_000_000) -> list[RawMessage | LoadError]:
    return list(iter_messages([str(path)], max_message_bytes=max_message_bytes))


def _messages(data: bytes, max_message_bytes: int = 1_000_000) -> list[tuple[int, bytes]]:
    return [
        (m.index, m.data) for m in split_mbox(io.BytesIO(data), max_message_bytes=max_message_bytes)
    ]


THREE = (
    b"From alice@example.com Mon Jan  1 00:00:00 2024\n"
    b"From: alice@example.com\n"
    b"Subject: one\n"
    b"\n"
    b"first body\n"
    b">From the start, quoted by mboxrd\n"
    b">>From twice quoted\n"
    b">not a From line\n"
    b"\n"
    b"From bob@example.net Mon Jan  1 00:00:01 2024\n"
    b"From: bob@example.net\n"
    b"Subject: two (big)\n"
    b"\n" + b"x" * 5000 + b"\n"
    b"\n"
    b"From carol@example.org Mon Jan  1 00:00:02 2024\n"
    b"From: carol@example.org\n"
    b"Subject: three\n"
    b"\n"
    b"last body\n"
    b"\n"
)


def test_three_messages_unquoted_and_oversized_one_truncated(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    path.write_bytes(THREE)

    results = _scan(path, max_message_bytes=200)

    assert all(isinstance(r, RawMessage) for r in results)
    messages = [r for r in results if isinstance(r, RawMessage)]
    assert [(m.index, m.kind, m.path) for m in messages] == [
        (0, "mbox", str(path)),
        (1, "mbox", str(path)),
        (2, "mbox", str(path)),
    ]
    first, second, third = messages
    assert first.data == (
        b"From: alice@example.com\nSubject: one\n\nfirst body\n"
        b"From the start, quoted by mboxrd\n>From twice quoted\n>not a From line\n"
    )
    assert not first.truncated
    assert first.size == len(first.data)
    # The big one keeps exactly its first 200 bytes and knows its real size.
    full_second = b"From: bob@example.net\nSubject: two (big)\n\n" + b"x" * 5000 + b"\n"
    assert second.truncated
    assert second.data == full_second[:200]
    assert second.size == len(full_second)
    # Reading on to the next separator without storing leaves the next message intact.
    assert third.data == b"From: carol@example.org\nSubject: three\n\nlast body\n"
    assert not third.truncated


def test_crlf_mbox_is_split_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "crlf.mbox"
    path.write_bytes(THREE.replace(b"\n", b"\r\n"))

    messages = [r for r in _scan(path) if isinstance(r, RawMessage)]

    assert [m.index for m in messages] == [0, 1, 2]
    assert messages[0].data.startswith(b"From: alice@example.com\r\nSubject: one\r\n\r\n")
    assert b"\r\nFrom the start, quoted by mboxrd\r\n>From twice quoted\r\n" in messages[0].data
    assert messages[2].data == b"From: carol@example.org\r\nSubject: three\r\n\r\nlast body\r\n"


def test_from_line_without_empty_line_before_it_is_body_text() -> None:
    data = b"From a@example.com x\nSubject: s\n\nline\nFrom here on it is body\n"
    assert _messages(data) == [(0, b"Subject: s\n\nline\nFrom here on it is body\n")]


def test_from_line_after_an_empty_line_starts_a_message() -> None:
    data = b"From a@example.com x\nSubject: 1\n\nbody\n\nFrom b@example.com y\nSubject: 2\n"
    assert _messages(data) == [(0, b"Subject: 1\n\nbody\n"), (1, b"Subject: 2\n")]


def test_final_message_without_trailing_newline() -> None:
    data = b"From a@example.com x\nSubject: 1\n\nno newline at the end"
    assert _messages(data) == [(0, b"Subject: 1\n\nno newline at the end")]


def test_empty_messages_are_skipped_but_keep_their_position() -> None:
    data = (
        b"From a@example.com x\nSubject: 0\n\n"
        b"From b@example.com x\n\n"
        b"From c@example.com x\nSubject: 2\n"
    )
    assert _messages(data) == [(0, b"Subject: 0\n"), (2, b"Subject: 2\n")]


def test_separator_only_mbox_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.mbox"
    path.write_bytes(b"From MAILER-DAEMON Mon Jan  1 00:00:00 2024\n\n")

    results = _scan(path)

    assert len(results) == 1
    error = results[0]
    assert isinstance(error, LoadError)
    assert error.fatal
    assert error.problem == "mbox file holds no messages"


def test_from_inside_a_line_longer_than_a_read_chunk_is_not_a_separator() -> None:
    long_line = b"a" * (LINE_CHUNK - 1) + b"\n"
    # The second physical read of this line starts with "From ": it must not split.
    split_line = b"b" * LINE_CHUNK + b"From x\n"
    data = b"From a@example.com x\nSubject: 1\n\n" + long_line + b"\n" + split_line
    messages = _messages(data, max_message_bytes=10 * LINE_CHUNK)
    assert len(messages) == 1
    assert messages[0][1].endswith(b"b" * 10 + b"From x\n")


def test_overlong_separator_line_is_dropped_completely() -> None:
    data = b"From " + b"z" * (3 * LINE_CHUNK) + b"\nSubject: 1\n"
    assert _messages(data) == [(0, b"Subject: 1\n")]


def test_streaming_a_large_mbox_keeps_memory_flat(tmp_path: Path) -> None:
    """~50 MB on disk, including a 10 MB line without newline; traced peak stays ~1 MB."""
    path = tmp_path / "large.mbox"
    line = b"y" * 999 + b"\n"
    with path.open("wb") as out:
        for number in range(480):
            out.write(b"From sender@example.com Mon Jan  1 00:00:00 2024\n")
            out.write(b"Subject: message %d\n\n" % number)
            out.write(line * 100)  # 100 kB per message
            out.write(b"\n")
        out.write(b"From sender@example.com Mon Jan  1 00:00:00 2024\nSubject: huge line\n\n")
        out.write(b"z" * 10_000_000)
    assert path.stat().st_size > 50_000_000

    count = 0
    truncated = 0
    tracemalloc.start()
    try:
        for result in iter_messages([str(path)], max_message_bytes=32 * 1024):
            assert isinstance(result, RawMessage)
            count += 1
            truncated += result.truncated
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 481
    assert truncated == 481
    assert peak < 2 * 1024 * 1024, f"peak traced memory {peak} bytes"
