"""Regenerate the QR test fixtures in this folder.

Run from the repository root:  .venv/bin/python tests/data/qr/make_fixtures.py

Everything is synthetic (segno + Pillow + a few hand-written PDF objects) and deterministic:
dates are pinned so that re-running the script gives byte-identical files. The URLs are the
campaign indicators named in shared/background/direct-send-landscape.md section 2 and
shared/design.md, so a scan of these files exercises the same path as a real lure.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import sys
import time
import zlib
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent

VECTOR_URL = "https://voice-e091b.firebaseapp.com/?id=test"
RASTER_URL = "https://mv4lh.bsfff.es/secure/login"
PAGE3_URL = "https://example.com/page3"
PAGE7_URL = "https://example.com/page7"
PNG_URL = "https://example.net/voicemail/listen?id=42"
JPEG_URL = "https://example.org/fax"
HUGE_PAGE_URL = "https://example.com/huge-page"

PINNED_TIME = time.struct_time((2025, 7, 1, 12, 0, 0, 1, 182, 0))


# --------------------------------------------------------------------------- tiny PDF writer
def _pdf(objects: list[bytes], *, trailer_extra: bytes = b"") -> bytes:
    """Serialise objects 1..n (object 1 must be the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, trailer_extra, xref,
    )
    return bytes(out)


def _stream(content: bytes, extra: bytes = b"") -> bytes:
    packed = zlib.compress(content, 9)
    return b"<< /Length %d /Filter /FlateDecode %s>>\nstream\n" % (len(packed), extra) + (
        packed + b"\nendstream"
    )


def _pdf_text(text: str) -> bytes:
    # WinAnsiEncoding: the em dash is 0x97; escape the PDF string delimiters.
    raw = text.encode("cp1252")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _text_ops(lines: list[str], x: float, y: float, size: float) -> bytes:
    ops = [b"BT /F1 %.1f Tf %.1f TL %.1f %.1f Td" % (size, size * 1.4, x, y)]
    ops += [b"(" + _pdf_text(line) + b") Tj T*" for line in lines]
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def _qr_ops(url: str, x: float, y: float, module: float) -> bytes:
    """A QR code drawn with filled rectangles (vector), lower-left corner at (x, y)."""
    matrix = segno.make(url, error="m", micro=False).matrix
    size = len(matrix)
    ops = [b"q 0 g %.3f 0 0 %.3f %.3f %.3f cm" % (module, module, x, y)]
    for row_index, row in enumerate(matrix):
        for col_index, dark in enumerate(row):
            if dark:
                ops.append(b"%d %d 1 1 re" % (col_index, size - 1 - row_index))
    ops.append(b"f Q")
    return b"\n".join(ops) + b"\n"


def _document(pages: list[bytes], *, media_box: tuple[float, float] = (612, 792)) -> bytes:
    """A PDF whose pages have the given content streams and a Helvetica font."""
    page_count = len(pages)
    first_page = 4
    kids = b" ".join(b"%d 0 R" % (first_page + 2 * i) for i in range(page_count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, page_count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, content in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (media_box[0], media_box[1], first_page + 2 * i + 1)
        )
        objects.append(_stream(content))
    return _pdf(objects)


def _text_page(number: int, total: int, body: str) -> bytes:
    return _text_ops([f"Page {number} of {total}", "", body], 72, 720, 14)


def multi_page_with_qr(total: int, qr_page: int, url: str) -> bytes:
    pages = []
    for number in range(1, total + 1):
        content = _text_page(number, total, "Quarterly report, nothing to scan here.")
        if number == qr_page:
            content = _text_page(number, total, "Scan to listen:") + _qr_ops(url, 72, 360, 6)
        pages.append(content)
    return _document(pages)


def no_qr_pdf() -> bytes:
    lines = [
        "Minutes of the facilities meeting",
        "",
        "1. The fax machine on floor 2 will be removed.",
        "2. Voicemail greetings must be updated by Friday.",
        "3. No QR codes, links or attachments in this document.",
    ]
    return _document([_text_ops(lines, 72, 720, 14)])


def huge_page_pdf() -> bytes:
    # 200 x 200 inches (14400 pt, the PDF 1.7 maximum page size): at 110 dpi this would be a
    # 22000 x 22000 pixel bitmap (484 Mpx); the scanner must shrink the render to max_pixels.
    content = _text_ops(["Hostile page size"], 200, 14000, 200) + _qr_ops(
        HUGE_PAGE_URL, 1200, 1200, 360
    )
    return _document([content], media_box=(14400, 14400))


def pdf_with_bomb_image() -> bytes:
    """One page showing a 30000 x 30000 1-bit image (112 MB decoded, ~110 KB on disk)."""
    side = 30000
    row = b"\xff" * (side // 8)  # 1 = white with the default /Decode [0 1]
    compressor = zlib.compressobj(9)
    packed = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 1 /Length %d /Filter /FlateDecode >>\nstream\n"
        % (side, side, len(packed))
    ) + packed + b"\nendstream"
    content = b"q 540 0 0 540 36 126 cm /Im1 Do Q\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /XObject << /Im1 5 0 R >> >> /Contents 4 0 R >>",
        _stream(content),
        image,
    ]
    return _pdf(objects)


