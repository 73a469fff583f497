"""Export detection and readers: encodings, delimiters, streaming JSON, hostile files."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dsguard.config import Config
from dsguard.m365 import formats
from dsguard.m365.formats import (
    Detected,
    ExportReader,
    Format,
    detect,
    parse_custom_data,
    parse_recipient_status,
    parse_timestamp,
)
from dsguard.m365.records import connector_from_export

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "m365"


def sources(doc: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {s["id"]: (s["class"], s["messages"]) for s in doc["sources"]}


@pytest.mark.parametrize(
    ("name", "fmt", "encoding"),
    [
        ("message-trace-v1.csv", Format.MESSAGE_TRACE, ("utf-8", 3)),
        ("message-trace-v2.csv", Format.MESSAGE_TRACE, ("utf-8", 0)),
        ("enhanced-summary.csv", Format.TRACE_SUMMARY, ("utf-16-le", 2)),
        ("connector-report.csv", Format.TRACE_SUMMARY, ("utf-16-le", 2)),
        ("extended.csv", Format.TRACE_EXTENDED, ("utf-8", 0)),
        ("emailevents.csv", Format.EMAILEVENTS, ("utf-8", 3)),
        ("graph-messagetrace.json", Format.GRAPH_JSON, ("utf-8", 0)),
        ("graph-messagetrace.jsonl", Format.GRAPH_JSONL, ("utf-8", 0)),
        ("eml/exo-printer-direct-send-spf.eml", Format.MAIL, None),
    ],
)
def test_detection_reads_content(
    tmp_path: Path, name: str, fmt: Format, encoding: tuple[str, int] | None
) -> None:
    # The name says nothing: the format comes from the content.
    anonymous = tmp_path / "export.dat"
    anonymous.write_bytes((DATA / name).read_bytes())
    found = detect(str(anonymous))
    assert isinstance(found, Detected)
    assert found.format is fmt
    if encoding is not None:
        assert (found.codec, found.bom) == encoding


def test_v1_and_v2_are_told_apart() -> None:
    v1, v2 = detect(str(DATA / "message-trace-v1.csv")), detect(str(DATA / "message-trace-v2.csv"))
    assert isinstance(v1, Detected) and isinstance(v2, Detected)
    assert v1.detail == "Get-MessageTrace (V1)" and v2.detail == "Get-MessageTraceV2"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("message-trace-v1.csv", "utf-8"),
        ("message-trace-v1.csv", "utf-16"),  # with BOM (LE on this platform)
        ("message-trace-v1.csv", "utf-16-be-bom"),
        ("message-trace-v1.csv", "utf-16-le"),  # no BOM
        ("enhanced-summary.csv", "utf-8-sig"),
        ("enhanced-summary.csv", "utf-8"),
        ("emailevents.csv", "utf-16"),
    ],
)
def test_every_encoding_gives_the_same_inventory(
    tmp_path: Path, inventory: Any, source: str, target: str
) -> None:
    original = DATA / source
    found = detect(str(original))
    assert isinstance(found, Detected)
    text = original.read_bytes()[found.bom:].decode(found.codec)
    variant = tmp_path / "variant.csv"
    if target == "utf-16-be-bom":
        variant.write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
    else:
        variant.write_bytes(text.encode(target))
    reference, _ = inventory([source])
    doc, reader = inventory([variant])
    assert not reader.errors
    assert sources(doc) == sources(reference)


def test_semicolon_delimited_export_with_day_first_dates(tmp_path: Path, inventory: Any) -> None:
    # Export-Csv -UseCulture on a de-DE machine: ';' and dd.MM.yyyy HH:mm:ss.
    rows = list(csv.reader(io.StringIO((DATA / "message-trace-v2.csv").read_text("utf-8"))))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        stamp = datetime.strptime(row[0], "%m/%d/%Y %H:%M:%S")
        writer.writerow([stamp.strftime("%d.%m.%Y %H:%M:%S"), *row[1:]])
    variant = tmp_path / "de.csv"
    variant.write_text(out.getvalue(), encoding="utf-8-sig")
    reference, _ = inventory(["message-trace-v2.csv"])
    doc, _ = inventory([variant])
    assert sources(doc) == sources(reference)
    assert doc["daily"] == reference["daily"]


def test_unreadable_file_gives_one_line_naming_what_was_expected(
    tmp_path: Path, config: Config
) -> None:
    reader = ExportReader(config)
    records = list(reader.records([str(DATA / "not-a-trace.csv"), str(DATA / "emailevents.csv")]))
    assert len(records) == 216  # the other file is still read
    assert len(reader.errors) == 1
    error = reader.errors[0]
    assert "\n" not in error
    assert error.startswith(f"{DATA / 'not-a-trace.csv'}: not a message trace or EmailEvents export")
    assert "Received, SenderAddress" in error and "Timestamp, SenderMailFromAddress" in error
    assert "found: Name, Department, Phone" in error


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file"),
        (b"\xff\xfe", "empty file"),
        (b"just some words\n", "not a message trace or EmailEvents export"),
        (b'{"value": [{"name": "x"}]}', "expected Graph exchangeMessageTrace objects"),
        (b'{"@odata.context": "x", "items": []}', "without a 'value' array"),
        (b"\x00\x01\x02garbage\xff\xfe\xfd" * 100, "not a message trace"),
    ],
)
def test_bad_inputs_never_raise(
    tmp_path: Path, config: Config, content: bytes, problem: str
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    reader = ExportReader(config)
    assert list(reader.records([str(path)])) == []
    assert len(reader.errors) == 1 and problem in reader.errors[0]


def test_truncated_json_keeps_what_was_read(tmp_path: Path, config: Config) -> None:
    data = (DATA / "graph-messagetrace.json").read_bytes()
    path = tmp_path / "cut.json"
    path.write_bytes(data[: len(data) // 2])
    reader = ExportReader(config)
    records = list(reader.records([str(path)]))
    assert 50 < len(records) < 216
    assert len(reader.errors) == 1
    assert "JSON" in reader.errors[0] and f"the {len(records)} records before it" in reader.errors[0]


def test_json_is_streamed_across_read_boundaries(
    tmp_path: Path, inventory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = inventory(["graph-messagetrace.json"])
    # A top-level array (ConvertTo-Json of Get-MessageTraceV2 output) read 13 characters at a
    # time: every item and number crosses a chunk boundary somewhere.
    items = json.loads((DATA / "graph-messagetrace.json").read_text("utf-8"))["value"]
    path = tmp_path / "array.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    monkeypatch.setattr(formats, "_READ_CHUNK", 13)
    doc, reader = inventory([path])
    assert not reader.errors
    assert sources(doc) == sources(reference)


def test_json_item_size_is_capped(
    tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An item that does not end within the buffer limit stops the file (memory stays bounded
    # by the limit plus one read, whatever the item's size).
    monkeypatch.setattr(formats, "MAX_JSON_ITEM_CHARS", 4096)
    monkeypatch.setattr(formats, "_READ_CHUNK", 1024)
    path = tmp_path / "huge.json"
    huge = {"receivedDateTime": "2026-03-02T09:00:00Z", "senderAddress": "a@contoso.com",
            "recipientAddress": "b@contoso.com", "fromIP": "192.0.2.1", "subject": "x" * 20_000}
    path.write_text(json.dumps({"value": [huge]}), encoding="utf-8")
    reader = ExportReader(config)
    assert list(reader.records([str(path)])) == []
    assert "larger than 4 KiB" in reader.errors[0]


def test_jsonl_skips_a_broken_line_and_says_so(tmp_path: Path, config: Config) -> None:
    lines = (DATA / "graph-messagetrace.jsonl").read_text("utf-8").splitlines()
    lines.insert(3, '{"senderAddress": "broken')
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = ExportReader(config)
    assert len(list(reader.records([str(path)]))) == 216
    assert not reader.errors
    assert reader.inputs[0].bad_rows == 1
    assert reader.inputs[0].notes == ["line 4 is not a JSON object (skipped)"]


def test_a_line_without_end_is_refused_not_slurped(tmp_path: Path, config: Config) -> None:
    path = tmp_path / "endless.csv"
    with path.open("w", encoding="utf-8") as fh:
        fh.write("Received,SenderAddress,RecipientAddress,FromIP\n")
        fh.write("x" * (formats.MAX_LINE_CHARS + 10))
    reader = ExportReader(config)
    assert list(reader.records([str(path)])) == []
    assert "line 2 is longer than 1024 KiB" in reader.errors[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_not_waited_on(tmp_path: Path, config: Config) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    reader = ExportReader(config)
    assert list(reader.records([str(fifo)])) == []
    assert reader.errors == [f"{fifo}: not a regular file"]


def test_directory_walk_reads_exports_and_skips_the_rest(tmp_path: Path, config: Config) -> None:
    (tmp_path / "trace.csv").write_bytes((DATA / "message-trace-v2.csv").read_bytes())
    (tmp_path / "notes.txt").write_text("meeting notes\n", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.csv").write_bytes((DATA / "message-trace-v2.csv").read_bytes())
    reader = ExportReader(config)
    assert len(list(reader.records([str(tmp_path)]))) == 216
    assert not reader.errors  # found in a walk: skipped with a note, not an error
    assert len(reader.skipped) == 1 and "notes.txt" in reader.skipped[0]


def test_extended_events_of_interleaved_messages_are_merged(tmp_path: Path, config: Config) -> None:
    header = ["date_time_utc", "client_ip", "client_hostname", "connector_id", "event_id",
              "network_message_id", "recipient_address", "message_subject", "sender_address",
              "return_path", "directionality", "custom_data"]
    rows = [
        ["2026-03-02T09:00:00.000Z", "198.51.100.20", "RNP1", "S1\\Default S1", "RECEIVE", "m1",
         "joe@contoso.com", "Scan", "printer@contoso.com", "printer@contoso.com", "Incoming", ""],
        ["2026-03-02T09:00:01.000Z", "139.28.36.40", "[127.0.0.1]", "S1\\Default S1", "RECEIVE",
         "m2", "anna@contoso.com", "Caller Left VM Message", "anna@contoso.com",
         "anna@contoso.com", "Incoming", ""],
        ["2026-03-02T09:00:02.000Z", "", "", "", "AGENTINFO", "m1", "", "", "", "", "Incoming",
         "S:SFA=SUM|SFV=NSPM|H=RNP1|CIP=198.51.100.20|CTRY=US;S:SPF=pass;S:DKIM=none;S:DMARC=pass"],
        ["2026-03-02T09:00:03.000Z", "", "", "", "AGENTINFO", "m2", "", "", "", "", "Incoming",
         "S:SFA=SUM|SFV=SPM|H=[127.0.0.1]|CIP=139.28.36.40|CTRY=UA;S:SPF=fail;S:DKIM=none;S:DMARC=fail"],
        ["2026-03-02T09:00:04.000Z", "", "", "", "DELIVER", "m2", "anna@contoso.com", "", "", "",
         "Incoming", ""],
    ]
    path = tmp_path / "extended.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    records = {r.message_key: r for r in ExportReader(config).records([str(path)])}
    assert set(records) == {"m1", "m2"}
    assert (records["m1"].spf, records["m1"].dmarc, records["m1"].helo) == ("pass", "pass", "RNP1")
    assert (records["m2"].spf, records["m2"].dmarc, records["m2"].country) == ("fail", "fail", "UA")
    assert records["m2"].connector == "" and records["m2"].status == "Delivered"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-02T09:31:04.1230000Z", datetime(2026, 3, 2, 9, 31, 4, 123000, tzinfo=UTC)),
        ("2026-03-02T09:31:04Z", datetime(2026, 3, 2, 9, 31, 4, tzinfo=UTC)),
        ("2026-03-02 11:31:04+02:00", datetime(2026, 3, 2, 9, 31, 4, tzinfo=UTC)),
        ("3/2/2026 9:31:04 AM", datetime(2026, 3, 2, 9, 31, 4, tzinfo=UTC)),
        ("3/2/2026 12:05:00 AM", datetime(2026, 3, 2, 0, 5, tzinfo=UTC)),
        ("3/2/2026 12:05:00 PM", datetime(2026, 3, 2, 12, 5, tzinfo=UTC)),
        ("03/02/2026 21:31:04", datetime(2026, 3, 2, 21, 31, 4, tzinfo=UTC)),
        ("02.03.2026 09:31:04", datetime(2026, 3, 2, 9, 31, 4, tzinfo=UTC)),
        ("25/03/2026 09:31", datetime(2026, 3, 25, 9, 31, tzinfo=UTC)),
        ("13/13/2026 09:31:04", None),
        ("2026-02-30T00:00:00Z", None),
        ("13:00:00 PM", None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_timestamps(text: str, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        ("", ""),
        ("NoConnector", ""),
        ("BN8NAM11FT044.eop-nam11.prod.protection.outlook.com\\Default BN8NAM11FT044", ""),
        ("scanner-floor2", "scanner-floor2"),
    ],
)
def test_connector_cells(cell: str, name: str) -> None:
    assert connector_from_export(cell) == name


def test_recipient_status_and_custom_data() -> None:
    rcpts, status = parse_recipient_status(
        "Bob@Contoso.com##Receive, Deliver;ann@contoso.com##Receive, Fail"
    )
    assert rcpts == ("bob@contoso.com", "ann@contoso.com") and status == "Delivered"
    data = parse_custom_data(
        "S:SFA=SUM|SFV=SPM|IPV=CAL|H=ftmail.inc.com|CIP=98.129.140.74|CTRY=US;S:SPF=fail;S:DMARC=fail"
    )
    assert data == {"SFV": "SPM", "IPV": "CAL", "H": "ftmail.inc.com", "CIP": "98.129.140.74",
                    "CTRY": "US", "SPF": "fail", "DMARC": "fail"}
