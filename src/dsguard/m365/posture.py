"""DNS posture of mail domains against Direct Send spoofing: MX, SPF, DMARC, DKIM, MTA-STS.

For each domain, :func:`check_domain` first *collects* what DNS says (every lookup through the
caller's :class:`~dsguard.auth.resolver.Resolver`, so tests aim it at a loopback ``nsd`` and
production at the system's resolvers), then *judges* the facts with pure functions into
:class:`Check` items, each with a severity and, where one exists, the concrete fix (the exact
record to publish, or the Exchange Online command). The domain's rating is the worst severity:
``critical`` > ``poor`` (a ``high`` check) > ``fair`` (a ``warning``) > ``good``; a domain whose
lookups failed and showed nothing worse than a warning is ``unknown``.

What is checked, and why it matters for Direct Send:

- MX: Exchange Online (``*.mail.protection.outlook.com``, ``*.mx.microsoft``, the sovereign
  clouds), a third-party gateway (small table of vendors), or something else. When the MX is
  not Exchange Online but the tenant endpoint ``<domain-with-dashes>.mail.protection.outlook.com``
  resolves, anyone can send straight to Exchange Online and skip the gateway unless a Partner
  inbound connector restricts inbound mail to the gateway ("Ghost-Sender", InfoGuard Labs 2026;
  Microsoft's RejectDirectSend FAQ: RDS is not a way to accept mail only from the gateway).
- SPF (RFC 7208): one record, the ``all`` qualifier, the Microsoft 365 include, the limit of 10
  DNS-querying terms counted through the whole include/redirect tree (section 4.6.4, with the
  path of the term that goes over), void lookups, syntax errors.
- DMARC (RFC 7489): the policy at ``_dmarc.<domain>`` or the organisational domain (section
  6.6.3), ``p``/``sp``/``pct``, reporting, alignment modes.
- DKIM: Microsoft 365's ``selector1``/``selector2`` (CNAMEs into ``<tenant>.onmicrosoft.com``
  or keys), key type and size (RFC 8301: at least 1024 bits, 2048 recommended).
- MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) TXT records only: the HTTPS policy is not
  fetched, nothing but DNS leaves the machine.

checkdmarc is not used: the project's virtualenv does not have it (it is not a dependency in
pyproject.toml) and it would bring requests/httpx/pyleri/expiringdict with it, keep its own
process-wide DNS cache and fetch MTA-STS/BIMI over HTTPS; our own Resolver already gives the
temperror/permerror split and the limits this module needs.

SECURITY: every record comes from DNS that the domain owner, or whoever controls an included
domain, writes. Records are parsed without exceptions and cut to ``MAX_RECORD`` characters;
a record has at most ``MAX_TERMS`` SPF terms; the SPF walk follows at most
``MAX_FOLLOWED_LOOKUPS`` DNS-querying terms and makes at most ``MAX_SPF_QUERIES`` queries
(cycles are detected); CNAME chains for DKIM are followed at most ``MAX_CNAME_HOPS`` times;
after ``MAX_DNS_ERRORS`` failed lookups for a domain the remaining ones are skipped, so a
black-holed zone costs a bounded number of resolver lifetimes. Record text shown to the user is
stripped of control characters.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dsguard.auth.dmarc import DmarcPolicy, parse_record
from dsguard.auth.resolver import DnsPermError, DnsRecord, DnsTempError, Resolver
from dsguard.policy.domains import org_domain

SCHEMA = "dsguard.posture/1"

MAX_RECORD = 4096
MAX_TERMS = 100
SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4
SPF_VOID_LIMIT = 2  # RFC 7208 section 4.6.4
SPF_MX_NAMES_LIMIT = 10  # RFC 7208 section 4.6.4
MAX_FOLLOWED_LOOKUPS = 30
MAX_SPF_QUERIES = 60
MAX_CNAME_HOPS = 8
MAX_DNS_ERRORS = 3

SEVERITIES = ("ok", "info", "warning", "high", "critical")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
RATINGS = ("good", "fair", "poor", "critical", "unknown")
FAILING_RATINGS = frozenset({"poor", "critical"})

#: MX host suffix → which Exchange Online. Microsoft documents the tenant MX as
#: ``<domain-with-dashes>.mail.protection.outlook.com``; domains added since 2024/2026 get
#: ``<domain-with-dashes>.<zone>.mx.microsoft`` (the DNSSEC-signed endpoint, MC1048624).
EXCHANGE_ONLINE_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("mail.protection.outlook.com", "Exchange Online (worldwide)"),
    ("mx.microsoft", "Exchange Online (worldwide, mx.microsoft)"),
    ("mail.protection.office365.us", "Exchange Online (GCC High / DoD)"),
    ("mail.protection.partner.outlook.cn", "Exchange Online operated by 21Vianet"),
)
TENANT_ENDPOINT_SUFFIX = "mail.protection.outlook.com"

#: MX host suffix → third-party mail gateway commonly put in front of Exchange Online.
GATEWAY_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("pphosted.com", "Proofpoint"),
    ("ppe-hosted.com", "Proofpoint Essentials"),
    ("mimecast.com", "Mimecast"),
    ("mimecast.co.za", "Mimecast"),
    ("mimecast-offshore.com", "Mimecast"),
    ("barracudanetworks.com", "Barracuda Email Protection"),
    ("iphmx.com", "Cisco Secure Email (IronPort)"),
    ("trendmicro.com", "Trend Micro Email Security"),
    ("trendmicro.eu", "Trend Micro Email Security"),
    ("hydra.sophos.com", "Sophos Email"),
    ("messagelabs.com", "Symantec Email Security.cloud"),
    ("mailcontrol.com", "Forcepoint Email Security"),
    ("hornetsecurity.com", "Hornetsecurity"),
    ("antispamcloud.com", "N-able Mail Assure (SpamExperts)"),
    ("fireeyecloud.com", "Trellix Email Security"),
    ("google.com", "Google Workspace"),
    ("googlemail.com", "Google Workspace"),
)

#: The SPF includes Microsoft publishes for Exchange Online's outbound servers, per cloud.
M365_SPF_INCLUDES = (
    "spf.protection.outlook.com",
    "spf.protection.office365.us",
    "spf.protection.partner.outlook.cn",
)
M365_SPF_INCLUDE = M365_SPF_INCLUDES[0]
M365_DKIM_SELECTORS = ("selector1", "selector2")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_SPF_VERSION = re.compile(r"^v=spf1(?:\s|$)", re.IGNORECASE)
_DMARC_VERSION = re.compile(r"^v\s*=\s*DMARC1\s*(?:;|$)")
_STS_VERSION = re.compile(r"^v=STSv1\s*(?:;|$)")
_TLSRPT_VERSION = re.compile(r"^v=TLSRPTv1\s*(?:;|$)")
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # RFC 8461 section 3.1
_MACRO = re.compile(r"%(?:\{[slodiphcrtvSLODIPHCRTV]\d*r?[.\-+,/_=]*\}|%|_|-)")
_TERM = re.compile(
    r"^(?P<qualifier>[+\-~?]?)(?P<name>[A-Za-z][A-Za-z0-9_.-]*)(?P<rest>[:/].*)?$"
)
_MODIFIER = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)$")
_DUAL_CIDR = re.compile(r"^(?::(?P<domain>[^/]+))?(?:/(?P<v4>\d{1,2}))?(?://(?P<v6>\d{1,3}))?$")

_QUALIFIER_WORD = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def clean(text: str, limit: int = 600) -> str:
    """Record text for display: no control characters, bounded length."""
    out = _CONTROL.sub("?", text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def normalise_domain(value: str) -> str | None:
    """A lower-case A-label domain with at least two labels, or ``None``."""
    text = value.strip().rstrip(".").lower()
    if not text or len(text) > 253:
        return None
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return text if _DOMAIN.match(text) else None


def tenant_endpoint(domain: str) -> str:
    """Microsoft's documented tenant MX name: ``contoso.com`` → ``contoso-com.mail.protection
    .outlook.com`` (the name the campaign passes to ``Send-MailMessage -SmtpServer``)."""
    return f"{domain.replace('.', '-')}.{TENANT_ENDPOINT_SUFFIX}"


def _ends_with(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


def classify_mx_host(host: str) -> tuple[str, str]:
    """``("exchange_online" | "gateway" | "other", provider name or "")`` for an MX host."""
    name = host.lower().rstrip(".")
    for suffix, provider in EXCHANGE_ONLINE_SUFFIXES:
        if _ends_with(name, suffix):
            return "exchange_online", provider
    for suffix, provider in GATEWAY_SUFFIXES:
        if _ends_with(name, suffix):
            return "gateway", provider
    return "other", ""


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One judged item. ``id`` is ``<area>.<what>`` and stable for scripts."""

    id: str
    severity: str  # one of SEVERITIES
    summary: str
    evidence: str = ""
    fix: str = ""

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "area": self.area,
            "severity": self.severity,
            "summary": self.summary,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass(slots=True)
