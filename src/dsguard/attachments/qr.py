"""QR codes in PDF and image attachments: render the pages, then decode what a phone would see.

The 2025 Direct Send campaign attached "voicemail"/"fax" PDFs whose QR code leads to a fake
Microsoft 365 sign-in page (design.md). The code may be an embedded picture or drawn with vector
paths, so PDF pages are *rendered* with PDFium (pypdfium2) and the bitmap is decoded with
zxing-cpp, instead of only extracting embedded images. Images are opened with Pillow.

Only the QR family is decoded (QR Code, Micro QR, rMQR): it is what quishing uses, and on a
hostile noise image zxing-cpp spends about eight times longer when all 2D formats are enabled.

SECURITY: attachments are attacker-controlled. A PDF can declare a 200 x 200 inch page, embed a
30000 x 30000 pixel image that is 100 KB on disk, nest form XObjects, hold thousands of pages
or be corrupt or encrypted; an image file can be a decompression bomb. The limits:
- at most ``max_pages`` pages are rendered (``page_limit_hit`` says when more exist);
- the render scale is reduced so that no page bitmap exceeds ``max_pixels``;
- before a page is rendered its drawing objects are walked (at most ``MAX_PAGE_OBJECTS``,
  form nesting at most ``MAX_FORM_DEPTH``) and the page is refused when its embedded images
  add up to more than ``max_pixels``, because PDFium decodes an image at full size whatever
  the render scale;
- image dimensions are checked against ``max_pixels`` from the header, before any pixel is
  decoded; only PNG, JPEG, GIF, BMP, TIFF and WebP are opened (never EPS, which Pillow hands to
  Ghostscript); Pillow's own decompression-bomb limit stays in force as an upper bound;
- the deadline is checked before the file is opened and between pages. PDFium loads and
  renders a page in calls that cannot be interrupted, so one page may overrun it. Known
  residual risk: PDFium expands repeated form XObjects while *loading* a page, before any
  check here can run (measured: a 1.5 KB PDF nesting a 10-way fan-out 7 deep took 60 s and
  15 GB in FPDF_LoadPage). Callers that need a hard bound (gateway, milter) must run the scan
  in a worker process with a memory limit and kill it at the deadline;
- at most ``MAX_PAYLOADS`` decoded texts are kept.
Nothing raises: any failure becomes ``QrScan.error``, one line.

PDFium is not thread-safe, and ``warnings.catch_warnings`` (used to keep Pillow's warnings about
hostile files out of the user's terminal) changes process-wide state on Python 3.11, so all
decoding in this module is serialised by one lock.
"""

from __future__ import annotations

import ctypes
import io
import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, cast

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import zxingcpp
from PIL import Image

MAX_PAYLOADS = 100
MAX_PAGE_OBJECTS = 100_000
MAX_FORM_DEPTH = 16

# Formats Pillow may use to open an attachment image. Everything else (EPS, PSD, ICNS, ...) is
# refused: fewer decoders reachable by attackers, and EPS would run Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")

_QR_FORMATS = zxingcpp.BarcodeFormats([
    zxingcpp.BarcodeFormat.QRCode,
    zxingcpp.BarcodeFormat.MicroQRCode,
    zxingcpp.BarcodeFormat.RMQRCode,
])

# PDFium's FPDF_GetLastError codes, as pypdfium2 exposes them in PdfiumError.err_code.
_PDF_OPEN_PROBLEMS = {
    pdfium_c.FPDF_ERR_FORMAT: "not a readable PDF (corrupt or truncated)",
    pdfium_c.FPDF_ERR_PASSWORD: "the PDF is encrypted with a password; its pages cannot be read",
    pdfium_c.FPDF_ERR_SECURITY: "the PDF uses an unsupported security handler",
    pdfium_c.FPDF_ERR_FILE: "not a readable PDF",
}

_NATIVE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class QrScan:
    """What scanning one attachment found. ``error`` does not exclude ``texts``: a PDF whose
    page 2 is refused can still yield the code on page 1."""

    texts: tuple[str, ...]  # decoded QR payloads, deduplicated, in order found
    pages_scanned: int  # PDF pages rendered and decoded (1 for an image, 0 if none)
    page_limit_hit: bool  # the PDF had more pages than max_pages
    timed_out: bool  # the deadline passed before everything was scanned
    error: str | None  # one line when the file, or a page of it, could not be decoded


