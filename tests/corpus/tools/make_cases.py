"""Write the dsguard corpus messages (tests/corpus/cases/*.eml).

Run from the repository root:

    .venv/bin/python tests/corpus/tools/make_cases.py          # (re)write every .eml
    .venv/bin/python tests/corpus/tools/make_cases.py --check  # also render every PDF/image
                                                                # and decode the QR codes

The output is committed; this script documents how each message was made. It is
deterministic: every random-looking value (GUIDs, queue ids, DKIM b= blobs) comes from a
``random.Random`` seeded with the case's file name, and no timestamps are taken from the clock.

What the files reconstruct, and from which write-ups, is in ../README.md; what dsguard must
say about each one is in ../expected.toml (written by hand, not by this script).

Shapes used (see ../README.md for sources):
* Exchange Online inbound: the boundary ``Received: from <HELO> (<IP>) by
  XXXXFTnnn.mail.protection.outlook.com (...) via Frontend Transport``; EOP's id-less
  ``Authentication-Results`` and ``Received-SPF`` above it; the Exchange-internal hops above
  those; the ``X-MS-Exchange-*`` / ``X-Forefront-Antispam-Report`` / ``Return-Path`` stamps at
  the bottom of the header block, after the sender's MIME headers, as in real EXO exports.
* Exchange Online intra-organisation mail: only ``with mapi`` / internal hops, AuthAs Internal.
* Self-hosted Postfix: ``Return-Path``/``X-Original-To``/``Delivered-To`` at the top, optional
  amavis re-injection hops, ``Authentication-Results: mx.contoso.com; ...`` above the boundary.
* PowerShell ``Send-MailMessage`` (System.Net.Mail) MIME: ``--boundary_0_<guid>`` boundaries,
  ``Date`` without a weekday, no Message-ID (Exchange adds one), attachments as
  ``application/octet-stream; name=...``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import quopri
import random
import re
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE.parent / "cases"

TENANT_ID = "5b3c1f0e-8a2d-4c6e-9f71-2d4e8a6b0c13"  # made-up contoso.com tenant
JOE_MBX = "SJ0PR11MB5598"  # joe@contoso.com's mailbox server
ANNA_MBX = "SJ0PR11MB4990"  # anna@contoso.com's mailbox server


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def rng_for(name: str) -> random.Random:
    return random.Random(name)  # str seeds are hashed deterministically (sha512)


def guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def hexid(rng: random.Random, n: int, upper: bool = True) -> str:
    s = "".join(rng.choice("0123456789abcdef") for _ in range(n))
    return s.upper() if upper else s


def alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(n))


def b64blob(rng: random.Random, nbytes: int) -> str:
    return base64.b64encode(rng.randbytes(nbytes)).decode()


def fold(name: str, value: str, width: int = 78, cont: str = " ") -> str:
    """Fold ``name: value`` at spaces, as Exchange and most MTAs do (RFC 5322 section 2.2.3)."""
    words = value.split(" ")
    lines: list[str] = []
    cur = f"{name}:"
    for word in words:
        candidate = f"{cur} {word}"
        if len(candidate) > width and cur.strip() not in (f"{name}:", ""):
            lines.append(cur)
            cur = f"{cont}{word}" if cont != " " else f" {word}"
        else:
            cur = candidate
    lines.append(cur)
    return "\n".join(lines)


def b64lines(data: bytes) -> str:
    """Base64 wrapped at 76 columns (RFC 2045 section 6.8)."""
    enc = base64.b64encode(data).decode()
    return "\n".join(enc[i : i + 76] for i in range(0, len(enc), 76))


def qp(text: str) -> str:
    return quopri.encodestring(text.encode("utf-8")).decode("ascii")


def exo_date(dt: datetime) -> str:
    return f"{dt:%a}, {dt.day} {dt:%b %Y %H:%M:%S} +0000"


def local_date(dt: datetime, offset_hours: int) -> str:
    """RFC 5322 date in the sender's local time (the Date header a client writes)."""
    local = dt + timedelta(hours=offset_hours)
    return f"{local:%a}, {local.day} {local:%b %Y %H:%M:%S} +{offset_hours:02d}00"


def postfix_date(dt: datetime) -> str:
    return f"{dt:%a}, {dt.day:2d} {dt:%b %Y %H:%M:%S} +0000 (UTC)"


def netmail_date(dt: datetime, offset_hours: int) -> str:
    """System.Net.Mail's Date format: no weekday, the sender's local offset."""
    local = dt + timedelta(hours=offset_hours)
    sign = "+" if offset_hours >= 0 else "-"
    return f"{local.day} {local:%b %Y %H:%M:%S} {sign}{abs(offset_hours):02d}00"


def arrival(dt: datetime, rng: random.Random) -> str:
    return f"{dt.day:02d} {dt:%b %Y %H:%M:%S}.{rng.randint(0, 9999):04d} (UTC)"


def utc(y: int, mo: int, d: int, h: int, mi: int, s: int) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# attachments: PDFs and images (QR codes made with segno)
# --------------------------------------------------------------------------------------------


def qr_matrix(url: str) -> list[list[bool]]:
    return [[bool(v) for v in row] for row in segno.make(url, error="m").matrix]


def qr_png(url: str, scale: int = 8) -> bytes:
    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()


def qr_pil(url: str, scale: int) -> Image.Image:
    return Image.open(io.BytesIO(qr_png(url, scale))).convert("L")


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


@dataclass
class PdfPage:
    ops: list[str] = field(default_factory=list)
    images: dict[str, tuple[int, int, bytes]] = field(default_factory=dict)  # name -> w, h, gray

    def text(self, x: float, y: float, size: float, text: str, bold: bool = False,
             rgb: tuple[float, float, float] = (0.1, 0.1, 0.1)) -> None:
        font = "/F2" if bold else "/F1"
        self.ops.append(f"{rgb[0]} {rgb[1]} {rgb[2]} rg BT {font} {size} Tf {x} {y} Td "
                        f"({_pdf_escape(text)}) Tj ET")

    def rect(self, x: float, y: float, w: float, h: float,
             rgb: tuple[float, float, float]) -> None:
        self.ops.append(f"{rgb[0]} {rgb[1]} {rgb[2]} rg {x} {y} {w} {h} re f")

    def vector_qr(self, url: str, x: float, y_top: float, module: float) -> None:
        """Draw the QR code as filled rectangles: a drawn (vector) code, no image in the PDF."""
        matrix = qr_matrix(url)
        n = len(matrix)
        quiet = 4 * module
        self.rect(x - quiet, y_top - n * module - quiet, n * module + 2 * quiet,
                  n * module + 2 * quiet, (1, 1, 1))
        rects = []
        for r, row in enumerate(matrix):
            for c, dark in enumerate(row):
                if dark:
                    rects.append(f"{x + c * module:.2f} {y_top - (r + 1) * module:.2f} "
                                 f"{module} {module} re")
        self.ops.append("0 0 0 rg " + " ".join(rects) + " f")

    def image(self, name: str, img: Image.Image, x: float, y: float, w: float, h: float) -> None:
        gray = img.convert("L")
        self.images[name] = (gray.width, gray.height, gray.tobytes())
        self.ops.append(f"q {w} 0 0 {h} {x} {y} cm /{name} Do Q")


def build_pdf(pages: Sequence[PdfPage], title: str, producer: str = "Skia/PDF m137") -> bytes:
    """A small, valid PDF 1.4 (US Letter pages, Helvetica, Flate-compressed streams)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # placeholder, filled below
    pages_obj = add(b"")
    f1 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    f2 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>")
    info = add(f"<< /Title ({_pdf_escape(title)}) /Producer ({producer}) >>".encode())
    kids = []
    for page in pages:
        xobjs = []
        for name, (w, h, gray) in page.images.items():
            data = zlib.compress(gray, 9)
            num = add(f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} "
                      f"/ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /FlateDecode "
                      f"/Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream")
            xobjs.append(f"/{name} {num} 0 R")
        content = zlib.compress("\n".join(page.ops).encode("latin-1"), 9)
        cnum = add(f"<< /Length {len(content)} /Filter /FlateDecode >>\nstream\n".encode()
                   + content + b"\nendstream")
        res = f"<< /Font << /F1 {f1} 0 R /F2 {f2} 0 R >>"
        if xobjs:
            res += " /XObject << " + " ".join(xobjs) + " >>"
        res += " >>"
        pnum = add(f"<< /Type /Page /Parent {pages_obj} 0 R /MediaBox [0 0 612 792] "
                   f"/Resources {res} /Contents {cnum} 0 R >>".encode())
        kids.append(pnum)
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_obj} 0 R >>".encode()
    objects[pages_obj - 1] = (f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] "
                              f"/Count {len(kids)} >>").encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R /Info {info} 0 R >>\n"
              f"startxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


BLUE = (0.0, 0.47, 0.83)
GREY = (0.4, 0.4, 0.4)


def letterhead(page: PdfPage, heading: str) -> None:
    """The 'company logo' the write-ups describe: a coloured block and the tenant's name."""
    page.rect(60, 712, 34, 34, BLUE)
    page.text(102, 720, 24, "Contoso", bold=True, rgb=BLUE)
    page.rect(60, 700, 492, 1.5, (0.8, 0.8, 0.8))
    page.text(60, 660, 20, heading, bold=True)


def pdf_fax_vector_qr(url: str, ref: str, when: str, caller: str) -> bytes:
    """Branded one-page 'fax notice'; the QR code is drawn with vector rectangles."""
    page = PdfPage()
    letterhead(page, "Voice / Fax Message Notification")
    y = 630
    for line in (f"Reference: {ref}", f"Received: {when}", f"Caller: {caller}",
                 "Pages: 2     Duration: 00:00:47"):
        page.text(60, y, 12, line)
        y -= 18
    page.text(60, 540, 13, "Scan the code below with your phone camera to open the message.",
              bold=True)
    page.vector_qr(url, x=226, y_top=510, module=4.0)
    page.text(60, 120, 9, "This notification was generated automatically by the Contoso "
              "unified messaging service.", rgb=GREY)
    return build_pdf([page], title=f"Fax Message {ref}")


def pdf_two_page_image_qr(url: str, ref: str, when: str) -> bytes:
    """Two pages: a text-only transmission report, then the QR code as an embedded image."""
    p1 = PdfPage()
    letterhead(p1, "Fax Transmission Report")
    y = 630
    for line in (f"Document: {ref}", f"Received: {when}", "Sender: +1 (425) 555-0168",
                 "Pages: 3", "Status: Delivered to secure inbox",
                 "", "The document is available on the next page."):
        p1.text(60, y, 12, line)
        y -= 18
    p2 = PdfPage()
    letterhead(p2, "Open your fax document")
    p2.text(60, 630, 12, "Use your mobile device to scan the code and view the document.")
    p2.image("Im1", qr_pil(url, scale=6), x=206, y=300, w=200, h=200)
    return build_pdf([p1, p2], title=f"Fax {ref}", producer="Microsoft: Print To PDF")


def pil_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def raster_page(lines: Sequence[tuple[int, str]], qr_url: str | None, seed: str,
                qr_at: tuple[int, int] = (430, 760), noise: bool = True) -> Image.Image:
    """A 150-dpi US Letter page as a scanner or a screenshot would produce it."""
    rng = rng_for(seed)
    img = Image.new("L", (1275, 1650), 255)
    draw = ImageDraw.Draw(img)
    draw.rectangle((120, 110, 190, 180), fill=40)
    draw.text((210, 118), "Contoso", font=pil_font(52), fill=30)
    draw.line((120, 210, 1155, 210), fill=180, width=3)
    y = 260
    for size, text in lines:
        draw.text((120, y), text, font=pil_font(size), fill=25)
        y += int(size * 1.6)
    if qr_url is not None:
        img.paste(qr_pil(qr_url, scale=10), qr_at)
    if noise:  # scanner speckle, deterministic
        px = img.load()
        assert px is not None
        for _ in range(800):
            x, yy = rng.randrange(img.width), rng.randrange(img.height)
            px[x, yy] = rng.randrange(170, 235)
    return img


def pil_pdf(img: Image.Image, title: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PDF", resolution=150, quality=60, title=title, producer="Contoso Scan",
             creationDate=time.gmtime(1735689600), modDate=time.gmtime(1735689600))
    return buf.getvalue()


def pdf_fax_raster_qr(url: str, ref: str, when: str) -> bytes:
    img = raster_page([(40, "Voice / Fax Message Notification"), (26, ""),
                       (26, f"Reference: {ref}"), (26, f"Received: {when}"),
                       (26, "Caller: +1 (425) 555-0143"), (26, ""),
                       (28, "Scan the code with your phone to open the message.")],
                      qr_url=url, seed=ref)
    return pil_pdf(img, title=f"Fax Message {ref}")


def pdf_segno_qr(url: str) -> bytes:
    """segno's own vector PDF: one page that is only the QR code."""
    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="pdf", scale=4)
    # segno stamps the wall clock; pin it (same length, so the xref offsets stay valid)
    return re.sub(rb"\(D:\d{14}[+-]\d\d'\d\d'\)", b"(D:20250701133955+00'00')",
                  buf.getvalue())


def pdf_scan_no_qr(device: str, seed: str, when: str) -> bytes:
    """A scanned two-paragraph letter with no code on it (legitimate scan-to-mail)."""
    img = raster_page([(40, "Facilities - Parking Permit Renewal"), (26, ""),
                       (26, f"Scanned on {device}, {when}"), (26, ""),
                       (26, "Please renew your parking permit at the front desk"),
                       (26, "before the end of the month. Bring your badge and"),
                       (26, "vehicle registration. Thank you."), (26, ""),
                       (26, "- Contoso Facilities Team")], qr_url=None, seed=seed)
    return pil_pdf(img, title=f"Scan {seed}")


# --------------------------------------------------------------------------------------------
# MIME bodies
# --------------------------------------------------------------------------------------------


