"""Outlook .msg → RFC 5322: a real Outlook file, corrupted copies, and generated containers."""

from __future__ import annotations

import email
import email.policy
import shutil
import struct
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Union

import pytest

from dsguard.mail.msg import MAX_ATTACHMENTS, NOTE_HEADER
from dsguard.mail.source import LoadError, RawMessage, iter_messages

DATA = Path(__file__).resolve().parents[2] / "data" / "mail-parser-mails"
OUTLOOK_MSG = DATA / "mail_outlook_1"
LIMIT = 10_000_000


def _one(path: Path, max_message_bytes: int = LIMIT) -> RawMessage | LoadError:
    results = list(iter_messages([str(path)], max_message_bytes=max_message_bytes))
    assert len(results) == 1
    return results[0]


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# --- the real Outlook file ------------------------------------------------------------------


def test_real_msg_keeps_transport_headers_and_rebuilds_body() -> None:
    result = _one(OUTLOOK_MSG)

    assert isinstance(result, RawMessage)
    assert (result.kind, result.index, result.truncated) == ("msg", None, False)
    assert result.size == OUTLOOK_MSG.stat().st_size
    # The original internet headers come first, byte for byte (CRLF line ends).
    assert result.data.startswith(
        b"Received: from EX-01.auenland.lkt (10.191.70.10) by EX-01.auenland.lkt\r\n"
        b" (10.191.70.10) with Microsoft SMTP Server (TLS) id 15.0.1210.3; Mon, 18 Sep\r\n"
    )
    message = _parse(result.data)
    assert len(message.get_all("Received", [])) == 10
    assert message["Subject"] == "Newsletter Prüfung Personalwesen / Prüfung Eröffnungsbilanz"
    assert message["From"] == "NueblingV@w-vwa.de"
    assert message["Message-ID"] == "<20170918100018.6AE0948009C@www.w-vwa.de>"
    assert message["X-Virus-Scanned"] == "by amavisd-new-2.7.1 (20120429) (Debian) at rz-kiru.de"
    assert NOTE_HEADER not in message
    # The transport block's own MIME headers are gone: the body is a new MIME tree.
    assert b"71e60e4e24186bdb44fe77e574c9526a" not in result.data
    assert len(message.get_all("Content-Type", [])) == 1
    assert message.get_content_type() == "multipart/mixed"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert "Sehr geehrte Frau Gaiser-Schönenborn" in plain.get_content()
    assert "Württembergische Verwaltungs" in html.get_content()
    attachments = [
        (part.get_filename(), part.get_content_type(), len(part.get_content()))
        for part in message.iter_attachments()
    ]
    assert attachments == [
        ("newsletter.png", "image/png", 100150),
        ("spacer.gif", "image/gif", 58),
        ("image004.jpg", "image/jpeg", 790),
        ("image006.jpg", "image/jpeg", 786),
        ("image008.jpg", "image/jpeg", 823),
    ]
    assert all(not part.defects for part in message.walk())


def test_conversion_is_deterministic() -> None:
    """Same .msg, same bytes: MIME boundaries are derived from content, not random."""
    first, second = iter_messages([str(OUTLOOK_MSG)] * 2, max_message_bytes=LIMIT)
    assert isinstance(first, RawMessage)
    assert first == second
    assert b'boundary="=_dsguard_' in first.data


def test_real_msg_under_a_small_limit_is_truncated_with_a_note() -> None:
    result = _one(OUTLOOK_MSG, max_message_bytes=50_000)

    assert isinstance(result, RawMessage)
    assert result.truncated
    assert len(result.data) <= 50_000
    message = _parse(result.data)
    assert message.get_all(NOTE_HEADER) == [
        "attachment 0 (newsletter.png, 100150 bytes) left out: size limit"
    ]
    assert [p.get_filename() for p in message.iter_attachments()] == [
        "spacer.gif",
        "image004.jpg",
        "image006.jpg",
        "image008.jpg",
    ]


def test_real_msg_cut_at_a_tiny_limit_holds_exactly_that_many_bytes() -> None:
    result = _one(OUTLOOK_MSG, max_message_bytes=300)
    assert isinstance(result, RawMessage)
    assert result.truncated
    assert len(result.data) == 300
    assert result.data.startswith(b"Received: from EX-01.auenland.lkt")