class DomainPosture:
    domain: str
    rating: str
    checks: list[Check]
    errors: list[str]  # lookups that failed (temporary DNS errors)
    facts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "rating": self.rating,
            "errors": list(self.errors),
            "checks": [c.to_dict() for c in self.checks],
            "facts": self.facts,
        }


def rate(checks: Iterable[Check], errors: Sequence[str]) -> str:
    worst = max((_RANK.get(c.severity, 0) for c in checks), default=0)
    if worst >= _RANK["critical"]:
        return "critical"
    if worst >= _RANK["high"]:
        return "poor"
    if errors:
        return "unknown"  # a failed lookup may hide something worse than what was seen
    if worst >= _RANK["warning"]:
        return "fair"
    return "good"


# -- DNS with a per-domain failure budget ------------------------------------------------------

_T = TypeVar("_T")


class _Dns:
    """The resolver for one domain: temporary failures are recorded, not raised, and after
    ``MAX_DNS_ERRORS`` of them the remaining lookups are skipped (returned as ``None``)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.errors: list[str] = []
        self.skipped = 0

    def _ask(self, call: Callable[[str], list[_T]], name: str) -> list[_T] | None:
        if len(self.errors) >= MAX_DNS_ERRORS:
            self.skipped += 1
            return None
        try:
            return call(name)
        except DnsTempError as exc:
            self.errors.append(str(exc))
            return None
        except DnsPermError:
            return []  # a name that cannot be asked has no records

    def txt(self, name: str) -> list[str] | None:
        return self._ask(self.resolver.txt, name)

    def mx(self, name: str) -> list[tuple[int, str]] | None:
        return self._ask(self.resolver.mx, name)

    def a(self, name: str) -> list[str] | None:
        return self._ask(self.resolver.a, name)

    def aaaa(self, name: str) -> list[str] | None:
        return self._ask(self.resolver.aaaa, name)

    def txt_records(self, name: str) -> list[DnsRecord] | None:
        return self._ask(lambda n: self.resolver.query(n, "TXT"), name)

    def cname(self, name: str) -> str | None:
        """The target of a CNAME at ``name`` ("" when there is none)."""
        records = self._ask(lambda n: self.resolver.query(n, "CNAME"), name)
        targets = [str(r.value) for r in records or [] if r.rdtype == "CNAME"]
        return targets[0] if targets else ("" if records is not None else None)


# -- collecting: MX and the tenant endpoint ----------------------------------------------------


@dataclass(slots=True)
class MxFacts:
    looked_up: bool = False
    hosts: list[tuple[int, str]] = field(default_factory=list)
    null_mx: bool = False
    kind: str = "unknown"  # exchange_online, gateway, other, none, null, unknown
    providers: list[str] = field(default_factory=list)
    tenant_endpoint: str = ""
    tenant_addresses: list[str] | None = None  # None: not looked up or failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hosts": [
                {"preference": pref, "host": host, "type": classify_mx_host(host)[0],
                 "provider": classify_mx_host(host)[1]}
                for pref, host in self.hosts
            ],
            "null_mx": self.null_mx,
            "tenant_endpoint": self.tenant_endpoint,
            "tenant_endpoint_addresses": self.tenant_addresses,
        }


def collect_mx(domain: str, dns: _Dns) -> MxFacts:
    facts = MxFacts(tenant_endpoint=tenant_endpoint(domain))
    answer = dns.mx(domain)
    if answer is None:
        return facts
    facts.looked_up = True
    facts.hosts = [(pref, host) for pref, host in answer if host]
    facts.null_mx = any(not host for _pref, host in answer)  # RFC 7505: "MX 0 ."
    kinds = [classify_mx_host(host) for _pref, host in facts.hosts]
    facts.providers = sorted({provider for _kind, provider in kinds if provider})
    if not facts.hosts:
        facts.kind = "null" if facts.null_mx else "none"
    elif all(kind == "exchange_online" for kind, _p in kinds):
        facts.kind = "exchange_online"
    elif any(kind == "gateway" for kind, _p in kinds):
        facts.kind = "gateway"
    else:
        facts.kind = "other"
    if facts.kind in ("gateway", "other", "none"):
        # Is there an Exchange Online tenant behind it? Its endpoint name is predictable.
        facts.tenant_addresses = dns.a(facts.tenant_endpoint)
    return facts


# -- collecting: SPF ---------------------------------------------------------------------------


@dataclass(slots=True)
class SpfProblem:
    severity: str
    code: str
    summary: str
    evidence: str = ""


@dataclass(slots=True)
class SpfFacts:
    looked_up: bool = False
    records: list[str] = field(default_factory=list)
    record: str = ""
    all_qualifier: str | None = None  # "+", "-", "~", "?" or None when no all (and no redirect)
    all_via_redirect: str = ""  # the domain whose all applies, when reached by redirect
    redirect_unfollowed: bool = False  # a redirect with a macro, or past the walk's limits
    lookups: int = 0
    lookups_complete: bool = True
    void_lookups: int = 0
    exceeded_at: list[str] = field(default_factory=list)  # path to the 11th lookup
    includes: list[str] = field(default_factory=list)  # every include target in the tree
    problems: list[SpfProblem] = field(default_factory=list)
    dns_failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "records": list(self.records),
            "all": (self.all_qualifier + "all") if self.all_qualifier else None,
            "all_via_redirect": self.all_via_redirect or None,
            "lookups": self.lookups,
            "lookups_complete": self.lookups_complete,
            "lookup_limit": SPF_LOOKUP_LIMIT,
            "exceeded_at": " → ".join(self.exceeded_at) or None,
            "void_lookups": self.void_lookups,
            "includes": list(self.includes),
        }


def spf_records(txts: Iterable[str]) -> list[str]:
    """The ``v=spf1`` records among TXT strings (RFC 7208 section 4.5)."""
    return [t[:MAX_RECORD] for t in txts if _SPF_VERSION.match(t)]


@dataclass(slots=True)
class _Term:
    text: str
    qualifier: str
    name: str  # lower-case mechanism or modifier name
    modifier: bool
    domain: str | None = None  # the target domain-spec, when there is one
    macro: bool = False


def _domain_spec(spec: str) -> tuple[str | None, bool, str | None]:
    """``(domain, is_macro, problem)`` for an SPF domain-spec (RFC 7208 section 7.1)."""
    spec = spec.strip()
    if "%" in spec:
        stripped = _MACRO.sub("", spec)
        if "%" in stripped:
            return None, True, "malformed macro"
        return spec, True, None
    domain = normalise_domain(spec)
    if domain is None:
        return None, False, "not a domain name"
    if domain.rsplit(".", 1)[-1].isdigit():
        return None, False, "the last label is numeric"
    return domain, False, None


def parse_spf_terms(record: str) -> tuple[list[_Term], list[str]]:
    """The terms of one SPF record and the syntax problems (each one a permerror)."""
    terms: list[_Term] = []
    problems: list[str] = []
    words = record.split()[1:]
    if len(words) > MAX_TERMS:
        problems.append(f"{len(words)} terms (only the first {MAX_TERMS} were read)")
        words = words[:MAX_TERMS]
    seen_modifiers: set[str] = set()
    for word in words:
        modifier = _MODIFIER.match(word)
        if modifier and not re.match(r"^[+\-~?]", word):
            name = modifier.group("name").lower()
            value = modifier.group("value")
            term = _Term(word, "", name, True)
            if name in ("redirect", "exp"):
                if name in seen_modifiers:
                    problems.append(f"'{name}=' appears twice (RFC 7208 section 6)")
                seen_modifiers.add(name)
                domain, macro, why = _domain_spec(value)
                if why:
                    problems.append(f"'{clean(word, 80)}': {why}")
                term.domain, term.macro = domain, macro
            terms.append(term)
            continue
        match = _TERM.match(word)
        if not match:
            problems.append(f"'{clean(word, 80)}' is not an SPF term")
            continue
        qualifier = match.group("qualifier") or "+"
        name = match.group("name").lower()
        rest = match.group("rest") or ""
        term = _Term(word, qualifier, name, False)
        problem = _check_mechanism(term, rest)
        if problem:
            problems.append(f"'{clean(word, 80)}': {problem}")
        terms.append(term)
    return terms, problems


def _check_mechanism(term: _Term, rest: str) -> str | None:
    """Validate one mechanism's argument and fill ``term.domain``; the problem or ``None``."""
    name = term.name
    if name == "all":
        return "'all' takes no argument" if rest else None
    if name in ("include", "exists"):
        if not rest.startswith(":") or len(rest) < 2:
            return f"'{name}' needs ':domain'"
        term.domain, term.macro, why = _domain_spec(rest[1:])
        return why
    if name in ("a", "mx"):
        match = _DUAL_CIDR.match(rest)
        if not match:
            return "expected ':domain', '/prefix' or '//prefix6'"
        if match.group("v4") and int(match.group("v4")) > 32:
            return "IPv4 prefix over 32"
        if match.group("v6") and int(match.group("v6")) > 128:
            return "IPv6 prefix over 128"
        if match.group("domain"):
            term.domain, term.macro, why = _domain_spec(match.group("domain"))
            return why
        return None
    if name == "ptr":
        if rest.startswith(":"):
            term.domain, term.macro, why = _domain_spec(rest[1:])
            return why
        return "expected ':domain'" if rest else None
    if name in ("ip4", "ip6"):
        return _check_network(name, rest)
    return f"unknown mechanism '{name}'"


