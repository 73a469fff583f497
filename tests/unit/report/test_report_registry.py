"""get_renderer: every documented format works end to end, unknown ones are refused."""

from __future__ import annotations

import io

import pytest

from dsguard.model import ScanResult
from dsguard.report.registry import FORMATS, get_renderer
from dsguard.report.serialize import RunSummary


def test_formats_are_the_documented_ones() -> None:
    assert FORMATS == ("text", "json", "jsonl", "csv", "html")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_every_kind_of_result_to_a_strict_utf8_stream(
    fmt: str, campaign: ScanResult, clean: ScanResult, unreadable: ScanResult,
    hostile: ScanResult,
) -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
    renderer = get_renderer(fmt)
    summary = RunSummary()
    renderer.start(out)
    for r in (campaign, clean, unreadable, hostile):
        renderer.add(r)
        summary.add(r)
    renderer.finish(summary)
    out.flush()
    text = raw.getvalue().decode("utf-8")
    assert "mail/x.mbox" in text
    assert "mail/broken.msg" in text


def test_unknown_format_is_a_value_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'xml'.*text, json, jsonl, csv, html"):
        get_renderer("xml")
