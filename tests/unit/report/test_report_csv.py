"""--format csv: parseable rows, documented columns, no spreadsheet formula injection."""

from __future__ import annotations

import csv
import io

from dsguard.model import ScanResult
from dsguard.report.csvout import CsvRenderer
from dsguard.report.serialize import RunSummary

DOCUMENTED_COLUMNS = [
    "source", "message_id", "from", "to", "subject", "direct_send", "verdict", "score",
    "action", "client_ip", "country", "helo", "mail_from", "finding_ids", "urls", "qr_urls",
    "error",
]


def rows(results: list[ScanResult]) -> list[dict[str, str]]:
    out = io.StringIO(newline="")
    renderer = CsvRenderer()
    renderer.start(out)
    for r in results:
        renderer.add(r)
    renderer.finish(RunSummary())
    reader = csv.DictReader(io.StringIO(out.getvalue(), newline=""))
    assert reader.fieldnames == DOCUMENTED_COLUMNS
    return list(reader)


def test_one_row_per_result_with_documented_columns(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult,
) -> None:
    got = rows([campaign, clean, unreadable])
    assert len(got) == 3
    c = got[0]
    assert c["source"] == "mail/x.mbox#3"
    assert c["from"] == "joe@contoso.com"
    assert c["direct_send"] == "true"
    assert c["verdict"] == "malicious"
    assert c["score"] == "23.0"
    assert c["action"] == "quarantine"
    assert (c["client_ip"], c["country"], c["helo"]) == ("139.28.36.171", "UA", "WIN-3J8KQ2H1LDF")
    assert c["finding_ids"].split(" ")[0] == "DS_SPOOF_ENVELOPE"
    assert len(c["finding_ids"].split(" ")) == 9
    assert c["urls"].split(" ") == [
        "https://mv4lh.bsfff.es/index.html", "https://voice-e091b.firebaseapp.com/listen?id=7"]
    assert c["qr_urls"] == "https://voice-e091b.firebaseapp.com/listen?id=7"
    assert c["error"] == ""
    assert got[2]["error"] == "not an OLE2 compound file"
    assert got[2]["verdict"] == ""


def test_our_own_numbers_are_not_neutralised(clean: ScanResult) -> None:
    (row,) = rows([clean])
    assert row["score"] == "-1.0"  # a negative score stays a number
    assert row["direct_send"] == "false"


def test_formula_cells_get_a_leading_apostrophe(hostile: ScanResult) -> None:
    (row,) = rows([hostile])
    assert row["subject"].startswith("'=cmd|' /C calc'!A0")
    assert row["from"] == "'@SUM(1+1)@contoso.com"
    assert row["to"] == "'+cmd@contoso.com;bob@contoso.com"
    assert row["helo"].startswith("'-evil")
    # No text cell starts with a formula trigger any more.
    for name, value in row.items():
        if name not in ("score",):
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), name


def test_multiline_subject_stays_in_one_record(hostile: ScanResult) -> None:
    (row,) = rows([hostile])
    assert row["subject"].endswith("line1\r\nX-Injected: yes")


def test_add_writes_immediately(campaign: ScanResult) -> None:
    out = io.StringIO(newline="")
    renderer = CsvRenderer()
    renderer.start(out)
    header_only = len(out.getvalue())
    renderer.add(campaign)
    assert len(out.getvalue()) > header_only
