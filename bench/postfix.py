"""Benchmark what dsguard's policy server and milter cost a Postfix, on one machine, in one run.

    .venv/bin/python bench/postfix.py [--duration 8] [--warmup 2] [--concurrency 1,10,50]
        [--modes transaction,session] [--scenarios postfix,policyd,milter,both,nullmilter]
        [--no-breakdown]

Must run as root (Postfix's master runs as root). Starts, all on 127.0.0.1:

- Postfix's ``smtp-sink`` (tests/fixtures/smtpsink.py), the next hop of every Postfix;
- ``nsd`` (tests/fixtures/dns.py, response rate limiting off) with example.org (SPF ``ip4:127.0.0.0/8 -all``) and
  contoso.com (SPF, DMARC p=reject): the milter does live SPF/DKIM/DMARC, as in production;
- ``dsguard policyd`` and ``dsguard milter`` (tests/fixtures/postfix.py ``DsguardDaemon``;
  config: ``reject_direct_send = "on"``, accepted domain contoso.com, ``[gateway]
  dns_servers`` = the nsd, events to SQLite in the temp dir; everything else the shipped
  defaults);
- a null milter (``NullMilter``, a process of its own) when a scenario uses it: it negotiates
  exactly what ``dsguard milter`` negotiates (actions, protocol steps, macro lists) and
  answers every event at once (CONTINUE, ACCEPT at the end of message), so that Postfix has
  the same conversation at the least cost any milter could have;
- one throwaway Postfix instance per scenario (``tests.fixtures.postfix.PostfixInstance``
  lists every step), identical except for the README's "Protect a Postfix server" main.cf
  block: ``postfix`` = the block without the policy service and the milter (the baseline:
  ``permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination``), ``policyd`` =
  with ``check_policy_service``, ``milter`` = with ``smtpd_milters`` (and
  ``milter_default_action = tempfail``), ``both`` = the whole block, ``nullmilter`` = the
  milter lines pointing at the null milter (the ceiling: what the milter protocol alone costs
  this Postfix), ``nullhdrs`` (not run by default) = the null milter also inserting three
  header fields the size of dsguard's (what the header edits cost Postfix's cleanup),
  ``nullmin`` (not run by default) = a null milter that negotiates away every event and reply
  but the content and the end of message (the least conversation any content milter has). The
  "milter/policyd CPU" column is the CPU of the daemons a scenario uses (for ``nullmilter``:
  the null milter's). The load comes from
  127.0.0.1, which is outside ``mynetworks`` (else ``permit_mynetworks`` would skip the policy
  server); anvil's per-client connection limit is lifted (all load comes from one IP).

The load: the ~5 KB newsletter of bench/gateway.py from news@example.org to joe@ and
ann@contoso.com (two RCPTs per message, each RCPT timed on its own: the per-recipient latency
the policy server adds), with asyncio + aiosmtplib in this process. ``transaction`` mode: N
persistent connections (replaced every 200 messages), latency = MAIL to the 250 after the
data; ``session`` mode: a new connection per message (what an MX mostly sees; Postfix opens a
milter connection per SMTP session), latency = connect to the reply to QUIT. Each run sends for
``--warmup`` seconds (not counted), then ``--duration`` seconds (counted), then waits until the
sink has every acknowledged message: "delivered msgs/s" is what the whole chain sustains. The
scenarios are interleaved per level, so drifting background load hits all alike.

Then, to see where the time goes: the policy server alone (one connection, sequential
requests, as Postfix's smtpd sends them), the milter alone (Postfix's packets for the newsletter
replayed from this process at 10 connections: its CPU per message without Postfix competing for
the cores), and in this process the milter's end-of-message work
(``policy.judge.judge_message`` on the newsletter: without DNS, with DNS and no cache, with
DNS answered from the resolver's TTL cache as in the milter) and the event row it
stores per message; the rest of the milter's CPU per message (the "milter/policyd CPU"
column) is the protocol, asyncio and the hand-offs to worker threads. ``--no-breakdown``
skips this part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.gateway import (  # noqa: E402
    CLIENT_HELO,
    NEWS_FROM,
    TRANSACTIONS_PER_CONNECTION,
    LoadResult,
    SessionCpu,
    _record_event,
    machine_busy,
    newsletter,
    wait_for_delivery,
)
from tests.fixtures.dns import DnsServer, txt  # noqa: E402
from tests.fixtures.gateway import to_toml  # noqa: E402
from tests.fixtures.postfix import (  # noqa: E402
    README_MILTER,
    README_POLICYD,
    DsguardDaemon,
    PostfixInstance,
    PostfixUnavailableError,
    readme_main_cf,
)
from tests.fixtures.smtpsink import SmtpSink  # noqa: E402

HOST = "127.0.0.1"
RCPTS = ("joe@contoso.com", "ann@contoso.com")
SCENARIOS: dict[str, tuple[bool, str | None]] = {  # name -> (policy server, which milter)
    "postfix": (False, None),
    "policyd": (True, None),
    "milter": (False, "dsguard"),
    "both": (True, "dsguard"),
    # The ceiling: the same Postfix and main.cf block, the milter replaced by one that
    # negotiates what dsguard's does and answers at once (NullMilter).
    "nullmilter": (False, "null"),
    # ... and that also inserts header fields like the ones dsguard adds to the newsletter:
    # what the header edits alone cost Postfix's cleanup.
    "nullhdrs": (False, "nullhdrs"),
    # ... or that asks for the least any content milter can: no CONNECT/HELO/MAIL/RCPT/DATA/
    # EOH events, no reply but at the end of message (NULL_MIN_PROTOCOL).
    "nullmin": (False, "nullmin"),
}
DEFAULT_SCENARIOS = ("postfix", "policyd", "milter", "both", "nullmilter")
POLICY_REQUEST = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    "client_address={ip}\nclient_name=unknown\nhelo_name=mail.example.org\n"
    "sender={sender}\nrecipient=joe@contoso.com\nsasl_username=\nccert_subject=\n"
    "queue_id=\nsize=5300\ninstance=1.2.3\n\n"
)


class MilterDaemon(DsguardDaemon):
    """``dsguard milter`` with ``--workers N`` (the fixture starts one process)."""

    def __init__(
        self, config: Path, workdir: Path, workers: int, unix_path: Path | None = None
    ) -> None:
        super().__init__("milter", config, workdir, unix_path=unix_path)
        self.workers = workers
        self.pids: list[int] = []

    def start(self) -> MilterDaemon:
        if self.workers == 1:
            super().start()
            return self
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dsguard", "milter", "--config", str(self.config),
                 "--listen", f"{HOST}:0", "--workers", str(self.workers)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            ready = [r for r in self.records() if r.get("event") == "ready"]
            started = [r for r in self.records() if r.get("event") == "worker_ready"]
            if ready and len(started) >= self.workers:
                self.port = int(ready[-1]["milter"].rsplit(":", 1)[1])
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"dsguard milter did not start:\n{self.log_text()}")
            time.sleep(0.05)


class BenchDnsServer(DnsServer):
    """The test fixture's nsd with response rate limiting off. Debian builds nsd with
    ``--enable-ratelimit`` (default ``rrl-ratelimit: 200`` identical answers per second per
    client /24): under this load it drops or truncates answers, and the milter waits for DNS
    timeouts -- a property of the stub setup, not of a real resolver."""

    def _write_config(self) -> None:
        super()._write_config()
        path = self.workdir / "nsd.conf"
        path.write_text(
            path.read_text().replace("server:\n", "server:\n    rrl-ratelimit: 0\n", 1)
        )


# Header fields the size of those dsguard inserts for the newsletter (Authentication-Results,
# X-Dsguard-Verdict, X-Dsguard-Findings), for the "nullhdrs" scenario.
NULL_HEADERS = (
    ("Authentication-Results", " mx.contoso.com; spf=pass smtp.mailfrom=example.org; "
     "dkim=none; dmarc=none header.from=example.org; iprev=fail"),
    ("X-Dsguard-Verdict", " clean; score=0; direct_send=no; attribution=none"),
    ("X-Dsguard-Findings", " NEWSLETTER_BULK, LINK_TRACKING"),
)


# The protocol steps of "nullmin" (libmilter mfdef.h SMFIP_*): NOCONNECT, NOHELO, NOMAIL,
# NORCPT, NOEOH, NR_HDR, NOUNKNOWN, NODATA, NR_BODY, HDR_LEADSPC. Postfix still sends each
# stage's macros (milter8.c, milter8_event: "Send the macros for this event, even when we're
# not reporting the event itself").
NULL_MIN_PROTOCOL = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80 | 0x100 | 0x200 | 0x80000 | 0x100000


def serve_null_milter(kind: str) -> None:
    """The null milter's process: negotiates exactly what ``dsguard milter`` negotiates (its
    WANTED_ACTIONS, WANTED_PROTOCOL and MACRO_LISTS, the same code path as
    ``MilterSession.negotiate``), then answers every event that expects a reply at once:
    CONTINUE, and at the end of message ACCEPT (after NULL_HEADERS as SMFIR_INSHEADER at 0 when
    ``kind`` is "nullhdrs"; "nullmin" negotiates NULL_MIN_PROTOCOL instead), and acknowledges
    a read that gets no reply at once, as ``MilterSession._ack_now`` does. No parsing beyond
    the packet framing, no analysis, no records: what any milter needs at least. Prints its
    port, then serves until killed."""
    from dsguard.postfix import milter as dm
    from dsguard.postfix import milter_protocol as mp

    optneg, bodyeob, quit_ = mp.SMFIC_OPTNEG[0], mp.SMFIC_BODYEOB[0], mp.SMFIC_QUIT[0]
    eom_reply = b"".join(
        mp.insert_header(0, name, value.encode()) for name, value in reversed(NULL_HEADERS)
    ) if kind == "nullhdrs" else b""
    wanted_protocol = NULL_MIN_PROTOCOL if kind == "nullmin" else dm.WANTED_PROTOCOL
    # (getattr: the bench also runs against older dsguard trees, to compare before/after.)
    quickack: int = getattr(dm, "_TCP_QUICKACK", 0)
    eom_reply += mp.ACCEPT

    class Null(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.protocol = 0
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            # As MilterSession: ACK a read that gets no reply at once (see _ack_now).
            self.sock = transport.get_extra_info("socket")

        def data_received(self, data: bytes) -> None:
            buf = self.buf
            buf += data
            out = []
            pos = 0
            while len(buf) - pos >= 5:
                length = int.from_bytes(buf[pos : pos + 4], "big")
                end = pos + 4 + length
                if end > len(buf):
                    break
                command = buf[pos + 4]
                if command == optneg:
                    offer = mp.decode_optneg(bytes(buf[pos + 5 : end]))
                    assert not isinstance(offer, mp.Malformed)
                    actions = dm.WANTED_ACTIONS & offer.actions
                    self.protocol = wanted_protocol & offer.protocol
                    macros = dm.MACRO_LISTS if actions & mp.SMFIF_SETSYMLIST else None
                    out.append(mp.optneg_reply(min(offer.version, 6), actions, self.protocol, macros))
                elif command == bodyeob:
                    out.append(eom_reply)
                elif command == quit_:
                    assert self.transport is not None
                    self.transport.close()
                    return
                else:
                    flag = dm._NO_REPLY_FLAG.get(command)
                    if flag is not None and not self.protocol & flag:
                        out.append(mp.CONTINUE)
                pos = end
            del buf[:pos]
            if out and self.transport is not None:
                self.transport.write(b"".join(out))
            elif quickack:
                self.sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Null, HOST, 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


class NullMilter:
    """``serve_null_milter`` in a process (and session) of its own, so its CPU is counted
    apart from Postfix's and from the load generator's."""

    def __init__(self, kind: str = "null") -> None:
        self.kind = kind
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"inet:{HOST}:{self.port}"

    def start(self) -> NullMilter:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-null-milter", self.kind],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the null milter did not start: {line!r}")
        self.port = int(line)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def main_cf_block(policyd: DsguardDaemon | None, milter: DsguardDaemon | NullMilter | None) -> str:
    """The README's block, without the policy service and/or the milter lines."""
    block = readme_main_cf(
        policyd.address if policyd else README_POLICYD, milter.address if milter else README_MILTER
    )
    lines = block.splitlines()
    if policyd is None:
        lines = [line for line in lines if "check_policy_service" not in line]
        lines = [line.rstrip(",") if line.endswith("reject_unauth_destination,") else line for line in lines]
    if milter is None:
        lines = [line for line in lines if not line.startswith(("smtpd_milters", "milter_"))]
    return "\n".join(lines) + "\n"


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Run(LoadResult):
    rcpt_latencies: list[float] = field(default_factory=list)
    dsguard_cpu_per_message: float = 0.0

    def rcpt_pct(self, q: float) -> float:
        data = sorted(self.rcpt_latencies)
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


