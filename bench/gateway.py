"""Benchmark the dsguard SMTP gateway against Postfix on the same machine, in the same run.

    .venv/bin/python bench/gateway.py [--duration 8] [--warmup 2] [--concurrency 1,10,50]
        [--modes transaction,session] [--scenarios reject,accept,postfix] [--profile DIR]
        [--gateway-workers N]

Must run as root (Postfix's own rule: its master runs as root, its configuration is
root-owned, its daemons drop to the ``postfix`` user). Starts, all on 127.0.0.1:

- Postfix's ``smtp-sink`` (tests/fixtures/smtpsink.py; the downstream of both servers; it
  writes each message to a dump file, so deliveries are counted and timed from the files);
- the dsguard gateway (``python -m dsguard gateway --config FILE``; config in a temp dir:
  ``reject_direct_send = "on"``, accepted domain contoso.com, no DNS, spool and SQLite store in
  the temp dir, downstream = the sink; ``max_sessions_per_ip`` raised to 200 because all load
  comes from one IP; everything else the shipped defaults, incl. ``relay_concurrency = 4``;
  ``--gateway-workers N`` runs it as N worker processes, ``--workers N``);
- a throwaway Postfix instance (``tests.fixtures.postfix.PostfixInstance`` lists the exact
  steps: own config, queue and data directories in the temp dir, smtpd on a free port,
  relaying contoso.com to the sink), stopped with ``postfix -c DIR stop`` at the end.

Scenarios, each at every concurrency and in both client modes, interleaved (reject, accept,
Postfix at one level, then the next) so that drifting background load hits all alike:

- ``dsguard reject``: anonymous ``MAIL FROM:<joe@contoso.com> RCPT TO:<joe@contoso.com>``,
  refused at RCPT with 550 5.7.68 (the P1 rule, before any data; an event is recorded);
- ``dsguard accept``: a ~5 KB newsletter from news@example.org to joe@contoso.com: accepted,
  analysed by the engine, fsync'd into the spool, event recorded, 250, relayed to the sink;
- ``postfix accept``: the same message through Postfix (smtpd, cleanup with fsync, qmgr, smtp)
  to the same sink.

Client modes: ``transaction`` = N persistent connections; the latency of one transaction is
MAIL to its final reply (550 after RCPT for a refusal, then an untimed RSET; 250 after the
data for an accepted message); a connection is replaced (untimed) every
``TRANSACTIONS_PER_CONNECTION`` transactions. ``session`` = a new connection per message,
latency from connect to the reply to QUIT. The load generator is asyncio + aiosmtplib in this
process, the same for every server (lock-step, no pipelining; neither server gets PIPELINING
from it). Each run sends for ``--warmup`` seconds (not counted) then ``--duration`` seconds
(counted: transactions that *finish* in the window).

For the accept scenarios the script then waits until the sink has every acknowledged message
(and says so if one is missing) and reports the delivery rate (acknowledged messages / time
from the first send to the last delivery: what the server sustains end to end, queue drained)
and the time from the client's 250 to the sink's dump file. Server CPU is the CPU time of the
server's whole process session (the gateway; Postfix's master and all its daemons) from the
start of the run to the last delivery, divided by the messages handled. Peak RSS of the
gateway is its ``VmHWM`` at the end.

At the end an in-process breakdown times the accept path's steps with the gateway's own
classes, one at a time. ``--profile DIR`` runs the gateway with one cProfile per thread
(``python -m cProfile`` alone sees only the event loop thread; the engine, spool and store run
in asyncio.to_thread workers), writes the merged stats to DIR/gateway.prof and prints a
summary. Profiled runs are slower: use them to see where time goes, not for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.fixtures.postfix import (  # noqa: E402
    PostfixInstance,
    PostfixUnavailableError,
    free_port,
)
from tests.fixtures.smtpsink import SmtpSink  # noqa: E402

HOST = "127.0.0.1"
CLIENT_HELO = "client.example.org"
SPOOFED = "joe@contoso.com"  # the campaign's self-addressed Direct Send
NEWS_FROM = "news@example.org"
P1_REPLY = "5.7.68 TenantInboundAttribution"
# A persistent client connection carries at most this many transactions (untimed reconnect):
# the gateway's [gateway.limits] max_commands (1000 per command per session, never reset)
# answers "421 4.7.0 MAIL sent too many times" beyond it.
TRANSACTIONS_PER_CONNECTION = 200
_MESSAGE_ID = re.compile(rb"^Message-ID: <(bench-[^>]+)>$", re.MULTILINE)


# -- the message -------------------------------------------------------------------------------


def newsletter(message_id: str) -> bytes:
    """A realistic ~5 KB newsletter (multipart/alternative, text and HTML, list headers, a
    DKIM-Signature that is not checked here because the bench runs without DNS)."""
    paragraphs = [
        "This month at Example Org: our spring catalogue is out, with new garden furniture, "
        "outdoor lighting and a range of planters made from recycled materials.",
        "Members save 15 % on orders placed before the end of the month. The discount is "
        "applied automatically at checkout when you are signed in.",
        "Our stores in Springfield and Shelbyville now open at 8 am on weekdays. Parking is "
        "free for the first two hours with any purchase.",
        "Workshop of the month: building a raised vegetable bed. Places are limited; booking "
        "is open on our website from Monday.",
        "Thank you for reading. You receive this newsletter because you subscribed on "
        "example.org. You can change your preferences or unsubscribe at any time.",
    ]
    text = "\r\n\r\n".join(paragraphs * 3)
    html = "".join(f"<p>{p}</p>\r\n" for p in paragraphs * 3)
    head = (
        "Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n"
        "\tby mx.example.org with ESMTPS id 4QzL1x2Y3z; Thu, 27 Nov 2025 11:59:58 +0000\r\n"
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=news;\r\n"
        "\th=from:to:subject:date:message-id:list-unsubscribe;\r\n"
        "\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        "\tb=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZVoG4ZHRNiYzR\r\n"
        "From: Example Org News <news@example.org>\r\n"
        "To: Joe <joe@contoso.com>\r\n"
        "Subject: Example Org newsletter: the spring catalogue is out\r\n"
        "Date: Thu, 27 Nov 2025 12:00:00 +0000\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "List-Unsubscribe: <https://example.org/unsubscribe?u=4711>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1"\r\n'
        "\r\n"
    )
    body = (
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{text}\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<html><body>\r\n{html}"
        '<p><a href="https://example.org/catalogue">See the catalogue</a></p>\r\n'
        "</body></html>\r\n"
        "--b1--\r\n"
    )
    return (head + body).encode()


# ``python -m cProfile`` sees the main thread only (the event loop: the SMTP server, the handler,
# the relay's aiosmtplib); the engine, the spool and the store run in worker threads
# (asyncio.to_thread). This runs ``dsguard`` with one cProfile per thread and merges them.
PROFILED_GATEWAY = r"""
import cProfile, pstats, runpy, sys, threading
out = sys.argv.pop(1)
profiles = []
def start_in_thread(*_):
    sys.setprofile(None)
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.enable()
threading.setprofile(start_in_thread)
main = cProfile.Profile()
profiles.append(main)
sys.argv[0] = "dsguard"
status = 0
main.enable()
try:
    runpy.run_module("dsguard", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    status = exc.code
finally:
    main.disable()
    merged = None
    for profile in profiles:
        profile.create_stats()
        if merged is None:
            merged = pstats.Stats(profile)
        else:
            merged.add(profile)
    merged.dump_stats(out)
sys.exit(status)
"""


# -- processes ---------------------------------------------------------------------------------


class Gateway:
    """The dsguard gateway as a subprocess (stderr, one JSON line per decision, to a file)."""

    def __init__(
        self,
        root: Path,
        sink: SmtpSink,
        profile: Path | None,
        extra: tuple[str, ...] = (),
        workers: int = 1,
    ) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.port = free_port()
        self.spool = root / "spool"
        self.config = root / "dsguard.toml"
        self.config.write_text(
            f"""
[organization]
accepted_domains = ["contoso.com"]
reject_direct_send = "on"

[gateway]
listen = "{HOST}:{self.port}"
hostname = "gateway.example.net"
downstream = "smtp://{sink.host}:{sink.port}"
spool_dir = "{self.spool}"
dns_servers = []
{chr(10).join(extra)}

[gateway.limits]
# All the load comes from 127.0.0.1; the default (20 per IP) would refuse concurrency 50.
max_sessions_per_ip = 200

[storage]
url = "sqlite:///{root / "dsguard.sqlite3"}"
""",
            encoding="utf-8",
        )
        self.log = root / "gateway.log"
        command = [sys.executable]
        if profile is not None:
            command += ["-c", PROFILED_GATEWAY, str(profile / "gateway.prof")]
        else:
            command += ["-m", "dsguard"]
        command += ["gateway", "--config", str(self.config)]
        if workers > 1:  # the default run stays the plain single-process command
            command += ["--workers", str(workers)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its session id finds it and any child for SessionCpu
            )
        self.sid = self.proc.pid
        deadline = time.monotonic() + 60
        while b'"event": "ready"' not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"gateway did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        # With workers, the supervisor's ready line names them (the peak RSS adds them up).
        self.pids = [self.proc.pid]
        for line in self.log.read_bytes().splitlines():
            if b'"event": "ready"' in line:
                with contextlib.suppress(ValueError):
                    self.pids += json.loads(line).get("workers", [])

    def failed(self) -> int:
        return len(os.listdir(self.spool / "failed"))

    def peak_rss(self) -> int:
        """Peak resident set size (VmHWM) of the gateway process (with workers: the sum over
        the supervisor and the workers), bytes."""
        return sum(_status_kb(pid, "VmHWM") for pid in self.pids) * 1024

    def decisions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.log.read_bytes().splitlines():
            if b'"decision"' in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    key = f"{record.get('decision')}/{record.get('verdict', '-')}"
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class SessionCpu:
    """CPU seconds used by every process of one session (a server and all its children),
    sampled every 0.2 s so that short-lived children (Postfix's smtpd, cleanup and smtp
    processes come and go) are counted up to their last sample."""

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self._tick = os.sysconf("SC_CLK_TCK")
        self._baseline = self._scan()
        self._latest = dict(self._baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _scan(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.sid:
                found[int(entry)] = (int(fields[11]) + int(fields[12])) / self._tick
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._latest.update(self._scan())

    def stop(self) -> float:
        """Stop sampling; CPU seconds used since the start."""
        self._stop.set()
        self._thread.join()
        self._latest.update(self._scan())
        return sum(cpu - self._baseline.get(pid, 0.0) for pid, cpu in self._latest.items())


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


# -- load generator ----------------------------------------------------------------------------


@dataclass
class LoadResult:
    label: str
    concurrency: int
    mode: str
    window: float
    latencies: list[float] = field(default_factory=list)  # seconds, counted window only
    acked: dict[str, float] = field(default_factory=dict)  # message id -> wall time of 250
    first_send: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    unexpected: int = 0
    completed: int = 0  # every expected final reply, warm-up included
    client_cpu: float = 0.0
    server_cpu_per_message: float = 0.0  # seconds, until the last delivery for accept runs
    machine_busy: float = 0.0
    delivered: int = 0
    delivery_rate: float | None = None
    to_delivery: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.window

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))]


async def _open(port: int) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=port, local_hostname=CLIENT_HELO, timeout=60, start_tls=False
    )
    await smtp.connect()
    if smtp.last_ehlo_response is None:
        await smtp.ehlo()
    return smtp


async def _transaction(
    smtp: aiosmtplib.SMTP, kind: str, message_id: str, message: bytes | None
) -> bool:
    """One MAIL..final reply; True if the server answered as expected."""
    if kind == "reject":
        await smtp.mail(SPOOFED)
        try:
            await smtp.rcpt(SPOOFED)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code == 550 and P1_REPLY in exc.message
        return False
    assert message is not None
    await smtp.mail(NEWS_FROM)
    await smtp.rcpt(SPOOFED)
    reply = await smtp.data(message)
    return reply.code == 250


async def _client(
    result: LoadResult, port: int, kind: str, number: int, counted_from: float, stop_at: float
) -> None:
    """One simulated client: send until ``stop_at``; count what finishes after ``counted_from``.

    ``transaction`` mode: one persistent connection, timed from MAIL to the final reply (the
    RSET after a refusal is sent but not timed). ``session`` mode: timed from connect to the
    reply to QUIT."""
    loop = asyncio.get_running_loop()
    smtp: aiosmtplib.SMTP | None = None
    n = 0
    on_connection = 0
    tag = f"{result.label.replace(' ', '-')}-{result.mode}-c{result.concurrency}"
    try:
        while loop.time() < stop_at:
            n += 1
            message_id = f"bench-{tag}-{number}-{n}@example.org"
            message = newsletter(message_id) if kind == "accept" else None
            try:
                if result.mode == "transaction" and on_connection >= TRANSACTIONS_PER_CONNECTION:
                    if smtp is not None:
                        await smtp.quit()
                    smtp = None
                if result.mode == "transaction" and smtp is None:
                    smtp = await _open(port)
                    on_connection = 0
                on_connection += 1
                t0 = loop.time()
                if result.mode == "session":
                    smtp = await _open(port)
                assert smtp is not None
                ok = await _transaction(smtp, kind, message_id, message)
                if ok and kind == "accept":
                    result.acked[message_id] = time.time()
                if result.mode == "session":
                    await smtp.quit()
                    smtp = None
                t1 = loop.time()
                if result.mode == "transaction" and kind == "reject":
                    await smtp.rset()  # as smtplib does when every recipient was refused
            except (aiosmtplib.SMTPException, OSError) as exc:
                name = type(exc).__name__
                if isinstance(exc, aiosmtplib.SMTPResponseException):
                    name += f" {exc.code} {exc.message[:70]}"
                result.errors[name] = result.errors.get(name, 0) + 1
                if smtp is not None:
                    smtp.close()
                smtp = None
                await asyncio.sleep(0.05)
                continue
            if not ok:
                result.unexpected += 1
                continue
            result.completed += 1
            if counted_from <= t1 <= stop_at:
                result.latencies.append(t1 - t0)
    finally:
        if smtp is not None:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()


async def run_load(
    label: str, kind: str, port: int, concurrency: int, mode: str, warmup: float, duration: float
) -> LoadResult:
    result = LoadResult(label, concurrency, mode, duration)
    loop = asyncio.get_running_loop()
    start = loop.time()
    result.first_send = time.time()
    counted_from = start + warmup
    stop_at = counted_from + duration
    await asyncio.gather(
        *(_client(result, port, kind, i, counted_from, stop_at) for i in range(concurrency))
    )
    return result


def measure(
    label: str,
    kind: str,
    server: Gateway | PostfixInstance,
    concurrency: int,
    mode: str,
    args: argparse.Namespace,
    sink: SmtpSink,
) -> LoadResult:
    cpu0 = os.times()
    busy0, total0 = machine_busy()
    server_cpu = SessionCpu(server.sid)
    result = asyncio.run(
        run_load(label, kind, server.port, concurrency, mode, args.warmup, args.duration)
    )
    cpu1 = os.times()
    busy1, total1 = machine_busy()
    elapsed = args.warmup + args.duration
    result.client_cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / elapsed
    result.machine_busy = (busy1 - busy0) / max(total1 - total0, 1e-9)
    if kind == "accept":
        wait_for_delivery(result, sink)  # the relaying is part of the server's work
    result.server_cpu_per_message = server_cpu.stop() / max(result.completed, 1)
    return result


def wait_for_delivery(result: LoadResult, sink: SmtpSink, timeout: float = 300.0) -> None:
    """Wait until the sink holds every acknowledged message; fill in delivery figures.

    Delivery times come from the dump files' mtimes (the sink closes a file before it answers
    250), so how often this polls does not change them. It polls cheaply (a directory count)
    and parses the files only when enough have arrived: parsing thousands of 5 KB files on
    every poll would take CPU from the server still relaying on this 2-core machine."""
    deadline = time.monotonic() + timeout
    arrived: dict[str, float] = {}
    parsed: tuple[int, float] = (-1, 0.0)  # file count and time of the last parse
    while True:
        count = len(os.listdir(sink.dump_dir))
        # Parse again when files arrived, or after a while (a file still being written when
        # it was counted is skipped by received() until it is complete).
        if count >= len(result.acked) and (
            count != parsed[0] or time.monotonic() - parsed[1] > 0.5
        ):
            parsed = (count, time.monotonic())
            for message in sink.received():
                found = _MESSAGE_ID.search(message.data)
                if found is not None:
                    arrived.setdefault(found.group(1).decode(), message.path.stat().st_mtime)
        missing = set(result.acked) - set(arrived)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    result.delivered = len(set(result.acked) & set(arrived))
    if missing:
        print(f"    !! {len(missing)} acknowledged messages not delivered after {timeout:.0f} s")
        return
    if arrived:
        last = max(arrived[m] for m in result.acked)
        result.delivery_rate = len(result.acked) / max(last - result.first_send, 1e-9)
        result.to_delivery = sorted(max(arrived[m] - t, 0.0) for m, t in result.acked.items())
    sink.clear()


# -- in-process breakdown ------------------------------------------------------------------------


def _record_event(store: object) -> None:
    from dsguard.store import repository as repo

    repo.record_event(
        store,  # type: ignore[arg-type]
        front_door="gateway",
        client_ip=HOST,
        helo=CLIENT_HELO,
        country=None,
        mail_from=NEWS_FROM,
        rcpt_to=(SPOOFED,),
        header_from=NEWS_FROM,
        attribution="anonymous",
        p1="not_applicable",
        p2="not_applicable",
        mode="on",
        decision="accepted",
        verdict="clean",
        score=0.0,
        finding_ids=(),
        message_id="bench@example.org",
        subject="bench",
        queue_id=None,
    )


def breakdown(root: Path, count: int = 300) -> list[tuple[str, str]]:
    """What the accept path's steps cost, measured in this process with the gateway's own
    classes (nothing else running in this process)."""
    from datetime import UTC, datetime

    from dsguard.auth.summary import AuthSummary
    from dsguard.config import load_config
    from dsguard.engine import Engine
    from dsguard.gateway.spool import Spool
    from dsguard.mail.message import ParsedMessage
    from dsguard.model import Envelope, EnvelopeOrigin
    from dsguard.store.db import open_store

    cfg = load_config(None, {"organization": {"accepted_domains": ["contoso.com"]}})
    engine = Engine(cfg)
    spool = Spool(root / "spool")
    store = open_store(f"sqlite:///{root / 'events.sqlite3'}")
    raw = newsletter("bench-breakdown@example.org")
    env = Envelope(
        origin=EnvelopeOrigin.SMTP,
        client_ip=HOST,
        helo=CLIENT_HELO,
        mail_from=NEWS_FROM,
        rcpt_to=(SPOOFED,),
        receiver="gateway.example.net",
    )
    out: list[tuple[str, str]] = []

    def mean_ms(fn: Callable[[], object], n: int = count) -> str:
        fn()  # warm
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return f"{(time.perf_counter() - t0) / n * 1000:.2f} ms"

    out.append(
        (
            "engine.evaluate (parse, checks, score; no DNS)",
            mean_ms(
                lambda: engine.evaluate(
                    ParsedMessage(raw, cfg.limits),
                    env,
                    AuthSummary(source="none"),
                    accepted=engine.accepted,
                )
            ),
        )
    )
    out.append(
        (
            "spool.enqueue (write + fsync file, rename, fsync dir)",
            mean_ms(lambda: spool.enqueue(raw, NEWS_FROM, [SPOOFED], {})),
        )
    )
    out.append(
        (
            "store.record_event, 1 thread (SQLite WAL, synchronous=FULL)",
            mean_ms(lambda: _record_event(store)),
        )
    )
    # The gateway calls record_event through asyncio.to_thread: with many sessions, up to the
    # default executor's min(32, cores + 4) = 6 threads write at once.
    latencies: list[float] = []

    def writer() -> None:
        for _ in range(count // 6):
            t0 = time.perf_counter()
            _record_event(store)
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    out.append(
        (
            "store.record_event, 6 threads at once",
            f"{len(latencies) / elapsed:.0f} events/s; per call p50 "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
            f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms",
        )
    )
    # claim_due with a backlog (downstream slower than intake, or back from an outage).
    for _ in range(5000 - len(spool.list("new"))):
        spool.enqueue(b"Subject: backlog\r\n\r\nx\r\n", NEWS_FROM, [SPOOFED], {})
    now = datetime.now(UTC)
    claimed: list[object] = []
    out.append(
        (
            "spool.claim_due(limit=1) with 5000 entries waiting",
            mean_ms(lambda: claimed.extend(spool.claim_due(now, 1)), 20),
        )
    )
    entries = spool.claim_due(now, 10**6)
    it = iter(entries)
    out.append(("spool.done (unlink, fsync dir)", mean_ms(lambda: spool.done(next(it)))))
    store.close()
    engine.close()
    return out


# -- profile summary ---------------------------------------------------------------------------

# Built-ins where a thread waits rather than computes (idle event loop, idle worker threads).
_IDLE = ("poll' of 'select.epoll", "acquire' of '_thread.lock", "method 'get' of '_queue")
_GROUPS = (
    ("fsync (spool, SQLite WAL)", ("posix.fsync", "fsync")),
    ("SQLite / SQLAlchemy (store)", ("sqlalchemy", "sqlite3")),
    ("SMTP server protocol (smtpserver, smtpdata)", ("gateway/smtpserver", "gateway/smtpdata")),
    ("aiosmtplib (relay client)", ("aiosmtplib",)),
    (
        "dsguard engine + checks + parsing",
        (
            "dsguard/engine",
            "dsguard/checks",
            "dsguard/mail",
            "dsguard/policy",
            "dsguard/intel",
            "dsguard/auth",
        ),
    ),
    ("dsguard gateway (handler, spool, relay)", ("dsguard/gateway",)),
    ("email package (stdlib)", ("/email/",)),
    ("logging + json", ("/logging/", "/json/")),
    ("asyncio + selectors + sockets", ("/asyncio/", "selectors", "socket", "'_socket")),
    ("threads (to_thread, executor)", ("/concurrent/", "threading")),
)


def summarise_profile(path: Path, top: int = 20) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        where = f"{filename}:{line}({name})"
        if any(marker in where for marker in _IDLE):
            continue
        rows.append((tottime, cumtime, calls, where))
    busy = sum(r[0] for r in rows)
    groups: dict[str, float] = {}
    for tottime, _cum, _calls, where in rows:
        group = next((g for g, marks in _GROUPS if any(m in where for m in marks)), "other")
        groups[group] = groups.get(group, 0.0) + tottime
    print(
        f"  non-idle time in all threads: {busy:.1f} s (fsync and other blocking calls "
        "count as wall time in their worker thread)"
    )
    for group, seconds in sorted(groups.items(), key=lambda g: -g[1]):
        print(f"    {group:42} {seconds:7.1f} s  {seconds / busy * 100:5.1f} %")
    print(f"  top {top} functions by own time:")
    for tottime, cumtime, calls, where in sorted(rows, reverse=True)[:top]:
        short = where.replace(str(ROOT) + "/", "").replace(sys.prefix, "<venv>")
        print(f"    {tottime:7.2f} s own {cumtime:7.2f} s cum {calls:9d} calls  {short[-110:]}")


# -- report --------------------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=8.0, help="counted seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds per run")
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--modes", default="transaction,session")
    ap.add_argument(
        "--scenarios",
        default="reject,accept,postfix",
        help="subset of reject (dsguard P1), accept (dsguard relay), postfix",
    )
    ap.add_argument("--profile", type=Path, help="cProfile the gateway into DIR/gateway.prof")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, spool)")
    ap.add_argument(
        "--gateway-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra [gateway] line for experiments, TOML (e.g. relay_concurrency=8); "
        "the published figures use the shipped defaults",
    )
    ap.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        metavar="N",
        help="run the gateway with N worker processes (dsguard gateway --workers N)",
    )
    args = ap.parse_args()
    if args.gateway_workers < 1:
        ap.error("--gateway-workers must be at least 1")
    if args.profile and args.gateway_workers > 1:
        # The workers are forked and end with os._exit: their profiles would never be written.
        ap.error("--profile profiles a single-process gateway; drop --gateway-workers")
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    scenarios = args.scenarios.split(",")

    tmp = Path(tempfile.mkdtemp(prefix="dsguard-bench-"))
    tmp.chmod(0o755)  # the postfix user must reach its queue and data directories
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    sink = SmtpSink(tmp / "sink")
    sink.start()
    gateway: Gateway | None = None
    postfix: PostfixInstance | None = None
    results: list[LoadResult] = []
    try:
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        gateway = Gateway(
            tmp / "gateway",
            sink,
            args.profile,
            tuple(args.gateway_option),
            workers=args.gateway_workers,
        )
        try:
            postfix = PostfixInstance(tmp / "postfix", sink.port).start()
        except PostfixUnavailableError as exc:
            raise SystemExit(f"the Postfix baseline: {exc}") from None
        print(
            f"Postfix {postfix.version} on :{postfix.port}, dsguard gateway on :{gateway.port} "
            f"({args.gateway_workers} process{'es' if args.gateway_workers > 1 else ''}), "
            f"smtp-sink on :{sink.port}; temp dir {tmp}"
        )
        print(f"runs: {args.warmup:g} s warm-up + {args.duration:g} s counted each\n")
        for mode in modes:
            for c in levels:
                for scenario, label, kind, server in (
                    ("reject", "dsguard reject", "reject", gateway),
                    ("accept", "dsguard accept", "accept", gateway),
                    ("postfix", "postfix accept", "accept", postfix),
                ):
                    if scenario not in scenarios:
                        continue
                    r = measure(label, kind, server, c, mode, args, sink)
                    results.append(r)
                    print(
                        f"  {label:15} {mode:11} c={c:<3} {r.rate:8.1f} msg/s  p50 "
                        f"{fmt_ms(r.pct(0.5))} ms  p99 {fmt_ms(r.pct(0.99))} ms"
                        + (f"  delivered {r.delivered}/{len(r.acked)}" if kind == "accept" else "")
                        + (f"  errors {r.errors}" if r.errors else "")
                        + (f"  unexpected replies {r.unexpected}" if r.unexpected else ""),
                        flush=True,
                    )
        peak = gateway.peak_rss()
        decisions = gateway.decisions()
        failed = gateway.failed()
    finally:
        if gateway is not None:
            gateway.stop()
        if postfix is not None:
            postfix.stop()
        sink.stop()

    print_report(results, levels, modes)
    print(
        f"\ngateway peak RSS (VmHWM): {peak / 2**20:.0f} MiB; decisions logged: {decisions}; "
        f"spool failed/: {failed}"
    )
    print("\nwhere the accept path's time goes (in-process, one message at a time, mean):")
    for name, figure in breakdown(tmp / "breakdown"):
        print(f"  {name:60} {figure}")
    if args.profile:
        print(f"\ncProfile of the gateway, all threads ({args.profile / 'gateway.prof'}):")
        summarise_profile(args.profile / "gateway.prof")
    if args.keep:
        print(f"\nkept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def print_report(results: list[LoadResult], levels: list[int], modes: list[str]) -> None:
    by_key = {(r.label, r.mode, r.concurrency): r for r in results}
    print(
        "\n| mode | scenario | c | msgs/s | p50 ms | p99 ms | delivered msgs/s | "
        "250 to sink p50 / p99 ms | server CPU ms/msg | client CPU | machine busy |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for mode in modes:
        for c in levels:
            for label in ("dsguard reject", "dsguard accept", "postfix accept"):
                r = by_key.get((label, mode, c))
                if r is None:
                    continue
                delivery = f"{r.delivery_rate:.1f}" if r.delivery_rate else "-"
                to_sink = (
                    f"{_pct(r.to_delivery, 0.5) * 1000:.0f} / {_pct(r.to_delivery, 0.99) * 1000:.0f}"
                    if r.to_delivery
                    else "-"
                )
                print(
                    f"| {mode} | {label} | {c} | {r.rate:.1f} | {r.pct(0.5) * 1000:.1f} | "
                    f"{r.pct(0.99) * 1000:.1f} | {delivery} | {to_sink} | "
                    f"{r.server_cpu_per_message * 1000:.2f} | {r.client_cpu * 100:.0f} % | "
                    f"{r.machine_busy * 100:.0f} % |"
                )
    print("\nratios, dsguard / Postfix (same mode, same concurrency; > 1 means dsguard is better):")
    for mode in modes:
        for c in levels:
            rej = by_key.get(("dsguard reject", mode, c))
            acc = by_key.get(("dsguard accept", mode, c))
            pfx = by_key.get(("postfix accept", mode, c))
            if not (rej and acc and pfx) or not pfx.rate:
                continue
            line = (
                f"  {mode:11} c={c:<3} reject vs Postfix accept: {rej.rate / pfx.rate:5.2f}x msgs/s, "
                f"p50 {pfx.pct(0.5) / rej.pct(0.5):5.2f}x | accept vs Postfix accept: "
                f"{acc.rate / pfx.rate:5.2f}x msgs/s, p50 {pfx.pct(0.5) / acc.pct(0.5):5.2f}x"
            )
            if acc.delivery_rate and pfx.delivery_rate:
                line += f", delivered {acc.delivery_rate / pfx.delivery_rate:5.2f}x"
            print(line)


if __name__ == "__main__":
    main()
