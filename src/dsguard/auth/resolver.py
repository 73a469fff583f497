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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from dsguard.errors import DsguardError

MAX_RECORDS = 64  # per answer; SPF/DKIM/DMARC need far fewer (RFC 7208 4.6.4: 10 MX names)
_EDNS_PAYLOAD = 1232  # the DNS Flag Day 2020 size: large TXT (DKIM keys) without fragmentation

#: The value of one record: an address or name (A, AAAA, PTR, CNAME, NS), the character
#: strings of a TXT/SPF record, an MX ``(preference, exchange)``, or the presentation text of
#: any other type.
RecordValue = str | tuple[bytes, ...] | tuple[int, str]


class DnsTempError(DsguardError):
    """A lookup failed in a way that may succeed later (timeout, SERVFAIL, unreachable)."""


class DnsPermError(DsguardError):
    """The question cannot be asked at all (malformed name, unknown record type)."""


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


class Resolver:
    """dnspython-based resolver pinned to the configured nameservers.

    Never reads ``/etc/resolv.conf`` unless built with :meth:`system`. ``timeout`` bounds one
    attempt at one server, ``lifetime`` the whole lookup including retries and TCP fallback.
    """

    def __init__(
        self, nameservers: Sequence[str], *, timeout: float = 3.0, lifetime: float = 6.0
    ) -> None:
        if isinstance(nameservers, str):
            raise TypeError("nameservers must be a sequence of strings, not one string")
        if not nameservers:
            raise ValueError("at least one nameserver is required")
        servers = [_parse_nameserver(item) for item in nameservers]
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in servers]
        self._setup(resolver, timeout, lifetime)
        self.nameservers: tuple[str, ...] = tuple(
            f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in servers
        )

    def _setup(self, resolver: dns.resolver.Resolver, timeout: float, lifetime: float) -> None:
        if timeout <= 0 or lifetime <= 0:
            raise ValueError("timeout and lifetime must be positive")
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        resolver.use_edns(0, 0, _EDNS_PAYLOAD)
        resolver.search = []
        resolver.cache = None
        self._resolver = resolver
        self.timeout = timeout
        self.lifetime = lifetime

    @classmethod
    def system(cls, *, timeout: float = 3.0, lifetime: float = 6.0) -> Resolver:
        """The resolvers of ``/etc/resolv.conf``: for production use only, never in tests."""
        self = cls.__new__(cls)
        resolver = dns.resolver.Resolver(configure=True)
        self._setup(resolver, timeout, lifetime)
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
        qname = _name(name)
        qtype = _rdtype(rdtype)
        budget = self.lifetime if lifetime is None else max(0.05, min(lifetime, self.lifetime))
        try:
            answer = self._resolver.resolve(
                qname, qtype, raise_on_no_answer=False, lifetime=budget, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
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
        asked = name.strip().rstrip(".").lower()
        records: list[DnsRecord] = []
        for rrset in answer.response.answer:
            type_text = dns.rdatatype.to_text(rrset.rdtype)
            # The owner of the first RRset is the name asked for, in the caller's spelling
            # (an IDN asked as U-label comes back as A-label).
            owner = asked if rrset.name == qname else _plain(rrset.name)
            for rdata in rrset:
                if len(records) >= MAX_RECORDS:
                    return records
                records.append(DnsRecord(owner, type_text, _value(rdata)))
        return records

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