def test_msg_without_transport_headers_gets_synthesised_headers(tmp_path: Path) -> None:
    # Renaming the PR_TRANSPORT_MESSAGE_HEADERS stream (same length, so the CFB stays valid)
    # turns the received message into what a draft / sent item looks like to the converter.
    original = "__substg1.0_007D001F".encode("utf-16-le")
    renamed = "__substg1.0_7FFF001F".encode("utf-16-le")
    raw = OUTLOOK_MSG.read_bytes()
    assert raw.count(original) == 1
    path = tmp_path / "draft.msg"
    path.write_bytes(raw.replace(original, renamed))

    result = _one(path)

    assert isinstance(result, RawMessage)
    message = _parse(result.data)
    assert message[NOTE_HEADER] == "no transport headers in .msg"
    assert "Received" not in message
    # Outlook stored the address as the sender's name too; it is not repeated as a name.
    assert message["From"] == "NueblingV@w-vwa.de"
    assert message["To"] == (
        '"Gaiser-Schönenborn, Andrea" <A.Gaiser-Schoenenborn@kreis-tuebingen.de>'
    )
    assert message["Subject"] == "Newsletter Prüfung Personalwesen / Prüfung Eröffnungsbilanz"
    assert message["Message-ID"] == "<20170918100018.6AE0948009C@www.w-vwa.de>"
    assert message["Date"] == "Mon, 18 Sep 2017 10:00:18 +0000"
    assert len(list(message.iter_attachments())) == 5


