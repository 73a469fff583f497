"""The header splitter's one-pass field scan gives exactly what the line-by-line reading gave.

``REFERENCE`` below is the splitter as it was before the fast path (split on line breaks that
are not followed by whitespace, then one regular expression per field): every field, value,
malformation note, defect and limit must come out the same, on real header blocks and on
hostile bytes (bare CR, NUL, folded names, whitespace before colons, cut-off sections).
"""

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.mail.headers import split_headers

_FIELD_BREAK = re.compile(r"\n(?![ \t])")
_SIMPLE_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\n]*)\Z")
_NAME_COLON = re.compile(r"([\x21-\x39\x3b-\x7e]+)([ \t]*):")
_UNFOLD = re.compile(r"\r?\n")
_HIDDEN_LINE = re.compile(r"\n[ \t]+([\x21-\x39\x3b-\x7e]+)[ \t]*:[ \t<\"]")
_WATCHED_HIDDEN = frozenset({"from", "sender", "reply-to", "to", "resent-from", "return-path"})

Field = tuple[str, str, str, str]


def _odd_field(chunk: str, *, first: bool) -> Field | str:
    malformed = ""
    hidden = _HIDDEN_LINE.search(chunk)
    if (
        hidden
        and hidden.group(1).lower() in _WATCHED_HIDDEN
        and "signature" not in chunk[:40].lower()
    ):
        malformed = f"a continuation line hides a {hidden.group(1)!r} field"
    flat = _UNFOLD.sub("", chunk)
    if flat[:1] in (" ", "\t"):
        stripped = flat.lstrip(" \t")
        m = _NAME_COLON.match(stripped)
        if not (first and m):
            return "continuation line with no field before it"
        name = m.group(1)
        return (
            name,
            name.lower(),
            stripped[m.end() :].strip(" \t\r"),
            "leading whitespace before the field name",
        )
    m = _NAME_COLON.match(flat)
    if m is not None:
        name = m.group(1)
        line_one = chunk.split("\n", 1)[0]
        if ":" not in line_one:
            malformed = "field name folded away from its colon"
        elif m.group(2):
            malformed = "whitespace between the field name and the colon"
        return (name, name.lower(), flat[m.end() :].strip(" \t\r"), malformed)
    colon = flat.find(":")
    if 0 < colon <= 80:
        name = flat[:colon].rstrip(" \t")
        return (
            name,
            name.lower(),
            flat[colon + 1 :].strip(" \t\r"),
            "invalid characters in the field name",
        )
    return f"line without a field name: {flat[:60]!r}"


def reference(raw: bytes, *, max_headers: int, max_header_bytes: int) -> tuple[object, ...]:
    """(fields, body_offset, has_separator, limit_hit, defects) the old way."""
    limit = max_header_bytes + 4
    end = -1
    sep_len = 0
    if raw.startswith(b"\r\n"):
        end, sep_len = 0, 2
    elif raw.startswith(b"\n"):
        end, sep_len = 0, 1
    else:
        crlf = raw.find(b"\n\r\n", 0, limit)
        lf = raw.find(b"\n\n", 0, crlf if crlf != -1 else limit)
        if lf != -1:
            end, sep_len = lf, 2
        elif crlf != -1:
            end, sep_len = crlf, 3
    limit_hit = ""
    if end == -1:
        has_sep = False
        if len(raw) > max_header_bytes:
            section = raw[:max_header_bytes]
            limit_hit = "max_header_bytes"
        else:
            section = raw
        body_offset = len(raw)
    else:
        has_sep = True
        section = raw[: end + 1]
        body_offset = end + sep_len
        if end > max_header_bytes:
            section = raw[:max_header_bytes]
            limit_hit = "max_header_bytes"
    text = section.decode("utf-8", "replace").replace("\x00", "\ufffd")
    fields: list[Field] = []
    defects: list[str] = []
    for chunk in _FIELD_BREAK.split(text):
        if not chunk or chunk in ("\r", "\n"):
            continue
        if len(fields) >= max_headers:
            limit_hit = limit_hit or "max_headers"
            break
        m = _SIMPLE_FIELD.match(chunk)
        if m is not None:
            fields.append((m.group(1), m.group(1).lower(), m.group(2).strip(" \t\r"), ""))
            continue
        field = _odd_field(chunk, first=not fields)
        if isinstance(field, tuple):
            fields.append(field)
        elif field:
            defects.append(field)
    return fields, body_offset, has_sep, limit_hit, tuple(defects)


def current(raw: bytes, *, max_headers: int, max_header_bytes: int) -> tuple[object, ...]:
    block = split_headers(raw, max_headers=max_headers, max_header_bytes=max_header_bytes)
    # ParsedMessage indexes well-formed fields by their key as is: no whitespace around it.
    assert all(h.key == h.key.strip() for h in block.headers if not h.malformed)
    fields = [(h.name, h.key, h.value, h.malformed) for h in block.headers]
    return fields, block.body_offset, block.has_body_separator, block.limit_hit, block.defects


ATOMS = [
    b"From", b"To", b"Received", b"DKIM-Signature", b":", b": ", b" :", b" ", b"\t", b"\r",
    b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\x00", b"\xff\xfe", b"\xc3\xa9", b"x@example.com",
    b"<a@contoso.com>", b"=?utf-8?b?QQ==?=", b"\r\n From: <b@contoso.com>", b"(", b"\"", b"a",
    b"Sub ject", b"\r\n\t", b"\n ", b"From\r\n : x", b"\x0b", b"\x1c", b"\xc2\x85",
]


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from(ATOMS), max_size=40),
    st.sampled_from([1, 2, 5, 1000]),
    st.sampled_from([8, 40, 1 << 20]),
)
def test_split_equals_reference_on_header_shaped_bytes(
    atoms: list[bytes], max_headers: int, max_header_bytes: int
) -> None:
    raw = b"".join(atoms)
    kw = {"max_headers": max_headers, "max_header_bytes": max_header_bytes}
    assert current(raw, **kw) == reference(raw, **kw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_split_equals_reference_on_random_bytes(raw: bytes) -> None:
    kw = {"max_headers": 50, "max_header_bytes": 1500}
    assert current(raw, **kw) == reference(raw, **kw)


def test_split_equals_reference_on_the_corpus_and_header_pastes() -> None:
    tests = Path(__file__).parents[2]
    files = sorted(tests.glob("corpus/cases/*.eml")) + sorted(
        p for p in (tests / "data" / "mha-headers").rglob("*") if p.is_file()
    )
    assert len(files) > 40
    for path in files:
        raw = path.read_bytes()
        for kw in ({"max_headers": 1000, "max_header_bytes": 1 << 20},
                   {"max_headers": 7, "max_header_bytes": 900}):
            assert current(raw, **kw) == reference(raw, **kw), path.name


def test_end_of_header_section_equals_reference_exhaustively() -> None:
    # Every string of up to 7 bytes over the bytes that decide where the section ends, with
    # limits that cut right before, inside and after a blank line.
    import itertools

    for length in range(8):
        for combo in itertools.product(b"\n\r:a", repeat=length):
            raw = bytes(combo)
            for max_header_bytes in (1, 2, 3, 4, 6, 100):
                kw = {"max_headers": 100, "max_header_bytes": max_header_bytes}
                assert current(raw, **kw) == reference(raw, **kw), (raw, max_header_bytes)
