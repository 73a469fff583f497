"""mail.memo: answers are always the function's; storing stops when it does not pay."""

from __future__ import annotations

from collections.abc import Callable

from dsguard.mail.memo import adaptive_memo


def _counting() -> tuple[list[str], Callable[[str], str]]:
    seen: list[str] = []

    def func(key: str) -> str:
        seen.append(key)
        return key.upper()

    return seen, func


def test_repeated_keys_are_remembered() -> None:
    seen, func = _counting()
    memo = adaptive_memo(func, 16, window=8)
    for _ in range(10):
        for key in ("a", "b", "c"):
            assert memo(key) == key.upper()
    assert seen == ["a", "b", "c"]
    info = memo.cache_info()
    assert (info.hits, info.misses, info.currsize, info.storing) == (27, 3, 3, True)


def test_full_memo_starts_over() -> None:
    seen, func = _counting()
    memo = adaptive_memo(func, 4, window=1000)
    for key in "abcde":
        memo(key)
    assert memo.cache_info().currsize == 1  # emptied when full, then "e" stored
    assert memo("e") == "E"
    assert seen == list("abcde")


def test_stops_storing_when_keys_do_not_recur_and_probes_again() -> None:
    seen, func = _counting()
    memo = adaptive_memo(func, 64, window=10, min_hit_rate=0.25, probe_every=3)
    for n in range(10):
        memo(f"new{n}")
    info = memo.cache_info()
    assert not info.storing and info.currsize == 0
    # Not storing: a repeated key is computed again.
    memo("x")
    memo("x")
    assert seen.count("x") == 2
    for n in range(28):  # completes the 3 windows without storing
        memo(f"more{n}")
    assert memo.cache_info().storing  # probing
    for _ in range(10):
        assert memo("y") == "Y"
    assert seen.count("y") == 1
    assert memo.cache_info().storing  # the probe window hit: it stays on


def test_cache_clear_starts_cold_and_storing() -> None:
    seen, func = _counting()
    memo = adaptive_memo(func, 64, window=4)
    for n in range(4):
        memo(str(n))
    assert not memo.cache_info().storing
    memo.cache_clear()
    info = memo.cache_info()
    assert (info.hits, info.misses, info.currsize, info.storing) == (0, 0, 0, True)
    memo("k")
    memo("k")
    assert seen.count("k") == 1


def test_none_is_a_remembered_answer() -> None:
    calls: list[str] = []

    def func(key: str) -> None:
        calls.append(key)

    memo = adaptive_memo(func, 8)
    assert memo("a") is None
    assert memo("a") is None
    assert calls == ["a"]
