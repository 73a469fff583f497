"""dsguard's SMTP server answers as the aiosmtpd-based server it replaced: both, same bytes,
same replies.

Each case runs over real loopback sockets against the old server (aiosmtpd 1.4.6 with the
gateway's additions, kept in ``legacy_smtp``) and against ``smtpserver.SmtpSession``, both in
front of the same real ``GatewayHandler`` (policy, engine, spool, store), with the same
listener settings as the gateway's (tests/unit/gateway/legacy_smtp.py builds the old one as
``GatewayServer`` did). The client writes each step's bytes in one write and reads the number
of replies the step should produce; at the end it reads until the server closes. The whole
transcripts must be equal (queue ids, random per message, are masked).

The cases are ordinary sessions and hostile ones: garbage, NUL bytes, overlong lines, pipelined
bursts, commands out of order, RCPT before MAIL, DATA without RCPT, unknown commands until the
client is dropped, a command flood, open-relay address tricks, AUTH without TLS and on the
wrong listener, the AUTH exchanges, and plain-text commands pipelined behind STARTTLS (RFC 3207
section 4.2). Where the new server deliberately answers differently (smtpserver's docstring
lists why), a test below says what it answers instead.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.unit.gateway.legacy_smtp import AiosmtpdHooks, LegacyGatewaySMTP, legacy_authenticator

from dsguard.config import load_config
from dsguard.engine import Engine
from dsguard.gateway import smtpdata
from dsguard.gateway.handler import GatewayHandler, Runtime
from dsguard.gateway.server import AuthThrottle
from dsguard.gateway.smtpserver import (
    AuthResult,
    ConnectionGate,
    LoginPassword,
    Session,
    SmtpSession,
    SmtpSettings,
)
from dsguard.gateway.spool import Spool
from dsguard.store import repository as repo
from dsguard.store.db import Store, open_store

HOSTNAME = "gw.contoso.com"
MAX_BYTES = 20_000
MAX_RCPTS = 3
MAX_COMMANDS = 30
ALICE = "alice@contoso.com"
PASSWORD = "Tr0ub4dor&3-horse-battery"
READ_TIMEOUT = 5.0  # only a wrong reply count waits this long


# -- the world both servers share -----------------------------------------------------------------


@dataclass
class World:
    runtime: Runtime
    server_tls: ssl.SSLContext
    client_tls: ssl.SSLContext


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("smtpserver")
    config_file = root / "dsguard.toml"
    config_file.write_text(
        '[organization]\naccepted_domains = ["contoso.com"]\nreject_direct_send = "on"\n'
        f'[gateway]\nhostname = "{HOSTNAME}"\nspool_dir = "{root / "spool"}"\n'
        f"[gateway.limits]\nmax_message_bytes = {MAX_BYTES}\n"
        f"max_recipients = {MAX_RCPTS}\nmax_commands = {MAX_COMMANDS}\n"
        f'[storage]\nurl = "sqlite:///{root / "db.sqlite3"}"\n',
        encoding="utf-8",
    )
    cfg = load_config(str(config_file))
    store: Store = open_store(cfg.storage.url)
    repo.add_user(store, ALICE, PASSWORD, kind="smtp")
    engine = Engine(cfg)
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOSTNAME, "127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    try:
        yield World(
            Runtime(cfg, engine, None, Spool(root / "spool"), store), server_tls, client_tls
        )
    finally:
        engine.close()
        store.close()


def _authenticator(store: Store) -> Any:
    throttle = AuthThrottle(3, 600)

    def check(session: Session, mechanism: str, credentials: LoginPassword) -> AuthResult:
        ip = session.peer[0] if isinstance(session.peer, tuple) else "unknown"
        if throttle.blocked(ip):
            return AuthResult(success=False, message="454 4.7.0 throttled")
        user = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        if repo.verify_password(store, user, password, "smtp") is None:
            throttle.failed(ip)
            return AuthResult(success=False)
        return AuthResult(success=True, auth_data=credentials)

    return check


@dataclass(frozen=True)
class Listener:
    submission: bool = False
    tls: bool = False
    idle_timeout: float = 60.0
    session_timeout: float = 60.0


def _settings(world: World, listener: Listener) -> SmtpSettings:
    tls = world.server_tls if listener.tls else None
    return SmtpSettings(
        hostname=HOSTNAME,
        ident="dsguard ESMTP",
        data_size_limit=MAX_BYTES,
        idle_timeout=listener.idle_timeout,
        session_timeout=listener.session_timeout,
        max_commands=MAX_COMMANDS,
        tls_context=tls,
        require_starttls=listener.submission and tls is not None,
        auth_required=listener.submission,
        authenticator=_authenticator(world.runtime.store) if listener.submission else None,
    )


def _legacy(world: World, listener: Listener, gate: ConnectionGate) -> LegacyGatewaySMTP:
    """The old server, built with the arguments GatewayServer._protocol gave it."""
    settings = _settings(world, listener)
    handler = GatewayHandler(world.runtime, submission=listener.submission)
    authenticator = settings.authenticator
    return LegacyGatewaySMTP(
        AiosmtpdHooks(handler),
        gate=gate,
        session_timeout=settings.session_timeout,
        hostname=HOSTNAME,
        ident="dsguard ESMTP",
        tls_context=settings.tls_context,
        require_starttls=settings.require_starttls,
        auth_required=settings.auth_required,
        auth_require_tls=True,
        authenticator=legacy_authenticator(authenticator) if authenticator else None,
        data_size_limit=MAX_BYTES,
        timeout=settings.idle_timeout,
        decode_data=False,
        enable_SMTPUTF8=True,
        command_call_limit={
            "MAIL": 1_000_000,
            "RCPT": 10_000_000,
            "DATA": 1_000_000,
            "RSET": 1_000_000,
            "*": MAX_COMMANDS,
        },
    )


def _new(world: World, listener: Listener, gate: ConnectionGate) -> SmtpSession:
    handler = GatewayHandler(world.runtime, submission=listener.submission)
    return SmtpSession(handler, _settings(world, listener), gate)


# -- the client -----------------------------------------------------------------------------------

STARTTLS = "starttls"  # a step: the client starts TLS on the connection
Step = tuple[bytes, int] | str


async def _reply(reader: asyncio.StreamReader) -> bytes:
    out = b""
    try:
        while True:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            out += line
            if not line.endswith(b"\n"):
                return out + b"<eof>"
            if len(line) < 4 or line[3:4] != b"-":
                return out
    except TimeoutError:
        return out + b"<timeout>"
    except ConnectionError:
        return out + b"<reset>"


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    except TimeoutError:
        return b"<timeout>"
    except ConnectionError:
        return b"<reset>"


_CLOSING = (b"221 ", b"421 ", b"502 5.5.1 Too many")


async def _transcript(port: int, steps: Sequence[Step], client_tls: ssl.SSLContext) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await _reply(reader)]
    for step in steps:
        if step == STARTTLS:
            await writer.start_tls(client_tls, server_hostname=HOSTNAME)
            continue
        assert isinstance(step, tuple)
        data, count = step
        writer.write(data)
        await writer.drain()
        for _ in range(count):
            replies.append(await _reply(reader))
    if not replies[-1].startswith(_CLOSING):
        writer.write(b"QUIT\r\n")
        await writer.drain()
    replies.append(await _until_closed(reader))
    writer.close()
    return [re.sub(rb"queued as [0-9a-f]+", b"queued as <id>", r) for r in replies]


async def _serve(
    world: World, listener: Listener, steps: Sequence[Step], *, legacy: bool
) -> list[bytes]:
    gate = ConnectionGate(100, 100)
    make = _legacy if legacy else _new
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: make(world, listener, gate), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        return await _transcript(port, steps, world.client_tls)
    finally:
        server.close()


def both(world: World, steps: Sequence[Step], listener: Listener = Listener()) -> list[bytes]:
    """The transcript of ``steps``, asserted equal on both servers."""

    async def run() -> tuple[list[bytes], list[bytes]]:
        old = await _serve(world, listener, steps, legacy=True)
        new = await _serve(world, listener, steps, legacy=False)
        return old, new

    old, new = asyncio.run(run())
    # The one intended difference in ordinary transcripts: EHLO also offers PIPELINING.
    assert [reply.replace(b"250-PIPELINING\r\n", b"", 1) for reply in new] == old
    return new


def new_only(world: World, steps: Sequence[Step], listener: Listener = Listener()) -> list[bytes]:
    async def run() -> list[bytes]:
        return await _serve(world, listener, steps, legacy=False)

    return asyncio.run(run())


# -- the cases ------------------------------------------------------------------------------------

EHLO = (b"EHLO mx.example.org\r\n", 1)
HELO = (b"HELO mx.example.org\r\n", 1)


def _msg(tag: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        b"From: news@example.org\r\nTo: ann@contoso.com\r\nSubject: " + tag.encode() + b"\r\n"
        b"Message-ID: <" + tag.encode() + b"@example.org>\r\n\r\n" + body
    )


def _plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


INBOUND = [
    EHLO,
    (b"MAIL FROM:<news@example.org>\r\n", 1),
    (b"RCPT TO:<ann@contoso.com>\r\n", 1),
]

CASES: dict[str, list[Step]] = {
    "ordinary message": [
        *INBOUND,
        (b"DATA\r\n", 1),
        (_msg("one") + b".\r\n", 1),
    ],
    "helo session": [
        HELO,
        (b"MAIL FROM:<news@example.org> SIZE=10\r\n", 1),  # no parameters without EHLO
        (b"MAIL FROM:<news@example.org>\r\n", 1),
        (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        (b"DATA\r\n", 1),
        (_msg("helo") + b".\r\n", 1),
        (b"HELP MAIL\r\n", 1),
    ],
    "direct send spoof": [
        EHLO,
        (b"MAIL FROM:<joe@contoso.com>\r\n", 1),
        (b"RCPT TO:<joe@contoso.com>\r\n", 1),
        (b"DATA\r\n", 1),
    ],
    "out of order": [
        (b"MAIL FROM:<news@example.org>\r\n", 1),
        (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        (b"DATA\r\n", 1),
        EHLO,
        (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        (b"DATA\r\n", 1),
        (b"MAIL FROM:<news@example.org>\r\n", 1),
        (b"DATA\r\n", 1),
        (b"MAIL FROM:<other@example.org>\r\n", 1),
        (b"RSET\r\n", 1),
        (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        (b"RSET now\r\n", 1),
        (b"DATA now\r\n", 1),
    ],
    "garbage": [
        (b"\r\n", 1),
        (b"   \r\n", 1),
        (b"\xff\xfe\r\n", 1),
        (b"\x00\x00\r\n", 1),
        (b"\r\r\r\n", 1),
        (b"ehlo lower.example.org\r\n", 1),
        (b"NOOP \x00 junk \xff\r\n", 1),
        (b"QUIT now\r\n", 1),
        (b"noop\n", 1),
        (b"NOOP\r\r\n", 1),
        (b"\tNOOP\r\n", 1),
    ],
    "nul command": [EHLO, (b"NO\x00OP\r\n", 1), (b"\x00\r\n", 1), (b"MAIL\x00FROM:<a@b>\r\n", 1)],
    "overlong lines": [
        EHLO,
        (b"NOOP " + b"x" * 600 + b"\r\n", 1),
        (b"NOOP " + b"x" * 5000 + b"\r\n", 1),
        (b"NOOP " + b"x" * 994 + b"\r\n", 1),  # 1001 bytes with CRLF
        (b"NOOP " + b"x" * 995 + b"\r\n", 1),
        (b"NOOP " + b"x" * 996 + b"\r\n", 1),
        (b"NOOP " + b"x" * 502 + b"\r\n", 1),  # 507 + 5 = 512 without CRLF
        (b"NOOP " + b"x" * 503 + b"\r\n", 1),
        (b"MAIL FROM:<" + b"a" * 520 + b"@example.org>\r\n", 1),  # fits 548 after EHLO
        (b"MAIL FROM:<" + b"a" * 540 + b"@example.org>\r\n", 1),
        (b"RSET\r\n", 1),
        (b"x" * 3000 + b"\r\nNOOP\r\n", 2),
        (b"x" * 100_000 + b"\nNOOP\n", 2),
    ],
    "overlong MAIL after HELO": [
        HELO,
        (b"MAIL FROM:<" + b"a" * 520 + b"@example.org>\r\n", 1),
        (b"NOOP\r\n", 1),
    ],
    "pipelined burst": [
        (
            b"EHLO mx.example.org\r\nMAIL FROM:<news@example.org>\r\n"
            b"RCPT TO:<ann@contoso.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n",
            5,
        ),
        (
            _msg("burst-1") + b".\r\nMAIL FROM:<news@example.org>\r\nRCPT TO:<cy@contoso.com>\r\n"
            b"RCPT TO:<nobody@example.net>\r\nDATA\r\n" + _msg("burst-2") + b".\r\nNOOP\r\n",
            6,
        ),
    ],
    "pipelined with refusals": [
        (
            b"EHLO mx.example.org\r\nMAIL FROM:<joe@contoso.com>\r\nRCPT TO:<joe@contoso.com>\r\n"
            b"RCPT TO:<ann@contoso.com>\r\nDATA\r\nRSET\r\nNOOP\r\n",
            7,
        ),
    ],
    "recipient limit and nested MAIL": [
        *INBOUND,
        (b"MAIL FROM:<news@example.org>\r\n", 1),
        (b"RCPT TO:<b@contoso.com>\r\nRCPT TO:<c@contoso.com>\r\nRCPT TO:<d@contoso.com>\r\n", 3),
        (b"DATA\r\n", 1),
        (_msg("rcpts") + b".\r\n", 1),
    ],
    "relay tricks": [
        EHLO,
        (b"MAIL FROM:<news@example.org>\r\n", 1),
        (b"RCPT TO:<user%example.net@contoso.com>\r\n", 1),
        (b'RCPT TO:<"user@example.net"@contoso.com>\r\n', 1),
        (b"RCPT TO:<@a.example,@b.example:user@contoso.com>\r\n", 1),
        (b"RCPT TO:<example.net!user@contoso.com>\r\n", 1),
        (b"RCPT TO:<user@example.net>\r\n", 1),
        (b"RCPT TO:<user@contoso.com.example.net>\r\n", 1),
        (b"RCPT TO:<user@[127.0.0.1]>\r\n", 1),
        (b"RCPT TO:user@contoso.com\r\n", 1),
        (b"RCPT TO: <ann@contoso.com> (comment)\r\n", 1),
        (b"RCPT TO:<ann@contoso.com> NOTIFY=NEVER\r\n", 1),
        (b"RCPT TO:<>\r\n", 1),
        (b"RCPT TO:<\xc3\xa9@contoso.com>\r\n", 1),
        (b"RCPT TO:<a b@contoso.com>\r\n", 1),
        (b"RCPT TO:<ann@contoso.com\r\n", 1),
        (b"RCPT TO <ann@contoso.com>\r\n", 1),
        (b"RCPT\r\n", 1),
        (b"RCPT TO:\r\n", 1),
    ],
    "MAIL parameters": [
        EHLO,
        (b"MAIL FROM:<news@example.org> SIZE=abc\r\n", 1),
        (b"MAIL FROM:<news@example.org> SIZE=999999999\r\n", 1),
        (b"MAIL FROM:<news@example.org> SIZE\r\n", 1),
        (b"MAIL FROM:<news@example.org> SIZE=\r\n", 1),
        (b"MAIL FROM:<news@example.org> BODY=BINARYMIME\r\n", 1),
        (b"MAIL FROM:<news@example.org> BODY\r\n", 1),
        (b"MAIL FROM:<news@example.org> SMTPUTF8=yes\r\n", 1),
        (b"MAIL FROM:<news@example.org> X-FOO=1\r\n", 1),
        (b"MAIL FROM:<news@example.org> A-B=1\r\n", 1),
        (b"MAIL FROM:<>\r\n", 1),
        (b"RSET\r\n", 1),
        (b"mail from:<news@example.org> size=100 body=8bitmime smtputf8\r\n", 1),
        (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        (b"DATA\r\n", 1),
        (_msg("params") + b".\r\n", 1),
        (b"MAIL FROM:news@example.org\r\n", 1),
        (b"RSET\r\n", 1),
        (b"MAIL FROM:<a@b> <c@d>\r\n", 1),
        (b"MAIL FROM:\r\n", 1),
        (b"MAIL TO:<a@b>\r\n", 1),
        (b"MAIL\r\n", 1),
    ],
    "other commands": [
        (b"NOOP\r\n", 1),
        (b"NOOP anything at all\r\n", 1),
        (b"HELP\r\n", 1),
        (b"HELP MAIL\r\n", 1),
        (b"HELP EXPN\r\n", 1),
        (b"HELP FOO\r\n", 1),
        (b"HELP starttls\r\n", 1),
        (b"VRFY\r\n", 1),
        (b"VRFY <ann@contoso.com>\r\n", 1),
        (b"VRFY ann\r\n", 1),
        (b"VRFY <<>\r\n", 1),
        (b"EXPN staff\r\n", 1),
        (b"EXPN\r\n", 1),
        (b"STARTTLS\r\n", 1),
        (b"STARTTLS now\r\n", 1),
        (b"HELO\r\n", 1),
        (b"EHLO\r\n", 1),
        EHLO,
        (b"HELP MAIL\r\n", 1),
        (b"HELP RCPT\r\n", 1),
        (b"EHLO again.example.org\r\n", 1),
        (b"HELO back.example.org\r\n", 1),
    ],
    "unknown commands until dropped": [
        EHLO,
        (b"FOO\r\n", 1),
        (b"NOOP\r\n", 1),
        (b"BAR baz\r\n", 1),
        (b"XCLIENT ADDR=1.2.3.4\r\n", 1),
        (b"BDAT 10 LAST\r\n", 1),
        (b"TURN\r\n", 1),
    ],
    "unknown commands pipelined": [(b"A\r\nB\r\nC\r\nD\r\nE\r\nF\r\nNOOP\r\n", 5)],
    "command flood": [EHLO, (b"NOOP\r\n" * (MAX_COMMANDS + 1), MAX_COMMANDS + 1)],
    "flood of one command among others": [
        EHLO,
        (b"VRFY <a@b>\r\n" * MAX_COMMANDS, MAX_COMMANDS),
        (b"NOOP\r\n", 1),
        (b"VRFY <a@b>\r\n", 1),
    ],
    "AUTH without TLS": [
        (b"AUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n", 1),
        HELO,
        (b"AUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n", 1),
        EHLO,
        (b"AUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n", 1),
        (b"AUTH LOGIN\r\n", 1),
        (b"AUTH\r\n", 1),
    ],
    "DATA limits and smuggling": [
        *INBOUND,
        (b"DATA\r\n", 1),
        (b"a" * 2000 + b"\r\n.\r\n", 1),
        (b"MAIL FROM:<news@example.org>\r\nRCPT TO:<ann@contoso.com>\r\nDATA\r\n", 3),
        ((b"s" * 98 + b"\r\n") * 250 + b".\r\n", 1),
        (b"MAIL FROM:<news@example.org>\r\nRCPT TO:<ann@contoso.com>\r\nDATA\r\n", 3),
        (_msg("smuggle") + b"Bye\n.\nMAIL FROM:<joe@contoso.com>\r\n.\r\n", 1),
        (b"NOOP\r\n", 1),
        (b"MAIL FROM:<news@example.org>\r\nRCPT TO:<ann@contoso.com>\r\nDATA\r\n", 3),
        (_msg("dots") + b"..leading dot\r\n.\r\nRSET\r\n", 2),
        (b"MAIL FROM:<news@example.org>\r\nRCPT TO:<ann@contoso.com>\r\nDATA\r\n.\r\n", 4),
    ],
    "message data before the 354": [
        (
            b"EHLO mx.example.org\r\nMAIL FROM:<news@example.org>\r\nRCPT TO:<ann@contoso.com>\r\n"
            b"DATA\r\n" + _msg("early") + b".\r\nQUIT\r\n",
            6,
        )
    ],
    "non-ASCII": [
        EHLO,
        (b"MAIL FROM:<j\xc3\xb6e@example.org> SMTPUTF8\r\n", 1),
        (b"RCPT TO:<\xc3\xa5sa@contoso.com>\r\n", 1),
        (b"DATA\r\n", 1),
        (_msg("utf8", "H\u00e9llo\r\n".encode()) + b".\r\n", 1),
        (b"N\xc3\x96OP\r\n", 1),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_replies_as_the_old_server(world: World, name: str) -> None:
    both(world, CASES[name])


def test_the_cases_say_something(world: World) -> None:
    """A transcript check of one case, so the comparisons cannot pass on two empty lists."""
    replies = both(world, CASES["ordinary message"])
    assert replies[0] == b"220 gw.contoso.com dsguard ESMTP\r\n"
    assert replies[1] == (
        b"250-gw.contoso.com\r\n250-SIZE 20000\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
        b"250-SMTPUTF8\r\n250 HELP\r\n"
    )
    assert replies[2:6] == [
        b"250 2.1.0 OK\r\n",
        b"250 2.1.5 OK\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
        b"250 2.0.0 OK: queued as <id>\r\n",
    ]
    assert replies[6] == b"221 Bye\r\n"


# -- TLS and AUTH -----------------------------------------------------------------------------------

MX_TLS = Listener(tls=True)
SUBMISSION = Listener(submission=True, tls=True)
STARTTLS_STEP = (b"STARTTLS\r\n", 1)

TLS_CASES: dict[str, tuple[Listener, list[Step]]] = {
    "mx starttls": (
        MX_TLS,
        [
            EHLO,
            (b"MAIL FROM:<news@example.org>\r\n", 1),
            STARTTLS_STEP,
            STARTTLS,
            (b"RCPT TO:<ann@contoso.com>\r\n", 1),  # the transaction did not survive TLS
            EHLO,
            (b"AUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n", 1),
            (b"MAIL FROM:<news@example.org>\r\nRCPT TO:<ann@contoso.com>\r\nDATA\r\n", 3),
            (_msg("tls") + b".\r\n", 1),
            (b"HELP\r\n", 1),
        ],
    ),
    "mx starttls before EHLO": (MX_TLS, [STARTTLS_STEP, STARTTLS, EHLO, (b"NOOP\r\n", 1)]),
    "starttls injection": (
        MX_TLS,
        [
            EHLO,
            # RFC 3207 section 4.2: these must not be executed, before or after the handshake.
            (b"STARTTLS\r\nMAIL FROM:<joe@contoso.com>\r\nRCPT TO:<joe@contoso.com>\r\n", 1),
            STARTTLS,
            (b"NOOP\r\n", 1),
            EHLO,
            (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        ],
    ),
    "submission before TLS": (
        SUBMISSION,
        [
            EHLO,
            (b"AUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n", 1),
            (b"MAIL FROM:<alice@contoso.com>\r\n", 1),
            HELO,
            (b"FOO\r\nBAR\r\nBAZ\r\nQUX\r\nQUUX\r\nCORGE\r\n", 6),
            (b"HELP\r\nVRFY a\r\nEXPN a\r\nRSET\r\nDATA\r\n", 5),
            (b"NOOP\r\n", 1),
        ],
    ),
    "submission auth plain": (
        SUBMISSION,
        [
            STARTTLS_STEP,
            STARTTLS,
            (b"MAIL FROM:<alice@contoso.com>\r\n", 1),
            EHLO,
            (b"MAIL FROM:<alice@contoso.com>\r\n", 1),
            (b"HELP\r\n", 1),
            (b"VRFY alice\r\n", 1),
            (b"AUTH\r\n", 1),
            (b"AUTH plain x\r\n", 1),
            (b"AUTH CRAM-MD5\r\n", 1),
            (b"AUTH PLAIN a b\r\n", 1),
            (b"AUTH PLAIN !!!\r\n", 1),
            (b"AUTH PLAIN =\r\n", 1),
            (b"AUTH PLAIN " + _b64("no-nul") + b"\r\n", 1),
            (b"AUTH PLAIN " + _plain(ALICE, "wrong") + b"\r\n", 1),
            (b"AUTH PLAIN\r\n", 1),
            (b"*\r\n", 1),
            (b"AUTH PLAIN\r\n", 1),
            (b"not base64!\r\n", 1),
            (b"AUTH PLAIN\r\n", 1),
            (_plain(ALICE, PASSWORD) + b"\r\n", 1),
            (b"AUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n", 1),
            (b"MAIL FROM:<bob@contoso.com>\r\n", 1),
            (b"MAIL FROM:<alice@contoso.com>\r\n", 1),
            (b"RCPT TO:<bob@example.net>\r\n", 1),
            (b"DATA\r\n", 1),
            (_msg("submitted") + b".\r\n", 1),
        ],
    ),
    "submission auth login": (
        SUBMISSION,
        [
            STARTTLS_STEP,
            STARTTLS,
            EHLO,
            (b"AUTH LOGIN\r\n", 1),
            (_b64(ALICE) + b"\r\n", 1),
            (b"*\r\n", 1),
            (b"AUTH LOGIN " + _b64(ALICE) + b"\r\n", 1),
            (_b64("wrong") + b"\r\n", 1),
            (b"AUTH LOGIN ###\r\n", 1),
            (b"AUTH LOGIN\r\n", 1),
            (_b64(ALICE) + b"\r\n", 1),
            (_b64(PASSWORD) + b"\r\n", 1),
            (b"MAIL FROM:<alice@contoso.com>\r\n", 1),
        ],
    ),
    "submission pipelined auth": (
        SUBMISSION,
        [
            STARTTLS_STEP,
            STARTTLS,
            (
                b"EHLO laptop.contoso.com\r\nAUTH PLAIN " + _plain(ALICE, PASSWORD) + b"\r\n"
                b"MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
                5,
            ),
            (_msg("pipelined-auth") + b".\r\nQUIT\r\n", 2),
        ],
    ),
}


@pytest.mark.parametrize("name", list(TLS_CASES))
def test_same_replies_over_tls(world: World, name: str) -> None:
    listener, steps = TLS_CASES[name]
    both(world, steps, listener)


def test_starttls_injection_is_not_executed(world: World) -> None:
    listener, steps = TLS_CASES["starttls injection"]
    replies = new_only(world, steps, listener)
    assert replies[2] == b"220 Ready to start TLS\r\n"
    assert replies[3] == b"250 OK\r\n"  # the NOOP sent over TLS, not the injected MAIL/RCPT
    assert replies[5] == b"503 Error: need MAIL command\r\n"


def test_auth_failures_are_throttled(world: World) -> None:
    steps: list[Step] = [STARTTLS_STEP, STARTTLS, EHLO]
    steps += [(b"AUTH PLAIN " + _plain(ALICE, f"guess-{i}") + b"\r\n", 1) for i in range(4)]
    replies = new_only(world, steps, Listener(submission=True, tls=True))
    assert replies[3:6] == [b"535 5.7.8 Authentication credentials invalid\r\n"] * 3
    assert replies[6] == b"454 4.7.0 throttled\r\n"


# -- intended differences (see smtpserver's docstring) -----------------------------------------------


def test_vrfy_with_bytes_that_are_not_utf8(world: World) -> None:
    # aiosmtpd could not encode its own reply and answered 451.
    replies = new_only(world, [(b"VRFY <<\xff\xfe>\r\n", 1)])
    assert replies[1] == b"502 Could not VRFY <<??>\r\n"


def test_addresses_with_control_characters_are_malformed(world: World) -> None:
    # aiosmtpd's RFC 5322 parse took them: MAIL FROM:<a\x00b@example.org> got 250.
    steps: list[Step] = [EHLO]
    steps += [
        (b"MAIL FROM:<a\x00b@example.org>\r\n", 1),
        (b'MAIL FROM:<"a\x7fb"@example.org>\r\n', 1),
        (b'MAIL FROM:<"a\tb"@example.org>\r\n', 1),
        (b"MAIL FROM:<news@example.org>\r\n", 1),
        (b'RCPT TO:<"ann\x01"@contoso.com>\r\n', 1),
        (b"RCPT TO:<ann@contoso.com>\r\n", 1),
        ('RCPT TO:<"b\u0085"@contoso.com>\r\n'.encode(), 1),
        ("RCPT TO:<c\u2028d@contoso.com>\r\n".encode(), 1),
    ]
    replies = new_only(world, steps)
    malformed = b"553 5.1.3 Error: malformed address\r\n"
    assert replies[2:5] == [malformed] * 3
    assert replies[5].startswith(b"250 ") and replies[7].startswith(b"250 ")
    assert replies[6] == malformed
    assert replies[8:10] == [malformed, malformed]  # U+0085 (C1) and U+2028


def test_size_takes_ascii_digits_only(world: World) -> None:
    replies = new_only(world, [EHLO, ("MAIL FROM:<a@example.org> SIZE=\u00b2\r\n".encode(), 1)])
    assert replies[2] == b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"


def test_mail_line_limit_does_not_drift(world: World) -> None:
    line = b"MAIL FROM:<" + b"a" * 560 + b"@example.org>\r\n"  # 584 bytes: over 548
    replies = new_only(world, [EHLO, EHLO, (line, 1)])
    assert replies[3] == b"500 Command line too long\r\n"


def test_starttls_inside_tls(world: World) -> None:
    replies = new_only(world, [STARTTLS_STEP, STARTTLS, STARTTLS_STEP, (b"NOOP\r\n", 1)], MX_TLS)
    assert replies[2:4] == [b"554 5.5.1 Error: TLS already active\r\n", b"250 OK\r\n"]


def test_overlong_auth_response(world: World) -> None:
    steps: list[Step] = [STARTTLS_STEP, STARTTLS, EHLO, (b"AUTH PLAIN\r\n", 1)]
    steps += [(b"A" * 5000 + b"\r\n", 1), (b"NOOP\r\n", 1)]
    replies = new_only(world, steps, SUBMISSION)
    assert replies[4:6] == [
        b"500 5.5.6 Authentication Exchange line is too long\r\n",
        b"250 OK\r\n",
    ]


class _Faulty(GatewayHandler):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raise RuntimeError("disk on fire")


def test_a_fault_at_the_end_of_data_ends_the_transaction(world: World) -> None:
    async def run() -> list[bytes]:
        gate = ConnectionGate(10, 10)
        settings = _settings(world, Listener())
        handler = _Faulty(world.runtime)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SmtpSession(handler, settings, gate), "127.0.0.1", 0
        )
        try:
            steps: list[Step] = [*INBOUND, (b"DATA\r\n", 1), (_msg("fault") + b".\r\n", 1)]
            steps.append((b"MAIL FROM:<news@example.org>\r\n", 1))
            return await _transcript(server.sockets[0].getsockname()[1], steps, world.client_tls)
        finally:
            server.close()

    replies = asyncio.run(run())
    assert replies[5] == b"451 4.3.0 Temporary local problem, please try again later\r\n"
    assert replies[6] == b"250 2.1.0 OK\r\n"  # aiosmtpd: 503 nested MAIL command


class _ForgetsBadly(GatewayHandler):
    def forget(self, session: Any) -> None:
        raise RuntimeError("bookkeeping on fire")


def _with_handler(world: World, listener: Listener, handler: Any, steps: list[Step]) -> list[bytes]:
    async def run() -> list[bytes]:
        gate = ConnectionGate(10, 10)
        settings = _settings(world, listener)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SmtpSession(handler, settings, gate), "127.0.0.1", 0
        )
        try:
            return await _transcript(server.sockets[0].getsockname()[1], steps, world.client_tls)
        finally:
            server.close()

    return asyncio.run(run())


def test_a_fault_setting_up_the_tls_session_is_a_421_not_a_silent_session(world: World) -> None:
    handler = _ForgetsBadly(world.runtime, submission=False)
    replies = _with_handler(world, MX_TLS, handler, [STARTTLS_STEP, STARTTLS, EHLO])
    assert replies[1].startswith(b"220 ")
    assert replies[2].startswith(b"421 4.3.0 Temporary local problem")


def test_a_fault_while_reading_the_data_is_a_451_and_the_rest_is_not_read_as_commands(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, chunk: bytes) -> bool:
        raise RuntimeError("scanner on fire")

    monkeypatch.setattr(smtpdata.DataScanner, "feed", broken)
    steps: list[Step] = [*INBOUND, (b"DATA\r\n", 1), (b"RSET\r\nNOOP\r\n.\r\n", 1)]
    replies = _with_handler(world, Listener(), GatewayHandler(world.runtime), steps)
    assert replies[5].startswith(b"451 4.3.0 Temporary local problem")
    # Then closed: no reply to "RSET" and "NOOP" (message data) nor to the QUIT sent after.
    assert replies[6:] == [b""]


# -- limits of the new server over real sockets -------------------------------------------------------


async def _with_server(world: World, listener: Listener, gate: ConnectionGate, body: Any) -> Any:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _new(world, listener, gate), "127.0.0.1", 0)
    try:
        return await body(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return reader, writer, await _reply(reader)


def test_a_silent_client_gets_421_then_is_closed(world: World) -> None:
    async def body(port: int) -> list[bytes]:
        reader, writer, greeting = await _connect(port)
        writer.write(b"EHLO quiet.example.org\r\n")
        replies = [
            greeting,
            await _reply(reader),
            await _reply(reader),
            await _until_closed(reader),
        ]
        writer.close()
        return replies

    replies = asyncio.run(
        _with_server(world, Listener(idle_timeout=0.3), ConnectionGate(5, 5), body)
    )
    assert replies[2:] == [b"421 4.4.2 Idle timeout, closing connection\r\n", b""]


def test_the_session_time_limit_holds_for_a_busy_client(world: World) -> None:
    async def body(port: int) -> list[bytes]:
        reader, writer, _greeting = await _connect(port)
        replies: list[bytes] = []
        while not replies or replies[-1] == b"250 OK\r\n":
            writer.write(b"NOOP\r\n")
            replies.append(await _reply(reader))
            await asyncio.sleep(0.05)
        replies.append(await _until_closed(reader))
        writer.close()
        return replies

    listener = Listener(idle_timeout=0.2, session_timeout=0.6)
    replies = asyncio.run(_with_server(world, listener, ConnectionGate(5, 5), body))
    assert replies[-2:] == [b"421 4.4.2 Session time limit reached, closing connection\r\n", b""]
    assert len(replies) > 5  # the NOOPs kept the idle timer from firing first


def test_sessions_over_the_limit_get_421_and_a_freed_slot_is_free_again(world: World) -> None:
    gate = ConnectionGate(max_sessions=5, max_per_ip=1)

    async def body(port: int) -> list[bytes]:
        first_reader, first, greeting = await _connect(port)
        second_reader, second, refused = await _connect(port)
        closed = await _until_closed(second_reader)
        second.close()
        first.write(b"QUIT\r\n")
        bye = await _reply(first_reader)
        await _until_closed(first_reader)
        first.close()
        while gate.active:  # the server sees the QUIT's close a moment later
            await asyncio.sleep(0.01)
        _reader, third, again = await _connect(port)
        third.close()
        return [greeting, refused, closed, bye, again]

    replies = asyncio.run(_with_server(world, Listener(), gate, body))
    assert replies == [
        b"220 gw.contoso.com dsguard ESMTP\r\n",
        b"421 4.7.0 Too many connections, try again later\r\n",
        b"",
        b"221 Bye\r\n",
        b"220 gw.contoso.com dsguard ESMTP\r\n",
    ]
    assert gate.admitted == 2


def test_shutdown_tells_the_client_and_in_transaction_says_when_to_wait(world: World) -> None:
    gate = ConnectionGate(5, 5)

    async def body(port: int) -> tuple[list[bool], list[bytes]]:
        reader, writer, _greeting = await _connect(port)
        writer.write(b"EHLO mx.example.org\r\n")
        await _reply(reader)
        [session] = gate.sessions
        states = [session.in_transaction]
        writer.write(b"MAIL FROM:<news@example.org>\r\n")
        await _reply(reader)
        states.append(session.in_transaction)
        session.shutdown()
        session.shutdown()  # once only
        replies = [await _reply(reader), await _until_closed(reader)]
        writer.close()
        return states, replies

    states, replies = asyncio.run(_with_server(world, Listener(), gate, body))
    assert states == [False, True]
    assert replies == [b"421 4.3.2 Service shutting down, try again later\r\n", b""]


def test_an_endless_line_is_not_kept_in_memory(world: World) -> None:
    gate = ConnectionGate(5, 5)

    async def body(port: int) -> tuple[int, list[bytes]]:
        reader, writer, _greeting = await _connect(port)
        [session] = gate.sessions
        most = 0
        for _ in range(200):
            writer.write(b"x" * 10_000)
            await writer.drain()
            await asyncio.sleep(0)
            most = max(most, len(session._buf))
        writer.write(b"\r\nNOOP\r\n")
        replies = [await _reply(reader), await _reply(reader)]
        writer.close()
        return most, replies

    most, replies = asyncio.run(_with_server(world, Listener(), gate, body))
    assert most <= 1001 + 10_000
    assert replies == [b"500 Command line too long\r\n", b"250 OK\r\n"]


@pytest.mark.parametrize("when", ["after the data", "in the data", "after STARTTLS"])
def test_a_client_that_leaves_mid_work_leaves_nothing_behind(world: World, when: str) -> None:
    gate = ConnectionGate(5, 5)
    errors: list[dict[str, Any]] = []

    async def body(port: int) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        _reader, writer, _greeting = await _connect(port)
        if when == "after STARTTLS":
            writer.write(b"STARTTLS\r\n")
        else:
            writer.write(
                b"EHLO mx.example.org\r\nMAIL FROM:<news@example.org>\r\n"
                b"RCPT TO:<ann@contoso.com>\r\nDATA\r\n"
                + _msg("gone")
                + (b".\r\n" if when == "after the data" else b"")
            )
        await writer.drain()
        writer.transport.abort()  # no QUIT, no reading
        while gate.sessions:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # a handler still finishing would answer into the void now

    asyncio.run(_with_server(world, Listener(tls=True), gate, body))
    assert errors == []
    assert not gate.active


def test_message_data_keeps_the_idle_timer_from_firing(world: World) -> None:
    # aiosmtpd counted idle time from the DATA command: a message sent slowly for longer than
    # the idle timeout was cut off with 421 although the client never stopped sending.
    async def body(port: int) -> bytes:
        reader, writer, _greeting = await _connect(port)
        writer.write(
            b"EHLO mx.example.org\r\nMAIL FROM:<news@example.org>\r\n"
            b"RCPT TO:<ann@contoso.com>\r\nDATA\r\n"
        )
        for _ in range(4):
            await _reply(reader)
        writer.write(_msg("slow"))
        for _ in range(8):  # 1.2 s of data in all, idle timeout 0.4 s
            await asyncio.sleep(0.15)
            writer.write(b"more text\r\n")
        writer.write(b".\r\n")
        reply = await _reply(reader)
        writer.close()
        return reply

    listener = Listener(idle_timeout=0.4)
    reply = asyncio.run(_with_server(world, listener, ConnectionGate(5, 5), body))
    assert reply.startswith(b"250 2.0.0 OK: queued as ")