def _check_network(name: str, rest: str) -> str | None:
    if not rest.startswith(":"):
        return f"'{name}' needs ':address'"
    address, _sep, prefix = rest[1:].partition("/")
    try:
        if name == "ip4":
            ipaddress.IPv4Address(address)
            ipaddress.IPv4Network(f"{address}/{prefix or 32}", strict=False)
        else:
            ipaddress.IPv6Address(address)
            ipaddress.IPv6Network(f"{address}/{prefix or 128}", strict=False)
    except ValueError:
        return f"not a valid {'IPv4' if name == 'ip4' else 'IPv6'} address or prefix"
    return None


def network_size(term: _Term) -> int | None:
    """The prefix length of an ip4/ip6 term (``None`` when it is not one or is invalid)."""
    if term.name not in ("ip4", "ip6"):
        return None
    _address, _sep, prefix = term.text.partition(":")[2].partition("/")
    if not prefix:
        return 32 if term.name == "ip4" else 128
    return int(prefix) if prefix.isdigit() else None


class _SpfWalker:
    """Counts RFC 7208 section 4.6.4's DNS-querying terms through the include/redirect tree,
    the way a receiver evaluating a non-matching IP would meet them (the worst case)."""

    def __init__(self, dns: _Dns, facts: SpfFacts) -> None:
        self.dns = dns
        self.facts = facts
        self.queries = 0
        self.cache: dict[str, list[str] | None] = {}

    def _records(self, domain: str) -> list[str] | None:
        if domain not in self.cache:
            self.queries += 1
            txts = self.dns.txt(domain)
            self.cache[domain] = None if txts is None else spf_records(txts)
        return self.cache[domain]

    def _can_query(self) -> bool:
        return (
            self.queries < MAX_SPF_QUERIES
            and self.facts.lookups <= MAX_FOLLOWED_LOOKUPS
            and not self.facts.dns_failed
        )

    def _problem(self, severity: str, code: str, summary: str, evidence: str = "") -> None:
        self.facts.problems.append(SpfProblem(severity, code, summary, clean(evidence)))

    def _count(self, path: list[str], term: str) -> None:
        self.facts.lookups += 1
        if self.facts.lookups == SPF_LOOKUP_LIMIT + 1:
            self.facts.exceeded_at = [*path, term]

    def _void(self, path: list[str], term: str) -> None:
        self.facts.void_lookups += 1
        self._problem(
            "warning", "void_lookup",
            f"'{term}' finds no DNS records (a void lookup; RFC 7208 section 4.6.4 allows two)",
            " → ".join([*path, term]),
        )

    def _addresses(self, name: str) -> list[str] | None:
        self.queries += 1
        found = self.dns.a(name)
        if found:
            return found
        self.queries += 1
        found6 = self.dns.aaaa(name)
        if found is None and found6 is None:
            return None
        return (found or []) + (found6 or [])

    def walk(self, domain: str, record: str, path: list[str], stack: tuple[str, ...]) -> str | None:
        """Walk one record; returns its effective ``all`` qualifier (following redirect)."""
        terms, syntax = parse_spf_terms(record)
        where = " → ".join(path)
        for problem in syntax:
            self._problem("high", "syntax", f"syntax error in the SPF record of {domain}: "
                          f"{problem} (a permerror: receivers treat SPF as broken)", where)
        all_qualifier: str | None = None
        redirect: _Term | None = None
        for term in terms:
            if term.modifier:
                if term.name == "redirect":
                    redirect = term
                continue
            if term.name == "all":
                all_qualifier = term.qualifier
            elif term.name in ("include", "a", "mx", "ptr", "exists"):
                self._mechanism(domain, term, path, stack)
            elif term.name in ("ip4", "ip6") and term.qualifier == "+":
                self._network(domain, term, path)
        if redirect is not None and all_qualifier is None:
            # RFC 7208 section 6.1: redirect applies only when the record has no "all".
            self._count(path, redirect.text)
            target = redirect.domain
            if not target or redirect.macro or not self._can_query():
                # A macro needs a real message; past the limits nothing more is asked.
                self.facts.lookups_complete = False
                self.facts.redirect_unfollowed = True
                return None
            if target in stack:
                self._problem("high", "loop", f"redirect loop back to {target}",
                              " → ".join([*path, redirect.text]))
                return None
            found = self._follow(target, [*path, redirect.text], stack, "redirect")
            if found is not None:
                self.facts.all_via_redirect = self.facts.all_via_redirect or target
            return found
        return all_qualifier

    def _network(self, domain: str, term: _Term, path: list[str]) -> None:
        prefix = network_size(term)
        if prefix is None:
            return
        broad = 8 if term.name == "ip4" else 16
        if prefix == 0:
            self._problem("critical", "open_network",
                          f"'{term.text}' in the SPF of {domain} authorises every "
                          f"{'IPv4' if term.name == 'ip4' else 'IPv6'} address: anyone passes SPF",
                          " → ".join([*path, term.text]))
        elif prefix < broad:
            self._problem("high", "broad_network",
                          f"'{term.text}' in the SPF of {domain} authorises a huge range of "
                          "addresses, most of which are not your senders",
                          " → ".join([*path, term.text]))

    def _mechanism(self, domain: str, term: _Term, path: list[str], stack: tuple[str, ...]) -> None:
        self._count(path, term.text)
        errors_before = len(self.dns.errors)
        if term.name == "ptr":
            self._problem("warning", "ptr",
                          f"'{term.text}': the ptr mechanism is slow and unreliable "
                          "(RFC 7208 section 5.5: SHOULD NOT be used)",
                          " → ".join([*path, term.text]))
            return
        if term.macro or term.name == "exists" or not self._can_query():
            if term.name == "include":
                self.facts.lookups_complete = False  # what the include holds is unknown
            return  # macros need the sender and IP of a real message: counted, not followed
        target = term.domain or domain
        here = [*path, term.text]
        if term.name == "include":
            if target in stack:
                self._problem("high", "loop", f"include loop back to {target}", " → ".join(here))
                return
            self.facts.includes.append(target)
            qualifier = self._follow(target, here, stack, "include")
            if qualifier == "+":
                self._problem(
                    "critical", "include_pass_all",
                    f"'include:{target}' ends in +all: the include matches every IP, so anyone "
                    f"passes SPF for the domains that include it",
                    " → ".join(here),
                )
        elif term.name == "a":
            found = self._addresses(target)
            if found == []:
                self._void(path, term.text)
        elif term.name == "mx":
            self.queries += 1
            hosts = self.dns.mx(target)
            if hosts == []:
                self._void(path, term.text)
            elif hosts and len(hosts) > SPF_MX_NAMES_LIMIT:
                self._problem("high", "mx_names",
                              f"'{term.text}' has {len(hosts)} MX names; RFC 7208 section "
                              "4.6.4 allows 10 (permerror)", " → ".join(here))
        if len(self.dns.errors) > errors_before:
            self.facts.dns_failed = True
            self.facts.lookups_complete = False

    def _follow(
        self, target: str, path: list[str], stack: tuple[str, ...], how: str
    ) -> str | None:
        records = self._records(target)
        if records is None:
            self.facts.dns_failed = True
            self.facts.lookups_complete = False
            return None
        if not records:
            self.facts.void_lookups += 1
            self._problem("high", "include_missing",
                          f"'{how}:{target}' has no SPF record: receivers return permerror "
                          "(RFC 7208 sections 5.2 and 6.1)", " → ".join(path))
            return None
        if len(records) > 1:
            self._problem("high", "include_multiple",
                          f"{target} publishes {len(records)} SPF records: permerror",
                          " → ".join(path))
            return None
        return self.walk(target, records[0], path, (*stack, target))


