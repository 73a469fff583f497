"""The I/O paths of the policy server and the milter, in-process: framing read in chunks, the
idle watchdog, one reply per request without Nagle delays, and lazy CLI imports."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from dsguard.auth.resolver import DnsTempError, Resolver
from dsguard.config import Config, load_config
from dsguard.policy import judge
from dsguard.postfix import milter
from dsguard.postfix import milter_protocol as mp
from dsguard.postfix.policyd import (
    MAX_REQUEST_BYTES,
    TOO_LARGE,
    PolicyAnswer,
    PolicyDecider,
    PolicyProtocol,
    PolicyServer,
    RequestBuffer,
)


def _packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


def _read_all(chunks: list[bytes], max_bytes: int = mp.MAX_PACKET_BYTES) -> list[object]:
    """Feed ``chunks`` one read at a time; every packet, then None (clean end) or Malformed."""
    framer = mp.Framer(max_bytes)
    out: list[object] = []
    for chunk in chunks:
        framer.feed(chunk)
        while True:
            packet = framer.next()
            if packet is None:
                break
            out.append(packet)
            if isinstance(packet, mp.Malformed):
                return out
    out.append(framer.end_of_stream())
    return out


def test_framer_splits_a_burst_and_joins_split_packets() -> None:
    stream = _packet(b"D", b"Mi\0ABC\0") + _packet(b"M", b"<a@b>\0") + _packet(b"N")
    big = _packet(b"B", b"x" * 200_000)
    # every split point of the small burst, and a body packet over several chunks
    for cut in range(len(stream) + 1):
        got = _read_all([stream[:cut], stream[cut:], big[:7], big[7:70000], big[70000:]])
        assert got == [
            (ord("D"), b"Mi\0ABC\0"),
            (ord("M"), b"<a@b>\0"),
            (ord("N"), b""),
            (ord("B"), b"x" * 200_000),
            None,
        ]


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([b"\0\0\0\0"], "length 0"),
        ([struct.pack(">I", 2_000_000) + b"B"], "over the limit"),
        ([b"\0\0"], "inside a length prefix"),
        ([_packet(b"B", b"xyz")[:-1]], "inside a packet"),
    ],
)
def test_framer_malformed(chunks: list[bytes], reason: str) -> None:
    got = _read_all(chunks)
    assert isinstance(got[-1], mp.Malformed)
    assert reason in got[-1].reason


def test_framer_refuses_a_long_packet_before_its_data_arrives() -> None:
    framer = mp.Framer(4096)
    framer.feed(struct.pack(">I", 5000) + b"B")  # no data yet: must not wait for it
    result = framer.next()
    assert isinstance(result, mp.Malformed)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty macro packet"),
        (b"Ci\0x", "not NUL-terminated"),
        (b"Ci\0", "without a value"),
        (b"C" + b"a\0b\0" * 65, "more than 128 strings"),
    ],
)
def test_macro_packets_are_checked_without_parsing(data: bytes, reason: str) -> None:
    problem = mp.check_macros(data)
    assert isinstance(problem, mp.Malformed) and reason in problem.reason
    assert mp.decode_macros(data) == problem


def test_macro_packets_parse_as_before() -> None:
    assert mp.check_macros(b"E") is None
    assert mp.decode_macros(b"E") == (b"E", {})
    data = b"C{client_addr}\x00192.0.2.1\x00j\x00mx\xff\x00"
    assert mp.check_macros(data) is None
    assert mp.decode_macros(data) == (b"C", {"{client_addr}": "192.0.2.1", "j": "mx\ufffd"})


def test_macros_are_looked_up_latest_stage_first_and_parsed_only_when_needed() -> None:
    server = milter.MilterServer(_config(), None)
    try:
        session = milter.MilterSession(server)
        session.negotiated = True
        for data in (
            b"C{client_addr}\x00192.0.2.1\x00j\x00mx\x00",
            b"M{auth_authen}\x00joe\x00i\x00Q1\x00",
            b"Li\x00Q1\x00",
            b"Ei\x00Q2\x00",
        ):
            assert session.handle(ord("D"), data)
        assert session.macro("i") == "Q2"
        assert session.macro("{auth_authen}") == "joe"
        assert session.macro("{client_addr}") == "192.0.2.1"
        assert session.macro("{cert_subject}") is None
        assert session.macro("\x00") is None
        # The stage before each header never held a name asked for: never parsed.
        assert ord("L") not in session._macro_values
        session.handle(ord("A"), b"")  # ABORT forgets the transaction's stages
        assert session.macro("i") is None
        assert session.macro("{client_addr}") == "192.0.2.1"
    finally:
        asyncio.run(server.stop())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Subject\0 Hi\0", (b"Subject", b" Hi")),
        (b"X-\xff\0 v\nw\0", (b"X-\xff", b" v\nw")),
        (b"Subject\0 Hi", "not NUL-terminated"),
        (b"Subject\0", "needs a name and a value"),
        (b"", "needs a name and a value"),
        (b"A\0b\0c\0", "more than 2 strings"),
        (b"\0 v\0", "invalid name"),
        (b"Sub ject\0 v\0", "invalid name"),
        (b"Sub:ject\0 v\0", "invalid name"),
    ],
)
def test_decode_header(data: bytes, expected: object) -> None:
    got = mp.decode_header(data)
    if isinstance(expected, str):
        assert isinstance(got, mp.Malformed) and expected in got.reason
    else:
        assert got == expected


def _config() -> Config:
    return load_config(
        None,
        {
            "organization": {"accepted_domains": ["contoso.com"], "reject_direct_send": "on"},
            "gateway": {"hostname": "mx.contoso.com"},
            "limits": {"decode_sandbox": False},
        },
    )


def test_milter_closes_an_idle_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(milter, "IDLE_TIMEOUT", 0.3)

    async def run() -> tuple[bytes, bytes, float]:
        server = milter.MilterServer(_config(), None)
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            offer = struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
            writer.write(_packet(b"O", offer))
            head = await reader.readexactly(4)
            await reader.readexactly(struct.unpack(">I", head)[0])
            await asyncio.sleep(0.2)
            writer.write(_packet(b"D", b"Cj\0mx\0"))  # activity: the timer starts over
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF when the milter closes
            writer.close()
            return head, rest, loop.time() - t0
        finally:
            await server.stop()

    _, rest, waited = asyncio.run(run())
    assert rest == b""
    assert 0.2 <= waited < 3


def test_milter_progress_while_the_analysis_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(milter, "PROGRESS_INTERVAL", 0.05)

    def slow_judge(*_args: object, **_kwargs: object) -> object:
        time.sleep(0.3)
        raise RuntimeError("slow and broken")

    monkeypatch.setattr(milter, "judge_message", slow_judge)
    # as if the message had an attachment: the analysis goes to a thread
    monkeypatch.setattr(judge, "judge_without_attachments", lambda *_a, **_k: None)

    async def run() -> bytes:
        server = milter.MilterServer(_config(), None)
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
            await _reply(reader)
            writer.write(_packet(b"M", b"<news@example.org>\0") + _packet(b"R", b"<joe@contoso.com>\0"))
            assert await _reply(reader) == (b"c", b"")
            writer.write(_packet(b"L", b"From\0 news@example.org\0") + _packet(b"E"))
            seen = b""
            while True:
                command, data = await _reply(reader)
                seen += command
                if command != b"p":
                    writer.close()
                    return seen + data
        finally:
            await server.stop()

    seen = asyncio.run(run())
    # progress while it ran, then the answer to an internal fault: tempfail
    assert seen.startswith(b"pp") and seen.lstrip(b"p").startswith(b"y451 ")


def _one_message(server: milter.MilterServer) -> list[tuple[bytes, bytes]]:
    """One transaction over a real connection: every reply after the end of message."""

    async def run() -> list[tuple[bytes, bytes]]:
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
            await _reply(reader)
            writer.write(_packet(b"M", b"<news@example.org>\0") + _packet(b"R", b"<joe@contoso.com>\0"))
            assert await _reply(reader) == (b"c", b"")
            writer.write(_packet(b"L", b"From\0 news@example.org\0") + _packet(b"B", b"hi\r\n") + _packet(b"E"))
            replies = []
            while not replies or replies[-1][0] not in (b"a", b"y"):
                replies.append(await _reply(reader))
            writer.close()
            return replies
        finally:
            await server.stop()

    return asyncio.run(run())


def test_the_analysis_runs_on_the_loop_when_nothing_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = judge.judge_without_attachments

    def inline(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    def in_thread(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("not expected in a thread")

    monkeypatch.setattr(judge, "judge_without_attachments", inline)
    monkeypatch.setattr(milter, "judge_message", in_thread)
    replies = _one_message(milter.MilterServer(_config(), None))
    assert threads == ["MainThread"]
    assert replies[-1] == (b"a", b"")
    assert any(command == b"i" and b"X-Dsguard-Verdict" in data for command, data in replies)


def test_a_dns_answer_not_in_the_cache_sends_the_analysis_to_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    resolver = Resolver(["127.0.0.1:9"], timeout=0.05, lifetime=0.05)  # nothing listens

    def inline(*_args: object, **_kwargs: object) -> object:
        threads.append("inline")
        with pytest.raises(DnsTempError, match="not in the cache"):
            resolver.txt("example.org")  # as SPF would: a miss, nothing sent
        return None

    def in_thread(*_args: object, **_kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        raise RuntimeError("judged in a thread, and broken")

    monkeypatch.setattr(judge, "judge_without_attachments", inline)
    monkeypatch.setattr(milter, "judge_message", in_thread)
    replies = _one_message(milter.MilterServer(_config(), None))
    assert threads[0] == "inline" and threads[1].startswith("dsguard-analyst-")
    assert replies == [(b"y", b"451 4.3.0 Temporary local problem, please try again later\0")]


async def _reply(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readexactly(4), 5)
    packet = await asyncio.wait_for(reader.readexactly(struct.unpack(">I", head)[0]), 5)
    return packet[:1], packet[1:]


# -- policy server ------------------------------------------------------------------------------

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.99\n"
    b"sender=%s\nrecipient=joe@contoso.com\n\n"
)


def _requests(chunks: list[bytes]) -> list[list[bytes] | None]:
    """Feed ``chunks`` one read at a time: every request, then None (none complete)."""
    requests = RequestBuffer()
    out: list[list[bytes] | None] = []
    for chunk in chunks:
        requests.feed(chunk)
        while True:
            lines = requests.next()
            if lines is None:
                break
            out.append(lines)
            if lines is TOO_LARGE:
                return out
    out.append(None)
    return out


def test_request_reader_pipelined_split_and_crlf() -> None:
    data = b"a=1\nb=2\n\n" + b"c=3\r\nd=4\r\n\r\n" + b"\n" + b"e=5\n\n"
    for cut in range(len(data) + 1):
        got = _requests([data[:cut], data[cut:]])
        assert got == [[b"a=1", b"b=2"], [b"c=3", b"d=4"], [], [b"e=5"], None]


def test_request_reader_unfinished_and_too_large() -> None:
    assert _requests([b"a=1\nb=2\n"]) == [None]
    huge = b"x=" + b"y" * MAX_REQUEST_BYTES + b"\n"
    got = _requests([huge])
    assert got[-1] is TOO_LARGE
    got = _requests([huge + b"\n"])
    assert got[-1] is TOO_LARGE


def test_policy_server_answers_each_request_at_once_without_nagle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodelay: list[int] = []

    plain = PolicyProtocol.connection_made

    def connection_made(self: PolicyProtocol, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        plain(self, transport)

    monkeypatch.setattr(PolicyProtocol, "connection_made", connection_made)

    async def run() -> bytes:
        server = PolicyServer(_config(), None)
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(REQUEST % b"news@example.org" + REQUEST % b"joe@contoso.com")
            answers = b""
            while answers.count(b"\n\n") < 2:
                answers += await asyncio.wait_for(reader.read(4096), 5)
            writer.write(b"x=" + b"y" * MAX_REQUEST_BYTES + b"\n\n")
            answers += await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answers
        finally:
            await server.stop()

    answers = asyncio.run(run())
    first, second, third, rest = answers.split(b"\n\n")
    assert first == b"action=DUNNO"
    assert second.startswith(b"action=550 5.7.68 ")
    assert third.startswith(b"action=DEFER_IF_PERMIT")
    assert rest == b""
    assert nodelay and nodelay[0] != 0


def test_the_cli_imports_the_daemons_only_when_they_run() -> None:
    code = (
        "import sys, dsguard.cli.milter_cmd, dsguard.cli.policyd_cmd\n"
        "heavy = [m for m in ('dsguard.gateway.server', 'dsguard.postfix.milter', "
        "'dsguard.postfix.policyd', 'dsguard.engine') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_failed_record_after_the_reply_sends_no_second_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("store on fire")

    monkeypatch.setattr(milter.MilterSession, "record", boom)

    async def run() -> list[tuple[bytes, bytes]]:
        server = milter.MilterServer(_config(), None)
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)

            async def reply() -> tuple[bytes, bytes]:
                return await _reply(reader)

            writer.write(_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
            await reply()
            client = b"192.0.2.99"
            writer.write(_packet(b"C", b"c.example.net\x004" + struct.pack(">H", 4000) + client + b"\0"))
            writer.write(_packet(b"H", b"c.example.net\0"))
            replies = []
            for _ in range(2):  # P1 refusals, each recorded (and failing) after its reply
                writer.write(_packet(b"M", b"<ceo@contoso.com>\0"))
                writer.write(_packet(b"R", b"<joe@contoso.com>\0"))
                replies.append(await reply())
                writer.write(_packet(b"A"))
            writer.close()
            return replies
        finally:
            await server.stop()

    replies = asyncio.run(run())
    assert [command for command, _ in replies] == [b"y", b"y"]
    assert all(data.startswith(b"550 5.7.68 ") for _, data in replies)


def test_policy_decisions_are_remembered_per_client_user_certificate_and_sender() -> None:
    config = load_config(
        None,
        {
            "organization": {"accepted_domains": ["contoso.com"], "reject_direct_send": "on"},
            "connectors": [
                {"name": "scanner", "tls_certificate_name": "scanner.contoso.com"},
                {"name": "office", "sender_ip_ranges": ["192.0.2.0/28"]},
            ],
        },
    )
    decider = PolicyDecider(config)

    def ask(**attrs: str) -> PolicyAnswer:
        return decider.decide({"request": "smtpd_access_policy", **attrs})

    anonymous = ask(client_address="198.51.100.7", sender="joe@contoso.com", recipient="a@contoso.com")
    assert anonymous.decision == "refused"
    assert ask(client_address="198.51.100.7", sender="joe@contoso.com", recipient="b@contoso.com") is anonymous
    # each part of the key changes the answer
    assert ask(client_address="192.0.2.5", sender="joe@contoso.com").decision == "dunno"
    assert ask(client_address="198.51.100.7", sender="joe@contoso.com", sasl_username="joe").decision == "dunno"
    assert (
        ask(client_address="198.51.100.7", sender="joe@contoso.com", ccert_subject="scanner.contoso.com").decision
        == "dunno"
    )
    assert ask(client_address="198.51.100.7", sender="news@example.org").decision == "dunno"
    assert ask(client_address="198.51.100.7", sender="joe@contoso.com").decision == "refused"
