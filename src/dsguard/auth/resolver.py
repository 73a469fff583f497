"""The one DNS client of the authentication layer: dnspython pinned to configured nameservers.

SPF, DKIM and DMARC all look up through a :class:`Resolver` handed in by the caller (the
gateway builds one from its configuration, tests build one aimed at their loopback ``nsd``), so
no check ever falls back to ``/etc/resolv.conf`` behind the caller's back. Only
:meth:`Resolver.system` reads the system configuration, and only when production code asks.

Errors are reduced to two kinds, matching the temperror/permerror split of RFC 7208 section
2.6, RFC 6376 section 6.1.2 and RFC 7489 section 6.6.3:

- NXDOMAIN and NODATA are *answers* (an empty list), not errors;
- :class:`DnsTempError`: timeout, SERVFAIL/REFUSED, unreachable server — retrying may help;
- :class:`DnsPermError`: the question itself cannot be asked (a label over 63 octets, a name
  over 255 octets, an unknown record type).

SECURITY: names come from hostile mail (MAIL FROM, DKIM ``d=``/``s=``, header From). They are
parsed by dnspython, which rejects malformed names before anything is sent; each query is bounded
by ``timeout`` per attempt and ``lifetime`` overall, and answers are capped at
``MAX_RECORDS`` records so a hostile zone cannot make a caller iterate over megabytes of data.

Caching: answers (NXDOMAIN and NODATA too) are kept in a :class:`DnsCache` for their TTL, so
the SPF, DKIM and DMARC lookups of the next message from the same sender cost no round trip.
Positive answers live for the smallest TTL of their answer section, at most ``max_ttl``;
negative ones for the SOA minimum (RFC 2308: min(SOA TTL, SOA MINIMUM)), at most
``negative_ttl``. Errors (timeouts, SERVFAIL) are never cached. The cache is bounded
(``cache_size`` entries, least recently used out first) so hostile senders naming millions of
domains cannot grow it, and a lock makes it safe for the worker threads that share one
resolver. A hostile zone can only choose how long its own answers are kept, within the caps.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.ttl

from dsguard.errors import DsguardError

MAX_RECORDS = 64  # per answer; SPF/DKIM/DMARC need far fewer (RFC 7208 4.6.4: 10 MX names)
_EDNS_PAYLOAD = 1232  # the DNS Flag Day 2020 size: large TXT (DKIM keys) without fragmentation
CACHE_SIZE = 4096  # answers kept (a few hundred bytes each)
MAX_TTL = 3600.0  # seconds a positive answer is kept at most (a revoked DKIM key counts too)
NEGATIVE_TTL = 300.0  # seconds an NXDOMAIN/NODATA is kept at most
QUESTIONS_KEPT = 4096  # parsed (name, type) questions remembered, see Resolver._question

#: The value of one record: an address or name (A, AAAA, PTR, CNAME, NS), the character
#: strings of a TXT/SPF record, an MX ``(preference, exchange)``, or the presentation text of
#: any other type.
RecordValue = str | tuple[bytes, ...] | tuple[int, str]


class DnsTempError(DsguardError):
    """A lookup failed in a way that may succeed later (timeout, SERVFAIL, unreachable)."""


class DnsPermError(DsguardError):
    """The question cannot be asked at all (malformed name, unknown record type)."""


class CacheProbe:
    """What :meth:`Resolver.cache_only` saw: ``missed`` once a lookup was not in the cache."""

    __slots__ = ("missed",)

    def __init__(self) -> None:
        self.missed = False


_cache_only = threading.local()  # .probe: the CacheProbe of this thread's cache_only() block


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One record of an answer section, CNAMEs included, as the SPF/DKIM adapters need them."""

    name: str  # owner name, lower case, without the trailing dot
    rdtype: str  # "A", "TXT", "CNAME", ...
    value: RecordValue


