"""Header splitting keeps what attackers hide (espoofer A9-A11 shapes) and never raises."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.mail.headers import split_headers


def _split(raw: bytes, **kw: int):
    return split_headers(
        raw,
        max_headers=kw.get("max_headers", 100),
        max_header_bytes=kw.get("max_header_bytes", 65536),
    )


def test_folded_values_are_unfolded_and_body_offset_found() -> None:
    raw = b"Subject: a\r\n very long\r\n\tsubject\r\nFrom: x@example.com\r\n\r\nbody"
    block = _split(raw)
    assert [(h.key, h.value) for h in block.headers] == [
        ("subject", "a very long\tsubject"),
        ("from", "x@example.com"),
    ]
    assert raw[block.body_offset :] == b"body"
    assert block.has_body_separator


def test_space_before_colon_is_kept_as_a_from_field_and_flagged() -> None:
    block = _split(b"From: <first@example.net>\r\nFrom : <admin@contoso.com>\r\n\r\nb")
    froms = [h for h in block.headers if h.key == "from"]
    assert [h.value for h in froms] == ["<first@example.net>", "<admin@contoso.com>"]
    assert froms[1].malformed == "whitespace between the field name and the colon"


def test_name_folded_away_from_its_colon_is_recovered() -> None:
    block = _split(b"From\r\n : <first@example.net>\r\nFrom: <admin@contoso.com>\r\n\r\nb")
    froms = [h for h in block.headers if h.key == "from"]
    assert froms[0].value == "<first@example.net>"
    assert "folded" in froms[0].malformed


def test_leading_whitespace_field_and_hidden_from_in_continuation() -> None:
    first = _split(b" From: <first@example.net>\r\nFrom: <admin@contoso.com>\r\n\r\n")
    assert first.headers[0].key == "from" and "leading whitespace" in first.headers[0].malformed
    hidden = _split(
        b"Received: from x by y\r\n From: <first@example.net>\r\nFrom: <a@contoso.com>\r\n\r\n"
    )
    assert "hides a 'From' field" in hidden.headers[0].malformed
    assert [h.value for h in hidden.headers if h.key == "from"] == ["<a@contoso.com>"]


def test_header_only_paste_has_no_body() -> None:
    block = _split(b"From: a@contoso.com\nTo: b@contoso.com\nSubject: hi\n")
    assert not block.has_body_separator
    assert len(block.headers) == 3


def test_limits_cut_the_section_and_say_so() -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(50)) + b"\r\nbody"
    block = _split(many, max_headers=10)
    assert len(block.headers) == 10 and block.limit_hit == "max_headers"
    huge = b"Subject: " + b"a" * 5000 + b"\r\n\r\nbody"
    block = _split(huge, max_header_bytes=1000)
    assert block.limit_hit == "max_header_bytes"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data: bytes) -> None:
    block = _split(data, max_headers=50, max_header_bytes=2000)
    assert len(block.headers) <= 50
    for h in block.headers:
        assert "\x00" not in h.value


def test_folded_dkim_tag_list_is_not_a_hidden_from() -> None:
    raw = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1; h=\r\n"
           b" From:To:Subject:Date; bh=abc; b=def\r\nFrom: a@example.org\r\n\r\nbody")
    block = _split(raw)
    assert block.headers[0].malformed == ""
    assert block.headers[0].value.startswith("v=1;")
