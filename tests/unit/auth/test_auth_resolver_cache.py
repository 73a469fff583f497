"""The resolver's TTL cache against a real nsd: a second lookup costs no query, answers expire
with their TTL (capped), negative answers live as long as the SOA says (capped), errors are
never kept, the cache is bounded and safe for threads."""

from __future__ import annotations

import threading
import time

import dns.name
import pytest
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer

from dsguard.auth.resolver import DnsCache, DnsTempError, Resolver

dns_server = dns_fixtures.dns_server

ZONES = {
    "contoso.com": [
        '@ 60 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        "@ 60 IN MX 10 mx1.contoso.com.",
        "mx1 60 IN A 192.0.2.25",
        'long 86400 IN TXT "kept a day by the zone"',
        'zero 0 IN TXT "never kept"',
        "alias 120 IN CNAME target.example.net.",
    ],
    "example.net": ["target 30 IN A 198.51.100.9"],
}
# The fixture's SOA: "$TTL 300" and MINIMUM 300, so negative answers may be kept 300 s.
SOA_NEGATIVE_TTL = 300


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return dns_server(ZONES, servfail_zones=["broken.example.org"])


def _resolver(server: DnsServer, cache: DnsCache | None) -> Resolver:
    return Resolver([server.nameserver()], timeout=0.3, lifetime=0.6, cache=cache)


def test_second_lookup_is_served_from_the_cache(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock)
    resolver = _resolver(server, cache)
    assert resolver.txt("contoso.com") == ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert (cache.hits, cache.misses) == (0, 1)
    server.stop()  # nothing answers any more: only the cache can
    assert resolver.txt("contoso.com") == ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert resolver.txt("CONTOSO.com.") == ["v=spf1 ip4:192.0.2.0/24 -all"]  # same name
    assert (cache.hits, cache.misses) == (2, 1)
    with pytest.raises(DnsTempError):  # another question does go out
        resolver.mx("contoso.com")


def test_cached_answers_keep_the_callers_spelling_and_the_chain(
    server: DnsServer, clock: Clock
) -> None:
    resolver = _resolver(server, DnsCache(clock=clock))
    first = resolver.query("Alias.Contoso.com", "A")
    again = resolver.query("alias.contoso.com.", "A")
    assert [(r.name, r.rdtype, r.value) for r in first] == [
        ("alias.contoso.com", "CNAME", "target.example.net"),
        ("target.example.net", "A", "198.51.100.9"),
    ]
    assert again == first
    assert resolver.cache is not None and resolver.cache.hits == 1


def test_answers_expire_with_their_ttl(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock)
    resolver = _resolver(server, cache)
    assert resolver.a("mx1.contoso.com") == ["192.0.2.25"]  # TTL 60
    clock.now += 59
    assert resolver.a("mx1.contoso.com") == ["192.0.2.25"]
    assert cache.hits == 1
    clock.now += 2  # 61 s after the answer: gone
    server.stop()
    with pytest.raises(DnsTempError):
        resolver.a("mx1.contoso.com")
    assert len(cache) == 0


def test_a_chain_is_kept_for_its_smallest_ttl(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock)
    resolver = _resolver(server, cache)
    resolver.a("alias.contoso.com")  # CNAME 120 s, A 30 s
    clock.now += 31
    resolver.a("alias.contoso.com")
    assert (cache.hits, cache.misses) == (0, 2)


def test_long_ttls_are_capped(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock, max_ttl=600)
    resolver = _resolver(server, cache)
    assert resolver.txt("long.contoso.com") == ["kept a day by the zone"]
    clock.now += 599
    resolver.txt("long.contoso.com")
    assert cache.hits == 1
    clock.now += 2
    resolver.txt("long.contoso.com")
    assert (cache.hits, cache.misses) == (1, 2)


def test_a_zero_ttl_is_not_kept(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock)
    resolver = _resolver(server, cache)
    assert resolver.txt("zero.contoso.com") == ["never kept"]
    assert resolver.txt("zero.contoso.com") == ["never kept"]
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 0)


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [("nothing-here.contoso.com", "TXT"), ("contoso.com", "AAAA")],  # NXDOMAIN, NODATA
)
def test_negative_answers_are_kept_as_long_as_the_soa_says(
    server: DnsServer, clock: Clock, name: str, rdtype: str
) -> None:
    cache = DnsCache(clock=clock, negative_ttl=3600)
    resolver = _resolver(server, cache)
    assert resolver.query(name, rdtype) == []
    server.stop()
    clock.now += SOA_NEGATIVE_TTL - 1
    assert resolver.query(name, rdtype) == []
    assert cache.hits == 1
    clock.now += 2
    with pytest.raises(DnsTempError):
        resolver.query(name, rdtype)


