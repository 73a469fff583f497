"""``dsguard milter`` speaking the milter protocol to a hand-written MTA side over a real socket.

The MTA side here is written from the protocol (libmilter mfdef.h, Postfix milter8.c), not
from dsguard's own encoder. It plays what a real Postfix cannot easily show in a test: the
macros of a TLS client certificate, hostile packets, oversized messages, forged headers in
bulk, ABORT and QUIT_NC. Malformed input must close that one connection and nothing else.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from tests.fixtures.gateway import to_toml
from tests.fixtures.postfix import DsguardDaemon

RDS_REPLY = (
    b"550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
    b"from unauthorized sources"
)
# What Postfix 3.7 offers (milter8.c): every action, every v6 protocol step.
MTA_ACTIONS = 0x1FF
MTA_PROTOCOL = 0x1FFFFF
MAX_BYTES = 200_000
MAX_HEADERS = 50


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DsguardDaemon]:
    root = tmp_path_factory.mktemp("milter-protocol")
    config = root / "dsguard.toml"
    config.write_text(
        to_toml(
            {
                "organization": {"accepted_domains": ["contoso.com"], "reject_direct_send": "on"},
                "connectors": [
                    {
                        "name": "scanner-cert",
                        "tls_certificate_name": "scanner.contoso.com",
                        "sender_domains": ["contoso.com"],
                    }
                ],
                "gateway": {"hostname": "mx.contoso.com"},
                "limits": {"max_message_bytes": MAX_BYTES, "max_headers": MAX_HEADERS},
                "storage": {"url": f"sqlite:///{root / 'events.sqlite3'}"},
            }
        ),
        encoding="utf-8",
    )
    daemon = DsguardDaemon("milter", config, root).start()
    yield daemon
    assert daemon.stop() == 0, daemon.log_text()


class Mta:
    """The MTA side of one milter connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""
        self.protocol = 0  # what the milter negotiated

    def close(self) -> None:
        self.sock.close()

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command + data)

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"milter closed the connection ({len(self.buffer)} bytes unread)")
            self.buffer += chunk
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def recv(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._read(4))
        packet = self._read(length)
        return packet[:1], packet[1:]

    def closed(self) -> bool:
        """True when the milter closed the connection (EOF) without sending anything."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def negotiate(self) -> tuple[int, int, int, bytes]:
        self.send(b"O", struct.pack(">III", 6, MTA_ACTIONS, MTA_PROTOCOL))
        command, data = self.recv()
        assert command == b"O"
        version, actions, protocol = struct.unpack(">III", data[:12])
        self.protocol = protocol
        return version, actions, protocol, data[12:]

    def macros(self, stage: bytes, **values: str) -> None:
        body = b"".join(
            (f"{{{k}}}" if len(k) > 1 else k).encode() + b"\0" + v.encode() + b"\0"
            for k, v in values.items()
        )
        self.send(b"D", stage + body)

    def envelope(self, sender: str, rcpt: str, *, client: str = "192.0.2.99", **mail_macros: str) -> tuple[bytes, bytes]:
        """CONNECT, HELO, MAIL (no replies: negotiated away), RCPT: its reply."""
        self.macros(b"C", client_addr=client)
        self.send(b"C", b"client.example.net\x004" + struct.pack(">H", 40000) + client.encode() + b"\0")
        self.send(b"H", b"client.example.net\0")
        self.macros(b"M", **mail_macros)
        self.send(b"M", f"<{sender}>".encode() + b"\0")
        self.send(b"R", f"<{rcpt}>".encode() + b"\0")
        return self.recv()

    def message(self, headers: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
        """DATA (answered unless SMFIP_NR_DATA), headers (value with its leading space:
        HDR_LEADSPC), EOH, body chunks of at most 65535 bytes as Postfix sends them, EOM: every
        reply up to the final one."""
        self.send(b"T")
        if not self.protocol & 0x10000:
            assert self.recv() == (b"c", b"")
        for name, value in headers:
            self.send(b"L", name.encode() + b"\0" + value.encode() + b"\0")
        self.send(b"N")
        for i in range(0, len(body), 65535):
            self.send(b"B", body[i : i + 65535])
        self.macros(b"E", i="4QzL1x2Y3z")
        self.send(b"E")
        replies = []
        while True:
            command, data = self.recv()
            if command == b"p":  # progress: still working
                continue
            replies.append((command, data))
            if command in (b"a", b"c", b"r", b"t", b"y", b"d"):
                return replies


@pytest.fixture
def mta(milter: DsguardDaemon) -> Iterator[Mta]:
    client = Mta(milter.port)
    yield client
    client.close()


def inserted(replies: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The SMFIR_INSHEADER requests as {name: value}."""
    out = {}
    for command, data in replies:
        if command == b"i":
            name, value, _ = data[4:].split(b"\0")
            out[name.decode()] = value.decode()
    return out