# ------------------------------------------------- encrypted PDF (Standard handler, V1 / R2)
_PASSWORD_PAD = bytes.fromhex(
    "28bf4e5e4e758a4164004e56fffa01082e2e00b6d0683e802f0ca9fe6453697a"
)


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def encrypted_pdf(user_password: bytes, owner_password: bytes) -> bytes:
    """PDF 1.7 (ISO 32000-1) 7.6.3, algorithms 2, 3 and 4 with a 40-bit RC4 key.

    MD5 and RC4 are what the spec prescribes for this (legacy) handler, not a design choice.
    """
    file_id = hashlib.md5(b"dsguard qr-encrypted fixture").digest()
    permissions = -4
    owner_key = hashlib.md5((owner_password + _PASSWORD_PAD)[:32]).digest()[:5]
    o_value = _rc4(owner_key, (user_password + _PASSWORD_PAD)[:32])
    file_key = hashlib.md5(
        (user_password + _PASSWORD_PAD)[:32] + o_value + struct.pack("<i", permissions) + file_id
    ).digest()[:5]
    u_value = _rc4(file_key, _PASSWORD_PAD)

    def object_key(number: int) -> bytes:
        seed = file_key + struct.pack("<i", number)[:3] + b"\x00\x00"
        return hashlib.md5(seed).digest()[:10]

    content = zlib.compress(_text_ops(["Encrypted voicemail notice"], 72, 720, 14), 9)
    sealed = _rc4(object_key(4), content)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(sealed) + sealed
        + b"\nendstream",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>"
        % (o_value.hex().encode(), u_value.hex().encode(), permissions),
    ]
    return _pdf(
        objects,
        trailer_extra=b"/Encrypt 5 0 R /ID [<%s> <%s>] " % ((file_id.hex().encode(),) * 2),
    )


# ------------------------------------------------------------------------ segno / Pillow output
def _qr_image(url: str, scale: int) -> Image.Image:
    buffer = io.BytesIO()
    segno.make(url, error="m", micro=False).save(buffer, kind="png", scale=scale, border=4)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("L")


def _pin_segno_date(data: bytes) -> bytes:
    # segno stamps the current local time; replace it with a same-length constant so the xref
    # offsets stay valid and the file is reproducible.
    return re.sub(rb"D:\d{14}[+-]\d\d'\d\d'", b"D:20250701120000+00'00'", data)


def vector_pdf() -> bytes:
    buffer = io.BytesIO()
    segno.make(VECTOR_URL, error="m", micro=False).save(buffer, kind="pdf", scale=4)
    return _pin_segno_date(buffer.getvalue())


def raster_pdf() -> bytes:
    """A fax-lure page as one raster image (the way Pillow writes PDFs): text, a logo bar, QR."""
    page = Image.new("RGB", (850, 1100), "white")  # US Letter at 100 dpi
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 850, 90), fill=(0, 90, 170))
    draw.text((40, 25), "Contoso Unified Communications", fill="white",
              font=ImageFont.load_default(size=34))
    font = ImageFont.load_default(size=30)
    draw.text((80, 150), "New Missed Fax-msg — scan to listen", fill="black", font=font)
    draw.text((80, 200), "Received: 2 pages, caller ID withheld", fill=(60, 60, 60), font=font)
    page.paste(_qr_image(RASTER_URL, 8).convert("RGB"), (230, 300))
    buffer = io.BytesIO()
    page.save(buffer, format="PDF", resolution=100.0, quality=80,
              creationDate=PINNED_TIME, modDate=PINNED_TIME)
    return buffer.getvalue()


def png_qr() -> bytes:
    buffer = io.BytesIO()
    segno.make(PNG_URL, error="m", micro=False).save(buffer, kind="png", scale=6)
    return buffer.getvalue()


def small_jpeg_qr() -> bytes:
    buffer = io.BytesIO()
    _qr_image(JPEG_URL, 3).save(buffer, format="JPEG", quality=40)
    return buffer.getvalue()


def bomb_png(side: int) -> bytes:
    """A 1-bit greyscale PNG of side x side white pixels, written row by row (tiny on disk)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body)
        )

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * ((side + 7) // 8)  # filter byte "None", then the pixels
    packed = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", packed)
        + chunk(b"IEND", b"")
    )


def main() -> int:
    raster = raster_pdf()
    fixtures = {
        "qr-vector.pdf": vector_pdf(),
        "qr-raster.pdf": raster,
        "qr-page3.pdf": multi_page_with_qr(3, 3, PAGE3_URL),
        "qr-page7.pdf": multi_page_with_qr(8, 7, PAGE7_URL),
        "no-qr.pdf": no_qr_pdf(),
        "huge-page.pdf": huge_page_pdf(),
        "image-bomb.pdf": pdf_with_bomb_image(),
        "encrypted.pdf": encrypted_pdf(b"secret", b"owner"),
        "truncated.pdf": raster[:400],
        "qr.png": png_qr(),
        "qr-small.jpg": small_jpeg_qr(),
        "bomb-30000.png": bomb_png(30000),
        "bomb-10000.png": bomb_png(10000),
    }
    for name, data in fixtures.items():
        if len(data) >= 200_000:
            print(f"{name}: {len(data)} bytes, over the 200 KB fixture budget", file=sys.stderr)
            return 1
        (HERE / name).write_bytes(data)
        print(f"{name:16} {len(data):7} bytes  sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
