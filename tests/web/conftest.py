"""Fixtures of the web UI tests: a config and store in tmp_path, an admin, the app in-process
(an ``httpx.Client`` whose transport runs httpx's ASGITransport on an anyio portal: the whole
app, middleware included, without a socket), and quarantined mail that went through the real
scanner.

The campaign's lure is built here: the self-addressed "New Missed Fax-msg" with a "Listen Now"
link and a PDF whose QR code leads to voice-e091b.firebaseapp.com (tests/data/qr/qr-vector.pdf),
plus HTML that tries everything a hostile mail can try in a browser (script, event handlers,
remote images and styles, forms, frames).
"""

from __future__ import annotations

import contextlib
import email.policy
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi.routing import APIRoute

from dsguard.config import Config, load_config
from dsguard.mail.source import RawMessage
from dsguard.scan import Scanner
from dsguard.store import Store, open_store
from dsguard.store import repository as repo
from dsguard.web.app import create_app

ADMIN = "admin"
SAMPLE_QID = "0123456789abcdef0123456789abcdef"
PASSWORD = "correct horse battery staple"
QR_PDF = Path(__file__).resolve().parents[1] / "data" / "qr" / "qr-vector.pdf"
QR_URL = "https://voice-e091b.firebaseapp.com/?id=test"  # what the PDF's QR code says

HOSTILE_HTML = """<html><head>
<style>body {{ background: url(https://tracker.example.net/bg.png) }}</style>
<script>document.title = "pwned"; fetch("https://tracker.example.net/js")</script>
<link rel="stylesheet" href="https://tracker.example.net/style.css">
<meta http-equiv="refresh" content="0;url=https://mv4lh.bsfff.es/secure/login">
</head><body onload="alert(1)">
<p style="background-image: url(https://tracker.example.net/p-style.png)">You have a new voice message (00:42).</p>
<p><a href="https://voice-e091b.firebaseapp.com/listen?m={tag}" onclick="steal()">Listen Now</a>
 <a href="javascript:alert(document.cookie)">Details</a></p>
<img src="https://tracker.example.net/pixel.gif?u=joe" alt="Microsoft logo" onerror="alert(2)">
<table background="https://tracker.example.net/table.png"><tr><td>Fax ref {tag}</td></tr></table>
<form action="https://mv4lh.bsfff.es/secure/login" method="post"><input name="password"></form>
<iframe src="https://example.net/frame"></iframe>
<svg><image href="https://tracker.example.net/svg.png"/></svg>
</body></html>"""


def campaign_lure(
    tag: str = "t0",
    *,
    subject: str = "New Missed Fax-msg",
    sender: str = "joe@contoso.com",
    to: str = "joe@contoso.com",
    text: bool = True,
) -> bytes:
    """The campaign's attack as a MIME message (text + hostile HTML + QR PDF)."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = "Tue, 17 Jun 2025 09:14:22 +0300"
    m["Message-ID"] = f"<{tag}@WIN-3J8KQ2H1LDF>"
    link = f"https://voice-e091b.firebaseapp.com/listen?m={tag}"
    if text:
        m.set_content(f"You have a new voice message (00:42).\nListen Now: {link}\nref {tag}\n")
        m.add_alternative(HOSTILE_HTML.format(tag=tag), subtype="html")
    else:
        m.set_content(HOSTILE_HTML.format(tag=tag), subtype="html")
    m.add_attachment(
        QR_PDF.read_bytes(), maintype="application", subtype="pdf", filename="Fax_Msg_0617.pdf"
    )
    return m.as_bytes(policy=email.policy.SMTP)  # CRLF line ends, as on the wire


def write_config(directory: Path, settings: str = "") -> Path:
    path = directory / "dsguard.toml"
    path.write_text(config_text(settings), encoding="utf-8")
    return path


def config_text(settings: str = "") -> str:
    """The test config (paths relative to the file); ``settings`` go into ``[web]``."""
    return f"""
[organization]
accepted_domains = ["contoso.com"]
reject_direct_send = "audit"

[[connectors]]
name = "scanner-floor2"
sender_ip_ranges = ["203.0.113.25/32"]
sender_domains = ["contoso.com"]

[gateway]
spool_dir = "spool"

[storage]
url = "sqlite:///dsguard.sqlite3"

[web]
session_secret_file = "web-session.key"
{settings}
"""


class PortalTransport(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app (httpx only ships an async one)."""

    def __init__(self, app: Any, portal: BlockingPortal, client_ip: str) -> None:
        self._inner = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def call() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self._inner.handle_async_request(request)
            body = await response.aread()
            return response.status_code, response.headers.raw, body

        status, headers, body = self._portal.call(call)
        return httpx.Response(status, headers=headers, content=body, request=request)


@contextlib.contextmanager
def asgi_client(
    app: Any, *, base_url: str = "http://testserver", client_ip: str = "127.0.0.1"
) -> Iterator[httpx.Client]:
    with (
        start_blocking_portal() as portal,
        httpx.Client(
            transport=PortalTransport(app, portal, client_ip), base_url=base_url
        ) as client,
    ):
        yield client