def test_negative_answers_are_capped(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock, negative_ttl=30)
    resolver = _resolver(server, cache)
    assert resolver.txt("nothing-here.contoso.com") == []
    clock.now += 29
    assert resolver.txt("nothing-here.contoso.com") == []
    clock.now += 2
    assert resolver.txt("nothing-here.contoso.com") == []
    assert (cache.hits, cache.misses) == (1, 2)


def test_errors_are_not_kept(server: DnsServer, clock: Clock) -> None:
    cache = DnsCache(clock=clock)
    resolver = _resolver(server, cache)
    for _ in range(2):
        with pytest.raises(DnsTempError, match="SERVFAIL"):
            resolver.txt("broken.example.org")
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 0)


def test_the_cache_is_bounded_least_recently_used_out_first(
    server: DnsServer, clock: Clock
) -> None:
    cache = DnsCache(2, clock=clock)
    resolver = _resolver(server, cache)
    resolver.txt("contoso.com")
    resolver.a("mx1.contoso.com")
    resolver.txt("contoso.com")  # now the most recently used
    resolver.mx("contoso.com")  # evicts mx1's A
    assert len(cache) == 2
    server.stop()
    assert resolver.txt("contoso.com") == ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert resolver.mx("contoso.com") == [(10, "mx1.contoso.com")]
    with pytest.raises(DnsTempError):
        resolver.a("mx1.contoso.com")


def test_without_a_cache_every_lookup_is_asked(server: DnsServer) -> None:
    resolver = _resolver(server, None)
    assert resolver.cache is None
    assert resolver.txt("contoso.com")
    server.stop()
    with pytest.raises(DnsTempError):
        resolver.txt("contoso.com")


def test_a_resolver_has_its_own_cache_by_default(server: DnsServer) -> None:
    first = Resolver([server.nameserver()])
    second = Resolver([server.nameserver()])
    assert first.cache is not None and second.cache is not None
    assert first.cache is not second.cache


def test_threads_share_one_cache_safely(server: DnsServer) -> None:
    cache = DnsCache(8)
    resolver = _resolver(server, cache)
    names = [("contoso.com", "TXT"), ("contoso.com", "MX"), ("mx1.contoso.com", "A")]
    names += [(f"n{i}.contoso.com", "TXT") for i in range(10)]  # NXDOMAINs, over the bound
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                for name, rdtype in names:
                    resolver.query(name, rdtype)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(cache) <= 8
    assert cache.hits + cache.misses == 8 * 20 * len(names)


def test_cache_put_and_get_directly() -> None:
    clock = Clock()
    cache = DnsCache(clock=clock, max_ttl=10, negative_ttl=5)
    key = (dns.name.from_text("a.example"), 16)
    cache.put(key, ((None, "TXT", (b"x",)),), 100)
    clock.now += 9.9
    assert cache.get(key) is not None
    clock.now += 0.2
    assert cache.get(key) is None
    with pytest.raises(ValueError, match="at least 1"):
        DnsCache(0)


def test_cache_only_answers_hits_and_refuses_misses_without_asking() -> None:
    resolver = Resolver(["127.0.0.1:9"], timeout=2.0, lifetime=2.0)  # nothing listens there
    assert resolver.cache is not None
    resolver.cache.put((b"a.example.", 16), ((None, "TXT", (b"v=spf1 -all",)),), 100)
    with Resolver.cache_only() as probe:
        assert resolver.txt("A.Example.") == ["v=spf1 -all"]
        assert not probe.missed
        started = time.monotonic()
        with pytest.raises(DnsTempError, match="not in the cache"):
            resolver.txt("b.example")
        assert time.monotonic() - started < 0.5  # refused at once, not a timeout
        assert probe.missed
    # Outside the block (and in other threads) lookups go to the server again.
    outside: list[str] = []

    def lookup() -> None:
        with Resolver.cache_only() as other:
            assert not other.missed
        try:
            resolver.query("c.example", "TXT", lifetime=0.05)
        except DnsTempError as exc:
            outside.append(str(exc))

    thread = threading.Thread(target=lookup)
    thread.start()
    thread.join()
    assert outside and "not in the cache" not in outside[0]
