"""Durable on-disk spool of the SMTP gateway: a message answered with 250 survives any crash.

Layout: one directory per state (all 0700), one file per entry (0600) named by the entry id::

    <spool>/tmp/       files being written, and emptied files kept for reuse; never
                       entries (recover() adopts a complete enqueue found there, see below)
    <spool>/new/       accepted, waiting for the first delivery attempt
    <spool>/active/    claimed by one relay worker (an attempt is in progress); with
                       ``dsguard gateway --workers N``, worker slot k claims into active/w<k>/
    <spool>/deferred/  temporary failure, retried at ``next_attempt``
    <spool>/failed/    permanent failure, kept with the reason for an admin (``requeue_failed``)

File format: the first line is a JSON object (``ensure_ascii``, so it holds no raw newline)
ended by LF; every byte after that LF is the message exactly as received (binary-safe, CRLF
kept)::

    {"v":1,"id":"...","mail_from":"...","rcpt_to":[...],...,"size":1234}\\n<message bytes>

``size`` is the length of the message part, so a truncated file is detected, never relayed.
Header and message live in one file so that one fsync and one rename make both durable at once.

Crash safety (design contract: "a message acknowledged with 250 is on disk (fsync'd) before the
reply, and is delivered or quarantined after any crash or restart"). The argument, the one
Postfix's queue rests on, uses two facts: rename(2) within a file system is atomic, also
across a crash (after a power loss a renamed file is under its old name or its new one, never
under neither: the rename is one transaction of the journal on ext4, XFS and btrfs; POSIX
alone does not promise it, and the unfsync'd claims below rely on it too), and a new name is
durable once its directory has been fsync'd.

- ``enqueue``: write header+message to ``tmp/<id>``, fsync the file, rename it to ``new/<id>``,
  fsync ``new/``; only then return (and only then may the gateway say 250). A crash before the
  rename leaves a file in tmp/ only: enqueue had not returned, the client got no 250 and will
  retry, and recover() deletes the file. Once a name exists in a state directory it points at
  data that was fsync'd before the rename, so no state directory ever holds a half-written file.
- ``enqueue`` into a reused file (an emptied file of a delivered entry, whose name in tmp/ was
  made durable by ``commit_retired`` before reuse): write, fsync the file, rename it to
  ``new/<id>`` and return *without* the fsync of new/ (one disk flush less per message, the
  latency of a lone client). The message is then durable under its tmp/ name; if a crash
  loses the rename, recover() adopts the file: its header carries a ``crc`` of the message
  (only enqueue writes one), and a file whose every announced byte is there with the right
  checksum, and whose id is in no state directory, moves to new/; anything else in tmp/ is
  deleted. The 250 may have been lost in the crash too: the client then sends again, and the
  message is delivered twice, never zero times.
- Metadata changes (``defer``, ``fail``, ``requeue_failed``) never edit a file in place: a
  complete new file is written to tmp/, fsync'd and renamed *over* ``active/<id>`` (an atomic
  replace), then ``active/<id>`` is renamed into the next state directory and both directories
  are fsync'd. At every instant exactly one complete file for the id exists in a state
  directory, with the old or the new header, in active/ or in the target: each a valid entry.
- Every state change is a single rename, and only the worker that renamed an entry into
  active/ touches it there. Renaming a file that another worker already took fails with
  ENOENT, so two workers (threads or processes) never claim the same entry.
- ``done`` moves ``active/<id>`` out to ``tmp/done-*`` (which recover() deletes), empties it
  there, fsyncs active/, renames it to ``tmp/free-*`` and fsyncs tmp/; the next enqueue reuses
  that file (its inode: allocating one costs ext4 a scan past every recently deleted inode)
  instead of creating one. Without a usable tmp/ it unlinks. A crash before the fsync of
  active/ delivers the message again after recover(): delivery is at-least-once, like SMTP
  itself (RFC 5321 6.1). ``retire`` + ``commit_retired`` are ``done`` in two halves (the relay
  runs the first on its event loop and group-commits the second in the background); a retired
  file is offered for reuse only after those fsyncs, so no file is rewritten while its old
  name in active/ could come back. A delivered file is never adopted: it is a ``done-*`` until
  it is empty. (Were its emptying lost in a power cut while its rename to ``free-*`` was not,
  which a journaling file system's ordering rules out, it would be delivered a second time.)
- Directory fsyncs are group commits (``_DirSync``): a caller returns once an fsync of the
  directory that started after its own rename/unlink has completed, so concurrent enqueues
  share one fsync of new/ instead of queueing one each.
- ``recover`` (once at startup, before any relay worker runs) moves everything in active/ back
  to new/, adopts complete enqueues from tmp/ and deletes the rest there, and wraps every
  file it cannot parse into a failed/ entry whose message part is the damaged file's raw
  bytes and whose ``last_error`` says what is wrong. It does not raise for a bad file.

Several gateway processes (``[gateway] workers``): each worker process has a slot k and its
own ``active/w<k>/`` and ``tmp/w<k>/`` (``Spool(dir, slot=k)``); new/, deferred/ and failed/ are
shared, and claiming stays a rename, so two workers racing for an entry still cannot both win.
``recover`` would steal the other workers' in-flight entries, so only the supervisor runs it,
once, before any worker starts (a slotted Spool refuses to). When a worker dies, the supervisor
runs ``recover_slot(k)`` before starting its replacement: the dead worker was the only one
touching active/w<k>/, so moving those entries back to new/ cannot race with anyone.

Claiming (new|deferred -> active) is not fsync'd: if that rename is lost in a crash, the entry
simply waits in its old directory, which is just as good. ``claim_fresh`` claims an entry this
object just enqueued by id (the relay's fast path); it trusts the caller's copy of the entry
only if active/<id> is still the inode enqueue wrote, and rereads the header otherwise.

SECURITY: spool files are written only by this module, but the envelope and meta strings in
them come from SMTP clients (addresses, HELO) and a damaged or tampered file must not stop the
gateway. The header line is read with a hard limit (``MAX_HEADER_BYTES``) and checked field by
field (type, id, datetimes with a time zone, size against the real file size); any surprise
makes the file "corrupt" and it is moved aside to failed/, never interpreted further. Paths are
built only from ids matching ``ID_PATTERN`` (``requeue_failed`` takes an id typed into an admin
UI) and from worker slot numbers (``w<k>``, k an int below 100), files are opened with
O_NOFOLLOW so a symlink planted in a state directory is not followed, subdirectories other
than the workers' are never entered, and the modes 0700/0600 keep other local users away from
the mail.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import stat
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STATES: Final = ("new", "active", "deferred", "failed")
TMP: Final = "tmp"
FORMAT_VERSION: Final = 1
# Envelope + meta of a real message is a few KB; 1 MiB is far beyond and still cheap to read.
MAX_HEADER_BYTES: Final = 1 << 20
# Downstream replies can be long (multi-line); the admin UI needs the gist, not a novel.
MAX_ERROR_CHARS: Final = 2000
# Ids sort by creation time (UTC, microseconds) and carry 64 random bits against collisions.
ID_PATTERN: Final = re.compile(r"\A\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{16}\Z")
_ID_TIME_FORMAT: Final = "%Y%m%dT%H%M%S.%fZ"
# A gateway worker's own directories: active/w<slot>/, tmp/w<slot>/.
SLOT_PATTERN: Final = re.compile(r"\Aw[0-9]{1,2}\Z")

# meta keys this module writes itself.
META_REQUEUED_AT: Final = "requeued_at"
META_SPLIT_FROM: Final = "split_from"
META_CORRUPT_SOURCE: Final = "corrupt_source"

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_COPY_CHUNK: Final = 1 << 20
_MAX_FRESH: Final = 100_000
# Emptied files kept for reuse: after a backlog drains, files kept here spare the next burst
# an inode allocation each (and unlinking them would make later allocations slower still:
# ext4 skips recently deleted inodes). An empty file costs one inode and no blocks.
_MAX_FREE: Final = 8192
_FREE_PREFIX: Final = "free-"  # emptied files in tmp/ kept for reuse (durable names)
_RETIRED_PREFIX: Final = "done-"  # delivered files in tmp/ until commit_retired
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_OPEN_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC
_OPEN_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC


class SpoolCorruptError(ValueError):
    """A spool file that cannot be read as an entry (bad header, truncated message...)."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled message: its envelope and delivery bookkeeping (the message bytes stay on
    disk; ``Spool.read`` returns them)."""

    id: str  # sortable unique id (UTC time + random), safe as a file name
    mail_from: str  # "" = null reverse-path <>
    rcpt_to: tuple[str, ...]
    received_at: datetime  # aware, UTC
    attempts: int
    next_attempt: datetime  # aware, UTC
    last_error: str
    meta: dict[str, str]  # free-form: client_ip, verdict, session id...


class Spool:
    """The spool directory. Safe to use from several threads and processes at once, except
    ``recover``, which must run alone at startup. ``slot``: this process is gateway worker
    ``slot`` and claims into its own active/w<slot>/ (see the module docstring)."""

    def __init__(self, directory: Path, *, slot: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self.slot = slot
        own = [] if slot is None else [f"active/{_slot_name(slot)}", f"{TMP}/{_slot_name(slot)}"]
        for name in (*STATES, TMP, *own):
            path = self.directory / name
            path.mkdir(mode=_DIR_MODE, exist_ok=True)
            # mkdir's mode is filtered by the umask and ignored for existing directories.
            os.chmod(path, _DIR_MODE)
        if own:
            _fsync_dir(self.directory / "active")
            _fsync_dir(self.directory / TMP)
        _fsync_dir(self.directory)
        # Where this process claims entries and writes temporary files.
        self._active = self.directory / (own[0] if own else "active")
        self._tmp = self.directory / (own[1] if own else TMP)
        # The same directories as str, for the per-message paths (pathlib costs microseconds
        # per join; enqueue, claim_fresh and retire build several paths per message).
        self._new_dir = self.directory / "new"
        self._new_str = str(self._new_dir)
        self._active_str = str(self._active)
        self._tmp_str = str(self._tmp)
        self._lock = threading.Lock()
        # Group commit of directory fsyncs: concurrent enqueues (and dones) share one.
        self._dir_sync = _DirSync()
        # id -> inode of entries this process enqueued and has not claimed yet: claim_fresh
        # checks that new/<id> is still the very file it wrote (see there).
        self._fresh: dict[str, int] = {}
        # Names in tmp/ of emptied files of delivered entries, reused by enqueue: creating a
        # file costs an inode allocation, and ext4 skips over every recently deleted inode of
        # the block group to find one (a fifth of the gateway's CPU at a few hundred msgs/s).
        self._free: builtins.list[str] = []
        # deferred id -> (inode, mtime_ns, next_attempt): claim_due need not reread headers.
        self._due_cache: dict[str, tuple[int, int, datetime]] = {}

    # -- accepting -------------------------------------------------------------------------

    def enqueue(
        self, data: bytes, mail_from: str, rcpt_to: Sequence[str], meta: Mapping[str, str]
    ) -> SpoolEntry:
        """Store a message durably; on return it is fsync'd in the spool (the gateway may say
        250): in new/, or in a reused tmp/ file that recover() adopts (module docstring).

        Any OSError propagates (the gateway answers 451); nothing is left behind in new/ then.
        """
        recipients = tuple(rcpt_to)
        _check_envelope(mail_from, recipients, meta)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("message data must be bytes")
        now = _utcnow()
        entry = SpoolEntry(
            id=_new_id(now),
            mail_from=mail_from,
            rcpt_to=recipients,
            received_at=now,
            attempts=0,
            next_attempt=now,
            last_error="",
            meta=dict(meta),
        )
        data = bytes(data)
        # The checksum marks a complete enqueue: recover() adopts such a file from tmp/.
        header = _encode_header(entry, len(data), crc=zlib.crc32(data))
        chunks = (header, data)
        inode = 0
        with self._lock:
            free = self._free.pop() if self._free else None
        tmp: str | Path
        if free is not None:
            tmp = f"{self._tmp_str}/{free}"
            with contextlib.suppress(OSError):  # gone or unusable: create a new file instead
                inode = _write_durably(tmp, chunks, want_inode=True, reuse=True)
        reused = bool(inode)
        if not reused:
            tmp = self._tmp_path(entry.id)
            inode = _write_durably(tmp, chunks, want_inode=True)
        target = f"{self._new_str}/{entry.id}"  # the id was made here: a safe file name
        try:
            os.rename(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        if not reused:
            # A file created just now: its name in tmp/ was never made durable, so the
            # rename into new/ must be. A reused file's name in tmp/ is (commit_retired):
            # fsync'd there it is already safe, and recover() adopts it should this rename
            # be lost in a crash.
            try:
                self._dir_sync.sync(self._new_dir)
            except BaseException:
                # Durability unknown: take the entry back so the 451 the caller sends is
                # the truth.
                _unlink_quietly(target)
                raise
        with self._lock:
            if len(self._fresh) >= _MAX_FRESH:
                self._fresh.clear()  # only an optimisation: claim_fresh then rereads headers
            self._fresh[entry.id] = inode
        return entry

    # -- relay side ------------------------------------------------------------------------

    def claim_due(self, now: datetime, limit: int) -> builtins.list[SpoolEntry]:
        """Move up to ``limit`` entries that are due (all of new/, deferred/ entries whose
        ``next_attempt`` has passed) into active/ and return them, oldest due first."""
        if limit <= 0:
            return []
        now = _aware(now, "now")
        candidates: builtins.list[tuple[datetime, str, str]] = []
        new_names = self._entry_names("new")
        # Sorted by time already (the id starts with it): only the oldest ``limit`` can win,
        # unless other workers take some of them first (then the rest are tried below).
        for name in new_names[:limit]:
            candidates.append((_id_time(name), name, "new"))
        for name, due in self._deferred_due():
            if due <= now:
                candidates.append((due, name, "deferred"))
        candidates.sort()
        claimed: builtins.list[SpoolEntry] = []
        for _due, name, state in _chain(candidates, ((now, n, "new") for n in new_names[limit:])):
            if len(claimed) >= limit:
                break
            entry = self._claim(state, name)
            if entry is not None:
                claimed.append(entry)
        return claimed

    def claim_fresh(self, entry: SpoolEntry) -> SpoolEntry | None:
        """Claim (new/ -> active/) an entry that ``enqueue`` of this Spool object returned, without
        listing new/: the relay's fast path for mail it was just handed. None if it is no
        longer in new/ (another worker or ``claim_due`` took it).

        The entry comes back as stored: if new/<id> is not the very file enqueue wrote (same
        inode; e.g. it was delivered, failed and requeued meanwhile), its header is read.
        """
        entry_id = _check_id(entry.id)
        with self._lock:
            inode = self._fresh.pop(entry_id, None)
        active = f"{self._active_str}/{entry_id}"
        try:
            os.rename(f"{self._new_str}/{entry_id}", active)
        except FileNotFoundError:
            return None
        if inode is not None:
            try:
                if os.stat(active, follow_symlinks=False).st_ino == inode:
                    return entry
            except OSError:
                pass
        return self._loaded_claim(entry_id)

    def read(self, entry: SpoolEntry) -> bytes:
        """The message bytes exactly as enqueued, from whichever state directory holds them."""
        _check_id(entry.id)
        for state in ("active", "new", "deferred", "failed"):
            try:
                with self._open(state, entry.id) as handle:
                    _parsed, size = _read_header(handle, entry.id)
                    body = handle.read()
            except FileNotFoundError:
                continue
            if len(body) != size:
                raise SpoolCorruptError(
                    f"{state}/{entry.id}: message part is {len(body)} bytes, header says {size}"
                )
            return body
        raise FileNotFoundError(f"no spool entry {entry.id}")

    def done(self, entry: SpoolEntry) -> None:
        """Delivered: remove the entry (from active/) and make the removal durable."""
        self.commit_retired([self.retire(entry)])

    def retire(self, entry: SpoolEntry) -> str | None:
        """``done`` without its directory fsync (a rename and an emptying truncate, no wait
        for the disk: the relay calls it on its event loop): moves active/<id> out to tmp/
        (or unlinks it) and returns the name in tmp/, or None. The removal is durable, and
        the file reusable by enqueue, only after ``commit_retired`` with that name (a crash
        before it delivers the message again after recover(), as a crash before done's
        fsync does)."""
        path = f"{self._active_str}/{_check_id(entry.id)}"
        recycled = None
        with self._lock:
            if len(self._free) < _MAX_FREE:
                recycled = f"{_RETIRED_PREFIX}{secrets.token_hex(8)}"
        if recycled is not None:
            # Moved out of active/ instead of unlinked, for the next enqueue to reuse its
            # inode; tmp/ files are never entries (recover() deletes them).
            target = f"{self._tmp_str}/{recycled}"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                raise
            except OSError:
                recycled = None  # e.g. tmp/ unusable: plain unlink below
            else:
                try:
                    # Emptied: the delivered message does not linger in tmp/.
                    fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | _CLOEXEC)
                    try:
                        os.ftruncate(fd, 0)
                    finally:
                        os.close(fd)
                except OSError:
                    _unlink_quietly(target)
                    recycled = None
                    return None
        if recycled is None:
            os.unlink(path)
        return recycled

    def commit_retired(self, names: Iterable[str | None]) -> None:
        """Make the removals of ``retire`` durable (one group-committed fsync of active/ for
        all of them) and only then offer their files to enqueue: a file is never rewritten
        while its old name in active/ could come back after a crash."""
        self._dir_sync.sync(self._active)
        reusable = []
        for name in names:
            if name is None:
                continue
            # done-* (emptied, never adopted by recover()) -> free-*: only now, after the
            # truncate, may the name say "enqueue may write here" (_recover_tmp adopts
            # complete enqueues from free-* files only).
            free = _FREE_PREFIX + name.removeprefix(_RETIRED_PREFIX)
            try:
                os.rename(f"{self._tmp_str}/{name}", f"{self._tmp_str}/{free}")
            except OSError:
                _unlink_quietly(f"{self._tmp_str}/{name}")
                continue
            reusable.append(free)
        if reusable:
            # Their names in tmp/ durable too: an enqueue into one of them then needs only
            # its file fsync'd (recover() adopts it from tmp/ if its move into new/ is
            # lost), and after a crash the file is never found back in active/ holding
            # another message.
            self._dir_sync.sync(self._tmp)
            with self._lock:
                self._free.extend(reusable)

    def defer(
        self,
        entry: SpoolEntry,
        error: str,
        next_attempt: datetime,
        *,
        rcpt_to: Sequence[str] | None = None,
    ) -> SpoolEntry:
        """Temporary failure: record the attempt and park the entry in deferred/ until
        ``next_attempt``. ``rcpt_to`` narrows the recipients still to be tried (the others were
        delivered or failed). Returns the entry as stored."""
        updated = replace(
            entry,
            attempts=entry.attempts + 1,
            last_error=_clip_error(error),
            next_attempt=_aware(next_attempt, "next_attempt"),
            rcpt_to=entry.rcpt_to if rcpt_to is None else _recipients(rcpt_to),
        )
        self._rewrite_active(updated)
        self._move(updated.id, "active", "deferred")
        return updated

    def fail(self, entry: SpoolEntry, error: str, *, rcpt_to: Sequence[str] | None = None) -> None:
        """Permanent failure: keep the entry in failed/ with the reason (visible in
        ``list("failed")``, deliverable again with ``requeue_failed``). ``rcpt_to`` narrows the
        recipients kept to the ones that failed."""
        updated = replace(
            entry,
            attempts=entry.attempts + 1,
            last_error=_clip_error(error),
            rcpt_to=entry.rcpt_to if rcpt_to is None else _recipients(rcpt_to),
        )
        self._rewrite_active(updated)
        self._move(updated.id, "active", "failed")

    def split(self, entry: SpoolEntry, rcpt_to: Sequence[str]) -> SpoolEntry:
        """Copy an active entry, for ``rcpt_to`` only, into a new active entry (new id, same
        message, received_at, attempts and meta plus ``split_from``) and return it.

        Used when one attempt ends differently for different recipients (RFC 5321 3.3: each
        RCPT has its own reply): the caller then settles each entry with defer/fail. A crash
        between split and settling leaves both in active/; recover() retries both, so those
        recipients may get the message twice, never zero times.
        """
        recipients = _recipients(rcpt_to)
        if not recipients:
            raise ValueError("split needs at least one recipient")
        source = self._path("active", _check_id(entry.id))
        piece = replace(
            entry,
            id=_new_id(_utcnow()),
            rcpt_to=recipients,
            meta={**entry.meta, META_SPLIT_FROM: entry.id},
        )
        tmp = self._tmp_path(piece.id)
        self._copy_with_header(source, entry.id, piece, tmp)
        target = self._path("active", piece.id)
        try:
            os.rename(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(target.parent)
        return piece

    # -- admin side ------------------------------------------------------------------------

    def list(self, state: str) -> builtins.list[SpoolEntry]:
        """Entries in one state ("new", "active", "deferred", "failed"), oldest first.
        Unreadable files are skipped (and logged); recover() moves them aside."""
        if state not in STATES:
            raise ValueError(f"unknown spool state {state!r}; expected one of {STATES}")
        entries: builtins.list[SpoolEntry] = []
        # "active" means every worker's: the admin asks what is in flight, not where.
        # ("active/" is the directory itself whatever this process's slot: see _dir.)
        where = ["active/", *self._slot_states()] if state == "active" else [state]
        for place in where:
            for name in self._entry_names(place):
                try:
                    entries.append(self._load(place, name))
                except FileNotFoundError:
                    continue  # moved on by a worker meanwhile
                except (SpoolCorruptError, OSError) as exc:
                    log.warning("spool: skipping unreadable %s/%s: %s", place, name, exc)
        entries.sort(key=lambda e: e.id)
        return entries

    def requeue_failed(self, entry_id: str) -> bool:
        """Admin action: move a failed entry back to new/ for immediate delivery, with a fresh
        attempt count (``meta["requeued_at"]`` restarts the relay's retry clock). False if the
        id is not in failed/ or the entry has no recipient to deliver to."""
        if not isinstance(entry_id, str) or not ID_PATTERN.match(entry_id):
            return False
        failed, active = self._path("failed", entry_id), self._path("active", entry_id)
        try:
            os.rename(failed, active)  # take ownership first: concurrent requeues lose here
        except FileNotFoundError:
            return False
        try:
            entry = self._load("active", entry_id)
        except (SpoolCorruptError, OSError) as exc:
            log.warning("spool: cannot requeue %s: %s", entry_id, exc)
            os.rename(active, failed)
            return False
        if not entry.rcpt_to:
            os.rename(active, failed)
            return False
        now = _utcnow()
        meta = {**entry.meta, META_REQUEUED_AT: now.isoformat()}
        updated = replace(entry, attempts=0, last_error="", next_attempt=now, meta=meta)
        self._rewrite_active(updated)
        self._move(entry_id, "active", "new")
        _fsync_dir(failed.parent)
        return True

    def recover(self) -> int:
        """Startup repair; returns how many interrupted entries went (back) to new/.

        Moves active/ (and every worker's active/w<k>/) back to new/ (the process died
        mid-delivery), moves unparsable files aside into failed/, adopts complete enqueues from
        tmp/ into new/ and deletes the other tmp/ files (enqueue never returned for them).
        Problems with single files are logged, never raised.
        """
        if self.slot is not None:
            # A worker recovering would take the entries the other workers are delivering.
            raise RuntimeError("recover() runs in the supervisor, never in a worker")
        with self._lock:
            self._free.clear()
        recovered = 0
        for state in ("active", *self._slot_states(), "new", "deferred", "failed"):
            recovered += self._recover_state(state)
        recovered += self._recover_tmp(self.directory / TMP, slots=True)
        _fsync_dir(self.directory / "new")
        with self._lock:
            self._due_cache.clear()
        return recovered

    def recover_slot(self, slot: int) -> int:
        """After gateway worker ``slot`` died (and before its replacement starts): move its
        claimed entries (active/w<slot>/) back to new/, adopt its complete enqueues from
        tmp/w<slot>/ and delete the rest there; returns how many entries were requeued. Safe
        while the other workers run: nobody else touches those two directories."""
        if slot == self.slot:
            raise RuntimeError("a worker cannot recover its own slot while it runs")
        name = _slot_name(slot)
        if not (self.directory / "active" / name).is_dir():
            return 0
        tmp = self.directory / TMP / name
        recovered = self._recover_state(f"active/{name}")
        if tmp.is_dir():
            recovered += self._recover_tmp(tmp, slots=False)
        _fsync_dir(self.directory / "new")
        return recovered

    def _slot_states(self) -> builtins.list[str]:
        """The workers' active directories, as states relative to the spool ("active/w0")."""
        with os.scandir(self.directory / "active") as listing:
            return sorted(
                f"active/{item.name}"
                for item in listing
                if SLOT_PATTERN.match(item.name) and item.is_dir(follow_symlinks=False)
            )

    def _recover_state(self, state: str) -> int:
        recovered = 0
        directory = self.directory / state
        with os.scandir(directory) as listing:
            items = sorted(listing, key=lambda e: e.name)
        for item in items:
            if item.is_dir(follow_symlinks=False):
                if not (state == "active" and SLOT_PATTERN.match(item.name)):
                    log.warning("spool: ignoring directory %s/%s", state, item.name)
                continue
            try:
                if not ID_PATTERN.match(item.name):
                    raise SpoolCorruptError(f"file name {item.name!r} is not a spool id")
                self._load(state, item.name)
                if state.startswith("active"):
                    os.rename(item.path, self._path("new", item.name))
                    recovered += 1
            except SpoolCorruptError as exc:
                self._set_aside(state, item.name, str(exc))
            except OSError as exc:
                log.error("spool: cannot recover %s/%s: %s", state, item.name, exc)
        if recovered:
            _fsync_dir(self.directory / "new")  # the new names first, then the removals
        _fsync_dir(directory)
        return recovered

    # -- internals -------------------------------------------------------------------------

    def _dir(self, state: str) -> Path:
        # "active" is this process's own (active/w<slot>/ in a worker); "active/w3" names a
        # worker's explicitly (recover, list), "active/" the top directory.
        return self._active if state == "active" else self.directory / state

    def _path(self, state: str, entry_id: str) -> Path:
        return self._dir(state) / entry_id

    def _tmp_path(self, entry_id: str) -> Path:
        return self._tmp / f"{entry_id}.{secrets.token_hex(4)}"

    def _open(self, state: str, name: str) -> BinaryIO:
        fd = os.open(self._path(state, name), _OPEN_READ)
        return os.fdopen(fd, "rb")

    def _entry_names(self, state: str) -> builtins.list[str]:
        return sorted(n for n in os.listdir(self._dir(state)) if ID_PATTERN.match(n))

    def _load(self, state: str, name: str) -> SpoolEntry:
        with self._open(state, name) as handle:
            entry, size = _read_header(handle, name)
            body_size = os.fstat(handle.fileno()).st_size - handle.tell()
        if body_size != size:
            raise SpoolCorruptError(f"message part is {body_size} bytes, header says {size}")
        return entry

    def _claim(self, state: str, name: str) -> SpoolEntry | None:
        try:
            os.rename(self._path(state, name), self._path("active", name))
        except FileNotFoundError:
            return None  # another worker was faster
        with self._lock:
            self._fresh.pop(name, None)
        return self._loaded_claim(name)

    def _loaded_claim(self, name: str) -> SpoolEntry | None:
        try:
            return self._load("active", name)
        except SpoolCorruptError as exc:
            self._set_aside("active", name, str(exc))
        except OSError as exc:
            # Stays in active/ until the next recover(): never lost, never sent twice.
            log.error("spool: cannot read claimed entry %s: %s", name, exc)
        return None

    def _deferred_due(self) -> Iterator[tuple[str, datetime]]:
        seen: dict[str, tuple[int, int, datetime]] = {}
        with os.scandir(self.directory / "deferred") as items:
            for item in items:
                if not ID_PATTERN.match(item.name):
                    continue
                try:
                    stat = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                with self._lock:
                    cached = self._due_cache.get(item.name)
                if cached is not None and cached[:2] == (stat.st_ino, stat.st_mtime_ns):
                    due = cached[2]
                else:
                    try:
                        due = self._load("deferred", item.name).next_attempt
                    except FileNotFoundError:
                        continue
                    except (SpoolCorruptError, OSError):
                        # Due at once: _claim moves it aside as corrupt (or logs why not).
                        due = datetime.min.replace(tzinfo=UTC)
                seen[item.name] = (stat.st_ino, stat.st_mtime_ns, due)
                yield item.name, due
        with self._lock:
            self._due_cache = seen

    def _move(self, entry_id: str, source: str, target: str) -> None:
        os.rename(self._path(source, entry_id), self._path(target, entry_id))
        _fsync_dir(self._dir(target))
        _fsync_dir(self._dir(source))

    def _rewrite_active(self, updated: SpoolEntry) -> None:
        """Replace active/<id> by a complete copy with ``updated``'s header (see module doc)."""
        path = self._path("active", _check_id(updated.id))
        tmp = self._tmp_path(updated.id)
        self._copy_with_header(path, updated.id, updated, tmp)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _copy_with_header(
        self, source: Path, source_id: str, header_entry: SpoolEntry, tmp: Path
    ) -> None:
        fd = os.open(source, _OPEN_READ)
        with os.fdopen(fd, "rb") as handle:
            _old, size = _read_header(handle, source_id)
            header = _encode_header(header_entry, size)
            copied = _write_durably(tmp, _chain((header,), _chunks(handle)))
        if copied != len(header) + size:
            _unlink_quietly(tmp)
            raise SpoolCorruptError(
                f"{source_id}: message part is {copied - len(header)} bytes, header says {size}"
            )

    def _set_aside(self, state: str, name: str, reason: str) -> None:
        """Wrap a damaged file into a valid failed/ entry (raw bytes kept as the message)."""
        source = self._path(state, name)
        try:
            fd = os.open(source, _OPEN_READ)
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            log.error("spool: cannot read damaged %s/%s: %s", state, name, exc)
            return
        now = _utcnow()
        entry_id = name if ID_PATTERN.match(name) else _new_id(now)
        wrapper = SpoolEntry(
            id=entry_id,
            mail_from="",
            rcpt_to=(),
            received_at=now,
            attempts=0,
            next_attempt=now,
            last_error=_clip_error(f"corrupt spool file {state}/{name}: {reason}"),
            meta={META_CORRUPT_SOURCE: f"{state}/{name}"},
        )
        target = self._path("failed", entry_id)
        tmp = self._tmp_path(entry_id)
        try:
            _write_durably(tmp, (_encode_header(wrapper, len(raw)), raw))
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            if source != target:
                os.unlink(source)
                _fsync_dir(source.parent)
        except OSError as exc:
            _unlink_quietly(tmp)
            log.error("spool: cannot move damaged %s/%s aside: %s", state, name, exc)
            return
        log.warning("spool: moved damaged %s/%s to failed/%s: %s", state, name, entry_id, reason)

    def _recover_tmp(self, directory: Path, *, slots: bool) -> int:
        """Empty ``directory`` (with ``slots``, the workers' tmp/w<k>/ too): a complete
        enqueue found there (``_adoptable``) moves to new/, everything else is deleted.
        Returns how many were adopted. Runs after the state directories were recovered."""
        known = self._known_ids()
        adopted = 0
        with os.scandir(directory) as listing:
            items = builtins.list(listing)
        for item in items:
            if item.is_dir(follow_symlinks=False):
                if slots and SLOT_PATTERN.match(item.name):
                    adopted += self._recover_tmp(Path(item.path), slots=False)
                else:
                    log.warning("spool: ignoring directory %s", item.path)
                continue
            try:
                # Only a reused file can hold mail acknowledged without its move into new/
                # being durable (enqueue); a file created there is deleted, as before.
                entry_id = _adoptable(item.path) if item.name.startswith(_FREE_PREFIX) else None
                if entry_id is not None and entry_id not in known:
                    os.rename(item.path, self._path("new", entry_id))
                    known.add(entry_id)
                    adopted += 1
                    log.info("spool: adopted %s from %s", entry_id, item.path)
                else:
                    os.unlink(item.path)
            except OSError as exc:
                log.error("spool: cannot recover %s: %s", item.path, exc)
        if adopted:
            _fsync_dir(self.directory / "new")  # the new names first, then the removals
        _fsync_dir(directory)
        return adopted

    def _known_ids(self) -> set[str]:
        """Every entry id in a state directory (workers' active/w<k>/ included)."""
        states = ("new", "active", *self._slot_states(), "deferred", "failed")
        return {name for state in states for name in os.listdir(self.directory / state)}


def _adoptable(path: str) -> str | None:
    """The id of the complete enqueue in tmp/ file ``path``, else None.

    Only ``enqueue`` writes a ``crc`` into a header (rewrites and splits do not: their
    originals are still in a state directory), and a file counts as complete only with every
    byte the header announces and the checksum right: a file cut short or holding blocks
    that never reached the disk is not mail anyone was told was accepted.
    """
    try:
        # O_NONBLOCK: a FIFO planted in tmp/ must not hang recover(); then regular files only.
        fd = os.open(path, _OPEN_READ | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        line = handle.readline(MAX_HEADER_BYTES + 1)
        try:
            fields = json.loads(line) if line.endswith(b"\n") else None
        except (ValueError, RecursionError):
            return None
        if not isinstance(fields, dict) or not ID_PATTERN.match(str(fields.get("id"))):
            return None
        crc = fields.get("crc")
        if not isinstance(crc, int) or isinstance(crc, bool):
            return None
        try:
            entry, size = _entry_from_fields(fields, str(fields["id"]))
        except SpoolCorruptError:
            return None
        running, length = 0, 0
        for chunk in _chunks(handle):
            running = zlib.crc32(chunk, running)
            length += len(chunk)
        if length != size or running != crc:
            return None
        return entry.id


# -- file format -----------------------------------------------------------------------------


def _encode_header(entry: SpoolEntry, size: int, *, crc: int | None = None) -> bytes:
    """The header line; ``crc`` (zlib.crc32 of the message) only from ``enqueue``."""
    fields: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "id": entry.id,
        "mail_from": entry.mail_from,
        "rcpt_to": list(entry.rcpt_to),
        "received_at": entry.received_at.isoformat(),
        "attempts": entry.attempts,
        "next_attempt": entry.next_attempt.isoformat(),
        "last_error": entry.last_error,
        "meta": entry.meta,
        "size": size,
    }
    if crc is not None:
        fields["crc"] = crc
    header = json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"spool header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return header


def _read_header(handle: BinaryIO, expected_id: str) -> tuple[SpoolEntry, int]:
    line = handle.readline(MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        raise SpoolCorruptError("header line is missing, unterminated or too long")
    try:
        fields = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise SpoolCorruptError(f"header is not JSON: {exc}") from None
    return _entry_from_fields(fields, expected_id)


def _entry_from_fields(fields: object, expected_id: str) -> tuple[SpoolEntry, int]:
    if not isinstance(fields, dict):
        raise SpoolCorruptError("header is not a JSON object")
    if fields.get("v") != FORMAT_VERSION:
        raise SpoolCorruptError(f"unknown format version {fields.get('v')!r}")
    entry_id = _field(fields, "id", str)
    if entry_id != expected_id:
        raise SpoolCorruptError(f"header id {entry_id!r} does not match file name")
    rcpt_to = _field(fields, "rcpt_to", list)
    meta = _field(fields, "meta", dict)
    if not all(isinstance(r, str) for r in rcpt_to):
        raise SpoolCorruptError("rcpt_to holds a non-string")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SpoolCorruptError("meta holds a non-string")
    attempts = _field(fields, "attempts", int)
    size = _field(fields, "size", int)
    if attempts < 0 or size < 0:
        raise SpoolCorruptError("negative attempts or size")
    entry = SpoolEntry(
        id=entry_id,
        mail_from=_field(fields, "mail_from", str),
        rcpt_to=tuple(rcpt_to),
        received_at=_time_field(fields, "received_at"),
        attempts=attempts,
        next_attempt=_time_field(fields, "next_attempt"),
        last_error=_field(fields, "last_error", str),
        meta=meta,
    )
    return entry, size


def _field(fields: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = fields.get(name)
    # bool is an int subclass; a header with "attempts": true is damaged, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpoolCorruptError(f"header field {name!r} missing or not {kind.__name__}")
    return value


def _time_field(fields: dict[str, Any], name: str) -> datetime:
    text = _field(fields, name, str)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SpoolCorruptError(f"header field {name!r} is not a timestamp") from None
    if value.tzinfo is None:
        raise SpoolCorruptError(f"header field {name!r} has no time zone")
    return value.astimezone(UTC)


# -- helpers ---------------------------------------------------------------------------------


def _write_durably(
    path: str | Path,
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    want_inode: bool = False,
    reuse: bool = False,
) -> int:
    """Create ``path`` (0600, must not exist; with ``reuse``: an existing file, emptied),
    write ``chunks``, fsync; returns bytes written (or, with ``want_inode``, the file's inode
    number)."""
    if reuse:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | _CLOEXEC)
    else:
        fd = os.open(path, _OPEN_CREATE, _FILE_MODE)
    written = 0
    inode = 0
    try:
        os.fchmod(fd, _FILE_MODE)  # the umask may have removed bits we need
        for chunk in chunks:
            view = memoryview(chunk)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            written += len(chunk)
        os.fsync(fd)
        if want_inode:
            inode = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    return inode if want_inode else written


class _DirSync:
    """Group commit for directory fsyncs. ``sync(d)`` returns once an fsync of ``d`` that
    *started after the call* has completed: the caller's rename or unlink in ``d`` happened
    before the call, so that fsync made it durable. While one thread fsyncs ``d``, every
    thread that asks meanwhile waits for the next single fsync instead of running its own,
    so N concurrent enqueues cost ~2 directory fsyncs, not N. An fsync error is raised to the
    thread that ran it; the threads waiting on it run their own fsync (and see their own
    error).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        # directory -> [requests made, requests covered by a completed fsync, fsync running]
        self._state: dict[str, list[int]] = {}

    def sync(self, path: Path) -> None:
        key = str(path)
        with self._cond:
            state = self._state.setdefault(key, [0, 0, 0])
            state[0] += 1
            ticket = state[0]
            while state[1] < ticket:
                if state[2]:
                    self._cond.wait()
                    continue
                state[2] = 1
                covers = state[0]  # every request made so far happened before this fsync
                self._cond.release()
                ok = False
                try:
                    _fsync_dir(path)
                    ok = True
                finally:
                    self._cond.acquire()
                    state[2] = 0
                    if ok:
                        state[1] = max(state[1], covers)
                    self._cond.notify_all()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(_COPY_CHUNK):
        yield chunk


def _chain(*parts: Iterable[_T]) -> Iterator[_T]:
    for part in parts:
        yield from part


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id(now: datetime) -> str:
    return f"{now.astimezone(UTC).strftime(_ID_TIME_FORMAT)}-{secrets.token_hex(8)}"


def _id_time(entry_id: str) -> datetime:
    # "YYYYmmddTHHMMSS.ffffffZ-...": fixed positions (ID_PATTERN); strptime costs 20x more.
    try:
        return datetime(
            int(entry_id[0:4]),
            int(entry_id[4:6]),
            int(entry_id[6:8]),
            int(entry_id[9:11]),
            int(entry_id[11:13]),
            int(entry_id[13:15]),
            int(entry_id[16:22]),
            tzinfo=UTC,
        )
    except ValueError:
        # A name that matches ID_PATTERN but is no date (month 13...): due at once, and
        # _claim moves it aside as corrupt (its header id check still applies).
        return datetime.min.replace(tzinfo=UTC)


def _slot_name(slot: int) -> str:
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < 100:
        raise ValueError(f"not a worker slot: {slot!r}")
    return f"w{slot}"


def _check_id(entry_id: str) -> str:
    if not isinstance(entry_id, str) or not ID_PATTERN.match(entry_id):
        raise ValueError(f"not a spool id: {entry_id!r}")
    return entry_id


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _recipients(rcpt_to: Sequence[str]) -> tuple[str, ...]:
    if isinstance(rcpt_to, str) or not all(isinstance(r, str) for r in rcpt_to):
        raise TypeError("rcpt_to must be a sequence of str")
    return tuple(rcpt_to)


def _check_envelope(mail_from: str, rcpt_to: tuple[str, ...], meta: Mapping[str, str]) -> None:
    if not isinstance(mail_from, str):
        raise TypeError("mail_from must be str")
    if not _recipients(rcpt_to):
        raise ValueError("a spooled message needs at least one recipient")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TypeError("meta must map str to str")


def _clip_error(error: str) -> str:
    text = str(error)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