class ManualClock:
    """Monotonic seconds that move only when a test says so (session expiry, throttling)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Web:
    """One app instance and what it runs on."""

    config: Config
    store: Store
    clock: ManualClock
    app: Any

    def client(self, **kwargs: Any) -> contextlib.AbstractContextManager[httpx.Client]:
        return asgi_client(self.app, **kwargs)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path))


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    opened = open_store(config.storage.url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def admin(store: Store) -> str:
    repo.add_user(store, ADMIN, PASSWORD, kind="admin")
    return ADMIN


@pytest.fixture
def make_web(config: Config, store: Store, admin: str) -> Callable[..., Web]:
    """``make_web(**web_settings)``: a fresh app over the test store ([web] overrides)."""

    def make(**web_settings: Any) -> Web:
        cfg = config.model_copy(update={"web": config.web.model_copy(update=web_settings)})
        clock = ManualClock()
        return Web(cfg, store, clock, create_app(cfg, store=store, clock=clock))

    return make


@pytest.fixture
def web(make_web: Callable[..., Web]) -> Web:
    return make_web()


@pytest.fixture
def anonymous(web: Web) -> Iterator[httpx.Client]:
    with web.client() as client:
        yield client


def login_token(client: httpx.Client) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    match = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def sign_in(client: httpx.Client, username: str = ADMIN, password: str = PASSWORD) -> Any:
    return client.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "login_token": login_token(client),
            "next": "/",
        },
        follow_redirects=False,
    )


def csrf_of(client: httpx.Client) -> str:
    token = client.get("/api/session").json()["csrf_token"]
    assert isinstance(token, str)
    return token


@dataclass
class Admin:
    client: httpx.Client
    csrf: str

    def post(self, url: str, **kwargs: Any) -> Any:
        """A form POST with the session's CSRF token, as the pages send it."""
        data = dict(kwargs.pop("data", {}))
        data["csrf_token"] = self.csrf
        return self.client.post(url, data=data, follow_redirects=False, **kwargs)

    def api(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        headers["X-CSRF-Token"] = self.csrf
        return self.client.request(method, url, headers=headers, **kwargs)


@pytest.fixture
def signed_in(web: Web) -> Iterator[Admin]:
    with web.client() as client:
        response = sign_in(client)
        assert response.status_code == 303, response.text
        yield Admin(client, csrf_of(client))


@pytest.fixture
def scanner(config: Config) -> Scanner:
    return Scanner(config)


@pytest.fixture
def hold(store: Store, scanner: Scanner) -> Callable[..., str]:
    """``hold(raw, **overrides)``: scan ``raw`` with the real engine and quarantine it as the
    gateway does; returns the quarantine id."""

    def hold_message(raw: bytes | None = None, **overrides: Any) -> str:
        raw = campaign_lure() if raw is None else raw
        result = scanner.scan(RawMessage("upload", None, "eml", raw, len(raw), False))
        verdict = result.verdict
        assert verdict is not None
        summary = result.summary
        values: dict[str, Any] = {
            "raw": raw,
            "mail_from": "joe@contoso.com",
            "rcpt_to": ["joe@contoso.com"],
            "client_ip": "139.28.36.117",
            "helo": "WIN-3J8KQ2H1LDF",
            "country": "UA",
            "header_from": summary.from_addr if summary else None,
            "subject": summary.subject if summary else None,
            "message_id": summary.message_id if summary else None,
            "verdict": verdict.level.value,
            "score": verdict.score,
            "findings": verdict.findings,
            "iocs": verdict.iocs,
            "attribution": verdict.attribution.label(),
            "reason": f"verdict {verdict.level.value}",
        }
        values.update(overrides)
        return repo.quarantine_message(store, **values)

    return hold_message


def app_routes(web: Web) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    out = []
    routes = []
    for route in web.app.routes:
        # Included routers are wrapped (FastAPI 0.1xx); their routes carry full paths.
        included = getattr(route, "original_router", None)
        routes.extend(included.routes if included is not None else [route])
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        path = route.path.replace("{qid}", SAMPLE_QID).replace("{report_id}", "abcdefghijklmnop")
        for method in sorted(route.methods):
            out.append((method, path))
    return out


# -- `dsguard web` as a real process ----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class WebProcess:
    """``python -m dsguard web --config FILE`` on a free loopback port; output in ``web.log``.

    ``config_text(port)`` gives the TOML to run with (its ``[web] listen`` on that port).
    Started by :meth:`start` (waits until the sign-in page answers), stopped with SIGTERM by
    :meth:`stop`, which checks the exit status is 0.
    """

    def __init__(self, config_path: Path, workdir: Path, config_text: Callable[[int], str]) -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.config_text = config_text
        self.log_path = workdir / "web.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebProcess:
        for _attempt in range(5):
            self.port = free_port()
            self.config_path.write_text(self.config_text(self.port), encoding="utf-8")
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "dsguard", "web", "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.workdir,
                )
            if self._wait_ready():
                return self
            if "address already in use" not in self.log().lower():
                break
        raise RuntimeError(f"dsguard web did not start:\n{self.log()[-3000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.proc = None
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return True
            time.sleep(0.05)
        self.kill()
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"dsguard web did not stop:\n{self.log()[-3000:]}") from None
        self.proc = None
        assert code == 0, f"dsguard web exited {code}:\n{self.log()[-3000:]}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def dsguard_cli(
    *args: str, config: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsguard", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