def collect_spf(domain: str, dns: _Dns) -> SpfFacts:
    facts = SpfFacts()
    txts = dns.txt(domain)
    if txts is None:
        facts.dns_failed = True
        return facts
    facts.looked_up = True
    facts.records = [clean(r, MAX_RECORD) for r in spf_records(txts)]
    if len(facts.records) != 1:
        return facts
    facts.record = facts.records[0]
    walker = _SpfWalker(dns, facts)
    walker.cache[domain] = spf_records(txts)
    facts.all_qualifier = walker.walk(domain, spf_records(txts)[0], [domain], (domain,))
    if facts.lookups > MAX_FOLLOWED_LOOKUPS or walker.queries >= MAX_SPF_QUERIES:
        facts.lookups_complete = False
    if facts.dns_failed:
        facts.lookups_complete = False
    return facts


# -- collecting: DMARC ---------------------------------------------------------------------------


@dataclass(slots=True)
class DmarcFacts:
    looked_up: bool = False
    found_at: str = ""  # the domain whose _dmarc record applies ("" when none)
    records: list[str] = field(default_factory=list)
    record: str = ""
    policy: DmarcPolicy | None = None
    tags: dict[str, str] = field(default_factory=dict)
    effective: str = ""  # the policy that applies to this domain (p, or sp for a subdomain)

    def to_dict(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "found_at": self.found_at or None,
            "record": self.record or None,
            "records": list(self.records),
            "p": policy.p if policy else None,
            "sp": policy.sp if policy else None,
            "effective_policy": self.effective or None,
            "pct": policy.pct if policy else None,
            "rua": list(policy.rua) if policy else [],
            "ruf": [u.strip() for u in self.tags.get("ruf", "").split(",") if u.strip()],
            "adkim": policy.adkim if policy else None,
            "aspf": policy.aspf if policy else None,
        }


def dmarc_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record[:MAX_RECORD].split(";"):
        name, sep, value = part.partition("=")
        key = name.strip().lower()
        if sep and key and key not in tags:
            tags[key] = value.strip()
    return tags


def collect_dmarc(domain: str, dns: _Dns) -> DmarcFacts:
    """RFC 7489 section 6.6.3: the domain's own record, else the organisational domain's."""
    facts = DmarcFacts()
    candidates = [domain]
    org = org_domain(domain)
    if org and org != domain:
        candidates.append(org)
    for where in candidates:
        txts = dns.txt(f"_dmarc.{where}")
        if txts is None:
            return facts
        facts.looked_up = True
        records = [clean(t, MAX_RECORD) for t in txts if _DMARC_VERSION.match(t)]
        if not records:
            continue
        facts.found_at = where
        facts.records = records
        if len(records) == 1:
            facts.record = records[0]
            facts.tags = dmarc_tags(records[0])
            facts.policy = parse_record(records[0], where)
            if facts.policy is not None:
                subdomain = where != domain
                facts.effective = (
                    facts.policy.sp if subdomain and facts.policy.sp else facts.policy.p
                )
        return facts
    return facts


# -- collecting: DKIM (Microsoft 365 selectors) ---------------------------------------------------


@dataclass(slots=True)
class DkimSelector:
    selector: str
    name: str
    cname: str = ""  # the last CNAME target, when the selector is an alias
    key_type: str = ""  # rsa, ed25519
    key_bits: int = 0
    status: str = "absent"  # absent, key, revoked, invalid, cname_unresolved, error
    problem: str = ""
    testing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "name": self.name,
            "cname": self.cname or None,
            "status": self.status,
            "key_type": self.key_type or None,
            "key_bits": self.key_bits or None,
            "problem": self.problem or None,
        }


def _dkim_key(record: str, found: DkimSelector) -> None:
    """Fill key type and size from a DKIM key record (RFC 6376 section 3.6.1)."""
    tags: dict[str, str] = {}
    for part in record[:MAX_RECORD].split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            tags.setdefault(name.strip().lower(), value.strip())
    if "v" in tags and tags["v"] != "DKIM1":
        found.status, found.problem = "invalid", f"v={clean(tags['v'], 20)} is not DKIM1"
        return
    found.key_type = tags.get("k", "rsa").lower() or "rsa"
    found.testing = "y" in [f.strip() for f in tags.get("t", "").split(":")]
    data = re.sub(r"\s+", "", tags.get("p", ""))
    if "p" not in tags:
        found.status, found.problem = "invalid", "no p= tag"
        return
    if not data:
        found.status = "revoked"  # RFC 6376 section 3.6.1: an empty p= revokes the key
        return
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        found.status, found.problem = "invalid", "p= is not base64"
        return
    if found.key_type == "ed25519":
        found.status, found.key_bits = "key", len(raw) * 8
        if len(raw) != 32:
            found.status, found.problem = "invalid", "an Ed25519 key is 32 bytes"
        return
    if found.key_type != "rsa":
        found.status, found.problem = "invalid", f"unknown key type k={clean(found.key_type, 20)}"
        return
    from dkim.crypto import parse_public_key  # type: ignore[import-untyped]

    try:
        parsed = parse_public_key(raw)
        bits = int(parsed["modulus"]).bit_length()
    except Exception:  # dkimpy's ASN.1 reader on hostile bytes: any failure means "unparsable"
        found.status, found.problem = "invalid", "the RSA key cannot be parsed"
        return
    found.status, found.key_bits = "key", bits


