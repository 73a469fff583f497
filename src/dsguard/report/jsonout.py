"""``--format jsonl`` (one result per line) and ``--format json`` (one document), both streaming.

The json document is written piece by piece (``{"schema": 1, "results": [`` ... ``], "summary":
{...}}``) so memory stays flat however many messages a run has; it is valid JSON once
``finish`` has run.

SECURITY: values are written exactly as given, JSON-escaped. ``json.dumps`` already escapes
CR/LF and every C0 control; we additionally escape U+0085, U+2028 and U+2029 (``str.splitlines``
and some JSONL readers treat them as line ends, which would let a subject split one record in
two) and lone surrogates (which would make the UTF-8 write fail mid-run).
"""

from __future__ import annotations

import json
import re
from typing import Any, TextIO

from dsguard.model import ScanResult
from dsguard.report.serialize import SCHEMA_VERSION, RunSummary, result_to_dict

_LINE_BREAKING = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def dumps_one_line(value: Any) -> str:
    """Compact JSON that is guaranteed to be a single line and encodable as UTF-8.

    The characters replaced can only occur inside JSON strings, where ``\\uXXXX`` is the same
    value, so the output still parses to exactly the input.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _LINE_BREAKING.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class JsonLinesRenderer:
    """One JSON object per result per line; no summary line (records stay homogeneous)."""

    def __init__(self) -> None:
        self._out: TextIO | None = None

    def start(self, out: TextIO) -> None:
        self._out = out

    def add(self, result: ScanResult) -> None:
        _require(self._out).write(dumps_one_line(result_to_dict(result)) + "\n")

    def finish(self, summary: RunSummary) -> None:
        # The run summary is not a result; scripts reading jsonl expect one shape per line.
        _require(self._out).flush()


class JsonRenderer:
    """``{"schema": 1, "results": [...], "summary": {...}}``, written incrementally."""

    def __init__(self) -> None:
        self._out: TextIO | None = None
        self._count = 0

    def start(self, out: TextIO) -> None:
        self._out = out
        self._count = 0
        out.write(f'{{"schema":{SCHEMA_VERSION},"results":[')

    def add(self, result: ScanResult) -> None:
        out = _require(self._out)
        out.write(("\n" if self._count == 0 else ",\n") + dumps_one_line(result_to_dict(result)))
        self._count += 1

    def finish(self, summary: RunSummary) -> None:
        out = _require(self._out)
        out.write(f'\n],"summary":{dumps_one_line(summary.to_dict())}}}\n')
        out.flush()


def _require(out: TextIO | None) -> TextIO:
    if out is None:
        raise RuntimeError("renderer start() was not called")
    return out
