"""The catalog of finding ids: the stable contract users script against.

Every id a check can emit is declared here with its family and meaning; ``docs/findings.md``
is generated from this list (``dsguard findings --markdown``) and a test keeps the two equal.
Scores are not here: they are data in ``defaults.toml`` (``[scoring.scores]``).
Ids are never renamed or reused once released; retire an id by leaving it documented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FindingSpec:
    id: str
    family: str
    meaning: str


FAMILIES: dict[str, str] = {
    "DS": "Direct Send: the organisation's own domain used by an unauthenticated sender",
    "AUTH": "What the receiving organisation's authentication checks said",
    "HDR": 'Header ambiguity and header forgery ("Composition Kills" shapes)',
    "HOP": "The connection at the trusted receiving hop",
    "LURE": "Lure themes in subject, body and attachment names of anonymous mail that presents "
    "itself as the organisation's (own domain in the envelope, a sender field or the display name)",
    "IOC": "Indicators of compromise and risky link targets",
    "ATT": "Attachments (QR codes in PDFs and images, HTML)",
    "LIMIT": "Hard limits on hostile input",
    "MIME": "Broken message structure",
    "CAMPAIGN": "Composites: findings that occur together (defined in the config)",
}

_SPECS: tuple[FindingSpec, ...] = (
    FindingSpec(
        "DS_DIRECT_SEND",
        "DS",
        "The message arrived anonymously (no SMTP AUTH, no connector) with an envelope sender "
        "(P1 MAIL FROM) in an accepted domain: Microsoft's RejectDirectSend would refuse it with "
        "550 5.7.68. Informational on its own: printers and applications do this legitimately.",
    ),
    FindingSpec(
        "DS_SPOOF_ENVELOPE",
        "DS",
        "Direct Send whose accepted-domain envelope sender is not authenticated: no SPF pass for "
        "the envelope domain and no aligned DKIM pass. The campaign's shape.",
    ),
    FindingSpec(
        "DS_SPOOF_HEADER_FROM",
        "DS",
        "Anonymous mail whose header From (P2) is in an accepted domain without an aligned DKIM or "
        "SPF pass (DMARC would fail): the address the user sees is the organisation's own but "
        "nothing proves it.",
    ),
    FindingSpec(
        "DS_P2_ONLY",
        "DS",
        "The header From is in an accepted domain but the envelope sender is not: Microsoft's "
        "RejectDirectSend checks only the envelope and lets this through.",
    ),
    FindingSpec(
        "DS_NULL_SENDER_INTERNAL_FROM",
        "DS",
        "Null envelope sender (MAIL FROM:<>, a bounce) from an anonymous source whose header From "
        "is in an accepted domain without authentication.",
    ),
    FindingSpec(
        "DS_SELF_ADDRESSED",
        "DS",
        "An unauthenticated own-domain message addressed to its own sender (From equals a "
        'recipient): users "emailing themselves", the campaign\'s signature.',
    ),
    FindingSpec(
        "DS_AUTHORISED_DIRECT_SEND",
        "DS",
        "Direct Send from a source the domain's SPF authorises (a printer, scanner or application): "
        "legitimate, but RejectDirectSend would refuse it until a connector exists.",
    ),
    FindingSpec(
        "DS_FORWARDED_NO_SRS",
        "DS",
        "An own-domain envelope sender arriving from a foreign host with the organisation's DKIM "
        "intact: forwarding without SRS. Legitimate; RejectDirectSend would refuse it "
        "(Microsoft's known issue).",
    ),
    FindingSpec(
        "AUTH_SPF_FAIL",
        "AUTH",
        "The receiver's SPF check failed (-all): the connecting IP is not allowed to send for the "
        "envelope domain.",
    ),
    FindingSpec("AUTH_SPF_SOFTFAIL", "AUTH", "The receiver's SPF check soft-failed (~all)."),
    FindingSpec(
        "AUTH_DKIM_FAIL",
        "AUTH",
        "A DKIM signature was present but did not verify at the receiver.",
    ),
    FindingSpec(
        "AUTH_DMARC_FAIL",
        "AUTH",
        "DMARC failed for the header From domain at the receiver.",
    ),
    FindingSpec(
        "AUTH_COMPAUTH_FAIL",
        "AUTH",
        "Microsoft's composite authentication failed (compauth=fail).",
    ),
    FindingSpec(
        "AUTH_COMPAUTH_INTRAORG",
        "AUTH",
        "Microsoft's compauth reason 010 or 6xx: authentication failed and the From domain is one "
        "of the tenant's own accepted domains (intra-organisation spoof).",
    ),
    FindingSpec(
        "AUTH_FORGED_RESULTS",
        "AUTH",
        "An Authentication-Results header written below the trusted hop (by the sender) or "
        "claiming the receiver's authserv-id: a forgery meant to look authenticated. It was "
        "ignored.",
    ),
    FindingSpec(
        "AUTH_RESULTS_MISSING",
        "AUTH",
        "The receiving hop left no Authentication-Results or Received-SPF: authentication could "
        "not be judged from the message.",
    ),
    FindingSpec("HDR_FROM_MISSING", "HDR", "No usable From header."),
    FindingSpec(
        "HDR_FROM_MULTIPLE",
        "HDR",
        "More than one From header: receivers and mail clients pick different ones (RFC 5322 "
        "section 3.6 allows exactly one).",
    ),
    FindingSpec(
        "HDR_FROM_MULTIPLE_ADDRESSES",
        "HDR",
        "The From header holds several mailboxes without a Sender header (RFC 5322 section 3.6.2).",
    ),
    FindingSpec(
        "HDR_FROM_AMBIGUOUS",
        "HDR",
        "The From header parses differently depending on the parser: encoded words hiding "
        "address characters, quoted or escaped '@', comments or route syntax around the address.",
    ),
    FindingSpec(
        "HDR_FROM_DISPLAY_NAME_ADDRESS",
        "HDR",
        "The From display name shows an e-mail address different from the real one.",
    ),
    FindingSpec(
        "HDR_SENDER_MISMATCH",
        "HDR",
        "The Sender header names a different domain than an own-domain From.",
    ),
    FindingSpec(
        "HDR_MALFORMED_NAME",
        "HDR",
        "A header name with whitespace before the colon, leading whitespace or other malformed "
        "syntax: parsers disagree on which header it is.",
    ),
    FindingSpec(
        "HDR_EXCHANGE_STAMP_FORGED",
        "HDR",
        "X-MS-Exchange-Organization-* or X-Forefront-Antispam-Report headers in mail that did not "
        "arrive through Exchange Online, or duplicated stamps: written by the sender.",
    ),
    FindingSpec(
        "HDR_REPLY_TO_EXTERNAL",
        "HDR",
        "An own-domain From with a Reply-To in a foreign domain: answers go to the attacker.",
    ),
    FindingSpec(
        "HOP_HELO_LOOPBACK",
        "HOP",
        'The client greeted with a loopback name or literal ("[127.0.0.1]", "localhost"): the '
        "scripted-submission signature seen in Direct Send abuse.",
    ),
    FindingSpec(
        "HOP_HELO_IP_LITERAL",
        "HOP",
        "The client greeted with a bracketed IP literal instead of a host name.",
    ),
    FindingSpec(
        "HOP_HELO_BARE_NAME",
        "HOP",
        "The client greeted with a bare, dotless computer name (e.g. WIN-1A2B3C or DESKTOP-XYZ), as "
        "PowerShell's Send-MailMessage does from a workstation.",
    ),
    FindingSpec(
        "HOP_UNEXPECTED_COUNTRY",
        "HOP",
        "The connecting IP is in a country outside the organisation's configured home countries.",
    ),
    FindingSpec(
        "HOP_LOW_SCL_DESPITE_FAILURE",
        "HOP",
        "Exchange Online gave SCL 0 or 1 (not spam) although authentication failed: the message "
        "reached the inbox.",
    ),
    FindingSpec(
        "HOP_INTRAORG_SPOOF_STAMP",
        "HOP",
        "Exchange Online's anti-spoofing stamp says intra-organisation spoof (SFTY:9.11 or "
        "CAT:SPOOF).",
    ),
    FindingSpec(
        "HOP_NO_TRUSTED_HOP",
        "HOP",
        "No receiving hop of the organisation was found in the Received chain: the envelope could "
        "not be rebuilt, so every header is the sender's word.",
    ),
    FindingSpec("LURE_VOICEMAIL_FAX", "LURE", "Voicemail, fax or missed-call lure wording."),
    FindingSpec("LURE_PAYROLL_HR", "LURE", "Payroll, salary, benefits or HR lure wording."),
    FindingSpec(
        "LURE_CREDENTIAL",
        "LURE",
        "Credential lure wording (password expiry, verify your account, scan the QR code).",
    ),
    FindingSpec("LURE_PAYMENT", "LURE", "Invoice, payment or bank-detail lure wording."),
    FindingSpec("LURE_DOCUMENT_SHARE", "LURE", "Shared-document or e-signature lure wording."),
    FindingSpec(
        "IOC_KNOWN_IP",
        "IOC",
        "The connecting IP is on a bundled or user IOC list (exact campaign IPs, never whole /16s).",
    ),
    FindingSpec(
        "IOC_KNOWN_DOMAIN", "IOC", "A link (or QR code) points to a domain on an IOC list."
    ),
    FindingSpec("IOC_KNOWN_URL", "IOC", "A link (or QR code) is on an IOC list."),
    FindingSpec(
        "IOC_FREE_HOSTING_LINK",
        "IOC",
        "A link (or QR code) points to free hosting or an app platform (e.g. firebaseapp.com, "
        "web.app) where phishing pages are stood up in minutes.",
    ),
    FindingSpec("IOC_IP_LITERAL_URL", "IOC", "A link (or QR code) uses a bare IP address as host."),
    FindingSpec(
        "ATT_QR_PDF",
        "ATT",
        "A PDF attachment shows a QR code (found by rendering its pages, so drawn and embedded "
        "codes both count): quishing.",
    ),
    FindingSpec("ATT_QR_IMAGE", "ATT", "An image attachment or inline image holds a QR code."),
    FindingSpec(
        "ATT_HTML",
        "ATT",
        "An HTML, SVG or similar active-content attachment (often a local credential page).",
    ),
    FindingSpec(
        "ATT_UNREADABLE",
        "ATT",
        "A PDF or image attachment could not be decoded (corrupt, encrypted or hostile).",
    ),
    FindingSpec(
        "LIMIT_MESSAGE_SIZE",
        "LIMIT",
        "The message exceeds max_message_bytes; only the first part was analysed.",
    ),
    FindingSpec(
        "LIMIT_HEADERS",
        "LIMIT",
        "The header section exceeds max_headers or max_header_bytes; the rest was ignored.",
    ),
    FindingSpec("LIMIT_MIME_DEPTH", "LIMIT", "MIME nesting deeper than max_mime_depth."),
    FindingSpec("LIMIT_MIME_PARTS", "LIMIT", "More MIME parts than max_mime_parts."),
    FindingSpec("LIMIT_URLS", "LIMIT", "More links than max_urls; the rest were not examined."),
    FindingSpec(
        "LIMIT_PDF_PAGES",
        "LIMIT",
        "A PDF has more pages than max_pdf_pages; only the first pages were rendered.",
    ),
    FindingSpec(
        "LIMIT_DECODE_TIME",
        "LIMIT",
        "Attachment decoding ran out of max_decode_seconds; remaining attachments were skipped.",
    ),
    FindingSpec(
        "MIME_DEFECT",
        "MIME",
        "The MIME structure is broken (missing boundaries, bad encodings); parsers may disagree "
        "on what the message contains.",
    ),
)

CATALOG: dict[str, FindingSpec] = {spec.id: spec for spec in _SPECS}


def family_of(finding_id: str) -> str:
    return finding_id.split("_", 1)[0]
