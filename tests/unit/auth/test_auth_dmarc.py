"""DMARC policy discovery from a real nsd on loopback, and alignment over SPF/DKIM results."""

from __future__ import annotations

import pytest
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer

from dsguard.auth.dkim import DkimResult, verify_dkim
from dsguard.auth.dmarc import DmarcPolicy, evaluate_dmarc, fetch_policy, parse_record
from dsguard.auth.resolver import DnsTempError, Resolver
from dsguard.auth.spf import SpfResult, check_spf

module_dns_server = dns_fixtures.module_dns_server

ZONES = {
    "contoso.com": [
        '_dmarc 300 IN TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc@contoso.com"',
        '@ 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        '_dmarc.strict 300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
        '_dmarc.own 300 IN TXT "v=DMARC1; p=none"',
    ],
    "example.com": ['_dmarc 300 IN TXT "v=DMARC1; p=quarantine; pct=0"'],
    "example.net": ['_dmarc 300 IN TXT "v=DMARC1; p=reject; pct=0"'],
    "example.org": [
        '_dmarc.multi 300 IN TXT "v=DMARC1; p=reject"',
        '_dmarc.multi 300 IN TXT "v=DMARC1; p=none"',
        '_dmarc.badp 300 IN TXT "v=DMARC1; p=bogus; rua=mailto:d@example.org"',
        '_dmarc.badp2 300 IN TXT "v=DMARC1; p=bogus"',
        '_dmarc.notfirst 300 IN TXT "p=reject; v=DMARC1"',
        '_dmarc.other 300 IN TXT "some-verification=1"',
        '_dmarc.other 300 IN TXT "v=DMARC1; p=quarantine"',
    ],
}

EXTERNAL = "139.28.36.10"
NO_SPF = SpfResult("fail", "contoso.com", "")


@pytest.fixture(scope="module")
def server(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return module_dns_server(ZONES, servfail_zones=["broken.example.org"])


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver()], timeout=1.0, lifetime=2.0)


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", domain, "sender SPF authorized")


def dkim_pass(domain: str) -> DkimResult:
    return DkimResult("pass", domain, "s1", "")


# -- records --------------------------------------------------------------------------


def test_record_defaults() -> None:
    assert parse_record("v=DMARC1; p=quarantine", "contoso.com") == DmarcPolicy(
        domain="contoso.com", p="quarantine", sp=None, pct=100, adkim="r", aspf="r", rua=()
    )


def test_record_tags_are_read_and_bad_values_fall_back() -> None:
    policy = parse_record(
        "v=DMARC1;p=REJECT; sp=none; pct=250; adkim=s; aspf=x;"
        " rua=mailto:a@contoso.com, not a uri ,https://r.example.net/x; foo=bar",
        "contoso.com",
    )
    assert policy is not None
    assert (policy.p, policy.sp, policy.pct, policy.adkim, policy.aspf) == (
        "reject", "none", 100, "s", "r",
    )
    assert policy.rua == ("mailto:a@contoso.com", "https://r.example.net/x")

    def pct(record: str) -> int | None:
        policy = parse_record(record, "contoso.com")
        return policy.pct if policy else None

    assert pct("v=DMARC1; p=none; pct=abc") == 100
    assert pct("v=DMARC1; p=none; pct=-5") == 0


@pytest.mark.parametrize(
    "record", ["v=DMARC2; p=reject", "p=reject; v=DMARC1", "v=dmarc1; p=reject", "", "v=DMARC1"]
)
def test_not_a_usable_record(record: str) -> None:
    assert parse_record(record, "contoso.com") is None


def test_invalid_p_with_a_report_address_acts_as_p_none() -> None:
    # RFC 7489 section 6.6.3 step 6
    policy = parse_record("v=DMARC1; p=bogus; rua=mailto:d@contoso.com", "contoso.com")
    assert policy is not None
    assert policy.p == "none"


# -- discovery ------------------------------------------------------------------------


def test_policy_at_the_from_domain(resolver: Resolver) -> None:
    policy = fetch_policy("contoso.com", resolver)
    assert policy is not None
    assert (policy.domain, policy.p, policy.sp, policy.rua) == (
        "contoso.com", "reject", "quarantine", ("mailto:dmarc@contoso.com",),
    )


def test_subdomain_falls_back_to_the_organisational_domain(resolver: Resolver) -> None:
    policy = fetch_policy("sub.contoso.com", resolver)
    assert policy is not None
    assert policy.domain == "contoso.com"


def test_record_at_the_subdomain_itself_wins(resolver: Resolver) -> None:
    policy = fetch_policy("own.contoso.com", resolver)
    assert policy is not None
    assert (policy.domain, policy.p) == ("own.contoso.com", "none")


@pytest.mark.parametrize(
    ("domain", "found"),
    [
        ("nothing.example.org", None),  # no record at either name
        ("multi.example.org", None),  # two records: DMARC is not applied (step 5)
        ("notfirst.example.org", None),  # does not start with v=DMARC1
        ("badp2.example.org", None),  # invalid p, no rua
        ("badp.example.org", "none"),  # invalid p, rua: p=none
        ("other.example.org", "quarantine"),  # non-DMARC TXT at the same name is ignored
    ],
)
def test_discovery_edge_cases(resolver: Resolver, domain: str, found: str | None) -> None:
    policy = fetch_policy(domain, resolver)
    assert (policy.p if policy else None) == found


