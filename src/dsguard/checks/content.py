"""LURE_*, IOC_*, ATT_*: what the message says and links to.

Lure wording and free-hosting suffixes are data (config ``[lures]`` and ``[intel]``); the
published campaign IOCs ship in ``intel/data`` and users add their own lists. QR codes are
read by rendering PDF pages and images (``attachments.qr``), and their URLs go through the same
link checks as the body's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from dsguard.attachments.urls import is_ip_literal_host
from dsguard.checks.base import Facts, Hit
from dsguard.checks.lurescan import iter_matches, register_finder

_TAG = re.compile(r"<[^>]{0,2000}>")
_LURE_TEXT_CHARS = 16 * 1024
_HTML_ATTACHMENT = re.compile(r"\.(?:html?|shtml|xhtml|svg|mht|mhtml|hta)$", re.IGNORECASE)


def compile_lures(patterns: Mapping[str, tuple[str, ...]]) -> re.Pattern[str]:
    """All lure families in one pattern, one named group per finding id, so each text is
    scanned once. Matched against lower-cased text: case-insensitive matching of large
    alternations is several times slower in Python's re."""
    groups = [
        f"(?P<{finding_id}>" + "|".join(f"(?:{p.lower()})" for p in regexes) + ")"
        for finding_id, regexes in patterns.items()
        if regexes
    ]
    compiled = re.compile("|".join(groups) or r"(?!)")
    # A faster way to find the same matches, when the phrases allow it (checks.lurescan).
    register_finder(compiled, [p.lower() for regexes in patterns.values() for p in regexes])
    return compiled


def check_lures(f: Facts, lures: re.Pattern[str]) -> Iterator[Hit]:
    """Lure wording matters where it is the campaign's: anonymous mail that presents itself as
    the organisation's. Internal newsletters about payroll or invoices are not lures."""
    if not f.poses_as_organisation:
        return
    body = f.message.body
    places = [("subject", f.message.subject or "")]
    places += [("attachment name", a.filename) for a in body.attachments if a.filename]
    places += [("body", t[:_LURE_TEXT_CHARS]) for t in body.texts]
    places += [
        ("body", _TAG.sub(" ", h[: _LURE_TEXT_CHARS * 4])[:_LURE_TEXT_CHARS]) for h in body.htmls
    ]
    wanted = len(lures.groupindex)
    found: dict[str, Hit] = {}
    for where, text in places:
        for start, end, finding_id in iter_matches(lures, text.lower()):
            if finding_id is None or finding_id in found:
                continue
            shown = text[start:end]
            context = text[max(0, start - 30) : end + 30].strip()
            found[finding_id] = Hit(
                finding_id, f"lure wording in the {where}: {shown!r}", f"{where}: {context}"
            )
            if len(found) == wanted:
                break
        if len(found) == wanted:
            break
    # Report in the config's order, so output does not depend on where each was found.
    for finding_id in lures.groupindex:
        if finding_id in found:
            yield found[finding_id]


def check_links(f: Facts) -> Iterator[Hit]:
    intel = f.intel
    env = f.envelope
    if env.client_ip:
        match = intel.iocs.match_ip(env.client_ip)
        if match:
            yield Hit(
                "IOC_KNOWN_IP",
                f"connecting IP {env.client_ip} is a known indicator",
                f"{match.indicator} ({match.source}) {match.note}".strip(),
            )
    qr = f.qr_urls
    match_url = intel.iocs.match_url
    free_hosting = intel.free_hosting.match
    # A message's links share a few hosts: what depends on the host alone is looked up once.
    by_host: dict[str, tuple[str | None, bool]] = {}
    for url, host in f.link_hosts:
        match = match_url(url)
        if match:
            where = "QR code" if url in qr else "link"
            finding = "IOC_KNOWN_URL" if "://" in match.indicator else "IOC_KNOWN_DOMAIN"
            yield Hit(
                finding,
                f"{where} to known indicator {match.indicator}",
                f"{url} ({match.source}) {match.note}".strip(),
            )
        if host is None:
            continue
        known = by_host.get(host)
        if known is None:
            known = by_host[host] = (free_hosting(host), is_ip_literal_host(host))
        suffix, ip_literal = known
        if suffix:
            where = "QR code" if url in qr else "link"
            yield Hit("IOC_FREE_HOSTING_LINK", f"{where} to free hosting ({suffix}): {host}", url)
        if ip_literal:
            where = "QR code" if url in qr else "link"
            yield Hit("IOC_IP_LITERAL_URL", f"{where} to a bare IP address {host}", url)
    if f.links.limit_hit:
        yield Hit(
            "LIMIT_URLS", f"more than {f.config.limits.max_urls} links; the rest were not examined"
        )


def check_attachments(f: Facts) -> Iterator[Hit]:
    for att in f.message.body.attachments:
        if _HTML_ATTACHMENT.search(att.filename) or (
            att.content_type in ("text/html", "image/svg+xml", "application/xhtml+xml")
            and att.filename
        ):
            yield Hit("ATT_HTML", f"active-content attachment {att.filename!r}", att.content_type)
    for result in f.qr_results:
        scan = result.scan
        name = result.attachment.filename or result.attachment.content_type
        if scan.texts:
            finding = "ATT_QR_PDF" if result.kind == "pdf" else "ATT_QR_IMAGE"
            yield Hit(
                finding,
                f"QR code in {name!r} leads to {scan.texts[0][:120]}",
                "; ".join(t[:200] for t in scan.texts[:3]),
            )
        if scan.error:
            yield Hit("ATT_UNREADABLE", f"{name!r} could not be decoded: {scan.error}")
        if scan.page_limit_hit:
            yield Hit(
                "LIMIT_PDF_PAGES", f"{name!r}: only the first {scan.pages_scanned} pages rendered"
            )
        if scan.timed_out:
            yield Hit(
                "LIMIT_DECODE_TIME", f"decoding stopped at {name!r}: max_decode_seconds reached"
            )