def scan_pdf(data: bytes, *, max_pages: int, dpi: int, deadline: float, max_pixels: int) -> QrScan:
    """Render up to ``max_pages`` pages at ``dpi`` (less for oversized pages) and decode QR codes.

    ``deadline`` is an absolute ``time.monotonic()`` value. Never raises.
    """
    if not _acquire(deadline):
        return _timed_out()
    try:
        return _scan_pdf_locked(data, max_pages, dpi, deadline, max_pixels)
    except Exception as exc:  # PDFium/zxing on hostile input: report, never raise
        return QrScan((), 0, False, False, f"PDF could not be scanned: {_one_line(exc)}")
    finally:
        _NATIVE_LOCK.release()


def scan_image(data: bytes, *, deadline: float, max_pixels: int) -> QrScan:
    """Decode QR codes in one image (first frame only). Never raises."""
    if not _acquire(deadline):
        return _timed_out()
    try:
        with warnings.catch_warnings():
            # Pillow warns about hostile files (bomb sizes, broken EXIF, odd palettes); the
            # outcome is reported in QrScan.error instead of on the user's terminal.
            warnings.simplefilter("ignore")
            return _scan_image_locked(data, max_pixels)
    except Exception as exc:  # Pillow/zxing on hostile input: report, never raise
        return QrScan((), 0, False, False, f"image could not be scanned: {_one_line(exc)}")
    finally:
        _NATIVE_LOCK.release()


# ----------------------------------------------------------------------------------------- PDF
def _scan_pdf_locked(
    data: bytes, max_pages: int, dpi: int, deadline: float, max_pixels: int
) -> QrScan:
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        known = _PDF_OPEN_PROBLEMS.get(getattr(exc, "err_code", None))
        return QrScan((), 0, False, False, known or f"PDF could not be opened: {_one_line(exc)}")
    try:
        page_count = len(document)
        payloads = _Payloads()
        scanned = 0
        timed_out = False
        first_problem: str | None = None
        for index in range(min(page_count, max(max_pages, 0))):
            if time.monotonic() >= deadline:
                timed_out = True
                break
            try:
                problem = _scan_page(document, index, dpi, max_pixels, payloads)
            except Exception as exc:  # keep what other pages gave; report this one
                problem = f"could not be rendered ({_one_line(exc)})"
            if problem is None:
                scanned += 1
            elif first_problem is None:
                first_problem = f"page {index + 1}: {problem}"
        return QrScan(payloads.texts(), scanned, page_count > max_pages, timed_out, first_problem)
    finally:
        document.close()


def _scan_page(
    document: Any, index: int, dpi: int, max_pixels: int, payloads: _Payloads
) -> str | None:
    """Render and decode one page; return a problem instead of rendering a hostile page."""
    try:
        page = document[index]
    except pdfium.PdfiumError as exc:
        return f"could not be loaded ({_one_line(exc)})"
    try:
        problem = _page_content_problem(page, max_pixels)
        if problem is not None:
            return problem
        width_pt, height_pt = page.get_size()
        scale = _render_scale(width_pt, height_pt, dpi, max_pixels)
        if scale is None:
            return f"unusable page size {width_pt!r} x {height_pt!r} pt"
        bitmap = page.render(scale=scale, grayscale=True)
        try:
            # to_pil() shares the bitmap's memory for greyscale, so decode before closing it.
            payloads.extend(_decode(bitmap.to_pil()))
        finally:
            bitmap.close()
        return None
    finally:
        page.close()


