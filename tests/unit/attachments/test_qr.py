"""QR decoding of PDF and image attachments, on the fixtures in tests/data/qr (see its README)."""

from __future__ import annotations

import io
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

from dsguard.attachments.qr import QrScan, scan_image, scan_pdf

DATA = Path(__file__).resolve().parents[2] / "data" / "qr"
MAX_PIXELS = 40_000_000  # the shipped default (limits.max_image_pixels)


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def pdf(name: str, *, max_pages: int = 5, dpi: int = 110, max_pixels: int = MAX_PIXELS) -> QrScan:
    return scan_pdf(
        fixture(name), max_pages=max_pages, dpi=dpi, deadline=time.monotonic() + 30,
        max_pixels=max_pixels,
    )


def image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> QrScan:
    return scan_image(data, deadline=time.monotonic() + 30, max_pixels=max_pixels)


def png_bytes(picture: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=params.pop("format", "PNG"), **params)  # type: ignore[arg-type]
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- PDF
def test_vector_drawn_qr_in_pdf_is_found_by_rendering() -> None:
    assert pdf("qr-vector.pdf") == QrScan(
        ("https://voice-e091b.firebaseapp.com/?id=test",), 1, False, False, None
    )


def test_raster_qr_in_fax_lure_pdf_is_found() -> None:
    assert pdf("qr-raster.pdf") == QrScan(
        ("https://mv4lh.bsfff.es/secure/login",), 1, False, False, None
    )


def test_qr_on_last_page_of_three_is_found() -> None:
    assert pdf("qr-page3.pdf") == QrScan(("https://example.com/page3",), 3, False, False, None)


def test_qr_beyond_the_page_limit_is_not_rendered_and_the_limit_is_reported() -> None:
    assert pdf("qr-page7.pdf", max_pages=5) == QrScan((), 5, True, False, None)


def test_same_pdf_within_a_larger_page_limit_yields_the_code() -> None:
    result = pdf("qr-page7.pdf", max_pages=8)
    assert result.texts == ("https://example.com/page7",)
    assert not result.page_limit_hit


def test_text_only_pdf_has_no_payloads_and_no_error() -> None:
    assert pdf("no-qr.pdf") == QrScan((), 1, False, False, None)


def test_hostile_page_size_is_rendered_within_the_pixel_budget() -> None:
    # 200 x 200 inches at 300 dpi would be 60000 x 60000 pixels; the scale must shrink to fit.
    result = pdf("huge-page.pdf", dpi=300, max_pixels=4_000_000)
    assert result == QrScan(("https://example.com/huge-page",), 1, False, False, None)


def test_embedded_image_bomb_page_is_refused_before_rendering() -> None:
    result = pdf("image-bomb.pdf")
    assert result.texts == ()
    assert result.pages_scanned == 0
    assert result.error is not None
    assert "page 1" in result.error
    assert "30000x30000" in result.error


def test_password_protected_pdf_is_reported_not_raised() -> None:
    result = pdf("encrypted.pdf")
    assert result.texts == ()
    assert result.error is not None
    assert "encrypted" in result.error


def test_encrypted_fixture_is_a_valid_pdf_with_the_right_password() -> None:
    # Guards the previous test: the error must come from the encryption, not a broken file.
    document = pdfium.PdfDocument(fixture("encrypted.pdf"), password="secret")
    try:
        assert len(document) == 1
    finally:
        document.close()


@pytest.mark.parametrize(
    "data", [fixture("truncated.pdf"), b"", b"%PDF-1.7\n", b"\x00" * 1000, b"not a pdf at all"]
)
def test_corrupt_pdf_gives_one_line_error(data: bytes) -> None:
    result = scan_pdf(data, max_pages=5, dpi=110, deadline=time.monotonic() + 30,
                      max_pixels=MAX_PIXELS)
    assert result.texts == ()
    assert result.pages_scanned == 0
    assert result.error is not None
    assert "\n" not in result.error


def test_deadline_already_passed_means_no_work_at_all() -> None:
    past = time.monotonic() - 1
    # Corrupt bytes would give an error if they were opened; timed_out and no error shows
    # the file was never touched.
    for data in (fixture("qr-raster.pdf"), b"garbage"):
        result = scan_pdf(data, max_pages=5, dpi=110, deadline=past, max_pixels=MAX_PIXELS)
        assert result == QrScan((), 0, False, True, None)
    assert scan_image(b"garbage", deadline=past, max_pixels=MAX_PIXELS) == QrScan(
        (), 0, False, True, None
    )