def test_negotiation_asks_for_what_it_needs_and_no_more(mta: Mta) -> None:
    version, actions, protocol, macro_lists = mta.negotiate()
    assert version == 6
    assert actions == 0x01 | 0x10 | 0x20 | 0x100  # ADDHDRS, CHGHDRS, QUARANTINE, SETSYMLIST
    assert protocol & 0x100000  # HDR_LEADSPC: header values byte for byte
    assert protocol & 0x80 and protocol & 0x80000  # no reply per header / body chunk
    assert not protocol & 0x8000  # but a reply to every RCPT (P1 is decided there)
    # None to DATA: over TCP on Linux the milter sends its ACKs at once instead (see
    # WANTED_PROTOCOL and MilterSession._ack_now), so Nagle does not hold Postfix's packets.
    assert protocol & 0x10000 and not protocol & 0x200
    assert not protocol & 0x10 and not protocol & 0x20  # it wants the headers and body
    stages = {}
    rest = macro_lists
    while rest:
        (stage,) = struct.unpack(">I", rest[:4])
        names, _, rest = rest[4:].partition(b"\0")
        stages[stage] = names.decode().split()
    assert "{auth_authen}" in stages[2]  # SMFIM_ENVFROM
    assert "{cert_subject}" in stages[1]  # SMFIM_HELO
    assert "i" in stages[5]  # SMFIM_EOM: Postfix's queue id
    # Every stage has a list, so the admin's global milter_*_macros never apply to ours; for
    # DATA and the end of headers (sent before every header field) the shortest there is.
    assert set(stages) == set(range(7))
    assert stages[4] == stages[6] == ["i"]


def test_p1_from_macros_anonymous_is_refused_sasl_and_verified_certificate_pass(milter: DsguardDaemon) -> None:
    anonymous, sasl, cert = Mta(milter.port), Mta(milter.port), Mta(milter.port)
    try:
        for m in (anonymous, sasl, cert):
            m.negotiate()
        assert anonymous.envelope("joe@contoso.com", "joe@contoso.com") == (b"y", RDS_REPLY + b"\0")
        assert sasl.envelope("joe@contoso.com", "joe@contoso.com", auth_authen="joe@contoso.com") == (b"c", b"")
        cert.macros(b"H", tls_version="TLSv1.3", cert_subject="scanner.contoso.com")
        assert cert.envelope("joe@contoso.com", "joe@contoso.com") == (b"c", b"")
        replies = cert.message([("From", " joe@contoso.com"), ("Subject", " Scan")], b"scan\r\n")
        assert replies[-1] == (b"a", b"")
        assert inserted(replies)["X-Dsguard-Verdict"].endswith("attribution=connector:scanner-cert")
    finally:
        for m in (anonymous, sasl, cert):
            m.close()


@pytest.mark.parametrize(
    "hostile",
    [
        struct.pack(">I", 0),  # no command byte
        struct.pack(">I", 0x7FFFFFFF) + b"L",  # 2 GiB announced: refused before reading
        struct.pack(">I", 5) + b"L" + b"From",  # header without NUL terminators
        struct.pack(">I", 1) + b"Z",  # no such command
        struct.pack(">I", 3) + b"D",  # macro packet cut short by the end of stream
    ],
    ids=["zero-length", "huge-length", "unterminated-header", "unknown-command", "truncated"],
)
def test_a_malformed_packet_closes_that_connection_only(milter: DsguardDaemon, hostile: bytes) -> None:
    busy, bad = Mta(milter.port), Mta(milter.port)
    try:
        busy.negotiate()
        assert busy.envelope("news@example.org", "joe@contoso.com") == (b"c", b"")
        bad.negotiate()
        bad.sock.sendall(hostile)
        if hostile.endswith(b"D"):
            bad.sock.shutdown(socket.SHUT_WR)
        assert bad.closed()
        replies = busy.message([("From", " news@example.org"), ("Subject", " Hello")], b"Hello\r\n")
        assert replies[-1] == (b"a", b"")
        # And new connections are served.
        fresh = Mta(milter.port)
        assert fresh.negotiate()[0] == 6
        fresh.close()
    finally:
        busy.close()
        bad.close()
    assert '"level": "warning"' in milter.log_text()


def test_a_command_before_negotiation_closes_the_connection(mta: Mta) -> None:
    mta.send(b"M", b"<joe@contoso.com>\0")
    assert mta.closed()


