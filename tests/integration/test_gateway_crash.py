"""Kill -9 the running SMTP gateway, twice, while a client sends it 3000 messages: every message
that got a 250 to DATA reaches the downstream (a real Postfix ``smtp-sink``), none is lost.

The design contract under test: "a message acknowledged with 250 is on disk (fsync'd) before the
reply, and is delivered or quarantined after any crash or restart". Delivery is at-least-once
(RFC 5321 section 6.1 prefers a duplicate to a loss), so duplicates are allowed; the test counts
them by cause and prints the figures:

- *redelivered*: the same attempt (same ``X-Attempt``) arrived twice: the gateway died after
  the sink said 250 and before the spool entry was removed, and recover() sent it again;
- *client retries*: the client lost the reply of an attempt the gateway had already spooled
  (the 250 was never read) and sent the message again, as any SMTP client does after a 4yz or
  a dropped connection.

The client is a few threads with smtplib on persistent connections. A sequence number counts
as acknowledged only once ``sendmail`` returned, i.e. the 250 to the final "." was read. Errors
while the gateway is down or dying (refused connection, reset, 421, 451) are expected; the
client then reconnects and sends the same sequence number again (a new attempt). The gateway
is a real subprocess (``python -m dsguard gateway --config FILE``) killed with SIGKILL (its
whole process group, as the OOM killer or a crash would) and restarted on the same port.

What this can catch: a 250 sent before the message is in the spool, an entry removed before
the downstream accepted it, active/ entries not requeued at start, damaged or misaddressed
copies, a spool that does not drain. What it cannot: a missing fsync (SIGKILL keeps the
kernel's page cache; that takes a power-cut test, e.g. in a VM or with dm-log-writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.fixtures.ledger import Ledger, numbered, send_until_acknowledged
from tests.fixtures.smtpsink import SinkMessage, SmtpSink, expected_dump

from dsguard.gateway.spool import STATES

TOTAL = 3000
CLIENTS = 4
KILL_AT = (1000, 2000)  # acknowledged messages at which the gateway is SIGKILLed
SENDER = "news@example.org"
RECIPIENT = "joe@contoso.com"
CLIENT_HELO = "client.example.org"
# Seconds; these only stop a broken gateway from hanging the test run (it takes ~15 s).
DEADLINE = 90.0  # for the clients to get all their 250s
DELIVERY_WAIT = 60.0  # then for the sink to have every acknowledged message

def make_message(seq: int, attempt: int) -> bytes:
    """A small clean newsletter (so the gateway relays it, neither tags nor quarantines it),
    numbered twice: ``X-Seq`` is the message, ``X-Attempt`` the client's try at sending it.
    The line with a leading dot checks dot-stuffing on both hops (RFC 5321 section 4.5.2)."""
    body = b"".join(
        b"Issue %d, paragraph %d of the Contoso newsletter.\r\n" % (seq, i) for i in range(8)
    )
    return (
        (
            b"From: Example News <news@example.org>\r\n"
            b"To: Joe <joe@contoso.com>\r\n"
            b"Subject: Newsletter %d\r\n"
            b"Date: Thu, 27 Nov 2025 12:00:00 +0000\r\n"
            b"Message-ID: <crash-%d@example.org>\r\n"
            b"X-Seq: %d\r\n"
            b"X-Attempt: %d\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"\r\n" % (seq, seq, seq, attempt)
        )
        + body
        + b".a line that starts with a dot\r\n"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(path: Path, root: Path, port: int, sink: SmtpSink) -> None:
    path.write_text(
        f"""
[organization]
accepted_domains = ["contoso.com"]
# The sender is not in an accepted domain anyway; "off" keeps Direct Send out of this test.
reject_direct_send = "off"

[gateway]
listen = "127.0.0.1:{port}"
hostname = "gateway.example.net"
downstream = "smtp://{sink.host}:{sink.port}?timeout=10"
spool_dir = "{root / "spool"}"
dns_servers = []
relay_concurrency = 8

[gateway.retry]
first_delay = 0.2
max_delay = 1.0

[storage]
url = "sqlite:///{root / "dsguard.sqlite3"}"
""",
        encoding="utf-8",
    )


class GatewayProcess:
    """``python -m dsguard gateway`` as a child process in its own process group, with its
    stderr (JSON lines) in one log file per run."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / "gateway-0.log"

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None
        self.log_path = self.log_dir / f"gateway-{self.runs}.log"
        self.runs += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dsguard", "gateway", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own group: SIGKILL reaches any child it spawned
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return
            if self.proc.poll() is not None:
                self.proc = None
                raise AssertionError(f"gateway exited at start: {self.log_tail()}")
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"gateway not ready after {timeout} s: {self.log_tail()}")

    def _ready(self) -> bool:
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{") and b'"ready"' in line:
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("event") == "ready":
                        return True
        return False

    def kill(self) -> None:
        """SIGKILL the gateway and everything in its process group: no handler runs."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.proc = None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (clean shutdown); returns the exit status."""
        proc = self.proc
        assert proc is not None
        proc.terminate()
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"gateway ignored SIGTERM: {self.log_tail()}") from None
        self.proc = None
        return status

    def requeued_at_start(self) -> int:
        """How many interrupted deliveries (active/ entries) the last start put back in new/."""
        found = re.search(
            rb"(\d+) messages from an interrupted run requeued", self.log_path.read_bytes()
        )
        return int(found.group(1)) if found else 0

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _client(port: int, ledger: Ledger) -> None:
    send_until_acknowledged(
        port, ledger, make_message, sender=SENDER, recipient=RECIPIENT, helo=CLIENT_HELO
    )


