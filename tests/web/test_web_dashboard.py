"""The dashboard page: Direct Send attempts over time as server-side SVG, top sources with
country, top spoofed senders, verdicts, and the organisation settings in force."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tests.fixtures.events import event_fields
from tests.web.conftest import Admin, Web

from dsguard.store import repository as repo
from dsguard.web.chart import build_chart
from dsguard.web.stats import Window


def _event(web: Web, at: datetime, **overrides: object) -> None:
    # No country: the page looks it up when the event has none.
    repo.record_event(web.store, **event_fields(**{"country": None, "at": at, **overrides}))


def _bars(page: str) -> list[tuple[str, str]]:
    """(series, tooltip) of every bar segment of the chart."""
    return [
        (css, html.unescape(title))
        for css, title in re.findall(
            r'<rect class="bar (\w+)"[^>]*><title>([^<]*)</title></rect>', page
        )
    ]


def test_an_attack_wave_appears_on_the_chart_and_in_the_tables(signed_in: Admin, web: Web) -> None:
    now = datetime.now(UTC)
    wave = now - timedelta(hours=3)
    for i in range(6):
        _event(web, wave + timedelta(seconds=i), client_ip=f"139.28.36.{110 + i % 2}")
    _event(
        web,
        wave,
        decision="audited",
        mode="audit",
        p2="not_applicable",
        client_ip="203.0.113.7",
        mail_from="scanner@contoso.com",
    )
    _event(web, wave, decision="quarantined", verdict="malicious", score=28.0, mode="audit")
    _event(
        web,
        now,
        decision="accepted",
        p1="not_applicable",
        p2="not_applicable",
        verdict="clean",
        mail_from="news@example.org",
        header_from="news@example.org",
        client_ip="192.0.2.44",
    )
    page = signed_in.client.get("/?range=24h").text
    bars = _bars(page)
    hour = wave.strftime("%Y-%m-%d %H:00 UTC")
    assert ("refused", f"{hour}: 6 refused") in bars
    assert ("quarantined", f"{hour}: 1 quarantined") in bars
    assert ("audited", f"{hour}: 1 audited (let through)") in bars
    assert not any(css == "accepted" for css, _t in bars)  # the newsletter is no Direct Send
    assert '<span class="value" id="ds-total">8</span>' in page
    sources = page[page.index('id="top-sources"') :]
    assert re.search(r"<code>139\.28\.36\.11[01]</code></td><td>UA</td><td class=\"num\">", sources)
    spoofed = page[page.index('id="top-spoofed"') :]
    assert 'joe@contoso.com</a></td><td class="num">7' in spoofed
    assert 'scanner@contoso.com</a></td><td class="num">1' in spoofed
    verdicts = page[page.index('id="verdicts"') :]
    assert (
        "no content check" in verdicts
        and ">malicious</span>" in verdicts
        and ">clean</span>" in verdicts
    )
    assert "<svg" in page and "<script" not in page


def test_ranges_and_buckets(signed_in: Admin, web: Web) -> None:
    now = datetime.now(UTC)
    _event(web, now - timedelta(days=10))
    assert not _bars(signed_in.client.get("/?range=7d").text)  # outside the week
    month = signed_in.client.get("/?range=30d").text
    day = (now - timedelta(days=10)).strftime("%Y-%m-%d 00:00 UTC")
    assert _bars(month) == [("refused", f"{day}: 1 refused")]
    assert 'aria-current="page">last 30d' in month
    assert signed_in.client.get("/?range=nonsense").status_code == 200  # falls back to the default
    assert "No Direct Send attempts in this period." in signed_in.client.get("/?range=24h").text


def test_the_organisation_settings_are_shown_read_only(signed_in: Admin, web: Web) -> None:
    page = signed_in.client.get("/").text
    org = page[page.index('id="organization"') :]
    assert str(web.config.source) in org or web.config.source.split("/")[-1] in org
    assert "<code>contoso.com</code>" in org
    assert 'class="badge mode-audit">audit</span>' in org
    assert "scanner-floor2" in org and "203.0.113.25/32" in org
    assert "<form" not in org and "<input" not in org  # nothing to change here


def test_held_messages_are_counted(signed_in: Admin, web: Web, hold: Callable[..., str]) -> None:
    hold(), hold()
    repo.delete_quarantined(web.store, hold(), "test")
    page = signed_in.client.get("/").text
    assert 'Held in quarantine</span><span class="value"><a href="/quarantine">2</a>' in page
    assert "0 released · 1 deleted" in page


def test_the_chart_scales_and_stacks() -> None:
    window = Window.ending_now("24h", datetime(2026, 3, 2, 12, 30, tzinfo=UTC))
    start = window.since + timedelta(hours=5)
    chart = build_chart(
        [(start, "refused", 30), (start, "audited", 10), (start, "tagged", 3)], window
    )
    assert len(chart.segments) == 3
    refused, audited, accepted = chart.segments
    assert refused.y + refused.height == chart.plot_bottom  # stacked from the baseline up
    assert audited.y + audited.height == refused.y
    assert accepted.css == "accepted" and "3 accepted" in accepted.title
    assert chart.y_labels[-1].text == "50"  # a round maximum above the 43 of the bar
    assert [item.total for item in chart.legend] == [30, 0, 10, 3, 0]
    assert len({round(s.x, 6) for s in chart.segments}) == 1