@dataclass
class Part:
    content_type: str  # full value, e.g. 'application/pdf; name="x.pdf"'
    payload: bytes
    encoding: str = "base64"  # base64 | quoted-printable | 7bit
    disposition: str | None = None
    extra: list[str] = field(default_factory=list)

    def render(self) -> str:
        headers = [f"Content-Type: {self.content_type}"]
        if self.disposition:
            headers.append(f"Content-Disposition: {self.disposition}")
        headers.append(f"Content-Transfer-Encoding: {self.encoding}")
        headers.extend(self.extra)
        if self.encoding == "base64":
            body = b64lines(self.payload)
        elif self.encoding == "quoted-printable":
            body = qp(self.payload.decode("utf-8")).rstrip("\n")
        else:
            body = self.payload.decode("utf-8").rstrip("\n")
        return "\n".join(headers) + "\n\n" + body


def multipart(boundary: str, parts: Sequence[Part | tuple[str, str]],
              preamble: str = "") -> str:
    """Body of a multipart entity. A tuple part is (headers, body) already rendered."""
    chunks = []
    if preamble:
        chunks.append(preamble)
    for part in parts:
        rendered = part.render() if isinstance(part, Part) else part[0] + "\n\n" + part[1]
        chunks.append(f"--{boundary}\n{rendered}\n")
    chunks.append(f"--{boundary}--\n")
    return "\n".join(chunks)


def netmail_message(rng: random.Random, frm: str, to: str, subject: str, date: str,
                    html: str, attachments: Sequence[tuple[str, bytes]]) -> tuple[list[str], str]:
    """What PowerShell's Send-MailMessage -BodyAsHtml -Attachments (System.Net.Mail) writes."""
    boundary = f"--boundary_0_{guid(rng)}"
    headers = ["MIME-Version: 1.0", f"From: {frm}", f"To: {to}", f"Date: {date}",
               f"Subject: {subject}"]
    if not attachments:
        headers += ["Content-Type: text/html; charset=us-ascii",
                    "Content-Transfer-Encoding: quoted-printable"]
        return headers, qp(html)
    headers.append(f"Content-Type: multipart/mixed;\n boundary={boundary}")
    parts: list[Part] = [Part("text/html; charset=us-ascii", html.encode(), "quoted-printable")]
    for name, data in attachments:
        parts.append(Part(f"application/octet-stream; name={name}", data,
                          disposition="attachment"))
    return headers, "\n" + multipart(boundary, parts)


def alternative(rng: random.Random, text: str, html: str, prefix: str = "_000_") -> tuple[str, str]:
    boundary = f"{prefix}{hexid(rng, 24)}_"
    body = multipart(boundary, [
        Part('text/plain; charset="us-ascii"', text.encode(), "quoted-printable"),
        Part('text/html; charset="us-ascii"', html.encode(), "quoted-printable"),
    ])
    return f'multipart/alternative;\n\tboundary="{boundary}"', body


# --------------------------------------------------------------------------------------------
# the receiving side: Exchange Online
# --------------------------------------------------------------------------------------------

BUILD_2025 = "8857.21"
BUILD_2026 = "9520.9"


def build_for(dt: datetime) -> str:
    return BUILD_2025 if dt.year == 2025 else BUILD_2026


def build_long(build: str) -> str:
    """'9520.9' -> '9520.009', as in 'with mapi id 15.20.9520.009'."""
    major, minor = build.split(".")
    return f"{major}.{int(minor):03d}"


SFS = ("SFS:(13230040)(82310400026)(61400799027)(69100299015)(376014)(36860700013)"
       "(1800799024)(4076899003)(8096899003)(2066899003);")


@dataclass
class ExoInbound:
    when: datetime  # arrival at the frontend (the boundary hop)
    helo: str
    ip: str
    ctry: str
    auth_results: str
    received_spf: str | None
    return_path: str
    authas: str = "Anonymous"
    auth_mechanism: str | None = None
    scl: int = 1
    sfv: str = "NSPM"
    cat: str = "NONE"
    sfty: str = ""
    ptr: str = ""
    tls: bool = True
    ft: str = "BN8NAM11FT045"
    mailbox: str = JOE_MBX
    dest: str = "I"
    junk_reason: str = ""
    bcl: int = 0
    lang: str = "en"


def exo_inbound(spec: ExoInbound, seed: str) -> tuple[list[str], list[str]]:
    """(headers above the sender's block, stamps after the sender's MIME headers)."""
    rng = rng_for(seed + "/exo")
    nmid = guid(rng)
    build = build_for(spec.when)
    t0, t1, t2 = spec.when, spec.when + timedelta(seconds=1), spec.when + timedelta(seconds=2)
    ht = spec.ft.replace("FT", "HT")[:-3] + f"{rng.randint(100, 399)}"
    ca = f"BYAPR11CA{rng.randint(1000, 9999):04d}"
    ft_ip = f"10.13.177.{rng.randint(2, 250)}"
    ft_int_ip = f"10.13.177.{rng.randint(2, 250)}"
    ht_ip = f"10.13.176.{rng.randint(2, 250)}"
    tls = ("(version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) "
           if spec.tls else "")
    top = [
        fold("Received", f"from {ht}.eop-nam11.prod.protection.outlook.com "
             f"(2a01:111:e400:fc4b::{rng.randint(16, 99)}) by "
             f"{spec.mailbox}.namprd11.prod.outlook.com with HTTPS via "
             f"{ca}.NAMPRD11.PROD.OUTLOOK.COM; {exo_date(t2)}"),
        fold("Received", f"from {spec.ft}.eop-nam11.prod.protection.outlook.com ({ft_int_ip}) "
             f"by {ht}.eop-nam11.prod.protection.outlook.com ({ht_ip}) with Microsoft SMTP "
             f"Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id "
             f"15.20.{build}; {exo_date(t1)}"),
        fold("Authentication-Results", spec.auth_results),
    ]
    if spec.received_spf is not None:
        top.append(fold("Received-SPF", spec.received_spf))
    top.append(fold("Received", f"from {spec.helo} ({spec.ip}) by "
                    f"{spec.ft}.mail.protection.outlook.com ({ft_ip}) with Microsoft SMTP Server "
                    f"{tls}id 15.20.{build} via Frontend Transport; {exo_date(t0)}"))
    bottom = [
        f"Return-Path: {spec.return_path}",
        f"X-MS-Exchange-Organization-ExpirationStartTime: {arrival(t0, rng)}",
        "X-MS-Exchange-Organization-ExpirationStartTimeReason: OriginalSubmit",
        "X-MS-Exchange-Organization-ExpirationInterval: 1:00:00:00.0000000",
        "X-MS-Exchange-Organization-ExpirationIntervalReason: OriginalSubmit",
        f"X-MS-Exchange-Organization-Network-Message-Id: {nmid}",
        "X-EOPAttributedMessage: 0",
        f"X-EOPTenantAttributedMessage: {TENANT_ID}:0",
        "X-MS-Exchange-Organization-MessageDirectionality: Incoming",
        "X-MS-PublicTrafficType: Email",
        f"X-MS-TrafficTypeDiagnostic: {spec.ft}:EE_|{spec.mailbox}:EE_|MW4PR11MB5776:EE_",
        f"X-MS-Exchange-Organization-AuthSource: {spec.ft}.eop-nam11.prod.protection.outlook.com",
        f"X-MS-Exchange-Organization-AuthAs: {spec.authas}",
    ]
    if spec.auth_mechanism is not None:
        bottom.append(f"X-MS-Exchange-Organization-AuthMechanism: {spec.auth_mechanism}")
    bottom += [
        f"X-MS-Office365-Filtering-Correlation-Id: {nmid}",
        f"X-MS-Exchange-Organization-SCL: {spec.scl}",
        f"X-Microsoft-Antispam: BCL:{spec.bcl};ARA:13230040|82310400026|61400799027|"
        "69100299015|376014|36860700013|1800799024|4076899003|8096899003|2066899003;",
        f"X-Forefront-Antispam-Report: CIP:{spec.ip};CTRY:{spec.ctry};LANG:{spec.lang};"
        f"SCL:{spec.scl};SRV:;IPV:NLI;SFV:{spec.sfv};H:{spec.helo};PTR:{spec.ptr};"
        f"CAT:{spec.cat};{SFS}DIR:INB;SFTY:{spec.sfty};",
        f"X-MS-Exchange-CrossTenant-OriginalArrivalTime: {arrival(t0, rng)}",
        f"X-MS-Exchange-CrossTenant-Network-Message-Id: {nmid}",
        f"X-MS-Exchange-CrossTenant-Id: {TENANT_ID}",
        f"X-MS-Exchange-CrossTenant-AuthSource: {spec.ft}.eop-nam11.prod.protection.outlook.com",
        "X-MS-Exchange-CrossTenant-AuthAs: Anonymous",
        "X-MS-Exchange-CrossTenant-FromEntityHeader: Internet",
        f"X-MS-Exchange-Transport-CrossTenantHeadersStamped: {spec.mailbox}",
        f"X-MS-Exchange-Transport-EndToEndLatency: 00:00:0{rng.randint(1, 4)}."
        f"{rng.randint(0, 9999999):07d}",
        f"X-MS-Exchange-Processed-By-BccFoldering: 15.20.{build_long(build)}",
        f"X-Microsoft-Antispam-Mailbox-Delivery: ucf:0;jmr:0;auth:0;dest:{spec.dest};"
        f"{spec.junk_reason}ENG:(910005)(944506478)(944626604)(920097)(930097)(3100021)"
        "(140003)(1420198);",
        f"X-Microsoft-Antispam-Message-Info: {b64blob(rng, 240)}",
    ]
    return top, bottom


def eop_ar(spf: str, spf_ip: str | None, mailfrom_domain: str, dkim: str, dkim_d: str,
           dmarc: str, action: str, header_from: str, compauth: str, reason: str,
           mailfrom_key: str = "smtp.mailfrom") -> str:
    """EOP's Authentication-Results value: no authserv-id (Microsoft's documented form)."""
    spf_part = f"spf={spf}"
    if spf_ip:
        spf_part += f" (sender IP is {spf_ip})"
    dkim_comment = {"none": " (message not signed)", "pass": " (signature was verified)",
                    "fail": " (body hash did not verify)"}[dkim]
    return (f"{spf_part} {mailfrom_key}={mailfrom_domain}; dkim={dkim}{dkim_comment} "
            f"header.d={dkim_d};dmarc={dmarc} action={action} header.from={header_from};"
            f"compauth={compauth} reason={reason}")


def eop_spf(result: str, domain: str, ip: str, helo: str) -> str:
    text = {
        "Fail": f"domain of {domain} does not designate {ip} as permitted sender",
        "SoftFail": f"domain of transitioning {domain} discourages use of {ip} as permitted "
                    "sender",
        "Pass": f"domain of {domain} designates {ip} as permitted sender",
        "None": f"{domain} does not designate permitted sender hosts",
    }[result]
    tail = " pr=C" if result == "Pass" else ""
    return (f"{result} (protection.outlook.com: {text}) receiver=protection.outlook.com; "
            f"client-ip={ip}; helo={helo};{tail}")


# --------------------------------------------------------------------------------------------
# the receiving side: self-hosted Postfix (mx.contoso.com)
# --------------------------------------------------------------------------------------------


@dataclass
class PostfixInbound:
    when: datetime
    helo: str
    rdns: str  # "unknown" when there is no PTR
    ip: str
    rcpt: str
    return_path: str  # without brackets; "" for the null sender
    auth_results: str | None
    protocol: str = "ESMTP"
    auth_sender: str | None = None  # (Authenticated sender: ...) comment
    tls_comment: bool = False
    amavis: bool = False
    received_spf: str | None = None


def postfix_inbound(spec: PostfixInbound, seed: str) -> list[str]:
    rng = rng_for(seed + "/postfix")
    qid = hexid(rng, 10)
    lines = [f"from {spec.helo} ({spec.rdns} [{spec.ip}])"]
    if spec.tls_comment:
        lines += ["(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
                  " key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest "
                  "SHA256)", "(No client certificate requested)"]
    if spec.auth_sender:
        lines.append(f"(Authenticated sender: {spec.auth_sender})")
    lines += [f"by mx.contoso.com (Postfix) with {spec.protocol} id {qid}",
              f"for <{spec.rcpt}>; {postfix_date(spec.when)}"]
    boundary = "Received: " + "\n\t".join(lines)
    out = [f"Return-Path: <{spec.return_path}>", f"X-Original-To: {spec.rcpt}",
           f"Delivered-To: {spec.rcpt}"]
    if spec.amavis:
        t2 = spec.when + timedelta(seconds=3)
        out += [
            "Received: from localhost (localhost [127.0.0.1])\n"
            f"\tby mx.contoso.com (Postfix) with ESMTP id {hexid(rng, 10)}\n"
            f"\tfor <{spec.rcpt}>; {postfix_date(t2)}",
            "X-Virus-Scanned: Debian amavis at contoso.com",
            "Received: from mx.contoso.com ([127.0.0.1])\n"
            "\tby localhost (mx.contoso.com [127.0.0.1]) (amavis, port 10024) with ESMTP\n"
            f"\tid {alnum(rng, 12)} for <{spec.rcpt}>;\n"
            f"\t{postfix_date(spec.when + timedelta(seconds=1))}",
        ]
    if spec.auth_results is not None:
        out.append(fold("Authentication-Results", spec.auth_results, cont="\t"))
    if spec.received_spf is not None:
        out.append(fold("Received-SPF", spec.received_spf, cont="\t"))
    out.append(boundary)
    return out


# --------------------------------------------------------------------------------------------
# assembling a message
# --------------------------------------------------------------------------------------------


def assemble(top: Sequence[str], sender_headers: Sequence[str], bottom: Sequence[str],
             body: str) -> bytes:
    head = "\n".join([*top, *sender_headers, *bottom])
    text = (head + "\n\n" + body).replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", "\r\n").encode("utf-8")


def exo_message_id(rng: random.Random, ft: str) -> str:
    return f"Message-ID: <{guid(rng)}@{ft}.eop-nam11.prod.protection.outlook.com>"


# --------------------------------------------------------------------------------------------
# lure bodies
# --------------------------------------------------------------------------------------------


