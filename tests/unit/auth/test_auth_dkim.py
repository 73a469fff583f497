"""DKIM verification with keys made here, published in a real nsd zone on loopback."""

from __future__ import annotations

import base64

import dkim as dkimpy  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer, txt

import dsguard.auth.dkim as dkim_module
from dsguard.auth.dkim import DkimResult, verify_dkim
from dsguard.auth.resolver import Resolver

module_dns_server = dns_fixtures.module_dns_server

MESSAGE = (
    b"From: Joe <joe@contoso.com>\r\n"
    b"To: Ann <ann@contoso.com>\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Date: Mon, 01 Jan 2024 09:00:00 +0000\r\n"
    b"Message-ID: <1@contoso.com>\r\n"
    b"\r\n"
    b"Hello Ann,\r\nthe numbers are attached.\r\n"
)


def _rsa() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(public).decode()


def _ed25519() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed), base64.b64encode(public).decode()


RSA_PRIVATE, RSA_PUBLIC = _rsa()
OTHER_PRIVATE, _OTHER_PUBLIC = _rsa()  # never published: its signatures cannot verify
ED_PRIVATE, ED_PUBLIC = _ed25519()

ZONES = {
    "contoso.com": [
        f"rsa._domainkey 300 IN TXT {txt('v=DKIM1; k=rsa; p=' + RSA_PUBLIC)}",
        f"ed._domainkey 300 IN TXT {txt('v=DKIM1; k=ed25519; p=' + ED_PUBLIC)}",
        # Exchange Online style: the selector is a CNAME into another zone.
        "selector1._domainkey 300 IN CNAME selector1-contoso-com._domainkey.example.net.",
        f"garbled._domainkey 300 IN TXT {txt('v=DKIM1; k=rsa; p=bm90IGEga2V5')}",
        f"revoked._domainkey 300 IN TXT {txt('v=DKIM1; k=rsa; p=')}",
    ],
    "example.net": [
        f"selector1-contoso-com._domainkey 300 IN TXT {txt('v=DKIM1; k=rsa; p=' + RSA_PUBLIC)}",
    ],
}


