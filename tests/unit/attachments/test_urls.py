"""URL extraction from bodies, and the host a browser would contact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.attachments.urls import extract_urls, is_ip_literal_host, url_host


def text_urls(text: str, limit: int = 100) -> list[str]:
    urls, _ = extract_urls(text, html=False, limit=limit)
    return urls


def html_urls(document: str, limit: int = 100) -> list[str]:
    urls, _ = extract_urls(document, html=True, limit=limit)
    return urls


# ----------------------------------------------------------------------------------- plain text
def test_plain_text_urls_lose_trailing_sentence_punctuation() -> None:
    text = (
        "Listen now: https://voice.example.com/vm?id=7. Or http://example.net/a, "
        "(see https://example.org/x) and 'ftp://files.example.com/f'! Really? http://q.example.com?"
    )
    assert text_urls(text) == [
        "https://voice.example.com/vm?id=7",
        "http://example.net/a",
        "https://example.org/x",
        "ftp://files.example.com/f",
        "http://q.example.com",
    ]


def test_balanced_brackets_inside_a_url_are_kept() -> None:
    assert text_urls("(https://en.example.org/wiki/Fax_(machine))") == [
        "https://en.example.org/wiki/Fax_(machine)"
    ]


def test_bare_www_host_gets_http() -> None:
    assert text_urls("Visit www.contoso.com/login today.") == ["http://www.contoso.com/login"]


def test_www_inside_an_address_or_without_a_domain_is_not_a_link() -> None:
    assert text_urls("mail joe@www.contoso.com or see www.example") == []


def test_scheme_and_host_are_lowercased_path_and_fragment_kept() -> None:
    assert text_urls("HTTPS://Login.EXAMPLE.com/Path/To?Q=A#am9lQGNvbnRvc28uY29t") == [
        "https://login.example.com/Path/To?Q=A#am9lQGNvbnRvc28uY29t"
    ]


def test_duplicates_are_reported_once_in_first_seen_order() -> None:
    text = "http://b.example.com http://a.example.com HTTP://B.EXAMPLE.COM http://a.example.com."
    assert text_urls(text) == ["http://b.example.com", "http://a.example.com"]


def test_url_limit_is_respected_and_reported() -> None:
    text = "http://a.example.com http://b.example.com http://c.example.com"
    assert extract_urls(text, html=False, limit=2) == (
        ["http://a.example.com", "http://b.example.com"], True,
    )
    assert extract_urls(text, html=False, limit=3)[1] is False
    assert extract_urls(text + " http://a.example.com", html=False, limit=3)[1] is False


def test_urls_with_invalid_hosts_are_dropped() -> None:
    text = "http://[zz]/ http://:80/ http://1.2.3.999/ http://a%zz.example.com/"
    assert text_urls(text + " http://ok.example.com") == ["http://ok.example.com"]


# ----------------------------------------------------------------------------------------- HTML
def test_html_link_attributes_in_every_quoting_style() -> None:
    document = (
        '<a href="https://double.example.com/a">x</a>'
        "<a href='https://single.example.com/b'>y</a>"
        "<a href=https://unquoted.example.com/c>z</a>"
        '<img src="https://img.example.com/logo.png">'
        '<form action="https://form.example.com/post"><button formaction="https://btn.example.com/">'
    )
    assert html_urls(document) == [
        "https://double.example.com/a",
        "https://single.example.com/b",
        "https://unquoted.example.com/c",
        "https://img.example.com/logo.png",
        "https://form.example.com/post",
        "https://btn.example.com/",
    ]


def test_entity_encoded_href_is_decoded() -> None:
    document = '<a href="&#x68;ttp&#58;//evil.example.com/?a=1&amp;b=2">Listen</a>'
    assert html_urls(document) == ["http://evil.example.com/?a=1&b=2"]


def test_script_mail_data_and_relative_links_are_ignored() -> None:
    document = (
        '<a href="javascript:location=\'http://js.example.com\'">a</a>'
        '<a href="mailto:joe@contoso.com">b</a>'
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
        '<a href="/relative/path">c</a><img src="cid:logo@contoso.com">'
    )
    assert html_urls(document) == []


def test_visible_text_urls_are_found_but_not_script_or_style() -> None:
    document = (
        "<html><head><style>body{background:url(http://css.example.com/x.png)}</style>"
        "<script>var u = 'http://script.example.com/';</script></head>"
        "<body><p>Your voicemail: https://visible.example.com/vm</p></body></html>"
    )
    assert html_urls(document) == ["https://visible.example.com/vm"]


def test_url_split_by_inline_tags_is_read_as_displayed() -> None:
    assert html_urls("<p>go to http://ev<b></b>il.example.com/x</p>") == [
        "http://evil.example.com/x"
    ]


def test_block_tags_separate_text() -> None:
    assert html_urls("<p>http://a.example.com</p><p>next</p>") == ["http://a.example.com"]


def test_browser_tolerated_link_spellings_are_read_like_a_browser() -> None:
    document = (
        '<a href="  ht\ntps://ws.example.com/ ">a</a>'
        '<a href="https:\\\\backslash.example.com/">b</a>'
        '<a href="//protocol-relative.example.com/p">c</a>'
        '<meta http-equiv="Refresh" content="0; URL=\'https://refresh.example.com/go\'">'
    )
    assert html_urls(document) == [
        "https://ws.example.com/",
        "https://backslash.example.com/",
        "http://protocol-relative.example.com/p",
        "https://refresh.example.com/go",
    ]


def test_attribute_and_text_urls_keep_document_order() -> None:
    document = 'see http://first.example.com <a href="http://second.example.com">x</a>'
    assert html_urls(document) == ["http://first.example.com", "http://second.example.com"]


def test_broken_html_still_yields_links() -> None:
    document = '<div><a href="https://one.example.com/">one<p><table><td>https://two.example.com'
    assert html_urls(document) == ["https://one.example.com/", "https://two.example.com"]


def test_unterminated_tag_at_the_end_is_searched_as_text() -> None:
    assert html_urls('<p>ok</p><a href="https://tail.example.com/x') == [
        "https://tail.example.com/x"
    ]


def test_html_limit_stops_parsing() -> None:
    document = "".join(f'<a href="https://h{i}.example.com/">x</a>' for i in range(50))
    urls, hit = extract_urls(document, html=True, limit=10)
    assert hit is True
    assert urls == [f"https://h{i}.example.com/" for i in range(10)]


# ------------------------------------------------------------------------ pathological inputs
@pytest.mark.parametrize(
    ("payload", "is_html"),
    [
        ("http://" + "a" * 100_000, False),
        ("http://" + ")" * 100_000, False),
        ("(" * 100_000 + "http://a.example.com" + ")" * 100_000, False),
        ("www." * 50_000, False),
        ("http://" * 50_000, False),
        ("<a href=" * 50_000, True),
        ("<a " * 50_000, True),
        ("<!--" * 50_000, True),
        ("<![" * 50_000, True),
        ("</" * 50_000, True),
        ('<a href="' * 50_000, True),
        ("<script>" + "</" * 50_000, True),
        ("&#" * 50_000, True),
    ],
)
def test_pathological_input_finishes_without_error(payload: str, is_html: bool) -> None:
    # Not timed (see bench/): quadratic behaviour here takes minutes, which is the failure.
    urls, _ = extract_urls(payload, html=is_html, limit=500)
    assert len(urls) <= 500
    assert all(url_host(url) is not None for url in urls)


def test_long_url_is_returned_whole() -> None:
    assert text_urls("http://" + "a" * 100_000) == ["http://" + "a" * 100_000]


_MARKUP_PIECES = [
    *"<>/=\"'&#;!?-[]()ahtpsw.:x \n\\@%", "http://", "https://", "www.", "<a href=", "<!--",
    "-->", "<![", "<script>", "</script>", "&#x68;", "&amp;", "example.com", "[::1]", "\u00e4",
]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(), st.lists(st.sampled_from(_MARKUP_PIECES)).map("".join)),
    st.booleans(),
)
def test_any_text_gives_valid_urls_and_never_raises(text: str, is_html: bool) -> None:
    urls, _ = extract_urls(text, html=is_html, limit=20)
    assert len(urls) == len(set(urls)) <= 20
    assert all(url_host(url) is not None for url in urls)


# ------------------------------------------------------------------------------------ url_host
@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Login.Example.COM/x", "login.example.com"),
        ("http://user:pass@host.example.com:8080/p", "host.example.com"),
        ("http://example.com./", "example.com"),
        ("http://[2001:DB8::1]:443/", "2001:db8::1"),
        # Backslash ends the authority in browsers: the real host is evil.example.
        ("https://evil.example\\@contoso.com/", "evil.example"),
        ("https://contoso.com@evil.example/", "evil.example"),
        ("http://ex%61mple.com/", "example.com"),
        ("http://exämple.com/", "xn--exmple-cua.com"),
        ("http://xn--exmple-cua.com/", "xn--exmple-cua.com"),
        ("http://3232235777/", "192.168.1.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("https:evil.example/", "evil.example"),
        (" https://tab\t.example.com/ ", "tab.example.com"),
    ],
)
def test_url_host_is_the_host_a_browser_contacts(url: str, host: str) -> None:
    assert url_host(url) == host


@pytest.mark.parametrize(
    "url",
    ["mailto:joe@contoso.com", "javascript:alert(1)", "not a url", "http://", "http://[zz]/",
     "http://host:99999999/", "http://1.2.3.999/", "http://exa mple.com/", "//example.com/"],
)
def test_url_host_is_none_when_unparseable(url: str) -> None:
    assert url_host(url) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("192.0.2.10", True),
        ("2001:db8::1", True),
        ("[2001:db8::1]", True),
        ("3232235777", True),
        ("0x7f.1", True),
        ("example.com", False),
        ("1.2.3.999", False),
        ("1e3", False),
        ("", False),
    ],
)
def test_is_ip_literal_host(host: str, expected: bool) -> None:
    assert is_ip_literal_host(host) is expected


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([
    "http://", "https://", "ftp://", "HTTPS://", "www.", "WWW.", "x", "a.b", " ", "\n", "<", ">",
    '"', "(", ")", ".", "@", "/", ":", "-", "_", "é", "\u201c", "example.com", "hxxp://", "xhttp://",
]), max_size=40).map("".join))
def test_fast_text_scan_finds_what_the_reference_pattern_finds(text: str) -> None:
    from dsguard.attachments.urls import _URL_IN_TEXT, iter_text_urls

    assert list(iter_text_urls(text)) == [m.group() for m in _URL_IN_TEXT.finditer(text)]
