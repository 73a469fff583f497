"""Quarantine: raw bytes and JSON round trips, release/delete with audit, bytes really gone."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dsguard.model import Finding, Iocs
from dsguard.store import Store, open_store
from dsguard.store.repository import (
    delete_quarantined,
    get_quarantined,
    list_audit,
    list_quarantine,
    mark_released,
    quarantine_message,
)

Hold = Callable[..., str]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(bytes(range(256)) * 4, id="every-byte-value"),
        pytest.param(
            "Subject: =?utf-8?q?Fax?=\r\n\r\nGrüße aus Köln \u20ac\r\n".encode("latin-1", "replace")
            + "Grüße".encode(),
            id="8bit-mixed-charsets",
        ),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x00\r\n.\r\n\x00", id="nul-and-dot-lines"),
    ],
)
def test_raw_bytes_round_trip_exactly(store: Store, hold: Hold, raw: bytes) -> None:
    qid = hold(raw=raw)
    item = get_quarantined(store, qid)
    assert item is not None
    assert item.raw == raw
    assert item.raw_size == len(raw)
    assert item.raw_sha256 == hashlib.sha256(raw).hexdigest()


def test_five_megabyte_message_round_trips_and_is_stored_compressed(
    store: Store, hold: Hold
) -> None:
    # Realistic shape: headers, a base64 PDF attachment (incompressible payload encoded as
    # text) and a repetitive HTML body.
    payload = os.urandom(3 * 1024 * 1024)
    body = base64.encodebytes(payload)
    html = b"<p>Listen now</p>\r\n" * 60_000
    raw = b"From: joe@contoso.com\r\nSubject: fax\r\n\r\n" + html + body
    assert len(raw) > 5 * 1024 * 1024
    qid = hold(raw=raw)
    item = get_quarantined(store, qid)
    assert item is not None
    assert item.raw == raw
    with store.engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT length(data), compression FROM quarantine_blob"
        ).one()
    assert stored[1] == "zlib"
    assert stored[0] < len(raw)


def test_findings_and_iocs_round_trip_as_json(store: Store, hold: Hold) -> None:
    findings = [
        {
            "id": "DS_P1_OWN_DOMAIN",
            "score": 5.0,
            "summary": "envelope sender in an accepted domain, anonymous",
            "evidence": "MAIL FROM:<joe@contoso.com> from 139.28.36.10",
        },
        {"id": "LURE_VOICEMAIL", "score": 2.5, "summary": "Voicemail-Köder ✉", "evidence": "€"},
    ]
    iocs = {
        "ips": ["139.28.36.10"],
        "urls": ["https://voice-e091b.firebaseapp.com/listen?id=7&x=\"'<>"],
        "domains": ["voice-e091b.firebaseapp.com", "mv4lh.bsfff.es"],
        "qr_urls": ["https://mv4lh.bsfff.es/"],
    }
    qid = hold(findings=findings, iocs=iocs)
    item = get_quarantined(store, qid)
    assert item is not None
    assert item.findings == findings
    assert item.iocs == iocs


def test_model_findings_and_iocs_are_accepted(store: Store, hold: Hold) -> None:
    qid = hold(
        findings=[Finding("DS_SELF_SENT", 3.0, "sent to itself", "To = From")],
        iocs=Iocs(ips=("192.0.2.7",), urls=("https://example.net/a",)),
    )
    item = get_quarantined(store, qid)
    assert item is not None
    assert item.findings == [
        {"id": "DS_SELF_SENT", "score": 3.0, "summary": "sent to itself", "evidence": "To = From"}
    ]
    assert item.iocs == {
        "ips": ["192.0.2.7"],
        "urls": ["https://example.net/a"],
        "domains": [],
        "qr_urls": [],
    }


def test_timestamps_are_stored_as_utc_and_returned_aware(store: Store, hold: Hold) -> None:
    berlin_noon = datetime(2024, 11, 27, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    qid = hold(at=berlin_noon)
    item = get_quarantined(store, qid)
    assert item is not None
    assert item.received_at == berlin_noon
    assert item.received_at.utcoffset() == timedelta(0)
    assert item.received_at.hour == 11


def test_naive_timestamps_are_refused(hold: Hold) -> None:
    with pytest.raises(ValueError, match="naive"):
        hold(at=datetime(2024, 1, 1, 12, 0))


def test_hostile_header_text_is_stored_cleaned(store: Store, hold: Hold) -> None:
    # NUL is refused by PostgreSQL, lone surrogates (surrogateescape) by both drivers.
    qid = hold(
        subject="Fax\x00 \udcff received" + "x" * 100_000,
        header_from="\udce9vil@contoso.com",
        findings=[{"id": "X", "score": 1, "summary": "a\x00b", "evidence": "\udc80"}],
    )
    item = get_quarantined(store, qid)
    assert item is not None
    assert item.subject is not None
    assert item.subject.startswith("Fax\ufffd ")
    assert len(item.subject) <= 2_000
    assert item.header_from is not None
    assert item.header_from.endswith("vil@contoso.com")
    assert item.findings[0]["summary"] == "a\ufffdb"


def test_unknown_or_malformed_ids_return_none_or_false(store: Store) -> None:
    for qid in ["0" * 32, "not-an-id", "'; DROP TABLE quarantine; --", ""]:
        assert get_quarantined(store, qid) is None
        assert mark_released(store, qid, "admin") is False
        assert delete_quarantined(store, qid, "admin") is False


def test_release_changes_status_once_and_is_audited(store: Store, hold: Hold) -> None:
    qid = hold()
    other = hold()
    assert mark_released(store, qid, "alice") is True
    assert mark_released(store, qid, "alice") is False  # already released

    item = get_quarantined(store, qid)
    assert item is not None
    assert item.status == "released"
    assert item.status_changed_by == "alice"
    assert item.status_changed_at is not None
    assert item.status_changed_at.tzinfo is not None
    assert item.raw is not None  # releasing keeps the message

    held = [s.id for s in list_quarantine(store).items]
    released = [s.id for s in list_quarantine(store, status="released").items]
    assert held == [other]
    assert released == [qid]

    entries = list_audit(store).items
    assert [(e.actor, e.action, e.target) for e in entries] == [("alice", "release", qid)]


def test_delete_removes_raw_bytes_keeps_tombstone_and_audits(store: Store, hold: Hold) -> None:
    qid = hold(subject="payroll update")
    assert delete_quarantined(store, qid, "bob") is True
    assert delete_quarantined(store, qid, "bob") is False
    assert mark_released(store, qid, "bob") is False  # a deleted message cannot be released

    item = get_quarantined(store, qid)
    assert item is not None
    assert item.status == "deleted"
    assert item.raw is None
    assert item.subject == "payroll update"  # tombstone for the audit trail
    with store.engine.connect() as connection:
        blobs = connection.exec_driver_sql("SELECT count(*) FROM quarantine_blob").scalar()
    assert blobs == 0

    assert list_quarantine(store).items == []
    assert [s.id for s in list_quarantine(store, status="deleted").items] == [qid]
    entries = list_audit(store, target=qid).items
    assert [(e.actor, e.action) for e in entries] == [("bob", "delete")]


def test_released_message_can_still_be_deleted(store: Store, hold: Hold) -> None:
    qid = hold()
    assert mark_released(store, qid, "alice")
    assert delete_quarantined(store, qid, "bob")
    entries = list_audit(store, target=qid).items
    assert [e.action for e in entries] == ["delete", "release"]  # newest first


def test_deleted_bytes_are_gone_from_the_sqlite_files(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite3"
    store = open_store(f"sqlite:///{db}")
    # Random bytes do not compress, so they would appear verbatim in the file if left over.
    secret = os.urandom(200_000)
    marker = secret[100_000:100_064]
    try:
        qid = quarantine_message(
            store,
            raw=secret,
            mail_from="joe@contoso.com",
            rcpt_to=["joe@contoso.com"],
            client_ip=None,
            helo=None,
            country=None,
            header_from=None,
            subject=None,
            message_id=None,
            verdict="malicious",
            score=10,
            findings=[],
            iocs={},
            attribution="anonymous",
            reason="test",
            at=datetime.now(UTC),
        )
        files = [p for p in tmp_path.iterdir() if p.name.startswith("q.sqlite3")]
        assert any(marker in p.read_bytes() for p in files)  # the check can see the bytes

        assert delete_quarantined(store, qid, "admin")
        # Checked while the store is still open, as in a long-running gateway (closing the
        # last connection would checkpoint and remove the WAL anyway).
        files = [p for p in tmp_path.iterdir() if p.name.startswith("q.sqlite3")]
        assert not any(marker in p.read_bytes() for p in files)
    finally:
        store.close()
