"""authenticate() end to end against a real nsd on loopback, and the header it writes."""

from __future__ import annotations

import base64

import authres  # type: ignore[import-untyped]
import dkim as dkimpy  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer, txt

from dsguard.auth.dkim import DkimResult
from dsguard.auth.dmarc import DmarcResult
from dsguard.auth.live import LiveAuth, authenticate, authentication_results_header
from dsguard.auth.resolver import Resolver
from dsguard.auth.results import parse_authentication_results
from dsguard.auth.spf import SpfResult
from dsguard.auth.summary import AuthSummary, summarise

module_dns_server = dns_fixtures.module_dns_server

AUTHSERV = "mx.contoso.com"
EXTERNAL = "139.28.36.10"
PARTNER = "192.0.2.25"  # in contoso.com's SPF

_KEY = ed25519.Ed25519PrivateKey.generate()
SEED = base64.b64encode(
    _KEY.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
)
PUBLIC = base64.b64encode(
    _KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()

ZONES = {
    "contoso.com": [
        '@ 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        '_dmarc 300 IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@contoso.com"',
        f"s1._domainkey 300 IN TXT {txt('v=DKIM1; k=ed25519; p=' + PUBLIC)}",
    ],
    "example.org": ['mail 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"'],
}

MESSAGE = (
    b"From: Joe <joe@contoso.com>\r\n"
    b"To: joe@contoso.com\r\n"
    b"Subject: New Missed Fax-msg\r\n"
    b"\r\n"
    b"Listen Now\r\n"
)


@pytest.fixture(scope="module")
def server(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return module_dns_server(ZONES)


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


def signed(message: bytes = MESSAGE) -> bytes:
    header = dkimpy.sign(
        message, b"s1", b"contoso.com", SEED, signature_algorithm=b"ed25519-sha256"
    )
    return bytes(header) + message


def run(
    resolver: Resolver,
    message: bytes,
    ip: str,
    mail_from: str = "joe@contoso.com",
    helo: str = "mail.example.org",
    from_domain: str | None = "contoso.com",
) -> LiveAuth:
    return authenticate(
        message,
        client_ip=ip,
        helo=helo,
        mail_from=mail_from,
        header_from_domain=from_domain,
        resolver=resolver,
        authserv_id=AUTHSERV,
    )


def test_direct_send_spoof(resolver: Resolver) -> None:
    live = run(resolver, MESSAGE, EXTERNAL)
    assert (live.spf.result, live.dkim) == ("fail", ())
    assert live.dmarc is not None
    assert (live.dmarc.result, live.dmarc.disposition) == ("fail", "reject")
    summary = live.summary
    assert summary == AuthSummary(
        source=f"Authentication-Results ({AUTHSERV})",
        spf="fail",
        spf_domain="contoso.com",
        dkim=(),
        dmarc="fail",
        dmarc_from="contoso.com",
        dmarc_action="reject",
        compauth=None,
        evidence=summary.evidence,
    )
    assert summary.proof_for("contoso.com") is None  # nothing proves the own-domain From
    assert summary.evidence == (
        "mx.contoso.com; spf=fail smtp.mailfrom=contoso.com; dkim=none;"
        " dmarc=fail header.from=contoso.com policy.dmarc=reject"
    )


def test_signed_mail_from_an_authorised_host(resolver: Resolver) -> None:
    live = run(resolver, signed(), PARTNER)
    assert live.spf.result == "pass"
    assert live.dkim == (DkimResult("pass", "contoso.com", "s1", ""),)
    assert live.dmarc is not None and (live.dmarc.result, live.dmarc.aligned_by) == ("pass", "dkim")
    assert live.summary.dkim == (("pass", "contoso.com"),)
    assert live.summary.proof_for("contoso.com") == "dmarc=pass header.from=contoso.com"
    assert live.summary.evidence == authentication_results_header(AUTHSERV, live)


def test_header_round_trip_through_the_reader(resolver: Resolver) -> None:
    tampered = signed().replace(b"Listen Now", b"Listen Later")
    live = run(resolver, signed(tampered), EXTERNAL)  # one good signature above a broken one
    value = authentication_results_header(AUTHSERV, live)
    parsed = parse_authentication_results(value)
    assert parsed.authserv_id == AUTHSERV
    got = [(r.method, r.result, dict(r.props)) for r in parsed.results]
    assert got == [
        ("spf", "fail", {"smtp.mailfrom": "contoso.com"}),
        ("dkim", "pass", {"header.d": "contoso.com", "header.s": "s1"}),
        (
            "dkim",
            "fail",
            {"reason": "body hash mismatch", "header.d": "contoso.com", "header.s": "s1"},
        ),
        ("dmarc", "pass", {"header.from": "contoso.com"}),
    ]
    # authres (RFC 8601 syntax) reads the same clauses.
    strict = authres.AuthenticationResultsHeader.parse_value(value)
    assert [str(r) for r in strict.results] == [part.strip() for part in value.split(";")[1:]]
    # The engine's reader of trusted headers rebuilds the same summary.
    again = summarise([parsed], None)
    for field in ("source", "spf", "spf_domain", "dkim", "dmarc", "dmarc_from"):
        assert getattr(again, field) == getattr(live.summary, field), field


def test_null_sender_reports_the_helo_identity(resolver: Resolver) -> None:
    live = run(resolver, MESSAGE, PARTNER, mail_from="", helo="mail.example.org")
    assert (live.spf.result, live.spf.domain) == ("pass", "mail.example.org")
    parsed = parse_authentication_results(live.summary.evidence)
    assert parsed.results[0].props == (("smtp.helo", "mail.example.org"),)
    assert summarise([parsed], None).spf_domain == "mail.example.org"


def test_without_a_from_domain_dmarc_is_not_evaluated(resolver: Resolver) -> None:
    live = run(resolver, MESSAGE, PARTNER, from_domain=None)
    assert live.dmarc is None
    assert (live.summary.dmarc, live.summary.dmarc_action) == (None, None)
    assert "dmarc" not in live.summary.evidence


def test_hostile_values_cannot_add_results_to_the_header() -> None:
    evil = "x@y; dkim=pass header.d=contoso.com"
    live = LiveAuth(
        spf=SpfResult("fail", "contoso.com; spf=pass", evil),
        dkim=(DkimResult("permerror", "contoso.com; dkim=pass", "s (x", evil),),
        dmarc=DmarcResult("fail", "contoso.com", None, "reject", None),
        summary=AuthSummary(source="x"),
    )
    value = authentication_results_header("mx.contoso.com; dkim=pass", live)
    parsed = parse_authentication_results(value)
    assert parsed.authserv_id == "mx.contoso.comdkimpass"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "fail"), ("dkim", "permerror"), ("dmarc", "fail"),
    ]
    assert parsed.results[1].prop("header.d") is None  # not a domain: left out
    assert "@" not in value


def test_hostile_message_and_identities_do_not_raise(resolver: Resolver) -> None:
    live = run(
        resolver, b"\x00\xff" * 100, "not-an-ip", mail_from="<@@>", helo="", from_domain="a..b"
    )
    assert live.spf.result == "permerror"
    assert live.dmarc is not None and live.dmarc.result == "permerror"
    parse_authentication_results(live.summary.evidence)
