"""Fast paths in the trace, authentication-result, URL and mbox readers equal their general
paths on the inputs they accept, and never take inputs they would read differently."""

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.attachments.urls import (
    _PLAIN_URL,
    _normalise,
    _normalise_general,
    _trim,
    _url_parts_general,
    url_parts,
)
from dsguard.auth.results import _PLAIN_COMMENTS, _split_top, parse_authentication_results
from dsguard.mail.mbox import _from_line_starts
from dsguard.mail.received import (
    _FLAT_COMMENTS,
    _clauses_flat,
    _clauses_of_words,
    _cut_date,
    _tokenize,
    parse_received,
)

TESTS = Path(__file__).parents[2]

# --- Received ---------------------------------------------------------------------------------

RECEIVED_ATOMS = [
    "from", "FROM", "by", "with", "id", "for", "via", "From", " ", "  ", "\t", "\u00a0", "\x1c",
    "(", ")", "[", "]", ";", "helo=", "mx.example.com", "192.0.2.1", "IPv6:2001:db8::1",
    "ESMTPSA", "Authenticated sender: joe", "<a@contoso.com>", "TLS1_2", "unknown", ".", "x",
]


def _received_lines() -> list[str]:
    import email

    lines = []
    for path in sorted(TESTS.glob("corpus/cases/*.eml")):
        msg = email.message_from_bytes(path.read_bytes())
        lines += [str(v) for v in msg.get_all("Received") or []]
    return lines


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(RECEIVED_ATOMS), max_size=40))
def test_flat_clause_reader_equals_the_tokenizer(atoms: list[str]) -> None:
    value = "".join(atoms)
    text, _ = _cut_date(value)
    if _FLAT_COMMENTS.fullmatch(text):
        assert _clauses_flat(text) == _clauses_of_words(_tokenize(value)[0])
    else:
        assert _clauses_flat(text) is None  # left to the tokenizer


def test_flat_clause_reader_equals_the_tokenizer_on_real_lines() -> None:
    lines = _received_lines()
    assert len(lines) > 50
    flat = 0
    for value in lines:
        text, _ = _cut_date(value)
        if _FLAT_COMMENTS.fullmatch(text):
            flat += 1
            assert _clauses_flat(text) == _clauses_of_words(_tokenize(value)[0]), value
    assert flat > len(lines) * 0.8  # the fast path is the common one


def test_nested_or_unbalanced_comments_take_the_general_path() -> None:
    for text in ("from a (b (c) d) by x", "from a (b by x", "from a b) by x", "from a ((b)) by x"):
        assert _FLAT_COMMENTS.fullmatch(text) is None
    hop = parse_received("from a (b (c [192.0.2.7]) d) by mx.example.com; date", 3)
    assert hop.from_ip == "192.0.2.7" and hop.by == "mx.example.com"


# --- Authentication-Results -------------------------------------------------------------------


