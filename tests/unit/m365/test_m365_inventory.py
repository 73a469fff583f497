"""The inventory over every fixture format, compared with tests/data/m365/expected.toml."""

from __future__ import annotations

import tomllib
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dsguard.config import Config, load_config
from dsguard.m365.inventory import (
    FORWARDING,
    MALICIOUS,
    SUSPICIOUS,
    THIRD_PARTY,
    TRANSPORT_RULE,
    InventoryBuilder,
    run_inventory,
)
from dsguard.m365.records import Direction, TraceRecord

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "m365"
with (DATA / "expected.toml").open("rb") as _fh:
    EXPECTED = tomllib.load(_fh)
CASES = [(fmt["id"], name) for fmt in EXPECTED["format"] for name in fmt["files"]]


def by_ip(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["ips"][0]: s for s in doc["sources"]}


def expectation(format_id: str) -> dict[str, Any]:
    return next(f for f in EXPECTED["format"] if f["id"] == format_id)


def attack_ips(fmt: dict[str, Any]) -> list[str]:
    return list(fmt.get("attack_ips", EXPECTED["attack_ips"]))


@pytest.mark.parametrize(("format_id", "name"), CASES)
def test_format_is_detected_from_content(inventory: Any, format_id: str, name: str) -> None:
    doc, reader = inventory([name])
    assert not reader.errors
    assert {i["format"] for i in doc["inputs"]} == {format_id}
    assert all(i["records"] > 0 for i in doc["inputs"])


@pytest.mark.parametrize(("format_id", "name"), CASES)
def test_sources_and_classes_match_expectations(inventory: Any, format_id: str, name: str) -> None:
    fmt = expectation(format_id)
    doc, _ = inventory([name])
    sources = by_ip(doc)
    attack = attack_ips(fmt)
    wanted = {ip: cls for ip, cls in fmt["classes"].items() if ip != "attack"}
    for ip in attack:
        wanted[ip] = fmt["classes"]["attack"]
    got = {ip: s["class"] for ip, s in sources.items()}
    assert got == wanted
    # Every class assignment lists its reasons.
    assert all(s["reasons"] for s in doc["sources"])
    for ip in EXPECTED["not_direct_send"]:
        assert ip not in sources
    assert "139.28.40.42" not in sources
    if not fmt["header_from_known"]:
        assert "198.51.100.120" not in sources


@pytest.mark.parametrize(("format_id", "name"), [c for c in CASES if c[0] != "mail"])
def test_message_counts_dedupe_recipient_rows(inventory: Any, format_id: str, name: str) -> None:
    doc, _ = inventory([name])
    sources = by_ip(doc)
    for ip, count in EXPECTED["messages"].items():
        if ip == "attack_each" or ip not in sources:
            continue
        assert sources[ip]["messages"] == count, ip
    for ip in EXPECTED["attack_ips"]:
        assert sources[ip]["messages"] == EXPECTED["messages"]["attack_each"]
    # The list server's posts go to two of lee, mia, kim each: in per-recipient exports that is
    # two rows for one message.
    forwarder = sources["198.51.100.140"]
    assert forwarder["recipients"] == 3
    per_recipient = format_id in ("message-trace", "graph-json", "graph-jsonl", "emailevents")
    assert forwarder["rows"] == (20 if per_recipient else 10)


@pytest.mark.parametrize(("format_id", "name"), CASES)
def test_would_block_lists_the_legitimate_sources_with_their_fix(
    inventory: Any, format_id: str, name: str
) -> None:
    fmt = expectation(format_id)
    doc, _ = inventory([name])
    would_block = {w["ips"][0]: w["fix"]["kind"] for w in doc["would_block"]}
    assert would_block == fmt["would_block"]
    assert sorted(r["ips"][0] for r in doc["review"]) == sorted(fmt["review"])
    for w in doc["would_block"]:
        assert w["class"] not in (SUSPICIOUS, MALICIOUS)


def test_attack_wave_reasons_name_the_campaign_signals(inventory: Any) -> None:
    doc, _ = inventory(["extended.csv"])
    source = by_ip(doc)["139.28.36.117"]
    text = " ".join(source["reasons"])
    assert "[127.0.0.1]" in text and "loopback" in text
    assert "self-addressed" in text
    assert "SPF fails" in text and "DMARC" in text
    assert "UA" in text and "home countries" in text
    assert source["countries"] == ["UA"]


def test_forwarder_and_p2_only_sources_say_why(inventory: Any) -> None:
    doc, _ = inventory(["emailevents.csv"])
    sources = by_ip(doc)
    forwarder = sources["198.51.100.140"]
    assert forwarder["class"] == FORWARDING
    assert "SPF failing" in forwarder["reasons"][0] and "DKIM passes" in forwarder["reasons"][0]
    assert "SRS" in forwarder["fix"]["summary"]
    p2 = sources["198.51.100.120"]
    assert p2["class"] == THIRD_PARTY and not p2["rds_blocks"]
    assert any("only the envelope sender" in r for r in p2["reasons"])
    assert doc["totals"]["p2_only_messages"] == 5


def test_formats_without_auth_explain_the_limit(inventory: Any) -> None:
    doc, _ = inventory(["message-trace-v2.csv"])
    printer = by_ip(doc)["198.51.100.20"]
    assert "authentication is not recorded" in printer["reasons"][0]
    signature = by_ip(doc)["203.0.113.80"]
    assert signature["class"] == SUSPICIOUS
    assert "5 different sender addresses" in signature["reasons"][0]


