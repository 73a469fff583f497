"""The I/O paths of the policy server and the milter, in-process: framing read in chunks, the
idle watchdog, one reply per request without Nagle delays, and lazy CLI imports."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time

import pytest

from dsguard.config import Config, load_config
from dsguard.postfix import milter
from dsguard.postfix import milter_protocol as mp
from dsguard.postfix.policyd import MAX_REQUEST_BYTES, TOO_LARGE, PolicyServer, RequestReader


def _packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


async def _read_all(chunks: list[bytes], max_bytes: int = mp.MAX_PACKET_BYTES) -> list[object]:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    packets = mp.PacketReader(reader, max_bytes)
    out: list[object] = []
    while True:
        packet = await packets.next()
        out.append(packet)
        if packet is None or isinstance(packet, mp.Malformed):
            return out


def test_packet_reader_splits_a_burst_and_joins_split_packets() -> None:
    stream = _packet(b"D", b"Mi\0ABC\0") + _packet(b"M", b"<a@b>\0") + _packet(b"N")
    big = _packet(b"B", b"x" * 200_000)
    # every split point of the small burst, and a body packet over several chunks
    for cut in range(len(stream) + 1):
        got = asyncio.run(_read_all([stream[:cut], stream[cut:], big[:7], big[7:70000], big[70000:]]))
        assert got == [
            mp.Packet(b"D", b"Mi\0ABC\0"),
            mp.Packet(b"M", b"<a@b>\0"),
            mp.Packet(b"N", b""),
            mp.Packet(b"B", b"x" * 200_000),
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
def test_packet_reader_malformed(chunks: list[bytes], reason: str) -> None:
    got = asyncio.run(_read_all(chunks))
    assert isinstance(got[-1], mp.Malformed)
    assert reason in got[-1].reason


def test_packet_reader_refuses_a_long_packet_before_reading_it() -> None:
    async def run() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", 5000) + b"B")  # no data, no EOF: must not wait
        return await asyncio.wait_for(mp.PacketReader(reader, 4096).next(), 2)

    result = asyncio.run(run())
    assert isinstance(result, mp.Malformed)


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


def _slow_answer(seconds: float) -> int:
    time.sleep(seconds)
    return 42


def test_milter_progress_while_the_analysis_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(milter, "PROGRESS_INTERVAL", 0.05)

    class Writer:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

        def is_closing(self) -> bool:
            return False

    async def run() -> tuple[int, bytes]:
        server = milter.MilterServer(_config(), None)
        try:
            writer = Writer()
            session = milter.MilterSession(server, writer)  # type: ignore[arg-type]
            value = await session.in_thread(_slow_answer, 0.3)
            return value, writer.data
        finally:
            await server.stop()

    value, sent = asyncio.run(run())
    assert value == 42
    assert sent.count(mp.PROGRESS) >= 2
    assert sent == mp.PROGRESS * (len(sent) // len(mp.PROGRESS))


# -- policy server ------------------------------------------------------------------------------

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.99\n"
    b"sender=%s\nrecipient=joe@contoso.com\n\n"
)


async def _requests(chunks: list[bytes]) -> list[list[bytes] | None]:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    requests = RequestReader(reader)
    out: list[list[bytes] | None] = []
    while True:
        lines = await requests.next()
        out.append(lines)
        if lines is None or lines is TOO_LARGE:
            return out


def test_request_reader_pipelined_split_and_crlf() -> None:
    data = b"a=1\nb=2\n\n" + b"c=3\r\nd=4\r\n\r\n" + b"\n" + b"e=5\n\n"
    for cut in range(len(data) + 1):
        got = asyncio.run(_requests([data[:cut], data[cut:]]))
        assert got == [[b"a=1", b"b=2"], [b"c=3", b"d=4"], [], [b"e=5"], None]


def test_request_reader_unfinished_and_too_large() -> None:
    assert asyncio.run(_requests([b"a=1\nb=2\n"])) == [None]
    huge = b"x=" + b"y" * MAX_REQUEST_BYTES + b"\n"
    got = asyncio.run(_requests([huge]))
    assert got[-1] is TOO_LARGE
    got = asyncio.run(_requests([huge + b"\n"]))
    assert got[-1] is TOO_LARGE


def test_policy_server_answers_each_request_at_once_without_nagle() -> None:
    nodelay: list[int] = []

    async def run() -> bytes:
        server = PolicyServer(_config(), None)
        plain = server.handle

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            await plain(reader, writer)

        server.handle = handle  # type: ignore[method-assign]
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
            packets = mp.PacketReader(reader)

            async def reply() -> tuple[bytes, bytes]:
                packet = await asyncio.wait_for(packets.next(), 5)
                assert isinstance(packet, mp.Packet)
                return packet.command, packet.data

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
