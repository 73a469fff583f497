"""Exchange Online / EOP stamps: which hosts are Microsoft's, and what its headers say.

Field meanings follow Microsoft Learn "Anti-spam message headers in cloud organizations"
(X-Forefront-Antispam-Report: CIP, CTRY, H, SCL, SFV, CAT, SFTY, DIR) and the compauth reason
table (000/001 fail; 010 and 6xx: the From domain is one of the tenant's accepted domains).

SECURITY: these headers are only facts when the message demonstrably arrived through
Exchange Online's inbound frontend (``mail.envelope`` decides that). Exchange's header firewall
strips ``X-MS-Exchange-Organization-*`` from untrusted senders, so inside a tenant the copies
present are Exchange's own; outside that case they are the sender's words.
"""

from __future__ import annotations

import re

from dsguard.mail.memo import adaptive_memo

# Exchange Online inbound frontends: worldwide, Germany, GCC High/DoD, 21Vianet.
_EXO_FRONTEND = re.compile(
    r"\.mail\.protection\.(?:outlook\.com|outlook\.de|office365\.us|partner\.outlook\.cn)$"
)
# Hosts inside Exchange Online (mailbox, hub and EOP servers).
_EXO_INTERNAL = re.compile(
    r"(?:^|\.)(?:outlook\.com|outlook\.de|office365\.us|partner\.outlook\.cn|"
    r"exchangelabs\.com|outlook\.office365\.com)$"
)

MAX_XFAR_FIELDS = 64


# The same tests as the patterns above, as str.endswith: "$" in the patterns also matches
# before a final newline, so names with a newline take the pattern.
_EXO_FRONTEND_SUFFIXES = tuple(
    ".mail.protection." + zone
    for zone in ("outlook.com", "outlook.de", "office365.us", "partner.outlook.cn")
)
_EXO_INTERNAL_ZONES = (
    "outlook.com",
    "outlook.de",
    "office365.us",
    "partner.outlook.cn",
    "exchangelabs.com",
    "outlook.office365.com",
)
_EXO_INTERNAL_SUFFIXES = tuple("." + zone for zone in _EXO_INTERNAL_ZONES)


def is_exo_frontend(host: str | None) -> bool:
    if not host:
        return False
    h = host.lower().rstrip(".")
    if "\n" in h:
        return _EXO_FRONTEND.search(h) is not None
    return h.endswith(_EXO_FRONTEND_SUFFIXES)


def is_exo_internal(host: str | None) -> bool:
    if not host:
        return False
    h = host.lower().rstrip(".")
    if "\n" in h:
        return _EXO_INTERNAL.search(h) is not None
    return h.endswith(_EXO_INTERNAL_SUFFIXES) or h in _EXO_INTERNAL_ZONES


def parse_forefront(value: str) -> dict[str, str]:
    """``X-Forefront-Antispam-Report: CIP:1.2.3.4;CTRY:UA;...`` -> {"CIP": "1.2.3.4", ...}."""
    if len(value) <= _CACHED_XFAR_CHARS:
        # EOP stamps the same report on every message from a sender; a copy for the caller,
        # since the remembered dict is shared (and never handed out itself).
        return dict(_parse_forefront_cached(value))
    return _parse_forefront(value)


_CACHED_XFAR_CHARS = 2048


def _parse_forefront(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value.split(";")[:MAX_XFAR_FIELDS]:
        key, sep, val = item.partition(":")
        key = key.strip()
        if sep and key and key not in out:
            out[key.upper()] = val.strip()
    return out


# Adaptive (mail.memo): on mail from new senders the reports differ (CIP, H) and are not kept.
_parse_forefront_cached = adaptive_memo(_parse_forefront, 2048)


def compauth_is_intraorg(reason: str | None) -> bool:
    """compauth reason 010, or 6xx: failed and the From domain is an accepted domain."""
    if not reason:
        return False
    r = reason.strip()
    return r == "010" or (len(r) == 3 and r.startswith("6") and r.isdigit())


def scl_value(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None
