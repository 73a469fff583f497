"""Scan a stream of messages on N processes, in input order, in bounded memory.

``concurrent.futures``' ``map`` (and ``multiprocessing.Pool.imap``) read their whole input
ahead of the workers, which for a multi-GB mbox means holding it in memory. Here the reader
submits chunks only while fewer than ``2 * jobs`` are in flight, so memory stays flat.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from dsguard.config import Config
from dsguard.mail.source import LoadError, RawMessage
from dsguard.model import ScanResult
from dsguard.scan import Scanner

CHUNK_MESSAGES = 32
CHUNK_BYTES = 4 * 1024 * 1024

_worker_scanner: Scanner | None = None


def _init_worker(config: Config) -> None:
    global _worker_scanner
    _worker_scanner = Scanner(config)


def _scan_chunk(chunk: list[RawMessage | LoadError]) -> list[ScanResult]:
    assert _worker_scanner is not None
    return [_worker_scanner.scan_item(item) for item in chunk]


def _chunks(items: Iterable[RawMessage | LoadError]) -> Iterator[list[RawMessage | LoadError]]:
    chunk: list[RawMessage | LoadError] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item.data) if isinstance(item, RawMessage) else 0
        if len(chunk) >= CHUNK_MESSAGES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def default_jobs() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def scan_stream(
    items: Iterable[RawMessage | LoadError], config: Config, jobs: int = 1
) -> Iterator[ScanResult]:
    """Yield one ScanResult per item, in input order."""
    if jobs <= 1:
        scanner = Scanner(config)
        for item in items:
            yield scanner.scan_item(item)
        return
    window: deque[Future[list[ScanResult]]] = deque()
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=(config,)
    ) as pool:
        for chunk in _chunks(items):
            window.append(pool.submit(_scan_chunk, chunk))
            while len(window) >= 2 * jobs:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()
