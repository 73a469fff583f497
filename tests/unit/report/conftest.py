"""Scan results shared by the report tests, built directly from dsguard.model values."""

from __future__ import annotations

import pytest

from dsguard.model import (
    Action,
    Attribution,
    AttributionKind,
    Envelope,
    EnvelopeOrigin,
    Finding,
    Iocs,
    Level,
    MessageSummary,
    RdsDecision,
    RdsOutcome,
    ScanResult,
    Verdict,
)

HOSTILE_SUBJECT = (
    "=cmd|' /C calc'!A0 <script>alert(1)</script> \x1b[31mRED\x1b[0m"
    " [bold]markup[/bold] line1\r\nX-Injected: yes"
)
QR_URL = "https://voice-e091b.firebaseapp.com/listen?id=7"
JS_URL = "javascript:alert(document.domain)"


def _campaign_envelope() -> Envelope:
    return Envelope(
        origin=EnvelopeOrigin.HEADERS,
        client_ip="139.28.36.171",
        helo="WIN-3J8KQ2H1LDF",
        mail_from="joe@contoso.com",
        rcpt_to=("joe@contoso.com",),
        country="UA",
        receiver="contoso-com.mail.protection.outlook.com",
    )


@pytest.fixture
def campaign() -> ScanResult:
    """The published campaign: self-addressed fax lure from 139.28.x.x with a QR code PDF."""
    findings = (
        Finding("DS_DIRECT_SEND", 1.0, "Anonymous mail with an accepted-domain envelope sender.",
                "MAIL FROM joe@contoso.com"),
        Finding("DS_SPOOF_ENVELOPE", 6.0, "Accepted-domain envelope sender is not authenticated.",
                "spf=fail smtp.mailfrom=contoso.com; dkim=none"),
        Finding("DS_SELF_ADDRESSED", 2.0, "Own-domain message addressed to its own sender.",
                "From joe@contoso.com = To joe@contoso.com"),
        Finding("ATT_QR_PDF", 3.0, "A PDF attachment holds a QR code.",
                "Fax-msg.pdf page 1: " + QR_URL),
        Finding("LURE_VOICEMAIL_FAX", 2.0, "Voicemail, fax or missed-call lure wording.",
                "subject: New Missed Fax-msg"),
        Finding("HOP_UNEXPECTED_COUNTRY", 2.0, "Connection from a country not expected.",
                "CTRY:UA"),
        Finding("AUTH_DMARC_FAIL", 2.0, "DMARC failed for the header From domain.",
                "dmarc=fail action=none header.from=contoso.com"),
        Finding("IOC_FREE_HOSTING_LINK", 2.0, "A link points at free hosting.",
                "voice-e091b.firebaseapp.com"),
        Finding("CAMPAIGN_DIRECT_SEND_LURE", 3.0, "Own-domain spoof with the campaign's lure.",
                ""),
    )
    verdict = Verdict(
        level=Level.MALICIOUS,
        score=23.0,
        findings=findings,
        direct_send=True,
        attribution=Attribution(AttributionKind.ANONYMOUS, reason="no AUTH, no connector"),
        action=Action.QUARANTINE,
        iocs=Iocs(
            ips=("139.28.36.171",),
            urls=("https://mv4lh.bsfff.es/index.html", QR_URL),
            domains=("mv4lh.bsfff.es", "voice-e091b.firebaseapp.com"),
            qr_urls=(QR_URL,),
        ),
        rds=(RdsDecision("P1", RdsOutcome.WOULD_REJECT, enforced=False,
                         reason="anonymous, MAIL FROM in accepted domain contoso.com"),),
    )
    return ScanResult(
        path="mail/x.mbox",
        index=3,
        summary=MessageSummary(
            message_id="<1234.fax@WIN-3J8KQ2H1LDF>",
            from_addr="joe@contoso.com",
            from_display="Joe",
            to=("joe@contoso.com",),
            subject="New Missed Fax-msg",
            date="Tue, 15 Jul 2025 09:12:44 +0000",
        ),
        envelope=_campaign_envelope(),
        verdict=verdict,
        notes=("envelope rebuilt from the receiving organisation's stamps",),
    )


@pytest.fixture
def clean() -> ScanResult:
    return ScanResult(
        path="mail/newsletter.eml",
        summary=MessageSummary(
            message_id="<n1@example.net>",
            from_addr="news@example.net",
            from_display="Example News",
            to=("ann@contoso.com",),
            subject="Weekly digest",
        ),
        envelope=Envelope(origin=EnvelopeOrigin.HEADERS, client_ip="192.0.2.25",
                          mail_from="bounce@example.net", rcpt_to=("ann@contoso.com",)),
        verdict=Verdict(
            level=Level.CLEAN,
            score=-1.0,
            findings=(),
            direct_send=False,
            attribution=Attribution(AttributionKind.ANONYMOUS),
            action=Action.DELIVER,
        ),
    )


@pytest.fixture
def unreadable() -> ScanResult:
    return ScanResult(path="mail/broken.msg", error="not an OLE2 compound file")


@pytest.fixture
def hostile() -> ScanResult:
    """Attacker-written values everywhere a report shows text."""
    return ScanResult(
        path="mail/hostile.eml",
        summary=MessageSummary(
            message_id="<x@example.org>",
            from_addr="@SUM(1+1)@contoso.com",
            from_display="<img src=x onerror=alert(2)>",
            to=("+cmd@contoso.com", "bob@contoso.com"),
            subject=HOSTILE_SUBJECT,
        ),
        envelope=Envelope(origin=EnvelopeOrigin.INFERRED, client_ip="198.51.100.7",
                          helo="-evil\x1b]0;pwned\x07", mail_from="joe@contoso.com"),
        verdict=Verdict(
            level=Level.SUSPICIOUS,
            score=8.0,
            findings=(
                Finding("HDR_FROM_DISPLAY_NAME_ADDRESS", 3.0, "Display name holds an address.",
                        "<script>alert('evidence')</script>"),
                Finding("DS_SPOOF_HEADER_FROM", 6.0, "Header From in an accepted domain.",
                        "From: =HYPERLINK(\"http://example.com\")"),
            ),
            direct_send=True,
            attribution=Attribution(AttributionKind.ANONYMOUS),
            action=Action.TAG,
            iocs=Iocs(urls=(JS_URL, "https://evil.example/login?u=1"),
                      domains=("evil.example",), qr_urls=(JS_URL,)),
        ),
    )
