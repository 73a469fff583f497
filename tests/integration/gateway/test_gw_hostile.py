"""Hostile clients against the real gateway: size, recipients, concurrent sessions, SMTP
smuggling, long lines, idle clients, pipelining and command floods.

One gateway for the module with small limits (20,000-byte messages, 3 recipients, 3 sessions
per IP, 30 uses of one command per session); the idle-timeout test runs its own gateway with a
1-second idle timeout. Raw sockets are used where smtplib would repair what the test sends.
"""

from __future__ import annotations

import smtplib
import socket

import pytest
from tests.fixtures import gateway as gwf
from tests.fixtures.gateway import (
    GatewayFactory,
    GatewayProcess,
    RawSmtp,
    assert_never_delivered,
    message,
    token,
    wait_at_sink,
    wait_until,
)

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway
gateway_factory = gwf.gateway_factory

MAX_BYTES = 20_000
MAX_RCPTS = 3
MAX_PER_IP = 3
MAX_COMMANDS = 30
BARE_NEWLINE = (
    b"550 5.5.2 Message rejected: bare <CR> or <LF> in message data (RFC 5321 2.3.8)\r\n"
)


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway(
        {
            "gateway": {
                "limits": {
                    "max_message_bytes": MAX_BYTES,
                    "max_recipients": MAX_RCPTS,
                    "max_sessions_per_ip": MAX_PER_IP,
                    "max_commands": MAX_COMMANDS,
                }
            }
        }
    )


def test_size_over_the_limit_is_552(gw: GatewayProcess) -> None:
    with RawSmtp(gw.host, gw.port) as client:
        assert f"250-SIZE {MAX_BYTES}\r\n".encode() in client.cmd("EHLO mx.example.org")
        reply = client.cmd(f"MAIL FROM:<news@example.org> SIZE={MAX_BYTES + 1}")
        assert reply.startswith(b"552 ")
        # Lying about the size (or not declaring it) does not help: 552 after the data.
        tag = token()
        assert client.cmd("MAIL FROM:<news@example.org> SIZE=1000").startswith(b"250")
        assert client.cmd("RCPT TO:<ann@contoso.com>").startswith(b"250")
        assert client.cmd("DATA").startswith(b"354")
        body = message(from_="news@example.org", to="ann@contoso.com", tag=tag)
        client.send(body + (b"x" * 900 + b"\r\n") * 30 + b".\r\n")
        assert client.reply().startswith(b"552 ")
    assert_never_delivered(gw, tag.encode())


def test_more_recipients_than_allowed_get_452(gw: GatewayProcess) -> None:
    tag = token()
    recipients = [f"user{i}@contoso.com" for i in range(MAX_RCPTS + 2)]
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        assert client.cmd("MAIL FROM:<news@example.org>").startswith(b"250")
        replies = [client.cmd(f"RCPT TO:<{r}>") for r in recipients]
        assert replies[:MAX_RCPTS] == [b"250 2.1.5 OK\r\n"] * MAX_RCPTS
        assert replies[MAX_RCPTS:] == [b"452 4.5.3 Too many recipients\r\n"] * 2
        assert client.cmd("DATA").startswith(b"354")
        client.send(message(from_="news@example.org", tag=tag) + b".\r\n")
        assert client.reply().startswith(b"250 ")
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert arrived.rcpt_to == tuple(recipients[:MAX_RCPTS])


def test_concurrent_sessions_per_ip_are_limited(gw: GatewayProcess) -> None:
    sessions = [RawSmtp(gw.host, gw.port, source="127.0.0.20") for _ in range(MAX_PER_IP)]
    try:
        assert all(s.greeting.startswith(b"220 ") for s in sessions)
        with RawSmtp(gw.host, gw.port, source="127.0.0.20") as extra:
            assert extra.greeting == b"421 4.7.0 Too many connections, try again later\r\n"
            assert extra.closed_by_peer()
        # Another client is not affected...
        with RawSmtp(gw.host, gw.port, source="127.0.0.21") as other:
            assert other.greeting.startswith(b"220 ")
        # ...and a slot freed is a slot free again.
        with sessions.pop() as leaving:
            assert leaving.cmd("QUIT").startswith(b"221")

        def admitted() -> bool:
            with RawSmtp(gw.host, gw.port, source="127.0.0.20") as again:
                return again.greeting.startswith(b"220 ")

        wait_until(admitted)
    finally:
        for s in sessions:
            s.close()


SMUGGLING = [
    (b"\n.\n", "LF.LF"),
    (b"\r\n.\n", "CRLF.LF"),
    (b"\n.\r\n", "LF.CRLF"),
    (b"\r.\r", "CR.CR"),
    (b"\r\n.\r", "CRLF.CR"),
]