def _render_scale(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> float | None:
    """Pixels per PDF unit for ``dpi`` (1 unit = 1/72 inch), reduced to fit ``max_pixels``."""
    if not (math.isfinite(width_pt) and math.isfinite(height_pt)):
        return None
    if width_pt <= 0 or height_pt <= 0 or max_pixels <= 0:
        return None
    scale = max(dpi, 1) / 72.0
    # PDFium rounds each side to whole pixels, so budget for one extra row and column:
    # (w*s + 1) * (h*s + 1) <= max_pixels, solved for s.
    if (width_pt * scale + 1) * (height_pt * scale + 1) > max_pixels:
        area, perimeter = width_pt * height_pt, width_pt + height_pt
        root = math.sqrt(perimeter * perimeter + 4 * area * (max_pixels - 1))
        scale = (root - perimeter) / (2 * area) * 0.999
    if not math.isfinite(scale) or scale * min(width_pt, height_pt) < 1:
        return None  # a sliver page: nothing a phone could scan fits in the budget
    return scale


def _page_content_problem(page: Any, max_pixels: int) -> str | None:
    """Walk the page's drawing objects; refuse pages PDFium could not render within bounds.

    PDFium decodes embedded images at their full size regardless of the render scale, so a
    30000 x 30000 picture costs gigabytes even on a small page.
    """
    remaining = MAX_PAGE_OBJECTS
    image_pixels = 0
    pending: list[tuple[Any, bool, int]] = [(page.raw, False, 0)]  # (container, is_form, depth)
    width, height = ctypes.c_uint(), ctypes.c_uint()
    while pending:
        container, is_form, depth = pending.pop()
        if is_form:
            count = pdfium_c.FPDFFormObj_CountObjects(container)
            get_object = pdfium_c.FPDFFormObj_GetObject
        else:
            count = pdfium_c.FPDFPage_CountObjects(container)
            get_object = pdfium_c.FPDFPage_GetObject
        remaining -= max(count, 0)
        if remaining < 0:
            return f"more than {MAX_PAGE_OBJECTS} drawing objects; not rendered"
        for position in range(count):
            obj = get_object(container, position)
            if not obj:
                continue
            kind = pdfium_c.FPDFPageObj_GetType(obj)
            if kind == pdfium_c.FPDF_PAGEOBJ_IMAGE:
                if pdfium_c.FPDFImageObj_GetImagePixelSize(
                    obj, ctypes.byref(width), ctypes.byref(height)
                ):
                    image_pixels += width.value * height.value
                    if image_pixels > max_pixels:
                        return (
                            f"embedded images of {image_pixels} pixels (one is "
                            f"{width.value}x{height.value}) exceed the limit of {max_pixels}; "
                            "not rendered"
                        )
            elif kind == pdfium_c.FPDF_PAGEOBJ_FORM:
                if depth >= MAX_FORM_DEPTH:
                    return f"form XObjects nested deeper than {MAX_FORM_DEPTH}; not rendered"
                pending.append((obj, True, depth + 1))
    return None


# -------------------------------------------------------------------------------------- images
def _scan_image_locked(data: bytes, max_pixels: int) -> QrScan:
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        return QrScan((), 0, False, False, f"image too large to decode safely: {_one_line(exc)}")
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        return QrScan((), 0, False, False, f"not a readable image: {_one_line(exc)}")
    with image:
        # Header dimensions only: nothing has been decoded yet (Pillow loads lazily).
        width, height = image.size
        if width <= 0 or height <= 0:
            return QrScan((), 0, False, False, f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            return QrScan(
                (), 0, False, False,
                f"image is {width}x{height} pixels, over the limit of {max_pixels}; not decoded",
            )
        try:
            frame = _greyscale_on_white(image)  # decodes the first frame only
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            return QrScan((), 0, False, False, f"image could not be decoded: {_one_line(exc)}")
    payloads = _Payloads()
    payloads.extend(_decode(frame))
    return QrScan(payloads.texts(), 1, False, False, None)


def _greyscale_on_white(image: Image.Image) -> Image.Image:
    """A mode-L copy of the current (first) frame; transparent areas become white.

    A code drawn black on a transparent background would otherwise turn black on black.
    """
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("L")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # High bit depth: scale to 0..255 rather than letting convert() clip at 255.
        low, high = cast(tuple[float, float], image.getextrema())
        spread = float(high) - float(low) or 1.0
        return image.point(lambda value: (value - low) * 255.0 / spread).convert("L")
    return image.convert("L")


# ------------------------------------------------------------------------------------- helpers
def _decode(image: Image.Image) -> list[str]:
    barcodes = zxingcpp.read_barcodes(image, formats=_QR_FORMATS)
    return [barcode.text for barcode in barcodes if barcode.valid and barcode.text]


class _Payloads:
    """Decoded texts, deduplicated in first-seen order, at most MAX_PAYLOADS."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def extend(self, texts: list[str]) -> None:
        for text in texts:
            if len(self._seen) >= MAX_PAYLOADS:
                return
            self._seen.setdefault(text, None)

    def texts(self) -> tuple[str, ...]:
        return tuple(self._seen)


def _acquire(deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    return remaining > 0 and _NATIVE_LOCK.acquire(timeout=remaining)


def _timed_out() -> QrScan:
    return QrScan((), 0, False, True, None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