def voicemail_html(headline: str, intro: str, details: Sequence[str], link_text: str,
                   link: str, footer: str) -> str:
    rows = "<br>\n".join(details)
    blue = "background:#0078d4;color:#ffffff"
    return (
        "<html><body>\n"
        '<table width="600" cellpadding="0" cellspacing="0" '
        'style="font-family:Segoe UI,Arial,sans-serif;border:1px solid #d0d0d0">\n'
        f'<tr><td style="{blue};padding:12px 18px;font-size:18px">{headline}</td></tr>\n'
        '<tr><td style="padding:18px;font-size:14px;color:#222222">\n'
        f"<p>{intro}</p>\n<p>{rows}</p>\n"
        f'<p><a href="{link}" style="{blue};padding:10px 22px;text-decoration:none">'
        f"{link_text}</a></p>\n"
        f'<p style="font-size:12px;color:#666666">{footer}</p>\n'
        "</td></tr></table>\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# attack cases: the Direct Send campaign as published, and its variants
# --------------------------------------------------------------------------------------------

CaseFn = Callable[[str], bytes]
CASES: dict[str, CaseFn] = {}


def case(name: str) -> Callable[[CaseFn], CaseFn]:
    def register(fn: CaseFn) -> CaseFn:
        CASES[name] = fn
        return fn
    return register


def campaign_exo(name: str, *, when: datetime, helo: str, ip: str, ctry: str, offset: int,
                 reason: str, subject: str, html: str,
                 attachments: Sequence[tuple[str, bytes]], cat: str = "NONE", sfty: str = "",
                 dest: str = "I", tls: bool = False, ft: str = "BN8NAM11FT045",
                 frm: str = "joe@contoso.com", to: str = "joe@contoso.com",
                 spf: str = "fail", dmarc_action: str = "oreject") -> bytes:
    """Send-MailMessage -SmtpServer contoso-com.mail.protection.outlook.com, as published."""
    rng = rng_for(name)
    address = parseaddr(frm)[1]
    domain = address.split("@")[1]
    spf_word = {"fail": "Fail", "softfail": "SoftFail"}[spf]
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry=ctry,
        auth_results=eop_ar(spf, ip, domain, "none", "none", "fail", dmarc_action, domain,
                            "fail", reason),
        received_spf=eop_spf(spf_word, domain, ip, helo), return_path=address,
        cat=cat, sfty=sfty, dest=dest, tls=tls, ft=ft,
        junk_reason="OFR:SpamFilterAuthJ;" if dest == "J" else "")
    top, bottom = exo_inbound(spec, name)
    headers, body = netmail_message(rng, frm, to, subject,
                                    netmail_date(when - timedelta(seconds=1), offset), html,
                                    attachments)
    headers.insert(5, exo_message_id(rng, ft))  # EXO adds the Message-ID System.Net.Mail omits
    return assemble(top, headers, bottom, body)


@case("exo-campaign-fax-qr-vector.eml")
def exo_campaign_fax_qr_vector(name: str) -> bytes:
    qr = "https://mv4lh.bsfff.es/m365/?vm=0617"
    listen = "https://voice-e091b.firebaseapp.com/vm/listen?id=0617"
    html = voicemail_html(
        "Voice Message", "You have a new missed fax message from <b>+1 (425) 555-0143</b>.",
        ["Received: Tuesday, June 17, 2025 9:14 AM", "Pages: 2", "Reference: FX-0617-4471"],
        "Listen Now", listen,
        "Open the attached document and scan the code with your phone to listen on mobile.")
    pdf = pdf_fax_vector_qr(qr, "FX-0617-4471", "6/17/2025 9:14 AM", "+1 (425) 555-0143")
    return campaign_exo(name, when=utc(2025, 6, 17, 6, 14, 23), helo="WIN-3J8KQ2H1LDF",
                        ip="139.28.36.117", ctry="UA", offset=3, reason="601",
                        subject="New Missed Fax-msg", html=html,
                        attachments=[("Fax_Msg_0617.pdf", pdf)], cat="SPOOF", sfty="9.11",
                        dest="J")


@case("exo-campaign-fax-qr-raster.eml")
def exo_campaign_fax_qr_raster(name: str) -> bytes:
    qr = "https://mv4lh.bsfff.es/m365/?vm=0624"
    listen = "https://voice-e091b.firebaseapp.com/vm/listen?id=0624"
    html = voicemail_html(
        "Voice Message", "You have a new missed fax message from <b>+1 (425) 555-0143</b>.",
        ["Received: Tuesday, June 24, 2025 10:02 AM", "Pages: 1", "Reference: FX-0624-1189"],
        "Listen Now", listen,
        "Open the attached document and scan the code with your phone to listen on mobile.")
    pdf = pdf_fax_raster_qr(qr, "FX-0624-1189", "6/24/2025 10:02 AM")
    return campaign_exo(name, when=utc(2025, 6, 24, 7, 2, 51), helo="DESKTOP-7QK2M9L",
                        ip="139.28.37.155", ctry="UA", offset=3, reason="000",
                        subject="New Missed Fax-msg", html=html,
                        attachments=[("Fax_Message_0624.pdf", pdf)], ft="BN8NAM11FT062")


@case("exo-campaign-vm-loopback-helo.eml")
def exo_campaign_vm_loopback_helo(name: str) -> bytes:
    html = voicemail_html(
        "Voicemail", "Caller left you a voice message (00:00:51).",
        ["From: +1 (425) 555-0117", "Date: 7/1/2025 3:40 PM"],
        "Play Message", "https://vm-notify-6c1d2.web.app/play/joe",
        "The message is also attached. Scan it with your phone camera.")
    pdf = pdf_segno_qr("https://vm-notify-6c1d2.web.app/qr/joe")
    return campaign_exo(name, when=utc(2025, 7, 1, 13, 40, 9), helo="[127.0.0.1]",
                        ip="139.28.41.23", ctry="PL", offset=2, reason="010",
                        subject="Caller Left VM Message", html=html,
                        attachments=[("VM_Message_0701.pdf", pdf)], cat="SPOOF", sfty="9.11",
                        dest="J", tls=True, ft="BN8NAM11FT018")


@case("exo-campaign-fax-qr-page2.eml")
def exo_campaign_fax_qr_page2(name: str) -> bytes:
    html = voicemail_html(
        "Incoming Fax", "An incoming fax was delivered to your secure inbox.",
        ["Sender: +1 (425) 555-0168", "Pages: 3", "Document: FAX-0702"],
        "View Fax Online", "https://fax-portal-3e9a1.firebaseapp.com/inbox",
        "The fax document is attached for your convenience.")
    pdf = pdf_two_page_image_qr("https://fax-portal-3e9a1.firebaseapp.com/view/FAX-0702",
                                "FAX-0702", "7/2/2025 11:55 AM")
    return campaign_exo(name, when=utc(2025, 7, 2, 8, 55, 40), helo="WIN-A1B2C3D4E5F",
                        ip="139.28.38.201", ctry="UA", offset=3, reason="601",
                        subject="Incoming Fax: 3 pages received", html=html,
                        attachments=[("Fax_FAX-0702.pdf", pdf)], cat="SPOOF", sfty="9.11",
                        dest="I", ft="BN8NAM11FT033")


@case("exo-campaign-qr-png.eml")
def exo_campaign_qr_png(name: str) -> bytes:
    """Sent with a Python script (email.mime) rather than PowerShell: image/png attachment."""
    rng = rng_for(name)
    when = utc(2025, 7, 9, 10, 21, 33)
    ip, helo = "139.28.36.40", "WIN-M4N5B6V7C8X"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="UA",
        auth_results=eop_ar("fail", ip, "contoso.com", "none", "none", "fail", "oreject",
                            "contoso.com", "fail", "601"),
        received_spf=eop_spf("Fail", "contoso.com", ip, helo), return_path="joe@contoso.com",
        tls=True, ft="BN8NAM11FT051")
    top, bottom = exo_inbound(spec, name)
    boundary = f"==============={rng.randint(10**18, 10**19 - 1)}=="
    html = ("<html><body style=\"font-family:Arial,sans-serif\">\n"
            "<p><b>New voicemail</b> (00:00:38) from +1 (425) 555-0199.</p>\n"
            "<p>Scan the attached image with your phone to play the message.</p>\n"
            "</body></html>\n")
    body = multipart(boundary, [
        Part('text/html; charset="us-ascii"', html.encode(), "7bit",
             extra=["MIME-Version: 1.0"]),
        Part("image/png", qr_png("https://mv4lh.bsfff.es/v/0709", scale=8),
             disposition='attachment; filename="VoiceMessage_0709.png"',
             extra=["MIME-Version: 1.0"]),
    ])
    headers = [f'Content-Type: multipart/mixed; boundary="{boundary}"', "MIME-Version: 1.0",
               "From: joe@contoso.com", "To: joe@contoso.com",
               "Subject: Voicemail from +1 (425) 555-0199",
               f"Date: {local_date(when - timedelta(seconds=2), 3)}",
               f"Message-ID: <{rng.randint(10**17, 10**18)}.{rng.randint(1000, 9999)}."
               f"{rng.randint(10**12, 10**13)}@{helo}>"]
    return assemble(top, headers, bottom, body)


@case("exo-spoof-ceo-reply-to.eml")
def exo_spoof_ceo_reply_to(name: str) -> bytes:
    """A colleague (the CEO) spoofed to someone else, Reply-To an outside mailbox (BEC)."""
    rng = rng_for(name)
    when = utc(2026, 1, 13, 14, 5, 12)
    ip, helo = "139.28.37.90", "mail.contoso.com"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="UA",
        auth_results=eop_ar("fail", ip, "contoso.com", "none", "none", "fail", "oreject",
                            "contoso.com", "fail", "010"),
        received_spf=eop_spf("Fail", "contoso.com", ip, helo), return_path="ceo@contoso.com",
        scl=5, sfv="SPM", cat="SPOOF", sfty="9.11", dest="J",
        junk_reason="OFR:SpamFilterAuthJ;", ft="BN8NAM11FT071")
    top, bottom = exo_inbound(spec, name)
    headers = ["From: Dana Whitfield <ceo@contoso.com>", "To: Joe Miller <joe@contoso.com>",
               "Reply-To: Dana Whitfield <dana.whitfield.office@example.com>",
               "Subject: Quick request - are you at your desk?",
               f"Date: {local_date(when - timedelta(seconds=1), 2)}",
               f"Message-ID: <{when:%Y%m%d%H%M%S}.{hexid(rng, 6)}@mail.contoso.com>",
               "MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"',
               "Content-Transfer-Encoding: 7bit"]
    body = ("Joe,\n\nI need you to process a wire transfer for a new vendor today before 3pm.\n"
            "I'm in back-to-back meetings all afternoon, so reply to this email only and I\n"
            "will send you the account details.\n\nThanks,\nDana\n\nSent from my iPhone\n")
    return assemble(top, headers, bottom, body)


@case("exo-spoof-payroll-ip-literal-helo.eml")
def exo_spoof_payroll_ip_literal_helo(name: str) -> bytes:
    """PHPMailer from a server that greets with its own address literal."""
    rng = rng_for(name)
    when = utc(2026, 1, 27, 16, 44, 2)
    ip = "139.28.38.19"
    helo = f"[{ip}]"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="UA",
        auth_results=eop_ar("fail", ip, "contoso.com", "none", "none", "fail", "oreject",
                            "contoso.com", "fail", "601"),
        received_spf=eop_spf("Fail", "contoso.com", ip, helo),
        return_path="payroll@contoso.com", tls=True, ft="BN8NAM11FT029")
    top, bottom = exo_inbound(spec, name)
    token = alnum(rng, 40)
    boundary = f"b1=_{token}"
    link = "https://contoso-payroll.pages.dev/confirm"
    text = ("Dear Joe Miller,\n\nOur payroll provider is migrating to a new system. To make "
            "sure your next salary\npayment is not delayed, confirm your direct deposit "
            f"details before Friday:\n\n{link}\n\nContoso Payroll Department\n")
    html = ("<p>Dear Joe Miller,</p><p>Our payroll provider is migrating to a new system. To "
            "make sure your next salary payment is not delayed, confirm your direct deposit "
            f"details before Friday.</p><p><a href=\"{link}\">Confirm direct deposit</a></p>"
            "<p>Contoso Payroll Department</p>\n")
    body = multipart(boundary, [
        Part("text/plain; charset=us-ascii", text.encode(), "7bit"),
        Part("text/html; charset=us-ascii", html.encode(), "7bit"),
    ], preamble="This is a multi-part message in MIME format.\n")
    headers = [f"Date: {local_date(when - timedelta(seconds=1), 2)}",
               "To: Joe Miller <joe@contoso.com>", "From: Contoso Payroll <payroll@contoso.com>",
               "Subject: Action required: confirm your payroll direct deposit details",
               f"Message-ID: <{token}@{ip}>",
               "X-Mailer: PHPMailer 6.9.1 (https://github.com/PHPMailer/PHPMailer)",
               "MIME-Version: 1.0",
               f'Content-Type: multipart/alternative;\n boundary="{boundary}"',
               "Content-Transfer-Encoding: 8bit"]
    return assemble(top, headers, bottom, body)


@case("exo-spoof-docshare-self.eml")
def exo_spoof_docshare_self(name: str) -> bytes:
    html = voicemail_html(
        "Joe Miller shared a file with you",
        'Joe Miller shared a file with you: <b>2026 Compensation Review.xlsx</b>',
        ["This link will work for anyone in Contoso.", "Expires: 2/17/2026"],
        "View document", "https://contoso-docs-7f3a.workers.dev/view/2026-comp-review",
        "Microsoft 365 - Contoso")
    return campaign_exo(name, when=utc(2026, 2, 10, 9, 12, 44), helo="WIN-Q9W8E7R6T5Y",
                        ip="139.28.39.12", ctry="UA", offset=2, reason="601",
                        subject='Joe Miller shared "2026 Compensation Review.xlsx" with you',
                        html=html, attachments=[], cat="SPOOF", sfty="9.11", dest="I",
                        tls=True, ft="BN8NAM11FT040",
                        frm="Joe Miller <joe@contoso.com>", to="joe@contoso.com")


