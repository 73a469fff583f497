"""Run QR decoding in a child process with a memory cap and a hard deadline.

PDFium expands nested form XObjects while it loads a page, before any check of ours can run:
a 1.5 KB PDF can take a minute and 15 GB. The in-process limits in ``attachments.qr`` stop
most hostile files; this sandbox stops the rest. The child has ``RLIMIT_AS`` set (allocation
failures end the decode, not the scan), and the parent kills it when the deadline passes.
A killed or crashed child is replaced on the next request.

SECURITY: the child only ever receives attachment bytes and returns decoded text. It is started
with the ``spawn`` method, so it shares no threads, locks or file descriptors with the parent
(the gateway runs an event loop and threads; forking those is unsafe).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from dsguard.attachments.qr import QrScan, scan_image, scan_pdf

# Time allowed beyond the decode deadline for the answer to arrive before the child is killed.
_GRACE_SECONDS = 0.5


def _child(conn: Connection, memory_bytes: int) -> None:
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        kind, data, kwargs = request
        try:
            if kind == "pdf":
                result = scan_pdf(data, **kwargs)
            else:
                result = scan_image(data, **kwargs)
        except MemoryError:
            result = _failed("decoder ran out of memory (max_decode_memory_mb)")
        conn.send(result)


def _failed(error: str | None, *, timed_out: bool = False) -> QrScan:
    return QrScan(texts=(), pages_scanned=0, page_limit_hit=False, timed_out=timed_out, error=error)


class InProcessDecoder:
    """Decoding in this process: only the limits inside ``attachments.qr`` apply."""

    def scan_pdf(
        self, data: bytes, *, max_pages: int, dpi: int, deadline: float, max_pixels: int
    ) -> QrScan:
        return scan_pdf(
            data, max_pages=max_pages, dpi=dpi, deadline=deadline, max_pixels=max_pixels
        )

    def scan_image(self, data: bytes, *, deadline: float, max_pixels: int) -> QrScan:
        return scan_image(data, deadline=deadline, max_pixels=max_pixels)

    def close(self) -> None:
        pass


class DecodeSandbox:
    """One long-lived decoder child per process, replaced when it hangs or dies."""

    def __init__(self, memory_mb: int) -> None:
        self._memory = memory_mb * 1024 * 1024
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None

    def _ensure(self) -> Connection:
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            self._stop()
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_child, args=(child, self._memory), daemon=True)
            proc.start()
            child.close()
            self._proc, self._conn = proc, parent
        return self._conn

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None

    def close(self) -> None:
        self._stop()

    def _run(self, kind: str, data: bytes, deadline: float, kwargs: dict[str, Any]) -> QrScan:
        if time.monotonic() >= deadline:
            return _failed(None, timed_out=True)
        conn = self._ensure()
        try:
            conn.send((kind, data, {"deadline": deadline, **kwargs}))
            wait = max(deadline - time.monotonic(), 0.0) + _GRACE_SECONDS
            if conn.poll(wait):
                result = conn.recv()
                if isinstance(result, QrScan):
                    return result
                self._stop()
                return _failed("decoder returned an unexpected answer")
        except (EOFError, OSError, BrokenPipeError):
            self._stop()
            return _failed("decoder crashed on this file (memory limit or corrupt data)")
        self._stop()
        return _failed(
            "decoding exceeded max_decode_seconds; the decoder was stopped", timed_out=True
        )

    def scan_pdf(
        self, data: bytes, *, max_pages: int, dpi: int, deadline: float, max_pixels: int
    ) -> QrScan:
        return self._run(
            "pdf", data, deadline, {"max_pages": max_pages, "dpi": dpi, "max_pixels": max_pixels}
        )

    def scan_image(self, data: bytes, *, deadline: float, max_pixels: int) -> QrScan:
        return self._run("image", data, deadline, {"max_pixels": max_pixels})