def _split_top_reference(text: str, sep: str) -> list[str]:
    """The character-by-character splitter the search-based one replaced."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
            continue
        if ch == "\\":
            escaped = True
        elif ch == '"' and depth == 0:
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


AR_ATOMS = [
    "spf", "=", "pass", "fail", ";", " ", "(", ")", '"', "\\", "smtp.mailfrom", "contoso.com",
    "dkim", "header.d", "reason", "000", "mx.example.com", "compauth", "dmarc=fail", "\\;",
    "\\\\", "(a;b)", '"x;y"',
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(AR_ATOMS), max_size=40))
def test_split_top_equals_the_character_loop(atoms: list[str]) -> None:
    text = "".join(atoms)
    assert _split_top(text, ";") == _split_top_reference(text, ";")
    if _PLAIN_COMMENTS.fullmatch(text):  # the plain-split shortcut for flat comments
        assert text.split(";") == _split_top_reference(text, ";")


def test_exchange_and_rfc_results_still_read_the_same() -> None:
    eop = parse_authentication_results(
        "spf=fail (sender IP is 139.28.36.201) smtp.mailfrom=contoso.com; dkim=none (message "
        "not signed) header.d=none;dmarc=fail action=oreject header.from=contoso.com;"
        "compauth=fail reason=000"
    )
    assert eop.authserv_id is None
    assert [(r.method, r.result) for r in eop.results] == [
        ("spf", "fail"), ("dkim", "none"), ("dmarc", "fail"), ("compauth", "fail")
    ]
    assert eop.results[0].comment == "sender IP is 139.28.36.201"
    rfc = parse_authentication_results("mx.contoso.com (comment (nested)); spf=pass smtp.mailfrom=a.example")
    assert rfc.authserv_id == "mx.contoso.com"
    assert [(r.method, r.prop("smtp.mailfrom")) for r in rfc.results] == [("spf", "a.example")]


# --- URLs -------------------------------------------------------------------------------------

URL_ATOMS = [
    "http", "https", "ftp", "HTTP", "://", ":/", "www.", "example.org", "EXAMPLE.org", "a", "-",
    ".", "/", "?", "#", "\\", "@", ":", "8080", "%41", "[", "]", "::1", "x", "\n", "\u00e9", "0x7f",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(URL_ATOMS), max_size=12))
def test_plain_url_fast_path_equals_the_general_normaliser(atoms: list[str]) -> None:
    url = "".join(atoms)
    assert _normalise(url) == _normalise_general(url)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([*URL_ATOMS, " ", "\t", "\x00", "\x7f"]), max_size=12))
def test_url_parts_fast_path_equals_the_general_split(atoms: list[str]) -> None:
    url = "".join(atoms)
    url_parts.cache_clear()
    assert url_parts(url) == _url_parts_general(url)


def test_plain_urls_come_back_unchanged_and_bad_hosts_are_still_refused() -> None:
    for url in ("https://www.example.org/item/1?a=b#c", "ftp://files.example.net", "http://a.b\\x"):
        assert _PLAIN_URL.fullmatch(url)
        assert _normalise(url) == url == _normalise_general(url)
    assert _normalise("http://999.1.1.1/") is None  # ends in a number, not an IPv4 address
    assert _normalise("http://Example.ORG/A") == "http://example.org/A"


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ab.,;:!?'\")]}([{", max_size=12))
def test_trim_shortcut_only_skips_urls_that_end_in_a_plain_character(url: str) -> None:
    from dsguard.attachments.urls import _CLOSING_BRACKETS, _TRAILING_PUNCTUATION

    trimmed = _trim(url)
    assert url.startswith(trimmed)
    if url and url[-1] not in _TRAILING_PUNCTUATION and url[-1] not in _CLOSING_BRACKETS:
        assert trimmed == url


# --- mbox -------------------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"From ", b"\n", b"\r\n", b"a", b">From ", b"From", b" "]),
                max_size=30))
def test_from_line_search_equals_the_line_anchored_regex(atoms: list[bytes]) -> None:
    region = b"".join(atoms)
    expected = [m.start() for m in re.finditer(rb"^From ", region, re.MULTILINE)]
    assert list(_from_line_starts(region)) == expected


# --- Exchange Online host names ---------------------------------------------------------------

HOST_ATOMS = [
    "mail", "protection", "outlook", "com", "de", "office365", "us", "partner", "cn",
    "exchangelabs", "prod", "eop-nam11", "x", ".", "..", "\n", "OUTLOOK", "MAIL", "-",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(HOST_ATOMS), max_size=10))
def test_exchange_host_tests_equal_the_patterns(atoms: list[str]) -> None:
    from dsguard.mail.microsoft import (
        _EXO_FRONTEND,
        _EXO_INTERNAL,
        is_exo_frontend,
        is_exo_internal,
    )

    host = "".join(atoms)
    h = host.lower().rstrip(".")
    assert is_exo_frontend(host) == (bool(host) and _EXO_FRONTEND.search(h) is not None)
    assert is_exo_internal(host) == (bool(host) and _EXO_INTERNAL.search(h) is not None)


def test_exchange_host_tests_on_real_and_near_miss_names() -> None:
    from dsguard.mail.microsoft import is_exo_frontend, is_exo_internal

    assert is_exo_frontend("BN8NAM11FT047.mail.protection.outlook.com.")
    assert is_exo_frontend("x.MAIL.protection.outlook.de")
    assert is_exo_frontend("a.mail.protection.outlook.com\n")  # "$" before a final newline
    assert not is_exo_frontend("mail.protection.outlook.com")
    assert not is_exo_frontend("x.mail.protection.outlook.com.evil.example")
    assert is_exo_internal("SJ0PR11MB5598.namprd11.prod.outlook.com")
    assert is_exo_internal("outlook.com") and is_exo_internal("a.exchangelabs.com")
    assert not is_exo_internal("notoutlook.com") and not is_exo_internal("outlook.com.example")
    assert not is_exo_internal(None) and not is_exo_frontend("")


# --- HELO classification ----------------------------------------------------------------------


def _helo_kind_reference(helo: str) -> str | None:
    import ipaddress

    h = helo.strip().lower().rstrip(".")
    literal = h[1:-1] if h.startswith("[") and h.endswith("]") else h
    literal = literal.removeprefix("ipv6:")
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        ip = None
    if ip is not None:
        return "loopback" if ip.is_loopback or ip.is_unspecified else "literal"
    if h in ("localhost", "localhost.localdomain", "localhost6", "localdomain"):
        return "loopback"
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", h) and not h.isdigit():
        return "bare"
    return None


HELO_ATOMS = ["[", "]", "IPv6:", "127", "0", "1", ".", ":", "::", "ff", "fe80", "%", "eth0",
              "WIN-", "H2J4", "localhost", " ", "x", "٣", "g", "-"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(HELO_ATOMS), max_size=10))
def test_helo_kind_equals_the_try_every_string_version(atoms: list[str]) -> None:
    from dsguard.checks.transport import _helo_kind

    helo = "".join(atoms)
    assert _helo_kind(helo) == _helo_kind_reference(helo)


def test_helo_kind_on_the_campaign_greetings() -> None:
    from dsguard.checks.transport import _helo_kind

    for helo in ("[127.0.0.1]", "[IPv6:::1]", "[192.0.2.1]", "fe80::1%eth0", "WIN-H2J4K6L8Z0X",
                 "localhost", "mail.example.com", "[0.0.0.0]", "12345"):
        assert _helo_kind(helo) == _helo_kind_reference(helo), helo


# --- address fields ---------------------------------------------------------------------------

ADDRESS_ATOMS = ['"', "<", ">", " ", "@", ".", "a", "B", "joe", "contoso.com", "example.org",
                 "=?utf-8?q?x?=", ",", "\\", "(", ")", ":", ";", "+", "é", "\t", "-", ".."]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(ADDRESS_ATOMS), max_size=16))
def test_quoted_self_address_fast_path_equals_the_general_reading(atoms: list[str]) -> None:
    from dsguard.mail.addresses import (
        _SIMPLE,
        _parse_address_field_general,
        parse_address_field,
    )

    raw = "".join(atoms)
    if _SIMPLE.fullmatch(raw) is None:  # the older one-mailbox shortcut is not the subject here
        assert parse_address_field(raw) == _parse_address_field_general(raw)


def test_quoted_self_address_shapes() -> None:
    from dsguard.mail.addresses import _parse_address_field_general, parse_address_field

    for raw in ('"committee@example.org" <committee@example.org>', ' "a@b.co"<a@b.co> ',
                '"A@b.co" <a@b.co>', '"a@b.co" <a@c.co>', '"a@b" <a@b>', '"a@b.co." <a@b.co.>',
                '"a@b.co" <a@b.co>, "c@d.co" <c@d.co>', '"a@b.co" <a@b.co> x'):
        assert parse_address_field(raw) == _parse_address_field_general(raw), raw
    field = parse_address_field('"admin@contoso.com" <admin@contoso.com>')
    assert field.display_name_addresses == () and field.claimed_domains == ("contoso.com",)


@settings(max_examples=3000, deadline=None)
@given(
    st.text(alphabet="aZ09._+-@é\"\\<>() ", min_size=1, max_size=14),
    st.sampled_from(["example.org", "contoso.com", "b", "b..c", "x.example.org.", "ex-ample.co"]),
    st.booleans(),
    st.sampled_from(["", " ", "  \t"]),
)
def test_quoted_self_address_generated(local: str, domain: str, same: bool, pad: str) -> None:
    from dsguard.mail.addresses import _parse_address_field_general, parse_address_field

    addr = f"{local}@{domain}"
    display = addr if same else addr.upper()
    raw = f'{pad}"{display}"{pad}<{addr}>{pad}'
    assert parse_address_field(raw) == _parse_address_field_general(raw)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="0123456789.:٣abf ", max_size=20))
def test_whole_comment_address_shortcut_equals_the_address_search(comment: str) -> None:
    from dsguard.mail.received import _BARE_IP, _valid_ip

    expected = None
    joined = " ".join(comment.split())
    if "[" not in joined:
        for candidate in _BARE_IP.findall(joined):
            expected = _valid_ip(candidate)
            if expected:
                break
    assert parse_received(f"from x ({comment}) by y", 0).from_ip == expected