@case("exo-campaign-vm-link-only.eml")
def exo_campaign_vm_link_only(name: str) -> bytes:
    html = voicemail_html(
        "Voice Message Received", "You received a voice message while you were away.",
        ["Caller: +1 (425) 555-0122", "Length: 00:00:42", "Received: 8/5/2025 3:30 PM"],
        "Play Message", "https://contoso-voicemail-2c9e.web.app/play/0805",
        "Voice messages are kept for 7 days.")
    return campaign_exo(name, when=utc(2025, 8, 5, 12, 30, 18), helo="WIN-H2J4K6L8Z0X",
                        ip="139.28.36.201", ctry="UA", offset=3, reason="000",
                        subject="Voice Message Received (00:00:42)", html=html,
                        attachments=[], ft="BN8NAM11FT047")


@case("exo-proofpoint-profile-nine-checks.eml")
def exo_proofpoint_profile(name: str) -> bytes:
    """All nine jasonsford/directsendanalyzer (Proofpoint-derived) checks hold; no pphosted hop."""
    page = (b"<html><head><title>Voicemail</title></head><body>\n"
            b"<h3>Microsoft 365 - Voicemail</h3>\n<p>Sign in to listen to your message.</p>\n"
            b'<form method="post" action="https://vm-listen-44a1.glitch.me/auth">\n'
            b'<input type="email" name="login" value="joe@contoso.com">\n'
            b'<input type="password" name="passwd">\n<button>Sign in</button>\n</form>\n'
            b"</body></html>\n")
    html = voicemail_html(
        "Voicemail Notification", "You have 1 new voice message.",
        ["From: +1 (425) 555-0185", "Duration: 00:01:04"],
        "Listen", "https://vm-listen-44a1.glitch.me/",
        "Open the attached file to play the message in your browser.")
    return campaign_exo(name, when=utc(2025, 9, 22, 15, 3, 27), helo="WIN-5C7V9B1N3M2",
                        ip="139.28.37.44", ctry="UA", offset=3, reason="601",
                        subject="Voicemail Notification: 1 new message", html=html,
                        attachments=[("Play_VM_0922.htm", page)], spf="softfail",
                        dmarc_action="none", ft="BN8NAM11FT056")


@case("exo-p2only-payroll.eml")
def exo_p2only_payroll(name: str) -> bytes:
    """Envelope in a foreign domain (SPF pass there), header From ours: RDS never sees it."""
    rng = rng_for(name)
    when = utc(2026, 3, 3, 13, 20, 45)
    ip, helo = "198.51.100.45", "mta-07.mailer.example.net"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("pass", ip, "mailer.example.net", "pass", "mailer.example.net",
                            "fail", "oreject", "contoso.com", "fail", "010"),
        received_spf=eop_spf("Pass", "mailer.example.net", ip, helo),
        return_path="bounces@mailer.example.net", ft="BN8NAM11FT066")
    top, bottom = exo_inbound(spec, name)
    link = "https://payroll-portal.example.net/payslip/2026-03"
    ctype, body = alternative(
        rng,
        "Hello Joe,\n\nYour payslip for March 2026 is ready. View it here:\n"
        f"{link}\n\nContoso Payroll\n",
        f"<p>Hello Joe,</p><p>Your payslip for March 2026 is ready.</p><p><a href=\"{link}\">"
        "View payslip</a></p><p>Contoso Payroll</p>\n", prefix="----=_Part_")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=mailer.example.net; "
             f"s=m1; t={int(when.timestamp())}; h=from:to:subject:date:message-id; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}"),
        "From: Contoso Payroll <payroll@contoso.com>", "To: joe@contoso.com",
        "Subject: Your March 2026 payslip is ready to view",
        f"Date: {exo_date(when - timedelta(seconds=1))}",
        f"Message-ID: <{when:%Y%m%d%H%M%S}.{hexid(rng, 8, upper=False)}@mailer.example.net>",
        "MIME-Version: 1.0", f"Content-Type: {ctype}"]
    return assemble(top, headers, bottom, body)


@case("exo-null-sender-ndr.eml")
def exo_null_sender_ndr(name: str) -> bytes:
    """MAIL FROM:<> (a 'bounce') with an internal From: RDS has no P1 domain to check."""
    rng = rng_for(name)
    when = utc(2026, 2, 18, 7, 45, 10)
    ip, helo = "139.28.38.77", "contoso.com"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="UA",
        auth_results=eop_ar("fail", ip, "contoso.com", "none", "none", "fail", "oreject",
                            "contoso.com", "fail", "010", mailfrom_key="smtp.helo"),
        received_spf=eop_spf("Fail", "contoso.com", ip, helo), return_path="<>",
        cat="SPOOF", sfty="9.11", dest="J", junk_reason="OFR:SpamFilterAuthJ;",
        ft="BN8NAM11FT038")
    top, bottom = exo_inbound(spec, name)
    html = voicemail_html(
        "Delivery has failed to these recipients",
        "3 incoming messages addressed to joe@contoso.com could not be delivered because "
        "your mailbox storage is full.",
        ["Held since: 2/18/2026", "Messages: 3"],
        "Release messages", "https://contoso-mailbox.netlify.app/release/joe",
        "Verify your mailbox within 24 hours or the held messages will be deleted.")
    headers = ["From: Mail Delivery System <postmaster@contoso.com>",
               "To: joe@contoso.com", "Subject: Undeliverable: 3 incoming messages are on hold",
               f"Date: {exo_date(when - timedelta(seconds=1))}",
               f"Message-ID: <{guid(rng)}@contoso.com>", "Auto-Submitted: auto-replied",
               "MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8",
               "Content-Transfer-Encoding: quoted-printable"]
    return assemble(top, headers, bottom, qp(html))


@case("exo-forged-ar-below-boundary.eml")
def exo_forged_ar_below_boundary(name: str) -> bytes:
    """The sender writes an EOP-style (id-less) Authentication-Results that claims pass."""
    rng = rng_for(name)
    when = utc(2026, 2, 24, 11, 2, 33)
    ip, helo = "139.28.39.150", "WIN-T6Y7U8I9O0P"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="UA",
        auth_results=eop_ar("fail", ip, "contoso.com", "none", "none", "fail", "oreject",
                            "contoso.com", "fail", "601"),
        received_spf=eop_spf("Fail", "contoso.com", ip, helo),
        return_path="it-support@contoso.com", ft="BN8NAM11FT058")
    top, bottom = exo_inbound(spec, name)
    link = "https://contoso-it-portal.example.com/keep-password"
    ctype, body = alternative(
        rng,
        "Your Contoso password expires today.\n\nTo keep your current password, confirm it "
        f"here: {link}\n\nContoso IT Service Desk\n",
        "<p>Your Contoso password expires today.</p><p>To keep your current password, "
        f"<a href=\"{link}\">confirm it here</a>.</p><p>Contoso IT Service Desk</p>\n")
    forged = [
        fold("Authentication-Results", eop_ar("pass", ip, "contoso.com", "pass", "contoso.com",
                                              "pass", "none", "contoso.com", "pass", "100")),
        fold("Received-SPF", eop_spf("Pass", "contoso.com", ip, helo)),
    ]
    headers = [*forged,
               "From: Contoso IT Service Desk <it-support@contoso.com>",
               "To: joe@contoso.com",
               "Subject: Password expires today - keep your current password",
               f"Date: {local_date(when - timedelta(seconds=1), 2)}",
               f"Message-ID: <{guid(rng)}@contoso.com>", "MIME-Version: 1.0",
               f"Content-Type: {ctype}"]
    return assemble(top, headers, bottom, body)


@case("exo-campaign-fax-qr-noconfig.eml")
def exo_campaign_fax_qr_noconfig(name: str) -> bytes:
    qr = "https://voice-e091b.firebaseapp.com/vm/qr/0731"
    html = voicemail_html(
        "Voice Message", "You have a new missed fax message from <b>+1 (425) 555-0176</b>.",
        ["Received: Thursday, July 31, 2025 2:08 PM", "Pages: 2", "Reference: FX-0731-2290"],
        "Listen Now", "https://voice-e091b.firebaseapp.com/vm/listen?id=0731",
        "Open the attached document and scan the code with your phone to listen on mobile.")
    pdf = pdf_fax_vector_qr(qr, "FX-0731-2290", "7/31/2025 2:08 PM", "+1 (425) 555-0176")
    return campaign_exo(name, when=utc(2025, 7, 31, 11, 8, 52), helo="WIN-3J8KQ2H1LDF",
                        ip="139.28.39.77", ctry="UA", offset=3, reason="601",
                        subject="New Missed Fax-msg", html=html,
                        attachments=[("Fax_Msg_0731.pdf", pdf)], cat="SPOOF", sfty="9.11",
                        dest="I", ft="BN8NAM11FT012")


@case("hdr-display-name-address.eml")
def hdr_display_name_address(name: str) -> bytes:
    """Authenticated external mail whose display name is one of our addresses."""
    rng = rng_for(name)
    when = utc(2026, 3, 6, 15, 10, 3)
    ip, helo = "198.51.100.81", "smtp.example.net"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("pass", ip, "example.net", "pass", "example.net", "pass", "none",
                            "example.net", "pass", "100"),
        received_spf=eop_spf("Pass", "example.net", ip, helo), return_path="bounce@example.net",
        ft="BN8NAM11FT021")
    top, bottom = exo_inbound(spec, name)
    link = "https://payroll-contoso.netlify.app/login"
    ctype, body = alternative(
        rng,
        "Payroll notice\n\nPlease verify your account before Friday's payroll run so your "
        f"salary is paid on time:\n{link}\n",
        "<p>Payroll notice</p><p>Please verify your account before Friday's payroll run so "
        f"your salary is paid on time.</p><p><a href=\"{link}\">Verify account</a></p>\n",
        prefix="----=_NextPart_")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=s1; "
             f"t={int(when.timestamp())}; h=from:to:subject:date:message-id:mime-version; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}"),
        'From: "payroll@contoso.com" <payroll-notices@example.net>',
        "To: joe@contoso.com", "Subject: Payroll: verify your account before Friday's run",
        f"Date: {exo_date(when - timedelta(seconds=2))}",
        f"Message-ID: <{hexid(rng, 16, upper=False)}@example.net>", "MIME-Version: 1.0",
        f"Content-Type: {ctype}"]
    return assemble(top, headers, bottom, body)


# --------------------------------------------------------------------------------------------
# attack cases received by the self-hosted Postfix (mx.contoso.com)
# --------------------------------------------------------------------------------------------


def sh_ar(spf: str, mailfrom: str, dkim: str, dmarc: str, header_from: str,
          dkim_d: str | None = None, dkim_s: str | None = None, policy: str = "reject") -> str:
    dkim_part = f"dkim={dkim}"
    if dkim == "fail":
        dkim_part += " (bad signature)"
    if dkim_d:
        dkim_part += f" header.d={dkim_d}"
    if dkim_s:
        dkim_part += f" header.s={dkim_s}"
    return (f"mx.contoso.com; spf={spf} smtp.mailfrom={mailfrom}; {dkim_part}; "
            f"dmarc={dmarc} (p={policy} dis=none) header.from={header_from}")


def policyd_spf(result: str, ip: str, helo: str, sender: str) -> str:
    return (f"{result} (mailfrom) identity=mailfrom; client-ip={ip}; helo={helo}; "
            f"envelope-from={sender}; receiver=<UNKNOWN>")


@case("selfhosted-campaign-fax-qr.eml")
def selfhosted_campaign_fax_qr(name: str) -> bytes:
    """The same PowerShell one-liner aimed at a self-hosted MX instead of EXO."""
    rng = rng_for(name)
    when = utc(2025, 8, 12, 9, 41, 37)
    ip, helo = "139.28.36.150", "WIN-3J8KQ2H1LDF"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns="unknown", ip=ip, rcpt="joe@contoso.com",
        return_path="joe@contoso.com", amavis=True,
        auth_results=sh_ar("fail", "joe@contoso.com", "none", "fail", "contoso.com"),
        received_spf=policyd_spf("Fail", ip, helo, "joe@contoso.com")), name)
    html = voicemail_html(
        "Voice Message", "You have a new missed fax message from <b>+1 (425) 555-0143</b>.",
        ["Received: Tuesday, August 12, 2025 12:41 PM", "Pages: 2", "Reference: FX-0812-5530"],
        "Listen Now", "https://voice-e091b.firebaseapp.com/vm/listen?id=0812",
        "Open the attached document and scan the code with your phone to listen on mobile.")
    pdf = pdf_fax_raster_qr("https://mv4lh.bsfff.es/m365/?vm=0812", "FX-0812-5530",
                            "8/12/2025 12:41 PM")
    headers, body = netmail_message(rng, "joe@contoso.com", "joe@contoso.com",
                                    "New Missed Fax-msg",
                                    netmail_date(when - timedelta(seconds=1), 3), html,
                                    [("Fax_Msg_0812.pdf", pdf)])
    return assemble(top, headers, [], body)


@case("selfhosted-forged-ar-below-boundary.eml")
def selfhosted_forged_ar_below_boundary(name: str) -> bytes:
    """Forged 'internal' Received + Authentication-Results claiming mx.contoso.com below the
    real boundary; a DKIM-Signature for contoso.com that does not verify."""
    rng = rng_for(name)
    when = utc(2026, 3, 2, 10, 17, 55)
    ip, helo = "139.28.36.88", "mail.contoso.com"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns="unknown", ip=ip, rcpt="anna@contoso.com",
        return_path="finance@contoso.com", amavis=True,
        auth_results=sh_ar("fail", "finance@contoso.com", "fail", "fail", "contoso.com",
                           dkim_d="contoso.com", dkim_s="mail2026"),
        received_spf=policyd_spf("Fail", ip, helo, "finance@contoso.com")), name)
    fake_when = when - timedelta(seconds=4)
    forged = [
        "Received: from [10.20.30.41] (unknown [10.20.30.41])\n"
        "\t(Authenticated sender: finance@contoso.com)\n"
        f"\tby mx.contoso.com (Postfix) with ESMTPSA id {hexid(rng, 10)}\n"
        f"\tfor <anna@contoso.com>; {postfix_date(fake_when)}",
        fold("Authentication-Results",
             "mx.contoso.com; spf=pass smtp.mailfrom=finance@contoso.com; dkim=pass "
             "header.d=contoso.com header.s=mail2026 header.b=Qm9ndXNTaWc=; dmarc=pass "
             "(p=reject dis=none) header.from=contoso.com", cont="\t"),
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=contoso.com; "
             f"s=mail2026; t={int(fake_when.timestamp())}; "
             "h=from:to:subject:date:message-id; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 256)}", cont="\t"),
    ]
    link = "https://contoso-finance.example.com/approve/INV-20931"
    ctype, body = alternative(
        rng,
        "Hi Anna,\n\nInvoice INV-20931 from our logistics vendor needs your payment approval "
        f"today.\nApprove it here: {link}\n\nThanks,\nContoso Finance\n",
        "<p>Hi Anna,</p><p>Invoice INV-20931 from our logistics vendor needs your payment "
        f"approval today.</p><p><a href=\"{link}\">Approve invoice</a></p><p>Thanks,<br>"
        "Contoso Finance</p>\n")
    headers = [*forged, "From: Contoso Finance <finance@contoso.com>",
               "To: Anna Kowalski <anna@contoso.com>",
               "Subject: Invoice INV-20931 - payment approval needed today",
               f"Date: {exo_date(fake_when)}", f"Message-ID: <{guid(rng)}@contoso.com>",
               "MIME-Version: 1.0", f"Content-Type: {ctype}"]
    return assemble(top, headers, [], body)


