"""The JSON shape scripts rely on, the run summary, and the display-safety helpers."""

from __future__ import annotations

import json

from dsguard.model import ScanResult
from dsguard.report.serialize import (
    SCHEMA_VERSION,
    RunSummary,
    defang,
    one_line,
    result_to_dict,
)

# The documented contract, written out here on purpose (not imported) so that a change to the
# shape has to change this test too.
DOCUMENTED_KEYS = {
    "source", "path", "index", "message_id", "from", "from_display", "to", "subject", "date",
    "direct_send", "verdict", "score", "action", "attribution", "envelope", "rds", "findings",
    "iocs", "notes", "error",
}
DOCUMENTED_ENVELOPE_KEYS = {
    "origin", "client_ip", "country", "helo", "mail_from", "rcpt_to", "receiver",
    "client_hostname", "auth_user",
}


def test_schema_version_is_one() -> None:
    assert SCHEMA_VERSION == 1


def test_result_keys_are_exactly_the_documented_set(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult
) -> None:
    for r in (campaign, clean, unreadable, hostile):
        assert set(result_to_dict(r)) == DOCUMENTED_KEYS


def test_campaign_result_carries_verdict_envelope_and_iocs(campaign: ScanResult) -> None:
    d = result_to_dict(campaign)
    assert d["source"] == "mail/x.mbox#3"
    assert (d["path"], d["index"]) == ("mail/x.mbox", 3)
    assert d["from"] == "joe@contoso.com"
    assert d["from_display"] == "Joe"
    assert d["to"] == ["joe@contoso.com"]
    assert d["verdict"] == "malicious"
    assert d["score"] == 23.0
    assert isinstance(d["score"], float)
    assert d["direct_send"] is True
    assert d["action"] == "quarantine"
    assert d["attribution"] == "anonymous"
    assert set(d["envelope"]) == DOCUMENTED_ENVELOPE_KEYS
    assert d["envelope"]["client_ip"] == "139.28.36.171"
    assert d["envelope"]["country"] == "UA"
    assert d["envelope"]["rcpt_to"] == ["joe@contoso.com"]
    assert d["rds"] == [{
        "stage": "P1", "outcome": "would_reject", "enforced": False,
        "reason": "anonymous, MAIL FROM in accepted domain contoso.com",
    }]
    assert d["iocs"]["qr_urls"] == ["https://voice-e091b.firebaseapp.com/listen?id=7"]
    assert set(d["iocs"]) == {"ips", "urls", "domains", "qr_urls"}
    assert d["error"] is None
    json.dumps(d, allow_nan=False)  # plain JSON values only


def test_findings_are_ordered_by_score_descending_and_kept_verbatim(
    campaign: ScanResult,
) -> None:
    findings = result_to_dict(campaign)["findings"]
    scores = [f["score"] for f in findings]
    assert scores == sorted(scores, reverse=True)
    assert findings[0] == {
        "id": "DS_SPOOF_ENVELOPE", "score": 6.0,
        "summary": "Accepted-domain envelope sender is not authenticated.",
        "evidence": "spf=fail smtp.mailfrom=contoso.com; dkim=none",
    }
    # Equal scores keep the engine's order.
    ids = [f["id"] for f in findings if f["score"] == 2.0]
    assert ids == ["DS_SELF_ADDRESSED", "LURE_VOICEMAIL_FAX", "HOP_UNEXPECTED_COUNTRY",
                   "AUTH_DMARC_FAIL", "IOC_FREE_HOSTING_LINK"]


def test_unreadable_input_has_error_and_null_or_empty_rest(unreadable: ScanResult) -> None:
    d = result_to_dict(unreadable)
    assert d["error"] == "not an OLE2 compound file"
    assert d["source"] == d["path"] == "mail/broken.msg"
    assert d["index"] is None
    for key in ("verdict", "score", "direct_send", "action", "attribution", "envelope",
                "message_id", "from", "subject"):
        assert d[key] is None, key
    assert d["to"] == d["rds"] == d["findings"] == d["notes"] == []
    assert d["iocs"] == {"ips": [], "urls": [], "domains": [], "qr_urls": []}


def test_run_summary_counts_levels_errors_skips_and_flagged_ips(
    campaign: ScanResult, clean: ScanResult, unreadable: ScanResult, hostile: ScanResult
) -> None:
    s = RunSummary()
    for r in (campaign, clean, unreadable, hostile, campaign, ScanResult(path="notes.txt")):
        s.add(r)
    assert s.messages == 4
    assert s.errors == 1
    assert s.skipped == 1
    assert s.by_level == {"malicious": 2, "suspicious": 1, "clean": 1}
    assert s.direct_send == 3
    # The clean message's IP (192.0.2.25) is not a sending IP of interest.
    assert s.top_ips == {"139.28.36.171": 2, "198.51.100.7": 1}
    d = s.to_dict()
    assert d["by_level"] == {"malicious": 2, "suspicious": 1, "clean": 1}
    assert d["top_ips"][0] == {"ip": "139.28.36.171", "count": 2}


def test_empty_summary_lists_every_level_with_zero() -> None:
    assert RunSummary().to_dict()["by_level"] == {"malicious": 0, "suspicious": 0, "clean": 0}


def test_one_line_removes_escapes_line_breaks_and_bidi_overrides() -> None:
    assert one_line("a\x1b[31mred\r\nX-Forged: 1") == "a [31mred X-Forged: 1"
    assert one_line("invoice\u202egpj.exe") == "invoice gpj.exe"
    assert one_line("bad \udcff byte") == "bad \ufffd byte"
    assert one_line("x" * 50, limit=10) == "x" * 9 + "…"


def test_defang_makes_urls_and_domains_inert() -> None:
    assert defang("https://evil.example/a.b?c=d.e") == "hxxps://evil[.]example/a.b?c=d.e"
    assert defang("HTTP://evil.example") == "hxxp://evil[.]example"
    assert defang("mv4lh.bsfff.es") == "mv4lh[.]bsfff[.]es"
    assert defang("javascript:alert(document.domain)") == "javascript[:]alert(document[.]domain)"
    assert defang("ftp://files.example/x") == "ftp[:]//files[.]example/x"
