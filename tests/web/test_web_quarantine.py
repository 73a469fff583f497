"""The quarantine pages: list with filters and keyset pagination, the message page (envelope,
findings, indicators, headers, the body shown safely), release, delete, download, audit."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.web.conftest import Admin, Web, campaign_lure, csrf_of, sign_in

from dsguard.gateway.spool import Spool
from dsguard.store import repository as repo

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _listed(page_html: str) -> list[str]:
    return re.findall(r'href="/quarantine/([0-9a-f]{32})"', page_html)


def _srcdoc(page_html: str) -> str:
    match = re.search(r'<iframe class="mailhtml" ([^>]*)>', page_html)
    assert match, "no HTML body frame"
    attrs = match.group(1)
    assert 'sandbox=""' in attrs
    assert "csp=\"default-src 'none'\"" in attrs
    srcdoc = re.search(r'srcdoc="([^"]*)"', attrs)
    assert srcdoc
    return html.unescape(srcdoc.group(1))


def test_the_list_filters_by_verdict_finding_sender_recipient_date_and_text(
    signed_in: Admin, hold: Callable[..., str]
) -> None:
    lure = hold(at=T0)
    other = hold(
        campaign_lure(
            "x1", subject="Payroll update", sender="hr@contoso.com", to="ann@contoso.com"
        ),
        verdict="suspicious",
        findings=[{"id": "DS_SPOOF_HEADER_FROM", "score": 6, "summary": "s", "evidence": "e"}],
        mail_from="bounce@mailer.example.net",
        rcpt_to=["ann@contoso.com"],
        at=T0 - timedelta(days=3),
    )
    get = signed_in.client.get
    assert _listed(get("/quarantine").text) == [lure, other]
    assert _listed(get("/quarantine?verdict=suspicious").text) == [other]
    assert _listed(get("/quarantine?finding=ATT_QR_PDF").text) == [lure]
    assert _listed(get("/quarantine?finding=ds_spoof_header_from").text) == [lure, other]
    assert _listed(get("/quarantine?sender=mailer.example").text) == [other]
    assert _listed(get("/quarantine?recipient=ANN@contoso.com").text) == [other]
    assert _listed(get("/quarantine?q=payroll").text) == [other]
    assert _listed(get("/quarantine?since=2026-03-01").text) == [lure]
    assert _listed(get("/quarantine?until=2026-02-27").text) == [other]
    assert _listed(get("/quarantine?since=2026-02-27&until=2026-02-27").text) == [other]
    page = get("/quarantine?q=100%25_off").text  # LIKE wildcards are literal
    assert _listed(page) == []
    assert "No messages match these filters." in page


def test_released_and_deleted_messages_are_listed_by_status(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    held, gone = hold(), hold()
    assert repo.delete_quarantined(web.store, gone, "test")
    get = signed_in.client.get
    assert _listed(get("/quarantine").text) == [held]
    assert _listed(get("/quarantine?status=deleted").text) == [gone]
    assert set(_listed(get("/quarantine?status=all").text)) == {held, gone}


def test_keyset_pagination_walks_every_message_once(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    raw = campaign_lure("page")
    ids = [hold(raw, at=T0 - timedelta(minutes=i // 2)) for i in range(120)]  # ties in time
    first = signed_in.client.get("/quarantine?verdict=malicious")
    assert "120 messages match" in first.text
    seen = _listed(first.text)
    url = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    pages = 1
    while url:
        target = html.unescape(url.group(1))
        assert "verdict=malicious" in target  # filters survive paging
        page = signed_in.client.get(target)
        assert page.status_code == 200
        assert "First page" in page.text
        seen += _listed(page.text)
        url = re.search(r'<a rel="next" href="([^"]+)"', page.text)
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "until=2026-13-45",
        "cursor=%21%21",
        "cursor=bm90LWEtY3Vyc29y",
        "status=lost",
        "verdict=evil",
        "finding=DROP%20TABLE",
        "sender=a%00b",
    ],
)
def test_bad_filters_get_a_clear_400_page(signed_in: Admin, query: str) -> None:
    response = signed_in.client.get(f"/quarantine?{query}")
    assert response.status_code == 400
    assert 'class="error"' in response.text
    assert "Traceback" not in response.text


def test_hostile_text_is_escaped_everywhere(signed_in: Admin, hold: Callable[..., str]) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    qid = hold(
        campaign_lure("xss", subject=evil),
        subject=evil,
        mail_from=f"a{evil}@example.net",
        header_from=evil,
        helo=evil,
        reason=evil,
        findings=[{"id": "X_TEST", "score": 1, "summary": evil, "evidence": evil}],
    )
    for path in ("/quarantine", f"/quarantine/{qid}", f"/quarantine/{qid}?view=source", "/audit"):
        page = signed_in.client.get(path).text
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
    assert "&lt;script&gt;alert" in signed_in.client.get(f"/quarantine/{qid}").text


def test_the_message_page_shows_envelope_attribution_findings_and_indicators(
    signed_in: Admin, hold: Callable[..., str]
) -> None:
    qid = hold()
    page = signed_in.client.get(f"/quarantine/{qid}").text
    envelope = page[page.index('id="envelope"') : page.index("</dl>", page.index('id="envelope"'))]
    assert "139.28.36.117</code> (UA)" in envelope
    assert "WIN-3J8KQ2H1LDF" in envelope
    assert "&lt;joe@contoso.com&gt;" in envelope
    assert "anonymous" in page[page.index('id="attribution"') :]
    findings = page[page.index('id="findings"') : page.index('id="iocs"')]
    for finding_id in (
        "DS_SPOOF_HEADER_FROM",
        "ATT_QR_PDF",
        "LURE_VOICEMAIL_FAX",
        "CAMPAIGN_DIRECT_SEND_LURE",
    ):
        assert finding_id in findings
    assert "subject: New Missed Fax-msg" in findings  # evidence, not only the id
    assert "voice-e091b.firebaseapp.com" not in findings  # indicators in evidence are defanged too
    assert "hxxps://voice-e091b[.]firebaseapp[.]com/listen?m=t0" in findings
    iocs = page[page.index('id="iocs"') : page.index('id="body"')]
    assert "URLs decoded from QR codes" in iocs
    assert "hxxps://voice-e091b[.]firebaseapp[.]com/?id=test" in iocs
    assert "firebaseapp.com" not in iocs  # only defanged
    assert "href=" not in iocs  # never a link
    assert "Fax_Msg_0617.pdf" in page  # attachment list
    assert "application/pdf" in page
    assert "Message-ID" in page  # the header table
    assert "New Missed Fax-msg" in page


def test_the_text_part_is_the_default_view(signed_in: Admin, hold: Callable[..., str]) -> None:
    qid = hold()
    page = signed_in.client.get(f"/quarantine/{qid}").text
    body = page[page.index('id="body"') :]
    assert '<pre class="mailtext">You have a new voice message (00:42).' in body
    assert "<iframe" not in body


def test_the_html_body_is_sanitised_and_sandboxed(
    signed_in: Admin, hold: Callable[..., str]
) -> None:
    qid = hold(campaign_lure("html", text=False))
    page = signed_in.client.get(f"/quarantine/{qid}").text  # HTML only: the default view
    document = _srcdoc(page)
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'">' in document
    body = document[document.index("<body>") :].lower()
    for banned in (
        "<script",
        "<style",
        "<link",
        "<form",
        "<input",
        "<iframe",
        "<svg",
        "<image",
        "<img",
        "<meta",
    ):
        assert banned not in body, banned
    for banned in (
        "onload",
        "onclick",
        "onerror",
        "style=",
        "src=",
        "href=",
        "background=",
        "javascript:",
        "url(",
    ):
        assert banned not in body, banned
    assert "tracker.example.net" not in body  # no remote load, not even as text of a live URL
    assert "tracker[.]example[.]net" in body  # ...but the analyst sees what it tried to load
    text = re.sub(r"<[^>]+>", "", body)
    assert "[hxxps://voice-e091b[.]firebaseapp[.]com/listen?m=html] listen now" in text
    assert "you have a new voice message (00:42)." in text
    assert (
        "[image not loaded: microsoft logo hxxps://tracker[.]example[.]net/pixel.gif?u=joe]" in text
    )
    assert "fax ref html" in text


def test_the_source_view_is_escaped_text(signed_in: Admin, hold: Callable[..., str]) -> None:
    qid = hold()
    page = signed_in.client.get(f"/quarantine/{qid}?view=source").text
    source = page[page.index('<pre class="mailtext source">') :]
    assert "Subject: New Missed Fax-msg" in source
    assert "&lt;script&gt;document.title" in source
    assert "<script>" not in page


def test_release_queues_the_message_in_the_gateways_spool(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    raw = campaign_lure("release")
    qid = hold(raw, mail_from="joe@contoso.com", rcpt_to=["joe@contoso.com", "ann@contoso.com"])
    response = signed_in.post(f"/quarantine/{qid}/release")
    assert response.status_code == 303
    page = signed_in.client.get(response.headers["location"]).text
    assert "Released: the message is queued" in page
    assert "Released by web:admin" in page
    [entry] = Spool(Path(web.config.gateway.spool_dir)).list("new")
    assert (entry.mail_from, entry.rcpt_to) == (
        "joe@contoso.com",
        ("joe@contoso.com", "ann@contoso.com"),
    )
    assert entry.meta == {"released_from": qid}
    assert Spool(Path(web.config.gateway.spool_dir)).read(entry) == raw
    item = repo.get_quarantined(web.store, qid)
    assert item is not None and (item.status, item.status_changed_by) == ("released", "web:admin")
    again = signed_in.post(f"/quarantine/{qid}/release")
    assert again.status_code == 409
    assert "is released" in again.text
    assert len(Spool(Path(web.config.gateway.spool_dir)).list("new")) == 1  # queued once
    [audit] = repo.list_audit(web.store, target=qid).items
    assert (audit.actor, audit.action) == ("web:admin", "release")


def test_a_release_the_spool_refuses_is_reported(
    signed_in: Admin, make_web: Callable[..., Web], hold: Callable[..., str], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    web = make_web()
    web.app.state.web.config = web.config.model_copy(
        update={"gateway": web.config.gateway.model_copy(update={"spool_dir": str(blocker)})}
    )
    qid = hold()
    with web.client() as client:
        sign_in(client)
        response = client.post(
            f"/quarantine/{qid}/release",
            data={"csrf_token": csrf_of(client)},
            follow_redirects=False,
        )
    assert response.status_code == 409
    assert "marked released but could not be queued" in response.text
    assert f"dsguard quarantine show --raw {qid}" in response.text


def test_delete_erases_the_bytes_and_keeps_the_record(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    qid = hold()
    response = signed_in.post(f"/quarantine/{qid}/delete")
    assert response.status_code == 303
    page = signed_in.client.get(response.headers["location"]).text
    assert "Deleted: the message bytes are gone" in page
    assert "only its record remains" in page
    assert 'id="download"' not in page and 'id="release"' not in page
    item = repo.get_quarantined(web.store, qid)
    assert item is not None and item.status == "deleted" and item.raw is None
    assert signed_in.client.get(f"/quarantine/{qid}/download").status_code == 410
    assert signed_in.post(f"/quarantine/{qid}/delete").status_code == 409
    assert signed_in.post(f"/quarantine/{qid}/release").status_code == 409


def test_download_is_an_eml_attachment_and_is_audited(
    signed_in: Admin, web: Web, hold: Callable[..., str]
) -> None:
    raw = campaign_lure("download")
    qid = hold(raw)
    response = signed_in.client.get(f"/quarantine/{qid}/download")
    assert response.status_code == 200
    assert response.content == raw
    assert response.headers["content-type"] == "message/rfc822"
    assert response.headers["content-disposition"] == f'attachment; filename="dsguard-{qid}.eml"'
    assert response.headers["x-content-type-options"] == "nosniff"
    [entry] = repo.list_audit(web.store, target=qid).items
    assert (entry.actor, entry.action, entry.detail) == (
        "web:admin",
        "download",
        f"{len(raw)} bytes",
    )


def test_every_action_is_on_the_audit_page(signed_in: Admin, hold: Callable[..., str]) -> None:
    released, deleted = hold(), hold()
    signed_in.client.get(f"/quarantine/{released}/download")
    signed_in.post(f"/quarantine/{released}/release")
    signed_in.post(f"/quarantine/{deleted}/delete")
    page = signed_in.client.get("/audit").text
    rows = re.findall(
        r"<tr>\s*<td[^>]*>[^<]*</td>\s*<td>([^<]*)</td>\s*<td><span[^>]*>([^<]*)</span></td>", page
    )
    actions = [action for _actor, action in rows]
    assert actions[:4] == ["delete", "release", "download", "login"]
    assert {actor for actor, _action in rows} == {"web:admin"}
    history = signed_in.client.get(f"/quarantine/{released}").text
    assert history.count("web:admin") >= 2  # download and release in the message's own history
    filtered = signed_in.client.get(f"/audit?target={deleted}").text
    assert [
        a for _x, a in re.findall(r"<td>([^<]*)</td>\s*<td><span[^>]*>([^<]*)</span>", filtered)
    ] == ["delete"]


def test_unknown_and_malformed_message_ids(signed_in: Admin) -> None:
    missing = signed_in.client.get("/quarantine/" + "f" * 32)
    assert missing.status_code == 404
    assert "no such message" in missing.text
    malformed = signed_in.client.get("/quarantine/../../etc/passwd")
    assert malformed.status_code in (400, 404)
    assert signed_in.client.get("/quarantine/ABC").status_code == 400
    assert signed_in.post("/quarantine/" + "f" * 32 + "/release").status_code == 404
    assert signed_in.post("/quarantine/" + "f" * 32 + "/delete").status_code == 404
