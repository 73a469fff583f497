"""Loading PATHs: sniffing, header pastes, directory and Maildir walks, errors, the corpora."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from dsguard.mail.source import LoadError, RawMessage, input_size, iter_messages

DATA = Path(__file__).resolve().parents[2] / "data"
MAIL_PARSER = DATA / "mail-parser-mails"
STALWART = DATA / "stalwart-mail-parser-eml"
OUTLOOK_MSG = MAIL_PARSER / "mail_outlook_1"
LIMIT = 1_000_000

SIMPLE = b"From: joe@contoso.com\nTo: joe@contoso.com\nSubject: New Missed Fax-msg\n\nListen Now\n"
PASTE = (
    "Received: from SN6PR04MB1234.namprd04.prod.outlook.com (2603:10b6:805:1::1) by\n"
    " BN8PR04MB5678.namprd04.prod.outlook.com with HTTPS; Mon, 1 Jan 2024 00:00:00 +0000\n"
    "Authentication-Results: spf=fail (sender IP is 139.28.0.1)\n"
    " smtp.mailfrom=contoso.com; dkim=none; dmarc=fail action=none header.from=contoso.com\n"
    "From: Jörg <joe@contoso.com>\n"
    "Subject: Voicemail für Jörg\n"
)


def _scan(*paths: Path | str, limit: int = LIMIT) -> list[RawMessage | LoadError]:
    return list(iter_messages([str(p) for p in paths], max_message_bytes=limit))


def _only(path: Path, limit: int = LIMIT) -> RawMessage | LoadError:
    results = _scan(path, limit=limit)
    assert len(results) == 1
    return results[0]


def _summary(results: list[RawMessage | LoadError], root: Path) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for item in results:
        relative = os.path.relpath(item.path, root)
        if isinstance(item, RawMessage):
            rows.append((relative, item.index, item.kind))
        else:
            rows.append((relative, item.index, item.problem, item.fatal))
    return rows


# --- single files ---------------------------------------------------------------------------


def test_single_eml_is_returned_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "fax.eml"
    path.write_bytes(SIMPLE)
    assert _only(path) == RawMessage(str(path), None, "eml", SIMPLE, len(SIMPLE), False)


def test_large_eml_reads_only_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    body = b"A" * 999 + b"\n"
    with path.open("wb") as out:
        out.write(SIMPLE)
        for _ in range(20_000):
            out.write(body)
    size = path.stat().st_size

    tracemalloc.start()
    try:
        result = _only(path, limit=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert isinstance(result, RawMessage)
    assert result.kind == "eml"
    assert result.truncated
    assert result.size == size
    assert result.data == (SIMPLE + body * 5)[:4096]
    assert peak < 1024 * 1024, f"read {peak} bytes for a 4 kB limit"


def test_eml_exactly_at_the_limit_is_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "exact.eml"
    path.write_bytes(SIMPLE)
    result = _only(path, limit=len(SIMPLE))
    assert isinstance(result, RawMessage)
    assert not result.truncated
    assert result.data == SIMPLE


def test_bom_and_leading_blank_lines_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.eml"
    path.write_bytes(b"\xef\xbb\xbf\r\n  \r\n\r\n" + SIMPLE)
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert result.kind == "eml"
    assert result.data == SIMPLE


@pytest.mark.parametrize(
    "first_line",
    [b"Fro :uMmlti Sender <multi@example.com>", b"   From: joe@contoso.com", b"X-Odd\t: 1"],
)
def test_hostile_header_forms_are_still_messages(tmp_path: Path, first_line: bytes) -> None:
    path = tmp_path / "odd.eml"
    content = first_line + b"\nSubject: s\n\nbody\n"
    path.write_bytes(content)
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert result.kind == "eml"
    assert result.data == content


def test_mbox_is_sniffed_from_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "looks-like.eml"
    path.write_bytes(b"From joe@contoso.com Mon Jan  1 00:00:00 2024\n" + SIMPLE)
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert (result.kind, result.index, result.data) == ("mbox", 0, SIMPLE)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.eml"
    path.touch()
    assert _only(path) == LoadError(str(path), None, "empty file", True)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data, no header lines at the start"),
        (b"Dear customer,\nyour invoice is attached.\n", "no header lines at the start"),
        (b'{"Subject": "json"}\n', "no header lines at the start"),
        (b"\n\n   \n", "only blank lines"),
    ],
)
def test_content_that_is_not_mail_is_an_error(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "junk.eml"
    path.write_bytes(content)
    assert _only(path) == LoadError(str(path), None, f"not an e-mail message: {problem}", True)


def test_missing_path_is_an_error_and_the_scan_goes_on(tmp_path: Path) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(SIMPLE)
    missing = tmp_path / "missing.eml"

    results = _scan(missing, good, "")

    assert results == [
        LoadError(str(missing), None, "no such file or directory", True),
        RawMessage(str(good), None, "eml", SIMPLE, len(SIMPLE), False),
        LoadError("", None, "no such file or directory", True),
    ]


def test_path_with_nul_byte_is_an_error(tmp_path: Path) -> None:
    (result,) = _scan("bad\x00name.eml")
    assert isinstance(result, LoadError)
    assert result.fatal
    assert result.problem.startswith("invalid path")


def test_unreadable_file_is_permission_denied() -> None:
    """Root reads every file, so as root the check runs in a child that drops to nobody."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        path = folder / "secret.eml"
        path.write_bytes(SIMPLE)
        path.chmod(0)
        code = (
            "import sys; from dsguard.mail.source import iter_messages, LoadError\n"
            "r = list(iter_messages([sys.argv[1]], max_message_bytes=1 << 20))\n"
            "print(repr(r))\n"
            "sys.exit(0 if r == [LoadError(sys.argv[1], None, 'permission denied', True)] else 1)\n"
        )
        # Root ignores file modes through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: drop them.
        prefix = (
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
            if os.geteuid() == 0 else []
        )
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(path)], capture_output=True, text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_does_not_hang_the_scan(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    fifo = folder / "pipe.eml"
    os.mkfifo(fifo)
    assert _scan(fifo) == [LoadError(str(fifo), None, "not a regular file or directory", True)]
    assert _scan(folder) == [LoadError(str(fifo), None, "skipped: not a regular file", False)]


def test_max_message_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(iter_messages(["x"], max_message_bytes=0))


# --- header pastes --------------------------------------------------------------------------


def test_lf_header_paste_becomes_crlf_headers(tmp_path: Path) -> None:
    path = tmp_path / "paste.txt"
    path.write_bytes(b"\n\n" + PASTE.encode() + b"\n\n")

    result = _only(path)

    assert isinstance(result, RawMessage)
    assert result.kind == "headers"
    assert result.data == PASTE.replace("\n", "\r\n").encode()
    assert not result.truncated


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_notepad_paste_is_reencoded_as_utf8(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "paste.txt"
    bom = "\ufeff".encode(codec)
    path.write_bytes(bom + PASTE.replace("\n", "\r\n").encode(codec))

    result = _only(path)

    assert isinstance(result, RawMessage)
    assert result.kind == "headers"
    assert result.data == PASTE.replace("\n", "\r\n").encode("utf-8")
    assert "Voicemail für Jörg".encode() in result.data
    assert result.size == path.stat().st_size


def test_utf16_without_bom_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "paste.txt"
    path.write_bytes(PASTE.encode("utf-16-le"))
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert result.kind == "headers"
    assert result.data.startswith(b"Received: from SN6PR04MB1234")


def test_utf16_message_with_body_is_an_eml(tmp_path: Path) -> None:
    path = tmp_path / "saved.eml"
    path.write_bytes(b"\xff\xfe" + SIMPLE.decode().encode("utf-16-le"))
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert result.kind == "eml"
    assert result.data == SIMPLE.replace(b"\n", b"\r\n")


def test_utf16_text_that_is_not_mail(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\xff\xfe" + "just some notes\r\n".encode("utf-16-le"))
    result = _only(path)
    assert isinstance(result, LoadError)
    assert result.problem.startswith("not an e-mail message: no header lines at the start")


def test_outlook_2007_banner_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "paste.txt"
    path.write_bytes(b"Microsoft Mail Internet Headers Version 2.0\r\n" + PASTE.encode())
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert result.kind == "headers"
    assert result.data.startswith(b"Received: from SN6PR04MB1234")


def test_paste_with_ui_wrapped_lines_is_kept_as_is(tmp_path: Path) -> None:
    # Outlook's box wraps long values without continuation whitespace: not repaired.
    paste = b"Subject: a very long subject that the\r\nbox wrapped\r\nFrom: joe@contoso.com\r\n"
    path = tmp_path / "paste.txt"
    path.write_bytes(paste)
    result = _only(path)
    assert isinstance(result, RawMessage)
    assert result.kind == "headers"
    assert result.data == paste


def test_paste_larger_than_the_limit_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "paste.txt"
    path.write_bytes(PASTE.encode() * 10)
    result = _only(path, limit=100)
    assert isinstance(result, RawMessage)
    assert result.truncated
    assert len(result.data) == 100


# --- directory walks ------------------------------------------------------------------------


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _mail(subject: str) -> bytes:
    return b"From: joe@contoso.com\nSubject: %s\n\nbody\n" % subject.encode()


def test_maildir_with_cur_new_tmp_and_maildir_plus_plus_folder(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    _write(root / "cur" / "1700000001.M1P1.host:2,S", _mail("seen"))
    _write(root / "cur" / "1700000002.M2P2.host:2,RS", _mail("answered"))
    _write(root / "new" / "1700000003.M3P3.host", _mail("new"))
    _write(root / "tmp" / "1700000004.M4P4.host", b"half a deliv")
    _write(root / "dovecot-uidlist", b"3 V1700000000 N4\n")
    _write(root / "dovecot.index.log", b"\x01\x02binary")
    _write(root / "subscriptions", b"Sent\n")
    _write(root / "courierimapkeywords" / ":list", b"$Junk\n")
    _write(root / ".Sent" / "cur" / "1700000005.M5P5.host:2,S", _mail("sent"))
    (root / ".Sent" / "new").mkdir()
    (root / ".Sent" / "tmp").mkdir()
    _write(root / ".Sent" / "maildirfolder", b"")
    _write(root / ".Sent" / "dovecot-uidlist", b"")

    results = _scan(root)

    assert _summary(results, root) == [
        (".Sent/cur/1700000005.M5P5.host:2,S", None, "maildir"),
        ("cur/1700000001.M1P1.host:2,S", None, "maildir"),
        ("cur/1700000002.M2P2.host:2,RS", None, "maildir"),
        ("new/1700000003.M3P3.host", None, "maildir"),
    ]
    assert [r.data for r in results if isinstance(r, RawMessage)] == [
        _mail("sent"),
        _mail("seen"),
        _mail("answered"),
        _mail("new"),
    ]


def test_maildir_message_with_mbox_envelope_line(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    (root / "cur").mkdir(parents=True)
    _write(root / "new" / "1", b"From joe@contoso.com Mon Jan  1 00:00:00 2024\n" + _mail("x"))
    (result,) = _scan(root)
    assert isinstance(result, RawMessage)
    assert (result.kind, result.data) == ("maildir", _mail("x"))


def test_mixed_tree_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "evidence"
    _write(root / "a-fax.eml", _mail("fax"))
    _write(
        root / "b-archive.mbox",
        b"From a@example.com x\n" + _mail("m0") + b"\nFrom b@example.com y\n" + _mail("m1"),
    )
    shutil.copyfile(OUTLOOK_MSG, root / "c-outlook.msg")
    _write(root / "d-trace.json", b'{"MessageTraceId": "x"}\n')
    _write(root / "e-junk.eml", b"\x00\x01\x02 not mail")
    _write(root / "f" / "nested.eml", _mail("nested"))
    _write(root / "f" / "README", b"# notes\n")
    _write(root / "g-empty.txt", b"")
    _write(root / ".git" / "HEAD", b"ref: refs/heads/main\n")
    _write(root / "h-paste.txt", PASTE.encode())

    results = _scan(root)

    assert _summary(results, root) == [
        (".git", None, "skipped: hidden directory", False),
        ("a-fax.eml", None, "eml"),
        ("b-archive.mbox", 0, "mbox"),
        ("b-archive.mbox", 1, "mbox"),
        ("c-outlook.msg", None, "msg"),
        ("d-trace.json", None, "skipped: not an e-mail message", False),
        (
            "e-junk.eml",
            None,
            "not an e-mail message: binary data, no header lines at the start",
            True,
        ),
        ("f/README", None, "skipped: not an e-mail message", False),
        ("f/nested.eml", None, "eml"),
        ("g-empty.txt", None, "skipped: empty file", False),
        ("h-paste.txt", None, "headers"),
    ]
    assert input_size([str(root)]) == sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file() and ".git" not in p.parts
    )


def test_paths_are_scanned_in_the_order_given(tmp_path: Path) -> None:
    first = _write(tmp_path / "z.eml", _mail("z"))
    second = _write(tmp_path / "a.eml", _mail("a"))
    assert [r.path for r in _scan(first, second)] == [str(first), str(second)]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    _write(root / "m.eml", _mail("m"))
    (root / "again").symlink_to(root, target_is_directory=True)
    (root / "link.eml").symlink_to(root / "m.eml")

    results = _scan(root)

    assert _summary(results, root) == [
        ("again", None, "skipped: symbolic link to a directory", False),
        ("link.eml", None, "eml"),
        ("m.eml", None, "eml"),
    ]
    # A directory symlink named by the user is followed.
    assert _summary(_scan(root / "again"), root / "again") == _summary(results, root)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_broken_symlink_in_a_walk_is_a_note(tmp_path: Path) -> None:
    root = tmp_path / "links"
    root.mkdir()
    (root / "gone.eml").symlink_to(tmp_path / "does-not-exist.eml")
    assert _scan(root) == [
        LoadError(str(root / "gone.eml"), None, "skipped: broken symbolic link", False)
    ]
    assert _scan(root / "gone.eml") == [
        LoadError(str(root / "gone.eml"), None, "no such file or directory", True)
    ]


def test_input_size_is_a_stat_sum_and_never_raises(tmp_path: Path) -> None:
    one = _write(tmp_path / "one.eml", SIMPLE)
    assert input_size([str(one), str(tmp_path / "missing"), "bad\x00path", str(one)]) == 2 * len(
        SIMPLE
    )
    assert input_size([]) == 0


# --- every corpus file scans without a traceback ---------------------------------------------


def _corpus_files() -> list[Path]:
    return sorted(p for p in [*MAIL_PARSER.rglob("*"), *STALWART.rglob("*")] if p.is_file())


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: str(p.relative_to(DATA)))
def test_every_corpus_file_loads_without_exception(path: Path) -> None:
    results = _scan(path, limit=10_000_000)

    assert results
    is_mail = path.suffix == ".eml" or path.name.startswith("mail_")
    if not is_mail:  # README, COPYING, LICENSE texts
        assert all(isinstance(r, LoadError) and r.fatal for r in results)
        return
    (result,) = results
    assert isinstance(result, RawMessage)
    assert result.index is None
    assert not result.truncated
    if result.kind == "msg":
        assert path == OUTLOOK_MSG
    else:
        assert result.kind == "eml"
        assert result.data == path.read_bytes()
        assert result.size == len(result.data)


def test_corpus_folders_walk_without_fatal_errors() -> None:
    results = _scan(MAIL_PARSER, STALWART)
    messages = [r for r in results if isinstance(r, RawMessage)]
    assert len(messages) == 18 + 107
    assert all(not r.fatal for r in results if isinstance(r, LoadError))
