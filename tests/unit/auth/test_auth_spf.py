"""SPF through pyspf with every lookup going to a real nsd on loopback."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import spf as pyspf  # type: ignore[import-untyped]
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer

from dsguard.auth.resolver import Resolver
from dsguard.auth.spf import check_spf

module_dns_server = dns_fixtures.module_dns_server

EXTERNAL = "139.28.36.10"  # the campaign's range: in nobody's SPF here

CONTOSO = [
    "@ 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:c::/48 include:spf.example.net"
    ' a:relay.contoso.com mx -all"',
    "@ 300 IN MX 10 mx1.contoso.com.",
    "mx1 300 IN A 198.51.100.25",
    "relay 300 IN A 198.51.100.7",
    'softfail 300 IN TXT "v=spf1 ip4:192.0.2.1 ~all"',
    'neutral 300 IN TXT "v=spf1 ?all"',
    'nospf 300 IN TXT "some-verification=abc"',
    "nospf 300 IN A 192.0.2.80",
    'redirect 300 IN TXT "v=spf1 redirect=contoso.com"',
    'syntax 300 IN TXT "v=spf1 ip4:192.0.2.300 -all"',
    'unknown 300 IN TXT "v=spf1 frobnicate:contoso.com -all"',
    'two 300 IN TXT "v=spf1 -all"',
    'two 300 IN TXT "v=spf1 +all"',
    'toomany 300 IN TXT "v=spf1 '
    + " ".join(f"a:h{i}.contoso.com" for i in range(1, 12))
    + ' -all"',
    *[f"h{i} 300 IN A 198.51.100.{100 + i}" for i in range(1, 12)],
    'void 300 IN TXT "v=spf1 a:nx1.contoso.com a:nx2.contoso.com a:nx3.contoso.com ip4:192.0.2.5'
    ' -all"',
    'exists 300 IN TXT "v=spf1 exists:%{i}.allow.contoso.com -all"',
    "192.0.2.77.allow 300 IN A 127.0.0.2",
    'ptr 300 IN TXT "v=spf1 ptr -all"',
    "host.ptr 300 IN A 203.0.113.99",
    'brokeninclude 300 IN TXT "v=spf1 include:broken.example.org -all"',
    'explained 300 IN TXT "v=spf1 -all exp=why.contoso.com"',
    'why 300 IN TXT "%{i} is not a mail server of %{d}"',
]

ZONES = {
    "contoso.com": CONTOSO,
    "example.net": ['spf 300 IN TXT "v=spf1 ip4:203.0.113.0/26 -all"'],
    "example.org": ['mail 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"', "mail 300 IN A 192.0.2.10"],
    "113.0.203.in-addr.arpa": ["99 300 IN PTR host.ptr.contoso.com."],
}


@pytest.fixture(scope="module")
def server(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return module_dns_server(ZONES, servfail_zones=["broken.example.org"])


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


@pytest.mark.parametrize(
    ("ip", "mail_from", "result"),
    [
        ("192.0.2.44", "joe@contoso.com", "pass"),  # ip4
        ("2001:db8:c::25", "joe@contoso.com", "pass"),  # ip6
        ("2001:db8:d::25", "joe@contoso.com", "fail"),
        ("203.0.113.5", "joe@contoso.com", "pass"),  # include
        ("198.51.100.7", "joe@contoso.com", "pass"),  # a:
        ("198.51.100.25", "joe@contoso.com", "pass"),  # mx
        (EXTERNAL, "joe@contoso.com", "fail"),
        ("192.0.2.1", "joe@softfail.contoso.com", "pass"),
        (EXTERNAL, "joe@softfail.contoso.com", "softfail"),
        (EXTERNAL, "joe@neutral.contoso.com", "neutral"),
        (EXTERNAL, "joe@nospf.contoso.com", "none"),
        (EXTERNAL, "joe@nxdomain.contoso.com", "none"),
        ("192.0.2.44", "joe@redirect.contoso.com", "pass"),  # redirect=
        (EXTERNAL, "joe@redirect.contoso.com", "fail"),
        ("192.0.2.77", "joe@exists.contoso.com", "pass"),  # exists: with a macro
        ("192.0.2.78", "joe@exists.contoso.com", "fail"),
        ("203.0.113.99", "joe@ptr.contoso.com", "pass"),  # ptr, validated by A
        ("203.0.113.98", "joe@ptr.contoso.com", "fail"),
        ("::ffff:192.0.2.44", "joe@contoso.com", "pass"),  # IPv4-mapped IPv6 is IPv4
    ],
)
def test_results(resolver: Resolver, ip: str, mail_from: str, result: str) -> None:
    got = check_spf(ip, mail_from, "mail.example.com", resolver)
    assert got.result == result, got
    assert got.domain == mail_from.rpartition("@")[2]
    assert got.identity == "mailfrom"


@pytest.mark.parametrize(
    ("mail_from", "why"),
    [
        ("joe@syntax.contoso.com", "Invalid IP4"),
        ("joe@unknown.contoso.com", "Unknown mechanism"),
        ("joe@two.contoso.com", "Two or more"),
        ("joe@toomany.contoso.com", "Too many DNS lookups"),
        ("joe@void.contoso.com", "Void lookup limit"),
    ],
)
def test_permerrors_name_the_problem(resolver: Resolver, mail_from: str, why: str) -> None:
    got = check_spf(EXTERNAL, mail_from, "mail.example.com", resolver)
    assert got.result == "permerror"
    assert why.lower() in got.explanation.lower()


def test_lookup_limit_counts_ten_mechanisms(resolver: Resolver) -> None:
    # h1..h10 are within RFC 7208 section 4.6.4's ten DNS mechanisms, h11 is not: an address
    # matched by h3 passes before the limit is reached, one matching nothing hits it.
    def result(ip: str) -> str:
        return check_spf(ip, "a@toomany.contoso.com", "x.example.com", resolver).result

    assert result("198.51.100.103") == "pass"
    assert result(EXTERNAL) == "permerror"


@pytest.mark.parametrize("mail_from", ["", "<>"])
def test_null_sender_checks_the_helo_identity(resolver: Resolver, mail_from: str) -> None:
    got = check_spf("192.0.2.10", mail_from, "mail.example.org", resolver)
    assert (got.result, got.domain, got.identity) == ("pass", "mail.example.org", "helo")
    assert check_spf(EXTERNAL, mail_from, "mail.example.org", resolver).result == "fail"


def test_angle_brackets_around_mail_from_are_ignored(resolver: Resolver) -> None:
    assert check_spf("192.0.2.44", "<joe@contoso.com>", "h.example.com", resolver).result == "pass"


def test_fail_carries_the_domain_explanation(resolver: Resolver) -> None:
    got = check_spf(EXTERNAL, "joe@explained.contoso.com", "h.example.com", resolver)
    assert got.result == "fail"
    assert got.explanation == f"{EXTERNAL} is not a mail server of explained.contoso.com"


def test_servfail_is_temperror(resolver: Resolver) -> None:
    got = check_spf(EXTERNAL, "joe@broken.example.org", "h.example.com", resolver)
    assert got.result == "temperror"
    got = check_spf(EXTERNAL, "joe@brokeninclude.contoso.com", "h.example.com", resolver)
    assert got.result == "temperror"


def test_unreachable_resolver_is_temperror_within_its_lifetime() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = Resolver([f"127.0.0.1:{port}"], timeout=0.3, lifetime=0.8)
    started = time.monotonic()
    got = check_spf(EXTERNAL, "joe@contoso.com", "h.example.com", dead)
    assert got.result == "temperror"
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("ip", ["not-an-ip", "", "999.1.1.1"])
def test_bad_client_ip_is_permerror_not_an_exception(resolver: Resolver, ip: str) -> None:
    assert check_spf(ip, "joe@contoso.com", "h.example.com", resolver).result == "permerror"


def test_hostile_identities_do_not_raise(resolver: Resolver) -> None:
    hostile = ["joe@" + "a" * 300 + ".com", "joe@a..b", "joe@\x00.com", "@", "joe@[1.2.3.4]"]
    for mail_from in hostile:
        got = check_spf(EXTERNAL, mail_from, "h.example.com", resolver)
        assert got.result in ("none", "permerror", "fail", "temperror")
    assert check_spf(EXTERNAL, "", "", resolver).result == "none"


def test_pyspf_outside_check_spf_never_uses_the_system_resolver() -> None:
    # The replaced pyspf.DNSLookup only answers inside check_spf, where a resolver is bound.
    result, _code, explanation = pyspf.query(i=EXTERNAL, s="joe@contoso.com", h="h").check()
    assert result == "temperror"
    assert "no resolver bound" in explanation


def test_two_resolvers_in_parallel_threads_stay_apart(
    module_dns_server: dns_fixtures.ServerFactory, server: DnsServer
) -> None:
    # A second server where contoso.com authorises only 198.51.100.0/24.
    other = module_dns_server({"contoso.com": ['@ 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"']})
    first = Resolver([server.nameserver()])
    second = Resolver([other.nameserver()])

    def run(index: int) -> tuple[int, str]:
        resolver = first if index % 2 else second
        return index, check_spf("192.0.2.44", "joe@contoso.com", "h.example.com", resolver).result

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(64)))
    assert all(result == ("pass" if index % 2 else "fail") for index, result in results)
