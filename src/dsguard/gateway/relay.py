"""Relay spooled messages to the downstream mail server, with retries and permanent failures.

One SMTP transaction per entry, with dsguard's own client (``gateway.smtpclient``): EHLO (HELO
if refused) and optional STARTTLS when a connection is opened, then MAIL, one RCPT per
recipient, DATA; with PIPELINING (RFC 2920) those go out in one write, so a message costs two
round trips. A connection whose transaction went through is kept for the next entry (like
Postfix's connection cache; at most one per delivery slot, closed with QUIT after
``connection_idle`` seconds unused; any other outcome closes it). If a reused connection turns
out to be dead before the data was sent (connection lost, timeout, or a 421 from a server that
closed it while idle), the entry is retried at once on a new connection, never deferred for
that; after the data was sent nothing is retried blindly (it may have been delivered). The
stored bytes go out unchanged except for what RFC 5321 requires of the wire form
(``smtpclient.message_wire``, done once per attempt): bare CR/LF become CRLF (section 2.3.8)
and lines starting with "." are dot-stuffed (section 4.5.2).

How a reply becomes an outcome (RFC 5321 4.2.1: 2yz done, 4yz transient, 5yz permanent):

- Session problems - cannot connect, timeout, lost connection, 421, a refused greeting / EHLO,
  STARTTLS required but not offered or not verifiable - are about the connection, not the
  message: every recipient not yet settled is a temporary failure. So is a reply that is not a
  2/4/5 code, and so is any internal fault (design contract: internal faults become temporary
  failures, never a lost or bounced message).
- MAIL FROM: 4yz/5yz applies to every recipient.
- RCPT TO: each recipient keeps its own reply (2yz accepted, 4yz temporary, 5yz permanent).
- DATA (354 and the final reply): applies to every recipient accepted at RCPT time. A
  connection lost after the final "." and before the reply counts as temporary; the retry may
  then duplicate the message (RFC 5321 6.1 prefers duplicates to loss).

Partial results (different recipients, different outcomes) are settled per group: accepted
recipients are delivered; if the rest all failed the same way the entry itself is narrowed to
them (``Spool.defer``/``Spool.fail`` with ``rcpt_to=``); if some are temporary and some
permanent, the permanent ones are split into a new entry (``Spool.split``) kept in failed/ and
the original entry is deferred for the temporary ones. ``on_result`` is called once per group.

Retries: the n-th temporary failure of an entry waits ``first_delay * factor**(n-1)`` seconds,
at most ``max_delay``, never beyond ``received_at + max_age`` (or ``meta["requeued_at"] +
max_age`` after an admin requeue). A temporary failure at or after that deadline becomes
permanent, like Postfix's ``maximal_queue_lifetime``. Permanent failures stay in failed/ (the
quarantine, visible to admins); this module sends no bounce.

Scheduling: ``run`` claims due entries whenever a delivery slot is free and otherwise sleeps
until ``submit()``/``wake()``, the next retry this relay scheduled itself, or
``poll_interval``. Entries the gateway just accepted come through ``submit`` with their bytes:
they are claimed by id (``Spool.claim_fresh``: one rename, no directory listing, no reread),
on the event loop; a slot that finishes a delivery goes on with the next submitted entry at
once, on the same cached connection, until none is waiting or the relay stops.
The spool directory is scanned (``Spool.claim_due``) at start, every ``poll_interval`` (entries
written by other processes), when a retry is due, after ``wake()``, and continuously while the
bounded in-memory queue has overflowed, until the scan has caught up: the spool, not memory,
is the truth, and a claim is always a rename, so an entry is never delivered twice however it
was found. On stop, deliveries still running after
``shutdown_timeout`` are cancelled: recipients the downstream had already accepted count as
delivered, the others are deferred due at once, so nothing waits in active/ for recover().

SECURITY: the downstream is configured, not chosen by senders, but its replies and the
envelope are untrusted text. Replies are read by ``smtpclient``, which caps line and reply
length; every command and the connection have ``Downstream.timeout``; reply text is stripped of
control characters and clipped before it is stored or logged (it ends up in the admin UI).
Envelope addresses with control characters or angle brackets are refused before anything is
sent (SMTP command injection), and non-ASCII addresses go out only with SMTPUTF8 (RFC 6531)
when the downstream offers it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import heapq
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from dsguard.gateway.smtpclient import (
    SmtpConnection,
    SmtpError,
    SmtpReplyError,
    message_wire,
    wire_size,
)
from dsguard.gateway.spool import META_REQUEUED_AT, Spool, SpoolEntry

log = logging.getLogger(__name__)

DELIVERED: Final = "delivered"
DEFERRED: Final = "deferred"
FAILED: Final = "failed"

_SCHEMES: Final = {"smtp": False, "smtp+starttls": True}
_DEFAULT_PORT: Final = 25
_MAX_DETAIL_CHARS: Final = 500
_UNSAFE_IN_ADDRESS: Final = re.compile(r"[\x00-\x1f\x7f<>]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")

ResultCallback = Callable[[SpoolEntry, str, str], None]
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Downstream:
    """Where accepted mail goes: the organisation's own mail server."""

    host: str
    port: int
    starttls: bool = False  # True: STARTTLS is required and the certificate must verify
    timeout: float = 60.0  # per connect and per command, seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for temporary failures; ``max_age`` is the total time before one becomes
    permanent (bounce-worthy)."""

    first_delay: float = 60.0
    factor: float = 2.0
    max_delay: float = 3600.0
    max_age: float = 5 * 86400.0

    def __post_init__(self) -> None:
        if self.first_delay <= 0 or self.max_delay <= 0 or self.max_age < 0:
            raise ValueError("retry delays must be positive and max_age not negative")
        if self.factor < 1:
            raise ValueError("retry factor must be at least 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive temporary failure (1-based)."""
        try:
            delay = self.first_delay * self.factor ** max(failures - 1, 0)
        except OverflowError:
            return self.max_delay
        return min(delay, self.max_delay)