def collect_dkim(domain: str, dns: _Dns) -> list[DkimSelector]:
    out: list[DkimSelector] = []
    for selector in M365_DKIM_SELECTORS:
        name = f"{selector}._domainkey.{domain}"
        found = DkimSelector(selector, name)
        out.append(found)
        current = name
        for _hop in range(MAX_CNAME_HOPS + 1):
            records = dns.txt_records(current)
            if records is None:
                found.status = "error"
                break
            keys = [r for r in records if r.rdtype == "TXT"]
            aliases = [r for r in records if r.rdtype == "CNAME" and isinstance(r.value, str)]
            if aliases:
                found.cname = str(aliases[-1].value)
            if keys:
                value = keys[0].value
                text = (
                    b"".join(v for v in value if isinstance(v, bytes)).decode("utf-8", "replace")
                    if isinstance(value, tuple) else str(value)
                )
                _dkim_key(text, found)
                break
            if not aliases:
                if not records and current == name:
                    # A CNAME to a missing name is NXDOMAIN for TXT: ask for the alias itself.
                    # Microsoft 365 shows the CNAMEs before DKIM signing is enabled; publishing
                    # them early leaves exactly this.
                    alias = dns.cname(name)
                    found.cname = alias or ""
                if found.cname:
                    found.status = "cname_unresolved"
                break
            # An authoritative server may answer with only the part of the chain in its own
            # zones; a recursive one with all of it. Follow from the last target either way.
            current = found.cname
        else:
            found.status, found.problem = "invalid", f"CNAME chain longer than {MAX_CNAME_HOPS}"
    return out


def m365_tenant_from_dkim(selectors: Iterable[DkimSelector]) -> str:
    """``contoso.onmicrosoft.com`` from ``selector1-contoso-com._domainkey.contoso
    .onmicrosoft.com`` (Microsoft's DKIM CNAME targets), or ""."""
    for sel in selectors:
        match = re.search(r"\._domainkey\.([a-z0-9-]+\.onmicrosoft\.com)$", sel.cname)
        if match:
            return match.group(1)
    return ""


# -- collecting: MTA-STS and TLS-RPT ---------------------------------------------------------------


@dataclass(slots=True)
class TxtPolicyFacts:
    looked_up: bool = False
    name: str = ""
    records: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "records": list(self.records)}


def _collect_versioned(name: str, version: re.Pattern[str], dns: _Dns) -> TxtPolicyFacts:
    facts = TxtPolicyFacts(name=name)
    txts = dns.txt(name)
    if txts is None:
        return facts
    facts.looked_up = True
    facts.records = [clean(t) for t in txts if version.match(t)]
    return facts


# -- judging ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Facts:
    domain: str
    mx: MxFacts
    spf: SpfFacts
    dmarc: DmarcFacts
    dkim: list[DkimSelector]
    mta_sts: TxtPolicyFacts
    tls_rpt: TxtPolicyFacts

    @property
    def tenant_found(self) -> bool:
        return bool(self.mx.tenant_addresses)

    @property
    def on_m365(self) -> bool:
        """Does DNS show an Exchange Online tenant for this domain?"""
        return (
            self.mx.kind == "exchange_online"
            or self.tenant_found
            or bool(m365_tenant_from_dkim(self.dkim))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "microsoft365": self.on_m365,
            "tenant": m365_tenant_from_dkim(self.dkim) or None,
            "mx": self.mx.to_dict(),
            "spf": self.spf.to_dict(),
            "dmarc": self.dmarc.to_dict(),
            "dkim": [s.to_dict() for s in self.dkim],
            "mta_sts": self.mta_sts.to_dict(),
            "tls_rpt": self.tls_rpt.to_dict(),
        }


def _mx_line(host: str, domain: str) -> str:
    return f'{domain}. 3600 IN MX 0 {host}.'


def judge_mx(f: Facts) -> list[Check]:
    mx, domain = f.mx, f.domain
    if not mx.looked_up:
        return []
    hosts = ", ".join(f"{host} ({pref})" for pref, host in mx.hosts)
    if mx.kind == "null":
        return [Check("mx.null", "info",
                      f"{domain} publishes a null MX (RFC 7505): it accepts no mail",
                      f"{domain}. MX 0 .")]
    if mx.kind == "none":
        return [Check(
            "mx.missing", "warning",
            f"{domain} has no MX record: senders fall back to its A record (RFC 5321 section "
            "5.1) or give up",
            "",
            f"If {domain} receives mail in Exchange Online, publish the MX shown in the "
            f"Microsoft 365 admin center, e.g. {_mx_line(tenant_endpoint(domain), domain)} ; "
            f"if it never receives mail, publish a null MX: {domain}. 3600 IN MX 0 .",
        )]
    checks: list[Check] = []
    if mx.kind == "exchange_online":
        provider = classify_mx_host(mx.hosts[0][1])[1]
        checks.append(Check(
            "mx.exchange_online", "ok",
            f"MX is {provider}: Direct Send to this endpoint is what RejectDirectSend controls",
            hosts,
        ))
        return checks
    gateway = ", ".join(mx.providers) or "a mail server that is not Exchange Online"
    if mx.tenant_addresses:
        checks.append(Check(
            "mx.gateway_bypass", "warning",
            f"MX points to {gateway}, but the Exchange Online endpoint {mx.tenant_endpoint} "
            "exists: anyone can send to it directly and skip the gateway, with any sender, "
            "internal or external (\"Ghost-Sender\", InfoGuard Labs 2026). RejectDirectSend "
            "does not close this. DNS cannot show whether a restricting connector exists",
            f"MX {hosts}; {mx.tenant_endpoint} A {', '.join(mx.tenant_addresses)}",
            "In Exchange Online PowerShell, accept inbound mail only from the gateway: "
            "New-InboundConnector -Name 'Inbound only via gateway' -ConnectorType Partner "
            "-SenderDomains * -RestrictDomainsToIPAddresses $true -SenderIPAddresses "
            "<the gateway's outbound IP ranges> (or -RestrictDomainsToCertificate $true "
            "-TlsSenderCertificateName <the gateway's certificate name> -RequireTls $true). "
            "'-SenderDomains *' is right here - this connector must cover all inbound mail - "
            "but never on a connector for devices. Then verify: dsguard probe --to "
            f"<a mailbox>@{f.domain} --from <an address outside your domains> --server "
            f"{mx.tenant_endpoint} (expect 550 5.7.51 TenantInboundAttribution)",
        ))
    elif mx.tenant_addresses is not None:
        checks.append(Check(
            "mx.not_exchange_online", "info",
            f"MX points to {gateway}; no Exchange Online tenant endpoint {mx.tenant_endpoint} "
            "was found, so Microsoft's Direct Send is not reachable for this domain by its "
            "standard name",
            hosts,
            "For a self-hosted MTA, dsguard's gateway, policyd or milter apply the same "
            "Reject Direct Send rule.",
        ))
    else:
        checks.append(Check(
            "mx.not_exchange_online", "info", f"MX points to {gateway}", hosts,
        ))
    return checks


def suggested_spf(f: Facts) -> str:
    """The SPF record with the fixable problems fixed: Microsoft's include for a Microsoft 365
    domain, and a closing ``-all``."""
    record = f.spf.record
    if not record:
        return (f"v=spf1 include:{M365_SPF_INCLUDE} -all" if f.on_m365
                else "v=spf1 <your sending servers, e.g. ip4:192.0.2.25> -all")
    words = [w for w in record.split() if not re.match(r"^[+\-~?]?all$", w, re.IGNORECASE)]
    if f.on_m365 and not _has_m365_include(f):
        words.insert(1, f"include:{M365_SPF_INCLUDE}")
    if not any(w.lower().startswith("redirect=") for w in words):
        words.append("-all")
    return " ".join(words)


