"""Group Direct Send traffic into sources, classify them, and say what RejectDirectSend breaks.

**Direct Send traffic** (Microsoft, "Introducing more control over Direct Send in Exchange
Online"): inbound mail from a sender IP, claiming an accepted domain in the envelope (P1) or the
header From (P2), that matched no inbound connector. ``RejectDirectSend`` refuses only the P1
part (550 5.7.68); P2-only traffic is listed too because the switch does not see it.

**Sources**: one per sender IP, split by HELO where the export records it. Memory grows with
the number of sources, never with rows: every per-source list is capped (``CAP_*``), repeats of a
message (one row per recipient) are recognised through a bounded window of recent message ids,
and past ``MAX_SOURCES`` new sources are only counted.

**Classes**, each with the reasons that decided it:

- ``malicious``: a hard signal - a bracketed-IP or loopback HELO (dszp: "definitive spam
  signature"), the sender IP on an IOC list, dsguard's own verdict on .eml files, mail that is
  self-addressed *and* carries a lure subject - or two soft signals together;
- ``suspicious``: one soft signal - SPF and DMARC both failing, self-addressed mail, lure or
  campaign subjects (``[lures]`` patterns of the config), free-hosting / IOC hosts in subjects,
  a country outside ``home_countries``, a Windows default computer name as HELO - or nothing
  that shows the source is the organisation's (no SPF/DMARC pass; or, in exports without
  authentication results, many senders or a single day);
- ``third_party_service``: a known ESP/SaaS in the HELO (``SERVICES``), DKIM by a third party,
  or a foreign envelope domain with the organisation's domain only in the header From;
- ``forwarding_no_srs``: own-domain envelope whose SPF fails while DKIM/DMARC pass (the mail
  was forwarded by a foreign host that did not rewrite the envelope; Microsoft's known issue);
- ``device_or_app``: SPF or DMARC passes; or, when the export records no authentication, a
  stable IP (several days) used by a few consistent sender addresses.

SECURITY: every value comes from an export an attacker wrote part of. Values are only counted
and compared here; renderers and the plan escape them for their output.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from dsguard import __version__
from dsguard.config import Config
from dsguard.intel.bundle import Intel
from dsguard.intel.geo import country_of
from dsguard.m365.formats import ExportReader
from dsguard.m365.records import Direction, TraceRecord
from dsguard.model import Envelope, EnvelopeOrigin
from dsguard.policy.attribution import match_connector
from dsguard.policy.domains import AcceptedDomains, org_domain

SCHEMA = "dsguard-m365-inventory/1"

DEVICE = "device_or_app"
THIRD_PARTY = "third_party_service"
FORWARDING = "forwarding_no_srs"
SUSPICIOUS = "suspicious"
MALICIOUS = "malicious"
CLASSES = (DEVICE, THIRD_PARTY, FORWARDING, SUSPICIOUS, MALICIOUS)
LEGITIMATE = frozenset({DEVICE, THIRD_PARTY, FORWARDING})

IP_CONNECTOR = "ip_connector"
CERTIFICATE_CONNECTOR = "certificate_connector"
TRANSPORT_RULE = "transport_rule"
SRS = "srs"
FIXES = (IP_CONNECTOR, CERTIFICATE_CONNECTOR, TRANSPORT_RULE, SRS)

MAX_SOURCES = 100_000
CAP_NAMES = 20  # HELOs, domains, countries per source
CAP_SENDERS = 200
CAP_RECIPIENTS = 5_000
CAP_SUBJECTS = 200
CAP_DAYS = 1_000
RECENT_MESSAGES = 4_096  # per-recipient rows of a message are adjacent in every export
TOP_SENDERS = 10
TOP_SUBJECTS = 5
CONSISTENT_SENDERS = 3  # at most this many sender addresses = "consistent"
STABLE_DAYS = 2
ROTATING_IPS = 4  # a service seen from this many IPs, most on one day only, has no stable IP


@dataclass(frozen=True, slots=True)
class Service:
    """A sending service recognised by its HELO / PTR host names (label-boundary suffixes)."""

    name: str
    suffixes: tuple[str, ...]
    # The name on the TLS certificate its servers present, only when published; None = ask.
    certificate: str | None = None
    shared_certificate: bool = False


# Services admins meet in Direct Send traffic (the project's background notes, section 4:
# signature services, ESPs, CRM, phishing simulation). Kept small and factual: host suffixes
# only, and a certificate name only where it is documented (SendGrid's shared wildcard, in the
# dszp/Microsoft-Direct-Send-Reporting README).
SERVICES: tuple[Service, ...] = (
    Service("CodeTwo (email signatures)", ("codetwo.com", "codetwo.online")),
    Service("Exclaimer (email signatures)", ("exclaimer.net", "exclaimer.com")),
    Service("SendGrid", ("sendgrid.net",), "*.smtp.sendgrid.net", shared_certificate=True),
    Service("Mailchimp / Mandrill", ("mcsv.net", "rsgsv.net", "mailchimp.com", "mandrillapp.com")),
    Service("Salesforce", ("salesforce.com", "exacttarget.com")),
    Service("Amazon SES", ("amazonses.com",)),
    Service("Mailgun", ("mailgun.org", "mailgun.net")),
    Service("SparkPost", ("sparkpostmail.com",)),
    Service("KnowBe4 (phishing simulation)", ("knowbe4.com",)),
    Service("Zendesk", ("zendesk.com",)),
)

_BRACKETED = re.compile(r"^\[[0-9a-fA-F:.]+\]$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "[127.0.0.1]",
                             "::1", "[::1]", "[ipv6:::1]"})
_WINDOWS_DEFAULT = re.compile(r"^(?:WIN|DESKTOP|LAPTOP)-[A-Z0-9]{5,15}$", re.IGNORECASE)
_HOST_IN_TEXT = re.compile(r"(?i)\b((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})\b")


def helo_kind(helo: str) -> str | None:
    """``loopback`` / ``ip-literal`` for the names scripted submissions use, else None."""
    h = helo.strip().lower()
    if h in _LOOPBACK_NAMES or h.startswith("[127.") or h.startswith("127."):
        return "loopback"
    if _BRACKETED.match(h):
        return "ip-literal"
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return None
    return "ip-literal"


def match_service(host: str) -> Service | None:
    h = host.strip().lower().rstrip(".")
    for service in SERVICES:
        for suffix in service.suffixes:
            if h == suffix or h.endswith("." + suffix):
                return service
    return None


def _domain(addr: str | None) -> str:
    if not addr:
        return ""
    at = addr.rfind("@")
    return addr[at + 1:].rstrip(".") if at != -1 else ""


_K = TypeVar("_K")


def _bump(counter: Counter[_K], key: _K, cap: int, n: int = 1) -> None:
    if key in counter or len(counter) < cap:
        counter[key] += n


def source_id(ip: str, helo: str) -> str:
    return ip + (f" {helo}" if helo else "")


class SourceStats:
    """Everything counted for one source; each collection is capped."""

    __slots__ = (
        "auth", "countries", "days", "dkim_domains", "findings", "first", "helo", "helos", "ip",
        "last", "lure_messages", "lures", "messages", "p1_domains", "p1_own", "p2_domains",
        "p2_own", "recipients", "recipients_capped", "rows", "self_addressed", "senders",
        "statuses", "subject_hosts", "subjects", "verdicts",
    )

    def __init__(self, ip: str, helo: str) -> None:
        self.ip = ip
        self.helo = helo
        self.helos: Counter[str] = Counter()
        self.messages = 0
        self.rows = 0
        self.p1_domains: Counter[str] = Counter()
        self.p2_domains: Counter[str] = Counter()
        self.p1_own = 0
        self.p2_own = 0
        self.senders: Counter[str] = Counter()
        self.recipients: set[str] = set()
        self.recipients_capped = False
        self.subjects: Counter[str] = Counter()
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.days: Counter[date] = Counter()
        self.auth: dict[str, Counter[str]] = {k: Counter() for k in ("spf", "dkim", "dmarc",
                                                                    "compauth")}
        self.self_addressed = 0
        self.lure_messages = 0
        self.lures: Counter[str] = Counter()
        self.subject_hosts: Counter[str] = Counter()
        self.countries: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.dkim_domains: Counter[str] = Counter()


@dataclass(slots=True)
class Totals:
    rows: int = 0
    messages: int = 0
    direct_send_messages: int = 0
    direct_send_rows: int = 0
    rds_blocked_messages: int = 0
    p2_only_messages: int = 0
    not_inbound: int = 0
    no_sender_ip: int = 0
    not_accepted_domain: int = 0
    via_connector: int = 0
    via_configured_connector: int = 0
    beyond_source_cap: int = 0
    undated: int = 0


class InventoryBuilder:
    """Feed it records (:meth:`add`); :meth:`document` returns the inventory."""

    def __init__(self, config: Config, *, intel: Intel | None = None) -> None:
        self.config = config
        self.accepted = AcceptedDomains(config.organization.accepted_domains)
        self.infer = not self.accepted
        self.inferred: Counter[str] = Counter()
        self.intel = intel if intel is not None else Intel.from_config(config)
        self.home = frozenset(config.organization.home_countries)
        self.totals = Totals()
        self.sources: dict[tuple[str, str], SourceStats] = {}
        self._recent: OrderedDict[str, tuple[str, str] | None] = OrderedDict()
        self._connector_cache: dict[str, str | None] = {}
        self._lure_patterns = [
            (lure_id, re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE))
            for lure_id, patterns in config.lures.patterns.items() if patterns
        ]
        self._subject_cache: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._country_cache: dict[str, str | None] = {}
        self.formats_without_connectors = False
        self.header_from_seen = False

    # -- filtering -------------------------------------------------------------------------

    def own_domain(self, domain: str, recipients: tuple[str, ...]) -> bool:
        """Is ``domain`` the organisation's (accepted, or inferred from ``recipients``)?"""
        if not domain:
            return False
        if not self.infer:
            return self.accepted.matches(domain)
        # No accepted domains given: like `dsguard scan`, the organisation is the recipients'
        # organisational domains (inbound mail is addressed to the organisation).
        org = org_domain(domain)
        return any(org_domain(_domain(r)) == org for r in recipients)

    def _configured_connector(self, ip: str) -> str | None:
        if ip in self._connector_cache:
            return self._connector_cache[ip]
        found = match_connector(Envelope(origin=EnvelopeOrigin.NONE, client_ip=ip),
                                self.config.connectors)
        name = found.name if found is not None else None
        if len(self._connector_cache) < 65_536:
            self._connector_cache[ip] = name
        return name

    def add(self, rec: TraceRecord) -> None:
        t = self.totals
        t.rows += 1
        key = rec.message_key
        if key is not None and key in self._recent:
            # Another recipient row of a message already counted.
            known = self._recent[key]
            stats = self.sources.get(known) if known is not None else None
            if stats is not None:
                stats.rows += 1
                t.direct_send_rows += 1
                self._add_recipients(stats, rec.recipients)
            return
        t.messages += 1
        if rec.header_from is not None:
            self.header_from_seen = True
        source_key = self._classify_record(rec)
        if key is not None:
            self._recent[key] = source_key
            if len(self._recent) > RECENT_MESSAGES:
                self._recent.popitem(last=False)

    def _classify_record(self, rec: TraceRecord) -> tuple[str, str] | None:
        """Count one new message; the key of its Direct Send source, or None."""
        t = self.totals
        if rec.direction in (Direction.OUTBOUND, Direction.INTRA_ORG):
            t.not_inbound += 1
            return None
        ip = rec.sender_ip
        if not ip:
            t.no_sender_ip += 1
            return None
        p1_domain = _domain(rec.mail_from)
        p2_domain = _domain(rec.header_from)
        p1_own = self.own_domain(p1_domain, rec.recipients)
        p2_own = self.own_domain(p2_domain, rec.recipients)
        if not (p1_own or p2_own):
            t.not_accepted_domain += 1
            return None
        if rec.connector is None:
            self.formats_without_connectors = True
            if self.config.connectors and self._configured_connector(ip) is not None:
                t.via_configured_connector += 1
                return None
        elif rec.connector:
            t.via_connector += 1
            return None
        helo = (rec.helo or "").strip().lower()
        source_key = (ip, helo)
        stats = self.sources.get(source_key)
        if stats is None:
            if len(self.sources) >= MAX_SOURCES:
                t.beyond_source_cap += 1
                return None
            stats = self.sources[source_key] = SourceStats(ip, helo)
        t.direct_send_messages += 1
        t.direct_send_rows += 1
        if p1_own:
            t.rds_blocked_messages += 1
            if self.infer:
                _bump(self.inferred, org_domain(p1_domain), 50)
        else:
            t.p2_only_messages += 1
            if self.infer:
                _bump(self.inferred, org_domain(p2_domain), 50)
        self._count(stats, rec, p1_own, p2_own, p1_domain, p2_domain)
        return source_key

    def _add_recipients(self, stats: SourceStats, recipients: tuple[str, ...]) -> None:
        for r in recipients:
            if len(stats.recipients) < CAP_RECIPIENTS:
                stats.recipients.add(r)
            elif r not in stats.recipients:
                stats.recipients_capped = True

    def _count(
        self, s: SourceStats, rec: TraceRecord, p1_own: bool, p2_own: bool,
        p1_domain: str, p2_domain: str,
    ) -> None:
        s.messages += 1
        s.rows += 1
        if rec.helo:
            _bump(s.helos, rec.helo.strip()[:255], CAP_NAMES)
        if p1_domain or rec.mail_from == "":
            _bump(s.p1_domains, p1_domain or "<>", CAP_NAMES)
        if p2_domain:
            _bump(s.p2_domains, p2_domain, CAP_NAMES)
        if p1_own:
            s.p1_own += 1
        if p2_own:
            s.p2_own += 1
        sender = rec.mail_from if p1_own else rec.header_from
        if sender:
            _bump(s.senders, sender, CAP_SENDERS)
        self._add_recipients(s, rec.recipients)
        own_senders = {a for a in (rec.mail_from, rec.header_from) if a}
        if own_senders & set(rec.recipients):
            s.self_addressed += 1
        if rec.timestamp is not None:
            when = rec.timestamp
            if s.first is None or when < s.first:
                s.first = when
            if s.last is None or when > s.last:
                s.last = when
            _bump(s.days, when.date(), CAP_DAYS)
        else:
            self.totals.undated += 1
        if rec.subject is not None:
            subject = " ".join(rec.subject.split())[:300]
            _bump(s.subjects, subject, CAP_SUBJECTS)
            lures, hosts = self._subject_signals(subject)
            if lures:
                s.lure_messages += 1
                for lure in lures:
                    s.lures[lure] += 1
            for host in hosts:
                _bump(s.subject_hosts, host, CAP_NAMES)
        for name in ("spf", "dkim", "dmarc", "compauth"):
            value = getattr(rec, name)
            if value is not None:
                _bump(s.auth[name], value, CAP_NAMES)
        for d in rec.dkim_pass_domains:
            _bump(s.dkim_domains, d.lower(), CAP_NAMES)
        country = rec.country or self._country(s.ip)
        if country:
            _bump(s.countries, country, CAP_NAMES)
        if rec.status:
            _bump(s.statuses, rec.status, CAP_NAMES)
        if rec.verdict:
            s.verdicts[rec.verdict] += 1
            for f in rec.findings:
                _bump(s.findings, f, 50)

    def _country(self, ip: str) -> str | None:
        if ip not in self._country_cache:
            if len(self._country_cache) >= 65_536:
                self._country_cache.clear()
            self._country_cache[ip] = country_of(ip)
        return self._country_cache[ip]

    def _subject_signals(self, subject: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        cached = self._subject_cache.get(subject)
        if cached is not None:
            return cached
        lures = tuple(lure_id for lure_id, rx in self._lure_patterns if rx.search(subject))
        hosts: list[str] = []
        for m in _HOST_IN_TEXT.finditer(subject[:300]):
            host = m.group(1).lower()
            hit = self.intel.free_hosting.match(host)
            if hit is not None:
                hosts.append(f"{host} (free hosting)")
            elif self.intel.iocs.match_host(host) is not None:
                hosts.append(f"{host} (IOC list)")
        result = (lures, tuple(hosts))
        if len(self._subject_cache) >= 65_536:
            self._subject_cache.clear()
        self._subject_cache[subject] = result
        return result

    # -- the document ----------------------------------------------------------------------

    def accepted_domains(self) -> tuple[list[str], bool]:
        if not self.infer:
            return list(self.accepted.entries()), False
        return sorted(self.inferred), True

    def document(self, inputs: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        accepted, inferred = self.accepted_domains()
        classified = [classify(s, self) for s in self.sources.values()]
        _decide_fixes(classified)
        classified.sort(key=lambda c: (CLASSES.index(c["class"]), -c["messages"], c["id"]))
        t = self.totals
        by_class = Counter(c["class"] for c in classified)
        messages_by_class: Counter[str] = Counter()
        for c in classified:
            messages_by_class[c["class"]] += c["messages"]
        would_block = [
            {"id": c["id"], "class": c["class"], "ips": c["ips"], "helos": c["helos"],
             "service": c["service"], "messages": c["messages"], "senders": c["senders"][:3],
             "fix": c["fix"]}
            for c in classified if c["class"] in LEGITIMATE and c["rds_blocks"]
        ]
        review = [
            {"id": c["id"], "ips": c["ips"], "messages": c["messages"], "reasons": c["reasons"]}
            for c in classified if c["class"] == SUSPICIOUS and c["rds_blocks"]
        ]
        notes: list[str] = []
        if inferred:
            notes.append(
                "accepted domains inferred from the recipients (no --accepted-domain or config): "
                + (", ".join(accepted) or "none found")
            )
        if self.formats_without_connectors:
            notes.append(
                "some inputs do not record connectors (message trace, Graph); their mail from "
                "configured connector IPs was left out"
                + ("" if self.config.connectors else
                   " - no connectors are configured, so connector-relayed mail may be listed "
                   "as Direct Send (use --config with your [[connectors]])")
            )
        if not self.header_from_seen:
            notes.append(
                "no input records the header From (P2): P2-only spoofing, which "
                "RejectDirectSend does not stop, cannot be seen in these exports"
            )
        if t.beyond_source_cap:
            notes.append(f"more than {MAX_SOURCES} sources: {t.beyond_source_cap} messages of "
                         "further sources were only counted")
        return {
            "schema": SCHEMA,
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "dsguard_version": __version__,
            "organization": {
                "accepted_domains": accepted,
                "accepted_domains_inferred": inferred,
                "home_countries": sorted(self.home),
            },
            "inputs": list(inputs),
            "totals": {
                "rows": t.rows,
                "messages": t.messages,
                "direct_send_messages": t.direct_send_messages,
                "rds_blocked_messages": t.rds_blocked_messages,
                "p2_only_messages": t.p2_only_messages,
                "sources": len(classified),
                "sources_by_class": {k: by_class.get(k, 0) for k in CLASSES},
                "messages_by_class": {k: messages_by_class.get(k, 0) for k in CLASSES},
                "not_direct_send": {
                    "outbound_or_internal": t.not_inbound,
                    "no_sender_ip": t.no_sender_ip,
                    "sender_not_accepted_domain": t.not_accepted_domain,
                    "via_connector": t.via_connector,
                    "via_configured_connector": t.via_configured_connector,
                },
                "beyond_source_cap": t.beyond_source_cap,
                "undated_messages": t.undated,
            },
            "would_block": would_block,
            "review": review,
            "daily": _daily(self.sources, classified),
            "sources": classified,
            "notes": notes,
        }


def _majority(counter: Counter[str], words: Iterable[str], total: int) -> int:
    """How many of ``total`` recorded verdicts are one of ``words``; 0 if not a majority."""
    hits = sum(counter.get(w, 0) for w in words)
    return hits if total and hits * 2 > total else 0


def classify(s: SourceStats, b: InventoryBuilder) -> dict[str, Any]:
    """The class of one source with its reasons, as a JSON-ready dict."""
    n = s.messages
    helos = [h for h, _ in s.helos.most_common()] or ([s.helo] if s.helo else [])
    recorded = {k: sum(c.values()) for k, c in s.auth.items()}
    auth_known = any(recorded.values())
    spf_pass = _majority(s.auth["spf"], ("pass",), recorded["spf"])
    spf_bad = _majority(s.auth["spf"], ("fail", "softfail", "hardfail"), recorded["spf"])
    dkim_pass = _majority(s.auth["dkim"], ("pass",), recorded["dkim"])
    dmarc_pass = _majority(s.auth["dmarc"], ("pass", "bestguesspass"), recorded["dmarc"])
    dmarc_bad = _majority(s.auth["dmarc"], ("fail",), recorded["dmarc"])
    hard: list[str] = []
    soft: list[str] = []

    for h in helos:
        kind = helo_kind(h)
        if kind:
            hard.append(
                f"HELO {h} is a {'loopback name' if kind == 'loopback' else 'bracketed IP literal'}"
                ": no mail server greets like that - the scripted-submission signature of Direct "
                "Send abuse"
            )
            break
    ioc = b.intel.iocs.match_ip(s.ip)
    if ioc is not None:
        hard.append(f"sender IP {s.ip} is on the IOC list ({ioc.source}: {ioc.indicator}"
                    f"{' - ' + ioc.note if ioc.note else ''})")
    if s.verdicts.get("malicious", 0) * 2 > n:
        top = ", ".join(f for f, _ in s.findings.most_common(4))
        hard.append(f"dsguard scan: malicious on {s.verdicts['malicious']} of {n} messages ({top})")
    elif s.verdicts.get("suspicious", 0) + s.verdicts.get("malicious", 0) > 0:
        soft.append(
            f"dsguard scan: flagged {s.verdicts.get('suspicious', 0) + s.verdicts.get('malicious', 0)}"
            f" of {n} messages"
        )
    self_major = s.self_addressed * 2 > n
    lure_major = s.lure_messages * 2 > n
    lure_names = ", ".join(sorted(s.lures))
    top_subjects = ", ".join(subject for subject, _ in s.subjects.most_common(2))
    if spf_bad and dmarc_bad:
        soft.append(f"SPF fails on {spf_bad} of {recorded['spf']} and DMARC on {dmarc_bad} of "
                    f"{recorded['dmarc']} messages")
    # SPF or DMARC passing on most messages proves the source may send for the domain: the
    # soft signals (lure words in a billing system's "Your invoice", a vendor abroad) are then
    # shown as remarks, not held against it. Hard signals still count.
    auth_ok = bool(spf_pass or dmarc_pass)
    if self_major and lure_major and not auth_ok:
        # The campaign's signature: users "emailing themselves" a voicemail/fax notice.
        hard.append(f"self-addressed (sender = recipient) on {s.self_addressed} of {n} messages "
                    f"with lure subjects on {s.lure_messages} ({lure_names}: {top_subjects})")
    else:
        if self_major:
            soft.append(f"self-addressed (sender = recipient) on {s.self_addressed} of {n} "
                        "messages")
        if s.lure_messages:
            soft.append(f"lure subjects on {s.lure_messages} of {n} messages ({lure_names}: "
                        f"{top_subjects})")
    if s.subject_hosts:
        soft.append("hosts in subjects: " + ", ".join(list(s.subject_hosts)[:3]))
    if b.home:
        foreign = sorted(c for c in s.countries if c not in b.home)
        if foreign:
            soft.append(f"sender IP registered in {', '.join(foreign)}, outside the home "
                        f"countries ({', '.join(sorted(b.home))})")
    for h in helos:
        if _WINDOWS_DEFAULT.match(h):
            soft.append(f"HELO {h} is a Windows default computer name (Send-MailMessage from a "
                        "workstation)")
            break

    service: Service | None = None
    for h in helos:
        service = match_service(h)
        if service is not None:
            break
    sample = tuple(s.recipients)[:20]
    own_dkim = [d for d in s.dkim_domains if b.own_domain(d, sample)]
    foreign_dkim = [d for d in s.dkim_domains if d not in own_dkim]
    p2_only = s.p1_own == 0 and s.p2_own > 0
    reasons: list[str]
    service_name: str | None = service.name if service else None
    remarks: list[str] = []
    if auth_ok and soft:
        remarks = [f"noted, but authentication passes: {r}" for r in soft]
        soft = []
    if hard or len(soft) >= 2:
        cls = MALICIOUS
        reasons = hard + soft
    elif soft:
        cls = SUSPICIOUS
        reasons = soft
    elif service is not None:
        cls = THIRD_PARTY
        reasons = [f"HELO {helos[0]} belongs to {service.name}"]
    elif foreign_dkim and s.p2_own and (dkim_pass or dmarc_pass):
        cls = THIRD_PARTY
        service_name = foreign_dkim[0]
        reasons = [f"DKIM signed by a third party ({', '.join(foreign_dkim[:3])}) with an "
                   "own-domain From"]
    elif p2_only and (dkim_pass or dmarc_pass or spf_pass):
        cls = THIRD_PARTY
        service_name = org_domain(next(iter(s.p1_domains), "")) or None
        reasons = [f"envelope sender in the service's own domain ({', '.join(list(s.p1_domains)[:3])})"
                   " with the organisation's domain only in the header From"]
    elif s.p1_own and spf_bad and (dkim_pass or dmarc_pass):
        cls = FORWARDING
        passing = "DKIM" if dkim_pass else "DMARC"
        reasons = [
            f"own-domain envelope with SPF failing on {spf_bad} of {recorded['spf']} messages "
            f"while {passing} passes: relayed by a foreign host"
            + (f" ({helos[0]})" if helos else "")
            + " that kept the original envelope sender (forwarding without SRS)"
        ]
    elif auth_known:
        if spf_pass or dmarc_pass:
            cls = DEVICE
            reasons = []
        else:
            cls = SUSPICIOUS
            reasons = [f"no SPF or DMARC pass (SPF {_counts(s.auth['spf'])}, DMARC "
                       f"{_counts(s.auth['dmarc'])}): nothing shows this source is yours"]
    else:
        consistent = 0 < len(s.senders) <= CONSISTENT_SENDERS
        stable = len(s.days) >= STABLE_DAYS
        if consistent and stable:
            cls = DEVICE
            reasons = ["authentication is not recorded in this export: confirm the IP is in "
                       "your SPF record before creating the connector"]
        else:
            cls = SUSPICIOUS
            why = []
            if not consistent:
                why.append(f"{len(s.senders)} different sender addresses")
            if not stable:
                why.append("seen on one day only" if len(s.days) <= 1 else "")
            reasons = ["authentication is not recorded in this export and "
                       + " and ".join(w for w in why if w)
                       + ": it cannot be told from a spoofer - review it (an export with "
                       "authentication results, EmailEvents or the Extended report, decides)"]
    if cls in LEGITIMATE:
        if spf_pass:
            reasons.append(f"SPF passes on {spf_pass} of {recorded['spf']} messages")
        if dmarc_pass and cls != FORWARDING:
            reasons.append(f"DMARC passes on {dmarc_pass} of {recorded['dmarc']} messages")
        if dkim_pass and cls != FORWARDING:
            reasons.append(f"DKIM passes on {dkim_pass} of {recorded['dkim']} messages")
        if cls == DEVICE:
            reasons.append(_sender_reason(s))
            if len(s.days) >= STABLE_DAYS:
                reasons.append(f"stable IP: seen on {len(s.days)} days")
        if p2_only and cls != MALICIOUS:
            reasons.append("not blocked by RejectDirectSend: it checks only the envelope sender")
    reasons.extend(remarks)
    return {
        "id": source_id(s.ip, s.helo),
        "class": cls,
        "reasons": reasons,
        "ips": [s.ip],
        "helos": helos[:CAP_NAMES],
        "service": service_name,
        "service_certificate": service.certificate if service else None,
        "service_shared_certificate": bool(service and service.shared_certificate),
        "countries": sorted(s.countries),
        "messages": n,
        "rows": s.rows,
        "recipients": len(s.recipients),
        "recipients_capped": s.recipients_capped,
        "first_seen": _iso(s.first),
        "last_seen": _iso(s.last),
        "days_active": len(s.days),
        "p1_domains": [d for d, _ in s.p1_domains.most_common()],
        "p2_domains": [d for d, _ in s.p2_domains.most_common()],
        "p1_accepted_messages": s.p1_own,
        "p2_accepted_messages": s.p2_own,
        "rds_blocks": s.p1_own > 0,
        "senders": [{"address": a, "messages": c} for a, c in s.senders.most_common(TOP_SENDERS)],
        "sender_count": len(s.senders),
        "subjects": [{"subject": t, "messages": c} for t, c in s.subjects.most_common(TOP_SUBJECTS)],
        "auth": {k: dict(sorted(c.items())) for k, c in s.auth.items()},
        "auth_recorded": auth_known,
        "dkim_pass_domains": sorted(s.dkim_domains),
        "self_addressed_messages": s.self_addressed,
        "lure_messages": s.lure_messages,
        "lures": dict(sorted(s.lures.items())),
        "statuses": dict(s.statuses.most_common(5)),
        "scan_verdicts": dict(sorted(s.verdicts.items())),
        "fix": None,
    }


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common(3)) or "not recorded"


def _sender_reason(s: SourceStats) -> str:
    top = [a for a, _ in s.senders.most_common(3)]
    if len(s.senders) <= CONSISTENT_SENDERS:
        return f"consistent sender{'s' if len(top) > 1 else ''}: {', '.join(top)}"
    return (f"relays for {len(s.senders)} sender addresses (an application or relay sending for "
            f"many users, e.g. {', '.join(top)})")


def _iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else None


def _decide_fixes(classified: list[dict[str, Any]]) -> None:
    """The fix each legitimate, RDS-blocked source needs before RejectDirectSend goes on."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for c in classified:
        if c["class"] == THIRD_PARTY and c["rds_blocks"] and c["service"]:
            by_service.setdefault(c["service"], []).append(c)
    rotating: set[str] = set()
    for name, members in by_service.items():
        single_day = sum(1 for m in members if m["days_active"] <= 1)
        if len(members) >= ROTATING_IPS and single_day * 4 >= len(members) * 3:
            rotating.add(name)
    for c in classified:
        if c["class"] not in LEGITIMATE or not c["rds_blocks"]:
            continue
        ips = ", ".join(c["ips"])
        if c["class"] == FORWARDING:
            host = c["helos"][0] if c["helos"] else ips
            c["fix"] = {
                "kind": SRS,
                "summary": f"ask the forwarder ({host}) to rewrite the envelope sender (SRS); "
                "a connector would let anyone on that host send as your domain, so none is "
                "planned",
            }
        elif c["class"] == THIRD_PARTY and c["service_certificate"]:
            shared = c["service_shared_certificate"]
            c["fix"] = {
                "kind": CERTIFICATE_CONNECTOR,
                "certificate": c["service_certificate"],
                "summary": f"partner connector matching {c['service']}'s TLS certificate "
                f"{c['service_certificate']}"
                + (" (shared by all its customers: only safe with DMARC p=reject or "
                   "quarantine on your domains)" if shared else ""),
            }
        elif c["class"] == THIRD_PARTY and c["service"] in rotating:
            c["fix"] = {
                "kind": TRANSPORT_RULE,
                "summary": f"{c['service']} sends from changing IPs and has no known certificate "
                "name: Microsoft advises a transport rule with the vendor's X-header exception "
                "instead of RejectDirectSend - ask the vendor for a dedicated IP or certificate",
            }
        else:
            vendor = c["service"] if c["class"] == THIRD_PARTY else None
            summary = f"partner connector restricted to {ips}"
            if vendor:
                summary += (f"; certificate name unknown - ask {vendor} for the name on its TLS "
                            "certificate (a certificate connector survives IP changes)")
            c["fix"] = {"kind": IP_CONNECTOR, "summary": summary}


def _daily(
    sources: dict[tuple[str, str], SourceStats], classified: list[dict[str, Any]]
) -> dict[str, dict[str, int]]:
    """Direct Send messages per day (UTC) by class."""
    cls_of = {c["id"]: c["class"] for c in classified}
    out: dict[str, Counter[str]] = {}
    for s in sources.values():
        cls = cls_of.get(source_id(s.ip, s.helo))
        if cls is None:
            continue
        for day, n in s.days.items():
            out.setdefault(day.isoformat(), Counter())[cls] += n
    return {day: {k: counts.get(k, 0) for k in CLASSES} for day, counts in sorted(out.items())}


def run_inventory(
    config: Config,
    paths: Iterable[str],
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_record: Callable[[InventoryBuilder], None] | None = None,
) -> tuple[dict[str, Any], ExportReader]:
    """Read ``paths`` and build the inventory document; the reader lists inputs and errors."""
    reader = ExportReader(config, on_bytes=on_bytes)
    builder = InventoryBuilder(config)
    for record in reader.records(list(paths)):
        builder.add(record)
        if on_record is not None:
            on_record(builder)
    inputs = [
        {"path": i.path, "format": i.format.value if i.format else None, "detail": i.detail,
         "encoding": i.encoding, "rows": i.rows, "records": i.records, "bad_rows": i.bad_rows,
         "error": i.error, "notes": i.notes}
        for i in reader.inputs
    ]
    return builder.document(inputs), reader
