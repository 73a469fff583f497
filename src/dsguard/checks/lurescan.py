"""Find the lure patterns' matches in a text quickly, with exactly ``finditer``'s results.

The lure pattern (``checks.content.compile_lures``) is one alternation of every configured
phrase, each written ``\\bword...``. Python's ``re`` tries every alternative at every character
of the text (about 70 ns per character for the shipped list, the most expensive step of a scan).
When every phrase starts with ``\\b`` and a letter or digit, a match can only begin right after
a non-word character (or at the start of the text). So a second pattern, the *finder*, looks
for a character that is not an ASCII letter, digit or underscore followed by any phrase with
its ``\\b`` dropped, the phrases grouped by their first letter: ``re`` then skips word
characters with a character-class scan and rejects most positions on one character comparison
(about 7 times faster). Each position the finder reports is confirmed with the original
pattern (``lures.match``), so span and finding id are the original pattern's own, and a
finder that reported too much (after "é", say) only costs time. It never reports too little:
the original matches at ``q > pos`` only where ``\\b`` holds before a letter or digit, i.e.
``text[q - 1]`` is a non-word character, and every non-word character is one the finder looks
for (``tests/unit/perf/test_perf_lures.py`` compares both on hostile input).

Phrases outside that shape (no leading ``\\b``, a top-level ``|``, backreferences, named
groups, flags or conditionals) make the whole list use plain ``finditer``.

SECURITY: both patterns are built from the operator's config, never from mail; the text is
attacker-controlled but only ever searched, with patterns as linear as the configured ones.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator
from typing import NamedTuple

_QUANTIFIERS = "?*+{"
_ALLOWED_GROUPS = ("(?:", "(?=", "(?!", "(?<=", "(?<!")


class _Finder(NamedTuple):
    pattern: re.Pattern[str]
    first_chars: frozenset[str]  # the characters a match can start with


# lure pattern -> its finder; weak, so engines built in tests do not accumulate.
_FINDERS: weakref.WeakKeyDictionary[re.Pattern[str], _Finder] = weakref.WeakKeyDictionary()


def _plain_structure(pattern: str) -> bool:
    """True when ``pattern`` has balanced groups, no top-level ``|``, no backreference,
    named or conditional group and no inline flags: it then means the same on its own, inside
    a longer alternation, and with its first literal character split off."""
    depth = 0
    in_class = False
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if not in_class and pattern[i + 1 : i + 2].isdigit():
                return False  # backreference: group numbers differ in the finder
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            i += 1
            continue
        if ch == "[":
            in_class = True
            i += 1
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":
                i += 1  # a "]" first in a class is a literal
            continue
        if ch == "(":
            if pattern.startswith("(?", i) and not pattern.startswith(_ALLOWED_GROUPS, i):
                return False
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
        elif ch == "|" and depth == 0:
            return False
        i += 1
    return depth == 0 and not in_class


def _split_word_start(pattern: str) -> tuple[str, str] | None:
    """``\\bvoice ?mail\\b`` -> ("v", "oice ?mail\\b"); None if it does not have that shape."""
    if len(pattern) < 3 or not pattern.startswith("\\b"):
        return None
    first = pattern[2]
    if not (first.isascii() and first.isalnum()):
        return None
    if pattern[3:4] and pattern[3] in _QUANTIFIERS:
        return None  # "\\bw?x": the first character is optional
    if not _plain_structure(pattern):
        return None
    return first, pattern[3:]


def register_finder(lures: re.Pattern[str], phrases: Iterable[str]) -> None:
    """Build and remember the finder for ``lures``, the alternation of ``phrases`` (as
    compiled, i.e. lower-cased). Does nothing when a phrase does not have the needed shape."""
    by_first: dict[str, list[str]] = {}
    for phrase in phrases:
        split = _split_word_start(phrase)
        if split is None:
            return
        by_first.setdefault(split[0], []).append(split[1])
    if not by_first:
        return
    branches = "|".join(
        re.escape(first) + "(?:" + "|".join(rests) + ")" for first, rests in by_first.items()
    )
    try:
        # "[^a-z0-9_]" rather than "\W": a superset (every non-word character is in it),
        # and a byte-table test instead of a Unicode-database lookup per character. A
        # candidate after a non-ASCII letter is rejected by the confirming match.
        finder = re.compile(r"[^a-z0-9_](?:" + branches + ")")
    except re.error:
        return
    _FINDERS[lures] = _Finder(finder, frozenset(by_first))


def iter_matches(lures: re.Pattern[str], text: str) -> Iterator[tuple[int, int, str | None]]:
    """(start, end, lastgroup) of each match ``lures.finditer(text)`` gives, in order."""
    registered = _FINDERS.get(lures)
    if registered is None:
        for m in lures.finditer(text):
            yield m.start(), m.end(), m.lastgroup
        return
    match = lures.match
    search = registered.pattern.search
    first_chars = registered.first_chars
    pos = 0
    while True:
        # Every phrase starts with a literal character, so no match is empty and finditer's
        # next search starts at the end of the previous match -- where a match needs one of
        # the phrases' first characters (usually a space follows a match: nothing to try).
        found = match(text, pos) if text[pos : pos + 1] in first_chars else None
        if found is None:
            candidate = search(text, pos)
            while candidate is not None:
                start = candidate.start() + 1
                found = match(text, start)  # confirms it and names the finding
                if found is not None:
                    break
                candidate = search(text, start)
            if found is None:
                return
        yield found.start(), found.end(), found.lastgroup
        pos = found.end()
