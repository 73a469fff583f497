"""``ipaddress.ip_address`` with fast paths for the common cases: dotted quads, plain IPv6.

The stdlib parses an IPv4 string octet by octet in Python (about 1.5 us, and ``str()`` of the
result as much again); mail carries several client addresses per message, most of them IPv4,
and on a mailbox of new senders the callers' caches miss. A string that :data:`_IPV4` matches
in full is exactly one the stdlib accepts as IPv4 (four ASCII decimal octets 0-255, no
leading zeros), and it is already in canonical form. Likewise an IPv6 address written as
hextets only (no IPv4 tail, no zone) that :data:`_IPV6_FULL` or :data:`_IPV6_GAP` match in full
is one the stdlib accepts, and :func:`canonical_ip` writes it as ``str(IPv6Address(...))`` does
(lower case, leading zeros dropped, the first longest run of two or more zero hextets as
"::"). Anything else goes to the stdlib, so answers and errors are the stdlib's
(tests/unit/mail/test_ipaddr.py compares them).
"""

from __future__ import annotations

import ipaddress
import re
from socket import AF_INET6, inet_aton, inet_ntop, inet_pton

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_is_ipv4 = _IPV4.fullmatch
_HEXTET = "[0-9A-Fa-f]{1,4}"
# Eight hextets; or at most seven around one "::" (which then stands for at least one zero).
_IPV6_FULL = re.compile(rf"{_HEXTET}(?::{_HEXTET}){{7}}")
_IPV6_GAP = re.compile(rf"(?:{_HEXTET}(?::{_HEXTET}){{0,6}})?::(?:{_HEXTET}(?::{_HEXTET}){{0,6}})?")


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_address(text)``; raises ValueError for what is not an address."""
    if _is_ipv4(text) is not None:
        return ipaddress.IPv4Address(inet_aton(text))
    return ipaddress.ip_address(text)


def canonical_ip(text: str) -> str | None:
    """``str(ipaddress.ip_address(text))``, or None for what is not an address."""
    if _is_ipv4(text) is not None:
        return text  # a matching dotted quad is already canonical
    if ":" in text and (_IPV6_FULL.fullmatch(text) or _IPV6_GAP.fullmatch(text)):
        # A plain IPv6 address (see the module docstring). The C library reads it and writes
        # the text _compressed does (lower case, no leading zeros, the first longest run of two
        # or more zero hextets as "::") in a fraction of the time, except for the
        # IPv4-embedded forms, which it writes with a dotted quad. What it refuses ("::"
        # standing for no hextet) the stdlib below refuses too.
        try:
            out = inet_ntop(AF_INET6, inet_pton(AF_INET6, text))
        except OSError:
            out = ""
        if out and "." not in out:
            return out
        hextets = _plain_ipv6_hextets(text)
        if hextets is not None:
            return _compressed(hextets)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _plain_ipv6_hextets(text: str) -> list[int] | None:
    """The eight hextets of a plain IPv6 address (see the module docstring), else None."""
    if _IPV6_FULL.fullmatch(text) is not None:
        return [int(h, 16) for h in text.split(":")]
    if _IPV6_GAP.fullmatch(text) is None:
        return None
    head, _, tail = text.partition("::")
    hi = [int(h, 16) for h in head.split(":")] if head else []
    lo = [int(h, 16) for h in tail.split(":")] if tail else []
    missing = 8 - len(hi) - len(lo)
    if missing < 1:
        return None  # the stdlib refuses "::" standing for nothing
    return hi + [0] * missing + lo


def _compressed(hextets: list[int]) -> str:
    """``str(IPv6Address)`` of the address with these hextets (its _compress_hextets)."""
    best_start = -1
    best_len = 0
    start = -1
    run = 0
    for index, value in enumerate(hextets):
        if value == 0:
            run += 1
            if start == -1:
                start = index
            if run > best_len:
                best_len = run
                best_start = start
        else:
            run = 0
            start = -1
    words = [f"{value:x}" for value in hextets]
    if best_len > 1:
        end = best_start + best_len
        if end == len(words):
            words += [""]
        words[best_start:end] = [""]
        if best_start == 0:
            words = ["", *words]
    return ":".join(words)
