"""The stable, scriptable shape of one scan result, the run summary, and display-safe text.

``result_to_dict`` is the contract behind ``--format json/jsonl`` (and the source of every
other renderer): its keys are always present, whatever the result, so ``jq '.verdict'`` never
meets a missing key. Change it only by adding keys and bumping ``SCHEMA_VERSION``.

SECURITY: every string in a result (subject, display name, addresses, evidence, URLs, even a
file name) can be written by the attacker. The JSON shape keeps values exactly as given (JSON
escaping makes them inert); the human-facing renderers pass them through ``one_line`` (control
characters, ANSI escapes, CR/LF and bidi overrides removed, length capped) and show URLs and
domains through ``defang`` so that no copy of a report turns an indicator into a live link.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dsguard.model import Envelope, Finding, Level, ScanResult, Verdict

SCHEMA_VERSION = 1

# The keys of one result, in output order. Scripts rely on every one being present.
RESULT_KEYS: tuple[str, ...] = (
    "source", "path", "index",
    "message_id", "from", "from_display", "to", "subject", "date",
    "direct_send", "verdict", "score", "action", "attribution",
    "envelope", "rds", "findings", "iocs", "notes", "error",
)
ENVELOPE_KEYS: tuple[str, ...] = (
    "origin", "client_ip", "country", "helo", "mail_from", "rcpt_to", "receiver",
    "client_hostname", "auth_user",
)

# How many sending IPs the summary lists (text shows fewer).
SUMMARY_TOP_IPS = 20


def result_to_dict(r: ScanResult) -> dict[str, Any]:
    """One result as plain JSON-ready values; see docs in the module and the CLI reference."""
    s = r.summary
    v = r.verdict
    return {
        "source": r.source,
        "path": r.path,
        "index": r.index,
        "message_id": s.message_id if s else None,
        "from": s.from_addr if s else None,
        "from_display": s.from_display if s else None,
        "to": list(s.to) if s else [],
        "subject": s.subject if s else None,
        "date": s.date if s else None,
        "direct_send": v.direct_send if v else None,
        "verdict": v.level.value if v else None,
        "score": _number(v.score) if v else None,
        "action": v.action.value if v else None,
        "attribution": v.attribution.label() if v else None,
        "envelope": _envelope_to_dict(r.envelope) if r.envelope else None,
        "rds": [
            {"stage": d.stage, "outcome": d.outcome.value, "enforced": d.enforced,
             "reason": d.reason}
            for d in (v.rds if v else ())
        ],
        "findings": [
            {"id": f.id, "score": _number(f.score), "summary": f.summary, "evidence": f.evidence}
            for f in ordered_findings(v)
        ],
        "iocs": {
            "ips": list(v.iocs.ips) if v else [],
            "urls": list(v.iocs.urls) if v else [],
            "domains": list(v.iocs.domains) if v else [],
            "qr_urls": list(v.iocs.qr_urls) if v else [],
        },
        "notes": list(r.notes),
        "error": r.error,
    }


def _number(x: float) -> float | None:
    # NaN/inf are not JSON; a broken score must not abort a whole run's output.
    return float(x) if math.isfinite(x) else None


def _envelope_to_dict(e: Envelope) -> dict[str, Any]:
    return {
        "origin": e.origin.value,
        "client_ip": e.client_ip,
        "country": e.country,
        "helo": e.helo,
        "mail_from": e.mail_from,
        "rcpt_to": list(e.rcpt_to),
        "receiver": e.receiver,
        "client_hostname": e.client_hostname,
        "auth_user": e.auth_user,
    }


def ordered_findings(v: Verdict | None) -> list[Finding]:
    """Findings by score, highest first; ties keep the engine's order (sort is stable)."""
    if v is None:
        return []
    return sorted(v.findings, key=lambda f: -f.score)


