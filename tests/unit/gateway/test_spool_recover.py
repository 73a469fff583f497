"""recover() after crashes: nothing enqueue() returned for is lost, damaged files are set aside.

Crashes are real: a child process runs a spool operation and dies (``os._exit``, no cleanup,
like SIGKILL) right before its n-th file-system call inside the spool (open, rename, unlink,
seen through a ``sys.addaudithook`` hook), for n = 1, 2, ... until the operation completes.
Crashes in the middle of writing a file come from RLIMIT_FSIZE: the kernel kills the child
with SIGXFSZ when the file reaches the limit. After each crash the parent runs recover() and
checks the spool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsguard.gateway import spool as spool_module
from dsguard.gateway.spool import ID_PATTERN, STATES, Spool, SpoolEntry

MESSAGE = b"Subject: crash\r\n\r\n" + b"body with \x00 and \xff\r\n.\r\nend\n" * 40
CRASHED = 77

CHILD = r"""
import os, resource, signal, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from dsguard.gateway.spool import Spool

spool_dir, operation, step, entry_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
MESSAGE = bytes.fromhex(sys.argv[5])
file_size_limit = int(sys.argv[6])
spool = Spool(Path(spool_dir))
if file_size_limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
calls = 0

def crash_before_nth_call(event, args):
    global calls
    if event not in ("open", "os.rename", "os.remove"):
        return
    if not (args and isinstance(args[0], (str, os.PathLike))):
        return
    if os.fspath(args[0]).startswith(spool_dir):
        calls += 1
        if calls == step:
            os._exit(77)

def claimed():
    now = datetime.now(UTC) + timedelta(days=1)
    return next(e for e in spool.claim_due(now, 100) if e.id == entry_id)

sys.addaudithook(crash_before_nth_call)
if operation == "enqueue":
    print(spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {"k": "v"}).id)
elif operation == "defer":
    spool.defer(claimed(), "451 later", datetime.now(UTC) + timedelta(hours=1))
elif operation == "fail":
    spool.fail(claimed(), "550 no")
elif operation == "done":
    spool.done(claimed())
elif operation == "requeue":
    assert spool.requeue_failed(entry_id)
elif operation == "split":
    entry = claimed()
    piece = spool.split(entry, ["y@example.com"])
    spool.fail(piece, "550 no such user")
    spool.defer(entry, "450 busy", datetime.now(UTC), rcpt_to=["x@example.com"])
elif operation == "recover":
    spool.recover()
elif operation == "enqueue-reuse":
    # A delivered entry's emptied file, then the enqueue that reuses it.
    first = spool.enqueue(b"Subject: first\r\n\r\nfirst\r\n", "x@example.com", ["y@example.com"], {})
    spool.done(spool.claim_fresh(first))
    print(spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {"k": "v"}).id)
