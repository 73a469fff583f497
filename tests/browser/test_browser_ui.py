"""The admin web UI in a real browser: Debian's headless Chromium driven by Playwright, against
``dsguard web`` running as a process on loopback, over the same store as a real gateway.

The gateway (tests/fixtures/gateway.py: the real ``dsguard gateway`` in front of Postfix's
smtp-sink, nsd for DNS) runs in audit mode with malicious mail quarantined. The campaign's
attack is sent to it over SMTP from a stranger's address; the admin then sees it on the
dashboard, finds it in the quarantine, reads its findings, releases it (it reaches the sink
through the gateway's spool) or deletes it, and signs out. Cross-site and token-less POSTs are
refused; a page without a session leads to the sign-in page.

No browser is downloaded: Playwright launches /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import smtplib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright
from tests.fixtures import gateway as gwf
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, token, wait_at_sink
from tests.web.conftest import ADMIN, PASSWORD, WebProcess, campaign_lure, dsguard_cli

from dsguard.store import open_store
from dsguard.store import repository as repo

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STRANGER = "127.0.0.5"  # in no connector and no SPF record of contoso.com: the campaign's host
WAIT = 30.0


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway(
        {"organization": {"reject_direct_send": "audit"}, "actions": {"malicious": "quarantine"}}
    )


@pytest.fixture(scope="module")
def web(gw: GatewayProcess) -> Iterator[WebProcess]:
    """``dsguard web`` with the gateway's own config plus a [web] section: same store, spool."""
    path = gw.workdir / "web.toml"

    def config_text(port: int) -> str:
        settings = gwf.deep_merge(
            gw.config_dict(),
            {"web": {"listen": f"127.0.0.1:{port}", "session_secret_file": "web-session.key"}},
        )
        return gwf.to_toml(settings)

    path.write_text(config_text(0 + 8025), encoding="utf-8")
    added = dsguard_cli(
        "admin", "add", ADMIN, "--password-stdin", config=path, stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    process = WebProcess(path, gw.workdir, config_text).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT * 1000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, web: WebProcess) -> None:
    page.goto(web.url + "/")
    assert page.url.startswith(web.url + "/login")
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(web.url + "/")
    assert page.locator("h1").inner_text() == "Direct Send dashboard"


def send_attack(gw: GatewayProcess, tag: str, *, source: str = STRANGER) -> str:
    """The campaign's attack over SMTP; returns the quarantine id the gateway gave it."""
    mark = gw.mark()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="WIN-3J8KQ2H1LDF", source_address=(source, 0), timeout=60
    ) as smtp:
        assert smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], campaign_lure(tag)) == {}
    decision = gw.wait_for_record(lambda r: r.get("event") == "decision", since=mark)
    assert decision["decision"] == "quarantined", decision
    assert (decision["p1"], decision["p2"]) == ("would_reject", "would_reject")
    return str(decision["queue_id"])


def reload_until(page: Page, condition: Any, what: str) -> None:
    """The gateway writes events from a background thread: reload until they show (bounded)."""
    deadline = time.monotonic() + WAIT
    page.reload()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
        page.reload()


def held_status(context: BrowserContext, web: WebProcess, qid: str) -> str:
    response = context.request.get(f"{web.url}/api/quarantine/{qid}")
    assert response.status == 200
    status = response.json()["status"]
    assert isinstance(status, str)
    return status


def test_a_page_without_a_session_leads_to_sign_in(page: Page, web: WebProcess) -> None:
    page.goto(web.url + "/quarantine?verdict=malicious")
    assert page.url == web.url + "/login?next=%2Fquarantine%3Fverdict%3Dmalicious"
    assert page.locator("h1").inner_text() == "Sign in"
    api = page.request.get(web.url + "/api/quarantine")
    assert api.status == 401
    assert api.json() == {"detail": "not signed in"}


