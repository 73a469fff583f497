"""What every check reads (``Facts``) and what it returns (``Hit``).

Facts are derived once per message by the engine, so checks stay small and never repeat
parsing: the sender's claims, the organisation's domains, the attribution, the receiver's
authentication results, and (lazily) links and QR payloads from the body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from dsguard.attachments.qr import QrScan
from dsguard.attachments.urls import extract_urls, url_host
from dsguard.auth.summary import AuthSummary
from dsguard.config import Config
from dsguard.mail.addresses import AddressField, Mailbox, domain_of
from dsguard.mail.envelope import HopAnalysis
from dsguard.mail.message import Attachment, ParsedMessage, lazy_attribute
from dsguard.model import Attribution, AttributionKind, Envelope, quick_init
from dsguard.policy.domains import AcceptedDomains

if TYPE_CHECKING:
    from dsguard.intel.bundle import Intel


class Decoder(Protocol):
    def scan_pdf(self, data: bytes, *, max_pages: int, dpi: int, deadline: float, max_pixels: int) -> QrScan: ...
    def scan_image(self, data: bytes, *, deadline: float, max_pixels: int) -> QrScan: ...


class Hit(NamedTuple):
    id: str
    summary: str
    evidence: str = ""


_PDF_TYPES = frozenset({"application/pdf", "application/x-pdf"})
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


@quick_init
@dataclass(frozen=True, slots=True)
class QrResult:
    attachment: Attachment
    kind: str  # "pdf" or "image"
    scan: QrScan


@quick_init
@dataclass(frozen=True, slots=True)
class Links:
    urls: tuple[str, ...]
    limit_hit: bool


class Facts:
    """Everything the checks may read about one message. Derived values are computed once."""

    def __init__(
        self,
        *,
        message: ParsedMessage,
        envelope: Envelope,
        auth: AuthSummary,
        accepted: AcceptedDomains,
        attribution: Attribution,
        config: Config,
        intel: Intel,
        decoder: Decoder,
        hops: HopAnalysis | None = None,
    ) -> None:
        self.message = message
        self.envelope = envelope
        self.auth = auth
        self.accepted = accepted
        self.attribution = attribution
        self.config = config
        self.intel = intel
        self.decoder = decoder
        self.hops = hops
        # Read by most checks (eight times a message): a plain attribute, not a property.
        self.anonymous: bool = attribution.kind is AttributionKind.ANONYMOUS

    # -- sender and organisation --------------------------------------------------------------
    @lazy_attribute
    def p1_domain(self) -> str | None:
        mf = self.envelope.mail_from
        return domain_of(mf) or None if mf else None

    @property
    def null_sender(self) -> bool:
        return self.envelope.mail_from == ""


    @lazy_attribute
    def p1_accepted(self) -> bool:
        return self.accepted.matches(self.p1_domain)

    @lazy_attribute
    def identity_fields(self) -> tuple[AddressField, ...]:
        """From plus the fields mail clients show in its place (Sender, Resent-From)."""
        msg = self.message
        return msg.from_fields + msg.address_fields("sender") + msg.address_fields("resent-from")

    @lazy_attribute
    def header_from(self) -> Mailbox | None:
        for field in self.message.from_fields:
            if field.first is not None:
                return field.first
        return None

    @lazy_attribute
    def claimed_domains(self) -> tuple[str, ...]:
        out: list[str] = []
        for field in self.identity_fields:
            out.extend(field.claimed_domains)
        return tuple(dict.fromkeys(out))

    @lazy_attribute
    def own_claims(self) -> tuple[str, ...]:
        """Accepted domains the header From (or Sender / Resent-From) claims."""
        return tuple(d for d in self.claimed_domains if self.accepted.matches(d))

    @lazy_attribute
    def own_unproven(self) -> tuple[str, ...]:
        """Own-domain claims with no aligned DKIM/SPF pass behind them."""
        return tuple(d for d in self.own_claims if not self.auth.proof_for(d))

    @lazy_attribute
    def poses_as_organisation(self) -> bool:
        """Anonymous mail that shows the organisation's domain: in the envelope, in a From /
        Sender / Resent-From address, or as an address in the From display name."""
        if not self.anonymous:
            return False
        if self.p1_accepted or self.own_claims:
            return True
        return any(
            self.accepted.matches(domain_of(a))
            for fld in self.message.from_fields
            for a in fld.display_name_addresses
        )

    @lazy_attribute
    def direct_send(self) -> bool:
        """Microsoft's definition: anonymous, no connector, accepted-domain P1."""
        return self.anonymous and self.p1_accepted

    @lazy_attribute
    def p1_authenticated(self) -> bool:
        """The accepted-domain envelope sender is proven by SPF or aligned DKIM."""
        d = self.p1_domain or ""
        return self.auth.spf_passes_for(d) or self.auth.dkim_passes_aligned(d)

    @property
    def spoof_p1(self) -> bool:
        return self.direct_send and not self.p1_authenticated

    @property
    def spoof_p2(self) -> bool:
        return self.anonymous and bool(self.own_unproven)

    @lazy_attribute
    def auth_failed(self) -> bool:
        a = self.auth
        return (
            a.spf in ("fail", "softfail")
            or a.dmarc == "fail"
            or a.compauth == "fail"
            or (any(r == "fail" for r, _ in a.dkim) and not any(r == "pass" for r, _ in a.dkim))
        )

    @lazy_attribute
    def recipients(self) -> tuple[str, ...]:
        rcpts = list(self.envelope.rcpt_to) + list(self.message.recipients)
        return tuple(dict.fromkeys(r.lower() for r in rcpts))

    # -- content ------------------------------------------------------------------------------
    @lazy_attribute
    def links(self) -> Links:
        body = self.message.body
        limit = self.config.limits.max_urls
        urls: list[str] = []
        hit = False
        for text, html in [(t, False) for t in body.texts] + [(h, True) for h in body.htmls]:
            remaining = limit - len(urls)
            if remaining <= 0:
                hit = True
                break
            found, over = extract_urls(text, html=html, limit=remaining)
            urls.extend(found)
            hit = hit or over
        return Links(tuple(dict.fromkeys(urls)), hit)

    @lazy_attribute
    def link_hosts(self) -> tuple[tuple[str, str | None], ...]:
        """Every URL the link checks and the IOC list examine -- the body's links, then QR
        URLs not among them -- each with its ``url_host``; computed once for both."""
        urls = self.links.urls
        qr = self.qr_urls
        if qr:
            urls = tuple(dict.fromkeys(urls + qr))  # both are free of repeats already
        return tuple([(url, url_host(url)) for url in urls])

    @lazy_attribute
    def qr_results(self) -> tuple[QrResult, ...]:
        limits = self.config.limits
        if not limits.decode_qr:
            return ()
        deadline = time.monotonic() + limits.max_decode_seconds
        out: list[QrResult] = []
        images = 0
        for att in self.message.body.attachments:
            head = att.data[:8]
            is_pdf = (
                att.content_type in _PDF_TYPES
                or head.startswith(b"%PDF")
                or (att.filename.lower().endswith(".pdf"))
            )
            if is_pdf:
                scan = self.decoder.scan_pdf(
                    att.data,
                    max_pages=limits.max_pdf_pages,
                    dpi=limits.pdf_render_dpi,
                    deadline=deadline,
                    max_pixels=limits.max_image_pixels,
                )
                out.append(QrResult(att, "pdf", scan))
            elif att.content_type.startswith("image/") or head.startswith(_IMAGE_MAGIC):
                if att.content_type == "image/svg+xml":
                    continue
                images += 1
                if images > limits.max_images:
                    continue
                scan = self.decoder.scan_image(
                    att.data, deadline=deadline, max_pixels=limits.max_image_pixels
                )
                out.append(QrResult(att, "image", scan))
            if time.monotonic() > deadline:
                break
        return tuple(out)

    @lazy_attribute
    def qr_urls(self) -> tuple[str, ...]:
        out: list[str] = []
        for result in self.qr_results:
            for text in result.scan.texts:
                found, _ = extract_urls(text, html=False, limit=20)
                out.extend(found)
        return tuple(dict.fromkeys(out))
