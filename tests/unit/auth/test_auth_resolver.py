"""The resolver against a real nsd on loopback: answers, empty answers and the two error kinds."""

from __future__ import annotations

import socket
import time

import pytest
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer, txt

from dsguard.auth.resolver import DnsPermError, DnsTempError, Resolver

module_dns_server = dns_fixtures.module_dns_server

LONG_KEY = "v=DKIM1; k=rsa; p=" + "A" * 400 + "B" * 300  # over two 255-octet strings

ZONES = {
    "contoso.com": [
        '@ 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        '@ 300 IN TXT "google-site-verification=abc"',
        "@ 300 IN MX 20 mx2.contoso.com.",
        "@ 300 IN MX 10 mx1.contoso.com.",
        "mx1 300 IN A 192.0.2.25",
        "mx2 300 IN A 192.0.2.26",
        "mx2 300 IN AAAA 2001:db8::26",
        f"sel._domainkey 300 IN TXT {txt(LONG_KEY)}",
        "alias 300 IN CNAME target.example.net.",
        "loop1 300 IN CNAME loop2.contoso.com.",
        "loop2 300 IN CNAME loop1.contoso.com.",
    ],
    "example.net": ["target 300 IN A 198.51.100.9", 'target 300 IN TXT "at the target"'],
    "2.0.192.in-addr.arpa": ["25 300 IN PTR mx1.contoso.com."],
}


@pytest.fixture(scope="module")
def server(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return module_dns_server(ZONES, servfail_zones=["broken.example.org"])


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("127.0.0.1", "127.0.0.1:53"),
        ("127.0.0.1:5353", "127.0.0.1:5353"),
        ("::1", "[::1]:53"),
        ("[::1]:5300", "[::1]:5300"),
    ],
)
def test_nameserver_forms(item: str, expected: str) -> None:
    assert Resolver([item]).nameservers == (expected,)


@pytest.mark.parametrize("item", ["localhost", "127.0.0.1:0", "[::1", "ns.example.com:53", "1.2.3"])
def test_nameserver_must_be_an_address(item: str) -> None:
    # A name would need a lookup to find the resolver: refused, as is a bad port.
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the mistake
        Resolver([item])


def test_no_nameserver_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Resolver([])


def test_txt_records_one_string_per_record(resolver: Resolver) -> None:
    assert sorted(resolver.txt("contoso.com")) == [
        "google-site-verification=abc",
        "v=spf1 ip4:192.0.2.0/24 -all",
    ]


def test_long_txt_is_served_split_and_read_joined(resolver: Resolver) -> None:
    records = resolver.query("sel._domainkey.contoso.com", "TXT")
    assert len(records) == 1
    strings = records[0].value
    assert isinstance(strings, tuple)
    assert len(strings) == 3  # the fixture split 718 octets into 255-octet strings
    assert resolver.txt("sel._domainkey.contoso.com") == [LONG_KEY]


def test_address_and_mx_lookups(resolver: Resolver) -> None:
    assert resolver.a("mx1.contoso.com") == ["192.0.2.25"]
    assert resolver.aaaa("mx2.contoso.com") == ["2001:db8::26"]
    assert resolver.mx("contoso.com") == [(10, "mx1.contoso.com"), (20, "mx2.contoso.com")]
    assert resolver.ptr("192.0.2.25") == ["mx1.contoso.com"]


def test_nxdomain_and_nodata_are_empty_answers(resolver: Resolver) -> None:
    assert resolver.txt("nothing-here.contoso.com") == []  # NXDOMAIN
    assert resolver.a("contoso.com") == []  # NODATA
    assert resolver.ptr("192.0.2.99") == []


def test_cname_chain_is_followed_and_reported(resolver: Resolver) -> None:
    assert resolver.a("alias.contoso.com") == ["198.51.100.9"]
    assert resolver.txt("alias.contoso.com") == ["at the target"]
    records = resolver.query("alias.contoso.com", "A")
    assert [(r.name, r.rdtype) for r in records] == [
        ("alias.contoso.com", "CNAME"),
        ("target.example.net", "A"),
    ]


def test_cname_loop_is_a_permanent_error(resolver: Resolver) -> None:
    with pytest.raises(DnsPermError, match="CNAME"):
        resolver.a("loop1.contoso.com")


def test_servfail_is_a_temporary_error(resolver: Resolver) -> None:
    with pytest.raises(DnsTempError, match="SERVFAIL"):
        resolver.txt("broken.example.org")


def test_unreachable_server_fails_within_the_lifetime() -> None:
    resolver = Resolver([f"127.0.0.1:{_closed_port()}"], timeout=0.3, lifetime=0.8)
    started = time.monotonic()
    with pytest.raises(DnsTempError):
        resolver.txt("contoso.com")
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "name", ["a" * 64 + ".contoso.com", "a..contoso.com", ".".join(["abcdefghi"] * 30)]
)
def test_malformed_names_are_permanent_errors(resolver: Resolver, name: str) -> None:
    with pytest.raises(DnsPermError):
        resolver.txt(name)


def test_unknown_record_type_is_a_permanent_error(resolver: Resolver) -> None:
    with pytest.raises(DnsPermError, match="record type"):
        resolver.query("contoso.com", "NOTATYPE")


def test_txt_helper_splits_at_255_octets() -> None:
    assert txt("short") == '"short"'
    value = "x" * 300
    assert txt(value) == f'"{"x" * 255}" "{"x" * 45}"'
    assert txt('say "hi"\\') == '"say \\034hi\\034\\092"'
