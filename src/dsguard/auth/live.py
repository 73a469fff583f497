"""SPF + DKIM + DMARC for one accepted message, as the SMTP gateway needs them.

:func:`authenticate` runs the three checks through the gateway's resolver and returns the
results together with the :class:`~dsguard.auth.summary.AuthSummary` the engine reads, so a
live message is judged exactly like a file whose receiver wrote the same
``Authentication-Results``. :func:`authentication_results_header` writes that header
(RFC 8601) with the ``authres`` library; ``dsguard.auth.results`` reads it back.

Synchronous on purpose: the gateway calls it through ``asyncio.to_thread``.

SECURITY: every value written into the header that came from the message or the sender's DNS
(the MAIL FROM/HELO domain, ``d=``, ``s=``, the From domain, reasons) is checked against a
strict domain pattern (else left out) or reduced to printable ASCII without ``@``, because
``authres`` writes values containing ``@`` unquoted: hostile input cannot add a
``; dkim=pass`` of its own to the header. Result words are checked too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from authres import (  # type: ignore[import-untyped]
    AuthenticationResultsHeader,
    DKIMAuthenticationResult,
    SPFAuthenticationResult,
)
from authres.dmarc import DMARCAuthenticationResult  # type: ignore[import-untyped]

from dsguard.auth.dkim import DkimResult, verify_dkim
from dsguard.auth.dmarc import DmarcResult, evaluate_dmarc
from dsguard.auth.resolver import Resolver
from dsguard.auth.spf import SpfResult, check_spf
from dsguard.auth.summary import AuthSummary

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_REASON_UNSAFE = re.compile(r"[^\x20-\x3f\x41-\x7e]")  # printable ASCII without "@"


@dataclass(frozen=True, slots=True)
class LiveAuth:
    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult | None
    summary: AuthSummary


def _domain(value: str) -> str | None:
    value = value.strip().rstrip(".")
    return value.lower() if value and len(value) <= 253 and _DOMAIN.match(value) else None


def _word(result: str) -> str:
    # Results come from our own fixed sets; anything else would be a bug, reported as such.
    return result if re.fullmatch(r"[a-z]{1,16}", result) else "permerror"


def _reason(text: str) -> str | None:
    cleaned = _REASON_UNSAFE.sub("?", text).strip()[:200]
    return cleaned or None


def _authserv_id(value: str) -> str:
    # Our own configuration, but it opens the header: keep it a plain host-name token.
    cleaned = re.sub(r"[^A-Za-z0-9.-]", "", value)
    return cleaned or "localhost"


def _spf_clause(spf: SpfResult) -> SPFAuthenticationResult:
    # RFC 8601 section 2.7.2: smtp.mailfrom for the MAIL FROM identity, smtp.helo when the
    # null sender made HELO the checked identity. The domain is what SPF evaluated (and what
    # DMARC aligns); Exchange Online writes the same domain-only form.
    domain = _domain(spf.domain)
    if spf.identity == "helo":
        return SPFAuthenticationResult(result=_word(spf.result), smtp_helo=domain)
    return SPFAuthenticationResult(result=_word(spf.result), smtp_mailfrom=domain)


def _dkim_clause(sig: DkimResult) -> DKIMAuthenticationResult:
    return DKIMAuthenticationResult(
        result=_word(sig.result),
        reason=_reason(sig.reason) if sig.result != "pass" else None,
        header_d=_domain(sig.domain),
        header_s=_domain(sig.selector),
    )


def authentication_results_header(authserv_id: str, live: LiveAuth) -> str:
    """The value of an RFC 8601 ``Authentication-Results`` header for ``live``.

    ``spf`` carries ``smtp.mailfrom`` (``smtp.helo`` for the null sender), each ``dkim``
    ``header.d``/``header.s`` and, unless it passed, a ``reason``; ``dkim=none`` when the
    message is unsigned; ``dmarc`` (when evaluated) ``header.from`` and, when it failed,
    ``policy.dmarc`` with the disposition.
    """
    return _header_value(authserv_id, live.spf, live.dkim, live.dmarc)


# The value is a pure function of the results, and the next message of a sender mostly has
# the same ones: the authres objects are built once per combination (bounded).
@lru_cache(maxsize=1024)
def _header_value(
    authserv_id: str, spf: SpfResult, dkim: tuple[DkimResult, ...], dmarc: DmarcResult | None
) -> str:
    results: list[object] = [_spf_clause(spf)]
    if dkim:
        results.extend(_dkim_clause(sig) for sig in dkim)
    else:
        results.append(DKIMAuthenticationResult(result="none"))
    if dmarc is not None:
        results.append(
            DMARCAuthenticationResult(
                result=_word(dmarc.result),
                header_from=_domain(dmarc.from_domain),
                policy=dmarc.disposition if dmarc.result == "fail" else None,
            )
        )
    header = AuthenticationResultsHeader(
        authserv_id=_authserv_id(authserv_id), results=results
    )
    return str(header.header_value())


def authenticate(
    message: bytes,
    *,
    client_ip: str,
    helo: str,
    mail_from: str,
    header_from_domain: str | None,
    resolver: Resolver,
    authserv_id: str,
) -> LiveAuth:
    """SPF for (client_ip, MAIL FROM, HELO), DKIM for the message, DMARC for the From domain
    (skipped when the gateway found no single From domain). Never raises for DNS trouble or
    hostile messages."""
    spf = check_spf(client_ip, mail_from, helo, resolver)
    dkim = tuple(verify_dkim(message, resolver))
    dmarc = evaluate_dmarc(header_from_domain, spf, dkim, resolver) if header_from_domain else None
    summary = AuthSummary(
        source=f"Authentication-Results ({_authserv_id(authserv_id)})",
        spf=spf.result,
        spf_domain=spf.domain or None,
        dkim=tuple((d.result, d.domain) for d in dkim),
        dmarc=dmarc.result if dmarc else None,
        dmarc_from=dmarc.from_domain if dmarc else None,
        dmarc_action=dmarc.disposition if dmarc else None,
        compauth=None,
        evidence=_header_value(authserv_id, spf, dkim, dmarc),
    )
    return LiveAuth(spf=spf, dkim=dkim, dmarc=dmarc, summary=summary)
