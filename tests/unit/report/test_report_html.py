"""--format html: one self-contained page where attacker text can never become markup."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from dsguard.model import Level, ScanResult
from dsguard.report import html as html_report
from dsguard.report.html import HtmlRenderer
from dsguard.report.serialize import RunSummary


def render(results: list[ScanResult], *, title: str = "dsguard scan",
           notes: tuple[str, ...] = ()) -> str:
    out = io.StringIO()
    renderer = HtmlRenderer(title=title)
    summary = RunSummary(notes=list(notes), elapsed_seconds=1.5)
    renderer.start(out)
    for r in results:
        renderer.add(r)
        summary.add(r)
    renderer.finish(summary)
    return out.getvalue()


class _Tags(HTMLParser):
    """Collects every start tag with its attributes, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_hostile_markup_is_escaped(hostile: ScanResult) -> None:
    page = render([hostile])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    # No element the attacker wrote exists in the document.
    names = {t for t, _ in tags(page)}
    assert "script" not in names
    assert "img" not in names
    assert not any(k.startswith("on") for _, attrs in tags(page) for k in attrs)


def test_iocs_are_defanged_text_never_links(campaign: ScanResult, hostile: ScanResult) -> None:
    page = render([campaign, hostile])
    assert "hxxps://voice-e091b[.]firebaseapp[.]com/listen?id=7" in page
    assert "hxxps://mv4lh[.]bsfff[.]es/index.html" in page
    assert "javascript[:]alert(document[.]domain)" in page
    assert "javascript:alert" not in page
    # No IOC (or anything else) is a link or a fetched resource.
    for tag, attrs in tags(page):
        assert "href" not in attrs, tag
        assert "src" not in attrs, tag


def test_page_is_self_contained(campaign: ScanResult) -> None:
    page = render([campaign])
    assert page.startswith("<!DOCTYPE html>")
    assert "<style>" in page
    names = [t for t, _ in tags(page)]
    for external in ("script", "link", "img", "iframe", "object", "embed"):
        assert external not in names
    csp = [a for t, a in tags(page) if t == "meta" and a.get("http-equiv") ==
           "Content-Security-Policy"]
    assert csp
    assert "default-src 'none'" in (csp[0]["content"] or "")


def test_summary_shows_counts_top_ips_and_notes(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult,
) -> None:
    note = "accepted domains inferred from recipients (no --accepted-domain or config)"
    page = render([campaign, clean, unreadable, hostile, campaign], notes=(note,))
    summary = page[page.index('id="summary"'):page.index('id="flagged"')]

    def card(name: str) -> str:
        m = re.search(rf'class="card {name}"><span class="n">(\d+)</span>', summary)
        assert m, name
        return m.group(1)

    assert card("messages") == "4"
    assert card("malicious") == "2"
    assert card("suspicious") == "1"
    assert card("clean") == "1"
    assert card("direct-send") == "3"
    assert card("errors") == "1"
    assert re.search(r"139\.28\.36\.171</td><td class=\"num\">2<", summary)
    assert note in summary
    assert re.search(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)


def test_flagged_first_worst_first_then_clean_collapsed_then_errors(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult,
) -> None:
    page = render([clean, hostile, unreadable, campaign])
    # Malicious (23.0) before suspicious (8.0) although it was scanned last.
    assert page.index("mail/x.mbox#3") < page.index("mail/hostile.eml")
    assert page.index("mail/hostile.eml") < page.index("mail/newsletter.eml")
    clean_section = page[page.index('id="clean"'):]
    assert "<details>" in clean_section.split("mail/newsletter.eml")[0]
    assert page.index('id="clean"') < page.index("not an OLE2 compound file")


def test_findings_evidence_envelope_in_detail(campaign: ScanResult) -> None:
    page = render([campaign])
    found = re.findall(r'<td class="id mono">([A-Z_]+)</td><td class="num">([+-][\d.]+)</td>',
                       page)
    assert found[0] == ("DS_SPOOF_ENVELOPE", "+6.0")
    assert [float(s) for _, s in found] == sorted((float(s) for _, s in found), reverse=True)
    assert "spf=fail smtp.mailfrom=contoso.com; dkim=none" in page
    assert "WIN-3J8KQ2H1LDF" in page
    assert "would reject" in page


def test_control_characters_are_shown_not_passed_through(hostile: ScanResult) -> None:
    page = render([hostile])
    assert "\x1b" not in page
    assert "\\x1b[31mRED" in page


def test_title_is_escaped(clean: ScanResult) -> None:
    page = render([clean], title="<b>Q3</b> scan")
    assert "<title>&lt;b&gt;Q3&lt;/b&gt; scan</title>" in page


def test_clean_listing_is_capped_with_a_count_of_the_rest(clean: ScanResult) -> None:
    extra = 3
    results = [replace(clean, index=i) for i in range(html_report.MAX_CLEAN + extra)]
    page = render(results)
    assert page.count('<td class="mono">mail/newsletter.eml#') == html_report.MAX_CLEAN
    assert f"{extra} more not listed" in page
    assert f"Clean messages ({html_report.MAX_CLEAN + extra})" in page


def test_flagged_messages_keep_highest_scores_when_capped(
    campaign: ScanResult, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert campaign.verdict is not None
    # A small cap exercises the same code as the real one, quickly.
    monkeypatch.setattr(html_report, "MAX_FLAGGED", 20)
    renderer = HtmlRenderer()
    out = io.StringIO()
    renderer.start(out)
    count = 50
    # The best message comes last and must still be kept, and listed first.
    scores = [10.0 + (i % 7) for i in range(count - 1)] + [100.0]
    for i, score in enumerate(scores):
        v = replace(campaign.verdict, score=score, level=Level.MALICIOUS)
        renderer.add(replace(campaign, index=i, verdict=v))
    renderer.finish(RunSummary())
    page = out.getvalue()
    assert page.count('<tr class="msg malicious"') == 20
    assert "Only the 20 highest-scoring flagged messages are listed; 30 more" in page
    rows = re.findall(r'<td class="num">([\d.]+)</td>\n<td>.*?</td>\n<td class="mono">'
                      r"mail/x\.mbox#(\d+)</td>", page)
    assert rows[0] == ("100.0", str(count - 1))
    kept = [float(score) for score, _ in rows]
    assert kept == sorted(scores, reverse=True)[:20]
