"""HOP_*: the connection as the trusted receiving hop recorded it.

A bracketed loopback HELO (``[127.0.0.1]``) is the scripted-submission signature that
dszp/Microsoft-Direct-Send-Reporting calls definitive and Abnormal/IBM report for the campaign;
PowerShell's Send-MailMessage greets with the bare computer name. SCL 0-1 with failed
authentication means EOP delivered it to the inbox (Proofpoint's profile, check 9)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from dsguard.checks.base import Facts, Hit
from dsguard.mail.microsoft import scl_value
from dsguard.model import EnvelopeOrigin

_BARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_ADDRESS_CHARS = "0123456789abcdef.:"


def _helo_kind(helo: str) -> str | None:
    h = helo.strip().lower().rstrip(".")
    literal = h[1:-1] if h.startswith("[") and h.endswith("]") else h
    literal = literal.removeprefix("ipv6:")
    ip = None
    # Only hex digits, dots, colons (and a "%" zone) can make an address; a host name is
    # refused here without ipaddress raising (and catching) two exceptions.
    if "%" in literal or not literal.strip(_ADDRESS_CHARS):
        try:
            ip = ipaddress.ip_address(literal)
        except ValueError:
            ip = None
    if ip is not None:
        return "loopback" if ip.is_loopback or ip.is_unspecified else "literal"
    if h in ("localhost", "localhost.localdomain", "localhost6", "localdomain"):
        return "loopback"
    if _BARE_NAME.match(h) and not h.isdigit():
        return "bare"
    return None


def check(f: Facts) -> Iterator[Hit]:
    env = f.envelope
    if env.origin is EnvelopeOrigin.NONE:
        yield Hit(
            "HOP_NO_TRUSTED_HOP",
            "no receiving hop of the organisation in the Received chain: the sender wrote everything",
            f"{len(f.hops.hops) if f.hops else 0} Received lines",
        )
        return
    own = f.p1_accepted or bool(f.own_claims)
    if f.anonymous and env.helo:
        kind = _helo_kind(env.helo)
        if kind == "loopback":
            yield Hit(
                "HOP_HELO_LOOPBACK",
                f"client greeted as {env.helo!r} from {env.client_ip}",
                f"HELO {env.helo}",
            )
        elif kind == "literal":
            yield Hit(
                "HOP_HELO_IP_LITERAL",
                f"client greeted with an IP literal {env.helo!r}",
                f"HELO {env.helo}",
            )
        elif kind == "bare" and own:
            yield Hit(
                "HOP_HELO_BARE_NAME",
                f"client greeted with a bare computer name {env.helo!r}",
                f"HELO {env.helo}",
            )
    homes = f.config.organization.home_countries
    if homes and env.country and f.anonymous and own and env.country.upper() not in homes:
        yield Hit(
            "HOP_UNEXPECTED_COUNTRY",
            f"own-domain mail from {env.client_ip} in {env.country}, outside {', '.join(homes)}",
            f"CTRY:{env.country}",
        )
    exo = f.hops.exo if f.hops else None
    if exo is not None:
        scl = scl_value(exo.scl)
        if scl is not None and 0 <= scl <= 1 and f.auth_failed and own and f.anonymous:
            yield Hit(
                "HOP_LOW_SCL_DESPITE_FAILURE",
                f"SCL {scl} (delivered as not spam) although authentication failed",
                f"SCL:{scl}; SFV:{exo.forefront.get('SFV', '')}",
            )
        sfty = exo.forefront.get("SFTY", "")
        cat = exo.forefront.get("CAT", "").upper()
        if sfty == "9.11" or (cat == "SPOOF" and own):
            yield Hit(
                "HOP_INTRAORG_SPOOF_STAMP",
                "Exchange Online stamped this as an intra-organisation spoof",
                f"CAT:{cat};SFTY:{sfty}",
            )
