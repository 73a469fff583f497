"""The verdict engine: checks -> findings -> score -> verdict -> action.

Modelled on rspamd: checks emit named findings, scores and composites are data from the
config, and the Reject Direct Send rule is a hard pre-result computed separately (it decides
refusal in the front doors; the score only decides deliver/tag/quarantine/reject of what was
accepted). The engine does no I/O of its own; front doors hand it an envelope, the receiver's
authentication results and the message.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable

from dsguard.attachments.sandbox import DecodeSandbox, InProcessDecoder
from dsguard.attachments.urls import is_ip_literal_host
from dsguard.auth.summary import AuthSummary
from dsguard.checks import auth, direct_send, headers, limits, transport
from dsguard.checks.base import Facts, Hit
from dsguard.checks.content import check_attachments, check_links, check_lures, compile_lures
from dsguard.config import Config
from dsguard.errors import ConfigError
from dsguard.findings import CATALOG
from dsguard.intel.bundle import Intel
from dsguard.mail.envelope import HopAnalysis
from dsguard.mail.message import ParsedMessage
from dsguard.model import Action, Envelope, Finding, Iocs, Level, RdsDecision, Verdict
from dsguard.policy.attribution import attribute
from dsguard.policy.domains import AcceptedDomains
from dsguard.policy.rds import decide_p1, decide_p2

MAX_EVIDENCE = 400
_COMPOSITE_CACHE_MAX = 4096


def validate_scoring(config: Config) -> None:
    """Every scored, composite or lure id must be a known finding; every finding needs a score."""
    problems = []
    scoring = config.scoring
    for fid in scoring.scores:
        if fid not in CATALOG and fid not in scoring.composites:
            problems.append(f"scoring.scores.{fid}: unknown finding id (see docs/findings.md)")
    for fid in CATALOG:
        if fid not in scoring.scores:
            problems.append(f"scoring.scores: no score for {fid}")
    for cid, comp in scoring.composites.items():
        if cid in CATALOG:
            problems.append(f"scoring.composites.{cid}: id already used by a finding")
        for pattern in comp.all_of + comp.any_of:
            if not any(fnmatch.fnmatchcase(fid, pattern) for fid in CATALOG):
                problems.append(f"scoring.composites.{cid}: {pattern!r} matches no finding id")
    for lid in config.lures.patterns:
        if lid not in CATALOG or not lid.startswith("LURE_"):
            problems.append(f"lures.patterns.{lid}: not a LURE_* finding id")
    if problems:
        raise ConfigError(config.source, problems)


class Engine:
    def __init__(self, config: Config, intel: Intel | None = None) -> None:
        validate_scoring(config)
        self.config = config
        self.intel = intel if intel is not None else Intel.from_config(config)
        self.accepted = AcceptedDomains(config.organization.accepted_domains)
        self.decoder: InProcessDecoder | DecodeSandbox = (
            DecodeSandbox(config.limits.max_decode_memory_mb)
            if config.limits.decode_sandbox
            else InProcessDecoder()
        )
        self._lures = compile_lures(config.lures.patterns)
        # The config is frozen: each level's action is looked up once.
        self._actions = {lvl: Action(getattr(config.actions, lvl.value)) for lvl in Level}
        # Composite patterns compiled once; fnmatchcase(name, p) is exactly
        # re.compile(fnmatch.translate(p)).match(name) (it caches that per call).
        self._composites = [
            (cid, comp, _matchers(comp.all_of), _matchers(comp.any_of))
            for cid, comp in config.scoring.composites.items()
        ]
        self._composite_cache: dict[tuple[str, ...], tuple[Finding, ...]] = {}
        self._checks: tuple[Callable[[Facts], Iterable[Hit]], ...] = (
            direct_send.check,
            auth.check,
            headers.check,
            transport.check,
            lambda f: check_lures(f, self._lures),
            check_attachments,  # before links: QR URLs feed the link checks
            check_links,
            limits.check,
        )

    def evaluate(
        self,
        message: ParsedMessage,
        envelope: Envelope,
        auth_summary: AuthSummary,
        *,
        accepted: AcceptedDomains | None = None,
        hops: HopAnalysis | None = None,
    ) -> Verdict:
        org = accepted if accepted is not None else self.accepted
        attribution = attribute(envelope, self.config.connectors)
        facts = Facts(
            message=message,
            envelope=envelope,
            auth=auth_summary,
            accepted=org,
            attribution=attribution,
            config=self.config,
            intel=self.intel,
            decoder=self.decoder,
            hops=hops,
        )
        findings = self._score(self._run(facts))
        score = round(sum(f.score for f in findings), 2)
        level = self.level_for(score)
        return Verdict(
            level=level,
            score=score,
            findings=findings,
            direct_send=facts.direct_send,
            attribution=attribution,
            action=self._actions[level],
            iocs=_iocs(facts),
            rds=self.rds_decisions(facts),
        )

    def close(self) -> None:
        """Stop the decoder child process, if one was started."""
        self.decoder.close()

    def level_for(self, score: float) -> Level:
        s = self.config.scoring
        if score >= s.malicious:
            return Level.MALICIOUS
        if score >= s.suspicious:
            return Level.SUSPICIOUS
        return Level.CLEAN

    def rds_decisions(self, facts: Facts) -> tuple[RdsDecision, ...]:
        org = self.config.organization
        mode = org.reject_direct_send
        p1 = decide_p1(mode, facts.accepted, facts.attribution, facts.p1_domain)
        proven = facts.auth.proven_domains(facts.own_claims)
        shown = facts.header_from.addr if facts.header_from else ""
        p2 = decide_p2(
            mode,
            org.check_header_from,
            facts.accepted,
            facts.attribution,
            facts.own_claims,
            proven,
            shown,
        )
        return (p1, p2)

    def _run(self, facts: Facts) -> list[Hit]:
        # list.extend drains each check's generator in C: no generator of generators.
        hits: list[Hit] = []
        for check in self._checks:
            hits.extend(check(facts))
        return hits

    def _score(self, hits: Iterable[Hit]) -> tuple[Finding, ...]:
        """One finding per id (first summary, evidence joined), composites added, sorted."""
        merged: dict[str, tuple[str, list[str]]] = {}
        for hit in hits:
            if hit.id not in merged:
                merged[hit.id] = (hit.summary, [hit.evidence] if hit.evidence else [])
            elif hit.evidence and len(merged[hit.id][1]) < 5:
                merged[hit.id][1].append(hit.evidence)
        scores = self.config.scoring.scores
        findings = [
            Finding(
                fid, scores.get(fid, 0.0), _clean(summary), _clean(" | ".join(ev))[:MAX_EVIDENCE]
            )
            for fid, (summary, ev) in merged.items()
        ]
        findings.extend(self._composite_findings(tuple(merged)))
        findings.sort(key=lambda f: (-f.score, f.id))
        return tuple(findings)

    def _composite_findings(self, ids: tuple[str, ...]) -> tuple[Finding, ...]:
        """The composites that ``ids`` (finding ids in first-hit order) complete. A function of
        the ids alone, and a mailbox produces few distinct id lists: answers are remembered."""
        known = self._composite_cache.get(ids)
        if known is not None:
            return known
        scores = self.config.scoring.scores
        out: list[Finding] = []
        for cid, comp, all_of, any_of in self._composites:
            if all(any(m(i) for i in ids) for m in all_of) and (
                not any_of or any(m(i) for i in ids for m in any_of)
            ):
                parts = [i for i in ids if any(m(i) for m in all_of + any_of)]
                out.append(
                    Finding(cid, scores.get(cid, comp.score), comp.description, " + ".join(parts))
                )
        if len(self._composite_cache) >= _COMPOSITE_CACHE_MAX:
            self._composite_cache.clear()
        found = self._composite_cache[ids] = tuple(out)
        return found


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(text: str) -> str:
    """Findings are shown in terminals and pages: no control characters from hostile input."""
    if text.isprintable():
        return text  # no C0 control or DEL in it: nothing for the pattern to replace
    return _CONTROL.sub("?", text)


def _matchers(patterns: tuple[str, ...]) -> list[Callable[[str], re.Match[str] | None]]:
    return [re.compile(fnmatch.translate(p)).match for p in patterns]


def _iocs(facts: Facts) -> Iocs:
    targets = facts.link_hosts  # (url, host) of body links then QR URLs, without repeats
    ips: list[str] = []
    if facts.envelope.client_ip and facts.anonymous:
        ips.append(facts.envelope.client_ip)
    domains: list[str] = []
    for _, host in targets:
        if not host:
            continue
        if is_ip_literal_host(host):
            ips.append(host.strip("[]"))
        else:
            domains.append(host)
    return Iocs(
        ips=tuple(dict.fromkeys(ips)),
        urls=tuple([url for url, _ in targets]),
        domains=tuple(dict.fromkeys(domains)),
        qr_urls=facts.qr_urls,
    )