def _has_m365_include(f: Facts) -> bool:
    return any(inc in M365_SPF_INCLUDES for inc in f.spf.includes)


def _spf_publish(f: Facts, record: str) -> str:
    return f'publish {f.domain}. 3600 IN TXT "{record}"'


def judge_spf(f: Facts) -> list[Check]:
    spf, domain = f.spf, f.domain
    if not spf.looked_up:
        return []
    if not spf.records:
        return [Check(
            "spf.missing", "high",
            f"{domain} publishes no SPF record: receivers cannot tell its servers from "
            "forgers by the envelope sender",
            "", _spf_publish(f, suggested_spf(f)),
        )]
    if len(spf.records) > 1:
        return [Check(
            "spf.multiple", "high",
            f"{domain} publishes {len(spf.records)} SPF records: a permerror (RFC 7208 "
            "section 4.5), receivers treat SPF as broken",
            " | ".join(spf.records),
            "Merge them into one record and delete the others, e.g. "
            + _spf_publish(f, suggested_spf(f)),
        )]
    checks: list[Check] = []
    record = spf.record
    suggestion = suggested_spf(f)
    checks.extend(_judge_all(f, suggestion))
    if spf.lookups > SPF_LOOKUP_LIMIT:
        at_least = "" if spf.lookups_complete else "at least "
        checks.append(Check(
            "spf.too_many_lookups", "high",
            f"the SPF record needs {at_least}{spf.lookups} DNS lookups; RFC 7208 section 4.6.4 "
            f"allows {SPF_LOOKUP_LIMIT}, so receivers return permerror. Lookup "
            f"{SPF_LOOKUP_LIMIT + 1} is reached at: {' → '.join(spf.exceeded_at)}",
            record,
            "Remove includes of services you no longer use, replace a/mx terms with ip4:/ip6: "
            "ranges, or move rarely used senders to a subdomain with its own SPF record, until "
            f"the count is {SPF_LOOKUP_LIMIT} or less (include, a, mx, ptr, exists and redirect "
            "count, nested ones too)",
        ))
    elif spf.lookups >= SPF_LOOKUP_LIMIT - 1:
        checks.append(Check(
            "spf.lookups_near_limit", "info",
            f"the SPF record needs {spf.lookups} of {SPF_LOOKUP_LIMIT} DNS lookups: one more "
            "include breaks it", record,
        ))
    if spf.void_lookups > SPF_VOID_LIMIT:
        checks.append(Check(
            "spf.too_many_void_lookups", "high",
            f"{spf.void_lookups} SPF terms find no DNS records; receivers may return permerror "
            f"after {SPF_VOID_LIMIT} (RFC 7208 section 4.6.4)", record,
            "Remove the terms that point to names without records.",
        ))
    worst_by_code: dict[str, SpfProblem] = {}
    for problem in spf.problems:
        if problem.code == "void_lookup" and spf.void_lookups > SPF_VOID_LIMIT:
            continue  # reported once above
        checks.append(Check(f"spf.{problem.code}", problem.severity, problem.summary,
                            problem.evidence, _spf_problem_fix(problem, f)))
        worst_by_code.setdefault(problem.code, problem)
    if f.on_m365 and not _has_m365_include(f) and not spf.dns_failed:
        checks.append(Check(
            "spf.m365_include_missing", "warning",
            f"{domain} is on Microsoft 365 but its SPF does not include "
            f"{M365_SPF_INCLUDE}: mail sent from Exchange Online fails SPF",
            record, _spf_publish(f, suggestion),
        ))
    if not any(_RANK[c.severity] >= _RANK["warning"] for c in checks):
        at_least = "" if spf.lookups_complete else "at least "
        checks.insert(0, Check(
            "spf.valid", "ok",
            f"one SPF record, {at_least}{spf.lookups} of {SPF_LOOKUP_LIMIT} DNS lookups",
            record,
        ))
    return checks


def _spf_problem_fix(problem: SpfProblem, f: Facts) -> str:
    if problem.code in ("syntax", "include_missing", "include_multiple", "loop", "mx_names"):
        return "Correct or remove the term named above (see RFC 7208 section 5)."
    if problem.code in ("open_network", "broad_network", "include_pass_all"):
        return "List only your own senders' addresses; " + _spf_publish(f, suggested_spf(f))
    if problem.code == "ptr":
        return "Replace ptr with the ip4:/ip6: ranges of those servers."
    if problem.code == "void_lookup":
        return "Remove the term, or publish the records it expects."
    return ""


def _judge_all(f: Facts, suggestion: str) -> list[Check]:
    spf = f.spf
    q = spf.all_qualifier
    via = f" (reached through redirect={spf.all_via_redirect})" if spf.all_via_redirect else ""
    fix = _spf_publish(f, suggestion)
    if q is None and (spf.dns_failed or spf.redirect_unfollowed):
        return []  # the "all" that applies is behind a lookup that failed or was not made
    if q == "+":
        return [Check(
            "spf.all_pass", "critical",
            f"the SPF record ends in +all{via}: every server on the Internet passes SPF for "
            f"{f.domain}, so forged mail looks authorised", spf.record, fix,
        )]
    if q == "?":
        return [Check(
            "spf.all_neutral", "high",
            f"the SPF record ends in ?all{via}: forged mail gets 'neutral', not 'fail'",
            spf.record, fix,
        )]
    if q is None:
        return [Check(
            "spf.all_missing", "high",
            "the SPF record has no 'all' and no redirect: unlisted servers get 'neutral' "
            "(RFC 7208 section 4.7), as with ?all",
            spf.record, fix,
        )]
    if q == "~":
        return [Check(
            "spf.all_softfail", "warning",
            f"the SPF record ends in ~all{via} (softfail): forged mail is only marked; with "
            "DMARC enforcing that is enough for DMARC, but -all is the stronger signal",
            spf.record, fix,
        )]
    return [Check("spf.all_fail", "ok", f"the SPF record ends in -all{via}", spf.record)]


def _dmarc_record(f: Facts, p: str = "reject", extra: str = "") -> str:
    rua = ""
    if f.dmarc.policy and f.dmarc.policy.rua:
        rua = f"; rua={','.join(f.dmarc.policy.rua)}"
    else:
        rua = f"; rua=mailto:dmarc-reports@{f.domain}"
    return f"v=DMARC1; p={p}{rua}{extra}"


def _dmarc_publish(f: Facts, record: str) -> str:
    where = f.dmarc.found_at or f.domain
    return f'publish _dmarc.{where}. 3600 IN TXT "{record}"'