def parse_downstream(url: str) -> Downstream:
    """``smtp://host[:port]`` or ``smtp+starttls://host[:port]`` (port 25 if omitted, IPv6 in
    brackets), optionally ``?timeout=SECONDS``. Raises ValueError naming the problem."""
    if not isinstance(url, str):
        raise ValueError("downstream must be a URL string such as smtp://127.0.0.1:2525")
    parts = urllib.parse.urlsplit(url.strip())
    # Error messages end up in logs: never repeat a password someone put in the URL.
    userinfo, at, hostport = parts.netloc.rpartition("@")
    shown = repr(parts._replace(netloc=f"***@{hostport}").geturl() if at else url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"downstream {shown}: scheme must be smtp:// or smtp+starttls://, not {scheme!r}"
        )
    if userinfo or at:
        raise ValueError(f"downstream {shown}: credentials in the URL are not supported")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"downstream {shown}: only host and port are allowed, no path")
    host = parts.hostname
    if not host:
        raise ValueError(f"downstream {shown}: no host name")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"downstream {shown}: port must be a number from 1 to 65535")
    timeout = 60.0
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name != "timeout":
            raise ValueError(f"downstream {shown}: unknown parameter {name!r}")
        try:
            timeout = float(value)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < 86400:
            raise ValueError(f"downstream {shown}: timeout must be seconds, above 0")
    return Downstream(
        host=host,
        port=_DEFAULT_PORT if port is None else port,
        starttls=_SCHEMES[scheme],
        timeout=timeout,
    )


@dataclass(slots=True)
class _Attempt:
    """What one SMTP session said, per recipient."""

    delivered: list[str] = field(default_factory=list)
    delivered_reply: str = ""
    temporary: dict[str, str] = field(default_factory=dict)
    permanent: dict[str, str] = field(default_factory=dict)
    data_started: bool = False  # DATA was sent: a retry could duplicate the message

    def settled(self, rcpt: str) -> bool:
        return rcpt in self.temporary or rcpt in self.permanent or rcpt in self.delivered

    def unsettled_temporary(self, recipients: tuple[str, ...], detail: str) -> None:
        for rcpt in recipients:
            if not self.settled(rcpt):
                self.temporary[rcpt] = detail


class _StaleConnectionError(Exception):
    """A reused downstream connection turned out to be dead before the message was sent."""


# What the relay hands from claiming to delivering: the entry and, on the fast path, the
# message bytes it was given in memory (None: read them from the spool).
_Claimed = tuple[SpoolEntry, bytes | None]


