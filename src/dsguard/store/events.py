"""Write front-door events without making an SMTP reply wait for the database.

Each front door (gateway, policy server, milter) hands its decisions to one writer thread
through a bounded queue. Only that thread writes, so SQLite's single write lock is never
contended by the reply path (with several writers, SQLite's lock back-off put ~100 ms on the
p99 of every reply). Events are an audit trail, not mail: when the database cannot keep up the
queue bounds memory and the overflow is counted and logged, and events still queued at a crash
are lost -- mail is not (it is fsync'd in the spool before the 250).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from dsguard.store import repository as repo
from dsguard.store.db import Store

log = logging.getLogger("dsguard.events")


class EventWriter:
    def __init__(self, store: Store | None, maxsize: int = 10000) -> None:
        self.store = store
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="dsguard-events", daemon=True)
        if store is not None:
            self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        """Queue one ``repository.record_event`` call (its keyword arguments); never blocks."""
        if self.store is None:
            return
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("event queue full: %d events dropped so far", self.dropped)

    def _run(self) -> None:
        while True:
            event = self.queue.get()
            try:
                if event is None or self.store is None:
                    return
                repo.record_event(self.store, **event)
            except Exception as exc:  # a bad event must not stop the writer
                log.error("could not record event: %s", exc)
            finally:
                self.queue.task_done()

    def flush(self) -> None:
        """Wait until every queued event is written (tests, shutdown)."""
        if self.store is not None and self._thread.is_alive():
            self.queue.join()

    def close(self) -> None:
        if self.store is not None and self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout=10)