"""


def run_child(
    spool_dir: Path, operation: str, step: int, entry_id: str = "-", file_size_limit: int = 0
) -> str | None:
    """Run ``operation``; None if the child crashed, else its output."""
    args = [spool_dir, operation, step, entry_id, MESSAGE.hex(), file_size_limit]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, args)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode in (CRASHED, -signal.SIGXFSZ):
        return None
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def where(spool_dir: Path, entry_id: str) -> list[str]:
    return [s for s in STATES if (spool_dir / s / entry_id).exists()]


def all_entries(spool: Spool) -> list[SpoolEntry]:
    return [e for s in STATES for e in spool.list(s)]


def assert_consistent(spool: Spool) -> None:
    """What every recovered spool looks like: no tmp files, nothing in active/, no damage."""
    assert os.listdir(spool.directory / "tmp") == []
    assert spool.list("active") == []
    assert [e for e in spool.list("failed") if "corrupt" in e.last_error] == []
    for entry in all_entries(spool):
        assert spool.read(entry) == MESSAGE


def prepare(spool_dir: Path, state: str, rcpt_to: tuple[str, ...] = ("b@example.com",)) -> str:
    spool = Spool(spool_dir)
    entry = spool.enqueue(MESSAGE, "a@example.com", rcpt_to, {})
    if state != "new":
        [claimed] = spool.claim_due(datetime.now(UTC), 1)
        if state == "failed":
            spool.fail(claimed, "550 no")
        elif state == "deferred":
            spool.defer(claimed, "451 later", datetime.now(UTC))
    return entry.id


@pytest.mark.parametrize("operation", ["defer", "fail", "done", "requeue"])
def test_a_crash_at_any_step_of_a_state_change_keeps_the_entry(
    tmp_path: Path, operation: str
) -> None:
    start_state = "failed" if operation == "requeue" else "new"
    step = 1
    while True:
        spool_dir = tmp_path / f"step{step}"
        entry_id = prepare(spool_dir, start_state)

        output = run_child(spool_dir, operation, step, entry_id)
        spool = Spool(spool_dir)
        spool.recover()

        assert_consistent(spool)
        states = where(spool_dir, entry_id)
        if operation == "done":
            # Gone only once done() ran; otherwise back in new/ for another try.
            assert states in ([], ["new"])
        else:
            assert len(states) == 1, f"step {step}: {states}"
        if output is not None:  # the operation completed: its result must be what is on disk
            expected = {"defer": ["deferred"], "fail": ["failed"], "done": [], "requeue": ["new"]}
            assert states == expected[operation]
            assert step > 3  # it did run through several file-system steps
            break
        step += 1


def test_a_crash_at_any_step_of_enqueue_leaves_all_or_nothing(tmp_path: Path) -> None:
    step = 1
    while True:
        spool_dir = tmp_path / f"step{step}"
        Spool(spool_dir)

        output = run_child(spool_dir, "enqueue", step)
        spool = Spool(spool_dir)
        spool.recover()

        assert_consistent(spool)
        entries = spool.list("new")
        assert len(entries) <= 1
        if output is not None:
            # enqueue returned: the message must be there, whole.
            assert [e.id for e in entries] == [output.strip()]
            assert entries[0].meta == {"k": "v"}
            break
        step += 1


def test_a_crash_at_any_step_of_an_enqueue_into_a_reused_file_keeps_what_was_accepted(
    tmp_path: Path,
) -> None:
    # The reused file's move into new/ is not fsync'd: recover() adopts it from tmp/.
    step = 1
    while True:
        spool_dir = tmp_path / f"step{step}"
        Spool(spool_dir)

        output = run_child(spool_dir, "enqueue-reuse", step)
        spool = Spool(spool_dir)
        spool.recover()

        assert os.listdir(spool_dir / "tmp") == []
        assert spool.list("active") == []
        assert [e for e in spool.list("failed")] == []
        ours = [e for e in spool.list("new") if spool.read(e) == MESSAGE]
        assert len(ours) <= 1
        if output is not None:
            assert [e.id for e in ours] == [output.strip()]
            assert ours[0].meta == {"k": "v"}
            break
        step += 1
    assert step > 8  # it crashed at every step before


def _reuse_then_lose_the_rename(spool_dir: Path) -> SpoolEntry:
    """An enqueue into a reused file whose rename into new/ a crash undid."""
    spool = Spool(spool_dir)
    first = spool.enqueue(b"first\r\n", "x@example.com", ["y@example.com"], {})
    claimed = spool.claim_fresh(first)
    assert claimed is not None
    spool.done(claimed)
    [free] = os.listdir(spool_dir / "tmp")
    entry = spool.enqueue(MESSAGE, "a@example.com", ["b@example.com", "c@example.com"], {"k": "v"})
    assert os.listdir(spool_dir / "tmp") == []  # the emptied file was reused
    os.rename(spool_dir / "new" / entry.id, spool_dir / "tmp" / free)
    return entry


def test_recover_adopts_an_accepted_message_whose_move_into_new_was_lost(tmp_path: Path) -> None:
    entry = _reuse_then_lose_the_rename(tmp_path)

    spool = Spool(tmp_path)
    assert spool.recover() == 1

    [adopted] = spool.list("new")
    assert adopted.id == entry.id
    assert adopted.rcpt_to == ("b@example.com", "c@example.com")
    assert adopted.meta == {"k": "v"}
    assert spool.read(adopted) == MESSAGE
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize(
    "damage", ["cut short", "one byte changed", "no checksum", "id already queued", "created file"]
)
def test_recover_adopts_only_complete_enqueues_from_tmp(tmp_path: Path, damage: str) -> None:
    entry = _reuse_then_lose_the_rename(tmp_path)
    [name] = os.listdir(tmp_path / "tmp")
    path = tmp_path / "tmp" / name
    data = path.read_bytes()
    header, _, message = data.partition(b"\n")
    if damage == "cut short":
        path.write_bytes(data[:-1])
    elif damage == "one byte changed":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "no checksum":  # what a rewrite or split leaves in tmp/
        fields = json.loads(header)
        del fields["crc"]
        path.write_bytes(json.dumps(fields).encode() + b"\n" + message)
    elif damage == "id already queued":
        (tmp_path / "deferred" / entry.id).write_bytes(data)
    else:  # the same bytes in a file enqueue created (its move into new/ was fsync'd)
        path.rename(tmp_path / "tmp" / f"{entry.id}.abcd1234")

    Spool(tmp_path).recover()

    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


def test_a_reused_file_is_durable_in_tmp_before_reuse_and_skips_the_fsync_of_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = spool_module._fsync_dir

    def recording(path: Path) -> None:
        synced.append(Path(path).name)
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", recording)
    spool = Spool(tmp_path)
    synced.clear()
    first = spool.enqueue(b"first\r\n", "x@example.com", ["y@example.com"], {})
    assert synced == ["new"]  # a created file: its rename into new/ is made durable
    claimed = spool.claim_fresh(first)
    assert claimed is not None
    synced.clear()
    spool.done(claimed)
    assert sorted(synced) == ["active", "tmp"]  # removal, and the name reuse depends on
    synced.clear()
    spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {})
    assert synced == []  # fsync'd in its durable tmp/ name; recover() adopts it if need be


@pytest.mark.parametrize("operation", ["enqueue", "defer"])
def test_a_crash_in_the_middle_of_writing_a_file_leaves_no_partial_entry(
    tmp_path: Path, operation: str
) -> None:
    file_size = len(MESSAGE) + 300  # about the header too
    crashes = 0
    for limit in [*range(1, file_size, 61), 1 << 20]:
        spool_dir = tmp_path / f"limit{limit}"
        entry_id = prepare(spool_dir, "new") if operation == "defer" else "-"

        output = run_child(spool_dir, operation, 0, entry_id, file_size_limit=limit)
        spool = Spool(spool_dir)
        spool.recover()

        assert_consistent(spool)
        if operation == "enqueue":
            assert len(spool.list("new")) == (0 if output is None else 1)
        else:
            assert len(where(spool_dir, entry_id)) == 1
        crashes += output is None
    assert output is not None  # with room enough (1 MiB) the operation completes
    assert crashes > 10  # and it was killed mid-file at many offsets before


def test_a_crash_while_splitting_loses_no_recipient(tmp_path: Path) -> None:
    step = 1
    while True:
        spool_dir = tmp_path / f"step{step}"
        entry_id = prepare(spool_dir, "new", ("x@example.com", "y@example.com"))

        output = run_child(spool_dir, "split", step, entry_id)
        spool = Spool(spool_dir)
        spool.recover()

        assert_consistent(spool)
        assert len(where(spool_dir, entry_id)) == 1
        still_to_handle = {r for e in all_entries(spool) for r in e.rcpt_to}
        assert still_to_handle == {"x@example.com", "y@example.com"}
        if output is not None:
            [failed] = spool.list("failed")
            assert failed.rcpt_to == ("y@example.com",)
            [deferred] = spool.list("deferred")
            assert (deferred.id, deferred.rcpt_to) == (entry_id, ("x@example.com",))
            break
        step += 1


def test_a_crash_during_recover_is_repaired_by_the_next_recover(tmp_path: Path) -> None:
    step = 1
    while True:
        spool_dir = tmp_path / f"step{step}"
        ids = {prepare(spool_dir, state) for state in ("new", "deferred", "failed")}
        spool = Spool(spool_dir)
        spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {})
        [in_flight] = spool.claim_due(datetime.now(UTC) + timedelta(days=1), 1)
        ids.add(in_flight.id)
        (spool_dir / "tmp" / "leftover").write_bytes(b"half a mess")
        damaged = "20200101T000000.000000Z-00000000000000aa"
        (spool_dir / "new" / damaged).write_bytes(b'{"v": 1, "id": "trunc')

        output = run_child(spool_dir, "recover", step)
        spool.recover()

        assert os.listdir(spool_dir / "tmp") == []
        assert spool.list("active") == []
        for entry_id in ids:
            assert len(where(spool_dir, entry_id)) == 1
        assert where(spool_dir, damaged) == ["failed"]
        [set_aside] = [e for e in spool.list("failed") if e.id == damaged]
        assert spool.read(set_aside) == b'{"v": 1, "id": "trunc'
        if output is not None:
            break
        step += 1


def test_recover_returns_interrupted_deliveries_to_new(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for _ in range(3):
        spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {})
    claimed = spool.claim_due(datetime.now(UTC), 2)

    assert spool.recover() == 2

    assert spool.list("active") == []
    assert {e.id for e in spool.list("new")} >= {e.id for e in claimed}
    assert len(spool.list("new")) == 3
    assert spool.recover() == 0  # idempotent


def test_recover_deletes_stray_tmp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "tmp" / "20260101T000000.000000Z-1234567890abcdef.1234").write_bytes(b'{"v":1')
    (tmp_path / "tmp" / "other").write_bytes(b"")

    spool.recover()

    assert os.listdir(tmp_path / "tmp") == []
    assert all_entries(spool) == []


DAMAGE = {
    "garbage": b"\x00\xffnot json at all\n",
    "empty": b"",
    "no newline": b'{"v": 1}',
    "json list": b"[1, 2]\n",
    "deep nesting": b"[" * 200_000 + b"\n",
    "huge header line": b"a" * (2 << 20),
    "wrong version": b'{"v": 99}\n',
}


def valid_header(entry_id: str, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "v": 1,
        "id": entry_id,
        "mail_from": "a@example.com",
        "rcpt_to": ["b@example.com"],
        "received_at": "2026-01-01T00:00:00+00:00",
        "attempts": 0,
        "next_attempt": "2026-01-01T00:00:00+00:00",
        "last_error": "",
        "meta": {},
        "size": 4,
    }
    fields.update(changes)
    return json.dumps(fields).encode() + b"\n"


HEADER_DAMAGE: dict[str, dict[str, object]] = {
    "size bigger than the message": {"size": 400},
    "id of another file": {"id": "20260101T000000.000000Z-ffffffffffffffff"},
    "naive timestamp": {"received_at": "2026-01-01T00:00:00"},
    "bad timestamp": {"next_attempt": "tomorrow"},
    "recipient not a string": {"rcpt_to": [1]},
    "meta value not a string": {"meta": {"k": 1}},
    "boolean attempts": {"attempts": True},
    "negative size": {"size": -1},
}


@pytest.mark.parametrize("state", ["new", "active", "deferred", "failed"])
def test_recover_sets_damaged_files_aside_and_keeps_the_good_ones(
    tmp_path: Path, state: str
) -> None:
    spool = Spool(tmp_path)
    good = spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {})
    damaged: dict[str, bytes] = {}
    for n, raw in enumerate(DAMAGE.values()):
        damaged[f"20200101T000000.000000Z-{n:016x}"] = raw
    for n, changes in enumerate(HEADER_DAMAGE.values(), start=100):
        entry_id = f"20200101T000000.000000Z-{n:016x}"
        damaged[entry_id] = valid_header(entry_id, **changes) + b"body"
    damaged["not-a-spool-id.eml"] = valid_header("x") + b"body"
    for name, raw in damaged.items():
        (tmp_path / state / name).write_bytes(raw)

    spool.recover()

    assert [e.id for e in spool.list("new")] == [good.id]
    assert spool.read(good) == MESSAGE
    failed = spool.list("failed")
    assert len(failed) == len(damaged)
    for entry in failed:
        assert entry.last_error.startswith("corrupt spool file")
        assert entry.rcpt_to == ()
        source = entry.meta["corrupt_source"]
        assert spool.read(entry) == damaged[source.split("/", 1)[1]]  # raw bytes kept
    assert {e.id for e in failed} >= {n for n in damaged if ID_PATTERN.match(n)}
    # A set-aside file has no recipient, so it cannot be requeued blindly.
    assert spool.requeue_failed(failed[0].id) is False
    assert spool.recover() == 0
    assert len(spool.list("failed")) == len(damaged)


def test_recover_does_not_follow_symlinks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not mail")
    link = tmp_path / "spool" / "new" / "20200101T000000.000000Z-0000000000000001"
    link.symlink_to(outside)

    spool.recover()

    assert outside.read_bytes() == b"not mail"
    assert spool.list("new") == []


def test_a_damaged_deferred_file_is_set_aside_when_claimed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry_id = "20200101T000000.000000Z-00000000000000bb"
    (tmp_path / "deferred" / entry_id).write_bytes(valid_header(entry_id, size=99) + b"body")

    assert spool.claim_due(datetime.now(UTC), 10) == []

    [failed] = spool.list("failed")
    assert failed.id == entry_id
    assert "corrupt" in failed.last_error


def test_a_delivered_file_retired_but_not_yet_emptied_is_not_delivered_again(
    tmp_path: Path,
) -> None:
    # A crash right after retire's rename (before its truncate): the full file sits in tmp/.
    spool = Spool(tmp_path)
    entry = spool.enqueue(MESSAGE, "a@example.com", ["b@example.com"], {})
    claimed = spool.claim_fresh(entry)
    assert claimed is not None
    data = (tmp_path / "active" / entry.id).read_bytes()
    name = spool.retire(claimed)
    assert name is not None and name.startswith("done-")
    (tmp_path / "tmp" / name).write_bytes(data)  # as if the truncate never happened

    Spool(tmp_path).recover()

    assert os.listdir(tmp_path / "tmp") == []
    assert all_entries(Spool(tmp_path)) == []


def test_recover_does_not_hang_on_a_fifo_in_tmp(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    os.mkfifo(tmp_path / "tmp" / "free-0123456789abcdef")  # nobody will ever write to it

    spool.recover()  # returns: the FIFO is not opened for reading and waited on

    assert os.listdir(tmp_path / "tmp") == []