async def _open(port: int) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=port, local_hostname=CLIENT_HELO, timeout=60, start_tls=False
    )
    await smtp.connect()
    if smtp.last_ehlo_response is None:
        await smtp.ehlo()
    return smtp


async def _client(run: Run, port: int, number: int, counted_from: float, stop_at: float) -> None:
    loop = asyncio.get_running_loop()
    smtp: aiosmtplib.SMTP | None = None
    n = on_connection = 0
    tag = f"{run.label}-{run.mode}-c{run.concurrency}"
    try:
        while loop.time() < stop_at:
            n += 1
            message_id = f"bench-{tag}-{number}-{n}@example.org"
            try:
                if run.mode == "transaction" and on_connection >= TRANSACTIONS_PER_CONNECTION:
                    if smtp is not None:
                        await smtp.quit()
                    smtp = None
                if run.mode == "transaction" and smtp is None:
                    smtp = await _open(port)
                    on_connection = 0
                on_connection += 1
                t0 = loop.time()
                if run.mode == "session":
                    smtp = await _open(port)
                assert smtp is not None
                await smtp.mail(NEWS_FROM)
                rcpt_times = []
                for rcpt in RCPTS:
                    r0 = loop.time()
                    await smtp.rcpt(rcpt)
                    rcpt_times.append(loop.time() - r0)
                reply = await smtp.data(newsletter(message_id))
                if reply.code == 250:
                    run.acked[message_id] = time.time()
                if run.mode == "session":
                    await smtp.quit()
                    smtp = None
                t1 = loop.time()
            except (aiosmtplib.SMTPException, OSError) as exc:
                name = type(exc).__name__
                if isinstance(exc, aiosmtplib.SMTPResponseException):
                    name += f" {exc.code} {exc.message[:70]}"
                run.errors[name] = run.errors.get(name, 0) + 1
                if smtp is not None:
                    smtp.close()
                smtp = None
                await asyncio.sleep(0.05)
                continue
            if reply.code != 250:
                run.unexpected += 1
                continue
            run.completed += 1
            if counted_from <= t1 <= stop_at:
                run.latencies.append(t1 - t0)
                run.rcpt_latencies.extend(rcpt_times)
    finally:
        if smtp is not None:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()


