"""``[gateway] workers = N`` / ``dsguard gateway --workers N``: N gateway processes on the same
listeners (SO_REUSEPORT) under a supervisor, sharing one spool and one store.

Real processes, real sockets, a real Postfix smtp-sink downstream: mail from many concurrent
connections is delivered exactly once and served by every worker; SIGKILL of one worker while
mail flows loses no acknowledged message (its claimed spool entries are requeued before its
replacement starts); SIGHUP reaches every worker; SIGTERM stops them all with status 0; a
second gateway cannot take over a spool whose workers still run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.gateway import free_port
from tests.fixtures.ledger import Ledger, numbered, send_until_acknowledged
from tests.fixtures.processes import alive, json_records, wait_for_record, wait_gone
from tests.fixtures.smtpsink import SmtpSink

ROOT = Path(__file__).resolve().parents[3]
SENDER = "news@example.org"
RECIPIENT = "joe@contoso.com"
WAIT = 60.0  # bounded polls: only stops a broken gateway from hanging the run


def make_message(seq: int, attempt: int = 1) -> bytes:
    return (
        b"From: Example News <news@example.org>\r\n"
        b"To: Joe <joe@contoso.com>\r\n"
        b"Subject: Newsletter %d\r\n"
        b"Date: Thu, 27 Nov 2025 12:00:00 +0000\r\n"
        b"Message-ID: <workers-%d-%d@example.org>\r\n"
        b"X-Seq: %d\r\n"
        b"X-Attempt: %d\r\n"
        b"\r\n"
        b"Issue %d of the Contoso newsletter.\r\n" % (seq, seq, attempt, seq, attempt, seq)
    )


class Gateway:
    """``python -m dsguard gateway`` with ``workers = 2`` in the config (``extra`` args go to
    the command line), in its own session; stderr (JSON lines) in ``gateway.log``."""

    def __init__(self, root: Path, sink: SmtpSink, *extra: str, workers: int = 2) -> None:
        self.root = root
        self.spool = root / "spool"
        self.config = root / "dsguard.toml"
        self.port = free_port()
        self.config.write_text(
            f"""
[organization]
accepted_domains = ["contoso.com"]
reject_direct_send = "off"

[gateway]
listen = "127.0.0.1:{self.port}"
hostname = "gateway.example.net"
downstream = "smtp://{sink.host}:{sink.port}?timeout=10"
spool_dir = "{self.spool}"
dns_servers = []
relay_concurrency = 4
relay_poll_interval = 0.2
workers = {workers}

[gateway.retry]
first_delay = 0.2
max_delay = 1.0

[storage]
url = "sqlite:///{root / "dsguard.sqlite3"}"
""",
            encoding="utf-8",
        )
        self.log_path = root / "gateway.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dsguard", "gateway", "--config", str(self.config), *extra],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
                start_new_session=True,
            )
        ready = self.wait_for(lambda r: r.get("event") == "ready")
        assert ready["mx"] == f"127.0.0.1:{self.port}"
        self.supervisor = ready["supervisor"]
        self.pids: list[int] = ready["workers"]
        self.wait_for(lambda r: r.get("event") == "worker_ready", count=len(self.pids))

    def records(self) -> list[dict[str, Any]]:
        return json_records(self.log_path.read_text(errors="replace").splitlines())

    def wait_for(self, match: Any, count: int = 1) -> dict[str, Any]:
        return wait_for_record(self.log_path, self.proc, match, count, WAIT)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def backlog(self) -> int:
        """Entries not finished with: new/, deferred/, active/ and every worker's active/w<k>/."""
        count = 0
        for directory in (self.spool / "new", self.spool / "deferred", self.spool / "active"):
            for path in directory.rglob("*"):
                count += path.is_file()
        return count

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"gateway ignored SIGTERM:\n{self.log_tail()}") from None


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "sink") as running:
        yield running


@pytest.fixture
def gateway(tmp_path: Path, sink: SmtpSink) -> Iterator[Gateway]:
    (tmp_path / "gw").mkdir()
    gw = Gateway(tmp_path / "gw", sink)
    yield gw
    everyone = {
        pid
        for r in gw.records()
        for pid in r.get("workers", [])
        if r.get("event") in ("ready", "worker_started")
    }
    try:
        assert gw.stop() == 0, gw.log_tail()
    finally:
        # Never leave a worker behind, whatever the test did.
        assert all(wait_gone(pid) for pid in everyone), "a worker outlived the gateway"
    unstructured = [r["raw"] for r in gw.records() if "raw" in r]
    assert not unstructured, f"lines that are not JSON: {unstructured[:5]}"


def _wait_delivered(gw: Gateway, sink: SmtpSink, wanted: set[int]) -> dict[int, list[int]]:
    """seq -> attempts that reached the sink, once every wanted seq is there and the spool is
    drained (an entry leaves the spool only after the sink's 250)."""
    deadline = time.monotonic() + WAIT
    while True:
        backlog = gw.backlog()
        by_seq: dict[int, list[int]] = {}
        for message in sink.received():
            seq, attempt = numbered(message)
            by_seq.setdefault(seq, []).append(attempt)
        missing = wanted - set(by_seq)
        if (not missing and not backlog) or time.monotonic() > deadline:
            assert not missing, f"{len(missing)} never delivered, e.g. {sorted(missing)[:10]}"
            assert backlog == 0, f"spool not drained: {backlog} entries left"
            return by_seq
        time.sleep(0.1)


