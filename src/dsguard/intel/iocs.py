"""Indicator-of-compromise lists: the bundled campaign list plus the operator's own files.

List format (the bundled ``data/campaign-iocs.txt`` documents it for users too):

- one indicator per line; blank lines are ignored;
- ``#`` starts a comment at the start of a line or after whitespace (so ``#`` inside a URL
  stays part of it); a comment after an indicator is that indicator's note;
- the type is inferred: IPv4/IPv6 address, CIDR range, URL (has a ``scheme://``), else domain;
- defanged forms are refanged: ``hxxp://``, ``hxxps://``, ``[.]``, ``(.)``, ``{.}``, ``[:]``,
  ``[://]``.

Matching rules:

- an IP matches a listed address, or a listed CIDR range that contains it (IPv4-mapped IPv6
  addresses are also checked as IPv4); the most specific range wins;
- a host matches a listed domain it equals or is a subdomain of (``a.evil.example`` matches
  ``evil.example``; ``notevil.example`` does not); an IP-literal host is matched as an IP;
- a URL matches a listed URL with the same host, port and path, whatever the scheme (http or
  https), default port, trailing slash or fragment. A listed URL without a query string also
  matches the same URL *with* any query (kits append per-victim tokens); a listed URL with a
  query needs the same query. Otherwise the URL's host is matched against the domains.

Lookups are dictionary probes: one per distinct CIDR prefix length for IPs, one per host label
for domains, two for URLs.

SECURITY: list files are operator-supplied but may be fetched from third parties. A file over
``MAX_LIST_BYTES`` is refused; bad lines are errors naming the line, never guesses; a single-label
domain (``com``) or a range broader than /8 (IPv4) or /16 (IPv6) is refused, because it would
flag a large part of the Internet (the reason 139.28.0.0/16 is not on the bundled list).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Self, TypeVar

from dsguard.attachments.urls import canonical_host, is_ip_literal_host, url_parts
from dsguard.errors import InputError
from dsguard.intel.hosting import SuffixSet
from dsguard.mail.ipaddr import parse_ip

BUNDLED_SOURCE = "bundled"
MAX_LIST_BYTES = 64 * 1024 * 1024
_MIN_PREFIX = {4: 8, 6: 16}
_IP_ANSWERS_MAX = 16384
_DEFAULT_PORTS = {"http": "80", "https": "443", "ftp": "21", "ws": "80", "wss": "443"}

_COMMENT_START = re.compile(r"(?:^|\s)#")
_DEFANGED_SCHEME = re.compile(r"^hxxp(s?)(?=[:\[])", re.IGNORECASE)
_DEFANGED_TOKENS = (("[://]", "://"), ("[.]", "."), ("(.)", "."), ("{.}", "."), ("[:]", ":"))

_UrlKey = tuple[str, str, str]  # (host[:port], path without trailing slash, query)
_Key = TypeVar("_Key")


@dataclass(frozen=True, slots=True)
class IocMatch:
    indicator: str  # the list entry that matched, as written in the list (refanged)
    source: str  # the list file name as configured, "bundled" for the shipped list
    note: str  # the comment on that line, if any


class IocDB:
    """Indicators from the bundled list and the operator's files; first entry wins on repeats."""

    def __init__(self) -> None:
        # IP version -> prefix length -> network number (address >> host bits) -> match
        self._networks: dict[int, dict[int, dict[int, IocMatch]]] = {4: {}, 6: {}}
        self._prefix_lengths: dict[int, list[int]] = {4: [], 6: []}  # most specific first
        self._domains: dict[str, IocMatch] = {}
        self._domain_suffixes = SuffixSet(())
        self._urls: dict[_UrlKey, IocMatch] = {}
        self._count = 0
        # Hosts of the listed URLs: a URL whose host is not among them cannot match a listed
        # URL, so its (scheme, authority, path, query) key is not built.
        self._url_hosts: set[str] = set()
        # match_ip answers by address string: the connecting IP of every message is looked up,
        # and a mailbox's senders recur. Bounded; cleared whenever the lists change.
        self._ip_answers: dict[str, IocMatch | None] = {}
        # match_host answers by host, for the same reason (a message's links share a few hosts).
        self._host_answers: dict[str, IocMatch | None] = {}

    @classmethod
    def load(cls, files: Sequence[str] = (), *, bundled: bool = True) -> Self:
        """Read the bundled list (unless ``bundled`` is False) and then ``files`` in order.

        Raises InputError(name, problem) for an unreadable file or a bad line.
        """
        db = cls()
        if bundled:
            text = resources.files("dsguard.intel").joinpath("data/campaign-iocs.txt")
            db._add_list(text.read_text(encoding="utf-8"), BUNDLED_SOURCE)
        for name in files:
            db._add_list(_read_list(name), name)
        db._domain_suffixes = SuffixSet(db._domains)
        db._host_answers.clear()  # answers depend on the suffix set just built
        return db

    # Lookups ----------------------------------------------------------------------------
    def match_ip(self, ip: str) -> IocMatch | None:
        """A listed address equal to ``ip``, or the most specific listed range holding it."""
        answers = self._ip_answers
        if ip in answers:
            return answers[ip]
        found = self._match_ip(ip)
        if len(answers) >= _IP_ANSWERS_MAX:
            answers.clear()
        answers[ip] = found
        return found

    def _match_ip(self, ip: str) -> IocMatch | None:
        try:
            address = parse_ip(ip.strip().removeprefix("[").removesuffix("]"))
        except ValueError:
            return None
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        for candidate in candidates:
            tables = self._networks[candidate.version]
            value = int(candidate)
            for length in self._prefix_lengths[candidate.version]:
                found = tables[length].get(value >> (candidate.max_prefixlen - length))
                if found is not None:
                    return found
        return None

    def match_host(self, host: str) -> IocMatch | None:
        """A listed domain equal to ``host`` or a parent of it; IP-literal hosts as IPs."""
        answers = self._host_answers
        if host in answers:
            return answers[host]
        found = self._match_host(host)
        if len(answers) >= _IP_ANSWERS_MAX:
            answers.clear()
        answers[host] = found
        return found

    def _match_host(self, host: str) -> IocMatch | None:
        canonical = canonical_host(host)
        if canonical is None:
            return None
        if is_ip_literal_host(canonical):
            return self.match_ip(canonical)
        suffix = self._domain_suffixes.match(canonical)
        return self._domains[suffix] if suffix is not None else None

    def match_url(self, url: str) -> IocMatch | None:
        """A listed URL (see the module docstring for the comparison), else a host match."""
        parts = url_parts(url)
        if parts is None:
            return None
        if parts.host in self._url_hosts:
            key = _url_key(parts.scheme, parts.host, parts.port, parts.path, parts.query)
            found = self._urls.get(key)
            if found is None and key[2]:
                found = self._urls.get((key[0], key[1], ""))
            if found is not None:
                return found
        return self.match_host(parts.host)

    def __len__(self) -> int:
        return self._count

    # Loading ----------------------------------------------------------------------------
    def _add_list(self, text: str, source: str) -> None:
        for number, line in enumerate(text.splitlines(), start=1):
            comment = _COMMENT_START.search(line)
            indicator = (line[: comment.start()] if comment else line).strip()
            if not indicator:
                continue
            note = line[comment.end():].strip() if comment else ""
            problem = self._add(_refang(indicator), source, note)
            if problem is not None:
                raise InputError(source, f"line {number}: {problem}")

    def _add(self, indicator: str, source: str, note: str) -> str | None:
        """Add one refanged indicator; return the problem if it is not a valid one."""
        match = IocMatch(indicator, source, note)
        if any(char.isspace() for char in indicator):
            return f"{indicator!r} is not an IP, CIDR, domain or URL"
        if "://" in indicator:
            parts = url_parts(indicator)
            if parts is None:
                return f"{indicator!r} is not a valid URL"
            key = _url_key(parts.scheme, parts.host, parts.port, parts.path, parts.query)
            self._insert(self._urls, key, match)
            self._url_hosts.add(parts.host)
            return None
        if "/" in indicator:
            return self._add_network(indicator, match)
        try:
            address = ipaddress.ip_address(indicator.removeprefix("[").removesuffix("]"))
        except ValueError:
            return self._add_domain(indicator, match)
        return self._add_network(f"{address}/{address.max_prefixlen}", match)

    def _add_network(self, text: str, match: IocMatch) -> str | None:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return (
                f"{match.indicator!r} is not an IP, CIDR, domain or URL "
                f"(a URL needs its scheme, e.g. https://{match.indicator})"
            )
        if network.prefixlen < _MIN_PREFIX[network.version]:
            return (
                f"{match.indicator!r} is too broad for an indicator (shorter than "
                f"/{_MIN_PREFIX[network.version]}); list exact addresses"
            )
        tables = self._networks[network.version]
        length = network.prefixlen
        if length not in tables:
            tables[length] = {}
            self._prefix_lengths[network.version] = sorted(tables, reverse=True)
        key = int(network.network_address) >> (network.max_prefixlen - length)
        self._insert(tables[length], key, match)
        return None

    def _add_domain(self, text: str, match: IocMatch) -> str | None:
        domain = canonical_host(text.removeprefix("*.").lstrip("."))
        if domain is None or is_ip_literal_host(domain):
            return f"{match.indicator!r} is not an IP, CIDR, domain or URL"
        if "." not in domain:
            return f"{match.indicator!r} is a single label; list a domain such as example.com"
        self._insert(self._domains, domain, match)
        return None

    def _insert(self, table: dict[_Key, IocMatch], key: _Key, match: IocMatch) -> None:
        self._ip_answers.clear()
        self._host_answers.clear()
        if key not in table:
            table[key] = match
            self._count += 1


def _refang(indicator: str) -> str:
    text = _DEFANGED_SCHEME.sub(r"http\1", indicator)
    for defanged, plain in _DEFANGED_TOKENS:
        text = text.replace(defanged, plain)
    return text


def _url_key(scheme: str, host: str, port: str, path: str, query: str) -> _UrlKey:
    if port == _DEFAULT_PORTS.get(scheme) or port == "":
        authority = host
    else:
        authority = f"{host}:{port.lstrip('0') or '0'}"
    return authority, path.rstrip("/"), query


def _read_list(name: str) -> str:
    path = Path(name).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_LIST_BYTES:
            raise InputError(name, f"IOC list is {size} bytes, over the {MAX_LIST_BYTES} limit")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(name, f"cannot read IOC list: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(name, f"line {line}: not valid UTF-8") from None