@case("selfhosted-forged-exchange-authas.eml")
def selfhosted_forged_exchange_authas(name: str) -> bytes:
    """Exchange's organisation stamps in mail that never touched Exchange: written by the
    sender to look 'Internal' to tools that read AuthAs blindly."""
    rng = rng_for(name)
    when = utc(2026, 1, 20, 8, 30, 11)
    ip, helo = "139.28.37.201", "WIN-P0O9I8U7Y6T"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns="unknown", ip=ip, rcpt="joe@contoso.com",
        return_path="joe@contoso.com",
        auth_results=sh_ar("fail", "joe@contoso.com", "none", "fail", "contoso.com")), name)
    html = voicemail_html(
        "Voice Message", "You have a new missed fax message from <b>+1 (425) 555-0131</b>.",
        ["Received: Tuesday, January 20, 2026 10:30 AM", "Pages: 1"],
        "Listen Now", "https://voice-e091b.firebaseapp.com/vm/listen?id=0120",
        "Contoso unified messaging")
    headers, body = netmail_message(rng, "joe@contoso.com", "joe@contoso.com",
                                    "New Missed Fax-msg",
                                    netmail_date(when - timedelta(seconds=1), 2), html, [])
    headers += ["X-MS-Exchange-Organization-AuthAs: Internal",
                f"X-MS-Exchange-Organization-AuthSource: {JOE_MBX}.namprd11.prod.outlook.com",
                "X-MS-Exchange-Organization-AuthMechanism: 04",
                "X-MS-Exchange-Organization-MessageDirectionality: Originating",
                "X-MS-Exchange-Organization-SCL: -1"]
    return assemble(top, headers, [], body)


@case("selfhosted-p2only-sender-mismatch.eml")
def selfhosted_p2only_sender_mismatch(name: str) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 2, 26, 14, 33, 20)
    ip, helo = "198.51.100.45", "mta-07.mailer.example.net"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns=helo, ip=ip, rcpt="joe@contoso.com",
        return_path="bounces@mailer.example.net", protocol="ESMTPS",
        auth_results=sh_ar("pass", "bounces@mailer.example.net", "pass", "fail", "contoso.com",
                           dkim_d="mailer.example.net", dkim_s="m1")), name)
    link = "https://benefits-portal.example.net/enroll"
    ctype, body = alternative(
        rng,
        "Open enrollment closes Friday. Confirm your 2026 benefit elections:\n"
        f"{link}\n\nContoso Benefits Team\n",
        "<p>Open enrollment closes Friday.</p><p><a href=\"" + link + "\">Confirm your 2026 "
        "benefit elections</a></p><p>Contoso Benefits Team</p>\n", prefix="----=_Part_")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=mailer.example.net; "
             f"s=m1; t={int(when.timestamp())}; h=from:sender:to:subject:date:message-id; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}", cont="\t"),
        "From: Contoso Benefits <benefits@contoso.com>",
        "Sender: Mailer <noreply@mailer.example.net>", "To: joe@contoso.com",
        "Subject: Open enrollment closes Friday - confirm your 2026 elections",
        f"Date: {exo_date(when - timedelta(seconds=1))}",
        f"Message-ID: <{when:%Y%m%d%H%M%S}.{hexid(rng, 8, upper=False)}@mailer.example.net>",
        "MIME-Version: 1.0", f"Content-Type: {ctype}"]
    return assemble(top, headers, [], body)


# --------------------------------------------------------------------------------------------
# "Composition Kills" (espoofer) server-mode cases, converted to contoso.com
# Source: chenjj/espoofer testcases.py @ 60e5ed00f352999abb485bf12e8fdb2d83ddebf0,
# MIT licence, Copyright (c) 2019 Jianjun Chen (see ../README.md). Domains converted:
# legitimate.com -> contoso.com, victim.com -> contoso.com, attack.com -> example.net,
# any.com -> example.org. Not reconstructed: A2, A3, A5 (see ../README.md).
# --------------------------------------------------------------------------------------------

ESPOOFER_BODY = "Hi, this is a test message! Best wishes.\r\n"
ESPOOFER_IP = "198.51.100.66"
ESPOOFER_DOMAINS = (("legitimate.com", "contoso.com"), ("victim.com", "contoso.com"),
                    ("attack.com", "example.net"), ("any.com", "example.org"))

