"""Where the gateway's end-of-data analysis runs: on the event loop when nothing in it can
block (no DNS resolver or every answer cached, no attachment for the decoder child), else in a
worker thread; the reply and the spooled message are the same either way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsguard.config import load_config
from dsguard.engine import Engine
from dsguard.gateway import handler as handler_module
from dsguard.gateway.handler import GatewayHandler, Runtime
from dsguard.gateway.smtpserver import Envelope as SmtpEnvelope
from dsguard.gateway.smtpserver import Session
from dsguard.gateway.spool import Spool
from dsguard.store.db import Store, open_store

PLAIN = (
    b"From: news@example.org\r\nTo: joe@contoso.com\r\nSubject: plain\r\n"
    b"Message-ID: <p1@example.org>\r\n\r\nHello.\r\n"
)
WITH_PDF = (
    b"From: news@example.org\r\nTo: joe@contoso.com\r\nSubject: pdf\r\n"
    b"Message-ID: <p2@example.org>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
    b'filename="a.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n'
)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    config_file = tmp_path / "dsguard.toml"
    config_file.write_text(
        '[organization]\naccepted_domains = ["contoso.com"]\nreject_direct_send = "on"\n'
        f'[gateway]\nspool_dir = "{tmp_path / "spool"}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "db.sqlite3"}"\n',
        encoding="utf-8",
    )
    cfg = load_config(str(config_file))
    store: Store = open_store(cfg.storage.url)
    engine = Engine(cfg)
    try:
        yield Runtime(cfg, engine, None, Spool(tmp_path / "spool"), store)
    finally:
        engine.close()
        store.close()


def _deliver(
    runtime: Runtime, data: bytes, threads: list[str], *, alone: bool | None = None
) -> str:
    handler = GatewayHandler(runtime, alone=None if alone is None else (lambda: alone))
    session = Session(("192.0.2.7", 40000))
    session.host_name = "client.example.org"
    envelope = SmtpEnvelope()

    async def run() -> str:
        real = asyncio.to_thread

        async def counting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
            threads.append(getattr(func, "__name__", repr(func)))
            return await real(func, *args, **kwargs)

        handler_module.asyncio.to_thread = counting  # type: ignore[assignment]
        try:
            mail = handler.handle_MAIL(None, session, envelope, "news@example.org", [])  # type: ignore[arg-type]
            assert isinstance(mail, str) and mail.startswith("250")  # anonymous: no waiting
            rcpt = handler.handle_RCPT(None, session, envelope, "joe@contoso.com", [])  # type: ignore[arg-type]
            assert rcpt.startswith("250")
            envelope.original_content = data
            return await handler.handle_DATA(None, session, envelope)  # type: ignore[arg-type]
        finally:
            handler_module.asyncio.to_thread = real

    return asyncio.run(run())


def test_plain_mail_is_judged_on_the_loop_and_only_the_spool_write_is_threaded(
    runtime: Runtime,
) -> None:
    threads: list[str] = []
    reply = _deliver(runtime, PLAIN, threads)
    assert reply.startswith("250 2.0.0 OK: queued as ")
    assert threads == ["_spool"]
    [entry] = runtime.spool.list("new")
    stored = runtime.spool.read(entry)
    assert stored.endswith(PLAIN) and b"Received: from client.example.org" in stored


def test_the_only_session_writes_the_spool_on_the_loop(runtime: Runtime) -> None:
    # No other session waits on the loop: no thread hand-off for the fsync'd write.
    threads: list[str] = []
    reply = _deliver(runtime, PLAIN, threads, alone=True)
    assert reply.startswith("250 2.0.0 OK: queued as ")
    assert threads == []
    [entry] = runtime.spool.list("new")
    assert runtime.spool.read(entry).endswith(PLAIN)


def test_with_other_sessions_open_the_spool_write_never_blocks_the_loop(runtime: Runtime) -> None:
    threads: list[str] = []
    reply = _deliver(runtime, PLAIN, threads, alone=False)
    assert reply.startswith("250 2.0.0 OK: queued as ")
    assert threads == ["_spool"]


def test_mail_with_an_attachment_is_judged_in_a_thread(runtime: Runtime) -> None:
    threads: list[str] = []
    reply = _deliver(runtime, WITH_PDF, threads)
    assert reply.startswith("250 2.0.0 OK: queued as ")
    assert threads == ["_judge_and_spool"]
    [entry] = runtime.spool.list("new")
    assert runtime.spool.read(entry).endswith(WITH_PDF)
