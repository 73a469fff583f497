"""AUTH_*: what the receiving organisation's SPF/DKIM/DMARC/compauth checks said, and
Authentication-Results headers a sender wrote to look authenticated (RFC 8601 section 5:
a receiver must not trust results it did not add)."""

from __future__ import annotations

from collections.abc import Iterator

from dsguard.checks.base import Facts, Hit
from dsguard.mail.microsoft import compauth_is_intraorg

_CLAIMS_PASS = ("pass", "bestguesspass")


def check(f: Facts) -> Iterator[Hit]:
    a = f.auth
    if not a.known:
        if f.envelope.origin.value != "smtp":
            yield Hit(
                "AUTH_RESULTS_MISSING",
                "no Authentication-Results or Received-SPF from the receiving hop",
            )
    else:
        if a.spf == "fail":
            yield Hit(
                "AUTH_SPF_FAIL",
                f"SPF failed for {a.spf_domain or 'the envelope domain'}",
                f"spf=fail smtp.mailfrom={a.spf_domain}",
            )
        elif a.spf == "softfail":
            yield Hit(
                "AUTH_SPF_SOFTFAIL",
                f"SPF soft-failed for {a.spf_domain or 'the envelope domain'}",
                f"spf=softfail smtp.mailfrom={a.spf_domain}",
            )
        failed = [d for r, d in a.dkim if r in ("fail", "permerror")]
        if failed and not any(r == "pass" for r, _ in a.dkim):
            yield Hit(
                "AUTH_DKIM_FAIL",
                "DKIM signature did not verify",
                "; ".join(f"dkim=fail header.d={d}" for d in failed),
            )
        if a.dmarc == "fail":
            yield Hit(
                "AUTH_DMARC_FAIL",
                f"DMARC failed for {a.dmarc_from or 'the From domain'}",
                f"dmarc=fail header.from={a.dmarc_from} action={a.dmarc_action}",
            )
        if a.compauth == "fail":
            yield Hit(
                "AUTH_COMPAUTH_FAIL",
                f"Microsoft composite authentication failed (reason {a.compauth_reason})",
                f"compauth=fail reason={a.compauth_reason}",
            )
        if compauth_is_intraorg(a.compauth_reason) and a.compauth != "pass":
            yield Hit(
                "AUTH_COMPAUTH_INTRAORG",
                f"compauth reason {a.compauth_reason}: Microsoft judged this an intra-organisation spoof",
                f"compauth={a.compauth} reason={a.compauth_reason}",
            )
    yield from _forged(f)


def _forged(f: Facts) -> Iterator[Hit]:
    hops = f.hops
    if hops is None:
        return
    for ar in hops.impersonating_results:
        yield Hit(
            "AUTH_FORGED_RESULTS",
            f"Authentication-Results below the trusted hop claims the receiver's id {ar.authserv_id}",
            ar.raw[:200],
        )
    for ar in hops.untrusted_results:
        for res in ar.results:
            if res.result not in _CLAIMS_PASS or res.method not in (
                "spf",
                "dkim",
                "dmarc",
                "compauth",
            ):
                continue
            domain = (
                res.prop("header.from") or res.prop("header.d") or res.prop("smtp.mailfrom") or ""
            )
            domain = domain.rsplit("@", 1)[-1].lower()
            if res.method == "compauth":
                domain = f.header_from.domain if f.header_from else ""
            if domain and f.accepted.matches(domain) and not f.auth.proof_for(domain):
                yield Hit(
                    "AUTH_FORGED_RESULTS",
                    f"untrusted Authentication-Results claims {res.method}={res.result} for {domain}, "
                    "which the receiver's own results do not confirm",
                    ar.raw[:200],
                )
                break
