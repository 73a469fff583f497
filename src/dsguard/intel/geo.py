"""IP address -> country, offline, from the RIR delegation data bundled in ``iptocc``.

Used for "unexpected country" findings (the 2025 campaign sent from hosts abroad, reported as
"Ukraine-based 139.28.X.X"). Registry data says where an address block is *registered*, not
where the host is; it is evidence, never proof.

Addresses that are not globally routable (private, loopback, link-local, shared, reserved,
documentation, multicast) have no country and give None, as does anything that is not an IP
address. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are looked up as IPv4.
"""

from __future__ import annotations

import ipaddress

import iptocc

from dsguard.mail.ipaddr import parse_ip
from dsguard.mail.memo import adaptive_memo


def _lookup_country(ip: str) -> str | None:
    """ISO 3166 alpha-2 code of the registry record for ``ip`` ("PL"), or None.

    The RIR files occasionally use the reserved codes "EU" and "AP" for regional blocks; they
    are returned as given.
    """
    try:
        address = parse_ip(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return None
    try:
        code = iptocc.country_code(str(address))
    except ValueError:
        return None
    return code.upper() if code else None


# Memoised: a mailbox from known senders holds the same sending addresses again and again, and
# a lookup costs several microseconds. On mail from new senders they do not recur and the memo
# stops storing (mail.memo). The answer depends only on the bundled registry data.
country_of = adaptive_memo(_lookup_country, 16384)
