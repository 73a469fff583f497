"""The HTML fast path (``_feed_fast``) finds exactly what the html.parser-only reader found.

``_reference_extract`` is the HTML half of ``extract_urls`` as it was before the fast path
(``_LinkParser`` fed the whole document), kept verbatim apart from names. It shares the text
scanner, link normalisation and collector with the module, which the fast path did not change.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsguard.attachments import urls
from dsguard.attachments.urls import (
    _HIDDEN_TEXT_ELEMENTS,
    _INLINE_ELEMENTS,
    _META_REFRESH_URL,
    _URL_ATTRIBUTES,
    _Collector,
    _is_refresh,
    _link_target,
    _scan_text,
    extract_urls,
)

TESTS = Path(__file__).parents[2]


# --- reference: the parser-only reader --------------------------------------------------------
class _ReferenceLimitReachedError(Exception):
    pass


class _ReferenceLinkParser(HTMLParser):
    def __init__(self, collector: _Collector) -> None:
        super().__init__(convert_charrefs=True)
        self._collector = collector
        self._text: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _INLINE_ELEMENTS:
            self.flush_text()
        if tag in _HIDDEN_TEXT_ELEMENTS:
            self._hidden_depth += 1
        for name, value in attrs:
            if value is None:
                continue
            if name in _URL_ATTRIBUTES:
                self._add_link(value)
            elif tag == "meta" and name == "content" and _is_refresh(attrs):
                found = _META_REFRESH_URL.search(value)
                if found:
                    self._add_link(found.group(1))

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TEXT_ELEMENTS and self._hidden_depth:
            self._hidden_depth -= 1
        if tag not in _INLINE_ELEMENTS:
            self.flush_text()

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self._text.append(data)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i)

    def flush_text(self) -> None:
        if self._text:
            text = "".join(self._text)
            self._text = []
            if not _scan_text(text, self._collector):
                raise _ReferenceLimitReachedError

    def unparsed_tail(self) -> str:
        return self.rawdata

    def _add_link(self, value: str) -> None:
        url = _link_target(value)
        if url is None:
            return
        self.flush_text()
        if not self._collector.add(url):
            raise _ReferenceLimitReachedError


def _reference_scan_html(document: str, collector: _Collector) -> None:
    parser = _ReferenceLinkParser(collector)
    try:
        parser.feed(document)
        parser.flush_text()
        tail = parser.unparsed_tail()
        if tail:
            _scan_text(html.unescape(tail), collector)
    except _ReferenceLimitReachedError:
        return
    except Exception:
        _scan_text(html.unescape(document), collector)


def _reference_extract(document: str, limit: int) -> tuple[list[str], bool]:
    collector = _Collector(limit)
    _reference_scan_html(document, collector)
    return list(collector.urls), collector.limit_hit


def _check(document: str, limit: int) -> None:
    assert extract_urls(document, html=True, limit=limit) == _reference_extract(document, limit)


# --- generated HTML ---------------------------------------------------------------------------
_TAG_NAMES = [
    "a", "A", "p", "P", "div", "span", "b", "br", "img", "IMG", "meta", "Meta", "script",
    "SCRIPT", "style", "Style", "table", "td", "form", "input", "button", "body", "html", "title",
    "font", "center", "o:p", "v:shape", "x-y", "h1", "li", "wbr", "area", "base", "link",
    "iframe", "q", "a.b", "a_b", "textarea",
]
_ATTRIBUTE_NAMES = [
    "href", "HREF", "Href", "src", "action", "formaction", "background", "http-equiv",
    "HTTP-EQUIV", "content", "style", "class", "id", "data-x", "target", "alt", "title",
    "disabled", "xmlns:v", "_x", ":y", "a.b", "1x", "@click", "h\u0130ref", "hreF",
]
_URLS = [
    "http://a.example.com/x", "https://b.example.org", "//c.example.net/p?q=1",
    "www.d.example.com/x", "WWW.E.EXAMPLE.COM", "javascript:alert(1)", "mailto:x@example.com",
    "HTTPS://F.Example.COM/Path#Frag", "ftp://g.example.org/f", "http://[::1]/",
    "http://3232235777/", "https://evil.example\\@contoso.com/", "/relative", "cid:x",
    "http://h.example.com/a&amp;b", "&#x68;ttp://i.example.com", "http&#58;//j.example.com",
    "http://k.example.com/&lt;x&gt;", "http://l.example.com/?a=1&b=2", "\thttp://m.example.com\n",
    "http://exämple.com/", "http://n.example.com/ x", "refresh", "Refresh", " REFRESH ",
    "0; url=http://r.example.com/go", "5;URL='https://s.example.com/'", "url=www.t.example.com",
    "", "x", "&", "&amp;", "&#", "&#x", "&nbsp;",
]
_VALUE_JUNK = ['"', "'", ">", "<", " ", "\n", "=", "/", "\xa0", "\x0b", "`", "&quot;", "\x00"]
_SPACES = [" ", "  ", "\n", "\t", "\r\n", "\f", "", "/", " / ", "\x0b", "\xa0", "\x1c", "\u2003"]
_CLOSES = [">", "/>", " >", " />", "/ >", "", "x>", "\n>", "\x0b>", "//>", "\xa0>"]
_END_TAGS = [
    "</a>", "</A >", "</p>", "</ p >", "</div\n>", "</a foo>", "</a\x0b>", "</>", "</3>", "</",
    "</script>", "</SCRIPT >", "</ script>", "</\u017fcript>", "</scr\u0130pt>", "</style>",
    "</STYLE>", "</b>", "</span>", "</td>", "</a href=x>", "</a\xa0>", "</p/>",
]
_MARKUP = [
    "<!--", "-->", "<!-- x -->", "<!-->", "--!>", "<!---->", "-- >", "<!--[if mso]>",
    "<![endif]-->", "<![if !mso]>", "<![endif]>", "<![CDATA[ http://cdata.example.com ]]>",
    "<![foo]>", "<![", "<![ if]>", "<![if", "<!doctype html>", "<!DOCTYPE", "<!DocType x>",
    "<!x>", "<!>", "<!-", "<?xml version=\"1.0\"?>", "<?", "<?php echo 1 ?>", "<", "< ", "<3",
    "<<", "<a", "<a ", "<a href=", '<a href="', "<a href='", "<p", "<p/", "<1>", "<\u00e4>",
    "<a\x00b>", '<a href="x"title="y">', "<a href=x/>", "<img src=//u.example.com/>",
]
_ENDTAG_FORM = re.compile(r"</\s*[a-zA-Z][-.a-zA-Z0-9:_]*\s*>")
_TEXT = [
    "hello", " ", "\n", "http://t.example.com/a", "www.u.example.com", "HTTP://V.EXAMPLE.COM",
    "ftp://w.example.org", "https://x.example.com/a).", "(http://y.example.com/b)", "://",
    "www.", "http", "ww", "w.z.example.com", "&amp;", "&#x68;", "&#104;", "&lt;", "&gt;",
    "&quot;", "&nbsp;", "&amp", "&#", "&", "&#x", ";", ">", "\u00e4", "\u0130", "\u017f",
    "\u212a", "example.com", ")", ".", "@", "\u201c", "x" * 40,
]


@st.composite
def _start_tag(draw: st.DrawFn) -> str:
    parts = ["<", draw(st.sampled_from(_TAG_NAMES))]
    for _ in range(draw(st.integers(0, 4))):
        parts.append(draw(st.sampled_from(_SPACES[:6]) if draw(st.booleans()) else
                          st.sampled_from(_SPACES)))
        parts.append(draw(st.sampled_from(_ATTRIBUTE_NAMES)))
        style = draw(st.integers(0, 6))
        if style == 0:
            continue  # no value
        equals = draw(st.sampled_from(["=", "=", " = ", "\n=\n", "==", "= ", "=\xa0"]))
        value = draw(
            st.lists(st.sampled_from(_URLS + _VALUE_JUNK), min_size=1, max_size=3).map("".join)
            if draw(st.integers(0, 4)) == 0 else st.sampled_from(_URLS)
        )
        if style <= 2:
            parts += [equals, '"', value.replace('"', ""), '"']
        elif style <= 4:
            parts += [equals, "'", value.replace("'", ""), "'"]
        elif style == 5:
            parts += [equals, value]
        else:
            parts += [equals, value]  # anything goes, quotes included
    parts.append(draw(st.sampled_from(_CLOSES[:2]) if draw(st.integers(0, 3)) else
                      st.sampled_from(_CLOSES)))
    return "".join(parts)


_PIECE = st.one_of(
    _start_tag(),
    st.sampled_from(_END_TAGS),
    st.sampled_from(_MARKUP),
    st.sampled_from(_TEXT),
    st.text(max_size=5),
)
_DOCUMENT = st.lists(_PIECE, max_size=40).map("".join)
_LIMIT = st.sampled_from([0, 1, 2, 3, 5, 100])

# Markup the fast path reads itself (a document of it is never handed to html.parser), so that
# the comparison exercises the fast path over whole documents, not just up to the first oddity.
_FAST_ATTRIBUTE_NAMES = [name for name in _ATTRIBUTE_NAMES if name[0].isascii() and
                         (name[0].isalpha() or name[0] in "_:") and name.isascii()]
_BARE_VALUES = [url for url in _URLS if url and not any(c in url for c in " \t\n\"'>=")]
_FAST_END_TAGS = [tag for tag in _END_TAGS if _ENDTAG_FORM.fullmatch(tag)]
_FAST_MARKUP = [
    "<!-- x -->", "<!---->", "<!-- <a href=http://c.example.com> -- >", "<!--[if mso]><p>x<![endif]-->",
    "<![if !mso]>", "<![endif]>", "<![CDATA[ http://cdata.example.com ]]>", "<![foo]>",
    "<!doctype html>", "<!DocType x>", "<!x>", "<!>", "<?xml version=\"1.0\"?>", "< ", "<3", "<<",
    "<!-->", "-->", "--!>", "<\u00e4>", "<1>",
]
_SCRIPT_CONTENT = [
    "var u='http://hidden.example.com';", "</\u017fcript>", "</scr\u0130pt>", "</ script >",
    "</style>", "</script>", "</STYLE >", "<!--", "<p>", "</p>", "&amp;", "</a b>", "<a href=x>",
]


@st.composite
def _fast_start_tag(draw: st.DrawFn) -> str:
    parts = ["<", draw(st.sampled_from(_TAG_NAMES))]
    for _ in range(draw(st.integers(0, 4))):
        parts.append(draw(st.sampled_from(_SPACES[:6])))
        parts.append(draw(st.sampled_from(_FAST_ATTRIBUTE_NAMES)))
        style = draw(st.integers(0, 3))
        if style == 0:
            continue
        parts.append(draw(st.sampled_from(["=", " = ", "\n=\t"])))
        if style == 3:
            parts.append(draw(st.sampled_from(_BARE_VALUES)))
        else:
            quote = "\"" if style == 1 else "'"
            value = draw(st.lists(st.sampled_from(_URLS + _VALUE_JUNK), max_size=3).map("".join))
            parts += [quote, value.replace(quote, ""), quote]
    parts.append(draw(st.sampled_from([">", "/>", " >", " />", "\n>"])))
    return "".join(parts)


@st.composite
def _hidden_element(draw: st.DrawFn) -> str:
    tag = draw(st.sampled_from(["script", "style", "SCRIPT", "Style"]))
    content = draw(st.lists(st.sampled_from(_SCRIPT_CONTENT), max_size=4).map("".join))
    close = draw(st.sampled_from([f"</{tag}>", f"</ {tag.lower()} >", f"</{tag}\n>", ""]))
    return f"<{tag}>{content}{close}"


_FAST_PIECE = st.one_of(
    _fast_start_tag(),
    _fast_start_tag(),
    st.sampled_from(_FAST_END_TAGS),
    st.sampled_from(_FAST_MARKUP),
    st.sampled_from(_TEXT),
    _hidden_element(),
)
_FAST_DOCUMENT = st.lists(_FAST_PIECE, max_size=40).map("".join)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FAST_DOCUMENT, _LIMIT)
def test_fast_path_equals_the_parser_on_generated_well_formed_html(
    document: str, limit: int
) -> None:
    _check(document, limit)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENT, _LIMIT)
def test_fast_path_equals_the_parser_on_generated_html(document: str, limit: int) -> None:
    _check(document, limit)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_TEXT + _MARKUP + _END_TAGS + _CLOSES + _SPACES + _URLS
                                + _VALUE_JUNK + _TAG_NAMES + _ATTRIBUTE_NAMES), max_size=60)
       .map("".join), _LIMIT)
def test_fast_path_equals_the_parser_on_markup_soup(document: str, limit: int) -> None:
    _check(document, limit)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/!?-[]=\"' \n\ta&#;:x")), max_size=50), _LIMIT)
def test_fast_path_equals_the_parser_on_punctuation(document: str, limit: int) -> None:
    _check(document, limit)


@settings(max_examples=500, deadline=None)
@given(st.text(), _LIMIT)
def test_fast_path_equals_the_parser_on_any_text(document: str, limit: int) -> None:
    _check(document, limit)


@pytest.mark.parametrize(
    "document",
    [
        "<p>ok</p><a href=\"https://tail.example.com/x",
        "<script>var u='http://hidden.example.com'</script>http://shown.example.com",
        "<script>http://a.example.com</\u017fcript>http://b.example.com</script>http://c.example.com",
        "<style>x</style >http://a.example.com<style>http://unterminated.example.com",
        "<script/>http://after-selfclosed-script.example.com",
        "<meta http-equiv=refresh content=\"0;url=http://m.example.com\">",
        "<meta content='0; URL=https://n.example.com/' HTTP-EQUIV='Refresh'/>",
        "<a href=http://slash.example.com/>x</a>",
        "<![if !mso]><a href=http://ms.example.com>x</a><![endif]>",
        "<![CDATA[http://cdata.example.com]]>http://after.example.com",
        "<![bogus http://bogus.example.com> http://after.example.com",
        "text http://t.example.com/&amp",
        "text http://t.example.com/?a=1&b",
        "<p>http://ev<b></b>il.example.com/x</p>",
        "<a href=\"http://h.example.com\" title=y>x</a >< http://lt.example.com <",
        "<a href==x http://odd.example.com>",
        "</a b=c> http://odd-end.example.com </> </3> http://x.example.com",
        "<a\xa0href=http://nbsp.example.com>",
        "<!DOCTYPE html><html><!-- <a href=http://commented.example.com> --><body>",
        "<?xml version='1.0'?><p>http://pi.example.com</p><?",
        "http://a.example.com <!-- unterminated http://c.example.com",
        "<a href='http://a.example.com'>" * 3 + "<!--" * 5000,
    ],
)
@pytest.mark.parametrize("limit", [0, 1, 100])
def test_fast_path_equals_the_parser_on_edge_cases(document: str, limit: int) -> None:
    _check(document, limit)


# --- real mail --------------------------------------------------------------------------------
def _corpus_html_bodies() -> list[tuple[str, str]]:
    bodies = []
    for path in sorted([*TESTS.glob("data/**/*.eml"), *TESTS.glob("corpus/**/*.eml")]):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for part in msg.walk():
            if part.get_content_type() != "text/html":
                continue
            try:
                body = part.get_content()
            except (LookupError, ValueError, AssertionError):
                body = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
            if isinstance(body, str):
                bodies.append((path.name, body))
    return bodies


def test_fast_path_equals_the_parser_on_every_html_body_in_the_corpora() -> None:
    bodies = _corpus_html_bodies()
    assert len(bodies) >= 50
    for name, body in bodies:
        for limit in (0, 1, 3, 200):
            assert extract_urls(body, html=True, limit=limit) == _reference_extract(
                body, limit
            ), name


def test_fast_path_reads_the_corpora_without_html_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path must be the common one: real mail HTML is never handed over.
    def refuse(self: HTMLParser, data: str) -> None:
        raise AssertionError(f"handed over: {data[:80]!r}")

    monkeypatch.setattr(urls._LinkParser, "feed", refuse)
    for _name, body in _corpus_html_bodies():
        urls._feed_fast(urls._LinkParser(_Collector(200)), body)


def test_unusual_tags_are_handed_to_html_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[str] = []
    monkeypatch.setattr(urls._LinkParser, "feed", lambda self, data: fed.append(data))
    for document in ("<p>x</p><a href==y>", "<b>x</b></a b>", "<p>x<a\xa0href=y>"):
        fed.clear()
        urls._feed_fast(urls._LinkParser(_Collector(200)), document)
        assert fed and fed[0].startswith(("<a", "</a"))


@pytest.mark.parametrize(
    "document",
    [
        "<a b" * 50_000,
        '<a href="x"' * 50_000,
        "<p>" * 100_000 + "<a href=x y",
        "<a " + "x=1 " * 100_000,
        "</a" + " " * 200_000,
        "<!--" + "-" * 100_000 + " " * 100_000,
        "<![if x]>" * 30_000,
        "<![if" + " " * 100_000,
        "<script>" + "</scrip" * 30_000,
        "<a href=http://a.example.com/>" * 30_000,
        "&amp;" * 100_000 + "<p>",
        "<" * 200_000,
        "< " * 100_000,
        "<!doctype" * 50_000,
        "<p>http://a.example.com/" * 20_000,
    ],
)
def test_fast_path_equals_the_parser_on_hostile_input(document: str) -> None:
    # Not timed (see bench/): quadratic behaviour here takes minutes, which is the failure.
    _check(document, 500)