def test_the_campaign_attack_from_gateway_to_release_and_delete(
    page: Page, context: BrowserContext, web: WebProcess, gw: GatewayProcess
) -> None:
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(web.url) else outside.append(r.url))
    sign_in(page, web)

    # The attack, as the campaign sent it, reaches the gateway in audit mode: not refused,
    # but the content analysis holds it.
    tag, second = "fax-" + token(), "fax-" + token()
    qid = send_attack(gw, tag)
    other = send_attack(gw, second)

    # Dashboard: the attempts, where they came from, whom they spoofed.
    reload_until(page, lambda: int(page.locator("#ds-total").inner_text()) >= 2, "the dashboard")
    assert page.locator("#top-sources").get_by_text(STRANGER).count() == 1
    assert page.locator("svg.chart rect.bar.quarantined").count() >= 1
    assert "quarantined" in (
        page.locator("svg.chart rect.bar.quarantined title").first.text_content() or ""
    )
    assert page.locator("#top-sources").get_by_text(STRANGER).count() == 1
    assert page.locator("#top-spoofed").get_by_text("joe@contoso.com").count() == 1
    assert "audit" in page.locator("#organization").inner_text().lower()

    # Quarantine: search for it, open it.
    page.click("nav >> text=Quarantine")
    page.fill("input[name=q]", tag)
    page.click("button:has-text('Filter')")
    rows = page.locator("#quarantine tbody tr")
    assert rows.count() == 1
    assert "malicious" in rows.first.inner_text().lower()
    rows.first.locator("td.subject a").click()
    page.wait_for_url(f"{web.url}/quarantine/{qid}")
    assert page.locator("h1.subject").inner_text() == "New Missed Fax-msg"

    # Its findings and indicators, the QR code's URL among them, defanged and not a link.
    findings = page.locator("#findings").inner_text()
    for finding_id in (
        "DS_SPOOF_ENVELOPE",
        "DS_SPOOF_HEADER_FROM",
        "ATT_QR_PDF",
        "LURE_VOICEMAIL_FAX",
    ):
        assert finding_id in findings
    iocs = page.locator("#iocs")
    assert "hxxps://voice-e091b[.]firebaseapp[.]com/?id=test" in iocs.inner_text()
    assert iocs.locator("a").count() == 0
    assert page.locator("a[href*='firebaseapp']").count() == 0
    envelope = page.locator("#envelope").inner_text()
    assert STRANGER in envelope and "WIN-3J8KQ2H1LDF" in envelope
    assert "anonymous" in page.locator("#attribution").inner_text()

    # The HTML body, sanitised in a sandbox: readable, nothing loaded, nothing runs.
    page.click("nav.tabs >> text=HTML, sanitised")
    frame_element = page.locator("iframe.mailhtml")
    assert frame_element.get_attribute("sandbox") == ""
    frame = page.frame_locator("iframe.mailhtml")
    assert "Listen Now" in frame.locator("body").inner_text()
    assert frame.locator("img, script, form, iframe, svg, style, link").count() == 0
    assert frame.locator("a[href]").count() == 0
    assert page.title() != "pwned"
    assert not outside, f"the page fetched from elsewhere: {outside}"

    # Release: it goes through the gateway's spool to the downstream server.
    page.click("#release")
    page.wait_for_url(f"{web.url}/quarantine/{qid}?done=released")
    assert "Released" in page.locator(".notice").inner_text()
    [delivered] = wait_at_sink(gw.world.sink, tag.encode())
    assert list(delivered.rcpt_to) == ["joe@contoso.com"]
    assert held_status(context, web, qid) == "released"

    # Delete the other one.
    page.goto(f"{web.url}/quarantine/{other}")
    page.click("details.danger summary")
    page.click("#delete")
    page.wait_for_url(f"{web.url}/quarantine/{other}?done=deleted")
    assert "only its record remains" in page.content()
    assert page.locator("#download").count() == 0
    assert held_status(context, web, other) == "deleted"

    # Both actions are in the audit log, by this admin.
    page.click("nav >> text=Audit log")
    audit = page.locator("#audit tbody").inner_text()
    assert f"web:{ADMIN}" in audit and "release" in audit and "delete" in audit

    # Sign out: the session is gone, pages lead to sign-in again.
    page.click("button:has-text('Sign out')")
    page.wait_for_url(web.url + "/login")
    page.goto(web.url + "/quarantine")
    assert page.url.startswith(web.url + "/login")
    assert context.request.get(f"{web.url}/api/quarantine").status == 401


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def attacker_site(target: str) -> Iterator[str]:
    """A page on another port of the same host (same-site for cookies) with a form that posts
    to ``target`` the way a CSRF attack would."""
    handler = type(
        "Attacker",
        (_AttackerPage,),
        {
            "body": (
                f'<!DOCTYPE html><form method="post" action="{target}">'
                '<input type="hidden" name="csrf_token" value="guessed">'
                '<button type="submit">Win a prize</button></form>'
            ).encode()
        },
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_posts_without_the_csrf_token_are_refused(
    page: Page, context: BrowserContext, web: WebProcess, gw: GatewayProcess
) -> None:
    sign_in(page, web)
    qid = send_attack(gw, "csrf-" + token())
    # A POST with the session cookie but no token (what a forged request carries).
    bare = context.request.post(f"{web.url}/quarantine/{qid}/delete", form={"confirm": "yes"})
    assert bare.status == 403
    assert "CSRF token missing or wrong" in bare.text()
    api = context.request.post(f"{web.url}/api/quarantine/{qid}/release")
    assert api.status == 403
    # A form on another site (another port: same-site, so the SameSite cookie is sent).
    with attacker_site(f"{web.url}/quarantine/{qid}/release") as attacker:
        page.goto(attacker)
        page.click("button:has-text('Win a prize')")
        page.wait_for_load_state()
        assert "403 cross-site request refused" in page.content()
    assert held_status(context, web, qid) == "held"
    # The same release from the UI itself works.
    page.goto(f"{web.url}/quarantine/{qid}")
    page.click("#release")
    page.wait_for_url(f"{web.url}/quarantine/{qid}?done=released")
    assert held_status(context, web, qid) == "released"


# Where last week's waves came from (registry countries: UA, UA, RU, IT, GE), and a printer
# on the organisation's own network sending as contoso.com without a connector.
WAVE_SOURCES = ("139.28.36.117", "139.28.37.44", "91.215.85.17", "185.225.73.12", "77.91.124.20")
PRINTER = "198.51.100.20"


def seed_history(gw: GatewayProcess) -> None:
    """A week of Direct Send attempts before today, so the screenshots show what an admin
    sees after running in audit mode for a while: campaign waves (quarantined) and a printer
    (audited). Written into the gateway's store as the gateway writes them; fewer than ten
    sources, so the module's other tests still find their own in the top list."""
    rng = random.Random(6)  # fixed: the same picture every run
    store = open_store(f"sqlite:///{gw.db_path}")
    try:
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=7)
        for hour in range(7 * 24 - 6):
            at = start + timedelta(hours=hour)
            wave = hour % 24 in (7, 8, 9, 13, 14) and hour // 24 in (1, 2, 4, 5)
            attempts = rng.randint(4, 14) if wave else int(rng.random() < 0.08)
            for _ in range(attempts):
                ip = rng.choice(WAVE_SOURCES)
                _seed_event(store, at, ip, "quarantined", "malicious", "joe@contoso.com")
            if 8 <= hour % 24 <= 17 and hour // 24 % 7 not in (5, 6) and rng.random() < 0.5:
                _seed_event(store, at, PRINTER, "audited", "clean", "scanner@contoso.com")
    finally:
        store.close()


