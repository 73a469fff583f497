"""Every external test message (SpamScope mail-parser, Stalwart mail-parser: real spam,
phishing, malformed MIME) gets a result from the scanner, never an exception; and random bytes
or mutated messages fed to the loader and the engine never raise."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsguard.config import load_config
from dsguard.mail.source import LoadError, RawMessage, iter_messages
from dsguard.model import Level
from dsguard.scan import Scanner

DATA = Path(__file__).parents[1] / "data"
FILES = sorted(
    p
    for d in ("mail-parser-mails", "stalwart-mail-parser-eml")
    for p in (DATA / d).rglob("*")
    if p.is_file() and p.name not in ("README.md", "COPYING") and not p.name.startswith("LICENSE")
)
SCANNER = Scanner(load_config(overrides={"organization": {"accepted_domains": ["contoso.com"]}}))


def test_the_external_corpora_are_present() -> None:
    assert len(FILES) >= 120


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(DATA)) for p in FILES])
def test_every_external_message_gets_a_result(path: Path) -> None:
    items = list(iter_messages([str(path)], max_message_bytes=50 * 1024 * 1024))
    assert items
    for item in items:
        if isinstance(item, LoadError):
            assert "\n" not in item.problem
            continue
        result = SCANNER.scan_item(item)
        assert result.error is None, result.error
        assert result.verdict is not None


def test_real_bbva_spoof_through_onprem_exchange_is_reported() -> None:
    """mail_test_17: a real bbva.mx spoof sent from an OVH VPS through an on-prem Exchange."""
    (item,) = iter_messages(
        [str(DATA / "mail-parser-mails" / "mail_test_17")], max_message_bytes=1 << 26
    )
    assert isinstance(item, RawMessage)
    scanner = Scanner(load_config(overrides={"organization": {"accepted_domains": ["bbva.mx"]}}))
    verdict = scanner.scan(item).verdict
    assert verdict is not None
    assert "DS_SPOOF_HEADER_FROM" in verdict.finding_ids()
    assert verdict.level is not Level.CLEAN


SEEDS = [p.read_bytes() for p in (Path(__file__).parent / "cases").glob("*.eml")]


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 12)):
        op = rnd.randrange(6)
        pos = rnd.randrange(len(buf) + 1)
        if op == 0 and buf:
            del buf[pos : pos + rnd.randint(1, 400)]
        elif op == 1:
            buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 40)))
        elif op == 2:
            buf[pos:pos] = rnd.choice(
                [
                    b"\r\n\r\n",
                    b"\nFrom: <x@contoso.com>\n",
                    b"=?utf-8?B?PGE+?=",
                    b"\x00",
                    b"--",
                    b"Content-Type: multipart/mixed; boundary=x\r\n",
                    b"(((((((((",
                    b"<<<<",
                    b"\\",
                    b"\r\n ",
                ]
            )
        elif op == 3 and buf:
            buf[pos - 1 if pos else 0] ^= 1 << rnd.randrange(8)
        elif op == 4:
            buf = buf[:pos]
        else:
            buf[pos:pos] = b"A" * rnd.randint(1000, 20000)
    return bytes(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 10_000))
def test_mutated_corpus_messages_never_crash_the_engine(seed: int, which: int) -> None:
    data = _mutate(SEEDS[which % len(SEEDS)], random.Random(seed))
    raw = RawMessage(
        path="mutant.eml", index=None, kind="eml", data=data, size=len(data), truncated=False
    )
    result = SCANNER.scan_item(raw)
    assert result.error is None, result.error
    assert result.verdict is not None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4000))
def test_random_bytes_never_crash_the_engine(data: bytes) -> None:
    raw = RawMessage(
        path="random.eml", index=None, kind="eml", data=data, size=len(data), truncated=False
    )
    result = SCANNER.scan_item(raw)
    assert result.error is None, result.error
