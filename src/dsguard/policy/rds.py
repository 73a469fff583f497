"""Reject Direct Send: a pure function of organisation settings, attribution and sender.

P1 mirrors ``Set-OrganizationConfig -RejectDirectSend $true`` exactly (cmdlet doc,
MicrosoftDocs/office-docs-powershell PR #13210): an anonymous message (no connector matched)
whose 5321.MailFrom domain is an accepted domain is refused with Microsoft's 550 5.7.68 text.
SPF, DKIM and DMARC do not exempt it; only attribution does. A connector exempts only the
accepted domains in its ``sender_domains`` (all of them when the list is empty).

P2 goes beyond Microsoft ("The P2 From header is not checked"): an anonymous message whose
header From is an accepted domain is refused unless an aligned DKIM or SPF pass proves it.
"""

from __future__ import annotations

from collections.abc import Iterable

from dsguard.model import Attribution, AttributionKind, RdsDecision, RdsOutcome
from dsguard.policy.domains import AcceptedDomains

# Microsoft's reply, byte for byte (blog 4408790; enhanced status code per RFC 3463).
REJECT_DIRECT_SEND_REPLY = (
    "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
    "from unauthorized sources"
)


def p2_reply(header_from: str) -> str:
    return (
        "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
        f"from unauthorized sources (header From {header_from} is not authenticated)"
    )


def _covers(attribution: Attribution, domain: str) -> bool:
    if attribution.kind is AttributionKind.AUTHENTICATED:
        return True
    if attribution.kind is AttributionKind.CONNECTOR:
        if not attribution.sender_domains:
            return True
        return AcceptedDomains(attribution.sender_domains).matches(domain)
    return False


def decide_p1(
    mode: str, accepted: AcceptedDomains, attribution: Attribution, mail_from_domain: str | None
) -> RdsDecision:
    if not mail_from_domain or not accepted.matches(mail_from_domain):
        return RdsDecision(
            "P1", RdsOutcome.NOT_APPLICABLE, False, "envelope sender not in an accepted domain"
        )
    if _covers(attribution, mail_from_domain):
        return RdsDecision(
            "P1", RdsOutcome.NOT_APPLICABLE, False, f"attributed: {attribution.label()}"
        )
    reason = f"anonymous sender using accepted domain {mail_from_domain} in MAIL FROM"
    if attribution.kind is AttributionKind.CONNECTOR:
        reason = f"connector {attribution.name} may not send as {mail_from_domain}"
    return RdsDecision(
        "P1", RdsOutcome.WOULD_REJECT, mode == "on", reason, REJECT_DIRECT_SEND_REPLY
    )


def decide_p2(
    mode: str,
    check_header_from: bool,
    accepted: AcceptedDomains,
    attribution: Attribution,
    from_domains: Iterable[str],
    authenticated_domains: Iterable[str],
    header_from: str,
) -> RdsDecision:
    """``from_domains``: accepted-or-not domains the header From claims; ``authenticated_domains``:
    those with an aligned DKIM or SPF pass."""
    proven = set(authenticated_domains)
    claimed = [d for d in from_domains if accepted.matches(d) and d not in proven]
    if not check_header_from or not claimed:
        return RdsDecision(
            "P2", RdsOutcome.NOT_APPLICABLE, False, "header From not an unproven accepted domain"
        )
    domain = claimed[0]
    if _covers(attribution, domain):
        return RdsDecision(
            "P2", RdsOutcome.NOT_APPLICABLE, False, f"attributed: {attribution.label()}"
        )
    return RdsDecision(
        "P2",
        RdsOutcome.WOULD_REJECT,
        mode == "on",
        f"header From in accepted domain {domain} without aligned DKIM or SPF pass",
        p2_reply(header_from or domain),
    )
