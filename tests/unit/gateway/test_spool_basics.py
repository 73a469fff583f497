"""Spool life cycle on a real directory: enqueue, claim, read, done, defer, fail, list, requeue."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsguard.gateway.spool import ID_PATTERN, STATES, Spool, SpoolEntry

# Every byte value, CRLF and bare LF/CR, a lone "." line, NUL, invalid UTF-8.
AWKWARD = (
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\nX-Bare: lf\n\r\n"
    b"line\r\n.\r\n..two\rbare cr\n\x00nul\xff\xfe\x80 not utf-8\r\n"
    + bytes(range(256))
    + b"\r\n\r\n"
)


def far_future() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


def claim_one(spool: Spool) -> SpoolEntry:
    [entry] = spool.claim_due(datetime.now(UTC), 1)
    return entry


def state_of(spool_dir: Path, entry_id: str) -> list[str]:
    return [s for s in STATES if (spool_dir / s / entry_id).exists()]


def test_enqueue_is_in_new_and_reads_back_the_exact_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    meta = {"client_ip": "192.0.2.7", "verdict": "clean", "note": "tab\there \u00e9"}

    entry = spool.enqueue(AWKWARD, "joe@contoso.com", ["a@example.org", "b@example.net"], meta)

    assert ID_PATTERN.match(entry.id)
    assert state_of(tmp_path / "spool", entry.id) == ["new"]
    assert os.listdir(tmp_path / "spool" / "tmp") == []
    assert entry.mail_from == "joe@contoso.com"
    assert entry.rcpt_to == ("a@example.org", "b@example.net")
    assert entry.attempts == 0
    assert entry.last_error == ""
    assert entry.received_at.tzinfo is not None
    assert entry.received_at.utcoffset() == timedelta(0)
    assert spool.read(entry) == AWKWARD
    # A fresh Spool object (a restarted gateway) sees the same entry.
    [listed] = Spool(tmp_path / "spool").list("new")
    assert listed == entry


def test_null_sender_and_utf8_addresses_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.enqueue(b"x\r\n", "", ["j\u00f6rg@b\u00fccher.example"], {})

    [stored] = spool.list("new")

    assert stored.mail_from == ""
    assert stored.rcpt_to == ("j\u00f6rg@b\u00fccher.example",)
    assert stored == entry


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_any_bytes_round_trip(tmp_path: Path, data: bytes) -> None:
    spool = Spool(tmp_path)
    entry = spool.enqueue(data, "a@example.com", ["b@example.com"], {})
    assert spool.read(entry) == data


def test_ids_are_unique_and_list_is_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = [spool.enqueue(b"m", "a@example.com", ["b@example.com"], {}).id for _ in range(50)]

    assert len(set(ids)) == 50
    assert [e.id for e in spool.list("new")] == sorted(ids)


def test_enqueue_refuses_bad_envelopes_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="recipient"):
        spool.enqueue(b"m", "a@example.com", [], {})
    with pytest.raises(TypeError):
        spool.enqueue(b"m", "a@example.com", ["b@example.com"], {"n": 1})  # type: ignore[dict-item]
    assert spool.list("new") == []
    assert os.listdir(tmp_path / "tmp") == []


def test_enqueue_disk_error_propagates_and_leaves_no_half_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    # Break the spool for real: new/ is no longer a directory, so the rename fails.
    (tmp_path / "new").rmdir()
    (tmp_path / "new").write_bytes(b"")

    with pytest.raises(OSError):  # noqa: PT011 - any OSError becomes 451 in the gateway
        spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})

    assert os.listdir(tmp_path / "tmp") == []


def test_claim_moves_entries_to_active_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.enqueue(b"1", "a@example.com", ["b@example.com"], {})
    second = spool.enqueue(b"2", "a@example.com", ["b@example.com"], {})

    claimed = spool.claim_due(datetime.now(UTC), 1)
    assert [e.id for e in claimed] == [first.id]
    assert state_of(tmp_path, first.id) == ["active"]

    rest = spool.claim_due(datetime.now(UTC), 10)
    assert [e.id for e in rest] == [second.id]
    assert spool.claim_due(datetime.now(UTC), 10) == []
    assert [e.id for e in spool.list("active")] == [first.id, second.id]
    assert spool.claim_due(datetime.now(UTC), 0) == []


def test_claim_is_exclusive_across_processes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = {spool.enqueue(b"m", "a@example.com", ["b@example.com"], {}).id for _ in range(200)}
    worker = (
        "import sys, datetime\n"
        "from pathlib import Path\n"
        "from dsguard.gateway.spool import Spool\n"
        "spool = Spool(Path(sys.argv[1]))\n"
        "while batch := spool.claim_due(datetime.datetime.now(datetime.UTC), 3):\n"
        "    for e in batch: print(e.id, flush=True)\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", worker, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    claimed: list[str] = []
    for proc in workers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        claimed += out.decode().split()

    assert sorted(claimed) == sorted(ids)  # every entry claimed, none twice


def test_done_removes_the_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})
    entry = claim_one(spool)

    spool.done(entry)

    assert state_of(tmp_path, entry.id) == []
    with pytest.raises(FileNotFoundError):
        spool.read(entry)


def test_defer_waits_until_next_attempt_and_keeps_the_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(AWKWARD, "a@example.com", ["b@example.com"], {"session": "s1"})
    entry = claim_one(spool)
    due = datetime.now(UTC) + timedelta(minutes=10)

    deferred = spool.defer(entry, "451 4.3.0 try again", due)

    assert state_of(tmp_path, entry.id) == ["deferred"]
    assert deferred.attempts == 1
    assert deferred.last_error == "451 4.3.0 try again"
    assert deferred.next_attempt == due
    assert spool.list("deferred") == [deferred]
    assert spool.claim_due(due - timedelta(seconds=1), 10) == []

    [again] = spool.claim_due(due, 10)
    assert again == deferred
    assert spool.read(again) == AWKWARD
    assert again.meta == {"session": "s1"}
    second = spool.defer(again, "still down", due + timedelta(minutes=20))
    assert second.attempts == 2


def test_defer_can_narrow_the_recipients(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(b"m", "a@example.com", ["x@example.com", "y@example.com"], {})
    entry = claim_one(spool)

    spool.defer(entry, "450 mailbox busy", datetime.now(UTC), rcpt_to=["y@example.com"])

    [stored] = spool.list("deferred")
    assert stored.rcpt_to == ("y@example.com",)


def test_claim_takes_due_deferred_entries_and_new_ones_in_due_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(b"old", "a@example.com", ["b@example.com"], {})
    old = claim_one(spool)
    spool.defer(old, "busy", datetime.now(UTC) - timedelta(seconds=1))
    later = spool.enqueue(b"new", "a@example.com", ["b@example.com"], {})

    claimed = spool.claim_due(datetime.now(UTC), 10)

    assert [e.id for e in claimed] == [old.id, later.id]


def test_fail_keeps_the_entry_visible_with_its_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(AWKWARD, "a@example.com", ["b@example.com"], {})
    entry = claim_one(spool)

    spool.fail(entry, "550 5.1.1 no such user")

    [failed] = spool.list("failed")
    assert failed.id == entry.id
    assert failed.last_error == "550 5.1.1 no such user"
    assert failed.attempts == 1
    assert spool.read(failed) == AWKWARD
    # Failed entries are never claimed for delivery.
    assert spool.claim_due(far_future(), 10) == []


def test_requeue_failed_makes_it_deliverable_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(AWKWARD, "a@example.com", ["b@example.com"], {"verdict": "clean"})
    entry = claim_one(spool)
    spool.fail(entry, "550 5.7.1 rejected")

    assert spool.requeue_failed(entry.id) is True

    assert spool.list("failed") == []
    [again] = spool.claim_due(datetime.now(UTC), 10)
    assert again.id == entry.id
    assert again.attempts == 0
    assert again.last_error == ""
    assert again.meta["verdict"] == "clean"
    assert "requeued_at" in again.meta
    assert spool.read(again) == AWKWARD


@pytest.mark.parametrize("bad_id", ["nope", "../new/x", "", "20260101T000000.000000Z-zz"])
def test_requeue_failed_refuses_unknown_or_hostile_ids(tmp_path: Path, bad_id: str) -> None:
    spool = Spool(tmp_path)
    assert spool.requeue_failed(bad_id) is False


def test_requeue_of_an_entry_that_is_not_failed_does_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})

    assert spool.requeue_failed(entry.id) is False
    assert state_of(tmp_path, entry.id) == ["new"]


def test_split_copies_the_message_for_some_recipients(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.enqueue(AWKWARD, "a@example.com", ["x@example.com", "y@example.com"], {"k": "v"})
    entry = claim_one(spool)

    piece = spool.split(entry, ["y@example.com"])

    assert piece.id != entry.id
    assert piece.rcpt_to == ("y@example.com",)
    assert piece.meta == {"k": "v", "split_from": entry.id}
    assert piece.received_at == entry.received_at
    assert spool.read(piece) == AWKWARD
    active = {e.id: e for e in spool.list("active")}
    assert set(active) == {entry.id, piece.id}
    assert active[entry.id] == entry  # the original is untouched until the caller settles it


def test_list_rejects_unknown_states(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown spool state"):
        Spool(tmp_path).list("tmp")


def test_list_skips_a_damaged_file_instead_of_failing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})
    (tmp_path / "new" / "20200101T000000.000000Z-0000000000000000").write_bytes(b"garbage")

    assert spool.list("new") == [good]


def test_directories_are_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        spool = Spool(tmp_path / "spool")
        spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})
        spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})
        spool.enqueue(b"m", "a@example.com", ["b@example.com"], {})
        first, second = spool.claim_due(datetime.now(UTC), 2)
        spool.defer(first, "later", far_future())
        spool.fail(second, "never")
        spool.claim_due(datetime.now(UTC), 1)  # the third one sits in active/
    finally:
        os.umask(old_umask)

    root = tmp_path / "spool"
    for name in (*STATES, "tmp"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o700
    files = [p for s in STATES for p in (root / s).iterdir()]
    assert len(files) == 3
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_existing_loose_directories_are_tightened(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir(mode=0o755)
    os.chmod(tmp_path / "new", 0o755)

    Spool(tmp_path)

    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