async def _load(run: Run, port: int, warmup: float, duration: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    run.first_send = time.time()
    await asyncio.gather(
        *(_client(run, port, i, start + warmup, start + warmup + duration) for i in range(run.concurrency))
    )


def measure(
    name: str,
    postfix: PostfixInstance,
    daemons: list[DsguardDaemon | NullMilter],
    concurrency: int,
    mode: str,
    args: argparse.Namespace,
    sink: SmtpSink,
) -> Run:
    run = Run(name, concurrency, mode, args.duration)
    busy0, total0 = machine_busy()
    postfix_cpu = SessionCpu(postfix.sid)
    # The daemons run in sessions of their own: a session counts every worker of --workers.
    dsguard_cpu = [SessionCpu(d.proc.pid) for d in daemons if d.proc is not None]
    asyncio.run(_load(run, postfix.port, args.warmup, args.duration))
    busy1, total1 = machine_busy()
    run.machine_busy = (busy1 - busy0) / max(total1 - total0, 1e-9)
    wait_for_delivery(run, sink)
    handled = max(run.completed, 1)
    run.server_cpu_per_message = postfix_cpu.stop() / handled
    run.dsguard_cpu_per_message = sum(c.stop() for c in dsguard_cpu) / handled
    return run


# -- where the time goes --------------------------------------------------------------------------


def policy_alone(policyd: DsguardDaemon, count: int = 3000) -> list[tuple[str, str]]:
    """Sequential requests on one connection, as one smtpd process sends them."""
    out = []
    with socket.create_connection((HOST, policyd.port)) as sock:
        for label, sender in (("DUNNO (foreign sender)", NEWS_FROM), ("refusal (P1)", "joe@contoso.com")):
            request = POLICY_REQUEST.format(ip="192.0.2.99", sender=sender).encode()
            latencies = []
            for _ in range(count):
                t0 = time.perf_counter()
                sock.sendall(request)
                answer = b""
                while not answer.endswith(b"\n\n"):
                    answer += sock.recv(4096)
                latencies.append(time.perf_counter() - t0)
            latencies.sort()
            out.append(
                (
                    f"policy server alone, {label}",
                    f"p50 {latencies[len(latencies) // 2] * 1000:.3f} ms, p99 "
                    f"{latencies[int(len(latencies) * 0.99)] * 1000:.3f} ms, "
                    f"{count / sum(latencies):.0f} requests/s on one connection",
                )
            )
    return out


def _milter_packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


def _milter_macros(stage: bytes, **values: str) -> bytes:
    names = {"i": "i", "j": "j"}
    data = b"".join(
        (names.get(k) or "{" + k + "}").encode() + b"\0" + v.encode() + b"\0" for k, v in values.items()
    )
    return _milter_packet(b"D", stage + data)


def postfix_milter_packets(raw: bytes, queue_id: str) -> tuple[bytes, bytes, list[bytes]]:
    """What Postfix 3.7 sends a milter for one message (recorded through a proxy, then written
    out here): (the session start, the transaction start after a previous one, then the steps
    that each wait for one reply: second RCPT, DATA, and the content up to the end of message).
    Values as with the milter's negotiation: HDR_LEADSPC, macros per its lists."""
    head, _, body = raw.partition(b"\r\n\r\n")
    header_packets = b""
    for fld in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = fld.partition(b":")
        header_packets += _milter_macros(b"L", i=queue_id) + _milter_packet(
            b"L", name + b"\0" + value.replace(b"\r\n", b"\n") + b"\0"
        )
    mail_rcpt = (
        _milter_macros(b"M")
        + _milter_packet(b"M", f"<{NEWS_FROM}>".encode() + b"\0size=5310\0")
        + _milter_macros(b"R")
        + _milter_packet(b"R", f"<{RCPTS[0]}>".encode() + b"\0")
    )
    session = (
        _milter_macros(b"C", j="mx.contoso.com", client_addr=HOST, client_name="unknown")
        + _milter_packet(b"C", f"[{HOST}]".encode() + b"\x004" + struct.pack(">H", 40000) + HOST.encode() + b"\0")
        + _milter_macros(b"H")
        + _milter_packet(b"H", CLIENT_HELO.encode() + b"\0")
        + mail_rcpt
    )
    content = header_packets + _milter_macros(b"N", i=queue_id) + _milter_packet(b"N")
    for start in range(0, len(body), 65535):
        content += _milter_macros(b"B", i=queue_id) + _milter_packet(b"B", body[start : start + 65535])
    content += _milter_macros(b"E", i=queue_id) + _milter_packet(b"E")
    steps = [
        _milter_macros(b"R", i=queue_id) + _milter_packet(b"R", f"<{RCPTS[1]}>".encode() + b"\0"),
        _milter_macros(b"T", i=queue_id) + _milter_packet(b"T"),
        content,
    ]
    return session, _milter_packet(b"A") + mail_rcpt, steps


async def _milter_client(port: int, count: int, per_connection: int) -> None:
    session, next_mail, steps = postfix_milter_packets(newsletter("bench-alone@example.org"), "4QzL1x2Y3z")

    async def replies(reader: asyncio.StreamReader) -> bytes:
        while True:  # up to the final reply of this step (progress and header edits before it)
            head = await reader.readexactly(4)
            packet = await reader.readexactly(struct.unpack(">I", head)[0])
            if packet[:1] not in (b"p", b"i", b"m", b"h", b"q"):
                return packet[:1]

    done = 0
    while done < count:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(_milter_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
        optneg = await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])
        no_data_reply = struct.unpack(">I", optneg[9:13])[0] & 0x10000  # SMFIP_NR_DATA
        for n in range(min(per_connection, count - done)):
            writer.write(session if n == 0 else next_mail)
            assert await replies(reader) == b"c"
            for i, step in enumerate(steps):
                writer.write(step)
                if i == 1 and no_data_reply:
                    continue  # DATA: no reply; smtpd writes it, then cleanup the content
                last = await replies(reader)
            assert last == b"a", last
            done += 1
        writer.write(_milter_packet(b"A") + _milter_packet(b"Q"))
        writer.close()


