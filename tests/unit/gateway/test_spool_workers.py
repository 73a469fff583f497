"""The spool shared by several gateway worker processes (``Spool(dir, slot=k)``).

Each worker claims into its own active/w<k>/; new/, deferred/ and failed/ are shared; claims
stay renames, so racing workers never both win an entry. recover() belongs to the supervisor
(a worker refuses to run it); recover_slot(k) requeues a dead worker's claims without touching
the others'.
"""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsguard.gateway.spool import Spool

MESSAGE = b"Subject: workers\r\n\r\nbody\r\n"
LATER = datetime.now(UTC) + timedelta(days=1)


def _enqueue(spool: Spool, count: int) -> list[str]:
    return [spool.enqueue(MESSAGE, "a@example.org", ["b@contoso.com"], {}).id for _ in range(count)]


def _names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_file()}


def test_a_worker_claims_into_its_own_active_directory(tmp_path: Path) -> None:
    w0, w1 = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    ids = _enqueue(w0, 4)
    first = w0.claim_due(LATER, 2)
    second = w1.claim_due(LATER, 10)
    assert {e.id for e in first} | {e.id for e in second} == set(ids)
    assert _names(tmp_path / "active" / "w0") == {e.id for e in first}
    assert _names(tmp_path / "active" / "w1") == {e.id for e in second}
    assert _names(tmp_path / "active") == set()
    # The relay's operations work on the worker's own claims.
    assert w1.read(second[0]) == MESSAGE
    w1.done(second[0])
    w1.defer(second[1], "451 later", LATER)
    assert _names(tmp_path / "deferred") == {second[1].id}
    # The admin view sees every worker's claims.
    assert {e.id for e in Spool(tmp_path).list("active")} == {e.id for e in first}


def test_claim_fresh_lost_to_another_worker_returns_none(tmp_path: Path) -> None:
    w0, w1 = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    entry = w0.enqueue(MESSAGE, "a@example.org", ["b@contoso.com"], {})
    assert [e.id for e in w1.claim_due(LATER, 10)] == [entry.id]
    assert w0.claim_fresh(entry) is None


def test_recover_slot_requeues_only_the_dead_workers_claims(tmp_path: Path) -> None:
    w0, w1 = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    _enqueue(w0, 4)
    dead = w0.claim_due(LATER, 2)
    alive = w1.claim_due(LATER, 2)
    (tmp_path / "tmp" / "w0" / "half-written").write_bytes(b"partial")
    (tmp_path / "tmp" / "w1" / "in-progress").write_bytes(b"partial")
    supervisor = Spool(tmp_path)
    assert supervisor.recover_slot(0) == 2
    assert _names(tmp_path / "new") == {e.id for e in dead}
    assert _names(tmp_path / "active" / "w1") == {e.id for e in alive}
    assert _names(tmp_path / "tmp" / "w0") == set()
    assert _names(tmp_path / "tmp" / "w1") == {"in-progress"}
    assert supervisor.recover_slot(7) == 0  # a slot that never ran


def test_only_the_supervisor_recovers(tmp_path: Path) -> None:
    w0 = Spool(tmp_path, slot=0)
    with pytest.raises(RuntimeError):
        w0.recover()
    with pytest.raises(RuntimeError):
        w0.recover_slot(0)


def test_recover_at_start_takes_back_every_workers_claims(tmp_path: Path) -> None:
    w0, w1 = Spool(tmp_path, slot=0), Spool(tmp_path, slot=1)
    ids = _enqueue(w0, 3)
    w0.claim_due(LATER, 1)
    w1.claim_due(LATER, 1)
    (tmp_path / "tmp" / "w1" / "free-0123").write_bytes(b"")
    assert Spool(tmp_path).recover() == 2
    assert _names(tmp_path / "new") == set(ids)
    assert not _names(tmp_path / "tmp" / "w1")


def _claim_all(directory: str, slot: int, queue: multiprocessing.Queue[list[str]]) -> None:
    spool = Spool(Path(directory), slot=slot)
    claimed: list[str] = []
    while batch := spool.claim_due(LATER, 5):
        claimed.extend(e.id for e in batch)
    queue.put(claimed)


def test_processes_racing_for_entries_never_claim_one_twice(tmp_path: Path) -> None:
    ids = _enqueue(Spool(tmp_path), 300)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), k, queue)) for k in range(4)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
    claimed = [entry_id for result in results for entry_id in result]
    assert sorted(claimed) == sorted(ids)  # every entry once, none twice