def spool_backlog(spool_dir: Path) -> int:
    """Entries the gateway has not finished with (new, active, deferred)."""
    return sum(len(os.listdir(spool_dir / state)) for state in STATES if state != "failed")


def test_sigkill_during_load_loses_no_acknowledged_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SmtpSink(tmp_path / "sink") as sink:
        port = free_port()
        config = tmp_path / "dsguard.toml"
        write_config(config, tmp_path, port, sink)
        gateway = GatewayProcess(config, tmp_path)
        gateway.start()
        started = time.monotonic()
        ledger = Ledger(total=TOTAL)
        clients = [
            threading.Thread(target=_client, args=(port, ledger), daemon=True)
            for _ in range(CLIENTS)
        ]
        try:
            for thread in clients:
                thread.start()
            kills: list[int] = []
            requeued: list[int] = []
            for threshold in KILL_AT:
                while ledger.acked() < threshold:
                    assert time.monotonic() - started < DEADLINE, "client made no progress"
                    assert not ledger.crashed, ledger.crashed
                    assert gateway.proc is not None and gateway.proc.poll() is None, (
                        f"gateway died on its own: {gateway.log_tail()}"
                    )
                    time.sleep(0.005)
                gateway.kill()  # mid-stream: clients are inside transactions right now
                kills.append(ledger.acked())
                gateway.start()
                requeued.append(gateway.requeued_at_start())
            for thread in clients:
                thread.join(timeout=max(DEADLINE - (time.monotonic() - started), 1.0))
            assert not any(t.is_alive() for t in clients), "clients did not finish in time"
            assert not ledger.crashed, ledger.crashed
            acknowledged = dict(ledger.acknowledged)
            assert len(acknowledged) == TOTAL  # the client retried until each got a 250
            assert ledger.errors, "the kills did not interrupt the client at all"

            # Wait (bounded) until every acknowledged message reached the sink and the
            # gateway's spool is drained.
            by_seq: dict[int, list[tuple[int, SinkMessage]]] = {}
            delivery_deadline = time.monotonic() + DELIVERY_WAIT
            while True:
                # Backlog first: an entry leaves active/ only after the sink's 250, and the
                # sink closes its file before that 250. An empty spool means the sink already
                # holds everything the gateway will ever deliver.
                backlog = spool_backlog(tmp_path / "spool")
                by_seq = {}
                for message in sink.received():
                    seq, attempt = numbered(message)
                    by_seq.setdefault(seq, []).append((attempt, message))
                missing = sorted(set(acknowledged) - set(by_seq))
                if not backlog or time.monotonic() > delivery_deadline:
                    break
                time.sleep(0.1)
            assert not missing, (
                f"{len(missing)} acknowledged messages never reached the downstream, "
                f"e.g. {missing[:20]}; spool backlog {backlog}"
            )
            assert backlog == 0, f"spool not drained: {backlog} entries left"
            assert os.listdir(tmp_path / "spool" / "failed") == [], "entries failed permanently"

            # Every copy is intact and correctly addressed.
            for seq, copies in by_seq.items():
                for attempt, message in copies:
                    assert message.mail_from == SENDER and message.rcpt_to == (RECIPIENT,)
                    assert message.data.endswith(expected_dump(make_message(seq, attempt))), (
                        f"message {seq} attempt {attempt} damaged in {message.path}"
                    )
            # Only sequence numbers the client sent arrived (no phantom or mangled numbers).
            assert set(by_seq) <= set(ledger.attempts)

            # Two kills happened with messages in flight, and the gateway still shuts down
            # cleanly with everything delivered.
            assert gateway.terminate() == 0, gateway.log_tail()
        finally:
            ledger.stop.set()
            gateway.kill()
        elapsed = time.monotonic() - started

    copies = sum(len(c) for c in by_seq.values())
    # Same attempt twice: the relay sent it, died before removing it, recover() sent it again.
    redelivered = sum(
        n - 1 for c in by_seq.values() for n in Counter(attempt for attempt, _m in c).values()
    )
    # Copies of an attempt the client never saw a 250 for (it retried with a new attempt).
    unacknowledged = sum(1 for seq, c in by_seq.items() for a, _m in c if a != acknowledged[seq])
    duplicate_seqs = sorted(seq for seq, c in by_seq.items() if len(c) > 1)
    with capsys.disabled():
        print(
            f"\ngateway crash test: {TOTAL} messages, {CLIENTS} client connections, SIGKILL at "
            f"{kills[0]} and {kills[1]} acknowledged, {elapsed:.1f} s\n"
            f"  acknowledged (250 to DATA): {len(acknowledged)}; attempts "
            f"{sum(ledger.attempts.values())}; failed attempts: {dict(ledger.errors)}\n"
            f"  interrupted relay deliveries requeued at restart: {requeued}\n"
            f"  delivered: {len(by_seq)} distinct, {copies} copies; lost: 0\n"
            f"  duplicates: {copies - len(by_seq)} (relayed again after a crash: {redelivered}; "
            f"spooled but the 250 never reached the client, which retried: {unacknowledged})\n"
            f"  duplicated sequence numbers: {duplicate_seqs or 'none'}"
        )