def test_concurrent_mail_is_delivered_once_and_served_by_every_worker(
    gateway: Gateway, sink: SmtpSink
) -> None:
    clients, per_client = 16, 10
    errors: list[BaseException] = []

    def client(first: int) -> None:
        try:
            for seq in range(first, first + per_client, 2):
                # Two messages per connection: many connections, some reused.
                with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as smtp:
                    smtp.sendmail(SENDER, [RECIPIENT], make_message(seq))
                    smtp.sendmail(SENDER, [RECIPIENT], make_message(seq + 1))
        except BaseException as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i * per_client,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors, errors
    total = clients * per_client
    by_seq = _wait_delivered(gateway, sink, set(range(total)))
    assert sorted(by_seq) == list(range(total))
    assert all(len(copies) == 1 for copies in by_seq.values()), "a message was relayed twice"

    assert gateway.stop() == 0, gateway.log_tail()
    served = {
        r["pid"]: r["sessions"] for r in gateway.records() if r.get("event") == "worker_stopped"
    }
    assert set(served) == set(gateway.pids)
    assert sum(served.values()) == total // 2
    assert all(count > 0 for count in served.values()), served


def _client(port: int, ledger: Ledger) -> None:
    send_until_acknowledged(port, ledger, make_message, sender=SENDER, recipient=RECIPIENT)


def test_sigkill_of_a_worker_loses_no_acknowledged_message(
    gateway: Gateway, sink: SmtpSink, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger(total=600)
    threads = [
        threading.Thread(target=_client, args=(gateway.port, ledger), daemon=True)
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while ledger.acked() < 200:
            assert time.monotonic() < deadline and not ledger.crashed, ledger.crashed
            time.sleep(0.005)
        victim = gateway.pids[0]
        os.kill(victim, signal.SIGKILL)  # mid-stream: sessions and deliveries in flight
        killed_at = ledger.acked()
        started = gateway.wait_for(lambda r: r.get("event") == "worker_started")
        assert victim not in started["workers"] and len(started["workers"]) == 2
        exited = gateway.wait_for(lambda r: r.get("event") == "worker_exited")
        assert exited["pid"] == victim and exited["status"] == -signal.SIGKILL
        for thread in threads:
            thread.join(WAIT)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
    finally:
        ledger.stop.set()
    assert not ledger.crashed, ledger.crashed
    assert len(ledger.acknowledged) == ledger.total
    assert alive(gateway.supervisor) and not alive(victim)

    by_seq = _wait_delivered(gateway, sink, set(ledger.acknowledged))
    copies = sum(len(c) for c in by_seq.values())
    reclaimed = sum(r["entries"] for r in gateway.records() if r.get("event") == "spool_reclaimed")
    with capsys.disabled():
        print(
            f"\ngateway workers SIGKILL test: {ledger.total} messages, 8 connections, worker "
            f"killed at {killed_at} acknowledged; failed attempts {dict(ledger.errors)}; "
            f"entries requeued from the dead worker's slot: {reclaimed}; delivered "
            f"{len(by_seq)} distinct, {copies - len(by_seq)} duplicates; lost: 0"
        )


def test_reload_reaches_every_worker(gateway: Gateway) -> None:
    gateway.proc.send_signal(signal.SIGHUP)
    gateway.wait_for(lambda r: r.get("event") == "reloaded", count=2)
    reloaded = {r["pid"] for r in gateway.records() if r.get("event") == "reloaded"}
    assert reloaded == set(gateway.pids)
    assert alive(gateway.supervisor)


def test_sigterm_stops_every_worker_and_keeps_the_spool(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as smtp:
        smtp.sendmail(SENDER, [RECIPIENT], make_message(1))
    assert gateway.stop() == 0, gateway.log_tail()
    assert all(wait_gone(pid, 10) for pid in gateway.pids)
    stopped = {r["pid"] for r in gateway.records() if r.get("event") == "worker_stopped"}
    assert stopped == set(gateway.pids)
    assert (gateway.spool / "new").is_dir()


def test_a_second_gateway_cannot_take_a_spool_in_use(gateway: Gateway, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    text = gateway.config.read_text().replace(str(gateway.port), str(free_port()))
    other.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "dsguard", "gateway", "--config", str(other)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert "in use by another gateway" in done.stderr
    assert all(alive(pid) for pid in gateway.pids)


def test_workers_option_overrides_the_config(tmp_path: Path, sink: SmtpSink) -> None:
    gw = Gateway(tmp_path, sink, "--workers", "3", workers=2)
    try:
        assert len(gw.pids) == 3
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], make_message(7))
        assert sorted(_wait_delivered(gw, sink, {7})) == [7]
    finally:
        assert gw.stop() == 0, gw.log_tail()
    assert all(wait_gone(pid) for pid in gw.pids)
