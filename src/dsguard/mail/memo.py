"""A bounded memo for pure parsers of header values, that stops storing when it does not pay.

Parsed header values recur in a mailbox where the same servers and senders write the same
stamps (a tenant's Exchange hops, a newsletter's From), and there a memo saves most of the
parsing. On mail from ever new senders (new client IPs, queue ids, addresses, dates) nearly
every lookup misses, and storing the answers costs more than it saves: every stored entry is
a long-lived object, so the cyclic garbage collector's full collections, which walk every such
object, run more often and take longer (bench/scan.py, header variety "unique":
``functools.lru_cache`` on the Received, address and X-Forefront parsers made the scan about
28 us a message slower, nearly all of it in the collector). So a memo counts its hits over a
window of calls; when fewer than ``min_hit_rate`` of them hit, it drops what it holds and
stops storing (the function is then called directly), and every ``probe_every`` windows it
stores again for one window to see whether the mail has changed.

Entries live in a plain dict that is emptied when full: a hit is one dict lookup, and an entry
is no extra object for the collector (an ``lru_cache`` entry is a linked-list node it tracks).
The memo is a closure rather than an object with ``__call__``: a hit costs about 30 ns more
than an ``lru_cache`` hit instead of about 80.

Thread safety: dict operations are atomic; a counter may lose an increment under threads,
which only nudges a decision. The function must be pure and its answers immutable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar, cast

_K_contra = TypeVar("_K_contra", contravariant=True)
_V_co = TypeVar("_V_co", covariant=True)
_K = TypeVar("_K")
_V = TypeVar("_V")
_MISSING: Any = object()


class MemoInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int
    storing: bool


class Memo(Protocol[_K_contra, _V_co]):
    """What :func:`adaptive_memo` returns: the function, plus ``lru_cache``'s
    ``cache_clear`` / ``cache_info`` (the benchmark and tests start cold with them)."""

    def __call__(self, key: _K_contra, /) -> _V_co: ...

    def cache_clear(self) -> None: ...

    def cache_info(self) -> MemoInfo: ...


def adaptive_memo(
    func: Callable[[_K], _V],
    maxsize: int,
    *,
    window: int = 1024,
    min_hit_rate: float = 0.25,
    probe_every: int = 16,
) -> Memo[_K, _V]:
    """``func`` remembered while remembering pays (see the module docstring)."""
    data: dict[_K, _V] = {}
    get = data.get
    calls = hits = idle = total_hits = total_misses = 0
    storing = True

    def memo(key: _K) -> _V:
        nonlocal calls, hits
        calls += 1
        if storing:
            found = get(key, _MISSING)
            if found is not _MISSING:
                hits += 1
                return cast("_V", found)  # no window check on a hit: the next miss does it
            value = func(key)
            if len(data) >= maxsize:
                data.clear()
            data[key] = value
        else:
            value = func(key)
        if calls >= window:
            end_window()
        return value

    def end_window() -> None:
        nonlocal calls, hits, idle, storing, total_hits, total_misses
        total_hits += hits
        total_misses += calls - hits
        if storing:
            if hits < calls * min_hit_rate:
                storing = False
                idle = 0
                data.clear()
        else:
            idle += 1
            if idle >= probe_every:
                storing = True  # probe: store for one window and measure again
        calls = hits = 0

    def cache_clear() -> None:
        nonlocal calls, hits, idle, storing, total_hits, total_misses
        data.clear()
        storing = True
        calls = hits = idle = total_hits = total_misses = 0

    def cache_info() -> MemoInfo:
        return MemoInfo(
            total_hits + hits, total_misses + calls - hits, maxsize, len(data), storing
        )

    wrapper: Any = memo
    wrapper.cache_clear = cache_clear
    wrapper.cache_info = cache_info
    wrapper.__wrapped__ = func
    wrapper.__doc__ = func.__doc__
    wrapper.__name__ = getattr(func, "__name__", "memo")
    return cast("Memo[_K, _V]", wrapper)
