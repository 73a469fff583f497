"""Third-party DKIM signatures (RFC 8463's example, an Exim ed25519 signature, dkimpy's
hostile-domain case) verified by dsguard.auth.dkim with their keys on a loopback nsd.

The RFC 8463 ed25519 signature and Exim's are the independent check of the Ed25519 adapter
dsguard gives dkimpy when PyNaCl is absent (see dsguard.auth.dkim).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer, txt

from dsguard.auth.dkim import verify_dkim
from dsguard.auth.resolver import Resolver

module_dns_server = dns_fixtures.module_dns_server

DATA = Path(__file__).resolve().parents[1] / "data" / "dkimpy-vectors"
RECORDS = json.loads((DATA / "dns-records.json").read_text(encoding="utf-8"))["records"]
FOOTBALL_TEST = "test._domainkey.football.example.com."


def _record(name: str) -> str:
    return str(RECORDS[name]["value"])


def _file(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8").strip()


def _corrupted() -> str:
    [variant] = RECORDS[FOOTBALL_TEST]["variants"].values()
    return str(variant["value"])


def _zones(football_test_key: str) -> dict[str, list[str]]:
    brisbane = _record("brisbane._domainkey.football.example.com.")
    return {
        "football.example.com": [
            f"brisbane._domainkey 300 IN TXT {txt(brisbane)}",
            f"test._domainkey 300 IN TXT {txt(football_test_key)}",
        ],
        "test.ex": [f"sed._domainkey 300 IN TXT {txt(_file('eximtest.dns'))}"],
    }


@pytest.fixture(scope="module")
def resolver(module_dns_server: dns_fixtures.ServerFactory) -> Resolver:
    server: DnsServer = module_dns_server(_zones(_file("test.txt")))
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


@pytest.fixture(scope="module")
def corrupted_resolver(module_dns_server: dns_fixtures.ServerFactory) -> Resolver:
    server: DnsServer = module_dns_server(_zones(_corrupted()))
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


def _results(message: str, resolver: Resolver) -> list[tuple[str, str, str]]:
    results = verify_dkim((DATA / message).read_bytes(), resolver)
    return [(r.result, r.domain, r.selector) for r in results]


def test_rfc8463_example_ed25519_and_rsa(resolver: Resolver) -> None:
    assert _results("rfc6376.signed.msg", resolver) == [
        ("pass", "football.example.com", "brisbane"),
        ("pass", "football.example.com", "test"),
    ]


def test_rfc8463_example_fails_once_altered(resolver: Resolver) -> None:
    message = (DATA / "rfc6376.signed.msg").read_bytes().replace(b"We lost", b"We won")
    assert [r.result for r in verify_dkim(message, resolver)] == ["fail", "fail"]


def test_exim_ed25519_signature(resolver: Resolver) -> None:
    assert _results("ed25519test2.msg", resolver) == [("pass", "test.ex", "sed")]


def test_corrupted_key_is_permerror(corrupted_resolver: Resolver) -> None:
    [result] = verify_dkim((DATA / "rfc6376.signed.rsa.msg").read_bytes(), corrupted_resolver)
    assert (result.result, result.selector) == ("permerror", "test")
    assert result.reason.startswith("unusable key record at test._domainkey.football.example.com")


def test_comment_injection_in_d_is_refused(resolver: Resolver) -> None:
    [result] = verify_dkim((DATA / "test.message.baddomain").read_bytes(), resolver)
    assert result.result == "permerror"
    assert "d= value is not valid" in result.reason