@dataclass
class RunSummary:
    """Counters over one run, fed one result at a time (constant memory but for ``top_ips``)."""

    messages: int = 0  # results with a verdict
    errors: int = 0  # inputs that could not be read (r.error set)
    skipped: int = 0  # neither verdict nor error: "skipped, not mail"
    by_level: Counter[str] = field(default_factory=Counter)
    direct_send: int = 0
    # Client IPs (envelope.client_ip) of flagged messages: where the campaign sends from.
    top_ips: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    def add(self, r: ScanResult) -> None:
        if r.error is not None:
            self.errors += 1
            return
        v = r.verdict
        if v is None:
            self.skipped += 1
            return
        self.messages += 1
        self.by_level[v.level.value] += 1
        if v.direct_send:
            self.direct_send += 1
        if r.flagged and r.envelope is not None and r.envelope.client_ip:
            self.top_ips[r.envelope.client_ip] += 1

    @property
    def flagged(self) -> int:
        return self.by_level[Level.SUSPICIOUS.value] + self.by_level[Level.MALICIOUS.value]

    @property
    def messages_per_second(self) -> float | None:
        if self.elapsed_seconds <= 0:
            return None
        return self.messages / self.elapsed_seconds

    def level_counts(self) -> dict[str, int]:
        """Every level, worst first, zero included (so the shape never changes)."""
        return {lvl.value: self.by_level[lvl.value] for lvl in reversed(Level)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "errors": self.errors,
            "skipped": self.skipped,
            "by_level": self.level_counts(),
            "direct_send": self.direct_send,
            "top_ips": [
                {"ip": ip, "count": n} for ip, n in self.top_ips.most_common(SUMMARY_TOP_IPS)
            ],
            "notes": list(self.notes),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


# --- display-safe text, shared by the human-facing renderers (text, html) -----------------

# C0/C1 controls (ESC starts ANSI sequences; CR can overwrite a terminal line), DEL, the Unicode
# line/paragraph separators, and the bidi embedding/override/isolate marks used to make text
# display in a different order than it reads ("Trojan Source", CVE-2021-42574).
_UNSAFE_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+"
)
_SURROGATES = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(r"\s{2,}")
ELLIPSIS = "…"


def one_line(value: object, limit: int = 200) -> str:
    """A value as a single printable line: no control characters, at most ``limit`` chars.

    Control runs become one space (so ``a\\r\\nb`` stays readable as ``a b``); lone surrogates
    (undecodable bytes smuggled through ``surrogateescape``) become U+FFFD so writing the line
    to a UTF-8 stream can never fail.
    """
    if value is None:
        return ""
    text = _SURROGATES.sub("\ufffd", str(value))
    text = _UNSAFE_CHARS.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    if limit > 0 and len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + ELLIPSIS
    return text


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(//)?")


def defang(url_or_domain: str) -> str:
    """An indicator as inert text: ``https://evil.example/x`` -> ``hxxps://evil[.]example/x``.

    Only the host's dots are bracketed (paths stay searchable); schemes other than http(s)
    (``javascript:``, ``data:``) get their colon bracketed. The result is not a URL any
    auto-linker (mail client, chat, ticket system) recognises.
    """
    text = one_line(url_or_domain, limit=0)
    m = _SCHEME.match(text)
    if m is None:
        host, sep, rest = _split_host(text)
        return host.replace(".", "[.]") + sep + rest
    scheme, slashes = m.group(1), m.group(2) or ""
    rest_of_url = text[m.end():]
    lowered = scheme.lower()
    if lowered in ("http", "https"):
        prefix = "hxxp" + lowered[4:] + ":" + slashes
    else:
        prefix = scheme + "[:]" + slashes
    if not slashes:
        # No authority (mailto:, javascript:, data:): nothing host-like to bracket reliably,
        # so bracket every dot.
        return prefix + rest_of_url.replace(".", "[.]")
    host, sep, rest = _split_host(rest_of_url)
    return prefix + host.replace(".", "[.]") + sep + rest


def _split_host(text: str) -> tuple[str, str, str]:
    for i, ch in enumerate(text):
        if ch in "/?#\\":
            return text[:i], ch, text[i + 1:]
    return text, "", ""
