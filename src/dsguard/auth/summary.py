"""What the receiving organisation's authentication checks concluded, as one value.

Built only from trusted sources (see ``mail.envelope``): the receiver's Authentication-Results
and, when those lack SPF, its Received-SPF. DMARC consumes SPF/DKIM results as data
(RFC 7489 section 3.1 alignment), so "is this own-domain From proven?" is answered here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dsguard.auth.results import AuthResultsHeader
from dsguard.mail.addresses import domain_of
from dsguard.policy.domains import aligned

PASS = frozenset({"pass"})
DMARC_PASS = frozenset({"pass", "bestguesspass"})


@dataclass(frozen=True, slots=True)
class AuthSummary:
    source: str  # where the results came from, for evidence; "none" when nothing was trusted
    spf: str | None = None
    spf_domain: str | None = None
    dkim: tuple[tuple[str, str], ...] = ()  # (result, signing domain d=)
    dmarc: str | None = None
    dmarc_from: str | None = None
    dmarc_action: str | None = None
    compauth: str | None = None
    compauth_reason: str | None = None
    evidence: str = ""

    @property
    def known(self) -> bool:
        return self.source != "none"

    def proof_for(self, domain: str) -> str | None:
        """Which aligned pass proves ``domain`` (header From or envelope), if any."""
        if self.dmarc in DMARC_PASS and self.dmarc_from and aligned(self.dmarc_from, domain):
            return f"dmarc={self.dmarc} header.from={self.dmarc_from}"
        for result, d in self.dkim:
            if result in PASS and aligned(d, domain):
                return f"dkim=pass header.d={d}"
        if self.spf in PASS and self.spf_domain and aligned(self.spf_domain, domain):
            return f"spf=pass smtp.mailfrom={self.spf_domain}"
        return None

    def proven_domains(self, domains: Iterable[str]) -> tuple[str, ...]:
        return tuple(d for d in domains if self.proof_for(d))

    def spf_passes_for(self, domain: str) -> bool:
        return self.spf in PASS and bool(self.spf_domain) and self.spf_domain == domain.lower()

    def dkim_passes_aligned(self, domain: str) -> bool:
        return any(r in PASS and aligned(d, domain) for r, d in self.dkim)


def summarise(
    trusted: Sequence[AuthResultsHeader],
    received_spf: tuple[str | None, dict[str, str]] | None,
) -> AuthSummary:
    spf = spf_domain = dmarc = dmarc_from = dmarc_action = compauth = compauth_reason = None
    dkim: list[tuple[str, str]] = []
    sources: list[str] = []
    evidence: list[str] = []
    for ar in trusted:  # topmost first: the organisation's final word wins
        sources.append(f"Authentication-Results ({ar.authserv_id or 'Exchange Online'})")
        evidence.append(ar.raw[:300])
        for res in ar.results:
            if res.method == "spf" and spf is None:
                spf = res.result
                mf = res.prop("smtp.mailfrom") or res.prop("smtp.helo") or ""
                spf_domain = (domain_of(mf) if "@" in mf else mf.lower()) or None
            elif res.method == "dkim":
                d = res.prop("header.d") or domain_of(res.prop("header.i") or "")
                if d and d != "none":
                    dkim.append((res.result, d.lower()))
                elif res.result not in ("none",):
                    dkim.append((res.result, ""))
            elif res.method == "dmarc" and dmarc is None:
                dmarc = res.result
                dmarc_from = (res.prop("header.from") or "").lower() or None
                dmarc_action = res.prop("action")
            elif res.method == "compauth" and compauth is None:
                compauth = res.result
                compauth_reason = res.prop("reason")
    if spf is None and received_spf is not None and received_spf[0]:
        spf = received_spf[0]
        pairs = received_spf[1]
        mf = pairs.get("envelope-from") or pairs.get("smtp.mailfrom") or ""
        spf_domain = (domain_of(mf) if "@" in mf else mf.strip("<>").lower()) or None
        sources.append("Received-SPF")
    if not sources:
        return AuthSummary(source="none")
    return AuthSummary(
        source=", ".join(dict.fromkeys(sources)),
        spf=spf,
        spf_domain=spf_domain,
        dkim=tuple(dkim),
        dmarc=dmarc,
        dmarc_from=dmarc_from,
        dmarc_action=dmarc_action,
        compauth=compauth,
        compauth_reason=compauth_reason,
        evidence=" | ".join(evidence),
    )