def _seed_event(
    store: Any, at: datetime, ip: str, decision: str, verdict: str, sender: str
) -> None:
    spoof = decision == "quarantined"
    repo.record_event(
        store,
        front_door="gateway",
        client_ip=ip,
        helo="WIN-3J8KQ2H1LDF" if spoof else "NPI4A2B1C",
        country=None,
        mail_from=sender,
        rcpt_to=[sender if spoof else "ann@contoso.com"],
        header_from=sender,
        attribution="anonymous",
        p1="would_reject",
        p2="would_reject" if spoof else "not_applicable",
        mode="audit",
        decision=decision,
        verdict=verdict,
        score=28.0 if spoof else 1.0,
        finding_ids=["DS_SPOOF_ENVELOPE", "ATT_QR_PDF"] if spoof else ["DS_DIRECT_SEND"],
        message_id=None,
        subject="New Missed Fax-msg" if spoof else "Scanned from MFP-Floor2",
        queue_id=None,
        at=at + timedelta(minutes=7),
    )


def test_screenshots_of_the_dashboard_and_the_message_page(
    page: Page, web: WebProcess, gw: GatewayProcess, tmp_path: Path
) -> None:
    """Screenshots for the README. Written to docs/screenshots/ when DSGUARD_SCREENSHOTS=1
    (``make screenshots``-style: a deliberate update), else to a temporary directory: the test
    always takes them and checks they are real images."""
    target = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("DSGUARD_SCREENSHOTS") != "1":
        target = tmp_path
    target.mkdir(parents=True, exist_ok=True)
    seed_history(gw)
    sign_in(page, web)
    qid = send_attack(gw, "shot-" + token())
    reload_until(
        page, lambda: page.locator("#top-sources").get_by_text(STRANGER).count() == 1, "the attack"
    )
    assert int(page.locator(".card a[href='/quarantine']").inner_text()) >= 1  # held
    dashboard = target / "dashboard.png"
    page.screenshot(path=str(dashboard), full_page=True)
    page.goto(f"{web.url}/quarantine/{qid}?view=html#body")
    page.frame_locator("iframe.mailhtml").locator("body").wait_for()
    message = target / "message.png"
    page.screenshot(path=str(message), full_page=True)
    for shot in (dashboard, message):
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == 1400 and height >= 1000, (shot, width, height)
    assert json.loads(page.request.get(f"{web.url}/api/session").text())["username"] == ADMIN