def milter_alone(milter: DsguardDaemon, concurrency: int = 10, count: int = 3000) -> list[tuple[str, str]]:
    """The milter's own CPU per message without Postfix on the same cores: Postfix's packets
    for the newsletter (as it sends them, persistent connections), ``concurrency`` at once."""
    assert milter.proc is not None

    async def load(total: int) -> None:
        per = max(1, total // concurrency)
        clients = [_milter_client(milter.port, per, TRANSACTIONS_PER_CONNECTION) for _ in range(concurrency)]
        await asyncio.gather(*clients)

    asyncio.run(load(concurrency * 20))  # warm: the DNS cache, the engine
    cpu = SessionCpu(milter.proc.pid)
    t0 = time.perf_counter()
    asyncio.run(load(count))
    elapsed = time.perf_counter() - t0
    handled = (count // concurrency) * concurrency
    used = cpu.stop()
    return [
        (
            f"milter alone, replayed Postfix packets, c={concurrency}",
            f"{used / handled * 1000:.2f} ms CPU per message, {handled / elapsed:.0f} msgs/s",
        )
    ]


def judge_cost(nameserver: str, count: int = 200) -> list[tuple[str, str]]:
    """The milter's end-of-message work on the newsletter, in this process."""
    from dsguard.auth.resolver import Resolver
    from dsguard.config import load_config
    from dsguard.engine import Engine
    from dsguard.model import Envelope, EnvelopeOrigin
    from dsguard.policy.judge import judge_message

    cfg = load_config(
        None,
        {
            "organization": {"accepted_domains": ["contoso.com"], "reject_direct_send": "on"},
            "gateway": {"hostname": "mx.contoso.com"},
            "limits": {"decode_sandbox": False},
        },
    )
    engine = Engine(cfg)
    raw = newsletter("bench-judge@example.org")
    env = Envelope(
        origin=EnvelopeOrigin.SMTP,
        client_ip=HOST,
        helo=CLIENT_HELO,
        mail_from=NEWS_FROM,
        rcpt_to=RCPTS,
    )
    out = []
    for label, resolver in (
        ("judge_message, no DNS (parse, checks, score)", None),
        (
            "judge_message, live SPF/DKIM/DMARC, no DNS cache (nsd)",
            Resolver([nameserver], timeout=2.0, cache=None),
        ),
        ("judge_message, live SPF/DKIM/DMARC, answers cached", Resolver([nameserver], timeout=2.0)),
    ):
        judge_message(engine, resolver, cfg, env, raw)  # warm
        t0 = time.perf_counter()
        for _ in range(count):
            judge_message(engine, resolver, cfg, env, raw)
        out.append((label, f"{(time.perf_counter() - t0) / count * 1000:.2f} ms per message"))
    engine.close()
    return out


def event_cost(root: Path, count: int = 300) -> list[tuple[str, str]]:
    """One event row, as the milter's writer thread stores it per message."""
    from dsguard.store.db import open_store

    store = open_store(f"sqlite:///{root / 'events-breakdown.sqlite3'}")
    _record_event(store)
    t0 = time.perf_counter()
    for _ in range(count):
        _record_event(store)
    elapsed = (time.perf_counter() - t0) / count
    store.close()
    return [("store.record_event (SQLite WAL, synchronous=FULL)", f"{elapsed * 1000:.2f} ms per event")]


# -- report --------------------------------------------------------------------------------------


def print_report(runs: list[Run], levels: list[int], modes: list[str]) -> None:
    by_key = {(r.label, r.mode, r.concurrency): r for r in runs}
    print(
        "\n| mode | scenario | c | msgs/s | p50 ms | p99 ms | RCPT p50 ms | RCPT p99 ms | "
        "delivered msgs/s | Postfix CPU ms/msg | milter/policyd CPU ms/msg | machine busy |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for mode in modes:
        for c in levels:
            for name in SCENARIOS:
                r = by_key.get((name, mode, c))
                if r is None:
                    continue
                print(
                    f"| {mode} | {name} | {c} | {r.rate:.1f} | {r.pct(0.5) * 1000:.1f} | "
                    f"{r.pct(0.99) * 1000:.1f} | {r.rcpt_pct(0.5) * 1000:.2f} | "
                    f"{r.rcpt_pct(0.99) * 1000:.2f} | "
                    f"{r.delivery_rate or 0:.1f} | {r.server_cpu_per_message * 1000:.2f} | "
                    f"{r.dsguard_cpu_per_message * 1000:.2f} | {r.machine_busy * 100:.0f} % |"
                )
    print("\noverhead against the same Postfix without dsguard (same mode, same concurrency):")
    for mode in modes:
        for c in levels:
            base = by_key.get(("postfix", mode, c))
            if base is None or not base.rate:
                continue
            parts = []
            pol = by_key.get(("policyd", mode, c))
            if pol is not None:
                parts.append(
                    f"policy server: RCPT p50 {(pol.rcpt_pct(0.5) - base.rcpt_pct(0.5)) * 1000:+.2f} ms, "
                    f"p99 {(pol.rcpt_pct(0.99) - base.rcpt_pct(0.99)) * 1000:+.2f} ms, "
                    f"msgs/s {pol.rate / base.rate:.2f}x"
                )
            for name in ("milter", "both", "nullmilter", "nullhdrs", "nullmin"):
                r = by_key.get((name, mode, c))
                if r is not None:
                    delivered = (
                        f", delivered {r.delivery_rate / base.delivery_rate:.2f}x"
                        if r.delivery_rate and base.delivery_rate
                        else ""
                    )
                    parts.append(f"{name}: msgs/s {r.rate / base.rate:.2f}x{delivered}")
            print(f"  {mode:11} c={c:<3} " + " | ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=8.0, help="counted seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds per run")
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--modes", default="transaction,session")
    ap.add_argument(
        "--scenarios", default=",".join(DEFAULT_SCENARIOS), help=f"of {', '.join(SCENARIOS)}"
    )
    # Internal: the null milter's own process (see NullMilter).
    ap.add_argument("--serve-null-milter", metavar="KIND", help=argparse.SUPPRESS)
    ap.add_argument("--milter-workers", type=int, default=1, help="dsguard milter --workers N")
    ap.add_argument(
        "--milter-socket",
        choices=("inet", "unix"),
        default="inet",
        help="dsguard milter on 127.0.0.1:port (inet) or a unix socket (main.cf unix:/path); "
        "unix implies --no-breakdown (its replay client speaks TCP) and one milter process",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument(
        "--no-breakdown", action="store_true", help="skip 'where the time goes' after the runs"
    )
    args = ap.parse_args()
    if args.serve_null_milter:
        serve_null_milter(args.serve_null_milter)
        return
    if args.milter_socket == "unix":
        if args.milter_workers != 1:
            ap.error("--milter-socket unix: one milter process (a unix socket is not shared)")
        args.no_breakdown = True
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    chosen = [s for s in SCENARIOS if s in args.scenarios.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="dsguard-bench-postfix-"))
    tmp.chmod(0o755)  # the postfix user must reach its queue and data directories
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"milter workers {args.milter_workers}"
    )
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(SmtpSink(tmp / "sink"))
        dns = stack.enter_context(
            BenchDnsServer(
                {
                    "example.org": [f"@ 300 IN TXT {txt('v=spf1 ip4:127.0.0.0/8 -all')}"],
                    "contoso.com": [
                        f"@ 300 IN TXT {txt('v=spf1 ip4:192.0.2.1 -all')}",
                        f"_dmarc 300 IN TXT {txt('v=DMARC1; p=reject')}",
                    ],
                },
                tmp / "dns",
            )
        )
        config = tmp / "dsguard.toml"
        config.write_text(
            to_toml(
                {
                    "organization": {"accepted_domains": ["contoso.com"], "reject_direct_send": "on"},
                    "gateway": {"hostname": "mx.contoso.com", "dns_servers": [dns.nameserver()]},
                    "storage": {"url": f"sqlite:///{tmp / 'events.sqlite3'}"},
                    # The postfix user must write to a unix socket of this root-run milter.
                    "milter": {"socket_mode": 0o666},
                }
            ),
            encoding="utf-8",
        )
        policyd = DsguardDaemon("policyd", config, tmp).start()
        stack.callback(policyd.stop)
        unix_path = tmp / "milter.sock" if args.milter_socket == "unix" else None
        milter = MilterDaemon(config, tmp, args.milter_workers, unix_path).start()
        stack.callback(milter.stop)
        milters: dict[str, DsguardDaemon | NullMilter] = {"dsguard": milter}
        for kind in ("null", "nullhdrs", "nullmin"):
            if not any(SCENARIOS[name][1] == kind for name in chosen):
                continue
            null = NullMilter(kind).start()
            stack.callback(null.stop)
            milters[kind] = null
        instances: dict[str, tuple[PostfixInstance, list[DsguardDaemon | NullMilter]]] = {}
        for name in chosen:
            with_policyd, milter_kind = SCENARIOS[name]
            chosen_milter = milters[milter_kind] if milter_kind else None
            used: list[DsguardDaemon | NullMilter] = [policyd] if with_policyd else []
            if chosen_milter is not None:
                used.append(chosen_milter)
            try:
                instance = PostfixInstance(
                    tmp / f"postfix-{name}",
                    sink.port,
                    settings={
                        "myhostname": "mx.contoso.com",
                        "mynetworks": "127.0.0.254/32",
                        "smtpd_client_connection_count_limit": "0",
                    },
                    extra=main_cf_block(policyd if with_policyd else None, chosen_milter),
                ).start()
            except PostfixUnavailableError as exc:
                raise SystemExit(f"bench/postfix.py: {exc}") from None
            stack.callback(instance.stop)
            instances[name] = (instance, used)
        version = next(iter(instances.values()))[0].version
        print(
            f"Postfix {version}: "
            + ", ".join(f"{n} on :{i.port}" for n, (i, _) in instances.items())
            + f"; policyd :{policyd.port}, milter {milter.address}, smtp-sink :{sink.port}, "
            f"nsd {dns.nameserver()}; temp dir {tmp}"
        )
        print(f"runs: {args.warmup:g} s warm-up + {args.duration:g} s counted each\n")
        for mode in modes:
            for c in levels:
                for name, (instance, used) in instances.items():
                    r = measure(name, instance, used, c, mode, args, sink)
                    runs.append(r)
                    print(
                        f"  {name:8} {mode:11} c={c:<3} {r.rate:7.1f} msg/s  p50 "
                        f"{r.pct(0.5) * 1000:6.1f} ms  p99 {r.pct(0.99) * 1000:6.1f} ms  RCPT p50 "
                        f"{r.rcpt_pct(0.5) * 1000:5.2f} p99 {r.rcpt_pct(0.99) * 1000:6.2f} ms  "
                        f"delivered {r.delivered}/{len(r.acked)}"
                        + (f"  errors {r.errors}" if r.errors else "")
                        + (f"  unexpected {r.unexpected}" if r.unexpected else ""),
                        flush=True,
                    )
        print_report(runs, levels, modes)
        decisions: dict[str, int] = {}
        for record in milter.decisions():
            key = f"{record['decision']}/{record.get('verdict', '-')}"
            decisions[key] = decisions.get(key, 0) + 1
        print(f"\nmilter decisions logged: {decisions}")
        if not args.no_breakdown:
            print("\nwhere the time goes:")
            costs = (
                policy_alone(policyd)
                + milter_alone(milter)
                + judge_cost(dns.nameserver())
                + event_cost(tmp)
            )
        for label, figure in [] if args.no_breakdown else costs:
            print(f"  {label:55} {figure}")
    if args.keep:
        print(f"\nkept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
