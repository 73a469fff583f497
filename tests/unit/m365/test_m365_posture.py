"""``dsguard posture`` against a real DNS server: Debian's nsd on loopback serving test zones.

The zones model the situations an Exchange Online admin meets (made-up data on reserved names;
the Microsoft names - the tenant endpoints under mail.protection.outlook.com, the SPF include
spf.protection.outlook.com, the DKIM CNAME targets under onmicrosoft.com - exist only in this
local nsd):

- contoso.com: Exchange Online done right (MX, SPF -all with Microsoft's include, DMARC reject
  with reports, DKIM CNAMEs to 2048-bit keys, MTA-STS, TLS-RPT);
- example.org: MX at a third-party gateway while the tenant endpoint example-org.mail
  .protection.outlook.com exists (the "Ghost-Sender" exposure); shop.example.org the same
  behind Mimecast, with no DKIM;
- example.net: SPF +all and no DMARC;
- example.com: an SPF tree of 11 DNS lookups (permerror), one 1024-bit DKIM key;
- lab.contoso.com: DMARC p=none pct=50; sales.contoso.com: DKIM CNAMEs whose targets do not
  exist (published before signing was enabled);
- nomx.example.com: no MX (its DMARC comes from example.com); parked.example.com: null MX;
- multi.example.org: two SPF records; typo.example.org: SPF syntax errors, ptr, a void
  lookup and ?all; redir.example.org: ~all reached through redirect=; open.example.org: -all,
  but an include that ends in +all;
- down.example.net: a zone nsd answers with SERVFAIL (a DNS failure).

The expected ratings and problem ids below were written down from the zones before the code ran.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.fixtures import dns as dns_fixtures
from tests.fixtures.dns import DnsServer, txt

from dsguard.auth.resolver import Resolver
from dsguard.m365.posture import (
    check_domain,
    classify_mx_host,
    exit_status,
    parse_spf_terms,
    run_posture,
    tenant_endpoint,
)

module_dns_server = dns_fixtures.module_dns_server

# rating, and the ids of every check of severity warning or worse
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "contoso.com": ("good", set()),
    "example.org": ("fair", {"mx.gateway_bypass"}),
    "shop.example.org": ("fair", {"mx.gateway_bypass", "dkim.m365_missing"}),
    "example.net": ("critical", {"spf.all_pass", "dmarc.missing", "dkim.m365_missing"}),
    "example.com": ("poor", {"spf.too_many_lookups", "dkim.short_key"}),
    "lab.contoso.com": ("poor", {"dmarc.p_none", "dmarc.pct_partial"}),
    "sales.contoso.com": ("fair", {"dkim.cname_unresolved"}),
    "nomx.example.com": ("fair", {"mx.missing"}),
    "parked.example.com": ("good", set()),
    "multi.example.org": ("poor", {"spf.multiple"}),
    "typo.example.org": (
        "poor", {"spf.syntax", "spf.all_neutral", "spf.ptr", "spf.void_lookup"}
    ),
    "redir.example.org": ("fair", {"spf.all_softfail"}),
    "open.example.org": ("critical", {"spf.include_pass_all"}),
    "down.example.net": ("unknown", set()),
}


def _rsa_public_b64(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def _dkim(key: str) -> str:
    return txt(f"v=DKIM1; k=rsa; p={key}")


def zones(key2048: str, key1024: str) -> dict[str, list[str]]:
    ms_dkim = [
        f"selector{n}-{label}._domainkey.{tenant} 300 IN TXT {_dkim(key2048)}"
        for n in (1, 2)
        for label, tenant in (
            ("contoso-com", "contoso"),
            ("lab-contoso-com", "contoso"),
            ("example-org", "exampleorg"),
        )
    ]
    return {
        "contoso.com": [
            "@ 300 IN MX 0 contoso-com.mail.protection.outlook.com.",
            f"@ 300 IN TXT {txt('v=spf1 include:spf.protection.outlook.com -all')}",
            f"_dmarc 300 IN TXT {txt('v=DMARC1; p=reject; rua=mailto:dmarc-reports@contoso.com')}",
            "selector1._domainkey 300 IN CNAME selector1-contoso-com._domainkey.contoso.onmicrosoft.com.",
            "selector2._domainkey 300 IN CNAME selector2-contoso-com._domainkey.contoso.onmicrosoft.com.",
            f"_mta-sts 300 IN TXT {txt('v=STSv1; id=20250101T000000')}",
            f"_smtp._tls 300 IN TXT {txt('v=TLSRPTv1; rua=mailto:tlsrpt@contoso.com')}",
            # lab.contoso.com: DMARC in monitoring mode, half sampled
            "lab 300 IN MX 0 lab-contoso-com.mail.protection.outlook.com.",
            f"lab 300 IN TXT {txt('v=spf1 include:spf.protection.outlook.com -all')}",
            "_dmarc.lab 300 IN TXT "
            + txt("v=DMARC1; p=none; pct=50; rua=mailto:dmarc-reports@contoso.com"),
            "selector1._domainkey.lab 300 IN CNAME "
            "selector1-lab-contoso-com._domainkey.contoso.onmicrosoft.com.",
            "selector2._domainkey.lab 300 IN CNAME "
            "selector2-lab-contoso-com._domainkey.contoso.onmicrosoft.com.",
            # sales.contoso.com: DKIM CNAMEs published, signing never enabled (no target)
            "sales 300 IN MX 0 sales-contoso-com.mail.protection.outlook.com.",
            f"sales 300 IN TXT {txt('v=spf1 include:spf.protection.outlook.com -all')}",
            "selector1._domainkey.sales 300 IN CNAME "
            "selector1-sales-contoso-com._domainkey.contoso.onmicrosoft.com.",
            "selector2._domainkey.sales 300 IN CNAME "
            "selector2-sales-contoso-com._domainkey.contoso.onmicrosoft.com.",
        ],
        "onmicrosoft.com": ms_dkim,
        "protection.outlook.com": [
            "spf 300 IN TXT "
            + txt("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 include:spfd.protection.outlook.com -all"),
            f"spfd 300 IN TXT {txt('v=spf1 ip4:198.51.100.0/26 -all')}",
            "contoso-com.mail 300 IN A 203.0.113.10",
            "lab-contoso-com.mail 300 IN A 203.0.113.11",
            "example-org.mail 300 IN A 203.0.113.12",
            "shop-example-org.mail 300 IN A 203.0.113.15",
            "example-net.mail 300 IN A 203.0.113.13",
            "example-com.mail 300 IN A 203.0.113.14",
        ],
        "example.org": [
            "@ 300 IN MX 10 mx1.example-gateway.example.net.",
            "@ 300 IN MX 20 mx2.example-gateway.example.net.",
            "@ 300 IN TXT "
            + txt("v=spf1 include:spf.protection.outlook.com "
                  "include:_spf.example-gateway.example.net -all"),
            f"_dmarc 300 IN TXT {txt('v=DMARC1; p=reject; rua=mailto:dmarc@example.org')}",
            "selector1._domainkey 300 IN CNAME selector1-example-org._domainkey.exampleorg.onmicrosoft.com.",
            "selector2._domainkey 300 IN CNAME selector2-example-org._domainkey.exampleorg.onmicrosoft.com.",
            f"_mta-sts 300 IN TXT {txt('v=STSv1; id=2025a')}",
            f"_smtp._tls 300 IN TXT {txt('v=TLSRPTv1; rua=mailto:tlsrpt@example.org')}",
            # shop.example.org: behind Mimecast (the name is only data here, never resolved)
            "shop 300 IN MX 10 eu-smtp-inbound-1.mimecast.com.",
            f"shop 300 IN TXT {txt('v=spf1 include:spf.protection.outlook.com -all')}",
            # multi.example.org: two SPF records
            "multi 300 IN MX 10 mx1.example-gateway.example.net.",
            f"multi 300 IN TXT {txt('v=spf1 ip4:192.0.2.1 -all')}",
            f"multi 300 IN TXT {txt('v=spf1 ip4:192.0.2.2 -all')}",
            # typo.example.org: a bad address, ptr, a name without records, ?all
            "typo 300 IN MX 10 mx1.example-gateway.example.net.",
            f"typo 300 IN TXT {txt('v=spf1 ptr ip4:192.0.2.300 a:nohost.example.org ?all')}",
            # redir.example.org: the "all" that applies comes through redirect=
            "redir 300 IN MX 10 mx1.example-gateway.example.net.",
            f"redir 300 IN TXT {txt('v=spf1 redirect=_spf.example.org')}",
            f"_spf 300 IN TXT {txt('v=spf1 ip4:192.0.2.0/28 ~all')}",
            # open.example.org: -all at the top, but an include that ends in +all
            "open 300 IN MX 10 mx1.example-gateway.example.net.",
            f"open 300 IN TXT {txt('v=spf1 include:_open.example.org -all')}",
            f"_open 300 IN TXT {txt('v=spf1 +all')}",
        ],
        "example.net": [
            "@ 300 IN MX 0 example-net.mail.protection.outlook.com.",
            f"@ 300 IN TXT {txt('v=spf1 include:spf.protection.outlook.com +all')}",
            "mx1.example-gateway 300 IN A 198.51.100.25",
            "mx2.example-gateway 300 IN A 198.51.100.26",
            f"_spf.example-gateway 300 IN TXT {txt('v=spf1 ip4:198.51.100.0/24 -all')}",
        ],
        "example.com": [
            "@ 300 IN MX 0 example-com.mail.protection.outlook.com.",
            "@ 300 IN TXT "
            + txt("v=spf1 include:spf.protection.outlook.com include:_spf1.example.com "
                  "include:_spf2.example.com -all"),
            f"_spf1 300 IN TXT {txt('v=spf1 a:smtp1.example.com a:smtp2.example.com mx:example.com -all')}",
            f"_spf2 300 IN TXT {txt('v=spf1 include:_spf3.example.com ip4:192.0.2.128/25 -all')}",
            "_spf3 300 IN TXT "
            + txt("v=spf1 a:smtp3.example.com a:smtp4.example.com a:smtp5.example.com -all"),
            *[f"smtp{n} 300 IN A 192.0.2.{20 + n}" for n in range(1, 6)],
            f"_dmarc 300 IN TXT {txt('v=DMARC1; p=reject; rua=mailto:dmarc@example.com')}",
            f"selector1._domainkey 300 IN TXT {_dkim(key2048)}",
            f"selector2._domainkey 300 IN TXT {_dkim(key1024)}",
            # nomx.example.com: sends nothing, receives nothing, but forgot the null MX
            f"nomx 300 IN TXT {txt('v=spf1 -all')}",
            # parked.example.com: the textbook parked domain
            "parked 300 IN MX 0 .",
            f"parked 300 IN TXT {txt('v=spf1 -all')}",
        ],
    }


@pytest.fixture(scope="module")
def server(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    return module_dns_server(
        zones(_rsa_public_b64(2048), _rsa_public_b64(1024)), servfail_zones=["down.example.net"]
    )


@pytest.fixture(scope="module")
def resolver(server: DnsServer) -> Resolver:
    return Resolver([server.nameserver()], timeout=2.0, lifetime=4.0)


@pytest.fixture(scope="module")
def doc(resolver: Resolver) -> dict[str, Any]:
    return run_posture(list(EXPECTED), resolver)


def by_domain(doc: dict[str, Any], domain: str) -> dict[str, Any]:
    return next(d for d in doc["domains"] if d["domain"] == domain)


def problems(item: dict[str, Any]) -> set[str]:
    return {c["id"] for c in item["checks"] if c["severity"] in ("warning", "high", "critical")}


def check(item: dict[str, Any], check_id: str) -> dict[str, Any]:
    found = [c for c in item["checks"] if c["id"] == check_id]
    assert len(found) == 1, f"{check_id} in {[c['id'] for c in item['checks']]}"
    return found[0]


@pytest.mark.parametrize("domain", list(EXPECTED))
def test_rating_and_problems_match_what_the_zones_deserve(doc: dict[str, Any], domain: str) -> None:
    item = by_domain(doc, domain)
    rating, expected_problems = EXPECTED[domain]
    assert (item["rating"], problems(item)) == (rating, expected_problems), item


def test_every_problem_comes_with_a_fix(doc: dict[str, Any]) -> None:
    for item in doc["domains"]:
        for c in item["checks"]:
            if c["severity"] in ("warning", "high", "critical"):
                assert c["fix"], (item["domain"], c["id"])


def test_well_configured_exchange_online_domain(doc: dict[str, Any]) -> None:
    item = by_domain(doc, "contoso.com")
    facts = item["facts"]
    assert facts["microsoft365"] is True
    assert facts["tenant"] == "contoso.onmicrosoft.com"
    assert facts["mx"]["kind"] == "exchange_online"
    assert (facts["spf"]["lookups"], facts["spf"]["all"]) == (2, "-all")
    assert [(s["selector"], s["status"], s["key_bits"]) for s in facts["dkim"]] == [
        ("selector1", "key", 2048), ("selector2", "key", 2048)
    ]
    assert facts["dkim"][0]["cname"] == "selector1-contoso-com._domainkey.contoso.onmicrosoft.com"
    assert facts["dmarc"]["effective_policy"] == "reject"
    assert check(item, "mta_sts.present")["severity"] == "ok"
    assert check(item, "tls_rpt.present")["severity"] == "ok"
    # The Direct Send angle: spoofs fail DMARC and are quarantined; RDS still recommended.
    angle = check(item, "direct_send.dmarc_enforced")
    assert "even without RejectDirectSend" in angle["summary"]
    assert "Set-OrganizationConfig -RejectDirectSend $true" in angle["fix"]
    assert "dsguard probe --to <a mailbox>@contoso.com" in angle["fix"]


def test_gateway_in_front_of_an_existing_tenant_is_the_ghost_sender_exposure(
    doc: dict[str, Any],
) -> None:
    item = by_domain(doc, "example.org")
    bypass = check(item, "mx.gateway_bypass")
    assert "example-org.mail.protection.outlook.com" in bypass["summary"]
    assert "Ghost-Sender" in bypass["summary"]
    assert "example-org.mail.protection.outlook.com A 203.0.113.12" in bypass["evidence"]
    assert "-RestrictDomainsToIPAddresses $true" in bypass["fix"]
    assert "-ConnectorType Partner" in bypass["fix"]
    assert "--server example-org.mail.protection.outlook.com" in bypass["fix"]
    assert item["facts"]["mx"]["tenant_endpoint_addresses"] == ["203.0.113.12"]
    shop = check(by_domain(doc, "shop.example.org"), "mx.gateway_bypass")
    assert "MX points to Mimecast" in shop["summary"]


def test_plus_all_without_dmarc_gets_the_records_to_publish(doc: dict[str, Any]) -> None:
    item = by_domain(doc, "example.net")
    plus = check(item, "spf.all_pass")
    assert plus["severity"] == "critical"
    assert plus["fix"] == (
        'publish example.net. 3600 IN TXT "v=spf1 include:spf.protection.outlook.com -all"'
    )
    missing = check(item, "dmarc.missing")
    assert missing["fix"].startswith(
        'publish _dmarc.example.net. 3600 IN TXT '
        '"v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.net"'
    )
    assert check(item, "direct_send.not_enforced")["severity"] == "info"


def test_eleven_lookups_names_the_path_of_the_eleventh(doc: dict[str, Any]) -> None:
    item = by_domain(doc, "example.com")
    spf = item["facts"]["spf"]
    assert spf["lookups"] == 11
    assert spf["exceeded_at"] == (
        "example.com → include:_spf2.example.com → include:_spf3.example.com → a:smtp5.example.com"
    )
    summary = check(item, "spf.too_many_lookups")["summary"]
    assert "needs 11 DNS lookups" in summary and spf["exceeded_at"] in summary
    short = check(item, "dkim.short_key")
    assert "RSA 1024-bit" in short["summary"]
    assert "-KeySize 2048" in short["fix"]


def test_dmarc_monitoring_mode_and_partial_sampling(doc: dict[str, Any]) -> None:
    item = by_domain(doc, "lab.contoso.com")
    dmarc = item["facts"]["dmarc"]
    assert (dmarc["found_at"], dmarc["p"], dmarc["pct"]) == ("lab.contoso.com", "none", 50)
    assert check(item, "dmarc.p_none")["severity"] == "high"
    assert "only 50%" in check(item, "dmarc.pct_partial")["summary"]


def test_dkim_cnames_without_keys_say_signing_is_not_enabled(doc: dict[str, Any]) -> None:
    item = by_domain(doc, "sales.contoso.com")
    assert [(s["status"], s["cname"]) for s in item["facts"]["dkim"]] == [
        ("cname_unresolved", "selector1-sales-contoso-com._domainkey.contoso.onmicrosoft.com"),
        ("cname_unresolved", "selector2-sales-contoso-com._domainkey.contoso.onmicrosoft.com"),
    ]
    assert item["facts"]["tenant"] == "contoso.onmicrosoft.com"
    unresolved = [c for c in item["checks"] if c["id"] == "dkim.cname_unresolved"]
    assert len(unresolved) == 2 and "New-DkimSigningConfig" in unresolved[0]["fix"]


def test_subdomain_falls_back_to_the_organisational_domain_policy(doc: dict[str, Any]) -> None:
    for domain in ("nomx.example.com", "parked.example.com"):
        item = by_domain(doc, domain)
        assert item["facts"]["dmarc"]["found_at"] == "example.com"
        assert item["facts"]["dmarc"]["effective_policy"] == "reject"
        assert check(item, "dmarc.inherited")["severity"] == "info"
    assert check(by_domain(doc, "parked.example.com"), "mx.null")["severity"] == "info"
    assert "MX 0 ." in check(by_domain(doc, "nomx.example.com"), "mx.missing")["fix"]


def test_spf_syntax_errors_void_lookups_and_multiple_records(doc: dict[str, Any]) -> None:
    typo = by_domain(doc, "typo.example.org")
    syntax = check(typo, "spf.syntax")
    assert "ip4:192.0.2.300" in syntax["summary"] and "permerror" in syntax["summary"]
    assert "a:nohost.example.org" in check(typo, "spf.void_lookup")["summary"]
    assert typo["facts"]["spf"]["void_lookups"] == 1
    multi = check(by_domain(doc, "multi.example.org"), "spf.multiple")
    assert "2 SPF records" in multi["summary"]


def test_redirect_and_an_open_include_are_followed(doc: dict[str, Any]) -> None:
    redir = by_domain(doc, "redir.example.org")["facts"]["spf"]
    assert (redir["all"], redir["all_via_redirect"], redir["lookups"]) == (
        "~all", "_spf.example.org", 1
    )
    opened = check(by_domain(doc, "open.example.org"), "spf.include_pass_all")
    assert "'include:_open.example.org' ends in +all" in opened["summary"]
    assert opened["evidence"] == "open.example.org → include:_open.example.org"


def test_servfail_domain_is_reported_as_a_dns_failure(doc: dict[str, Any]) -> None:
    item = by_domain(doc, "down.example.net")
    assert item["rating"] == "unknown"
    assert item["errors"] and "SERVFAIL" in item["errors"][0]
    assert exit_status({"domains": [item]}) == 2


def test_exit_status_rules() -> None:
    def status(*ratings: str) -> int:
        return exit_status({"domains": [{"rating": r, "errors": []} for r in ratings]})

    assert status("good", "fair") == 0
    assert status("good", "poor") == 1
    assert status("critical") == 1


def test_not_a_domain_is_an_error_not_a_crash(resolver: Resolver) -> None:
    result = check_domain("not a domain", resolver)
    assert result.rating == "unknown" and result.errors == ["'not a domain' is not a domain name"]


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "kind", "provider"),
    [
        ("contoso-com.mail.protection.outlook.com", "exchange_online", "Exchange Online (worldwide)"),
        ("contoso-com.o-v1.mx.microsoft", "exchange_online", "Exchange Online (worldwide, mx.microsoft)"),
        ("contoso-com.mail.protection.office365.us", "exchange_online", "Exchange Online (GCC High / DoD)"),
        ("mx0a-00123456.pphosted.com", "gateway", "Proofpoint"),
        ("us-smtp-inbound-1.mimecast.com", "gateway", "Mimecast"),
        ("d123456a.ess.barracudanetworks.com", "gateway", "Barracuda Email Protection"),
        ("mx1.contoso.iphmx.com", "gateway", "Cisco Secure Email (IronPort)"),
        ("mx.example.net", "other", ""),
        ("pphosted.com.example.net", "other", ""),  # suffix match, not substring
    ],
)
def test_mx_host_classification(host: str, kind: str, provider: str) -> None:
    assert classify_mx_host(host) == (kind, provider)


def test_tenant_endpoint_name() -> None:
    assert tenant_endpoint("contoso.com") == "contoso-com.mail.protection.outlook.com"
    assert tenant_endpoint("my-shop.co.uk") == "my-shop-co-uk.mail.protection.outlook.com"


def test_spf_terms_parser_names_each_syntax_error() -> None:
    _terms, errors = parse_spf_terms(
        "v=spf1 ip4:192.0.2.300 foo:bar include: a:/99 ip6:2001:db8::/129 redirect=a.example.com "
        "redirect=b.example.com -all"
    )
    assert len(errors) == 6, errors
    assert any("unknown mechanism 'foo'" in e for e in errors)
    assert any("appears twice" in e for e in errors)
    terms, clean = parse_spf_terms("v=spf1 exists:%{i}._spf.%{d} a/24 mx:example.com//64 -all")
    assert clean == [] and [t.name for t in terms] == ["exists", "a", "mx", "all"]
    assert terms[0].macro is True


# -- the command --------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsguard", "posture", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_cli_good_and_fair_exit_0_with_a_readable_report(server: DnsServer) -> None:
    done = run_cli("contoso.com", "example.org", "--resolver", server.nameserver())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "contoso.com: GOOD" in done.stdout
    assert "example.org: FAIR" in done.stdout
    assert "New-InboundConnector" in done.stdout
    assert done.stdout.rstrip().endswith("2 domain(s): 1 good, 1 fair")


def test_cli_poor_or_critical_exit_1(server: DnsServer) -> None:
    done = run_cli("contoso.com", "example.net", "-r", server.nameserver(), "--format", "json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert [d["rating"] for d in doc["domains"]] == ["good", "critical"]
    assert doc["summary"]["critical"] == 1


def test_cli_dns_failure_exit_2_and_the_other_domains_still_reported(server: DnsServer) -> None:
    done = run_cli("down.example.net", "contoso.com", "-r", server.nameserver(), "-f", "json")
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert [(d["domain"], d["rating"]) for d in doc["domains"]] == [
        ("down.example.net", "unknown"), ("contoso.com", "good")
    ]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsguard: down.example.net: ")


def test_cli_usage_errors_are_one_line_exit_2() -> None:
    done = run_cli("contoso.com", "--resolver", "ns.example.net")
    assert done.returncode == 2
    assert done.stderr.startswith("dsguard: --resolver: ") and len(done.stderr.splitlines()) == 1
    done = run_cli("contoso.com", "--resolver", "127.0.0.1:53", "--format", "xml")
    assert (done.returncode, done.stderr) == (
        2, "dsguard: --format: 'xml' is not one of text, json\n"
    )
