"""The flat-multipart fast path reads a body exactly as the stdlib parser path does.

Attachment names, types, decoded bytes, text parts and MIME defects feed findings (ATT_*,
LURE_*, MIME_DEFECT, link checks), so the fast path must give the same ``Body`` as feeding the
whole message to ``email.parser`` -- also for the shapes it declines, where it must step
aside. Messages here are built from pieces that stress the boundary logic: delimiter lines
with trailing blanks or text, boundary-like lines inside parts, preambles and epilogues,
adjacent and missing delimiters, bare CRs, odd part headers, nested parts.
"""

import base64
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.config import Limits, load_config
from dsguard.mail.message import Attachment, Body, ParsedMessage, _part_filename, _payload

LIMITS = load_config(None).limits


def reference_collect(root: Message, body: Body, limits: Limits) -> None:
    """``message._collect`` before part header facts were remembered: every fact read from
    the parsed part by the stdlib's own methods. Kept here, apart from the code under test, so
    a wrong remembered fact (content type, disposition, file name, charset, defects) shows."""
    stack: list[tuple[Message, int]] = [(root, 0)]
    parts = 0
    text_budget = limits.max_text_bytes
    for defect in getattr(root, "defects", []):
        body.defects.append(type(defect).__name__)
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > limits.max_mime_parts:
            body.limit_hits.append(("LIMIT_MIME_PARTS", f"more than {limits.max_mime_parts} parts"))
            return
        if depth > limits.max_mime_depth:
            body.limit_hits.append(("LIMIT_MIME_DEPTH", f"deeper than {limits.max_mime_depth}"))
            continue
        for defect in getattr(part, "defects", []) if part is not root else []:
            body.defects.append(type(defect).__name__)
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
            continue
        ctype = part.get_content_type().lower()
        disposition = (part.get("content-disposition") or "").split(";")[0].strip().lower()
        filename = _part_filename(part)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            data, _ = _payload(part, max(text_budget, 0))
            if not data:
                continue
            text_budget -= len(data)
            charset = part.get_content_charset() or "utf-8"
            try:
                text = data.decode(charset, "replace")
            except LookupError:
                text = data.decode("utf-8", "replace")
            (body.htmls if ctype == "text/html" else body.texts).append(text)
            continue
        data, size = _payload(part, limits.max_attachment_bytes)
        body.attachments.append(
            Attachment(filename, ctype, data, size, inline=disposition == "inline")
        )


def reference(msg: ParsedMessage) -> Body:
    """ParsedMessage.body as it was: the whole MIME body through the stdlib parser."""
    body = Body()
    if not msg.has_body or msg._single_text_part(body):
        return body
    try:
        reference_collect(msg._mime_root(), body, msg.limits)
    except RecursionError:
        body.defects.append("MIME nesting too deep for the parser")
        body.limit_hits.append(("LIMIT_MIME_DEPTH", "parser recursion limit"))
    except Exception as exc:
        body.defects.append(f"MIME parse failed: {type(exc).__name__}")
    return body


def _same(raw: bytes) -> ParsedMessage:
    msg = ParsedMessage(raw, LIMITS)
    assert msg.body == reference(ParsedMessage(raw, LIMITS))
    return msg


PDF = base64.encodebytes(b"%PDF-1.4 fake document \x00\xff" * 20)
PART_HEADERS = [
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-Type: text/html; charset=\"iso-8859-1\"",
    b"Content-Type: text/plain; charset=unknown-8bit",
    b'Content-Type: application/pdf; name="doc.pdf"',
    b"Content-Type: application/octet-stream; name*=utf-8''%E2%82%AC.pdf",
    b'Content-Disposition: attachment; filename="=?utf-8?q?Rechnung_=C3=A4.pdf?="',
    b"Content-Disposition: inline",
    b'Content-Disposition: attachment; filename="<x>.html"',
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: x-uuencode",
    b"Content-Type: multipart/alternative; boundary=inner",
    b"Content-Type: message/rfc822",
    b"Content-Type: image/png",
    b"Content-Type: text",
    b"Content-ID: <a@b>",
    b" folded continuation",
    b"From joe@example.com",
    b": no name",
    b"X-Odd: \xff\xfe",
    b"not a header line",
]
BODIES = [
    b"hello https://www.example.org/x",
    PDF.rstrip(b"\n"),
    b"caf=C3=A9 =\nsoft break",
    b"<p>see <a href=\"http://evil.example/\">here</a></p>",
    b"--b inside text",
    b"--bX not a delimiter",
    b"",
    b"\x00\xe9\xff bytes",
    b"line\r\nline",
    b"QUJD\nRA",
]
# Clean shapes repeated so that most generated messages take the fast path.
DELIMS = [b"--b"] * 8 + [b"--b  ", b"--b\t", b"--b--", b"--b-- ", b"--b-- trailing", b"--b x", b"---b"]
GOOD_PART_HEADERS = PART_HEADERS[:10] * 3 + PART_HEADERS


