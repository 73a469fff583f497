"""The decoder sandbox stops what in-process limits cannot: PDFium expanding nested forms."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsguard.attachments.sandbox import DecodeSandbox

QR = Path(__file__).parents[2] / "data" / "qr"


def nested_form_bomb(depth: int = 7, fanout: int = 10) -> bytes:
    """A tiny PDF whose page draws form XObject N, which draws form N-1 ``fanout`` times...
    PDFium expands this to fanout**depth drawing operations while loading the page."""
    objects: list[bytes] = []
    # 1: catalog, 2: pages, 3: page, 4..: forms (4 = innermost)
    forms = list(range(4, 4 + depth))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
    content_id = 4 + depth
    objects.append(
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents %d 0 R "
        b"/Resources << /XObject << /F%d %d 0 R >> >> >>" % (content_id, forms[-1], forms[-1])
    )
    for i in range(len(forms)):
        if i == 0:
            stream = b"0 0 m 1 1 l S"
            resources = b""
        else:
            inner = forms[i - 1]
            stream = b" ".join(b"q /F%d Do Q" % inner for _ in range(fanout))
            resources = b"/Resources << /XObject << /F%d %d 0 R >> >>" % (inner, inner)
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] %s /Length %d >>\nstream\n%s\nendstream"
            % (resources, len(stream), stream)
        )
    page_stream = b"q /F%d Do Q" % forms[-1]
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(page_stream), page_stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture
def sandbox() -> Iterator[DecodeSandbox]:
    box = DecodeSandbox(memory_mb=1024)
    yield box
    box.close()


def _qr_pdf(box: DecodeSandbox, name: str, seconds: float = 20.0) -> tuple[str, ...]:
    result = box.scan_pdf(
        (QR / name).read_bytes(),
        max_pages=5,
        dpi=110,
        deadline=time.monotonic() + seconds,
        max_pixels=40_000_000,
    )
    assert result.error is None
    return result.texts


def test_decodes_like_in_process(sandbox: DecodeSandbox) -> None:
    assert _qr_pdf(sandbox, "qr-vector.pdf") == ("https://voice-e091b.firebaseapp.com/?id=test",)
    img = sandbox.scan_image(
        (QR / "qr.png").read_bytes(), deadline=time.monotonic() + 20, max_pixels=40_000_000
    )
    assert img.texts


def test_a_form_bomb_is_stopped_at_the_deadline_and_the_sandbox_recovers(
    sandbox: DecodeSandbox,
) -> None:
    _qr_pdf(sandbox, "qr-vector.pdf")  # child is up
    result = sandbox.scan_pdf(
        nested_form_bomb(),
        max_pages=5,
        dpi=110,
        deadline=time.monotonic() + 2.0,
        max_pixels=40_000_000,
    )
    assert result.texts == ()
    assert result.timed_out or result.error
    # The next file is decoded by a fresh child.
    assert _qr_pdf(sandbox, "qr-raster.pdf") == ("https://mv4lh.bsfff.es/secure/login",)


def test_a_memory_cap_turns_exhaustion_into_an_error() -> None:
    box = DecodeSandbox(memory_mb=300)
    try:
        result = box.scan_pdf(
            nested_form_bomb(depth=8),
            max_pages=5,
            dpi=110,
            deadline=time.monotonic() + 60.0,
            max_pixels=40_000_000,
        )
        assert result.texts == ()
        assert result.error or result.timed_out
    finally:
        box.close()


def test_past_deadline_does_no_work(sandbox: DecodeSandbox) -> None:
    result = sandbox.scan_pdf(
        b"%PDF-1.4", max_pages=5, dpi=110, deadline=time.monotonic() - 1, max_pixels=1000
    )
    assert result.timed_out
