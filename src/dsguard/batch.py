"""Scan a stream of messages on N processes, in input order, in bounded memory.

``concurrent.futures``' ``map`` (and ``multiprocessing.Pool.imap``) read their whole input
ahead of the workers, which for a multi-GB mbox means holding it in memory. Here the reader
submits chunks only while fewer than ``2 * jobs`` are in flight, so memory stays flat.

The main process reads the input and renders the report while the workers scan, so what it
spends per message limits the speed-up. Results cross back as pickles; the value types are
frozen slotted dataclasses, whose default pickling looks up ``dataclasses.fields`` for every
object on load and dump (about 40 us per result, as much as the whole rest of the main
process's work). ``_register_compact_pickling`` makes multiprocessing pickle them as
``(class, field values)`` instead, rebuilt by the constructor: equal objects at a third of the
cost.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from enum import Enum
from multiprocessing.reduction import ForkingPickler
from operator import attrgetter
from typing import Any

from dsguard import model
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


def _dataclass_reducer(cls: type) -> Callable[[Any], tuple[Any, ...]] | None:
    """``obj -> (cls, positional field values)``; None when the constructor could not take
    them back that way (a field outside ``__init__`` or keyword-only)."""
    fields = dataclasses.fields(cls)
    if not fields or any(not f.init or f.kw_only for f in fields):
        return None
    values = attrgetter(*(f.name for f in fields))
    if len(fields) == 1:
        return lambda obj: (cls, (values(obj),))
    return lambda obj: (cls, values(obj))


def _enum_reducer(cls: type[Enum]) -> Callable[[Any], tuple[Any, ...]]:
    # By name: getattr(Level, "CLEAN") instead of Level("clean")'s value lookup.
    return lambda member: (getattr, (cls, member.name))


def _register_compact_pickling() -> None:
    """Compact pickling (see the module docstring) for what crosses between the processes.
    Registered with multiprocessing's pickler only; other pickling is unchanged."""
    for value in vars(model).values():
        if not isinstance(value, type) or value.__module__ != model.__name__:
            continue
        if issubclass(value, Enum):
            ForkingPickler.register(value, _enum_reducer(value))
        elif dataclasses.is_dataclass(value):
            reducer = _dataclass_reducer(value)
            if reducer is not None:
                ForkingPickler.register(value, reducer)
    for cls in (RawMessage, LoadError):
        reducer = _dataclass_reducer(cls)
        if reducer is not None:
            ForkingPickler.register(cls, reducer)


_register_compact_pickling()


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