class Relay:
    """Deliver what the spool holds to one downstream server, ``concurrency`` at a time."""

    def __init__(
        self,
        spool: Spool,
        downstream: Downstream,
        retry: RetryPolicy,
        *,
        concurrency: int = 4,
        helo: str,
        on_result: ResultCallback | None = None,
        poll_interval: float = 10.0,
        shutdown_timeout: float = 30.0,
        connection_idle: float = 5.0,
        max_submitted: int = 1000,
        max_submitted_bytes: int = 64 << 20,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not helo or not helo.isascii() or _CONTROL.search(helo) or " " in helo:
            raise ValueError(f"helo must be a host name, got {helo!r}")
        if poll_interval <= 0 or shutdown_timeout < 0 or connection_idle < 0:
            raise ValueError(
                "poll_interval must be positive, shutdown_timeout and connection_idle not negative"
            )
        self._spool = spool
        self._downstream = downstream
        self._retry = retry
        self._concurrency = concurrency
        self._helo = helo
        self._on_result = on_result
        self._poll_interval = poll_interval
        self._shutdown_timeout = shutdown_timeout
        self._wake_event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Epoch seconds at which entries this relay deferred become due: sleep until then
        # rather than until the next poll.
        self._due_times: list[float] = []
        # Fast path: entries handed over by submit() (with their bytes), claimed by id, so an
        # accepted message costs no directory listing and no reread. Bounded; when full,
        # submissions go to the spool only and the directory is scanned until caught up.
        self._submitted: collections.deque[tuple[SpoolEntry, bytes]] = collections.deque()
        self._submitted_bytes = 0
        self._max_submitted = max_submitted
        self._max_submitted_bytes = max_submitted_bytes
        self._backlog = False  # submissions overflowed to the spool: scan until caught up
        self._missed = False  # a submission overflowed since the current scan began
        self._next_scan = 0.0  # time.monotonic() of the next directory scan; 0 = at once
        # Downstream connection reuse (like Postfix's connection cache): connections that just
        # delivered a message wait here, newest last, for the next one; closed after
        # ``connection_idle`` seconds unused (0: one connection per message).
        self._connection_idle = connection_idle
        self._idle: list[tuple[SmtpConnection, float]] = []
        self._closing: set[asyncio.Task[None]] = set()
        # The relay's own threads for spool bookkeeping: the default executor is shared with
        # the SMTP sessions, whose spool writes hold its threads for an fsync each, and a
        # claim or settle queued behind them keeps a delivery slot idle.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Delivered entries retired on the loop, waiting for their group commit.
        self._stopping = False  # run() saw stop: slots finish what they have, take no more
        self._retired: list[str | None] = []
        self._committer: asyncio.Future[None] | None = None

    # -- public ----------------------------------------------------------------------------

    def submit(self, entry: SpoolEntry, data: bytes) -> None:
        """Hand a just-enqueued entry (as ``Spool.enqueue`` returned it, with the message bytes
        it was given) to the relay: it is claimed by id and sent from memory, with no
        directory scan. Call from the event loop's thread. The spool stays the truth: if the
        in-memory queue is full, the entry is found by scanning the spool instead."""
        size = len(data)
        if (
            self._backlog
            or len(self._submitted) >= self._max_submitted
            or self._submitted_bytes + size > self._max_submitted_bytes
        ):
            self._backlog = True
            self._missed = True
            self._next_scan = 0.0
        else:
            self._submitted.append((entry, data))
            self._submitted_bytes += size
        self._wake_event.set()

    def wake(self) -> None:
        """Look for due entries in the spool now instead of at the next poll (e.g. after an
        enqueue by someone else). Safe to call from any thread, and before run()."""
        self._next_scan = 0.0
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake_event.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_event.set()
        else:
            loop.call_soon_threadsafe(self._wake_event.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim due entries and deliver them until ``stop`` is set; then let in-flight
        deliveries finish (at most ``shutdown_timeout`` seconds; the rest are interrupted and
        deferred for an immediate retry) and return."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        inflight: set[asyncio.Task[str]] = set()
        stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        wake_task: asyncio.Future[Any] | None = None
        try:
            while not stop.is_set():
                if wake_task is None or wake_task.done():
                    # Cleared before claiming: a wake() during the claim is not lost.
                    self._wake_event.clear()
                    wake_task = asyncio.ensure_future(self._wake_event.wait())
                free = self._concurrency - len(inflight)
                if free > 0:
                    for entry, data in await self._claim(free):
                        inflight.add(asyncio.create_task(self._deliver_logged(entry, data)))
                self._reap_idle()
                # With every slot busy, only a finished delivery (or stop) matters.
                timeout = None if len(inflight) >= self._concurrency else self._sleep_time()
                waiters: set[asyncio.Future[Any]] = {stop_task, wake_task, *inflight}
                done, _pending = await asyncio.wait(
                    waiters,
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                inflight.difference_update(done)
        finally:
            self._stopping = True
            stop_task.cancel()
            if wake_task is not None:
                wake_task.cancel()
            await self._drain(inflight)
            await self._close_idle()
            if self._committer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._committer)
                self._committer = None
            if self._executor is not None:
                self._executor.shutdown(wait=False)  # idle by now; a later call makes a new one
                self._executor = None
            self._loop = None

    async def deliver_once(self, entry: SpoolEntry, data: bytes | None = None) -> str:
        """One delivery attempt of a claimed (active) entry, settled in the spool. ``data``:
        the message bytes if the caller has them (else they are read from the spool).

        Returns "delivered" if every recipient accepted it, "deferred" if some or all will be
        retried, "failed" if the rest failed permanently. Never raises for delivery problems.
        """
        attempt = await self._attempt(entry, data)
        return await self._record_outcome(entry, attempt)

    async def _attempt(self, entry: SpoolEntry, data: bytes | None) -> _Attempt:
        """The downstream part of a delivery: what each recipient got. On cancellation the
        entry is settled at once (synchronously) and CancelledError propagates."""
        attempt = _Attempt()
        try:
            if not entry.rcpt_to:
                attempt.permanent[""] = "entry has no recipients"
            else:
                if data is None:
                    data = await self._in_thread(self._spool.read, entry)
                await self._transact(entry, data, attempt)
        except asyncio.CancelledError:
            # Shutdown: recipients the downstream already took must not get the message again;
            # the rest are due again at once.
            attempt.unsettled_temporary(entry.rcpt_to, "delivery interrupted before completion")
            self._settle_and_report(entry, attempt, interrupted=True)
            raise
        except Exception as exc:  # internal fault: temporary by contract
            log.exception("relay: internal error delivering %s", entry.id)
            attempt = _Attempt()
            attempt.unsettled_temporary(entry.rcpt_to, _clip(f"internal error: {exc!r}"))
        return attempt

    async def _record_outcome(self, entry: SpoolEntry, attempt: _Attempt) -> str:
        """Settle an attempt in the spool (in a thread; not cut short by cancellation)."""
        if (
            entry.rcpt_to
            and not attempt.temporary
            and not attempt.permanent
            and self._loop is not None
            and all(r in attempt.delivered for r in entry.rcpt_to)
        ):
            return self._retire_delivered(entry, attempt)
        settling = asyncio.ensure_future(
            self._in_thread(self._settle, entry, attempt, datetime.now(UTC))
        )
        try:
            results = await asyncio.shield(settling)
        except asyncio.CancelledError:
            # Spool bookkeeping must not be cut in half: let it finish, then stop.
            with contextlib.suppress(Exception):
                await settling
            raise
        for result_entry, outcome, detail in results:
            if outcome == DEFERRED:
                heapq.heappush(self._due_times, result_entry.next_attempt.timestamp())
            self._report(result_entry, outcome, detail)
        outcomes = {outcome for _e, outcome, _d in results}
        if DEFERRED in outcomes or not outcomes:
            return DEFERRED
        return FAILED if FAILED in outcomes else DELIVERED

    def _retire_delivered(self, entry: SpoolEntry, attempt: _Attempt) -> str:
        """Every recipient has it: ``Spool.retire`` here on the loop (a rename and a truncate,
        no disk wait) and the fsync of active/ in the background, one for all the entries
        retired meanwhile (``_commit_retired``). The slot is free at once instead of after a
        thread hop and an fsync: a delivery slot waiting on the disk is what made the relay
        fall behind the SMTP side. A crash before that fsync delivers the message again after
        recover(), as with ``Spool.done`` (RFC 5321 6.1: duplicates rather than loss)."""
        try:
            name = self._spool.retire(entry)
        except Exception as exc:
            # Whatever is still in active/ goes back to new/ at the next recover(): never lost.
            log.error("relay: cannot record the outcome for %s in the spool: %s", entry.id, exc)
            self._report(entry, DEFERRED, _clip(f"spool error: {exc}"))
            return DEFERRED
        self._retired.append(name)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_retired())
        self._report(entry, DELIVERED, attempt.delivered_reply)
        return DELIVERED

    async def _commit_retired(self) -> None:
        """Group commit of ``_retire_delivered``: fsync active/ for everything retired so far,
        then again for what came meanwhile, until nothing is left."""
        while self._retired:
            names, self._retired = self._retired, []
            try:
                await self._in_thread(self._spool.commit_retired, names)
            except Exception as exc:
                # The removals are not known durable; their files are not reused (a crash can
                # only bring the delivered entries back for a second delivery).
                log.error("relay: cannot sync the spool after deliveries: %s", exc)

    # -- loop helpers ----------------------------------------------------------------------

    def _in_thread(self, func: Callable[..., _R], /, *args: Any) -> asyncio.Future[_R]:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="dsguard-relay"
            )
        return asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _claim(self, limit: int) -> list[_Claimed]:
        """Up to ``limit`` entries to deliver: submitted ones first (claimed by id), then, when a
        scan is due, the oldest due entries in the spool."""
        fresh, taken = self._claim_submitted(limit)
        room = limit - taken
        scan = room > 0 and self._scan_wanted()
        if scan:
            self._missed = False
        if not scan:
            return fresh
        spool = self._spool
        now = datetime.now(UTC)

        def claim() -> tuple[list[_Claimed], int]:
            try:
                found = spool.claim_due(now, room)
            except Exception:
                # A broken spool must not end the relay loop; the next poll tries again.
                # (What was claimed by id above is delivered all the same.)
                log.exception("relay: cannot claim from the spool")
                return [], -1
            return [(entry, None) for entry in found], len(found)

        claiming = asyncio.ensure_future(self._in_thread(claim))
        try:
            claimed, scanned = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Entries claimed by the thread meanwhile would sit in active/ until recover():
            # hand them back, due at once.
            late: list[_Claimed] = []
            with contextlib.suppress(Exception):
                late, _n = await claiming
            for entry, _data in (*fresh, *late):
                with contextlib.suppress(Exception):
                    self._spool.defer(entry, "claimed during shutdown", datetime.now(UTC))
            raise
        except Exception:
            # A broken spool must not end the relay loop; the next poll tries again.
            log.exception("relay: cannot claim from the spool")
            self._next_scan = time.monotonic() + self._poll_interval
            return fresh
        if scanned < 0:
            self._next_scan = time.monotonic() + self._poll_interval
        elif scan:
            if scanned < room and not self._missed:
                # Caught up: everything due was claimed; the next scan is the periodic one.
                self._backlog = False
                self._next_scan = time.monotonic() + self._poll_interval
            else:
                self._next_scan = 0.0  # more may be waiting: scan again when a slot is free
        return fresh + claimed

    def _claim_submitted(self, limit: int) -> tuple[list[_Claimed], int]:
        """Claim up to ``limit`` entries handed over by submit(), here on the loop: one rename
        and a stat each, no disk wait (nothing is fsync'd), cheaper than a trip to a thread.
        Returns the claimed entries and how many were taken from the queue."""
        taken = 0
        fresh: list[_Claimed] = []
        while self._submitted and taken < limit:
            entry, data = self._submitted.popleft()
            self._submitted_bytes -= len(data)
            taken += 1
            try:
                got = self._spool.claim_fresh(entry)
            except Exception:
                # Still in new/ (or in active/ for recover()): never lost; a scan finds it.
                log.exception("relay: cannot claim %s from the spool", entry.id)
                continue
            if got is not None:
                fresh.append((got, data if got is entry else None))
        return fresh, taken

    def _scan_wanted(self) -> bool:
        if self._backlog or time.monotonic() >= self._next_scan:
            return True
        now = time.time()
        due = False
        while self._due_times and self._due_times[0] <= now:
            heapq.heappop(self._due_times)
            due = True
        return due

    def _sleep_time(self) -> float:
        if self._submitted:
            return 0.0
        sleep = max(0.0, self._next_scan - time.monotonic())
        if self._due_times:
            # A hair late rather than early, so the entry is due when we look.
            sleep = min(sleep, max(0.0, self._due_times[0] - time.time() + 0.002))
        if self._idle:
            expiry = self._idle[0][1] + self._connection_idle
            sleep = min(sleep, max(0.0, expiry - time.monotonic()))
        return sleep

    async def _deliver_logged(self, entry: SpoolEntry, data: bytes | None = None) -> str:
        """One delivery slot's work: ``entry``, then, while submitted entries are waiting and
        the relay is not stopping, the next one at once (on the connection just used, from
        the cache), instead of handing the slot back to run() for a wake-up, a claim and a
        new task per message. Returns the outcome of the last delivery."""
        while True:
            try:
                outcome = await self.deliver_once(entry, data)
            except Exception:
                log.exception("relay: delivery of %s failed unexpectedly", entry.id)
                outcome = DEFERRED
            if self._stopping or not self._submitted:
                return outcome
            fresh, _taken = self._claim_submitted(1)
            if not fresh:
                return outcome
            [(entry, data)] = fresh

    async def _drain(self, inflight: set[asyncio.Task[str]]) -> None:
        if not inflight:
            return
        _done, pending = await asyncio.wait(inflight, timeout=self._shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _settle_and_report(
        self, entry: SpoolEntry, attempt: _Attempt, *, interrupted: bool
    ) -> None:
        """Settle synchronously (we are being cancelled and cannot await a thread)."""
        for result_entry, outcome, detail in self._settle(
            entry, attempt, datetime.now(UTC), interrupted=interrupted
        ):
            self._report(result_entry, outcome, detail)

    def _report(self, entry: SpoolEntry, outcome: str, detail: str) -> None:
        log.info("relay: %s %s to %s: %s", entry.id, outcome, ",".join(entry.rcpt_to), detail)
        if self._on_result is None:
            return
        try:
            self._on_result(entry, outcome, detail)
        except Exception:
            log.exception("relay: on_result callback failed for %s", entry.id)

    # -- one SMTP session ------------------------------------------------------------------

    async def _transact(self, entry: SpoolEntry, data: bytes, attempt: _Attempt) -> None:
        """Run one SMTP session; ``attempt`` records each recipient's outcome as it is known
        (so an interrupted session still tells who already has the message)."""
        recipients = entry.rcpt_to
        if _UNSAFE_IN_ADDRESS.search(entry.mail_from):
            for rcpt in recipients:
                attempt.permanent[rcpt] = f"invalid sender address {entry.mail_from!r}"
            return
        usable: list[str] = []
        for rcpt in recipients:
            if not rcpt or _UNSAFE_IN_ADDRESS.search(rcpt):
                attempt.permanent[rcpt] = f"invalid recipient address {rcpt!r}"
            else:
                usable.append(rcpt)
        if not usable:
            return
        ds = self._downstream
        where = f"{ds.host}:{ds.port}"
        checked = dict(attempt.permanent)  # refused above, before any connection
        wire = message_wire(data)
        conn = self._checkout()
        if conn is not None:
            # A cached connection may have died while idle (the downstream restarted, or timed
            # it out): if it fails before the message went out, retry once on a new one.
            reusable = False
            try:
                reusable = await self._send(conn, entry, usable, data, wire, attempt, where, True)
                return
            except (_StaleConnectionError, SmtpError, OSError, TimeoutError) as exc:
                if attempt.data_started:  # the message may have gone out: no blind retry
                    attempt.unsettled_temporary(recipients, _error_text(where, exc))
                    return
                log.debug("relay: cached connection to %s unusable (%s); reconnecting", where, exc)
                attempt.temporary.clear()
                attempt.permanent = dict(checked)
            finally:
                self._release(conn, reusable)
        conn = None
        reusable = False
        try:
            # smtp:// never upgrades on its own (an unverifiable certificate would then stop
            # all mail); smtp+starttls:// requires it.
            conn = await SmtpConnection.open(
                ds.host, ds.port, helo=self._helo, timeout=ds.timeout, starttls=ds.starttls
            )
            reusable = await self._send(conn, entry, usable, data, wire, attempt, where, False)
        except (SmtpError, OSError, TimeoutError) as exc:
            attempt.unsettled_temporary(recipients, _error_text(where, exc))
        finally:
            if conn is not None:
                self._release(conn, reusable)

    # -- connection cache ------------------------------------------------------------------

    def _checkout(self) -> SmtpConnection | None:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if conn.reusable and now - since < self._connection_idle:
                return conn
            self._retire(conn)
        return None

    def _release(self, conn: SmtpConnection, reusable: bool) -> None:
        """After a delivery: keep the connection for the next message (only while run() is
        running, which closes the cache at its end) or close it."""
        if (
            reusable
            and self._connection_idle > 0
            and self._loop is not None
            and conn.reusable
            and len(self._idle) < self._concurrency
        ):
            self._idle.append((conn, time.monotonic()))
        elif reusable:
            self._retire(conn)
        else:
            conn.close()

    def _retire(self, conn: SmtpConnection) -> None:
        """Say QUIT (in the background) and close."""
        if not conn.reusable:
            conn.close()
            return
        task = asyncio.ensure_future(conn.quit(timeout=5.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _reap_idle(self) -> None:
        now = time.monotonic()
        keep: list[tuple[SmtpConnection, float]] = []
        for conn, since in self._idle:
            if conn.reusable and now - since < self._connection_idle:
                keep.append((conn, since))
            else:
                self._retire(conn)
        self._idle = keep

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _since in idle:
            self._retire(conn)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def _send(
        self,
        conn: SmtpConnection,
        entry: SpoolEntry,
        recipients: list[str],
        data: bytes,
        wire: bytes,
        attempt: _Attempt,
        where: str,
        reused: bool,
    ) -> bool:
        """One transaction; True if the connection is clean for the next one (the message
        went through). On a ``reused`` connection, a 421 before the data (the server closing
        an idle connection) raises _StaleConnectionError instead of settling anything.

        With PIPELINING (RFC 2920 3.1) MAIL, every RCPT and DATA go out in one write and the
        replies are read in order: two round trips per message instead of 3 + recipients."""
        utf8 = not entry.mail_from.isascii() or not all(r.isascii() for r in recipients)
        if utf8 and not conn.supports("smtputf8"):
            detail = f"{where}: non-ASCII address but SMTPUTF8 is not offered (RFC 6531 3.2)"
            for rcpt in recipients:
                attempt.permanent[rcpt] = detail
            await conn.quit()
            return False
        encoding = "utf-8" if utf8 else "ascii"
        mail = b"MAIL FROM:<" + entry.mail_from.encode(encoding) + b">"
        if conn.supports("size"):
            mail += b" SIZE=%d" % wire_size(data)  # RFC 1870
        if conn.supports("8bitmime") and not data.isascii():
            mail += b" BODY=8BITMIME"  # RFC 6152
        if utf8:
            mail += b" SMTPUTF8"
        rcpts = [b"RCPT TO:<" + rcpt.encode(encoding) + b">" for rcpt in recipients]
        pipelined = conn.pipelining
        if pipelined:
            conn.write([mail, *rcpts, b"DATA"])
        else:
            conn.write([mail])
        reply = await conn.reply()
        if reused and reply.code == 421:
            raise _StaleConnectionError(_reply_text(where, reply.code, reply.message))
        if not _is_success(reply.code):
            _settle_all(
                attempt, recipients, reply.code, _reply_text(where, reply.code, reply.message)
            )
            await conn.quit()  # reads the RCPT and DATA replies still owed first
            return False
        accepted: list[str] = []
        for rcpt, command in zip(recipients, rcpts, strict=True):
            if not pipelined:
                conn.write([command])
            reply = await conn.reply()
            if reused and reply.code == 421:
                raise _StaleConnectionError(_reply_text(where, reply.code, reply.message))
            if _is_success(reply.code):
                accepted.append(rcpt)
            else:
                _settle_all(
                    attempt, [rcpt], reply.code, _reply_text(where, reply.code, reply.message)
                )
        if not accepted and not pipelined:
            await conn.quit()
            return False
        if not pipelined:
            conn.write([b"DATA"])
        reply = await conn.reply()
        if reply.code != 354:
            if accepted:
                _settle_all(
                    attempt, accepted, reply.code, _reply_text(where, reply.code, reply.message)
                )
            await conn.quit()
            return False
        if not accepted:
            # RFC 2920 3.1: every RCPT was refused yet DATA was accepted: end the transaction
            # with an empty message (a lone "."), then leave.
            await conn.send_message(b".\r\n")
            await conn.quit()
            return False
        attempt.data_started = True
        await conn.send_message(wire)
        reply = await conn.reply()
        if not _is_success(reply.code):
            _settle_all(
                attempt, accepted, reply.code, _reply_text(where, reply.code, reply.message)
            )
            await conn.quit()
            return False
        attempt.delivered.extend(accepted)
        attempt.delivered_reply = _reply_text(where, reply.code, reply.message)
        # The transaction is complete and the server's state is reset (RFC 5321 4.1.1.4): the
        # connection can carry the next MAIL as it is. Not kept: QUIT now (whatever it does,
        # the message is delivered).
        if self._connection_idle <= 0 or self._loop is None:
            await conn.quit()
            return False
        return True

    # -- settling in the spool (runs in a worker thread) -----------------------------------

    def _settle(
        self, entry: SpoolEntry, attempt: _Attempt, now: datetime, *, interrupted: bool = False
    ) -> list[tuple[SpoolEntry, str, str]]:
        results: list[tuple[SpoolEntry, str, str]] = []
        delivered = tuple(r for r in entry.rcpt_to if r in attempt.delivered)
        temporary = {r: attempt.temporary[r] for r in entry.rcpt_to if r in attempt.temporary}
        permanent = {r: attempt.permanent[r] for r in entry.rcpt_to if r in attempt.permanent}
        if not entry.rcpt_to:
            permanent = dict(attempt.permanent)
        try:
            if delivered:
                results.append(
                    (replace(entry, rcpt_to=delivered), DELIVERED, attempt.delivered_reply)
                )
            if not temporary and not permanent:
                self._spool.done(entry)
                return results
            start = _retry_clock_start(entry)
            deadline = start + timedelta(seconds=self._retry.max_age)
            if temporary and now >= deadline:
                age = _human_age((now - start).total_seconds())
                for rcpt, detail in temporary.items():
                    permanent[rcpt] = f"gave up after {age} of temporary failures: {detail}"
                temporary = {}
            perm_error = _summarise(permanent)
            perm_rcpts = tuple(r for r in permanent if r)
            if temporary:
                temp_error = _summarise(temporary)
                delay = timedelta(seconds=self._retry.delay(entry.attempts + 1))
                next_attempt = now if interrupted else min(now + delay, deadline)
                if permanent:
                    piece = self._spool.split(entry, perm_rcpts)
                    self._spool.fail(piece, perm_error)
                    results.append((_failed_view(piece, perm_error), FAILED, perm_error))
                deferred = self._spool.defer(
                    entry, temp_error, next_attempt, rcpt_to=tuple(temporary)
                )
                results.append((deferred, DEFERRED, temp_error))
            else:
                self._spool.fail(entry, perm_error, rcpt_to=perm_rcpts or entry.rcpt_to)
                failed = replace(entry, rcpt_to=perm_rcpts or entry.rcpt_to)
                results.append((_failed_view(failed, perm_error), FAILED, perm_error))
        except Exception as exc:
            # Whatever is still in active/ goes back to new/ at the next recover(): never lost.
            log.error("relay: cannot record the outcome for %s in the spool: %s", entry.id, exc)
            results.append((entry, DEFERRED, _clip(f"spool error: {exc}")))
        return results


# -- small helpers ---------------------------------------------------------------------------


def _is_success(code: int) -> bool:
    return 200 <= code < 300


def _settle_all(attempt: _Attempt, recipients: list[str], code: int, detail: str) -> None:
    # Only 5yz is permanent; 4yz and anything that is not a valid SMTP code are temporary.
    target = attempt.permanent if 500 <= code < 600 else attempt.temporary
    for rcpt in recipients:
        target[rcpt] = detail


def _error_text(where: str, exc: BaseException) -> str:
    if isinstance(exc, SmtpReplyError):
        return _reply_text(where, exc.code, exc.message)
    if isinstance(exc, TimeoutError) and not str(exc):
        return _clip(f"{where}: timed out")
    return _clip(f"{where}: {exc}")


def _reply_text(where: str, code: int, message: str) -> str:
    return _clip(f"{where} said: {code} {message}")


def _clip(text: str) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 3] + "..."


def _summarise(details: Mapping[str, str]) -> str:
    texts = set(details.values())
    if len(texts) == 1:
        return next(iter(texts))
    return "; ".join(f"<{rcpt}>: {text}" for rcpt, text in details.items())


def _retry_clock_start(entry: SpoolEntry) -> datetime:
    requeued = entry.meta.get(META_REQUEUED_AT)
    if requeued:
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(requeued)
            if value.tzinfo is not None:
                return value
    return entry.received_at


def _failed_view(entry: SpoolEntry, error: str) -> SpoolEntry:
    return replace(entry, attempts=entry.attempts + 1, last_error=error)


def _human_age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"
