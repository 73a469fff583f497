"""Read address headers the way an attacker hopes nobody will: every interpretation at once.

A From header can mean different things to the receiver that checks DMARC and to the mail
client that shows it ("Composition Kills", USENIX Security 2020, section 5.2): several
mailboxes, encoded words that decode to ``<admin@contoso.com>``, route syntax, quoted pairs,
text after the angle brackets. We parse with the stdlib (what most tooling sees), then scan
the raw and the decoded text for anything address-shaped, and report where they disagree. The
checks treat a domain seen by *any* interpretation as claimed.

SECURITY: values are attacker-controlled; the number of mailboxes read per field is capped
(``MAX_MAILBOXES``) and every regular expression here is linear (no nested quantifiers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses

from dsguard.mail.memo import adaptive_memo
from dsguard.model import quick_init

MAX_MAILBOXES = 100
MAX_FIELD_CHARS = 8192

_ADDR_RE = re.compile(
    r"[A-Za-z0-9._%+'=!#$&*/?^`{|}~-]{1,128}@([A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,10})"
)
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,40}\?[bBqQ]\?[^?\s]{0,2000}\?=")
_ROUTE = re.compile(r"<\s*@")
# Compiled once: re's own cache lookup costs about a microsecond per call on the hot path.
_QUOTED_AT_LOCAL = re.compile(r'"[^"]*@[^"]*"\s*@')
_TEXT_AFTER_ANGLE = re.compile(r">\s*[^\s,;(]")
_COMMENT = re.compile(r"\(([^()]*)\)")
_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.){0,500}"')
_ANGLE_PATH = re.compile(r"<([^<>]{0,512})>")


@quick_init
@dataclass(frozen=True, slots=True)
class Mailbox:
    display: str
    addr: str
    domain: str  # lower-case, no trailing dot; "" when the address has no domain


@quick_init
@dataclass(frozen=True, slots=True)
class AddressField:
    raw: str
    mailboxes: tuple[Mailbox, ...]
    # Every domain any interpretation finds (stdlib parse, raw scan, decoded-word scan).
    claimed_domains: tuple[str, ...]
    # Why the field is ambiguous ("" entries never appear); empty when it parses cleanly.
    oddities: tuple[str, ...]
    # Addresses shown in a display name that differ from the mailbox's real address.
    display_name_addresses: tuple[str, ...]

    @property
    def first(self) -> Mailbox | None:
        return self.mailboxes[0] if self.mailboxes else None


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; on any error return the input unchanged."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def domain_of(addr: str) -> str:
    at = addr.rfind("@")
    if at == -1:
        return ""
    return addr[at + 1 :].strip().strip(">").rstrip(".").lower()


def _scan_domains(text: str) -> list[str]:
    return [m.group(1).rstrip(".").lower() for m in _ADDR_RE.finditer(text)]


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


# The common, unambiguous shapes: `Name <a@b>`, `"Name" <a@b>`, `a@b`. No encoded words,
# comments, escapes, extra '@' or list separators: every reading of these agrees.
_SIMPLE = re.compile(
    r'\s*(?:"([^"\\@]*)"|([^<>"@,;:\\()=]*?))\s*<([^<>@\s"(),;:\\]{1,128}@[A-Za-z0-9.-]{1,253})>\s*'
    r'|\s*([^<>@\s"(),;:\\]{1,128}@[A-Za-z0-9.-]{1,253})\s*'
)


_QUOTED_SELF = re.compile(
    r'\s*"([^"\\<>@\s(),;:]{1,128}@[A-Za-z0-9.-]{1,253})"\s*<([^<>@\s"(),;:\\]{1,128}@[A-Za-z0-9.-]{1,253})>\s*'
)


def parse_address_field(raw: str) -> AddressField:
    if len(raw) <= _CACHED_FIELD_CHARS:
        return _parse_address_field_cached(raw)
    return _parse_address_field(raw)


# A mailbox's From, To and Cc values recur (the same correspondents, the same distribution
# lists); the answer is immutable (frozen dataclasses, tuples). Only fields of ordinary length
# are kept, so hostile multi-kilobyte fields cannot fill memory; when most lookups miss (new
# correspondents) the memo stops storing (mail.memo).
_CACHED_FIELD_CHARS = 1024


def _parse_address_field(raw: str) -> AddressField:
    if len(raw) < 600:
        simple = _SIMPLE.fullmatch(raw)
        if simple is not None:
            display = (
                simple.group(1) if simple.group(1) is not None else simple.group(2) or ""
            ).strip()
            addr = simple.group(3) or simple.group(4)
            domain = domain_of(addr)
            if domain and "." in domain and not domain.startswith(".") and ".." not in domain:
                return AddressField(raw, (Mailbox(display, addr, domain),), (domain,), (), ())
        # `"joe@contoso.com" <joe@contoso.com>`: the display name is the address itself, as
        # written (many clients do this). Every reading agrees: no display-name address, no
        # oddity (tests/unit/perf/test_perf_parsers.py checks it against the general path).
        quoted = _QUOTED_SELF.fullmatch(raw)
        if quoted is not None and quoted.group(1) == quoted.group(2):
            addr = quoted.group(2)
            found = _ADDR_RE.fullmatch(addr)
            domain = domain_of(addr)
            if found is not None and domain == found.group(1).lower():
                return AddressField(raw, (Mailbox(addr, addr, domain),), (domain,), (), ())
    return _parse_address_field_general(raw)


_parse_address_field_cached = adaptive_memo(_parse_address_field, 4096)


def _parse_address_field_general(raw: str) -> AddressField:
    value = raw[:MAX_FIELD_CHARS]
    oddities: list[str] = []
    if len(raw) > MAX_FIELD_CHARS:
        oddities.append(f"field longer than {MAX_FIELD_CHARS} characters; the rest was ignored")

    mailboxes: list[Mailbox] = []
    display_addresses: list[str] = []
    try:
        pairs = getaddresses([value])
    except Exception:
        pairs = []
        oddities.append("the standard parser failed on this field")
    for display, addr in pairs[:MAX_MAILBOXES]:
        if not addr and not display:
            continue
        if "=?" in addr:
            oddities.append("an encoded word stands where an address should be")
        addr = addr.strip()
        if addr and ("@" not in addr or addr.count("@") > 1 or addr.startswith("@")):
            oddities.append(f"{addr[:60]!r} is not a valid address")
            continue
        shown = decode_words(display)
        for m in _ADDR_RE.finditer(shown):
            if m.group(0).lower() != addr.lower():
                display_addresses.append(m.group(0))
        if addr:
            mailboxes.append(Mailbox(shown, addr, domain_of(addr)))
    if len(pairs) > MAX_MAILBOXES:
        oddities.append(f"more than {MAX_MAILBOXES} mailboxes; the rest were ignored")

    decoded = decode_words(value)
    raw_domains = _scan_domains(value)
    decoded_domains = _scan_domains(decoded) if decoded != value else []
    parsed_domains = [m.domain for m in mailboxes]

    for word in _ENCODED_WORD.findall(value):
        text = decode_words(word)
        if any(c in text for c in '@<>,;:"'):
            oddities.append(f"encoded word decodes to address characters: {text[:60]!r}")
            break
    if _ROUTE.search(value):
        oddities.append("route (source-route) syntax inside the angle brackets")
    if "\\" in _outside_quotes(value):
        oddities.append("backslash escape outside a quoted string")
    if _QUOTED_AT_LOCAL.search(value):
        oddities.append("quoted local part that contains '@'")
    if _TEXT_AFTER_ANGLE.search(value):
        oddities.append("text after the closing angle bracket")
    if value.count("<") > len(mailboxes) or value.count("<") != value.count(">"):
        oddities.append("unbalanced or extra angle brackets")
    comment_domains = _scan_domains(" ".join(_COMMENT.findall(_outside_quotes(value))))
    if comment_domains:
        oddities.append("an address inside a comment")
    # Domains only a display name or a comment shows are not claims of the sender address;
    # any other address-shaped text the stdlib did not return is a parser disagreement.
    explained = (
        set(parsed_domains) | {domain_of(a) for a in display_addresses} | set(comment_domains)
    )
    extra = [d for d in raw_domains + decoded_domains if d not in explained]
    if extra:
        oddities.append("parsers disagree: " + ", ".join(_unique(extra)) + " is also in the field")

    claimed = _unique(parsed_domains + extra)
    return AddressField(
        raw=raw,
        mailboxes=tuple(mailboxes),
        claimed_domains=claimed,
        oddities=_unique(oddities),
        display_name_addresses=_unique(display_addresses),
    )


def _outside_quotes(value: str) -> str:
    """The field with quoted strings removed (quoted-pairs inside them are legitimate)."""
    return _QUOTED_STRING.sub('""', value)


def parse_path(value: str) -> str | None:
    """The address inside a Return-Path / MAIL FROM style ``<addr>``; "" for the null path."""
    text = value.strip()
    if text in ("<>", ""):
        return "" if text == "<>" else None
    m = _ANGLE_PATH.search(text)
    inner = m.group(1) if m else text
    inner = inner.strip()
    if ":" in inner and inner.startswith("@"):
        inner = inner.split(":", 1)[1]  # strip an RFC 5321 source route
    return inner