@pytest.fixture(scope="module")
def server(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return module_dns_server(ZONES, servfail_zones=["_domainkey.example.org"])


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


def sign(
    message: bytes,
    selector: str,
    domain: str = "contoso.com",
    key: bytes = RSA_PRIVATE,
    algorithm: bytes = b"rsa-sha256",
) -> bytes:
    header = dkimpy.sign(
        message, selector.encode(), domain.encode(), key, signature_algorithm=algorithm
    )
    return bytes(header) + message


def test_unsigned_message_has_no_results(resolver: Resolver) -> None:
    assert verify_dkim(MESSAGE, resolver) == []


def test_rsa_sha256_pass(resolver: Resolver) -> None:
    assert verify_dkim(sign(MESSAGE, "rsa"), resolver) == [
        DkimResult("pass", "contoso.com", "rsa", "")
    ]


def test_ed25519_sha256_pass(resolver: Resolver) -> None:
    signed = sign(MESSAGE, "ed", key=ED_PRIVATE, algorithm=b"ed25519-sha256")
    assert b"a=ed25519-sha256" in signed
    assert verify_dkim(signed, resolver) == [DkimResult("pass", "contoso.com", "ed", "")]


def test_key_behind_a_cname_passes(resolver: Resolver) -> None:
    [result] = verify_dkim(sign(MESSAGE, "selector1"), resolver)
    assert result.result == "pass"


KEYS = {"rsa": (RSA_PRIVATE, b"rsa-sha256"), "ed": (ED_PRIVATE, b"ed25519-sha256")}


@pytest.mark.parametrize("selector", sorted(KEYS))
def test_tampered_body_fails(resolver: Resolver, selector: str) -> None:
    key, algorithm = KEYS[selector]
    signed = sign(MESSAGE, selector, key=key, algorithm=algorithm)
    tampered = signed.replace(b"numbers are attached", b"numbers are at evil.example")
    [result] = verify_dkim(tampered, resolver)
    assert (result.result, result.reason) == ("fail", "body hash mismatch")


@pytest.mark.parametrize("selector", sorted(KEYS))
def test_tampered_signed_header_fails(resolver: Resolver, selector: str) -> None:
    key, algorithm = KEYS[selector]
    signed = sign(MESSAGE, selector, key=key, algorithm=algorithm)
    tampered = signed.replace(b"Subject: Quarterly numbers", b"Subject: Urgent wire transfer")
    [result] = verify_dkim(tampered, resolver)
    assert (result.result, result.reason) == ("fail", "signature did not verify")


def test_signature_by_an_unpublished_key_fails(resolver: Resolver) -> None:
    [result] = verify_dkim(sign(MESSAGE, "rsa", key=OTHER_PRIVATE), resolver)
    assert result.result == "fail"


def test_missing_key_is_permerror(resolver: Resolver) -> None:
    [result] = verify_dkim(sign(MESSAGE, "nokey"), resolver)
    assert result.result == "permerror"
    assert result.reason == "no key record at nokey._domainkey.contoso.com"


@pytest.mark.parametrize(
    ("selector", "why"),
    [
        ("garbled", "unusable key record at garbled._domainkey.contoso.com"),
        ("revoked", "key revoked at revoked._domainkey.contoso.com"),
    ],
)
def test_unusable_key_record_is_permerror(resolver: Resolver, selector: str, why: str) -> None:
    [result] = verify_dkim(sign(MESSAGE, selector), resolver)
    assert result.result == "permerror"
    assert result.reason.startswith(why)


def test_key_lookup_servfail_is_temperror(resolver: Resolver) -> None:
    [result] = verify_dkim(sign(MESSAGE, "any", domain="example.org"), resolver)
    assert (result.result, result.domain, result.selector) == ("temperror", "example.org", "any")
    assert "SERVFAIL" in result.reason


def test_several_signatures_are_reported_topmost_first(resolver: Resolver) -> None:
    good = sign(MESSAGE, "rsa")
    both = sign(good, "rsa", domain="contoso.com", key=OTHER_PRIVATE)  # a bad one on top
    results = verify_dkim(both, resolver)
    assert [(r.result, r.selector) for r in results] == [("fail", "rsa"), ("pass", "rsa")]


def test_signature_count_is_capped(resolver: Resolver) -> None:
    message = MESSAGE
    for _ in range(7):
        message = sign(message, "ed", key=ED_PRIVATE, algorithm=b"ed25519-sha256")
    assert len(verify_dkim(message, resolver)) == 5
    assert len(verify_dkim(message, resolver, max_signatures=2)) == 2


def test_oversized_message_is_not_verified(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = sign(MESSAGE, "rsa")
    monkeypatch.setattr(dkim_module, "MAX_MESSAGE_BYTES", len(signed) - 1)
    [result] = verify_dkim(signed, resolver)
    assert (result.result, result.domain, result.selector) == ("neutral", "contoso.com", "rsa")
    assert "not verified" in result.reason


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=contoso.com; s=rsa; h=from; bh=AAAA\r\n", "b="),
        (
            b"DKIM-Signature: v=1; a=rsa-md5; d=contoso.com; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
            "algorithm",
        ),
        (
            b"DKIM-Signature: v=1; a=rsa-sha256; d=contoso.com(.example.net; s=rsa; h=from;"
            b" bh=AAAA; b=AAAA\r\n",
            "d=",
        ),
        (b"DKIM-Signature: this is not a tag list\r\n", ""),
    ],
)
def test_malformed_signature_is_permerror(resolver: Resolver, signature: bytes, why: str) -> None:
    [result] = verify_dkim(signature + MESSAGE, resolver)
    assert result.result == "permerror"
    assert why in result.reason


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x00\xff\xfe garbage without a header",
        b" leading continuation line\r\nDKIM-Signature: v=1; d=contoso.com; s=rsa\r\n\r\nbody",
        b"DKIM-Signature: v=1; d=\xff\xfe; s=\x00\r\nFrom: a@contoso.com\r\n\r\nbody",
        b"DKIM-Signature:" + b"a" * 100_000 + b"\r\n\r\n",
    ],
)
def test_hostile_messages_do_not_raise(resolver: Resolver, message: bytes) -> None:
    results = verify_dkim(message, resolver)
    assert all(r.result in ("permerror", "fail", "neutral") for r in results)


def test_malformed_ed25519_key_is_permerror(
    module_dns_server: dns_fixtures.ServerFactory,
) -> None:
    short = base64.b64encode(b"\x01" * 31).decode()  # Ed25519 public keys are 32 octets
    server = module_dns_server(
        {"contoso.com": [f"ed._domainkey 300 IN TXT {txt('v=DKIM1; k=ed25519; p=' + short)}"]}
    )
    signed = sign(MESSAGE, "ed", key=ED_PRIVATE, algorithm=b"ed25519-sha256")
    [result] = verify_dkim(signed, Resolver([server.nameserver()]))
    assert result.result == "permerror"
    assert result.reason.startswith("unusable key record at ed._domainkey.contoso.com")


# -- one parse: dsguard's _parse must be dkimpy's rfc822_parse, byte for byte -------------------

_PIECES = [
    b"From: a@example.org", b"Subject: hi", b"DKIM-Signature: v=1; d=example.org",
    b" folded", b"\tfolded", b"", b"body line", b"From mbox", b"bad header", b"X:", b"\r",
    b":colon", b"x: \xff\xfe",
]


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.sampled_from(_PIECES) | st.binary(max_size=12), max_size=12),
    ends=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b""]), min_size=12, max_size=12),
)
def test_single_parse_is_dkimpys_parse(lines: list[bytes], ends: list[bytes]) -> None:
    message = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    try:
        expected: object = dkimpy.rfc822_parse(message)
    except Exception as exc:  # MessageFormatError, and dkimpy's IndexError on a leading fold
        expected = type(exc)
    try:
        got = dkim_module._parse(message)
    except Exception as exc:
        got = type(exc)
    if got is None:  # left to dkimpy: a message opening with an empty line
        assert message.startswith((b"\n", b"\r\n"))
        return
    assert got == expected
