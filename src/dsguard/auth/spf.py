"""SPF (RFC 7208) for the live gateway: pyspf, with every DNS lookup through our resolver.

pyspf looks names up through its module-level function ``spf.DNSLookup``. That global is
replaced once, at import, by :func:`_lookup`, which asks the :class:`Resolver` held in a
:class:`contextvars.ContextVar` that :func:`check_spf` sets around each evaluation. Two
resolvers can therefore be used at the same time from different threads or tasks
(``asyncio.to_thread`` copies the context), and with no resolver bound a lookup is a temperror,
never a silent fall-back to the system resolver.

Everything else is pyspf's: the RFC 7208 section 4.6.4 limits (10 DNS-querying mechanisms,
10 MX/PTR names, 2 void lookups), macro expansion, the overall time budget.

SECURITY: the SPF record, its includes and the ``exp=`` text come from the sender's DNS.
pyspf bounds the work (lookup and void-lookup limits, ``SPF_TIME_LIMIT`` for all lookups
together, each lookup also bounded by the resolver's own lifetime); :func:`check_spf` never
raises, and the explanation it returns is cut to ``MAX_EXPLANATION`` printable characters
because it may end up in an SMTP reply.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import spf as pyspf  # type: ignore[import-untyped]

from dsguard.auth.resolver import DnsPermError, DnsTempError, Resolver

SPF_TIME_LIMIT = 20.0  # RFC 7208 section 4.6.4: at least 20 seconds for the whole evaluation
MAX_EXPLANATION = 300
MAX_IDENTITY = 320  # RFC 5321 section 4.5.3.1.3: a path is at most 256 octets; leave slack

RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})
DEFAULT_FAIL_EXPLANATION: str = pyspf.EXPLANATIONS["fail"]

_active: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "dsguard_spf_resolver", default=None
)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # pass, fail, softfail, neutral, none, temperror, permerror
    domain: str  # the domain checked: MAIL FROM's, or HELO's for the null sender
    explanation: str  # pyspf's text, or the domain's exp= explanation for a fail
    identity: str = "mailfrom"  # "helo" when the null sender made HELO the checked identity


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 30.0) -> Iterator[Any]:
    """pyspf's ``DNSLookup`` contract: ``((owner, type), value)`` for every answer record.

    CNAME records are passed on with their owners so pyspf follows the chain itself and keeps
    counting it against its CNAME limit. TXT values are the tuple of character-strings (bytes)
    pyspf joins; MX values ``(preference, exchange)``; A/AAAA/PTR text.
    """
    resolver = _active.get()
    if resolver is None:
        raise pyspf.TempError("DNS: no resolver bound for this SPF check")
    try:
        records = resolver.query(name, qtype, lifetime=float(timeout))
    except DnsTempError as exc:
        raise pyspf.TempError(f"DNS {exc}") from exc
    except DnsPermError:
        return iter(())  # a name that cannot exist has no records (void lookup for pyspf)
    return iter([((r.name, r.rdtype), r.value) for r in records])


pyspf.DNSLookup = _lookup


def _clean(text: str, limit: int = MAX_EXPLANATION) -> str:
    return _UNPRINTABLE.sub("?", text)[:limit]


def _identity(mail_from: str) -> str:
    """``<joe@contoso.com>`` / ``joe@contoso.com`` / ``<>`` → the bare path ("" for null)."""
    value = mail_from.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def check_spf(ip: str, mail_from: str, helo: str, resolver: Resolver) -> SpfResult:
    """Evaluate the MAIL FROM identity of RFC 7208; the null sender is checked as
    ``postmaster@<helo>`` (section 2.4). Never raises."""
    sender = _identity(mail_from)[:MAX_IDENTITY]
    helo = helo.strip()[:MAX_IDENTITY]
    domain = (sender.rpartition("@")[2] if sender else helo).lower().rstrip(".")
    identity = "mailfrom" if sender else "helo"
    if not sender and not helo:
        return SpfResult("none", "", "no MAIL FROM and no HELO identity to check", identity)
    token = _active.set(resolver)
    try:
        query = pyspf.query(i=ip.strip(), s=sender, h=helo, querytime=SPF_TIME_LIMIT)
        domain = str(query.o or domain).lower().rstrip(".")
        result, _code, explanation = query.check()
    except pyspf.PermError as exc:  # e.g. the client IP is not an IP address
        return SpfResult("permerror", domain, _clean(f"SPF Permanent Error: {exc}"), identity)
    except pyspf.TempError as exc:
        return SpfResult("temperror", domain, _clean(f"SPF Temporary Error: {exc}"), identity)
    except Exception as exc:  # a pyspf bug on hostile input must not reach the gateway
        why = _clean(f"SPF evaluation error: {type(exc).__name__}")
        return SpfResult("permerror", domain, why, identity)
    finally:
        _active.reset(token)
    result = str(result).lower()
    if result not in RESULTS:  # pyspf's "ambiguous" exists only in its harsh mode
        result = "permerror"
    return SpfResult(result, domain, _clean(str(explanation or "")), identity)
