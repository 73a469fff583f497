"""``dsguard policyd`` speaking Postfix's policy delegation protocol over a real socket.

The requests are what Postfix's smtpd sends (SMTPD_POLICY_README: name=value lines, an empty
line ends a request; many requests per connection). A real Postfix in front of it is the
subject of the Postfix integration tests; here the protocol and the decisions are checked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPLY = "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources"

CONFIG = """
[organization]
accepted_domains = ["contoso.com"]
reject_direct_send = "{mode}"
[[connectors]]
name = "printers"
sender_ip_ranges = ["192.0.2.10/32"]
sender_domains = ["contoso.com"]
[[connectors]]
name = "scanner-cert"
tls_certificate_name = "scanner.contoso.com"
sender_domains = ["contoso.com"]
[storage]
url = "sqlite:///{db}"
"""


def request(**attrs: str) -> bytes:
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "helo_name": "WIN-3J8KQ2H1LDF",
        "queue_id": "",
        "instance": "123.456.7",
        "size": "0",
        "client_address": "139.28.36.117",
        "client_name": "unknown",
        "sasl_username": "",
        "ccert_subject": "",
        "sender": "joe@contoso.com",
        "recipient": "joe@contoso.com",
    }
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items()).encode() + b"\n"


class Policyd:
    def __init__(self, tmp: Path, mode: str) -> None:
        self.db = tmp / "events.sqlite3"
        self.config = tmp / "dsguard.toml"
        self.config.write_text(CONFIG.format(mode=mode, db=self.db))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dsguard",
                "policyd",
                "--config",
                str(self.config),
                "--listen",
                "127.0.0.1:0",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while True:
            line = self.proc.stderr.readline()
            assert line, "policyd exited before it was ready"
            if '"ready"' in line:
                host, port = json.loads(line)["policyd"].rsplit(":", 1)
                self.address = (host, int(port))
                break
            assert time.monotonic() < deadline

    def ask(self, *requests: bytes) -> list[str]:
        with socket.create_connection(self.address, timeout=10) as sock:
            answers = []
            for req in requests:
                sock.sendall(req)
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = sock.recv(4096)
                    assert chunk, "connection closed"
                    buf += chunk
                answers.append(buf.decode().strip())
            return answers

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        assert self.proc.stderr is not None
        self.log = self.proc.stderr.read()
        self.proc.stderr.close()
        assert code == 0, self.log


@pytest.fixture
def policyd_on(tmp_path: Path) -> Iterator[Policyd]:
    server = Policyd(tmp_path, "on")
    yield server
    server.stop()


def test_the_campaign_is_refused_with_microsofts_text(policyd_on: Policyd) -> None:
    assert policyd_on.ask(request()) == [f"action={REPLY}"]


def test_attributed_or_foreign_senders_get_dunno_on_one_connection(policyd_on: Policyd) -> None:
    answers = policyd_on.ask(
        request(client_address="192.0.2.10"),  # connector by IP
        request(sasl_username="joe@contoso.com"),  # SMTP AUTH
        request(ccert_subject="scanner.contoso.com"),  # verified client cert
        request(sender="news@example.org"),  # not our domain
        request(),  # still refused after those
    )
    assert answers == ["action=DUNNO"] * 4 + [f"action={REPLY}"]


def test_a_connector_does_not_exempt_domains_it_may_not_use(tmp_path: Path) -> None:
    server = Policyd(tmp_path, "on")
    try:
        server.config.write_text(
            server.config.read_text().replace(
                'accepted_domains = ["contoso.com"]',
                'accepted_domains = ["contoso.com", "fabrikam.com"]',
            )
        )
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while server.ask(request(client_address="192.0.2.10", sender="x@fabrikam.com")) != [
            f"action={REPLY}"
        ]:
            assert time.monotonic() < deadline, "reload not applied"
            time.sleep(0.1)
    finally:
        server.stop()


def test_malformed_requests_tempfail_and_the_connection_survives(policyd_on: Policyd) -> None:
    answers = policyd_on.ask(b"this is not a policy request\n\n", request())
    assert answers[0].startswith("action=DEFER_IF_PERMIT")
    assert answers[1] == f"action={REPLY}"


def test_audit_mode_answers_dunno_and_records_the_event(tmp_path: Path) -> None:
    server = Policyd(tmp_path, "audit")
    try:
        assert server.ask(request()) == ["action=DUNNO"]
    finally:
        server.stop()
    out = subprocess.run(
        [sys.executable, "-m", "dsguard", "events", "--json", "--config", str(server.config)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1
    assert rows[0]["front_door"] == "policyd"
    assert rows[0]["decision"] == "audited"
    assert rows[0]["client_ip"] == "139.28.36.117"