def judge_dmarc(f: Facts) -> list[Check]:
    d, domain = f.dmarc, f.domain
    if not d.looked_up:
        return []
    if not d.records:
        return [Check(
            "dmarc.missing", "high",
            f"no DMARC record for {domain} (nor its organisational domain): receivers "
            "deliver mail that fails SPF and DKIM for it, Direct Send spoofs included",
            "",
            _dmarc_publish(f, _dmarc_record(f)) + " (if unsure which services send as "
            f"{domain}, start with p=quarantine and read the reports; 'dsguard m365 "
            "inventory' lists the Direct Send senders)",
        )]
    if len(d.records) > 1:
        return [Check(
            "dmarc.multiple", "high",
            f"_dmarc.{d.found_at} has {len(d.records)} DMARC records: receivers apply none "
            "(RFC 7489 section 6.6.3)",
            " | ".join(d.records),
            "Keep one: " + _dmarc_publish(f, _dmarc_record(f)),
        )]
    policy = d.policy
    if policy is None:
        return [Check(
            "dmarc.invalid", "high",
            f"the DMARC record at _dmarc.{d.found_at} has no valid p= and no valid rua=: "
            "receivers ignore it", d.record, _dmarc_publish(f, _dmarc_record(f)),
        )]
    checks: list[Check] = []
    inherited = d.found_at != domain
    if inherited:
        which = "sp=" if policy.sp else "p="
        checks.append(Check(
            "dmarc.inherited", "info",
            f"{domain} has no DMARC record of its own; the organisational domain's applies "
            f"({which}{d.effective})",
            f"_dmarc.{d.found_at}: {d.record}",
        ))
    effective = d.effective
    if "p" not in d.tags or d.tags.get("p", "").lower() not in ("none", "quarantine", "reject"):
        checks.append(Check(
            "dmarc.p_invalid", "high",
            "the record has no valid p= tag: receivers treat it as p=none", d.record,
            _dmarc_publish(f, _dmarc_record(f)),
        ))
    elif effective == "none":
        checks.append(Check(
            "dmarc.p_none", "high",
            f"DMARC policy for {domain} is none: mail failing DMARC - Direct Send spoofs "
            "included - is delivered as usual; the record only asks for reports",
            d.record,
            _dmarc_publish(f, _dmarc_record(f, "quarantine"))
            + ", then p=reject once the reports show only your own senders failing",
        ))
    elif effective == "quarantine":
        checks.append(Check(
            "dmarc.p_quarantine", "ok",
            f"DMARC policy for {domain} is quarantine: failing mail goes to Junk/quarantine "
            "(p=reject is stronger)", d.record,
        ))
    else:
        checks.append(Check("dmarc.p_reject", "ok", f"DMARC policy for {domain} is reject",
                            d.record))
    if policy.pct < 100:
        checks.append(Check(
            "dmarc.pct_partial", "warning",
            f"pct={policy.pct}: the policy applies to only {policy.pct}% of the failing mail; "
            "the rest gets the next weaker policy (RFC 7489 section 6.6.4)",
            d.record, _dmarc_publish(f, _dmarc_record(f, effective if effective != "none"
                                                      else "quarantine")) + " (no pct= means 100)",
        ))
    if not inherited and policy.p in ("quarantine", "reject") and policy.sp == "none":
        checks.append(Check(
            "dmarc.sp_none", "warning",
            "sp=none: subdomains of the domain are not protected (anyone can spoof "
            f"anything.{domain})", d.record, "Remove sp=none (subdomains then follow p=).",
        ))
    if not policy.rua:
        if d.tags.get("rua"):
            summary = "rua= has no usable URI (it must start with mailto:): no aggregate reports"
        else:
            summary = "no rua=: nobody receives DMARC aggregate reports, so spoofing goes unseen"
        checks.append(Check("dmarc.no_reports", "warning", summary, d.record,
                            _dmarc_publish(f, _dmarc_record(f, policy.p))))
    else:
        checks.append(Check("dmarc.reports", "ok",
                            f"aggregate reports go to {', '.join(policy.rua)}", d.record))
    strict = [name for name, mode in (("adkim", policy.adkim), ("aspf", policy.aspf))
              if mode == "s"]
    if strict:
        checks.append(Check(
            "dmarc.strict_alignment", "info",
            f"strict alignment ({', '.join(strict)}=s): mail signed or sent from subdomains "
            "does not align", d.record,
        ))
    return checks


def judge_dkim(f: Facts) -> list[Check]:
    selectors, domain = f.dkim, f.domain
    failed = any(s.status == "error" for s in selectors)
    if not selectors or (failed and all(s.status in ("error", "absent") for s in selectors)):
        return []  # the DNS error is reported; "absent" would be a guess
    checks: list[Check] = []
    present = [s for s in selectors if s.status not in ("absent", "error")]
    enable = (
        f"Enable DKIM for {domain} in Microsoft 365 (Defender portal > Email authentication "
        f"settings > DKIM, or New-DkimSigningConfig -DomainName {domain} -Enabled $true), "
        f"then publish the two CNAMEs that Get-DkimSigningConfig -Identity {domain} | "
        "Format-List Selector1CNAME, Selector2CNAME shows: selector1._domainkey."
        f"{domain} CNAME selector1-{domain.replace('.', '-')}._domainkey.<tenant>.onmicrosoft"
        ".com (and selector2 likewise)"
    )
    if not present:
        if f.on_m365:
            checks.append(Check(
                "dkim.m365_missing", "warning",
                f"no Microsoft 365 DKIM selectors for {domain}: Exchange Online signs with "
                "the onmicrosoft.com domain, which does not align with DMARC, so forwarded "
                "mail fails DMARC", "selector1/selector2._domainkey: no record", enable,
            ))
        else:
            checks.append(Check(
                "dkim.m365_missing", "info",
                "no Microsoft 365 DKIM selectors (selector1/selector2); other selectors "
                "cannot be discovered from DNS", "",
            ))
        return checks
    for sel in selectors:
        checks.extend(_judge_selector(sel, f, enable))
    missing = [s.selector for s in selectors if s.status == "absent"]
    if missing and f.on_m365:
        checks.append(Check(
            "dkim.selector_missing", "warning",
            f"{', '.join(missing)}._domainkey.{domain} is missing: Microsoft 365 rotates "
            "between selector1 and selector2, and signing breaks at the next rotation",
            "", enable,
        ))
    return checks


def _judge_selector(sel: DkimSelector, f: Facts, enable: str) -> list[Check]:
    via = f" (CNAME → {sel.cname})" if sel.cname else ""
    where = f"{sel.name}{via}"
    if sel.status == "absent":
        return []
    if sel.status == "cname_unresolved":
        return [Check(
            "dkim.cname_unresolved", "warning",
            f"{sel.name} points to {sel.cname}, which has no key: DKIM signing is probably "
            "not enabled yet in Microsoft 365", where, enable,
        )]
    if sel.status == "revoked":
        return [Check("dkim.revoked", "info", f"{sel.name}: the key is revoked (empty p=)",
                      where)]
    if sel.status == "invalid":
        return [Check("dkim.invalid", "warning", f"{sel.name}: unusable key ({sel.problem})",
                      where, enable)]
    checks: list[Check] = []
    size = f"{sel.key_type.upper()} {sel.key_bits}-bit"
    if sel.key_type == "rsa" and sel.key_bits < 1024:
        checks.append(Check(
            "dkim.weak_key", "high",
            f"{sel.name}: {size} key; verifiers must not accept RSA keys under 1024 bits "
            "(RFC 8301 section 3.2)", where,
            f"Rotate to a 2048-bit key: Rotate-DkimSigningConfig -Identity {f.domain} "
            "-KeySize 2048",
        ))
    elif sel.key_type == "rsa" and sel.key_bits < 2048:
        checks.append(Check(
            "dkim.short_key", "warning",
            f"{sel.name}: {size} key; RFC 8301 section 3.2 asks signers for 2048 bits", where,
            f"Rotate to a 2048-bit key: Rotate-DkimSigningConfig -Identity {f.domain} "
            "-KeySize 2048",
        ))
    else:
        checks.append(Check("dkim.key", "ok", f"{sel.name}: {size} key", where))
    if sel.testing:
        checks.append(Check("dkim.testing", "info", f"{sel.name}: t=y (testing mode)", where))
    return checks