ESPOOFER: dict[str, tuple[str, str, list[str]]] = {
    # case: (HELO, MAIL FROM, header lines of the DATA) -- verbatim from cases.json; the
    # body of every case is ESPOOFER_BODY. {ENC} = the A15 encoded word, {DKIM} = A4's
    # DKIM-Signature, {DATE}/{RAND6} = espoofer's run-time values.
    'a1': ('helo.attack.com', '<any@mailfrom.notexist.legitimate.com>', [
        'From: <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A1: Non-existent subdomain',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a4': ('attack.com', '<any@attack.com>', [
        'From: <admin@legitimate.com>',
        '{DKIM}',
        'To: <victim@victim.com>',
        'Subject: A4: DKIM authentication results injection using single quote',
        'Date: {DATE}',
        'Content-Type: multipart/alternative; boundary="001a113db9c28077e7054ee99e9c"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a6': ('attack.com', "<any@legitimate.com'@any.attack.com>", [
        'From: <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A6: SPF authentication results injection 2',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a7': ('attack.com', "<@legitimate.com,@any.com:'any@attack.com>", [
        'From: <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A7: routing address in mailfrom',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a8': ('attack.com', '<any@attack.com>', [
        'From: <first@attack.com>',
        'From: <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A8: Multiple From headers',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a9': ('attack.com', '<any@attack.com>', [
        ' From: <first@attack.com>',
        'From: <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A9: Multiple From headers with preceding space',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a10': ('attack.com', '<any@attack.com>', [
        'From: <first@attack.com>',
        'From : <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A10: Multiple From headers with succeeding space',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a11': ('attack.com', '<any@attack.com>', [
        'From',
        ' : <first@attack.com>',
        'From: <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A11: Multiple From headers with folding line',
        'Date: {DATE}',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a12': ('attack.com', '<any@attack.com>', [
        'From',
        ' : <first@attack.com>',
        'nTo: <victim@victim.com>',
        'Subject: A12: From and Sender header ambiguity',
        'Date: {DATE}',
        'Sender: <admin@legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a13': ('attack.com', '<any@attack.com>', [
        'From',
        ' : <first@attack.com>',
        'To: <victim@victim.com>',
        'Subject: A13: From and Resent-From header ambiguity',
        'Date: {DATE}',
        'Resent-From: <admin@legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a14': ('attack.com', '<any@attack.com>', [
        'From: <first@attack.com>, <admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A14: Multiple address in From header',
        'Date: {DATE}',
        'Sender: <s@sender.legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a15': ('attack.com', '<any@attack.com>', [
        'From:{ENC},<second@attack.com>',
        'To: <victim@victim.com>',
        'Subject: A15: Email address encoding',
        'Date: {DATE}',
        'Sender: <s@sender.legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a16': ('attack.com', '<any@attack.com>', [
        'From: <@attack.com,@any.com:admin@legitimate.com>',
        'To: <victim@victim.com>',
        'Subject: A16: Route portion',
        'Date: {DATE}',
        'Sender: <s@sender.legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a17': ('attack.com', '<any@attack.com>', [
        'From: <admin@legitimate.com>\\,<second@attack.com>',
        'To: <victim@victim.com>',
        'Subject: A17: Quoted pair',
        'Date: {DATE}',
        'Sender: <s@sender.legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a18': ('attack.com', '<any@attack.com>', [
        'From: admin@legitimate.com,<second@attack.com>',
        'To: <victim@victim.com>',
        'Subject: A18: Specical characters precedence',
        'Date: {DATE}',
        'Sender: <s@sender.legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
    'a19': ('attack.com', '<any@attack.com>', [
        'From: <any@attack.com>admin@legitimate.com',
        'To: <victim@victim.com>',
        'Subject: A19: Display Name and real address parsing inconsistencies',
        'Date: {DATE}',
        'Sender: <s@sender.legitimate.com>',
        'Content-Type: text/plain; charset="UTF-8"',
        'MIME-Version: 1.0',
        'Message-ID: <1538085644648.096e3d4e-bc38-4027-b57e-{RAND6}@message-ids.attack.com>',
        'X-Email-Client: https://github.com/chenjj/espoofer',
    ]),
}


def espoofer_convert(text: str) -> str:
    for old, new in ESPOOFER_DOMAINS:
        text = text.replace(old, new)
    return text


def relaxed_body_hash(body: str) -> str:
    """DKIM body hash with relaxed body canonicalisation (RFC 6376 section 3.4.4)."""
    lines = [re.sub(r"[ \t]+", " ", line).rstrip(" \t") for line in body.split("\r\n")]
    while lines and lines[-1] == "":
        lines.pop()
    canon = "".join(line + "\r\n" for line in lines)
    return base64.b64encode(hashlib.sha256(canon.encode()).digest()).decode()


def espoofer_sender_block(case_id: str, when: datetime, rng: random.Random,
                          drop: Sequence[str] = ()) -> tuple[str, str, str]:
    """(HELO, MAIL FROM without brackets, raw header block with CRLF) after conversion."""
    helo, mail_from, lines = ESPOOFER[case_id]
    enc = "=?utf-8?B?" + base64.b64encode(b"<admin@contoso.com>").decode() + "?="
    dkim = ("DKIM-Signature: v=1; a=rsa-sha256; c=simple/relaxed;\r\n"
            " d=contoso.com'a.example.net; i=@contoso.com'a.example.net; q=dns/txt;\r\n"
            f" s=selector; t={int(when.timestamp())}; h=from;\r\n"
            f" bh={relaxed_body_hash(ESPOOFER_BODY)};\r\n b={b64blob(rng, 128)}")
    out = []
    for line in lines:
        if any(line.startswith(prefix) for prefix in drop):
            continue
        line = espoofer_convert(line)
        line = line.replace("{ENC}", enc).replace("{DKIM}", dkim)
        line = line.replace("{DATE}", exo_date(when)).replace("{RAND6}", alnum(rng, 6))
        out.append(line)
    return espoofer_convert(helo), espoofer_convert(mail_from)[1:-1], "\r\n".join(out)


def espoofer_selfhosted(case_id: str, name: str, minute: int, *, spf: str = "pass",
                        dkim_part: str = "dkim=none", with_spf_header: bool = False,
                        drop: Sequence[str] = ()) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 3, 10, 9, minute, 0)
    helo, mail_from, block = espoofer_sender_block(case_id, when - timedelta(seconds=2), rng,
                                                   drop)
    ar = (f"mx.contoso.com; spf={spf} smtp.mailfrom={mail_from}; {dkim_part}; dmarc=fail "
          "(p=reject dis=none) header.from=contoso.com")
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns="mail.example.net", ip=ESPOOFER_IP,
        rcpt="victim@contoso.com", return_path=mail_from, auth_results=ar,
        received_spf=policyd_spf(spf.capitalize(), ESPOOFER_IP, helo, mail_from)
        if with_spf_header else None), name)
    return assemble(top, [block], [], ESPOOFER_BODY)


def espoofer_exo(case_id: str, name: str, minute: int, *, scl: int, sfv: str, cat: str,
                 sfty: str, dest: str) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 3, 10, 9, minute, 0)
    helo, mail_from, block = espoofer_sender_block(case_id, when - timedelta(seconds=2), rng)
    spec = ExoInbound(
        when=when, helo=helo, ip=ESPOOFER_IP, ctry="NL", ptr="mail.example.net",
        auth_results=eop_ar("pass", ESPOOFER_IP, mail_from.split("@")[-1], "none", "none",
                            "fail", "oreject", "contoso.com", "fail", "010"),
        received_spf=eop_spf("Pass", mail_from.split("@")[-1], ESPOOFER_IP, helo),
        return_path=mail_from, scl=scl, sfv=sfv, cat=cat, sfty=sfty, dest=dest,
        junk_reason="OFR:SpamFilterAuthJ;" if dest == "J" else "", ft="BN8NAM11FT077")
    top, bottom = exo_inbound(spec, name)
    return assemble(top, [block], bottom, ESPOOFER_BODY)


case("espoofer-a01-nonexistent-subdomain-mailfrom.eml")(
    lambda n: espoofer_selfhosted("a1", n, 1, spf="none"))
case("espoofer-a04-dkim-domain-quote-injection.eml")(
    lambda n: espoofer_selfhosted(
        "a4", n, 4, dkim_part="dkim=pass (1024-bit key; unprotected) "
        "header.d=contoso.com'a.example.net header.i=@contoso.com'a.example.net "
        "header.s=selector"))
case("espoofer-a06-spf-result-quote-injection.eml")(
    lambda n: espoofer_selfhosted("a6", n, 6, with_spf_header=True))
case("espoofer-a07-mailfrom-route-address.eml")(
    lambda n: espoofer_selfhosted("a7", n, 7, with_spf_header=True))
case("espoofer-a08-multiple-from.eml")(lambda n: espoofer_selfhosted("a8", n, 8))
case("espoofer-a09-multiple-from-leading-space.eml")(lambda n: espoofer_selfhosted("a9", n, 9))
case("espoofer-a10-from-space-before-colon.eml")(lambda n: espoofer_selfhosted("a10", n, 10))
case("espoofer-a11-from-folded-name.eml")(lambda n: espoofer_selfhosted("a11", n, 11))
case("espoofer-a12-from-folded-sender.eml")(lambda n: espoofer_selfhosted("a12", n, 12))
case("espoofer-a13-from-folded-resent-from.eml")(lambda n: espoofer_selfhosted("a13", n, 13))
case("espoofer-a14-multiple-addresses-exo.eml")(
    lambda n: espoofer_exo("a14", n, 14, scl=5, sfv="SPM", cat="SPOOF", sfty="9.11", dest="J"))
case("espoofer-a14-multiple-addresses-no-sender.eml")(
    lambda n: espoofer_selfhosted("a14", n, 15, drop=("Sender:",)))
case("espoofer-a15-encoded-word-address.eml")(lambda n: espoofer_selfhosted("a15", n, 16))
case("espoofer-a16-route-portion-exo.eml")(
    lambda n: espoofer_exo("a16", n, 17, scl=1, sfv="NSPM", cat="NONE", sfty="", dest="I"))
case("espoofer-a17-quoted-pair.eml")(lambda n: espoofer_selfhosted("a17", n, 18))
case("espoofer-a18-special-character-precedence.eml")(
    lambda n: espoofer_selfhosted("a18", n, 19))
case("espoofer-a19-display-name-address-parsing.eml")(
    lambda n: espoofer_selfhosted("a19", n, 20))


# --------------------------------------------------------------------------------------------
# legitimate look-alikes (must be clean)
# --------------------------------------------------------------------------------------------


def outlook_headers(rng: random.Random, mbx: str, frm: str, to: str, subject: str,
                    when: datetime, has_attach: bool = False) -> tuple[list[str], str]:
    """Headers Outlook / Exchange write for a message composed in a mailbox."""
    mid = f"{mbx}{hexid(rng, 26)}@{mbx}.namprd11.prod.outlook.com"
    return [
        f"From: {frm}", f"To: {to}", f"Subject: {subject}", f"Thread-Topic: {subject}",
        f"Thread-Index: {b64blob(rng, 22)}", f"Date: {exo_date(when)}",
        f"Message-ID: <{mid}>", "Accept-Language: en-US", "Content-Language: en-US",
        f"X-MS-Has-Attach: {'yes' if has_attach else ''}".rstrip(), "X-MS-TNEF-Correlator:",
    ], mid


def exo_internal(name: str, *, sender_mbx: str, rcpt_mbx: str, frm: str, to: str,
                 subject: str, when: datetime, text: str, html: str) -> bytes:
    """Mail composed by a signed-in user (Outlook/OWA) to a colleague in the same tenant."""
    rng = rng_for(name)
    build = build_for(when)
    nmid = guid(rng)
    t_sub, t_deliver = when + timedelta(seconds=1), when + timedelta(seconds=2)
    fe80 = f"fe80::{hexid(rng, 4, upper=False)}:{hexid(rng, 4, upper=False)}:" \
           f"{hexid(rng, 4, upper=False)}:{hexid(rng, 4, upper=False)}"
    top = [fold("Received", f"from {sender_mbx}.namprd11.prod.outlook.com "
                f"(2603:10b6:a03:2d4::12) by {rcpt_mbx}.namprd11.prod.outlook.com with HTTPS; "
                f"{exo_date(t_deliver)}")]
    if sender_mbx != rcpt_mbx:
        top.append(fold("Received", f"from {sender_mbx}.namprd11.prod.outlook.com "
                        f"(2603:10b6:a03:2d4::12) by {rcpt_mbx}.namprd11.prod.outlook.com "
                        "(2603:10b6:a03:2d9::19) with Microsoft SMTP Server (version=TLS1_2, "
                        f"cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.{build}; "
                        f"{exo_date(t_sub)}"))
    top.append(fold("Received", f"from {sender_mbx}.namprd11.prod.outlook.com ([{fe80}]) by "
                    f"{sender_mbx}.namprd11.prod.outlook.com ([{fe80}%4]) with mapi id "
                    f"15.20.{build_long(build)}; {exo_date(when)}"))
    ctype, body = alternative(rng, text, html)
    headers, _mid = outlook_headers(rng, sender_mbx, frm, to, subject, when)
    headers += [
        fold("authentication-results", "dkim=none (message not signed) header.d=none;"
             "dmarc=none action=none header.from=contoso.com;"),
        "x-ms-publictraffictype: Email",
        f"x-ms-traffictypediagnostic: {sender_mbx}:EE_|{rcpt_mbx}:EE_",
        f"x-ms-office365-filtering-correlation-id: {nmid}",
        "x-ms-exchange-senderadcheck: 1", "x-ms-exchange-antispam-relay: 0",
        "x-microsoft-antispam: BCL:0;ARA:13230040|366016|1800799024|376014|38070700018;",
        f"x-microsoft-antispam-message-info: {b64blob(rng, 180)}",
        "x-forefront-antispam-report: CIP:255.255.255.255;CTRY:;LANG:en;SCL:1;SRV:;IPV:NLI;"
        f"SFV:NSPM;H:{sender_mbx}.namprd11.prod.outlook.com;PTR:;CAT:NONE;"
        "SFS:(13230040)(366016)(1800799024)(376014)(38070700018);DIR:OUT;SFP:1101;",
        "x-ms-exchange-antispam-messagedata-chunkcount: 1",
        f"x-ms-exchange-antispam-messagedata-0: {b64blob(rng, 300)}",
        f"Content-Type: {ctype}", "MIME-Version: 1.0",
    ]
    bottom = [
        "X-OriginatorOrg: contoso.com",
        "X-MS-Exchange-CrossTenant-AuthAs: Internal",
        f"X-MS-Exchange-CrossTenant-AuthSource: {sender_mbx}.namprd11.prod.outlook.com",
        f"X-MS-Exchange-CrossTenant-Network-Message-Id: {nmid}",
        f"X-MS-Exchange-CrossTenant-originalarrivaltime: {arrival(when, rng)}",
        "X-MS-Exchange-CrossTenant-fromentityheader: Hosted",
        f"X-MS-Exchange-CrossTenant-id: {TENANT_ID}",
        "X-MS-Exchange-CrossTenant-mailboxtype: HOSTED",
        f"X-MS-Exchange-CrossTenant-userprincipalname: {b64blob(rng, 48)}",
        f"X-MS-Exchange-Transport-CrossTenantHeadersStamped: {rcpt_mbx}",
        f"Return-Path: {parseaddr(frm)[1]}",
        f"X-MS-Exchange-Organization-Network-Message-Id: {nmid}",
        f"X-MS-Exchange-Organization-AuthSource: {sender_mbx}.namprd11.prod.outlook.com",
        "X-MS-Exchange-Organization-AuthAs: Internal",
        "X-MS-Exchange-Organization-AuthMechanism: 04",
        "X-MS-Exchange-Organization-SCL: -1",
        "X-MS-Exchange-Organization-MessageDirectionality: Originating",
        "X-MS-Exchange-Organization-RecordReviewCfmType: 0",
        f"X-MS-Exchange-Transport-EndToEndLatency: 00:00:01.{rng.randint(0, 9999999):07d}",
        f"X-MS-Exchange-Processed-By-BccFoldering: 15.20.{build_long(build)}",
        "X-Microsoft-Antispam-Mailbox-Delivery: ucf:0;jmr:0;auth:0;dest:I;"
        "ENG:(910005)(944506478)(944626604)(920097)(930097)(140003);",
    ]
    return assemble(top, headers, bottom, body)


@case("exo-internal-user.eml")
def exo_internal_user(name: str) -> bytes:
    return exo_internal(
        name, sender_mbx=ANNA_MBX, rcpt_mbx=JOE_MBX, frm="Anna Kowalski <anna@contoso.com>",
        to="Joe Miller <joe@contoso.com>", subject="Q2 planning offsite - room options",
        when=utc(2026, 3, 4, 16, 41, 7),
        text="Hi Joe,\n\nI found two rooms for the Q2 planning offsite: the Lakeview room "
             "(seats 20)\nand the Garden room (seats 14). Which one do you prefer?\n\n"
             "Thanks,\nAnna\n",
        html="<html><body><p>Hi Joe,</p><p>I found two rooms for the Q2 planning offsite: the "
             "Lakeview room (seats 20) and the Garden room (seats 14). Which one do you "
             "prefer?</p><p>Thanks,<br>Anna</p></body></html>\n")


@case("exo-internal-note-to-self.eml")
def exo_internal_note_to_self(name: str) -> bytes:
    return exo_internal(
        name, sender_mbx=JOE_MBX, rcpt_mbx=JOE_MBX, frm="Joe Miller <joe@contoso.com>",
        to="Joe Miller <joe@contoso.com>", subject="Note to self: renew parking permit",
        when=utc(2026, 3, 5, 7, 58, 30),
        text="Renew the parking permit at the front desk before March 31.\nBring badge and "
             "vehicle registration.\n",
        html="<html><body><p>Renew the parking permit at the front desk before March 31.</p>"
             "<p>Bring badge and vehicle registration.</p></body></html>\n")


def scanner_message(name: str, *, when: datetime, frm: str, to: str, subject: str,
                    text: str, pdf_name: str, pdf: bytes, mailer: str) -> tuple[list[str], str]:
    rng = rng_for(name + "/mime")
    boundary = f"{mailer}-{hexid(rng, 16)}"
    body = multipart(boundary, [
        Part("text/plain; charset=us-ascii", text.encode(), "7bit"),
        Part(f'application/pdf; name="{pdf_name}"', pdf,
             disposition=f'attachment; filename="{pdf_name}"'),
    ])
    headers = [f"From: {frm}", f"To: {to}", f"Subject: {subject}",
               f"Date: {exo_date(when - timedelta(seconds=3))}",
               f"Message-ID: <{when:%Y%m%d%H%M%S}.{hexid(rng, 8)}@{mailer.lower()}.contoso.com>",
               "MIME-Version: 1.0", f'Content-Type: multipart/mixed; boundary="{boundary}"']
    return headers, body


SCAN_TEXT = ("Please open the attached file.\n\nNumber of pages: 1\nAttachment file type: PDF\n"
             "Device name: {device}\nDevice location: {location}\n")


@case("exo-scanner-connector-ip.eml")
def exo_scanner_connector_ip(name: str) -> bytes:
    """Scan-to-mail from the device whose IP is in the configured partner connector."""
    when = utc(2026, 3, 5, 10, 15, 12)
    ip, helo = "203.0.113.25", "mfp-floor2.contoso.com"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US",
        auth_results=eop_ar("pass", ip, "contoso.com", "none", "none", "pass", "none",
                            "contoso.com", "pass", "100"),
        received_spf=eop_spf("Pass", "contoso.com", ip, helo), return_path="scanner@contoso.com",
        ft="BN8NAM11FT024")
    top, bottom = exo_inbound(spec, name)
    headers, body = scanner_message(
        name, when=when, frm="MFP-FLOOR2 <scanner@contoso.com>", to="joe@contoso.com",
        subject="Scanned document",
        text=SCAN_TEXT.format(device="MFP-FLOOR2", location="2nd floor copy room"),
        pdf_name="scan_20260305_101509.pdf",
        pdf=pdf_scan_no_qr("MFP-FLOOR2", "scan-0305-1015", "3/5/2026 10:15"), mailer="MFP")
    return assemble(top, headers, bottom, body)


@case("exo-scanner-partner-cert.eml")
def exo_scanner_partner_cert(name: str) -> bytes:
    """A cloud scan service relaying over a certificate-matched partner connector: Exchange
    stamped AuthAs Partner / AuthMechanism 10; its IP is in no configured range."""
    when = utc(2026, 3, 5, 11, 2, 40)
    ip, helo = "198.51.100.60", "relay.scan.example.com"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("pass", ip, "contoso.com", "none", "none", "pass", "none",
                            "contoso.com", "pass", "100"),
        received_spf=eop_spf("Pass", "contoso.com", ip, helo), return_path="scanner@contoso.com",
        authas="Partner", auth_mechanism="10", ft="BN8NAM11FT031")
    top, bottom = exo_inbound(spec, name)
    headers, body = scanner_message(
        name, when=when, frm="Scan to Email <scanner@contoso.com>", to="anna@contoso.com",
        subject="Scanned document",
        text=SCAN_TEXT.format(device="MFP-RECEPTION", location="Reception"),
        pdf_name="scan_20260305_110236.pdf",
        pdf=pdf_scan_no_qr("MFP-RECEPTION", "scan-0305-1102", "3/5/2026 11:02"),
        mailer="SCANSVC")
    return assemble(top, headers, bottom, body)


@case("exo-printer-direct-send-spf.eml")
def exo_printer_direct_send_spf(name: str) -> bytes:
    """Direct Send as Microsoft documents it: a printer at an IP listed in contoso.com's SPF."""
    when = utc(2026, 3, 5, 9, 31, 4)
    ip, helo = "198.51.100.20", "RNP002673F2C1A4"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US",
        auth_results=eop_ar("pass", ip, "contoso.com", "none", "none", "pass", "none",
                            "contoso.com", "pass", "100"),
        received_spf=eop_spf("Pass", "contoso.com", ip, helo), return_path="printer@contoso.com",
        tls=False, ft="BN8NAM11FT044")
    top, bottom = exo_inbound(spec, name)
    headers, body = scanner_message(
        name, when=when, frm="printer@contoso.com", to="joe@contoso.com",
        subject="Scan Data from RNP002673F2C1A4",
        text=SCAN_TEXT.format(device="RNP002673F2C1A4", location="3rd floor"),
        pdf_name="20260305093058.pdf",
        pdf=pdf_scan_no_qr("RNP002673F2C1A4", "scan-0305-0930", "3/5/2026 09:30"),
        mailer="RICOH")
    return assemble(top, headers, bottom, body)


def forwarded_message(name: str, *, when: datetime, subject: str, text: str,
                      forwarder_ar: bool) -> bytes:
    """joe@contoso.com -> committee@example.org (an alias that forwards without SRS) ->
    back to anna@contoso.com. contoso.com's DKIM signature survives the trip."""
    rng = rng_for(name)
    build = build_for(when)
    ip, helo = "198.51.100.140", "mx.example.org"
    sent = when - timedelta(seconds=4)
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("fail", ip, "contoso.com", "pass", "contoso.com", "pass", "none",
                            "contoso.com", "pass", "100"),
        received_spf=eop_spf("Fail", "contoso.com", ip, helo), return_path="joe@contoso.com",
        mailbox=ANNA_MBX, ft="BN8NAM11FT053")
    top, bottom = exo_inbound(spec, name)
    ms_ip = "40.107.223.101"
    lower = []
    if forwarder_ar:
        lower.append(fold(
            "Authentication-Results",
            "mx.example.org; dkim=pass (2048-bit key; unprotected) header.d=contoso.com "
            f"header.i=@contoso.com header.b={b64blob(rng, 6)}; spf=pass (mx.example.org: "
            f"domain of joe@contoso.com designates {ms_ip} as permitted sender) "
            "smtp.mailfrom=joe@contoso.com; dmarc=pass (p=reject dis=none) "
            "header.from=contoso.com", cont="\t"))
    lower.append(
        "Received: from NAM11-DM6-obe.outbound.protection.outlook.com\n"
        f"\t(mail-dm6nam11on2101.outbound.protection.outlook.com [{ms_ip}])\n"
        f"\tby mx.example.org (Postfix) with ESMTPS id {hexid(rng, 10)}\n"
        f"\tfor <committee@example.org>; {postfix_date(sent + timedelta(seconds=2))}")
    fe80 = f"fe80::{hexid(rng, 4, upper=False)}:{hexid(rng, 4, upper=False)}"
    lower += [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=contoso.com; "
             "s=selector1; h=From:Date:Subject:Message-ID:Content-Type:MIME-Version:"
             f"X-MS-Exchange-SenderADCheck; bh={b64blob(rng, 32)}; b={b64blob(rng, 256)}"),
        fold("Received", f"from {JOE_MBX}.namprd11.prod.outlook.com (2603:10b6:a03:2d9::19) by "
             "DM6PR11MB3001.namprd11.prod.outlook.com (2603:10b6:5:69::21) with Microsoft SMTP "
             "Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id "
             f"15.20.{build}; {exo_date(sent + timedelta(seconds=1))}"),
        fold("Received", f"from {JOE_MBX}.namprd11.prod.outlook.com ([{fe80}]) by "
             f"{JOE_MBX}.namprd11.prod.outlook.com ([{fe80}%5]) with mapi id "
             f"15.20.{build_long(build)}; {exo_date(sent)}"),
    ]
    html = "<html><body>" + "".join(f"<p>{p}</p>" for p in text.strip().split("\n\n")) + \
           "</body></html>\n"
    ctype, body = alternative(rng, text, html)
    headers, _mid = outlook_headers(rng, JOE_MBX, "Joe Miller <joe@contoso.com>",
                                    '"committee@example.org" <committee@example.org>', subject,
                                    sent)
    headers += [f"Content-Type: {ctype}", "MIME-Version: 1.0"]
    return assemble(top, [*lower, *headers], bottom, body)


@case("exo-forwarded-no-srs.eml")
def exo_forwarded_no_srs(name: str) -> bytes:
    return forwarded_message(
        name, when=utc(2026, 3, 5, 15, 2, 16), forwarder_ar=False,
        subject="Agenda for the March committee meeting",
        text="Hi all,\n\nAttached below is the agenda for Thursday: budget review, the spring "
             "volunteer day\nand the new meeting schedule.\n\nJoe\n")


@case("exo-forwarded-no-srs-forwarder-ar.eml")
def exo_forwarded_no_srs_forwarder_ar(name: str) -> bytes:
    return forwarded_message(
        name, when=utc(2026, 3, 6, 9, 40, 51), forwarder_ar=True,
        subject="Minutes: March committee meeting",
        text="Hi all,\n\nThe minutes from yesterday are below. Next meeting is April 9.\n\n"
             "Joe\n")


NEWS_LINKS = [
    ("Spring collection", "ls/click/u001/spring-collection-2026"),
    ("Trail running shoes", "ls/click/u002/trail-running-shoes"),
    ("Rain jackets", "ls/click/u003/rain-jackets"),
    ("Tents and shelters", "ls/click/u004/tents"),
    ("Backpacks", "ls/click/u005/backpacks"),
    ("Climbing gear", "ls/click/u006/climbing"),
    ("Kids' outdoor wear", "ls/click/u007/kids"),
    ("Store locator", "ls/click/u008/stores"),
    ("Repair service", "ls/click/u009/repairs"),
    ("Gift cards", "ls/click/u010/gift-cards"),
    ("Blog: five spring hikes", "ls/click/u011/blog-spring-hikes"),
    ("Blog: packing light", "ls/click/u012/blog-packing-light"),
    ("Members' events", "ls/click/u013/member-events"),
    ("Facebook", "ls/click/u014/facebook"),
    ("Instagram", "ls/click/u015/instagram"),
    ("View in browser", "ls/click/u016/view-in-browser"),
    ("Manage preferences", "ls/click/u017/preferences"),
    ("Unsubscribe", "ls/click/u018/unsubscribe"),
]


def newsletter_html(rng: random.Random) -> str:
    rows = "\n".join(
        f'<tr><td style="padding:6px 0"><a href="https://click.em.example.org/{path}/'
        f'{alnum(rng, 10)}">{label}</a></td></tr>' for label, path in NEWS_LINKS)
    pixel = f"https://click.em.example.org/wf/open/{alnum(rng, 24)}"
    return (f"<html><body style=\"font-family:Helvetica,Arial\">\n<table width=\"600\">\n"
            "<tr><td><h1>Spring is here</h1><p>New season, new trails. Here is what is new "
            f"at Example Outdoor Co. this month.</p></td></tr>\n{rows}\n</table>\n"
            f'<img src="{pixel}" width="1" height="1" alt="">\n</body></html>\n')


@case("exo-newsletter-tracking-links.eml")
def exo_newsletter_tracking_links(name: str) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 3, 3, 17, 0, 5)
    ip, helo = "198.51.100.201", "o1.em.example.org"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo, bcl=3,
        auth_results=eop_ar("pass", ip, "em.example.org", "pass", "example.org", "pass",
                            "none", "example.org", "pass", "100"),
        received_spf=eop_spf("Pass", "em.example.org", ip, helo),
        return_path="bounces+2219-8f1c-joe=contoso.com@em.example.org", ft="BN8NAM11FT026")
    top, bottom = exo_inbound(spec, name)
    html = newsletter_html(rng)
    text = "Spring is here. New season, new trails.\n\n" + "\n".join(
        f"{label}: https://click.em.example.org/{path}" for label, path in NEWS_LINKS) + "\n"
    ctype, body = alternative(rng, text, html, prefix="")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; "
             "h=content-type:from:mime-version:subject:list-unsubscribe:"
             "list-unsubscribe-post:to:cc:content-type:from:subject:to; s=s1; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}"),
        f"Date: {exo_date(when - timedelta(seconds=2))}",
        "From: Example Outdoor Co. <news@example.org>", "To: joe@contoso.com",
        "Subject: New season, new trails: what's new this spring",
        f"Message-ID: <{alnum(rng, 22)}@geopod-ismtpd-7.em.example.org>",
        "List-Unsubscribe: <https://click.em.example.org/ls/click/u018/unsubscribe>, "
        "<mailto:unsubscribe@em.example.org>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        f"Feedback-ID: 2219:{alnum(rng, 8)}:newsletter:example",
        "MIME-Version: 1.0", f"Content-Type: {ctype}"]
    return assemble(top, headers, bottom, body)


@case("exo-newsletter-event-qr.eml")
def exo_newsletter_event_qr(name: str) -> bytes:
    """A ticket with an inline QR code to a legitimate check-in page (QR alone is not phish)."""
    rng = rng_for(name)
    when = utc(2026, 2, 20, 12, 0, 30)
    ip, helo = "198.51.100.210", "mail.example.org"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("pass", ip, "example.org", "pass", "example.org", "pass", "none",
                            "example.org", "pass", "100"),
        received_spf=eop_spf("Pass", "example.org", ip, helo),
        return_path="events@example.org", ft="BN8NAM11FT019")
    top, bottom = exo_inbound(spec, name)
    cid = f"ticket-{alnum(rng, 8).lower()}@example.org"
    html = ("<html><body style=\"font-family:Arial\">\n<h2>Example Summit 2026</h2>\n"
            "<p>Hi Joe, thanks for registering. Show this code at the registration desk on "
            "April 14.</p>\n"
            f'<p><img src="cid:{cid}" alt="Check-in code" width="240" height="240"></p>\n'
            '<p>Agenda and venue: <a href="https://events.example.org/summit-2026">'
            "events.example.org/summit-2026</a></p>\n</body></html>\n")
    related = f"related_{hexid(rng, 16)}"
    body = multipart(related, [
        Part('text/html; charset="utf-8"', html.encode(), "quoted-printable"),
        Part('image/png; name="checkin.png"',
             qr_png("https://events.example.org/summit-2026/checkin/K7QX2M", scale=6),
             disposition='inline; filename="checkin.png"', extra=[f"Content-ID: <{cid}>"]),
    ])
    headers = ["From: Example Events <events@example.org>", "To: Joe Miller <joe@contoso.com>",
               "Subject: Your ticket for Example Summit 2026",
               f"Date: {exo_date(when - timedelta(seconds=2))}",
               f"Message-ID: <{guid(rng)}@example.org>", "MIME-Version: 1.0",
               f'Content-Type: multipart/related;\n boundary="{related}";\n type="text/html"']
    return assemble(top, headers, bottom, body)


@case("exo-external-softfail.eml")
def exo_external_softfail(name: str) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 3, 2, 9, 12, 0)
    ip, helo = "198.51.100.90", "mail.example.com"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("softfail", ip, "example.com", "none", "none", "none", "none",
                            "example.com", "softpass", "201"),
        received_spf=eop_spf("SoftFail", "example.com", ip, helo),
        return_path="lena.fischer@example.com", ft="BN8NAM11FT027")
    top, bottom = exo_inbound(spec, name)
    headers = [f"Message-ID: <{guid(rng)}@example.com>",
               f"Date: {local_date(when - timedelta(seconds=5), 1)}",
               "MIME-Version: 1.0", "User-Agent: Mozilla Thunderbird", "Content-Language: en-US",
               "To: Joe Miller <joe@contoso.com>", "From: Lena Fischer <lena.fischer@example.com>",
               "Subject: Re: Q2 delivery schedule",
               "Content-Type: text/plain; charset=UTF-8; format=flowed",
               "Content-Transfer-Encoding: 7bit"]
    body = ("Hi Joe,\n\nthe updated delivery schedule works for us. We will ship the first "
            "pallets\non April 7 and the rest in the week after.\n\nBest regards,\nLena\n")
    return assemble(top, headers, bottom, body)


