"""Renderers: hostile export values stay inert in text, CSV and HTML; the chart is inline SVG."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from dsguard.config import Config
from dsguard.m365.inventory import CLASSES, InventoryBuilder
from dsguard.m365.records import Direction, TraceRecord
from dsguard.m365.report import CSV_COLUMNS, chart_data, render

HOSTILE_SUBJECT = (
    "=cmd|' /C calc'!A0 <script>alert(1)</script> \x1b[31mRED\x1b[0m [bold]x[/bold] "
    "https://voice-e091b.firebaseapp.com/listen \u202eexe.pdf"
)
HOSTILE_HELO = '<img src=x onerror=alert(1)>"\'&'


@pytest.fixture(scope="module")
def hostile_doc(config: Config) -> dict[str, Any]:
    builder = InventoryBuilder(config)
    for day in range(2, 5):
        for victim in ("joe", "anna"):
            builder.add(TraceRecord(
                datetime(2026, 3, day, 9, tzinfo=UTC), "139.28.36.40", HOSTILE_HELO,
                f"{victim}@contoso.com", f"{victim}@contoso.com", (f"{victim}@contoso.com",),
                HOSTILE_SUBJECT, Direction.INBOUND, "", spf="fail", dmarc="fail"))
        builder.add(TraceRecord(
            datetime(2026, 3, day, 10, tzinfo=UTC), "198.51.100.20", "RNP1", "printer@contoso.com",
            None, ("joe@contoso.com",), "Scan", Direction.INBOUND, "", spf="pass", dmarc="pass"))
    return builder.document([{"path": "trace<1>.csv", "format": "message-trace", "detail": "",
                              "encoding": "utf-8", "rows": 9, "records": 9, "bad_rows": 0,
                              "error": None, "notes": []}])


def rendered(doc: dict[str, Any], fmt: str) -> str:
    out = io.StringIO()
    render(doc, fmt, out)
    return out.getvalue()


def test_html_is_self_contained_and_escaped(hostile_doc: dict[str, Any]) -> None:
    html = rendered(hostile_doc, "html")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "<script" not in html.lower()
    assert "<img" not in html and "onerror=alert(1)>" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "hxxps://voice-e091b[.]firebaseapp[.]com/listen" in html
    assert "https://voice-e091b" not in html
    assert "\\u202e" in html and "\u202e" not in html  # the bidi override is shown, not applied
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html)
    assert "trace&lt;1&gt;.csv" in html


def test_html_chart_is_inline_svg_per_day_by_class(hostile_doc: dict[str, Any]) -> None:
    html = rendered(hostile_doc, "html")
    svg = html[html.index("<svg"):html.index("</svg>")]
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    assert titles == [
        "2026-03-02: 1 device or application", "2026-03-02: 2 malicious",
        "2026-03-03: 1 device or application", "2026-03-03: 2 malicious",
        "2026-03-04: 1 device or application", "2026-03-04: 2 malicious",
    ]
    assert "xlink" not in svg and "<image" not in svg and "<use" not in svg


def test_chart_stacks_and_buckets_by_week_past_120_days() -> None:
    daily = {f"2026-{m:02d}-{d:02d}": {c: 1 for c in CLASSES}
             for m in range(1, 6) for d in range(1, 29)}
    chart = chart_data(daily)
    assert chart["weekly"] and len(chart["table"]) < 30
    assert sum(row["total"] for row in chart["table"]) == 5 * 28 * len(CLASSES)
    one_day = chart_data({"2026-03-02": {"device_or_app": 3, "malicious": 7}})
    heights = [b["h"] for b in one_day["bars"]]
    assert len(heights) == 2 and heights[1] > heights[0]
    assert chart_data({})["empty"]


def test_csv_one_row_per_source_without_formulas(hostile_doc: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(rendered(hostile_doc, "csv"))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == len(hostile_doc["sources"]) == 2
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    attacker = next(r for r in rows if r["ips"] == "139.28.36.40")
    assert attacker["class"] == "malicious" and attacker["rds_blocks"] == "yes"
    assert attacker["sample_subjects"].startswith("'=cmd")


def test_text_has_no_escape_sequences_or_markup(hostile_doc: dict[str, Any]) -> None:
    text = rendered(hostile_doc, "text")
    assert "\x1b" not in text and "\u202e" not in text
    assert "What enabling RejectDirectSend would block" in text
    assert "198.51.100.20" in text and "fix: partner connector restricted to 198.51.100.20" in text


def test_json_is_the_document(hostile_doc: dict[str, Any]) -> None:
    doc = json.loads(rendered(hostile_doc, "json"))
    assert doc["schema"] == "dsguard-m365-inventory/1"
    attacker = next(s for s in doc["sources"] if s["class"] == "malicious")
    # Kept as data (whitespace runs folded): escaping is each renderer's job.
    assert attacker["subjects"][0]["subject"] == " ".join(HOSTILE_SUBJECT.split())
    assert doc == json.loads(json.dumps(hostile_doc))