@pytest.mark.parametrize(("end", "name"), SMUGGLING, ids=[n for _e, n in SMUGGLING])
def test_smtp_smuggling_is_refused_and_nothing_is_injected(
    gw: GatewayProcess, end: bytes, name: str
) -> None:
    outer, inner = token(), token()
    # What a vulnerable receiver would read as the end of the first message followed by a
    # second transaction: a spoof of joe@contoso.com riding on an innocent-looking message.
    smuggled = (
        b"MAIL FROM:<joe@contoso.com>\r\nRCPT TO:<ann@contoso.com>\r\nDATA\r\n"
        + message(subject="Payroll change", tag=inner)
    )
    data = message(from_="news@example.org", tag=outer) + b"Bye" + end + smuggled + b".\r\n"
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        assert client.cmd("MAIL FROM:<news@example.org>").startswith(b"250")
        assert client.cmd("RCPT TO:<ann@contoso.com>").startswith(b"250")
        assert client.cmd("DATA").startswith(b"354")
        client.send(data)
        assert client.reply() == BARE_NEWLINE
        # Exactly one reply: nothing in the data was taken for a command.
        assert client.cmd("NOOP") == b"250 OK\r\n"
    assert_never_delivered(gw, outer.encode())
    assert_never_delivered(gw, inner.encode())


def test_bare_lf_inside_a_message_is_refused(gw: GatewayProcess) -> None:
    tag = token()
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        client.cmd("MAIL FROM:<news@example.org>")
        client.cmd("RCPT TO:<ann@contoso.com>")
        client.cmd("DATA")
        client.send(message(from_="news@example.org", tag=tag).replace(b"\r\n", b"\n", 2) + b".\r\n")
        assert client.reply() == BARE_NEWLINE
    assert_never_delivered(gw, tag.encode())


def test_a_too_long_command_line_is_500_and_the_session_goes_on(gw: GatewayProcess) -> None:
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        reply = client.cmd("MAIL FROM:<" + "a" * 5000 + "@example.org>")
        assert reply == b"500 Command line too long\r\n"
        assert client.cmd("NOOP") == b"250 OK\r\n"


def test_pipelined_transaction_is_served_in_order(gw: GatewayProcess) -> None:
    tag = token()
    with RawSmtp(gw.host, gw.port) as client:
        client.send(
            b"EHLO mx.example.org\r\nMAIL FROM:<news@example.org>\r\n"
            b"RCPT TO:<ann@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n"
        )
        replies = [client.reply() for _ in range(5)]
        assert replies[0].startswith(b"250-")
        assert replies[1:] == [
            b"250 2.1.0 OK\r\n",
            b"250 2.1.5 OK\r\n",
            b"250 2.1.5 OK\r\n",
            b"354 End data with <CR><LF>.<CR><LF>\r\n",
        ]
        client.send(message(from_="news@example.org", tag=tag) + b".\r\nQUIT\r\n")
        assert client.reply().startswith(b"250 2.0.0 OK")
        assert client.reply().startswith(b"221")
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert arrived.rcpt_to == ("ann@contoso.com", "bob@contoso.com")


def test_a_command_flood_is_cut_off(gw: GatewayProcess) -> None:
    mark = gw.mark()
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        # One over the limit, and nothing after it: data left unread when the gateway hangs
        # up would make the kernel reset the connection, and the 421 could be lost with it.
        client.send(b"NOOP\r\n" * (MAX_COMMANDS + 1))
        replies = client.replies_until_closed()
        assert replies[:MAX_COMMANDS] == [b"250 OK\r\n"] * MAX_COMMANDS
        assert replies[MAX_COMMANDS] == b"421 4.7.0 NOOP sent too many times\r\n"
    # The gateway says so in its structured log.
    gw.wait_for_record(lambda r: "over limit for NOOP" in str(r.get("message")), since=mark)
    assert not [r for r in gw.records() if "raw" in r]


def test_a_silent_client_is_closed_with_421(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory({"gateway": {"limits": {"idle_timeout": 1.0}}})
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO quiet.example.org")
        # Say nothing: the gateway speaks first, then hangs up.
        assert client.reply() == b"421 4.4.2 Idle timeout, closing connection\r\n"
        assert client.closed_by_peer()


def test_smtplib_still_works_after_all_that(gw: GatewayProcess) -> None:
    tag = token()
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp:
        smtp.sendmail("news@example.org", ["ann@contoso.com"], message(from_="news@example.org", tag=tag))
    wait_at_sink(gw.world.sink, tag.encode())
    with socket.create_connection((gw.host, gw.port)) as raw:
        assert raw.recv(100).startswith(b"220 ")