def judge_mta_sts(f: Facts) -> list[Check]:
    checks: list[Check] = []
    sts, rpt, domain = f.mta_sts, f.tls_rpt, f.domain
    if sts.looked_up:
        if not sts.records:
            checks.append(Check(
                "mta_sts.missing", "info",
                "no MTA-STS (RFC 8461): senders may deliver to this domain without verified "
                "TLS (not a spoofing risk)", sts.name,
                f'publish {sts.name}. 3600 IN TXT "v=STSv1; id=<a new id, e.g. 20250101T000000>" '
                f"and serve https://mta-sts.{domain}/.well-known/mta-sts.txt",
            ))
        elif len(sts.records) > 1:
            checks.append(Check(
                "mta_sts.multiple", "warning",
                f"{len(sts.records)} MTA-STS records: senders ignore MTA-STS (RFC 8461 "
                "section 3.1)", " | ".join(sts.records), "Keep one record.",
            ))
        else:
            tags = dmarc_tags(sts.records[0])
            if not _STS_ID.match(tags.get("id", "")):
                checks.append(Check(
                    "mta_sts.invalid", "warning",
                    "the MTA-STS record has no valid id= (1-32 letters and digits)",
                    sts.records[0],
                    f'publish {sts.name}. 3600 IN TXT "v=STSv1; id=<a new id, e.g. '
                    '20250101T000000>"',
                ))
            else:
                checks.append(Check(
                    "mta_sts.present", "ok",
                    "MTA-STS record present (the HTTPS policy was not fetched: dsguard checks "
                    "DNS only)", sts.records[0],
                ))
    if rpt.looked_up:
        if not rpt.records:
            checks.append(Check(
                "tls_rpt.missing", "info", "no TLS-RPT (RFC 8460): no reports of TLS failures",
                rpt.name,
                f'publish {rpt.name}. 3600 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@{domain}"',
            ))
        elif len(rpt.records) > 1:
            checks.append(Check(
                "tls_rpt.multiple", "warning",
                f"{len(rpt.records)} TLS-RPT records: senders ignore them (RFC 8460 "
                "section 3)", " | ".join(rpt.records), "Keep one record.",
            ))
        elif "rua" not in dmarc_tags(rpt.records[0]):
            checks.append(Check("tls_rpt.invalid", "warning", "the TLS-RPT record has no rua=",
                                rpt.records[0],
                                f'publish {rpt.name}. 3600 IN TXT "v=TLSRPTv1; '
                                f'rua=mailto:tlsrpt@{domain}"'))
        else:
            checks.append(Check("tls_rpt.present", "ok", "TLS-RPT record present",
                                rpt.records[0]))
    return checks


def judge_direct_send(f: Facts, spf_checks: Sequence[Check]) -> list[Check]:
    """What the DNS means for Direct Send spoofs of this domain (never changes the rating:
    the SPF/DMARC checks carry the severity). A spoof from an unlisted server fails DMARC
    when DMARC enforces at 100% and SPF does not authorise everyone (a critical SPF check:
    +all, an include ending in +all, ip4:0.0.0.0/0)."""
    if not f.on_m365:
        if f.mx.looked_up and f.mx.kind in ("gateway", "other"):
            return [Check(
                "direct_send.not_exchange_online", "info",
                "DNS shows no Exchange Online tenant: Microsoft's RejectDirectSend does not "
                "apply. A self-hosted MTA has no such switch; dsguard's gateway, policyd or "
                "milter refuse anonymous mail that claims your domain", "",
            )]
        return []
    verify = (f"verify with: dsguard probe --to <a mailbox>@{f.domain} (expect 550 5.7.68); "
              "Get-OrganizationConfig | Select-Object Identity, RejectDirectSend")
    enable = ("Set-OrganizationConfig -RejectDirectSend $true (after 'dsguard m365 inventory' "
              "shows which devices and services need a connector first); " + verify)
    policy = f.dmarc.effective if f.dmarc.policy else ""
    full = bool(f.dmarc.policy and f.dmarc.policy.pct == 100)
    spf_open = any(c.severity == "critical" for c in spf_checks)
    if policy in ("reject", "quarantine") and full and not spf_open:
        where = "quarantine" if policy == "reject" else "Junk or quarantine"
        return [Check(
            "direct_send.dmarc_enforced", "info",
            f"Direct Send spoofs of {f.domain} fail DMARC (p={policy}), so Exchange "
            f"Online sends them to {where} even without RejectDirectSend. RejectDirectSend is "
            "still recommended: it refuses them at SMTP (550 5.7.68), so users never see them",
            "", enable,
        )]
    return [Check(
        "direct_send.not_enforced", "info",
        f"Direct Send spoofs of {f.domain} are not stopped by its DNS (DMARC does not enforce "
        "at 100%, or SPF authorises everyone): Exchange Online delivers them, typically to "
        "Junk, where users open them. Fix SPF/DMARC as above and turn on RejectDirectSend",
        "", enable,
    )]


def judge(f: Facts) -> list[Check]:
    spf_checks = judge_spf(f)
    return [
        *judge_mx(f),
        *spf_checks,
        *judge_dmarc(f),
        *judge_dkim(f),
        *judge_mta_sts(f),
        *judge_direct_send(f, spf_checks),
    ]


# -- the per-domain run -------------------------------------------------------------------------------


def check_domain(domain_text: str, resolver: Resolver) -> DomainPosture:
    """Collect and judge one domain. Never raises for DNS trouble: failed lookups are listed
    in ``errors`` (and make the rating ``unknown`` unless something worse was seen)."""
    domain = normalise_domain(domain_text)
    if domain is None:
        shown = clean(domain_text, 80)
        return DomainPosture(shown, "unknown", [], [f"{shown!r} is not a domain name"], {})
    dns = _Dns(resolver)
    mx = collect_mx(domain, dns)
    spf = collect_spf(domain, dns)
    dmarc = collect_dmarc(domain, dns)
    dkim = collect_dkim(domain, dns)
    mta_sts = _collect_versioned(f"_mta-sts.{domain}", _STS_VERSION, dns)
    tls_rpt = _collect_versioned(f"_smtp._tls.{domain}", _TLSRPT_VERSION, dns)
    facts = Facts(domain, mx, spf, dmarc, dkim, mta_sts, tls_rpt)
    checks = judge(facts)
    errors = list(dns.errors)
    if dns.skipped:
        errors.append(f"{dns.skipped} further lookup(s) skipped after {MAX_DNS_ERRORS} failures")
    for check in checks:
        if check.severity not in _RANK:  # a programming error, never user input
            raise ValueError(f"unknown severity {check.severity!r}")
    return DomainPosture(domain, rate(checks, errors), checks, errors, facts.to_dict())


def run_posture(domains: Sequence[str], resolver: Resolver) -> dict[str, Any]:
    """The posture document for ``domains`` (JSON-ready)."""
    results = [check_domain(d, resolver) for d in domains]
    summary = {rating: 0 for rating in RATINGS}
    for result in results:
        summary[result.rating] += 1
    return {
        "schema": SCHEMA,
        "resolver": list(resolver.nameservers),
        "domains": [r.to_dict() for r in results],
        "summary": summary,
    }


def exit_status(doc: dict[str, Any]) -> int:
    """0 all good/fair, 1 any poor/critical, 2 a domain could not be checked (wins)."""
    domains = doc.get("domains", [])
    if any(d.get("errors") for d in domains):
        return 2
    if any(d.get("rating") in FAILING_RATINGS for d in domains):
        return 1
    return 0


# -- rendering ----------------------------------------------------------------------------------------

_MARK = {"ok": "ok", "info": "info", "warning": "WARN", "high": "HIGH", "critical": "CRIT"}


def render_text(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for item in doc.get("domains", []):
        lines.append(f"{item['domain']}: {item['rating'].upper()}")
        facts = item.get("facts") or {}
        if facts.get("tenant"):
            lines.append(f"  Microsoft 365 tenant: {facts['tenant']}")
        for check in item.get("checks", []):
            mark = _MARK.get(check["severity"], check["severity"])
            lines.append(f"  [{mark:<4}] {check['area']:<11} {check['summary']}")
            if check.get("evidence"):
                lines.append(f"         {'':<11} record: {check['evidence']}")
            if check.get("fix") and check["severity"] != "ok":
                lines.append(f"         {'':<11} fix: {check['fix']}")
        for error in item.get("errors", []):
            lines.append(f"  [DNS ] {'error':<11} {error}")
        lines.append("")
    summary = doc.get("summary", {})
    counts = ", ".join(f"{n} {rating}" for rating, n in summary.items() if n)
    lines.append(f"{len(doc.get('domains', []))} domain(s): {counts}")
    return "\n".join(lines) + "\n"