@st.composite
def multipart(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    ctype = draw(
        st.sampled_from(
            [
                b'multipart/mixed; boundary="b"',
                b'multipart/mixed; boundary="b"',
                b'multipart/mixed; boundary="b"',
                b"multipart/alternative; boundary=b",
                b"Multipart/Mixed; BOUNDARY=\"b\"",
                b'multipart/mixed; boundary="b "',
                b"multipart/digest; boundary=b",
                b"multipart/mixed",
                b'multipart/related; type="text/html"; boundary="b"',
            ]
        )
    )
    head = [b"From: a@example.com", b"Content-Type: " + ctype]
    head += draw(st.sampled_from([[], [b"Content-Transfer-Encoding: 7bit"],
                                  [b"Content-Transfer-Encoding: base64"], [b"MIME-Version: 1.0"]]))
    lines = [draw(st.sampled_from([b"", b"preamble", b"--b-- early close"]))]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(draw(st.sampled_from(DELIMS)))
        lines += draw(st.lists(st.sampled_from(GOOD_PART_HEADERS), max_size=3))
        if draw(st.integers(0, 5)):  # now and then a part without its blank line
            lines.append(b"")
        lines += draw(st.lists(st.sampled_from(BODIES), max_size=3))
    lines.append(draw(st.sampled_from([b"--b--", b"--b--", b"--b--", b"--b", b"", b"--b-- "])))
    lines += draw(st.lists(st.sampled_from([b"epilogue", b"--b", b""]), max_size=2))
    text = eol.join(lines)
    if draw(st.booleans()):
        text += eol
    if draw(st.integers(0, 9)) == 0:
        text = text.replace(b"\n", b"\r", 1)  # a bare CR somewhere
    return eol.join(head) + eol + eol + text


@settings(max_examples=1500, deadline=None)
@given(multipart())
def test_fast_path_body_equals_the_parser_body(raw: bytes) -> None:
    _same(raw)


def test_clean_multiparts_take_the_fast_path_and_read_the_same() -> None:
    for eol in (b"\n", b"\r\n"):
        raw = eol.join(
            [
                b"From: a@example.com",
                b'Content-Type: multipart/mixed; boundary="=_b"',
                b"",
                b"preamble",
                b"--=_b",
                b"Content-Type: text/plain; charset=utf-8",
                b"",
                b"Listen now: https://voice-e091b.firebaseapp.com/x",
                b"--=_b  ",
                b'Content-Type: application/pdf; name="fax.pdf"',
                b'Content-Disposition: attachment; filename="fax.pdf"',
                b"Content-Transfer-Encoding: base64",
                b"",
                PDF.rstrip(b"\n").replace(b"\n", eol),
                b"--=_b--",
                b"epilogue",
                b"",
            ]
        )
        msg = _same(raw)
        assert msg._flat_multipart_root() is not None
        assert [a.filename for a in msg.body.attachments] == ["fax.pdf"]
        assert msg.body.attachments[0].data.startswith(b"%PDF-1.4")
        assert msg.body.texts == ["Listen now: https://voice-e091b.firebaseapp.com/x"]


def test_shapes_the_fast_path_declines_still_read_the_same() -> None:
    declined = [
        # no close delimiter, nested multipart, adjacent delimiters, part without blank line
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nx\n',
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: multipart/alternative;'
        b' boundary="c"\n\n--c\n\ny\n--c--\n--b--\n',
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n--b\n\nx\n--b--\n',
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\nbody\n--b--\n',
        b'Content-Type: multipart/mixed; boundary="b"\n\nno delimiter at all\n',
    ]
    for raw in declined:
        msg = _same(b"From: a@example.com\n" + raw)
        assert msg._flat_multipart_root() is None