def test_concurrent_scans_from_threads_all_succeed() -> None:
    # PDFium is not thread-safe; the module serialises it. Every result must still be right.
    names = ["qr-vector.pdf", "qr-raster.pdf", "qr-page3.pdf"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(pdf, names))
    expected = {
        "qr-vector.pdf": ("https://voice-e091b.firebaseapp.com/?id=test",),
        "qr-raster.pdf": ("https://mv4lh.bsfff.es/secure/login",),
        "qr-page3.pdf": ("https://example.com/page3",),
    }
    assert [result.texts for result in results] == [expected[name] for name in names]


# ------------------------------------------------------------------------------------- images
def test_png_qr_is_decoded() -> None:
    assert image(fixture("qr.png")) == QrScan(
        ("https://example.net/voicemail/listen?id=42",), 1, False, False, None
    )


def test_small_jpeg_compressed_qr_is_decoded() -> None:
    assert image(fixture("qr-small.jpg")).texts == ("https://example.org/fax",)


@pytest.mark.parametrize("name", ["bomb-10000.png", "bomb-30000.png"])
def test_decompression_bomb_is_refused_without_warnings(name: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = image(fixture(name))
    assert caught == []
    assert result.texts == ()
    assert result.pages_scanned == 0
    assert result.error is not None


def test_image_over_the_pixel_limit_is_refused_by_header_size() -> None:
    result = image(fixture("bomb-10000.png"))
    assert result.error == (
        "image is 10000x10000 pixels, over the limit of 40000000; not decoded"
    )


def test_configured_pixel_limit_applies_to_small_images_too() -> None:
    result = image(fixture("qr.png"), max_pixels=1000)
    assert result.texts == ()
    assert result.error is not None
    assert "over the limit of 1000" in result.error


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        # EPS would be handed to Ghostscript by Pillow; it must not even be identified.
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    ],
)
def test_unreadable_or_refused_image_formats_give_an_error(data: bytes) -> None:
    result = image(data)
    assert result.texts == ()
    assert result.error is not None


def test_truncated_png_gives_an_error_not_an_exception() -> None:
    data = fixture("qr.png")
    result = image(data[: len(data) // 2])
    assert result.texts == ()
    assert result.error is not None


def test_qr_drawn_on_a_transparent_background_is_found() -> None:
    with Image.open(io.BytesIO(fixture("qr.png"))) as source:
        grey = source.convert("L")
    # Black modules, fully transparent elsewhere: RGB alone is black on black.
    transparent = Image.new("RGBA", grey.size, (0, 0, 0, 0))
    transparent.putalpha(grey.point(lambda value: 255 - value))
    assert image(png_bytes(transparent)).texts == ("https://example.net/voicemail/listen?id=42",)


def test_animated_gif_only_the_first_frame_is_decoded() -> None:
    with Image.open(io.BytesIO(fixture("qr.png"))) as source:
        first = source.convert("L")
    with Image.open(io.BytesIO(fixture("qr-small.jpg"))) as source:
        second = source.convert("L").resize(first.size)
    data = png_bytes(first, format="GIF", save_all=True, append_images=[second], duration=100)
    assert image(data).texts == ("https://example.net/voicemail/listen?id=42",)


def test_same_code_twice_in_one_image_is_reported_once() -> None:
    with Image.open(io.BytesIO(fixture("qr.png"))) as source:
        code = source.convert("L")
    canvas = Image.new("L", (code.width * 2 + 40, code.height), 255)
    canvas.paste(code, (0, 0))
    canvas.paste(code, (code.width + 40, 0))
    assert image(png_bytes(canvas)).texts == ("https://example.net/voicemail/listen?id=42",)


def test_sixteen_bit_greyscale_png_is_decoded() -> None:
    with Image.open(io.BytesIO(fixture("qr.png"))) as source:
        wide = source.convert("L").convert("I").point(lambda value: value * 257)
    assert image(png_bytes(wide.convert("I;16"))).texts == (
        "https://example.net/voicemail/listen?id=42",
    )
