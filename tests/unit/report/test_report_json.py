"""--format jsonl and --format json: parseable, streaming, one record per line."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import TextIO

from dsguard.model import ScanResult
from dsguard.report.jsonout import JsonLinesRenderer, JsonRenderer
from dsguard.report.serialize import RunSummary


def run(renderer: JsonLinesRenderer | JsonRenderer, results: list[ScanResult],
        out: TextIO | None = None) -> str:
    buf = out if out is not None else io.StringIO()
    summary = RunSummary(notes=["accepted domains inferred from recipients"])
    renderer.start(buf)
    for r in results:
        renderer.add(r)
        summary.add(r)
    renderer.finish(summary)
    return buf.getvalue() if isinstance(buf, io.StringIO) else ""


def test_jsonl_one_parseable_object_per_result(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult,
) -> None:
    text = run(JsonLinesRenderer(), [campaign, clean, unreadable, hostile])
    lines = text.splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert [r["verdict"] for r in records] == ["malicious", "clean", None, "suspicious"]
    assert records[0]["iocs"]["qr_urls"] == ["https://voice-e091b.firebaseapp.com/listen?id=7"]
    assert records[0]["envelope"]["client_ip"] == "139.28.36.171"
    assert records[2]["error"] == "not an OLE2 compound file"
    # Attacker text comes back exactly as it was, escapes and all.
    assert hostile.summary is not None
    assert records[3]["subject"] == hostile.summary.subject


def test_jsonl_record_never_splits_on_unicode_line_separators(clean: ScanResult) -> None:
    assert clean.summary is not None
    subject = "a\u2028b\u2029c\x85d\r\ne"
    tricky = replace(clean, summary=replace(clean.summary, subject=subject))
    text = run(JsonLinesRenderer(), [tricky, clean])
    lines = text.splitlines()  # splits on U+2028, U+2029, U+0085 too
    assert len(lines) == 2
    assert json.loads(lines[0])["subject"] == subject


def test_undecodable_text_does_not_abort_a_utf8_stream(clean: ScanResult) -> None:
    assert clean.summary is not None
    broken = replace(clean, summary=replace(clean.summary, subject="bad \udcff byte"))
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
    run(JsonLinesRenderer(), [broken, clean], out=out)
    out.flush()
    lines = raw.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["subject"] == "bad \udcff byte"


def test_json_document_parses_with_schema_results_and_summary(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult,
) -> None:
    doc = json.loads(run(JsonRenderer(), [campaign, clean, unreadable, hostile]))
    assert set(doc) == {"schema", "results", "summary"}
    assert doc["schema"] == 1
    assert [r["source"] for r in doc["results"]] == [
        "mail/x.mbox#3", "mail/newsletter.eml", "mail/broken.msg", "mail/hostile.eml"]
    s = doc["summary"]
    assert s["messages"] == 3
    assert s["errors"] == 1
    assert s["by_level"] == {"malicious": 1, "suspicious": 1, "clean": 1}
    assert s["direct_send"] == 2
    assert s["notes"] == ["accepted domains inferred from recipients"]


def test_json_of_an_empty_run_is_valid() -> None:
    doc = json.loads(run(JsonRenderer(), []))
    assert doc["results"] == []
    assert doc["summary"]["messages"] == 0


def test_both_formats_stream_during_add(campaign: ScanResult, clean: ScanResult) -> None:
    for renderer in (JsonLinesRenderer(), JsonRenderer()):
        out = io.StringIO()
        renderer.start(out)
        before = len(out.getvalue())
        renderer.add(campaign)
        after_one = len(out.getvalue())
        renderer.add(clean)
        assert before < after_one < len(out.getvalue()), type(renderer).__name__
