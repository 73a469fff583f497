"""The terminal report: readable, streaming, and immune to hostile header text."""

from __future__ import annotations

import io
import re
from dataclasses import replace

from dsguard.model import ScanResult
from dsguard.report.serialize import RunSummary
from dsguard.report.text import TextRenderer

ESC = "\x1b"


def render(results: list[ScanResult], *, color: bool = False,
           notes: tuple[str, ...] = (), elapsed: float = 2.0) -> str:
    out = io.StringIO()
    renderer = TextRenderer(color=color)
    summary = RunSummary(notes=list(notes), elapsed_seconds=elapsed)
    renderer.start(out)
    for r in results:
        renderer.add(r)
        summary.add(r)
    renderer.finish(summary)
    return out.getvalue()


def test_campaign_block_shows_header_sender_subject_findings_and_qr(
    campaign: ScanResult,
) -> None:
    lines = render([campaign]).splitlines()
    assert re.fullmatch(r"MALICIOUS\s+23\.0\s+DS\s+mail/x\.mbox#3", lines[0])
    assert lines[1].strip() == '"Joe" <joe@contoso.com> -> joe@contoso.com'
    assert lines[2].strip() == 'subject: "New Missed Fax-msg"'
    assert "139.28.36.171 (UA)" in lines[3]
    assert "P1 would reject" in lines[3]
    finding_lines = [ln for ln in lines if re.match(r"\s+[A-Z]+_[A-Z_]+\s+[+-]\d", ln)]
    assert len(finding_lines) == 9
    # Highest score first, with the evidence in brackets.
    assert re.fullmatch(
        r"\s+DS_SPOOF_ENVELOPE\s+\+6\.0  Accepted-domain envelope sender is not "
        r"authenticated\.  \[spf=fail smtp\.mailfrom=contoso\.com; dkim=none\]",
        finding_lines[0],
    )
    assert finding_lines[-1].split()[0] == "DS_DIRECT_SEND"
    assert "    QR: hxxps://voice-e091b[.]firebaseapp[.]com/listen?id=7" in lines


def test_clean_message_is_one_compact_line(clean: ScanResult) -> None:
    text = render([clean])
    body = text.split("\nSummary:")[0].strip("\n").splitlines()
    assert len(body) == 1
    assert body[0].startswith("CLEAN")
    assert "mail/newsletter.eml" in body[0]
    assert '"Weekly digest"' in body[0]


def test_unreadable_input_is_one_error_line(unreadable: ScanResult) -> None:
    assert "ERROR mail/broken.msg: not an OLE2 compound file\n" in render([unreadable])


def test_summary_has_counts_direct_send_errors_ips_notes_and_rate(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult,
) -> None:
    note = "accepted domains inferred from recipients (no --accepted-domain or config)"
    text = render([campaign, clean, unreadable, hostile, campaign], notes=(note,), elapsed=2.0)
    summary = text[text.index("Summary:"):]
    assert "4 messages: 2 malicious, 1 suspicious, 1 clean" in summary
    assert "direct send: 3" in summary
    assert "errors: 1" in summary
    assert "skipped: 0" in summary
    assert "top sending IPs of flagged messages: 139.28.36.171 (2), 198.51.100.7 (1)" in summary
    assert f"note: {note}" in summary
    assert "elapsed: 2.00 s (2.0 messages/s)" in summary


def test_top_ips_are_limited_to_five(campaign: ScanResult) -> None:
    summary = RunSummary()
    for i in range(8):
        summary.top_ips[f"192.0.2.{i}"] = 10 - i
    out = io.StringIO()
    renderer = TextRenderer()
    renderer.start(out)
    renderer.finish(summary)
    assert "192.0.2.4 (6)" in out.getvalue()
    assert "192.0.2.5" not in out.getvalue()


def test_hostile_subject_cannot_inject_escapes_or_lines(hostile: ScanResult) -> None:
    text = render([hostile])
    assert ESC not in text
    assert "\r" not in text
    assert "\x07" not in text
    # The forged header stays on the subject line instead of starting a line of its own.
    assert not any(line.startswith("X-Injected") for line in text.splitlines())
    subject_line = next(ln for ln in text.splitlines() if "subject:" in ln)
    assert "line1 X-Injected: yes" in subject_line
    assert "<script>alert(1)</script>" in subject_line  # shown as text, not interpreted


def test_plain_output_has_no_escape_codes(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult,
) -> None:
    assert ESC not in render([campaign, clean, unreadable], color=False)


def test_color_output_styles_our_text_but_never_the_message_content(
    campaign: ScanResult, hostile: ScanResult,
) -> None:
    text = render([campaign, hostile], color=True)
    assert ESC in text  # colour is on
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "MALICIOUS" in plain
    # The hostile sequences are gone; the subject's rich markup is shown literally.
    assert "\x1b[31mRED" not in text
    assert "[bold]markup[/bold]" in plain
    assert "\r" not in text


def test_long_subject_is_truncated(clean: ScanResult) -> None:
    assert clean.summary is not None
    long = replace(clean, summary=replace(clean.summary, subject="A" * 5000))
    line = render([long]).splitlines()[0]
    assert "A" * 5000 not in line
    assert "…" in line
    assert len(line) < 400


def test_add_writes_immediately(campaign: ScanResult, clean: ScanResult) -> None:
    out = io.StringIO()
    renderer = TextRenderer()
    renderer.start(out)
    renderer.add(campaign)
    first = len(out.getvalue())
    assert first > 0
    renderer.add(clean)
    assert len(out.getvalue()) > first
