"""The JSON API under /api: the same data and actions as the pages, for scripts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.fixtures.events import event_fields
from tests.web.conftest import QR_PDF, QR_URL, Admin, Web, campaign_lure

from dsguard.gateway.spool import Spool
from dsguard.store import repository as repo

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _event(store: object, **overrides: object) -> int:
    return repo.record_event(store, **event_fields(**overrides))  # type: ignore[arg-type]


def test_quarantine_list_filters_and_pages(signed_in: Admin, hold: Callable[..., str]) -> None:
    ids = [hold(at=T0 - timedelta(minutes=i)) for i in range(5)]
    suspicious = hold(verdict="suspicious", rcpt_to=["ann@contoso.com"], at=T0 - timedelta(days=1))
    first = signed_in.client.get("/api/quarantine", params={"limit": 2}).json()
    assert [i["id"] for i in first["items"]] == ids[:2]
    assert first["total_estimate"] == 6
    second = signed_in.client.get(
        "/api/quarantine", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [i["id"] for i in second["items"]] == ids[2:4]
    assert second["total_estimate"] is None  # counted on the first page only
    item = first["items"][0]
    assert item["verdict"] == "malicious"
    assert item["client_ip"] == "139.28.36.117" and item["country"] == "UA"
    assert "ATT_QR_PDF" in item["finding_ids"]
    assert item["received_at"] == T0.isoformat().replace("+00:00", "Z")
    get = signed_in.client.get
    assert [i["id"] for i in get("/api/quarantine?verdict=suspicious").json()["items"]] == [
        suspicious
    ]
    assert [i["id"] for i in get("/api/quarantine?recipient=ann@contoso.com").json()["items"]] == [
        suspicious
    ]
    window = {
        "since": (T0 - timedelta(hours=2)).isoformat(),
        "until": (T0 - timedelta(minutes=2)).isoformat(),
    }
    assert [i["id"] for i in get("/api/quarantine", params=window).json()["items"]] == ids[3:5]


def test_quarantine_list_errors_are_json(signed_in: Admin) -> None:
    bad_cursor = signed_in.client.get("/api/quarantine?cursor=bm90LWEtY3Vyc29y")
    assert bad_cursor.status_code == 400
    assert bad_cursor.json() == {"detail": "cursor: invalid (start again from the first page)"}
    bad_verdict = signed_in.client.get("/api/quarantine?verdict=evil")
    assert bad_verdict.status_code == 422
    [problem] = bad_verdict.json()["detail"]  # FastAPI's documented 422 shape
    assert problem["loc"] == ["query", "verdict"]
    too_many = signed_in.client.get("/api/quarantine?limit=100000")
    assert too_many.status_code == 422
    nul = signed_in.client.get("/api/quarantine", params={"sender": "a\x00b"})
    assert nul.status_code == 400
    assert nul.json()["detail"] == "sender: control characters are not allowed"
    far = signed_in.client.get("/api/quarantine", params={"since": "0001-01-01T00:00:00+14:00"})
    assert far.status_code == 400


def test_message_detail(signed_in: Admin, web: Web, hold: Callable[..., str]) -> None:
    qid = hold()
    detail = signed_in.client.get(f"/api/quarantine/{qid}").json()
    assert detail["id"] == qid
    assert detail["attribution"] == "anonymous"
    assert detail["raw_available"] is True
    assert detail["helo"] == "WIN-3J8KQ2H1LDF"
    findings = {f["id"]: f for f in detail["findings"]}
    assert findings["LURE_VOICEMAIL_FAX"]["evidence"] == "subject: New Missed Fax-msg"
    assert detail["iocs"]["qr_urls"] == [QR_URL]  # raw in JSON: inert there, defanged on pages
    assert {"name": "Subject", "value": "New Missed Fax-msg"} in detail["headers"]
    [attachment] = detail["attachments"]
    assert (attachment["filename"], attachment["content_type"]) == (
        "Fax_Msg_0617.pdf",
        "application/pdf",
    )
    assert attachment["size"] == Path(QR_PDF).stat().st_size
    assert detail["audit"] == []
    assert signed_in.client.get("/api/quarantine/" + "e" * 32).status_code == 404
    assert signed_in.client.get("/api/quarantine/not-hex").status_code == 422


def test_release_delete_and_download_through_the_api(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    raw = campaign_lure("api")
    qid, other = hold(raw), hold()
    raw_response = signed_in.client.get(f"/api/quarantine/{qid}/raw")
    assert raw_response.content == raw
    assert raw_response.headers["content-type"] == "message/rfc822"
    assert raw_response.headers["content-disposition"].startswith("attachment;")
    released = signed_in.api("POST", f"/api/quarantine/{qid}/release")
    assert released.status_code == 200
    body = released.json()
    assert (body["id"], body["status"]) == (qid, "released")
    [entry] = Spool(Path(web.config.gateway.spool_dir)).list("new")
    assert entry.id == body["spool_id"]
    again = signed_in.api("POST", f"/api/quarantine/{qid}/release")
    assert again.status_code == 409
    assert again.json()["detail"] == f"{qid} is released"
    deleted = signed_in.api("DELETE", f"/api/quarantine/{other}")
    assert deleted.json() == {"id": other, "status": "deleted"}
    assert signed_in.api("DELETE", f"/api/quarantine/{other}").status_code == 409
    assert signed_in.client.get(f"/api/quarantine/{other}/raw").status_code == 410
    assert signed_in.api("DELETE", "/api/quarantine/" + "e" * 32).status_code == 404
    audit = signed_in.client.get("/api/audit").json()["items"]
    assert [(a["action"], a["target"]) for a in audit[:3]] == [
        ("delete", other),
        ("release", qid),
        ("download", qid),
    ]
    assert all(a["actor"] == "web:admin" for a in audit[:3])
    assert [
        a["action"] for a in signed_in.client.get(f"/api/audit?target={qid}").json()["items"]
    ] == [
        "release",
        "download",
    ]


def test_events_are_listed_newest_first_with_filters(signed_in: Admin, web: Web) -> None:
    now = datetime.now(UTC)
    old = _event(
        web.store,
        at=now - timedelta(days=2),
        decision="accepted",
        p1="not_applicable",
        p2="not_applicable",
    )
    refused = _event(web.store, at=now - timedelta(hours=1))
    milter = _event(
        web.store,
        at=now,
        front_door="milter",
        decision="quarantined",
        verdict="malicious",
        score=20.0,
    )
    items = signed_in.client.get("/api/events").json()["items"]
    assert [e["id"] for e in items] == [milter, refused, old]
    assert [
        e["id"] for e in signed_in.client.get("/api/events?decision=refused").json()["items"]
    ] == [refused]
    assert [
        e["id"] for e in signed_in.client.get("/api/events?front_door=milter").json()["items"]
    ] == [milter]
    page = signed_in.client.get("/api/events?limit=1").json()
    rest = signed_in.client.get(
        "/api/events", params={"limit": 5, "cursor": page["next_cursor"]}
    ).json()
    assert [e["id"] for e in rest["items"]] == [refused, old]
    assert signed_in.client.get("/api/events?decision=nope").status_code == 422


def test_dashboard_figures(signed_in: Admin, web: Web, hold: Callable[..., str]) -> None:
    now = datetime.now(UTC)
    for _ in range(3):
        _event(web.store, at=now - timedelta(minutes=5))
    _event(
        web.store,
        at=now - timedelta(minutes=4),
        client_ip="203.0.113.9",
        country=None,
        decision="audited",
        mode="audit",
        p2="not_applicable",
        mail_from="printer@contoso.com",
    )
    _event(
        web.store,
        at=now,
        decision="accepted",
        p1="not_applicable",
        p2="not_applicable",
        verdict="clean",
        client_ip="192.0.2.1",
        mail_from="news@example.org",
        header_from="news@example.org",
    )
    hold()
    figures = signed_in.client.get("/api/dashboard?range=24h").json()
    assert figures["bucket"] == "hour"
    assert figures["direct_send_total"] == 4  # the accepted newsletter is no Direct Send attempt
    per_decision: dict[str, int] = {}
    for bucket in figures["direct_send"]:  # the events may straddle an hour boundary
        per_decision[bucket["decision"]] = per_decision.get(bucket["decision"], 0) + bucket["count"]
    assert per_decision == {"refused": 3, "audited": 1}
    assert figures["decisions"] == {"refused": 3, "audited": 1, "accepted": 1}
    assert figures["verdicts"] == {"none": 4, "clean": 1}
    assert figures["top_sources"][0] == {"ip": "139.28.36.117", "country": "UA", "count": 3}
    assert figures["top_spoofed_senders"] == [
        {"address": "joe@contoso.com", "count": 3},
        {"address": "printer@contoso.com", "count": 1},
    ]
    assert figures["quarantine"] == {"held": 1, "released": 0, "deleted": 0}
    org = figures["organization"]
    assert org["accepted_domains"] == ["contoso.com"]
    assert org["reject_direct_send"] == "audit"
    assert org["connectors"][0]["name"] == "scanner-floor2"
    assert org["config_file"] == str(Path(web.config.source).resolve())
    assert signed_in.client.get("/api/dashboard?range=1y").status_code == 422