def test_discovery_temporary_failure_raises(resolver: Resolver) -> None:
    with pytest.raises(DnsTempError):
        fetch_policy("broken.example.org", resolver)


# -- evaluation -----------------------------------------------------------------------


def test_pass_through_aligned_dkim(resolver: Resolver) -> None:
    result = evaluate_dmarc("contoso.com", NO_SPF, [dkim_pass("mail.contoso.com")], resolver)
    assert (result.result, result.aligned_by, result.disposition) == ("pass", "dkim", "none")


def test_pass_through_aligned_spf(resolver: Resolver) -> None:
    result = evaluate_dmarc("contoso.com", spf_pass("bounces.contoso.com"), [], resolver)
    assert (result.result, result.aligned_by) == ("pass", "spf")


def test_dkim_is_preferred_when_both_align(resolver: Resolver) -> None:
    spf, dkim = spf_pass("contoso.com"), [dkim_pass("contoso.com")]
    assert evaluate_dmarc("contoso.com", spf, dkim, resolver).aligned_by == "dkim"


def test_unaligned_or_failing_results_do_not_pass(resolver: Resolver) -> None:
    dkim = [dkim_pass("example.net"), DkimResult("fail", "contoso.com", "s1", "bh mismatch")]
    result = evaluate_dmarc("contoso.com", spf_pass("example.net"), dkim, resolver)
    assert (result.result, result.disposition, result.aligned_by) == ("fail", "reject", None)


def test_strict_alignment_needs_the_exact_domain(resolver: Resolver) -> None:
    def result(spf: SpfResult, dkim: list[DkimResult]) -> str:
        return evaluate_dmarc("strict.contoso.com", spf, dkim, resolver).result

    assert result(spf_pass("contoso.com"), [dkim_pass("contoso.com")]) == "fail"  # relaxed only
    assert result(NO_SPF, [dkim_pass("strict.contoso.com")]) == "pass"
    assert result(spf_pass("strict.contoso.com"), []) == "pass"


def test_subdomain_failure_uses_sp(resolver: Resolver) -> None:
    result = evaluate_dmarc("sub.contoso.com", NO_SPF, [], resolver)
    assert (result.result, result.disposition) == ("fail", "quarantine")
    assert result.policy is not None and result.policy.domain == "contoso.com"


def test_record_at_the_subdomain_uses_its_own_p(resolver: Resolver) -> None:
    assert evaluate_dmarc("own.contoso.com", NO_SPF, [], resolver).disposition == "none"


@pytest.mark.parametrize(
    ("domain", "lowered"), [("example.com", "none"), ("example.net", "quarantine")]
)
def test_pct_zero_applies_the_next_lower_policy(
    resolver: Resolver, domain: str, lowered: str
) -> None:
    # RFC 7489 section 6.6.4: outside the pct sample, reject → quarantine → none.
    for _ in range(20):
        result = evaluate_dmarc(domain, NO_SPF, [], resolver)
        assert (result.result, result.disposition) == ("fail", lowered)


def test_no_record_is_none(resolver: Resolver) -> None:
    result = evaluate_dmarc("nothing.example.org", NO_SPF, [], resolver)
    assert (result.result, result.policy, result.disposition) == ("none", None, "none")


def test_lookup_failure_is_temperror(resolver: Resolver) -> None:
    assert evaluate_dmarc("broken.example.org", NO_SPF, [], resolver).result == "temperror"


@pytest.mark.parametrize("domain", ["", "not a domain", "a..b", "x" * 64 + ".com"])
def test_unusable_from_domain_is_permerror(resolver: Resolver, domain: str) -> None:
    assert evaluate_dmarc(domain, NO_SPF, [], resolver).result == "permerror"


def test_from_domain_is_normalised(resolver: Resolver) -> None:
    result = evaluate_dmarc("Joe <JOE@Contoso.COM.>", NO_SPF, [], resolver)
    assert (result.from_domain, result.disposition) == ("contoso.com", "reject")


def test_direct_send_spoof_fails_with_reject(resolver: Resolver) -> None:
    # The campaign: From and MAIL FROM joe@contoso.com, sent from a host outside contoso's
    # SPF, unsigned.
    message = (
        b"From: joe@contoso.com\r\nTo: joe@contoso.com\r\n"
        b"Subject: New Missed Fax-msg\r\n\r\nListen Now\r\n"
    )
    spf = check_spf(EXTERNAL, "joe@contoso.com", "WIN-ATTACKER", resolver)
    dkim = verify_dkim(message, resolver)
    assert (spf.result, dkim) == ("fail", [])
    result = evaluate_dmarc("contoso.com", spf, dkim, resolver)
    assert (result.result, result.disposition, result.aligned_by) == ("fail", "reject", None)
