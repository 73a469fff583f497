"""Authentication-Results: Microsoft's id-less form, RFC 8601 forms, and agreement with authres."""

import authres
import pytest

from dsguard.auth.results import parse_authentication_results, parse_received_spf

EOP = (
    "spf=fail (sender IP is 139.28.36.171) smtp.mailfrom=contoso.com; dkim=none (message not signed) "
    "header.d=none;dmarc=fail action=oreject header.from=contoso.com;compauth=fail reason=601"
)


def test_microsoft_form_without_authserv_id() -> None:
    ar = parse_authentication_results(EOP)
    assert ar.authserv_id is None
    got = {r.method: r.result for r in ar.results}
    assert got == {"spf": "fail", "dkim": "none", "dmarc": "fail", "compauth": "fail"}
    comp = next(r for r in ar.results if r.method == "compauth")
    assert comp.prop("reason") == "601"
    dmarc = next(r for r in ar.results if r.method == "dmarc")
    assert dmarc.prop("action") == "oreject" and dmarc.prop("header.from") == "contoso.com"


def test_microsoft_stray_domain_tokens_are_skipped() -> None:
    # Microsoft's own documentation example (anti-spoofing doc).
    ar = parse_authentication_results(
        "spf=none (sender IP is 10.2.3.4) smtp.mailfrom=fabrikam.com; contoso.com; dkim=none "
        "(message not signed) header.d=none; contoso.com; dmarc=none action=none "
        "header.from=fabrikam.com; compauth=fail reason=001"
    )
    assert [r.method for r in ar.results] == ["spf", "dkim", "dmarc", "compauth"]


STANDARD = [
    "mx.google.com; dkim=temperror (no key for signature) header.i=@msn.com header.s=selector1 "
    "header.b=g3yQKpdi; arc=pass (i=1); spf=pass (google.com: domain of a@msn.com designates "
    "2a01:111:f403:2805::800 as permitted sender) smtp.mailfrom=a@msn.com; dmarc=pass "
    "(p=NONE sp=QUARANTINE dis=NONE) header.from=msn.com",
    "mx.contoso.com; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org header.s=s1; "
    "dmarc=pass header.from=example.org",
    "mx.contoso.com 1; spf=softfail smtp.mailfrom=bounce@example.net",
]


@pytest.mark.parametrize("value", STANDARD)
def test_agrees_with_authres_on_standard_headers(value: str) -> None:
    ours = parse_authentication_results(value)
    theirs = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    assert ours.authserv_id == theirs.authserv_id.lower()
    assert [(r.method, r.result) for r in ours.results] == [
        (r.method, r.result) for r in theirs.results
    ]
    for mine, ref in zip(ours.results, theirs.results, strict=True):
        for p in ref.properties:
            assert mine.prop(f"{p.type}.{p.name}") == p.value


@pytest.mark.parametrize(
    "junk", ["", ";;;;", "=", "a" * 20000, "x; spf=(((", 'x; dkim=pass reason="unterminated']
)
def test_junk_does_not_raise(junk: str) -> None:
    parse_authentication_results(junk)


def test_received_spf() -> None:
    result, pairs = parse_received_spf(
        "Pass (protection.outlook.com: domain of contoso.com designates 203.0.113.9 as permitted sender) "
        "receiver=protection.outlook.com; client-ip=203.0.113.9; helo=printer.contoso.com;"
    )
    assert (
        result == "pass"
        and pairs["client-ip"] == "203.0.113.9"
        and pairs["helo"] == "printer.contoso.com"
    )


def test_long_header_reads_like_short_ones() -> None:
    # Headers longer than the cache bound take the uncached path (segments not cached
    # either); a header made of the same segments reads the same either way.
    short = "mx.contoso.com; " + EOP
    long_value = short + "; dkim=pass (padding " + "x" * 3000 + ") header.d=contoso.com"
    a, b = parse_authentication_results(short), parse_authentication_results(long_value)
    assert a.authserv_id == b.authserv_id == "mx.contoso.com"
    assert b.results[: len(a.results)] == a.results
    assert b.results[-1].method == "dkim" and b.results[-1].prop("header.d") == "contoso.com"


def test_shared_segments_across_headers() -> None:
    # Segments are cached on their own: the same "dkim=none ..." segment in a header with and
    # without an authserv-id, and as the first segment, gives the same result everywhere.
    seg = "dkim=none (message not signed) header.d=none"
    first = parse_authentication_results(seg + "; spf=pass smtp.mailfrom=a.example")
    later = parse_authentication_results("mx.example; spf=pass smtp.mailfrom=b.example; " + seg)
    assert first.authserv_id is None and later.authserv_id == "mx.example"
    assert first.results[0] == later.results[1]
    assert first.results[0].comment == "message not signed"
    lone = parse_authentication_results("mx.example (comment; with semicolon); " + seg)
    assert lone.authserv_id == "mx.example" and lone.results == (first.results[0],)


def test_received_spf_dict_is_the_callers_own() -> None:
    # The parsed pairs are remembered: a caller changing its dict must not change the next one.
    value = "Pass (comment) receiver=mx.contoso.com; client-ip=203.0.113.9; helo=a.contoso.com;"
    first = parse_received_spf(value)[1]
    first["client-ip"] = "changed"
    del first["helo"]
    assert parse_received_spf(value)[1] == {
        "receiver": "mx.contoso.com",
        "client-ip": "203.0.113.9",
        "helo": "a.contoso.com",
    }


def test_received_spf_fields_that_never_recur_read_the_same_once_the_memo_stops_storing() -> None:
    # Mail from ever new senders: every Received-SPF field is new, the memo stops storing
    # (mail.memo), and the answers are those of the unmemoised parser.
    from dsguard.auth import results

    results._parse_received_spf.cache_clear()
    try:
        for i in range(3000):
            ip = f"198.51.{i // 256}.{i % 256}"
            spf = f"Pass (n{i}.example designates {ip} as permitted sender) client-ip={ip};"
            assert parse_received_spf(spf) == ("pass", {"client-ip": ip})
        info = results._parse_received_spf.cache_info()
        assert not info.storing and info.currsize == 0
    finally:
        results._parse_received_spf.cache_clear()