def _parse_nameserver(item: str) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"::1"``, ``"[::1]:53"`` → (address, port)."""
    text = item.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"nameserver {item!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"nameserver {item!r}: expected ':port' after ']'")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text
    address = str(ipaddress.ip_address(host))  # names are refused: no lookup to find the resolver
    if not 0 < port < 65536:
        raise ValueError(f"nameserver {item!r}: port out of range")
    return address, port


def _name(name: str) -> dns.name.Name:
    if not name.strip().strip("."):
        raise DnsPermError("cannot look up an empty name")
    try:
        return dns.name.from_text(name.strip())
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DnsPermError(f"cannot look up {name[:80]!r}: {exc}") from exc


def _rdtype(rdtype: str) -> dns.rdatatype.RdataType:
    try:
        return dns.rdatatype.from_text(rdtype)
    except (dns.exception.DNSException, ValueError) as exc:
        raise DnsPermError(f"unknown record type {rdtype[:20]!r}") from exc


def _plain(name: dns.name.Name) -> str:
    """The name as the octets on the wire, lower case, no final dot and no ``\\DDD``
    escapes: pyspf compares owner names with the names it expanded from macros, which may
    hold spaces or ``%`` (RFC 7208 section 7.3)."""
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label).lower()


def _chain_error(exc: dns.resolver.NoNameservers) -> bool:
    """Did every server answer, only with a CNAME chain that loops or never ends?"""
    errors = exc.kwargs.get("errors") or []
    return bool(errors) and all(
        isinstance(err[3], dns.message.ChainTooLong) for err in errors if len(err) > 3
    )


def _value(rdata: object) -> RecordValue:
    rdtype = getattr(rdata, "rdtype", None)
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(getattr(rdata, "address", ""))
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return tuple(getattr(rdata, "strings", ()))
    if rdtype == dns.rdatatype.MX:
        exchange = getattr(rdata, "exchange", dns.name.root)
        return (int(getattr(rdata, "preference", 0)), _plain(exchange))
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return _plain(getattr(rdata, "target", dns.name.root))
    return str(rdata)


# (name to send, type to send, the name as asked for owners, cache key)
_Question = tuple[dns.name.Name, dns.rdatatype.RdataType, str, tuple[bytes, int]]


@dataclass(frozen=True, slots=True)
class _Cached:
    """One answer as :meth:`Resolver.query` builds it, without the caller's spelling of the
    name (``owner`` is None where the record belongs to the name asked for)."""

    records: tuple[tuple[str | None, str, RecordValue], ...]
    expires: float


class DnsCache:
    """A bounded, thread-safe TTL cache of answers, keyed by (name, type): the resolver uses
    the name's wire labels in lower case (DNS names compare case-insensitively, ASCII only).

    ``clock`` is monotonic seconds (tests pass their own to expire entries without waiting).
    """

    def __init__(
        self,
        size: int = CACHE_SIZE,
        *,
        max_ttl: float = MAX_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError("cache size must be at least 1")
        self.size = size
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[object, int], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[object, int]) -> _Cached | None:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            if entry.expires <= now:
                del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(
        self,
        key: tuple[object, int],
        records: tuple[tuple[str | None, str, RecordValue], ...],
        ttl: float,
    ) -> None:
        """Keep ``records`` for ``ttl`` seconds, capped (``negative_ttl`` for an empty answer,
        ``max_ttl`` otherwise); a TTL of 0 is not kept at all."""
        ttl = min(ttl, self.max_ttl if records else self.negative_ttl)
        if ttl <= 0:
            return
        entry = _Cached(records, self.clock() + ttl)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _negative_ttl(response: dns.message.Message | None) -> float:
    """How long an NXDOMAIN/NODATA may be kept: min(SOA TTL, SOA MINIMUM) from the authority
    section (RFC 2308 section 5); 0 (not kept) without a usable SOA."""
    if not isinstance(response, dns.message.QueryMessage):
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, getattr(rrset[0], "minimum", 0)))
    return 0.0


class Resolver:
    """dnspython-based resolver pinned to the configured nameservers.

    Never reads ``/etc/resolv.conf`` unless built with :meth:`system`. ``timeout`` bounds one
    attempt at one server, ``lifetime`` the whole lookup including retries and TCP fallback.
    ``cache``: a :class:`DnsCache` of its own (the default), one to share, or None for none.
    """

    def __init__(
        self,
        nameservers: Sequence[str],
        *,
        timeout: float = 3.0,
        lifetime: float = 6.0,
        cache: DnsCache | bool | None = True,
    ) -> None:
        if isinstance(nameservers, str):
            raise TypeError("nameservers must be a sequence of strings, not one string")
        if not nameservers:
            raise ValueError("at least one nameserver is required")
        servers = [_parse_nameserver(item) for item in nameservers]
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in servers]
        self._setup(resolver, timeout, lifetime, cache)
        self.nameservers: tuple[str, ...] = tuple(
            f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in servers
        )

    def _setup(
        self,
        resolver: dns.resolver.Resolver,
        timeout: float,
        lifetime: float,
        cache: DnsCache | bool | None,
    ) -> None:
        if timeout <= 0 or lifetime <= 0:
            raise ValueError("timeout and lifetime must be positive")
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        resolver.use_edns(0, 0, _EDNS_PAYLOAD)
        resolver.search = []
        resolver.cache = None  # ours below: it keeps the converted records, and caps TTLs
        self._resolver = resolver
        self._questions: dict[tuple[str, str], _Question] = {}
        # (not "cache or None": an empty DnsCache is falsy)
        self.cache: DnsCache | None = (
            DnsCache() if cache is True else (cache if isinstance(cache, DnsCache) else None)
        )
        self.timeout = timeout
        self.lifetime = lifetime

    @classmethod
    def system(
        cls, *, timeout: float = 3.0, lifetime: float = 6.0, cache: DnsCache | bool | None = True
    ) -> Resolver:
        """The resolvers of ``/etc/resolv.conf``: for production use only, never in tests."""
        self = cls.__new__(cls)
        resolver = dns.resolver.Resolver(configure=True)
        self._setup(resolver, timeout, lifetime, cache)
        self.nameservers = tuple(str(ns) for ns in resolver.nameservers)
        return self

    def __repr__(self) -> str:
        servers = list(self.nameservers)
        return f"Resolver({servers!r}, timeout={self.timeout}, lifetime={self.lifetime})"

    # -- generic -------------------------------------------------------------------------

    def query(self, name: str, rdtype: str, *, lifetime: float | None = None) -> list[DnsRecord]:
        """Every record of the answer section (CNAMEs first, as the server sent them).

        ``[]`` for NXDOMAIN and NODATA. ``lifetime`` can only shorten the configured one
        (pyspf passes what is left of its overall SPF time budget).
        """
        qname, qtype, asked, key = self._question(name, rdtype)
        cache = self.cache
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                return [
                    DnsRecord(asked if owner is None else owner, type_text, value)
                    for owner, type_text, value in hit.records
                ]
        probe: CacheProbe | None = getattr(_cache_only, "probe", None)
        if probe is not None:
            probe.missed = True
            raise DnsTempError(f"{_plain(qname)} {rdtype}: not in the cache (cache-only lookup)")
        budget = self.lifetime if lifetime is None else max(0.05, min(lifetime, self.lifetime))
        try:
            answer = self._resolver.resolve(
                qname, qtype, raise_on_no_answer=False, lifetime=budget, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            if cache is not None:
                responses = exc.kwargs.get("responses") or {}
                cache.put(key, (), _negative_ttl(responses.get(qname)))
            return []
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.YXDOMAIN as exc:
            raise DnsPermError(f"{name[:80]}: name too long after DNAME substitution") from exc
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"{_plain(qname)} {rdtype}: DNS timeout") from exc
        except dns.resolver.NoNameservers as exc:
            if _chain_error(exc):  # a CNAME loop is a broken zone, not a passing failure
                why = "CNAME loop or chain too long"
                raise DnsPermError(f"{_plain(qname)} {rdtype}: {why}") from exc
            why = "no server answered (SERVFAIL, REFUSED or unreachable)"
            raise DnsTempError(f"{_plain(qname)} {rdtype}: {why}") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{_plain(qname)} {rdtype}: {type(exc).__name__}") from exc
        except OSError as exc:  # e.g. no route to the configured server
            raise DnsTempError(f"{_plain(qname)} {rdtype}: {exc.strerror or exc}") from exc
        response = answer.response
        kept: list[tuple[str | None, str, RecordValue]] = []
        ttl: float = dns.ttl.MAX_TTL
        for rrset in response.answer:
            type_text = dns.rdatatype.to_text(rrset.rdtype)
            ttl = min(ttl, rrset.ttl)
            # The owner of the first RRset is the name asked for, in the caller's spelling
            # (an IDN asked as U-label comes back as A-label).
            owner = None if rrset.name == qname else _plain(rrset.name)
            for rdata in rrset:
                if len(kept) >= MAX_RECORDS:
                    break
                kept.append((owner, type_text, _value(rdata)))
        if cache is not None:
            if not kept:  # NODATA: as long as the SOA says
                ttl = _negative_ttl(response)
            cache.put(key, tuple(kept), ttl)
        return [
            DnsRecord(asked if owner is None else owner, type_text, value)
            for owner, type_text, value in kept
        ]

    @staticmethod
    @contextlib.contextmanager
    def cache_only() -> Iterator[CacheProbe]:
        """Within this block, lookups made by this thread are answered from the cache only: a
        miss sends nothing, raises :class:`DnsTempError` and sets the probe's ``missed``. The
        milter uses it to run an analysis on its event loop when every answer is cached (and
        throws the result away to run it again in a thread when one was not)."""
        outer = getattr(_cache_only, "probe", None)
        probe = CacheProbe()
        _cache_only.probe = probe
        try:
            yield probe
        finally:
            _cache_only.probe = outer

    def _question(self, name: str, rdtype: str) -> _Question:
        """The parsed question for ``name``/``rdtype`` as spelled: the same names recur for
        every message of a sender (its SPF, DKIM key and DMARC record), and parsing one with
        dnspython costs more than the cached answer. Remembered by the exact strings, so a
        spelling always means what it meant the first time; bounded (cleared when full);
        names that cannot be asked raise each time."""
        question = self._questions.get((name, rdtype))
        if question is None:
            qname = _name(name)
            qtype = _rdtype(rdtype)
            asked = name.strip().rstrip(".").lower()
            key = (b".".join(label.lower() for label in qname.labels), int(qtype))
            question = (qname, qtype, asked, key)
            if len(self._questions) >= QUESTIONS_KEPT:
                self._questions.clear()
            self._questions[(name, rdtype)] = question
        return question

    def _final(self, name: str, rdtype: str) -> list[RecordValue]:
        """Values of ``rdtype`` for ``name``, at the end of any CNAME chain the server sent
        (a recursive resolver follows the chain; so does nsd within the zones it serves)."""
        return [r.value for r in self.query(name, rdtype) if r.rdtype == rdtype]

    # -- typed helpers -------------------------------------------------------------------

    def txt(self, name: str) -> list[str]:
        """One string per TXT record, its character-strings joined (RFC 7208 section 3.3)."""
        out: list[str] = []
        for value in self._final(name, "TXT"):
            if isinstance(value, tuple):
                joined = b"".join(v for v in value if isinstance(v, bytes))
                out.append(joined.decode("utf-8", "replace"))
        return out

    def a(self, name: str) -> list[str]:
        return [v for v in self._final(name, "A") if isinstance(v, str)]

    def aaaa(self, name: str) -> list[str]:
        return [v for v in self._final(name, "AAAA") if isinstance(v, str)]

    def mx(self, name: str) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for value in self._final(name, "MX"):
            if isinstance(value, tuple) and len(value) == 2:
                preference, exchange = value
                if isinstance(preference, int) and isinstance(exchange, str):
                    out.append((preference, exchange))
        return sorted(out)

    def ptr(self, ip: str) -> list[str]:
        try:
            rev = dns.reversename.from_address(ip)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsPermError(f"not an IP address: {ip[:60]!r}") from exc
        return [v for v in self._final(rev.to_text(), "PTR") if isinstance(v, str)]
