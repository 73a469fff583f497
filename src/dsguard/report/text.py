"""The terminal report: one block per flagged message, one line per clean one, a summary.

Streaming: ``add`` writes the result at once and keeps nothing, so a scan of a million-message
mbox prints as it goes in constant memory.

SECURITY: subjects, names, addresses and evidence are attacker-written and may carry ANSI
escape sequences (recolour or hide lines, retitle the terminal), CR (overwrite the verdict
shown on the same line) or LF (forge a whole "clean" line). Every value goes through
``one_line`` before it is written; with colour on, values are wrapped in ``rich.text.Text``
segments (never parsed as rich markup) so ``[bold]`` in a subject is just text. URLs are
defanged so a terminal's link detection cannot open them on a click.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.text import Text

from dsguard.model import EnvelopeOrigin, Level, ScanResult
from dsguard.report.serialize import RunSummary, defang, one_line, ordered_findings

# Column and length limits: wide enough to identify a message, short enough that one hostile
# header cannot flood the screen.
_TAG_WIDTH = 10  # len("SUSPICIOUS")
_SUBJECT_MAX = 120
_ADDRESS_MAX = 100
_DISPLAY_MAX = 60
_EVIDENCE_MAX = 160
_SUMMARY_MAX = 300
_URL_MAX = 200
_RECIPIENTS_SHOWN = 3
_QR_URLS_SHOWN = 5
_TOP_IPS_SHOWN = 5
_INDENT = "    "

_LEVEL_STYLE = {
    Level.MALICIOUS: "bold red",
    Level.SUSPICIOUS: "bold yellow",
    Level.CLEAN: "green",
}

Segment = tuple[str, str]  # (text, rich style; "" for none)


class TextRenderer:
    """Human-readable report for a terminal or a plain log file."""

    def __init__(self, *, color: bool = False) -> None:
        self._color = color
        self._out: TextIO | None = None
        self._console: Console | None = None

    def start(self, out: TextIO) -> None:
        self._out = out
        if self._color:
            # markup/emoji/highlight off: only our own styles are applied, never anything
            # derived from message content. soft_wrap keeps one logical line per line.
            self._console = Console(
                file=out, force_terminal=True, color_system="standard", markup=False,
                emoji=False, highlight=False, soft_wrap=True,
            )

    def add(self, result: ScanResult) -> None:
        for line in _result_lines(result):
            self._emit(line)

    def finish(self, summary: RunSummary) -> None:
        for line in _summary_lines(summary):
            self._emit(line)

    def _emit(self, segments: list[Segment]) -> None:
        if self._out is None:
            raise RuntimeError("TextRenderer.start() was not called")
        if self._console is not None:
            self._console.print(Text.assemble(*segments))
        else:
            self._out.write("".join(text for text, _ in segments) + "\n")


def _result_lines(r: ScanResult) -> list[list[Segment]]:
    source = one_line(r.source, _ADDRESS_MAX * 2)
    if r.error is not None:
        return [[("ERROR", "bold magenta"), (f" {source}: {one_line(r.error)}", "")]]
    v = r.verdict
    if v is None:
        why = "; ".join(one_line(n) for n in r.notes) or "not a mail message"
        return [[("SKIPPED", "dim"), (f" {source}: {why}", "dim")]]

    tag = v.level.value.upper().ljust(_TAG_WIDTH)
    header: list[Segment] = [
        (tag, _LEVEL_STYLE[v.level]),
        (f" {v.score:6.1f}  ", ""),
        ("DS" if v.direct_send else "  ", "bold" if v.direct_send else ""),
        (f"  {source}", ""),
    ]
    if not r.flagged:
        # One compact line: clean mail should not drown the flagged blocks.
        return [[*header, (f"  {_from_to(r)}", "dim"), (f"  {_quoted_subject(r)}", "dim")]]

    lines: list[list[Segment]] = [header]
    lines.append([(f"{_INDENT}{_from_to(r)}", "")])
    lines.append([(f"{_INDENT}subject: ", "dim"), (_quoted_subject(r), "")])
    lines.append([(f"{_INDENT}{_connection(r)}", "dim")])

    findings = ordered_findings(v)
    id_width = max((len(one_line(f.id, 40)) for f in findings), default=0)
    for f in findings:
        line: list[Segment] = [
            (_INDENT + one_line(f.id, 40).ljust(id_width), "cyan"),
            (f"  {f.score:+5.1f}  ", ""),
            (one_line(f.summary, _SUMMARY_MAX), ""),
        ]
        if f.evidence:
            line.append((f"  [{one_line(f.evidence, _EVIDENCE_MAX)}]", "dim"))
        lines.append(line)

    qr = v.iocs.qr_urls
    for url in qr[:_QR_URLS_SHOWN]:
        lines.append([(f"{_INDENT}QR: ", "bold"), (defang(one_line(url, _URL_MAX)), "")])
    if len(qr) > _QR_URLS_SHOWN:
        lines.append([(f"{_INDENT}QR: +{len(qr) - _QR_URLS_SHOWN} more", "dim")])
    for note in r.notes:
        lines.append([(f"{_INDENT}note: {one_line(note)}", "italic")])
    return lines


def _from_to(r: ScanResult) -> str:
    s = r.summary
    if s is None:
        return "(no headers)"
    addr = one_line(s.from_addr, _ADDRESS_MAX) or "(no From)"
    display = one_line(s.from_display, _DISPLAY_MAX)
    sender = f'"{display}" <{addr}>' if display and display != addr else addr
    shown = [one_line(t, _ADDRESS_MAX) for t in s.to[:_RECIPIENTS_SHOWN]]
    rest = len(s.to) - len(shown)
    to = ", ".join(shown) or "(no To)"
    if rest > 0:
        to += f" (+{rest} more)"
    return f"{sender} -> {to}"


def _quoted_subject(r: ScanResult) -> str:
    subject = r.summary.subject if r.summary else None
    if subject is None:
        return "(no subject)"
    return f'"{one_line(subject, _SUBJECT_MAX)}"'


def _connection(r: ScanResult) -> str:
    """Where it came from and what the policy does: the facts an admin acts on."""
    v = r.verdict
    e = r.envelope
    parts: list[str] = []
    if e is not None and e.client_ip:
        country = f" ({one_line(e.country, 8)})" if e.country else ""
        parts.append(f"from {one_line(e.client_ip, 64)}{country}")
    if e is not None and e.helo:
        parts.append(f"helo {one_line(e.helo, 80)}")
    if v is not None:
        parts.append(one_line(v.attribution.label(), 80))
        parts.append(f"action {v.action.value}")
        parts.extend(
            f"{one_line(d.stage, 8)} {'rejected' if d.enforced else 'would reject'}"
            for d in v.rds
            if d.would_reject
        )
    if e is not None and e.origin in (EnvelopeOrigin.INFERRED, EnvelopeOrigin.NONE):
        # The reader must know the "from" facts may be sender-written (see EnvelopeOrigin).
        parts.append(f"envelope {e.origin.value}")
    return " · ".join(parts)


def _summary_lines(s: RunSummary) -> list[list[Segment]]:
    counts = ", ".join(f"{n} {level}" for level, n in s.level_counts().items())
    plural = "" if s.messages == 1 else "s"
    lines: list[list[Segment]] = [
        [("", "")],
        [("Summary: ", "bold"), (f"{s.messages} message{plural}: {counts}", "")],
        [(
            f"  direct send: {s.direct_send} · errors: {s.errors} · skipped: {s.skipped}",
            "",
        )],
    ]
    top = s.top_ips.most_common(_TOP_IPS_SHOWN)
    if top:
        ips = ", ".join(f"{one_line(ip, 64)} ({n})" for ip, n in top)
        lines.append([(f"  top sending IPs of flagged messages: {ips}", "")])
    for note in s.notes:
        lines.append([(f"  note: {one_line(note, 0)}", "italic")])
    rate = s.messages_per_second
    speed = f" ({rate:.1f} messages/s)" if rate is not None else ""
    lines.append([(f"  elapsed: {s.elapsed_seconds:.2f} s{speed}", "dim")])
    return lines
