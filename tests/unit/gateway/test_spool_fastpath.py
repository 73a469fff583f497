"""Spool fast paths: claiming a just-enqueued entry by id, reusing the inodes of delivered
entries, group commit of directory fsyncs, the cheap id clock; and the gateway's cheap
checks that must give the same answers as the slow ones they replace."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from dsguard.gateway import spool as spool_module
from dsguard.gateway.handler import has_bare_newline
from dsguard.gateway.smtpserver import parse_path
from dsguard.gateway.spool import META_REQUEUED_AT, Spool

MESSAGE = b"From: joe@contoso.com\r\nSubject: s\r\n\r\nbody\r\n"


def enqueue(spool: Spool, data: bytes = MESSAGE) -> spool_module.SpoolEntry:
    return spool.enqueue(data, "joe@contoso.com", ["ann@contoso.com"], {"k": "v"})


def test_claim_fresh_takes_the_entry_it_was_given(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = enqueue(spool)
    claimed = spool.claim_fresh(entry)
    assert claimed is entry
    assert os.listdir(tmp_path / "active") == [entry.id]
    assert spool.claim_fresh(entry) is None  # not in new/ any more
    assert spool.claim_due(datetime.now(UTC), 10) == []


def test_claim_fresh_loses_to_a_scan_that_was_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = enqueue(spool)
    [scanned] = spool.claim_due(datetime.now(UTC), 10)
    assert scanned.id == entry.id
    assert spool.claim_fresh(entry) is None


def test_claim_fresh_rereads_an_entry_that_was_rewritten_meanwhile(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = enqueue(spool)
    [claimed] = spool.claim_due(datetime.now(UTC), 10)
    spool.fail(claimed, "550 no")
    assert spool.requeue_failed(entry.id)  # back in new/, a new file with a new header
    again = spool.claim_fresh(entry)
    assert again is not None and again is not entry
    assert again.id == entry.id
    assert META_REQUEUED_AT in again.meta
    assert spool.read(again) == MESSAGE


def test_delivered_files_are_emptied_and_their_inodes_reused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = enqueue(spool, b"x" * 5000)
    inode = os.stat(tmp_path / "new" / first.id).st_ino
    claimed = spool.claim_fresh(first)
    assert claimed is not None
    spool.done(claimed)
    assert os.listdir(tmp_path / "active") == []
    [parked] = os.listdir(tmp_path / "tmp")
    assert os.path.getsize(tmp_path / "tmp" / parked) == 0  # the message does not linger

    second = enqueue(spool)
    assert os.stat(tmp_path / "new" / second.id).st_ino == inode
    assert os.listdir(tmp_path / "tmp") == []
    assert spool.read(second) == MESSAGE
    assert [e.id for e in spool.list("new")] == [second.id]


def test_a_retired_file_is_reused_only_after_its_removal_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    first = enqueue(spool, b"x" * 5000)
    inode = os.stat(tmp_path / "new" / first.id).st_ino
    claimed = spool.claim_fresh(first)
    assert claimed is not None
    synced: list[str] = []
    real_fsync_dir = spool_module._fsync_dir
    monkeypatch.setattr(
        spool_module, "_fsync_dir", lambda p: (synced.append(str(p)), real_fsync_dir(p))[1]
    )
    name = spool.retire(claimed)  # no fsync yet
    assert name is not None and synced == []
    assert os.listdir(tmp_path / "active") == []
    assert os.path.getsize(tmp_path / "tmp" / name) == 0
    second = enqueue(spool)  # the retired file is not offered yet: a new inode
    assert os.stat(tmp_path / "new" / second.id).st_ino != inode
    spool.commit_retired([name])
    assert str(tmp_path / "active") in synced
    third = enqueue(spool)
    assert os.stat(tmp_path / "new" / third.id).st_ino == inode
    assert spool.read(third) == MESSAGE


def test_recover_deletes_parked_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = enqueue(spool)
    claimed = spool.claim_fresh(entry)
    assert claimed is not None
    spool.done(claimed)
    assert os.listdir(tmp_path / "tmp") != []
    Spool(tmp_path).recover()
    assert os.listdir(tmp_path / "tmp") == []
    spool.recover()
    assert enqueue(spool).id in os.listdir(tmp_path / "new")  # a vanished parked file is fine


def test_done_without_a_usable_tmp_dir_still_removes_the_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = enqueue(spool)
    claimed = spool.claim_fresh(entry)
    assert claimed is not None
    (tmp_path / "tmp").rmdir()
    (tmp_path / "tmp").write_bytes(b"")
    spool.done(claimed)
    assert os.listdir(tmp_path / "active") == []


def test_concurrent_enqueues_share_directory_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = spool_module._fsync_dir

    def slow_fsync_dir(path: Path) -> None:
        calls.append(str(path))
        time.sleep(0.005)  # a disk that takes its time, so requests pile up
        real(path)

    spool = Spool(tmp_path)
    monkeypatch.setattr(spool_module, "_fsync_dir", slow_fsync_dir)
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            entry = enqueue(spool)
            with lock:
                ids.append(entry.id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(ids) == 200
    assert sorted(os.listdir(tmp_path / "new")) == sorted(ids)
    new_syncs = calls.count(str(tmp_path / "new"))
    assert 0 < new_syncs < 200 * 0.75


def test_a_failed_directory_fsync_fails_the_enqueue_and_takes_the_entry_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)

    def broken(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module, "_fsync_dir", broken)
    with pytest.raises(OSError, match="Input/output"):
        enqueue(spool)
    assert os.listdir(tmp_path / "new") == []


def test_id_time_is_the_time_in_the_id() -> None:
    rnd = random.Random(3)
    start = datetime(2000, 1, 1, tzinfo=UTC)
    for _ in range(2000):
        when = start + timedelta(microseconds=rnd.randrange(10**16))
        entry_id = spool_module._new_id(when)
        assert spool_module._id_time(entry_id) == when
    # Matches the id pattern but is no date: due at once, never an exception.
    assert spool_module._id_time("20261399T000000.000000Z-0123456789abcdef").year == 1


def test_has_bare_newline_matches_the_regex() -> None:
    bare = re.compile(rb"(?<!\r)\n|\r(?!\n)")
    rnd = random.Random(4)
    for _ in range(20000):
        raw = bytes(rnd.choice(b"\r\nab") for _ in range(rnd.randint(0, 10)))
        assert has_bare_newline(raw) == bool(bare.search(raw)), raw


def test_fast_address_parse_matches_aiosmtpd() -> None:
    reference = SMTP.__new__(SMTP)  # only its _getaddr, which needs no state
    rnd = random.Random(5)
    cases = [
        "<joe@contoso.com>",
        "<joe@contoso.com> SIZE=5 BODY=8BITMIME",
        "<a.b+c@sub-1.example.org>",
        "<.a@b>",
        "<a..b@c>",
        "<a@-b>",
        "<a@b.>",
        "<a@b>x",
        "<a@[192.0.2.1]>",
        '<"a b"@c>',
        " <a@b>",
        "<a@b>  X=1",
        "<a@b> (comment) X=1",
        "<@relay:a@b>",
        "<\u00e9@b>",
        "<a@b>\tX",
        "",
        "<>",
    ]
    for _ in range(20000):
        cases.append(
            "<"
            + "".join(rnd.choice("ab.@-_1") for _ in range(rnd.randint(1, 10)))
            + ">"
            + "".join(rnd.choice(' \tX=1()<>"') for _ in range(rnd.randint(0, 4)))
        )
    for case in cases:
        assert parse_path(case) == reference._getaddr(case), case
