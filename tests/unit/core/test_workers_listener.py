"""The SO_REUSEPORT listeners the gateway's and the milter's worker processes serve on."""

from __future__ import annotations

import asyncio
import socket

from dsguard.workers import listener


def test_two_listeners_share_one_port() -> None:
    first = listener("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = listener("127.0.0.1", port)
        second.close()
    finally:
        first.close()


def test_accepted_connections_have_nagle_off() -> None:
    """Replies of a few bytes must leave at once: with Nagle on, the second small reply of a
    session waits for the client's delayed ACK (~40 ms per SMTP session)."""
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def run() -> None:
        sock = listener("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            port = sock.getsockname()[1]
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()
            await writer.wait_closed()

    asyncio.run(run())
    assert seen and seen[0] != 0
