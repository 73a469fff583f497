"""``--format`` name -> renderer. Every renderer is fed the same way:

    renderer.start(out); for r in results: renderer.add(r); renderer.finish(summary)

``add`` is called once per result in scan order; streaming formats write in ``add``.
"""

from __future__ import annotations

from typing import Protocol, TextIO

from dsguard.model import ScanResult
from dsguard.report.csvout import CsvRenderer
from dsguard.report.html import HtmlRenderer
from dsguard.report.jsonout import JsonLinesRenderer, JsonRenderer
from dsguard.report.serialize import RunSummary
from dsguard.report.text import TextRenderer


class Renderer(Protocol):
    def start(self, out: TextIO) -> None: ...

    def add(self, result: ScanResult) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...


FORMATS: tuple[str, ...] = ("text", "json", "jsonl", "csv", "html")


def get_renderer(fmt: str, *, color: bool = False, title: str = "dsguard scan") -> Renderer:
    """The renderer for ``fmt``. ``color`` applies to text only, ``title`` to html only."""
    if fmt == "text":
        return TextRenderer(color=color)
    if fmt == "json":
        return JsonRenderer()
    if fmt == "jsonl":
        return JsonLinesRenderer()
    if fmt == "csv":
        return CsvRenderer()
    if fmt == "html":
        return HtmlRenderer(title=title)
    raise ValueError(f"unknown report format {fmt!r}; choose one of: {', '.join(FORMATS)}")
