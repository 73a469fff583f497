"""Relay control: never an open relay, and authenticated users send only as themselves.

Anonymous and connector sessions may deliver only to accepted domains. Recipient forms that an
MTA further down may re-route are refused outright rather than interpreted, because the
downstream's reading, not ours, decides where the mail goes (the classic relay tests):
``user%example.net@contoso.com`` (the "percent hack", Postfix ``allow_percent_hack``),
``example.net!user@contoso.com`` (UUCP bang paths, ``swap_bangpath``), quoted local parts
holding ``@`` or ``%`` or ``!``, and RFC 5321 source routes ``<@relay:user@domain>``
(section 3.6.1 / Appendix C: deprecated; a server MAY refuse them).

SECURITY: every RCPT goes through ``check_recipient`` before it is accepted; MAIL FROM of an
authenticated session goes through ``check_send_as``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dsguard.model import Attribution, AttributionKind
from dsguard.policy.domains import AcceptedDomains

RELAY_DENIED = "550 5.7.1 Relaying denied: recipient domain is not served here"
BAD_ADDRESS = "553 5.1.3 Recipient address syntax not accepted here (no routing tricks)"
SEND_AS_DENIED = "553 5.7.1 Sender address rejected: not owned by the authenticated user"

_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, lower-case domain) of a plain RFC 5321 mailbox, or None for anything that
    is not one (no domain, several '@', source route, address literal)."""
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if not addr or addr.startswith("@"):  # empty, or an RFC 5321 source route
        return None
    local, sep, domain = addr.rpartition("@")
    if not sep or not local or not domain:
        return None
    domain = domain.lower().rstrip(".")
    if not _DOMAIN.match(domain):
        return None
    return local, domain


def check_recipient(
    address: str, attribution: Attribution, accepted: AcceptedDomains
) -> str | None:
    """None when the recipient may be accepted, else the SMTP reply to refuse it with."""
    raw = address.strip().strip("<>")
    if raw.startswith("@") or (raw.count("@") != 1 and not raw.startswith('"')):
        return BAD_ADDRESS
    parts = split_address(raw)
    if parts is None:
        return BAD_ADDRESS
    local, domain = parts
    if local.startswith('"') or "%" in local or "!" in local or "@" in local:
        return BAD_ADDRESS
    if attribution.kind is AttributionKind.AUTHENTICATED:
        return None
    if not accepted.matches(domain):
        return RELAY_DENIED
    return None


def check_send_as(mail_from: str, user: str, allowed: Sequence[str]) -> str | None:
    """An authenticated user may use its own address, the addresses in ``allowed``, and any
    address of a domain listed there as ``@domain`` (null sender allowed for bounces)."""
    if mail_from == "":
        return None
    parts = split_address(mail_from)
    if parts is None:
        return SEND_AS_DENIED
    local, domain = parts
    addr = f"{local}@{domain}".lower()
    permitted = {a.lower() for a in allowed} | {user.lower()}
    if addr in permitted or f"@{domain}" in permitted:
        return None
    return SEND_AS_DENIED