def test_truncated_msg_is_a_load_error(tmp_path: Path) -> None:
    raw = OUTLOOK_MSG.read_bytes()
    path = tmp_path / "half.msg"
    path.write_bytes(raw[: len(raw) // 2])

    result = _one(path)

    assert isinstance(result, LoadError)
    assert result.fatal
    assert result.problem.startswith("not a readable Outlook .msg file: ")
    assert "\n" not in result.problem


def test_msg_with_only_the_magic_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "magic.msg"
    path.write_bytes(OUTLOOK_MSG.read_bytes()[:600])
    result = _one(path)
    assert isinstance(result, LoadError)
    assert result.problem.startswith("not a readable Outlook .msg file: ")


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_msg_with_flipped_bytes_does_not_crash(tmp_path: Path, where: float) -> None:
    raw = bytearray(OUTLOOK_MSG.read_bytes())
    middle = int(len(raw) * where)
    for offset in range(middle, middle + 256):
        raw[offset] ^= 0xFF
    path = tmp_path / "flipped.msg"
    path.write_bytes(bytes(raw))

    result = _one(path)

    if isinstance(result, RawMessage):
        assert result.kind == "msg"
        assert len(result.data) <= LIMIT
    else:
        assert result.problem.startswith("not a readable Outlook .msg file: ")


def test_flipped_directory_sector_is_reported_not_raised(tmp_path: Path) -> None:
    raw = bytearray(OUTLOOK_MSG.read_bytes())
    directory_sector = struct.unpack_from("<I", raw, 48)[0]  # [MS-CFB] 2.2 header field
    start = 512 * (directory_sector + 1)
    for offset in range(start, start + 512):
        raw[offset] ^= 0x5A
    path = tmp_path / "bad-directory.msg"
    path.write_bytes(bytes(raw))

    result = _one(path)

    assert isinstance(result, LoadError)
    assert result.problem.startswith("not a readable Outlook .msg file: ")


# --- generated containers -------------------------------------------------------------------
#
# A tiny Compound File Binary writer ([MS-CFB] version 3, 512-byte sectors, streams under 4096
# bytes in the mini stream), enough to build .msg files with structures the real sample lacks:
# no transport headers, 8-bit strings, embedded messages, hundreds of attachments.

Tree = Mapping[str, Union[bytes, "Tree"]]

FREE, END, FAT_SECTOR, NO_STREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
MINI_CUTOFF = 4096


def _cfb(tree: Tree) -> bytes:
    entries: list[dict[str, int | str]] = []
    streams: list[tuple[int, bytes]] = []  # (entry index, data)

    def add(name: str, node: bytes | Tree) -> int:
        index = len(entries)
        entries.append({"name": name, "left": NO_STREAM, "right": NO_STREAM, "child": NO_STREAM})
        if isinstance(node, bytes):
            entries[index].update(type=2, size=len(node), start=END)
            streams.append((index, node))
        else:
            entries[index].update(type=1 if index else 5, size=0, start=END)
            ordered = sorted(node.items(), key=lambda kv: (len(kv[0]), kv[0].upper()))
            entries[index]["child"] = add_siblings(ordered)
        return index

    def add_siblings(items: list[tuple[str, bytes | Tree]]) -> int:
        # A balanced binary tree, all black: a valid red-black tree of the children.
        if not items:
            return NO_STREAM
        middle = len(items) // 2
        root = add(*items[middle])
        entries[root]["left"] = add_siblings(items[:middle])
        entries[root]["right"] = add_siblings(items[middle + 1 :])
        return root

    add("Root Entry", tree)

    def sectors(size: int, unit: int) -> int:
        return -(-size // unit)

    # Small streams go to the mini stream (64-byte sectors, chained by the mini FAT).
    mini_data = bytearray()
    minifat: list[int] = []
    big: list[tuple[int, bytes]] = []
    for index, data in streams:
        if not data:
            continue
        if len(data) >= MINI_CUTOFF:
            big.append((index, data))
            continue
        first, count = len(minifat), sectors(len(data), 64)
        minifat.extend([*range(first + 1, first + count), END])
        entries[index]["start"] = first
        mini_data += data + b"\0" * (count * 64 - len(data))
    minifat_bytes = b"".join(struct.pack("<I", n) for n in minifat)
    minifat_bytes += b"\xff" * ((-len(minifat_bytes)) % 512)

    regions = [
        bytes(b"".join(_directory_record(e) for e in entries)),  # placeholder, sized below
        minifat_bytes,
        bytes(mini_data),
        *[data for _, data in big],
    ]
    region_sectors = [sectors(len(region), 512) for region in regions]
    fat_sectors = 1
    while fat_sectors * 128 < fat_sectors + sum(region_sectors):
        fat_sectors += 1
    assert fat_sectors <= 109
    fat = [FAT_SECTOR] * fat_sectors
    starts = []
    for count in region_sectors:
        if count == 0:
            starts.append(END)
            continue
        starts.append(len(fat))
        fat.extend([*range(len(fat) + 1, len(fat) + count), END])
    fat.extend([FREE] * (fat_sectors * 128 - len(fat)))
    directory_start, minifat_start, ministream_start, *big_starts = starts
    entries[0].update(start=ministream_start, size=len(mini_data))
    for (index, _), start in zip(big, big_starts, strict=True):
        entries[index]["start"] = start
    regions[0] = b"".join(_directory_record(e) for e in entries)

    header = bytearray(512)
    header[:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    struct.pack_into("<HHHHH", header, 24, 0x3E, 3, 0xFFFE, 9, 6)
    struct.pack_into(
        "<9I", header, 40, 0, fat_sectors, directory_start, 0, MINI_CUTOFF,
        minifat_start, region_sectors[1], END, 0,
    )  # fmt: skip
    struct.pack_into("<109I", header, 76, *range(fat_sectors), *[FREE] * (109 - fat_sectors))
    body = b"".join(region + b"\0" * ((-len(region)) % 512) for region in regions)
    return bytes(header) + struct.pack(f"<{len(fat)}I", *fat) + body


def _directory_record(entry: Mapping[str, int | str]) -> bytes:
    name = str(entry["name"]).encode("utf-16-le")
    record = bytearray(128)
    record[: len(name)] = name
    struct.pack_into("<HBB", record, 64, len(name) + 2, int(entry["type"]), 1)
    struct.pack_into("<III", record, 68, entry["left"], entry["right"], entry["child"])
    struct.pack_into("<IQ", record, 116, entry["start"], entry["size"])
    return bytes(record)


def _name(prop_id: int, prop_type: int) -> str:
    return f"__substg1.0_{prop_id:04X}{prop_type:04X}"


def _unicode(prop_id: int, value: str) -> tuple[str, bytes]:
    return _name(prop_id, 0x001F), value.encode("utf-16-le")


def _properties(header_len: int, longs: Mapping[int, int] = {}) -> tuple[str, bytes]:
    records = b"".join(
        struct.pack("<IIi4x", prop_id << 16 | 0x0003, 0, value) for prop_id, value in longs.items()
    )
    return "__properties_version1.0", b"\0" * header_len + records


def _message(
    header_len: int,
    subject: str,
    *,
    extra: Mapping[str, bytes | Tree] = {},
    longs: Mapping[int, int] = {},
) -> dict[str, bytes | Tree]:
    return dict(
        [
            _properties(header_len, longs),
            _unicode(0x0037, subject),
            _unicode(0x1000, f"body of {subject}"),
        ],
        **extra,
    )


def _write(tmp_path: Path, name: str, tree: Tree) -> Path:
    path = tmp_path / name
    path.write_bytes(_cfb(tree))
    return path


def test_generated_draft_with_8bit_strings_recipients_and_html_only(tmp_path: Path) -> None:
    tree: dict[str, bytes | Tree] = dict(
        [
            _properties(32, {0x3FFD: 1252, 0x3FDE: 65001}),  # PR_MESSAGE_CODEPAGE, INTERNET_CPID
            (_name(0x0037, 0x001E), "Grüße\r\nBcc: injected@example.net".encode("cp1252")),
            _unicode(0x5D01, "joe@contoso.com"),
            _unicode(0x0C1A, "Joe Müller"),
            (_name(0x1013, 0x0102), "<p>Grüße</p>".encode()),
            _unicode(0x1035, "<draft-1@contoso.com>"),
        ]
    )
    for number, (kind, name, address) in enumerate(
        [(1, "Ann", "ann@example.com"), (2, "Cy", "cy@example.org"), (3, "Hidden", "b@example.net")]
    ):
        tree[f"__recip_version1.0_#{number:08X}"] = dict(
            [_properties(8, {0x0C15: kind}), _unicode(0x3001, name), _unicode(0x39FE, address)]
        )
    path = _write(tmp_path, "draft.msg", tree)

    result = _one(path)

    assert isinstance(result, RawMessage)
    assert result.kind == "msg"
    message = _parse(result.data)
    assert message["From"] == "Joe Müller <joe@contoso.com>"
    assert message["To"] == "Ann <ann@example.com>"
    assert message["Cc"] == "Cy <cy@example.org>"
    assert "Bcc" not in message  # neither the MAPI_BCC recipient nor the injected line
    assert message["Subject"] == "Grüße Bcc: injected@example.net"
    assert message["Message-ID"] == "<draft-1@contoso.com>"
    assert message[NOTE_HEADER] == "no transport headers in .msg"
    assert message.get_content_type() == "text/html"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content() == "<p>Grüße</p>"


def test_generated_transport_headers_are_copied_and_their_mime_headers_dropped(
    tmp_path: Path,
) -> None:
    transport = (
        "Received: from attacker.example.net (203.0.113.9) by\r\n"
        " contoso-com.mail.protection.outlook.com; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        'Content-Type: multipart/mixed;\r\n boundary="old-boundary"\r\n'
        "MIME-Version: 1.0\r\n"
        "\r\n"
        "Authentication-Results: spf=fail smtp.mailfrom=contoso.com\r\n"
        "From: joe@contoso.com\r\n\r\n"
    )
    tree = _message(32, "fax", extra=dict([_unicode(0x007D, transport)]))
    path = _write(tmp_path, "received.msg", tree)

    result = _one(path)

    assert isinstance(result, RawMessage)
    assert result.data.startswith(
        b"Received: from attacker.example.net (203.0.113.9) by\r\n"
        b" contoso-com.mail.protection.outlook.com; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: spf=fail smtp.mailfrom=contoso.com\r\n"
        b"From: joe@contoso.com\r\n"
        b"Content-Type: text/plain"
    )
    assert b"old-boundary" not in result.data
    assert result.data.count(b"MIME-Version: 1.0\r\n") == 1
    message = _parse(result.data)
    assert message.get_content().splitlines() == ["body of fax"]


def _nested(depth: int) -> Tree:
    """A message holding an embedded message holding ... ``depth`` levels below the top."""
    inner: dict[str, bytes | Tree] | None = None
    for level in range(depth, -1, -1):
        extra: dict[str, bytes | Tree] = {}
        if inner is not None:
            extra["__attach_version1.0_#00000000"] = dict(
                [
                    _properties(8, {0x3705: 5}),  # PR_ATTACH_METHOD = embedded message
                    _unicode(0x3707, f"level{level + 1}.msg"),
                    ("__substg1.0_3701000D", inner),
                ]
            )
        inner = _message(32 if level == 0 else 24, f"level {level}", extra=extra)
    assert inner is not None
    return inner


def test_embedded_messages_are_converted_to_depth_three_then_left_out(tmp_path: Path) -> None:
    path = _write(tmp_path, "nested.msg", _nested(4))

    result = _one(path)

    assert isinstance(result, RawMessage)
    message = _parse(result.data)
    subjects = []
    current: EmailMessage | None = message
    while current is not None:
        subjects.append(current["Subject"])
        parts = [p for p in current.iter_attachments() if p.get_content_type() == "message/rfc822"]
        if not parts:
            break
        current = parts[0].get_content()
    assert subjects == ["level 0", "level 1", "level 2", "level 3"]
    assert current is not None
    assert current.get_all(NOTE_HEADER) == [
        "no transport headers in .msg",
        "embedded message 0 (level4.msg) left out: nesting deeper than 3",
    ]


def test_more_than_500_attachments_are_cut_with_a_note(tmp_path: Path) -> None:
    count = MAX_ATTACHMENTS + 2
    attachments: dict[str, bytes | Tree] = {
        f"__attach_version1.0_#{n:08X}": dict(
            [
                _properties(8, {0x3705: 1}),
                _unicode(0x3707, f"file{n}.txt"),
                _unicode(0x370E, "text/plain"),
                (_name(0x3701, 0x0102), b"attachment %d" % n),
            ]
        )
        for n in range(count)
    }
    path = _write(tmp_path, "many.msg", _message(32, "many", extra=attachments))

    result = _one(path)

    assert isinstance(result, RawMessage)
    assert result.truncated
    message = _parse(result.data)
    names = [p.get_filename() for p in message.iter_attachments()]
    assert len(names) == MAX_ATTACHMENTS
    assert names[:2] == ["file0.txt", "file1.txt"]
    assert message.get_all(NOTE_HEADER) == [
        "no transport headers in .msg",
        "2 attachments left out (limit 500)",
    ]


def test_hostile_attachment_mime_type_and_filename_are_neutralised(tmp_path: Path) -> None:
    attachment: Tree = dict(
        [
            _properties(8, {0x3705: 1}),
            _unicode(0x3707, "evil\r\nX-Injected: yes.pdf"),
            _unicode(0x370E, "multipart/mixed; boundary=x"),
            (_name(0x3701, 0x0102), b"%PDF-1.4 not really"),
        ]
    )
    tree = _message(32, "hostile", extra={"__attach_version1.0_#00000000": attachment})
    path = _write(tmp_path, "hostile.msg", tree)

    result = _one(path)

    assert isinstance(result, RawMessage)
    message = _parse(result.data)
    assert "X-Injected" not in message
    (part,) = message.iter_attachments()
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_filename() == "evil X-Injected: yes.pdf"
    assert part.get_content() == b"%PDF-1.4 not really"


def test_body_only_in_compressed_rtf_is_noted(tmp_path: Path) -> None:
    tree = dict(
        [
            _properties(32),
            _unicode(0x0037, "rtf only"),
            (_name(0x1009, 0x0102), b"\x2d\x00\x00\x00\x2b\x00\x00\x00LZFu" + b"\x00" * 40),
        ]
    )
    result = _one(_write(tmp_path, "rtf.msg", tree))

    assert isinstance(result, RawMessage)
    message = _parse(result.data)
    assert message["Subject"] == "rtf only"
    assert message.get_content().strip() == ""
    assert message.get_all(NOTE_HEADER) == [
        "no transport headers in .msg",
        "body only as compressed RTF (PR_RTF_COMPRESSED), not converted",
    ]


def test_ole2_file_that_is_not_a_message(tmp_path: Path) -> None:
    """A Word-like OLE2 file: skipped quietly in a walk, an error when it claims to be .msg."""
    container = _cfb({"WordDocument": b"\x00" * 600, "\x01CompObj": b"\x01" * 100})
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "report.doc").write_bytes(container)
    (folder / "report.msg").write_bytes(container)

    results = list(iter_messages([str(folder)], max_message_bytes=LIMIT))

    assert results == [
        LoadError(str(folder / "report.doc"), None, "skipped: not an e-mail message", False),
        LoadError(
            str(folder / "report.msg"),
            None,
            "not a readable Outlook .msg file: no Outlook message properties in this OLE2 file",
            True,
        ),
    ]


def test_real_msg_found_by_content_whatever_its_name(tmp_path: Path) -> None:
    target = tmp_path / "no-extension"
    shutil.copyfile(OUTLOOK_MSG, target)
    result = _one(target)
    assert isinstance(result, RawMessage)
    assert result.kind == "msg"