@case("exo-saas-p2-dkim-aligned.eml")
def exo_saas_p2_dkim_aligned(name: str) -> bytes:
    """A mailing platform sends as events@contoso.com with contoso.com's DKIM key; its own
    bounce domain is the envelope: DMARC passes through DKIM alignment."""
    rng = rng_for(name)
    when = utc(2026, 2, 12, 15, 30, 44)
    ip, helo = "198.51.100.120", "mta12.saas.example.net"
    spec = ExoInbound(
        when=when, helo=helo, ip=ip, ctry="US", ptr=helo,
        auth_results=eop_ar("pass", ip, "mail.saas.example.net", "pass", "contoso.com", "pass",
                            "none", "contoso.com", "pass", "100"),
        received_spf=eop_spf("Pass", "mail.saas.example.net", ip, helo),
        return_path="bounces+t1c2@mail.saas.example.net", ft="BN8NAM11FT035")
    top, bottom = exo_inbound(spec, name)
    link = "https://www.contoso.com/events/spring-town-hall"
    ctype, body = alternative(
        rng, f"You're invited to the Contoso spring town hall on March 19.\n\nDetails: {link}\n",
        f"<p>You're invited to the Contoso spring town hall on March 19.</p><p><a href=\"{link}"
        "\">Details</a></p>\n", prefix="----=_Part_")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=contoso.com; s=saas1; "
             f"t={int(when.timestamp())}; h=from:to:subject:date:message-id:mime-version; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}"),
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=saas.example.net; "
             f"s=pm; t={int(when.timestamp())}; h=from:to:subject:date:message-id; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}"),
        "From: Contoso Events <events@contoso.com>", "To: joe@contoso.com",
        "Subject: You're invited: Contoso spring town hall",
        f"Date: {exo_date(when - timedelta(seconds=1))}",
        f"Message-ID: <{guid(rng)}@mail.saas.example.net>", "MIME-Version: 1.0",
        f"Content-Type: {ctype}"]
    return assemble(top, headers, bottom, body)


@case("selfhosted-submission-esmtpsa.eml")
def selfhosted_submission_esmtpsa(name: str) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 3, 4, 8, 12, 45)
    top = postfix_inbound(PostfixInbound(
        when=when, helo="[192.168.178.20]", rdns="unknown", ip="198.51.100.33",
        rcpt="anna@contoso.com", return_path="joe@contoso.com", auth_results=None,
        protocol="ESMTPSA", auth_sender="joe@contoso.com", tls_comment=True), name)
    headers = [f"Message-ID: <{guid(rng)}@contoso.com>",
               f"Date: {exo_date(when - timedelta(seconds=1))}", "MIME-Version: 1.0",
               "User-Agent: Mozilla Thunderbird", "Content-Language: en-US",
               "To: Anna Kowalski <anna@contoso.com>", "From: Joe Miller <joe@contoso.com>",
               "Subject: Slides for Thursday",
               "Content-Type: text/plain; charset=UTF-8; format=flowed",
               "Content-Transfer-Encoding: 7bit"]
    body = ("Hi Anna,\n\nI'll bring the slides for Thursday on a USB stick; the projector in the"
            "\nLakeview room still has no network.\n\nJoe\n")
    return assemble(top, headers, [], body)