def test_connector_mail_needs_the_config_in_formats_without_connectors(inventory: Any) -> None:
    bare = load_config(None, {"organization": {"accepted_domains": ["contoso.com"]}})
    doc, _ = inventory(["message-trace-v1.csv"], bare)
    # Without [[connectors]] the scanner behind scanner-floor2 looks like Direct Send, and the
    # report says why.
    assert "203.0.113.25" in by_ip(doc)
    assert any("no connectors are configured" in n for n in doc["notes"])
    doc, _ = inventory(["emailevents.csv"], bare)
    assert "203.0.113.25" not in by_ip(doc)  # EmailEvents records the connector itself


def test_accepted_domains_are_inferred_from_recipients(inventory: Any) -> None:
    bare = load_config(None)
    doc, _ = inventory(["emailevents.csv"], bare)
    assert doc["organization"]["accepted_domains"] == ["contoso.com"]
    assert doc["organization"]["accepted_domains_inferred"] is True
    assert any("inferred" in n for n in doc["notes"])
    assert by_ip(doc)["198.51.100.20"]["class"] == "device_or_app"


def test_daily_counts_add_up_to_the_direct_send_messages(inventory: Any) -> None:
    doc, _ = inventory(["emailevents.csv"])
    per_day = doc["daily"]
    assert sorted(per_day) == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05", "2026-03-06"]
    assert sum(sum(day.values()) for day in per_day.values()) == doc["totals"]["direct_send_messages"]
    assert per_day["2026-03-04"][MALICIOUS] == 18 and per_day["2026-03-02"][MALICIOUS] == 0


def test_several_files_of_one_tenant_merge_into_one_inventory(inventory: Any) -> None:
    doc, _ = inventory(["extended.csv", "eml"])
    sources = by_ip(doc)
    assert sources["198.51.100.20"]["messages"] == 20 + 1
    assert len(doc["inputs"]) == 1 + len(list((DATA / "eml").iterdir()))


def _record(ip: str, helo: str, day: int, **kw: Any) -> TraceRecord:
    values: dict[str, Any] = {
        "timestamp": datetime(2026, 3, day, 10, tzinfo=UTC), "sender_ip": ip, "helo": helo,
        "mail_from": "news@contoso.com", "header_from": "news@contoso.com",
        "recipients": ("joe@contoso.com",), "subject": "Spring offers",
        "direction": Direction.INBOUND, "connector": "", "spf": "pass", "dkim": "pass",
        "dmarc": "pass", "compauth": "pass",
    }
    values.update(kw)
    return TraceRecord(**values)


def test_vendor_with_changing_ips_gets_the_transport_rule(config: Config) -> None:
    builder = InventoryBuilder(config)
    for n in range(6):
        builder.add(_record(f"198.51.100.{60 + n}", f"mail{n}.us1.mcsv.net", 2 + n % 5))
    doc = builder.document()
    assert {s["class"] for s in doc["sources"]} == {THIRD_PARTY}
    assert {w["fix"]["kind"] for w in doc["would_block"]} == {TRANSPORT_RULE}
    assert all(s["service"] == "Mailchimp / Mandrill" for s in doc["sources"])


def test_every_collection_per_source_is_capped(config: Config) -> None:
    builder = InventoryBuilder(config)
    for n in range(30_000):
        builder.add(_record("198.51.100.20", "RNP002673F2C1A4", 2 + n % 5,
                            mail_from=f"user{n}@contoso.com", recipients=(f"r{n}@contoso.com",),
                            subject=f"subject {n}"))
    stats = next(iter(builder.sources.values()))
    assert len(stats.senders) <= 200 and len(stats.subjects) <= 200
    assert len(stats.recipients) <= 5_000 and stats.recipients_capped
    doc = builder.document()
    assert doc["sources"][0]["messages"] == 30_000


def _peak(path: Path, config: Config) -> int:
    tracemalloc.start()
    try:
        doc, reader = run_inventory(config, [str(path)])
        assert not reader.errors
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert doc["totals"]["sources"] == 1024
    return peak


def test_memory_is_bounded_by_sources_not_rows(
    tmp_path: Path, make_exports: ModuleType, config: Config
) -> None:
    # Both files hold the same 1,024 Direct Send sources; the second has twice the rows.
    small, large = tmp_path / "10k.csv", tmp_path / "20k.csv"
    make_exports.write_big_message_trace(small, 10_000)
    make_exports.write_big_message_trace(large, 20_000)
    peak_small = _peak(small, config)
    peak_large = _peak(large, config)
    assert peak_large < peak_small * 1.25, (peak_small, peak_large)
    assert peak_large < 64 * 2**20


def test_a_known_ioc_ip_makes_a_source_malicious(tmp_path: Path, inventory: Any) -> None:
    iocs = tmp_path / "iocs.txt"
    iocs.write_text("198.51.100.21  # seen in our own incident\n", encoding="utf-8")
    cfg = load_config(DATA / "contoso.toml", {"intel": {"ioc_files": [str(iocs)]}})
    doc, _ = inventory(["emailevents.csv"], cfg)
    copier = by_ip(doc)["198.51.100.21"]
    assert copier["class"] == MALICIOUS
    assert any("IOC list" in r and "seen in our own incident" in r for r in copier["reasons"])
    assert "198.51.100.21" not in {w["ips"][0] for w in doc["would_block"]}