def test_a_message_over_the_size_limit_is_judged_on_what_was_kept(mta: Mta) -> None:
    mta.negotiate()
    assert mta.envelope("news@example.org", "joe@contoso.com") == (b"c", b"")
    body = (b"x" * 998 + b"\r\n") * 400  # 400 KB, twice [limits] max_message_bytes
    replies = mta.message([("From", " news@example.org"), ("Subject", " Big")], body)
    assert replies[-1] == (b"a", b"")
    assert "LIMIT_MESSAGE_SIZE" in inserted(replies)["X-Dsguard-Findings"]


def test_too_many_header_fields_are_judged_on_the_first(mta: Mta) -> None:
    mta.negotiate()
    mta.envelope("news@example.org", "joe@contoso.com")
    headers = [("From", " news@example.org")] + [(f"X-Filler-{i}", " x") for i in range(3 * MAX_HEADERS)]
    replies = mta.message(headers, b"hello\r\n")
    assert replies[-1] == (b"a", b"")
    assert "LIMIT_HEADERS" in inserted(replies)["X-Dsguard-Findings"]


def test_forged_fields_are_deleted_last_first_and_a_flood_of_them_is_a_tempfail(milter: DsguardDaemon) -> None:
    few, flood = Mta(milter.port), Mta(milter.port)
    try:
        few.negotiate()
        few.envelope("news@example.org", "joe@contoso.com")
        replies = few.message(
            [
                ("X-Dsguard-Verdict", " clean"),
                ("From", " news@example.org"),
                ("Authentication-Results", " mx.contoso.com; dkim=pass"),
                ("X-Dsguard-Verdict", " clean again"),
                ("Authentication-Results", " other.example.net; spf=pass"),
            ],
            b"hi\r\n",
        )
        changes = [(struct.unpack(">I", d[:4])[0], d[4:].split(b"\0")[:2]) for c, d in replies if c == b"m"]
        assert changes == [
            (1, [b"Authentication-Results", b""]),
            (2, [b"X-Dsguard-Verdict", b""]),
            (1, [b"X-Dsguard-Verdict", b""]),
        ]
        # Deletions come before the insertions (Postfix counts fields as received).
        kinds = [c for c, _ in replies]
        assert kinds.index(b"i") > max(i for i, c in enumerate(kinds) if c == b"m")

        flood.negotiate()
        flood.envelope("news@example.org", "joe@contoso.com")
        forged = [(f"X-Dsguard-F{i}", " x") for i in range(150)]
        replies = flood.message([("From", " news@example.org"), *forged], b"hi\r\n")
        assert replies == [
            (b"y", b"451 4.7.0 Too many header fields claiming to be ours, try again later\0")
        ]
    finally:
        few.close()
        flood.close()


def test_abort_and_quit_nc_start_afresh_on_the_same_connection(mta: Mta) -> None:
    mta.negotiate()
    assert mta.envelope("joe@contoso.com", "joe@contoso.com")[0] == b"y"
    mta.send(b"A")  # RSET: the refused transaction is forgotten
    mta.send(b"M", b"<news@example.org>\0")
    mta.send(b"R", b"<joe@contoso.com>\0")
    assert mta.recv() == (b"c", b"")
    mta.send(b"K")  # a new SMTP session on this connection: now SMTP AUTH'd
    assert mta.envelope("joe@contoso.com", "joe@contoso.com", auth_authen="joe") == (b"c", b"")
    replies = mta.message([("From", " joe@contoso.com")], b"hi\r\n")
    assert inserted(replies)["X-Dsguard-Verdict"].endswith("attribution=authenticated:joe")


def test_the_refusals_are_events_of_the_milter(milter: DsguardDaemon) -> None:
    mta = Mta(milter.port)
    try:
        mta.negotiate()
        assert mta.envelope("joe@contoso.com", "ann@contoso.com", client="192.0.2.77")[0] == b"y"
    finally:
        mta.close()
    record = milter.wait_for_decision(lambda d: d["client_ip"] == "192.0.2.77")
    assert (record["front_door"], record["decision"], record["rcpt_to"]) == ("milter", "refused", ["ann@contoso.com"])
    deadline = time.monotonic() + 15  # events are written after the reply, by one thread
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "dsguard", "events", "--json", "--config", str(milter.config)],
            capture_output=True,
            text=True,
            check=True,
        )
        events = [json.loads(line) for line in done.stdout.splitlines()]
        mine = [e for e in events if e["client_ip"] == "192.0.2.77"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(e["front_door"], e["decision"], e["p1"]) for e in mine] == [("milter", "refused", "would_reject")]


