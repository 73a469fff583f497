"""DMARC (RFC 7489): policy discovery and identifier alignment over SPF/DKIM results.

DMARC consumes the SPF and DKIM outcomes as data (RFC 7489 section 4.2): a message passes when
an SPF pass for an aligned MAIL FROM domain or a DKIM pass for an aligned ``d=`` exists, where
"aligned" is exact for ``s`` (strict) and "same organisational domain" for ``r`` (relaxed,
section 3.1), organisational domains coming from the bundled Public Suffix List
(``dsguard.policy.domains``). The disposition is the ``p`` (or for subdomains the ``sp``) of
the record, lowered by ``pct`` sampling (section 6.6.4).

SECURITY: the policy record comes from DNS the sender may control (for its own domains). The
record is parsed without exceptions, text is capped at ``MAX_RECORD`` characters and at most
``MAX_RUA`` report URIs are kept; at most two TXT lookups are made per message (the From
domain, then the organisational domain: section 6.6.3), each bounded by the resolver's lifetime.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from dsguard.auth.dkim import DkimResult
from dsguard.auth.resolver import DnsPermError, DnsTempError, Resolver
from dsguard.auth.spf import SpfResult
from dsguard.policy.domains import aligned, org_domain

MAX_RECORD = 2048
MAX_RUA = 10
POLICIES = ("none", "quarantine", "reject")
_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}  # section 6.6.4

_DMARC1 = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")  # section 6.4: case-sensitive "DMARC1", first
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s,;]+$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


@dataclass(frozen=True, slots=True)
class DmarcPolicy:
    domain: str  # where the record was found: the From domain or its organisational domain
    p: str
    sp: str | None
    pct: int
    adkim: str  # "r" or "s"
    aspf: str  # "r" or "s"
    rua: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str
    policy: DmarcPolicy | None
    disposition: str  # none, quarantine, reject: what the policy asks for this message
    aligned_by: str | None  # "dkim" or "spf" when it passed


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record[:MAX_RECORD].split(";"):
        name, sep, value = part.partition("=")
        key = name.strip().lower()
        if sep and key and key not in tags:  # the first occurrence counts
            tags[key] = value.strip()
    return tags


def parse_record(record: str, domain: str) -> DmarcPolicy | None:
    """One ``v=DMARC1`` TXT record → policy, with RFC 7489 section 6.6.3 step 6 for a missing
    or invalid ``p``/``sp``: act as ``p=none`` if a valid ``rua`` exists, else no policy."""
    if not _DMARC1.match(record):
        return None
    tags = _tags(record)
    rua = tuple(
        uri for uri in (u.strip() for u in tags.get("rua", "").split(",")) if _URI.match(uri)
    )[:MAX_RUA]
    p = tags.get("p", "").lower()
    sp_raw = tags.get("sp")
    sp = sp_raw.lower() if sp_raw is not None else None
    if p not in POLICIES or (sp is not None and sp not in POLICIES):
        if not rua:
            return None
        p, sp = "none", None
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100  # section 6.3: an invalid value falls back to the default
    pct = min(100, max(0, pct))
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcPolicy(
        domain=domain,
        p=p,
        sp=sp,
        pct=pct,
        adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r",
        rua=rua,
    )


def _normalise(domain: str) -> str:
    """A bare, lower-case, ASCII (A-label) domain; "" when it cannot be one."""
    text = domain.strip().strip("<>").rpartition("@")[2].rstrip(".").lower()
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return text


def _records_at(name: str, resolver: Resolver) -> list[str]:
    try:
        return [r for r in resolver.txt(name) if _DMARC1.match(r)]
    except DnsPermError:
        return []


def fetch_policy(from_domain: str, resolver: Resolver) -> DmarcPolicy | None:
    """RFC 7489 section 6.6.3: ``_dmarc.<From domain>``, else ``_dmarc.<organisational domain>``.

    ``None`` when no usable record exists (none, or more than one at the name where the search
    stopped). Raises :class:`DnsTempError` when a lookup fails temporarily.
    """
    domain = _normalise(from_domain)
    if not domain:
        return None
    candidates = [domain]
    org = org_domain(domain)
    if org and org != domain:
        candidates.append(org)
    for where in candidates:
        records = _records_at(f"_dmarc.{where}", resolver)
        if len(records) > 1:
            return None  # step 5: several records, DMARC is not applied
        if records:
            return parse_record(records[0], where)
    return None


def _aligned(mode: str, identifier: str, from_domain: str) -> bool:
    identifier = identifier.lower().rstrip(".")
    if mode == "s":
        return identifier == from_domain
    return aligned(identifier, from_domain)


def _disposition(policy: DmarcPolicy, from_domain: str) -> str:
    # Section 6.3: sp applies to subdomains when the record was found at the organisational
    # domain; a record published at the From domain itself is applied with its p.
    wanted = policy.sp if policy.domain != from_domain and policy.sp else policy.p
    if policy.pct < 100 and secrets.randbelow(100) >= policy.pct:
        return _LOWER[wanted]  # section 6.6.4: outside the sample, the next-lower policy
    return wanted


def evaluate_dmarc(
    from_domain: str, spf: SpfResult, dkim: Sequence[DkimResult], resolver: Resolver
) -> DmarcResult:
    """DMARC result for the RFC5322.From domain, given the SPF and DKIM results. Never raises."""
    domain = _normalise(from_domain)
    if not domain or not _DOMAIN.match(domain):
        return DmarcResult("permerror", domain, None, "none", None)
    try:
        policy = fetch_policy(domain, resolver)
    except DnsTempError:
        return DmarcResult("temperror", domain, None, "none", None)
    if policy is None:
        return DmarcResult("none", domain, None, "none", None)
    if any(d.result == "pass" and _aligned(policy.adkim, d.domain, domain) for d in dkim):
        return DmarcResult("pass", domain, policy, "none", "dkim")
    if spf.result == "pass" and spf.domain and _aligned(policy.aspf, spf.domain, domain):
        return DmarcResult("pass", domain, policy, "none", "spf")
    return DmarcResult("fail", domain, policy, _disposition(policy, domain), None)