@case("selfhosted-connector-device.eml")
def selfhosted_connector_device(name: str) -> bytes:
    """The branch-office scanner at the configured connector IP; its IP is not in SPF."""
    when = utc(2026, 3, 5, 10, 20, 0)
    ip, helo = "192.0.2.10", "scan02.branch.contoso.com"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns="unknown", ip=ip, rcpt="joe@contoso.com",
        return_path="scanner@contoso.com",
        auth_results=sh_ar("fail", "scanner@contoso.com", "none", "fail", "contoso.com")),
        name)
    headers, body = scanner_message(
        name, when=when, frm="Branch Scanner <scanner@contoso.com>", to="joe@contoso.com",
        subject="Scanned document",
        text=SCAN_TEXT.format(device="SCAN02", location="Branch office"),
        pdf_name="SCAN02_20260305_1019.pdf",
        pdf=pdf_scan_no_qr("SCAN02", "scan-0305-1019", "3/5/2026 10:19"), mailer="SCAN02")
    return assemble(top, headers, [], body)


@case("selfhosted-newsletter.eml")
def selfhosted_newsletter(name: str) -> bytes:
    rng = rng_for(name)
    when = utc(2026, 3, 3, 17, 0, 9)
    ip, helo = "198.51.100.201", "o1.em.example.org"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns=helo, ip=ip, rcpt="joe@contoso.com",
        return_path="bounces+2219-8f1c-joe=contoso.com@em.example.org", protocol="ESMTPS",
        tls_comment=True, amavis=True,
        auth_results=sh_ar("pass", "bounces+2219-8f1c-joe=contoso.com@em.example.org", "pass",
                           "pass", "example.org", dkim_d="example.org", dkim_s="s1",
                           policy="none")), name)
    html = newsletter_html(rng)
    text = "Spring is here. New season, new trails.\n"
    ctype, body = alternative(rng, text, html, prefix="")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; "
             "h=content-type:from:mime-version:subject:list-unsubscribe:to; s=s1; "
             f"bh={b64blob(rng, 32)}; b={b64blob(rng, 128)}", cont="\t"),
        f"Date: {exo_date(when - timedelta(seconds=2))}",
        "From: Example Outdoor Co. <news@example.org>", "To: joe@contoso.com",
        "Subject: New season, new trails: what's new this spring",
        f"Message-ID: <{alnum(rng, 22)}@geopod-ismtpd-7.em.example.org>",
        "List-Unsubscribe: <https://click.em.example.org/ls/click/u018/unsubscribe>",
        "MIME-Version: 1.0", f"Content-Type: {ctype}"]
    return assemble(top, headers, [], body)


@case("selfhosted-m365-partner-mail.eml")
def selfhosted_m365_partner_mail(name: str) -> bytes:
    """Ordinary mail from a partner whose own mail runs on Microsoft 365: it carries that
    tenant's outbound stamps (CrossTenant AuthAs Internal, x-forefront DIR:OUT, ARC i=1)."""
    rng = rng_for(name)
    when = utc(2026, 3, 6, 13, 45, 0)
    ip = "40.107.243.93"
    helo = "NAM12-DM6-obe.outbound.protection.outlook.com"
    top = postfix_inbound(PostfixInbound(
        when=when, helo=helo, rdns="mail-dm6nam12on2093.outbound.protection.outlook.com",
        ip=ip, rcpt="joe@contoso.com", return_path="priya.nair@example.org",
        protocol="ESMTPS",
        auth_results=sh_ar("pass", "priya.nair@example.org", "pass", "pass", "example.org",
                           dkim_d="example.org", dkim_s="selector1", policy="quarantine")),
        name)
    build = build_for(when)
    nmid = guid(rng)
    mbx = "CH3PR12MB7738"
    fe80 = f"fe80::{hexid(rng, 4, upper=False)}:{hexid(rng, 4, upper=False)}"
    text = ("Hi Joe,\n\nthanks for the call today. I have shared the revised statement of work"
            "\nwith your procurement team; let me know if anything is missing.\n\nPriya\n")
    html = ("<html><body><p>Hi Joe,</p><p>thanks for the call today. I have shared the revised "
            "statement of work with your procurement team; let me know if anything is "
            "missing.</p><p>Priya</p></body></html>\n")
    ctype, body = alternative(rng, text, html)
    sender = [
        fold("ARC-Seal", "i=1; a=rsa-sha256; s=arcselector10001; d=microsoft.com; cv=none; "
             f"b={b64blob(rng, 256)}"),
        fold("ARC-Message-Signature", "i=1; a=rsa-sha256; c=relaxed/relaxed; d=microsoft.com; "
             "s=arcselector10001; h=From:Date:Subject:Message-ID:Content-Type:MIME-Version:"
             "X-MS-Exchange-AntiSpam-MessageData-ChunkCount:X-MS-Exchange-AntiSpam-MessageData-0;"
             f" bh={b64blob(rng, 32)}; b={b64blob(rng, 256)}"),
        fold("ARC-Authentication-Results", "i=1; mx.microsoft.com 1; spf=pass "
             "smtp.mailfrom=example.org; dmarc=pass action=none header.from=example.org; "
             "dkim=pass header.d=example.org; arc=none"),
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; "
             "s=selector1; h=From:Date:Subject:Message-ID:Content-Type:MIME-Version:"
             f"X-MS-Exchange-SenderADCheck; bh={b64blob(rng, 32)}; b={b64blob(rng, 256)}"),
        fold("Received", f"from {mbx}.namprd12.prod.outlook.com (2603:10b6:610:1c1::9) by "
             "DS0PR12MB6510.namprd12.prod.outlook.com (2603:10b6:8:d3::18) with Microsoft SMTP "
             "Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id "
             f"15.20.{build}; {exo_date(when - timedelta(seconds=2))}"),
        fold("Received", f"from {mbx}.namprd12.prod.outlook.com ([{fe80}]) by "
             f"{mbx}.namprd12.prod.outlook.com ([{fe80}%6]) with mapi id "
             f"15.20.{build_long(build)}; "
             f"{exo_date(when - timedelta(seconds=3))}"),
        "From: Priya Nair <priya.nair@example.org>", "To: Joe Miller <joe@contoso.com>",
        "Subject: Revised statement of work", "Thread-Topic: Revised statement of work",
        f"Thread-Index: {b64blob(rng, 22)}", f"Date: {exo_date(when - timedelta(seconds=3))}",
        f"Message-ID: <{mbx}{hexid(rng, 26)}@{mbx}.namprd12.prod.outlook.com>",
        "Accept-Language: en-US", "Content-Language: en-US", "X-MS-Has-Attach:",
        "X-MS-TNEF-Correlator:", "authentication-results: dkim=none (message not signed) "
        "header.d=none;dmarc=none action=none header.from=example.org;",
        "x-ms-publictraffictype: Email",
        f"x-ms-traffictypediagnostic: {mbx}:EE_|DS0PR12MB6510:EE_",
        f"x-ms-office365-filtering-correlation-id: {nmid}",
        "x-forefront-antispam-report: CIP:255.255.255.255;CTRY:;LANG:en;SCL:1;SRV:;IPV:NLI;"
        f"SFV:NSPM;H:{mbx}.namprd12.prod.outlook.com;PTR:;CAT:NONE;"
        "SFS:(13230040)(366016)(1800799024)(376014);DIR:OUT;SFP:1101;",
        "x-ms-exchange-antispam-messagedata-chunkcount: 1",
        f"x-ms-exchange-antispam-messagedata-0: {b64blob(rng, 240)}",
        f"Content-Type: {ctype}", "MIME-Version: 1.0", "X-OriginatorOrg: example.org",
        "X-MS-Exchange-CrossTenant-AuthAs: Internal",
        f"X-MS-Exchange-CrossTenant-AuthSource: {mbx}.namprd12.prod.outlook.com",
        f"X-MS-Exchange-CrossTenant-Network-Message-Id: {nmid}",
        f"X-MS-Exchange-CrossTenant-originalarrivaltime: {arrival(when, rng)}",
        "X-MS-Exchange-CrossTenant-fromentityheader: Hosted",
        "X-MS-Exchange-CrossTenant-id: 0e9a2b6c-31f4-4d8a-a1c5-7b2d94e6f310",
        "X-MS-Exchange-CrossTenant-mailboxtype: HOSTED",
        "X-MS-Exchange-Transport-CrossTenantHeadersStamped: DS0PR12MB6510",
    ]
    return assemble(top, sender, [], body)


@case("paste-no-received.eml")
def paste_no_received(name: str) -> bytes:
    """What an analyst pastes: three header lines, no trace, no body."""
    del name
    return (b'From: "Example Weekly" <news@example.org>\r\nTo: joe@contoso.com\r\n'
            b"Subject: Your weekly digest\r\n")


@case("inferred-gmail-newsletter.eml")
def inferred_gmail_newsletter(name: str) -> bytes:
    """contoso.com hosted on Google Workspace (a receiver dsguard is not configured for)."""
    rng = rng_for(name)
    when = utc(2026, 2, 27, 18, 3, 41)
    ip, helo = "198.51.100.25", "mail.example.org"
    gid = f"{alnum(rng, 4).lower()}-{alnum(rng, 20).lower()}"
    def pst(dt: datetime) -> str:
        local = dt - timedelta(hours=8)
        return f"{local:%a}, {local.day} {local:%b %Y %H:%M:%S} -0800 (PST)"

    top = [
        "Delivered-To: joe@contoso.com",
        f"Received: by 2002:a05:7010:{hexid(rng, 4, upper=False)}:b0:{hexid(rng, 3, upper=False)}"
        f":{hexid(rng, 4, upper=False)}:{hexid(rng, 4, upper=False)} with SMTP id "
        f"{alnum(rng, 6).lower()}csp{rng.randint(100000, 999999)}mxb;\n"
        f"        {pst(when + timedelta(seconds=1))}",
        f"X-Received: by 2002:a17:90b:{hexid(rng, 4, upper=False)} with SMTP id "
        f"{alnum(rng, 20).lower()}.{rng.randint(10, 99)}.{int(when.timestamp())}0000;\n"
        f"        {pst(when + timedelta(seconds=1))}",
        "ARC-Seal: i=1; a=rsa-sha256; t=" + str(int(when.timestamp())) + "; cv=none;\n"
        "        d=google.com; s=arc-20240605;\n        b=" + b64blob(rng, 96),
        "ARC-Authentication-Results: i=1; mx.google.com;\n"
        "       dkim=pass header.i=@example.org header.s=s1 header.b=" + alnum(rng, 8) + ";\n"
        "       spf=pass (google.com: domain of bounce@news.example.org designates "
        f"{ip} as permitted sender) smtp.mailfrom=bounce@news.example.org;\n"
        "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.org",
        "Return-Path: <bounce@news.example.org>",
        f"Received: from {helo} ({helo}. [{ip}])\n"
        f"        by mx.google.com with ESMTPS id {gid}.{rng.randint(100, 999)}.2026.02.27."
        f"{rng.randint(10, 99)}.{rng.randint(10, 99)}.{rng.randint(10, 99)}\n"
        "        for <joe@contoso.com>\n"
        "        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\n"
        f"        {pst(when)}",
        "Received-SPF: pass (google.com: domain of bounce@news.example.org designates "
        f"{ip} as permitted sender) client-ip={ip};",
        "Authentication-Results: mx.google.com;\n"
        "       dkim=pass header.i=@example.org header.s=s1 header.b=" + alnum(rng, 8) + ";\n"
        "       spf=pass (google.com: domain of bounce@news.example.org designates "
        f"{ip} as permitted sender) smtp.mailfrom=bounce@news.example.org;\n"
        "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.org",
    ]
    text = ("This week at Example Library: the spring reading list is out, the reading room "
            "reopens\non Monday, and the author talk moves to Thursday evening.\n\n"
            "https://news.example.org/weekly/2026-09\n")
    headers = [
        fold("DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1; "
             f"h=from:to:subject:date:message-id; bh={b64blob(rng, 32)}; "
             f"b={b64blob(rng, 128)}", cont="        "),
        "From: Example Library <news@example.org>", "To: joe@contoso.com",
        "Subject: This week at Example Library",
        f"Date: {exo_date(when - timedelta(seconds=3))}",
        f"Message-ID: <{guid(rng)}@news.example.org>", "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 7bit"]
    return assemble(top, headers, [], text)


# --------------------------------------------------------------------------------------------
# writing and checking
# --------------------------------------------------------------------------------------------


def decode_qr_codes(filename: str, data: bytes) -> list[str]:
    """Render PDFs at dsguard's default 110 dpi (first 5 pages) and decode QR codes."""
    import pypdfium2
    import zxingcpp

    images: list[Image.Image] = []
    if data.startswith(b"%PDF"):
        pdf = pypdfium2.PdfDocument(data)
        for index in range(min(len(pdf), 5)):
            images.append(pdf[index].render(scale=110 / 72).to_pil())
    elif data.startswith(b"\x89PNG"):
        images.append(Image.open(io.BytesIO(data)))
    else:
        return []
    found = []
    for img in images:
        found += [r.text for r in zxingcpp.read_barcodes(img)]
    del filename
    return found


def check(path: Path) -> dict[str, object]:
    import email

    raw = path.read_bytes()
    msg = email.message_from_bytes(raw)
    problems = [type(d).__name__ for d in msg.defects]
    qr: list[str] = []
    attachments = []
    for part in msg.walk():
        problems += [type(d).__name__ for d in part.defects]
        if part.is_multipart():
            continue
        name = part.get_filename()
        if part.get_content_maintype() == "text" and not name:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        attachments.append(f"{name or part.get_content_type()} ({len(payload)} bytes)")
        qr += decode_qr_codes(name or "", payload)
    for line in raw.split(b"\r\n"):
        if len(line) > 998:
            problems.append("line longer than 998 octets")
    return {"file": path.name, "defects": problems, "attachments": attachments, "qr": qr}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="parse and decode what was written")
    parser.add_argument("--out", type=Path, default=CASES_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in sorted(CASES.items()):
        (args.out / name).write_bytes(build(name))
    print(f"wrote {len(CASES)} messages to {args.out}")
    if args.check:
        for name in sorted(CASES):
            print(json.dumps(check(args.out / name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
