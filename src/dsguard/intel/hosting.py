"""Host-suffix sets: free hosting / app platforms, and the domain half of IOC lists.

A host matches a suffix when it equals it or ends with it at a label boundary:
``x.web.app`` matches ``web.app``; ``notweb.app`` does not. When several suffixes match, the
longest (most specific) one is returned, so ``web.core.windows.net`` wins over
``core.windows.net``.

A lookup costs one set probe per label of the host, and only labels that could match are tried
(suffixes longer than the longest listed one are skipped), so a hostile host name of thousands
of labels costs no more than the list's longest entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from dsguard.attachments.urls import canonical_host

_CACHE_SIZE = 65536


class SuffixSet:
    """Host suffixes, normalised like hosts (lower-case, punycode, no leading ``*.``/``.`` or
    trailing dot). Entries that are not valid host names are ignored."""

    def __init__(self, suffixes: Iterable[str]) -> None:
        self._suffixes: set[str] = set()
        for entry in suffixes:
            suffix = normalise_suffix(entry)
            if suffix:
                self._suffixes.add(suffix)
        self._longest = max((len(suffix) for suffix in self._suffixes), default=0)
        # Hosts repeat across a mailbox (tracking domains, CDNs): remember recent answers.
        self._cache: dict[str, str | None] = {}

    def match(self, host: str) -> str | None:
        """The listed suffix that ``host`` equals or ends with at a label boundary, or None."""
        if not self._suffixes:
            return None
        if host in self._cache:
            return self._cache[host]
        found = self._match(host)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = found
        return found

    def _match(self, host: str) -> str | None:
        canonical = canonical_host(host)
        if canonical is None:
            return None
        best: str | None = None
        # Walk label boundaries from the right: "c", "b.c", "a.b.c" ... keeping the longest hit.
        position = canonical.rfind(".")
        while True:
            candidate = canonical[position + 1:]
            if len(candidate) > self._longest:
                break
            if candidate in self._suffixes:
                best = candidate
            if position < 0:
                break
            position = canonical.rfind(".", 0, position)
        return best

    def __len__(self) -> int:
        return len(self._suffixes)

    def __contains__(self, suffix: object) -> bool:
        return isinstance(suffix, str) and normalise_suffix(suffix) in self._suffixes


def normalise_suffix(entry: str) -> str | None:
    """``*.Example.COM.`` -> ``example.com``; None for an empty or invalid entry."""
    text = entry.strip()
    if text.startswith("*."):
        text = text[2:]
    text = text.lstrip(".")
    if not text:
        return None
    return canonical_host(text)
