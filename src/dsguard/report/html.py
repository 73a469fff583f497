"""``--format html``: one self-contained page an analyst can open, attach to a ticket or mail.

Flagged messages come first (malicious, then suspicious, highest score first) with their
findings, envelope and indicators; clean messages follow in a collapsed list; unreadable inputs
last. The page has inline CSS only, no script and no external resource, so it reads the same
offline, in a mail client's preview or in a browser with JavaScript off.

The page cannot be written before the run ends (flagged messages are sorted), so results are
kept as compact dicts, and capped: the ``MAX_FLAGGED`` highest-scoring flagged messages,
the first ``MAX_CLEAN`` clean ones, the first ``MAX_ERRORS`` errors; the page states how many
were left out (the json/csv formats carry every one).

SECURITY: every value is attacker-written. Jinja2 autoescaping is forced on (the template's
``.html.j2`` name would not switch it on by extension), so ``<script>`` in a subject is shown
as text. Indicators are never links: URLs and domains are shown defanged
(``hxxps://evil[.]example/``), so neither a click nor a chat client's auto-linker opens them,
and a ``javascript:`` URL is just text. A Content-Security-Policy meta tag forbids scripts and
every external fetch as a second wall should escaping ever fail. Control characters are shown
as visible ``\\xNN`` escapes, bidi overrides included, so text cannot display differently from
what the message holds.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TextIO

from jinja2 import Environment, PackageLoader, StrictUndefined, Template

from dsguard import __version__
from dsguard.model import Level, ScanResult
from dsguard.report.serialize import RunSummary, defang, ordered_findings

MAX_FLAGGED = 10_000
MAX_CLEAN = 5_000
MAX_ERRORS = 1_000
# Per message: long recipient or indicator lists are cut with a "+N more".
MAX_LIST_ITEMS = 100
TOP_IPS_SHOWN = 10

_LEVEL_RANK = {Level.MALICIOUS: 2, Level.SUSPICIOUS: 1, Level.CLEAN: 0}

# Controls other than TAB/LF, DEL, C1, line/paragraph separators, bidi marks/overrides.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)


def visible(value: object) -> str:
    """Text as given, with invisible or display-altering characters shown as escapes."""
    if value is None:
        return ""
    return _INVISIBLE.sub(_escape_char, str(value))


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _capped(items: tuple[str, ...], show: Callable[[str], str] = visible) -> dict[str, Any]:
    return {
        "items": [show(x) for x in items[:MAX_LIST_ITEMS]],
        "more": max(len(items) - MAX_LIST_ITEMS, 0),
    }


def _flagged_view(r: ScanResult, seq: int) -> dict[str, Any]:
    v = r.verdict
    assert v is not None
    s = r.summary
    e = r.envelope
    envelope: list[tuple[str, str]] = []
    if e is not None:
        pairs = (
            ("origin", e.origin.value), ("client IP", e.client_ip), ("country", e.country),
            ("client hostname", e.client_hostname), ("HELO", e.helo),
            ("MAIL FROM", "<>" if e.mail_from == "" else e.mail_from),
            ("RCPT TO", ", ".join(e.rcpt_to[:MAX_LIST_ITEMS])), ("AUTH user", e.auth_user),
            ("receiver", e.receiver),
        )
        envelope = [(label, visible(value)) for label, value in pairs if value]
    return {
        "n": seq,
        "source": visible(r.source),
        "level": v.level.value,
        "score": v.score,
        "direct_send": v.direct_send,
        "action": v.action.value,
        "attribution": visible(v.attribution.label()),
        "attribution_reason": visible(v.attribution.reason),
        "from": visible(s.from_addr) if s else "",
        "from_display": visible(s.from_display) if s else "",
        "to": _capped(s.to if s else ()),
        "subject": visible(s.subject) if s and s.subject is not None else None,
        "date": visible(s.date) if s else "",
        "message_id": visible(s.message_id) if s else "",
        "client_ip": visible(e.client_ip) if e else "",
        "country": visible(e.country) if e else "",
        "envelope": envelope,
        "rds": [
            {"stage": visible(d.stage), "outcome": d.outcome.value, "enforced": d.enforced,
             "reason": visible(d.reason)}
            for d in v.rds
        ],
        "findings": [
            {"id": visible(f.id), "score": f.score, "summary": visible(f.summary),
             "evidence": visible(f.evidence)}
            for f in ordered_findings(v)
        ],
        "qr_urls": _capped(v.iocs.qr_urls, defang),
        "urls": _capped(v.iocs.urls, defang),
        "domains": _capped(v.iocs.domains, defang),
        "ips": _capped(v.iocs.ips),
        "notes": [visible(n) for n in r.notes],
    }


def _clean_view(r: ScanResult, seq: int) -> dict[str, Any]:
    v = r.verdict
    assert v is not None
    s = r.summary
    return {
        "n": seq,
        "source": visible(r.source),
        "score": v.score,
        "direct_send": v.direct_send,
        "from": visible(s.from_addr) if s else "",
        "to": _capped(s.to if s else ()),
        "subject": visible(s.subject) if s and s.subject is not None else None,
        "finding_ids": " ".join(visible(f.id) for f in ordered_findings(v)),
    }


class HtmlRenderer:
    def __init__(self, *, title: str = "dsguard scan") -> None:
        self._title = title
        self._out: TextIO | None = None
        self._seq = 0
        # Min-heap of the best MAX_FLAGGED so far; the key never ties (seq is unique), so the
        # dicts themselves are never compared.
        self._flagged: list[tuple[int, float, int, dict[str, Any]]] = []
        self._flagged_seen = 0
        self._clean: list[dict[str, Any]] = []
        self._clean_seen = 0
        self._errors: list[dict[str, str]] = []
        self._errors_seen = 0
        self._skipped: list[dict[str, str]] = []
        self._skipped_seen = 0

    def start(self, out: TextIO) -> None:
        self._out = out

    def add(self, result: ScanResult) -> None:
        self._seq += 1
        v = result.verdict
        if result.error is not None:
            self._errors_seen += 1
            if len(self._errors) < MAX_ERRORS:
                self._errors.append(
                    {"source": visible(result.source), "error": visible(result.error)}
                )
        elif v is None:
            self._skipped_seen += 1
            if len(self._skipped) < MAX_ERRORS:
                self._skipped.append(
                    {"source": visible(result.source),
                     "why": visible("; ".join(result.notes))}
                )
        elif v.level is Level.CLEAN:
            self._clean_seen += 1
            if len(self._clean) < MAX_CLEAN:
                self._clean.append(_clean_view(result, self._seq))
        else:
            self._flagged_seen += 1
            score = v.score if v.score == v.score else float("-inf")  # NaN sorts last
            entry = (_LEVEL_RANK[v.level], score, -self._seq, _flagged_view(result, self._seq))
            if len(self._flagged) < MAX_FLAGGED:
                heapq.heappush(self._flagged, entry)
            elif entry[:3] > self._flagged[0][:3]:
                heapq.heapreplace(self._flagged, entry)

    def finish(self, summary: RunSummary) -> None:
        if self._out is None:
            raise RuntimeError("HtmlRenderer.start() was not called")
        flagged = [entry[3] for entry in sorted(self._flagged, key=lambda e: e[:3], reverse=True)]
        context = {
            "title": visible(self._title),
            "version": __version__,
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "summary": summary,
            "levels": summary.level_counts(),
            "top_ips": [(visible(ip), n) for ip, n in summary.top_ips.most_common(TOP_IPS_SHOWN)],
            "run_notes": [visible(n) for n in summary.notes],
            "rate": summary.messages_per_second,
            "flagged": flagged,
            "flagged_omitted": self._flagged_seen - len(flagged),
            "clean": self._clean,
            "clean_omitted": self._clean_seen - len(self._clean),
            "errors": self._errors,
            "errors_omitted": self._errors_seen - len(self._errors),
            "skipped": self._skipped,
            "skipped_omitted": self._skipped_seen - len(self._skipped),
            "max_flagged": MAX_FLAGGED,
        }
        # generate() streams the page in chunks instead of building one large string.
        for chunk in _template().generate(**context):
            self._out.write(chunk)
        self._out.flush()


@lru_cache(maxsize=1)
def _template() -> Template:
    env = Environment(
        loader=PackageLoader("dsguard.report", "templates"),
        # Forced on: select_autoescape() would not match the ".html.j2" suffix.
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")
