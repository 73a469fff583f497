"""Accepted domains and organisational domains.

``*.contoso.com`` in the accepted domains also matches subdomains, like Exchange Online's
accepted domain with ``MatchSubDomains`` (Microsoft's RejectDirectSend FAQ: subdomains are
covered only then). Organisational domains for DMARC relaxed alignment (RFC 7489 section 3.2)
come from the offline Public Suffix List bundled with ``publicsuffixlist``: no network.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

_psl: PublicSuffixList | None = None


def _list() -> PublicSuffixList:
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()
    return _psl


@lru_cache(maxsize=65536)
def org_domain(domain: str) -> str:
    """The registrable domain (contoso.co.uk for mail.contoso.co.uk); the input if unknown."""
    d = domain.lower().rstrip(".")
    if not d:
        return d
    found = _list().privatesuffix(d)
    return str(found) if found else d


def aligned(a: str, b: str) -> bool:
    """DMARC relaxed alignment: same organisational domain."""
    if not a or not b:
        return False
    return org_domain(a) == org_domain(b)


class AcceptedDomains:
    """The organisation's domains; ``*.d`` entries also match subdomains of ``d``."""

    def __init__(self, entries: Iterable[str], *, inferred: bool = False) -> None:
        self.exact: frozenset[str] = frozenset()
        self.wildcard: tuple[str, ...] = ()
        exact: set[str] = set()
        wild: list[str] = []
        for entry in entries:
            e = entry.lower().rstrip(".")
            if e.startswith("*."):
                wild.append(e[2:])
                exact.add(e[2:])
            elif e:
                exact.add(e)
        self.exact = frozenset(exact)
        self.wildcard = tuple(wild)
        self.inferred = inferred

    def __bool__(self) -> bool:
        return bool(self.exact)

    def matches(self, domain: str | None) -> bool:
        if not domain:
            return False
        d = domain.lower().rstrip(".")
        if d in self.exact:
            return True
        return any(d.endswith("." + w) for w in self.wildcard)

    def entries(self) -> tuple[str, ...]:
        return tuple(sorted(self.exact - set(self.wildcard))) + tuple(
            f"*.{w}" for w in sorted(self.wildcard)
        )

    @classmethod
    def infer_from_recipients(cls, recipients: Iterable[str]) -> AcceptedDomains:
        """Organisation = the recipients' organisational domains and their subdomains."""
        orgs = set()
        for rcpt in recipients:
            at = rcpt.rfind("@")
            if at != -1:
                domain = rcpt[at + 1 :].strip().strip(">").lower().rstrip(".")
                if domain and "." in domain:
                    orgs.add(org_domain(domain))
        return cls([f"*.{o}" for o in orgs], inferred=True)
