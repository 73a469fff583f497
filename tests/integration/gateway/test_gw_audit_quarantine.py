"""Audit mode and the quarantine, end to end.

One gateway for the module with reject_direct_send = "audit" and malicious -> quarantine:
would-be refusals are accepted, stamped and recorded; the campaign's lure is held in the
store, listed/shown by the CLI, released through the spool to the downstream, or deleted.

The campaign's senders are abroad; tests may use loopback only, so "foreign" here means an
address in no connector and no SPF record of contoso.com (127.0.0.5).
"""

from __future__ import annotations

import json
import smtplib

import pytest
from tests.fixtures import gateway as gwf
from tests.fixtures.gateway import (
    GATEWAY_HOSTNAME,
    GatewayFactory,
    GatewayProcess,
    header_values,
    message,
    send_barrier,
    sink_messages_with,
    token,
    wait_at_sink,
)

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway

STRANGER = "127.0.0.5"


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway(
        {
            "organization": {"reject_direct_send": "audit"},
            "actions": {"malicious": "quarantine"},
        }
    )


P1_NOTE = "would refuse (P1): anonymous sender using accepted domain contoso.com in MAIL FROM"


def test_audit_accepts_the_spoof_stamps_and_records_it(gw: GatewayProcess) -> None:
    # What audit mode is for: a device that sends as contoso.com from an address in
    # contoso.com's SPF (127.0.0.1) with no connector. Switching "on" would refuse it; in
    # audit it is delivered, stamped, and recorded for the admin.
    tag = token()
    mark = gw.mark()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="DESKTOP-7QK2M9F", source_address=("127.0.0.1", 0)
    ) as smtp:
        smtp.ehlo()
        assert smtp.mail("joe@contoso.com")[0] == 250
        assert smtp.rcpt("joe@contoso.com")[0] == 250
        code, _text = smtp.data(message(subject="Scanned from MFP-Floor2", tag=tag))
        assert code == 250
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert header_values(arrived.data, "X-Dsguard-Audit") == [P1_NOTE]
    [decision] = gw.decisions(since=mark)
    assert decision["decision"] == "audited"
    assert decision["p1"] == "would_reject"
    [event] = gw.wait_events("audited", lambda e: e["queue_id"] == decision["queue_id"])
    assert (event["p1"], event["mode"], event["mail_from"]) == ("would_reject", "audit", "joe@contoso.com")


def test_audit_refuses_nothing_but_the_campaign_spoof_is_still_quarantined(
    gw: GatewayProcess,
) -> None:
    # The campaign's own spoof from a stranger: audit mode answers 250 (nothing is refused),
    # but content analysis scores it malicious, so it is held rather than delivered. The
    # record keeps both would-be refusals for the admin.
    tag = token()
    mark = gw.mark()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="DESKTOP-7QK2M9F", source_address=(STRANGER, 0)
    ) as smtp:
        assert smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], message(tag=tag)) == {}
    [decision] = gw.decisions(since=mark)
    assert decision["decision"] == "quarantined"
    assert (decision["p1"], decision["p2"]) == ("would_reject", "would_reject")
    held = gw.cli("quarantine", "show", decision["queue_id"], "--raw").stdout.encode()
    notes = header_values(held.replace(b"\r\n", b"\n"), "X-Dsguard-Audit")
    assert notes[0] == P1_NOTE
    assert notes[1].startswith("would refuse (P2): ")
    send_barrier(gw)
    assert not sink_messages_with(gw.world.sink, tag.encode())


def test_spf_dkim_dmarc_pass_still_would_be_refused_by_p1(gw: GatewayProcess) -> None:
    # The companion of test_gw_p1_spoof.test_spf_pass_does_not_exempt_p1: the same message
    # from 127.0.0.1 (in contoso.com's SPF) with a valid contoso.com DKIM signature passes
    # SPF, DKIM and DMARC, as the gateway's own Authentication-Results shows, and P1 still
    # applies: only a connector or SMTP AUTH attributes a sender (Microsoft's rule).
    tag = token()
    signed = gw.world.dkim.sign(message(tag=tag))
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="mail.contoso.com", source_address=("127.0.0.1", 0)
    ) as smtp:
        assert smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], signed) == {}
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    [results] = header_values(arrived.data, "Authentication-Results")
    assert results.startswith(f"{GATEWAY_HOSTNAME};")
    assert "spf=pass smtp.mailfrom=contoso.com" in results
    assert "dkim=pass header.d=contoso.com" in results
    assert "dmarc=pass header.from=contoso.com" in results
    assert header_values(arrived.data, "X-Dsguard-Audit") == [P1_NOTE]


def campaign_lure(tag: str) -> bytes:
    return message(
        from_="joe@contoso.com",
        to="joe@contoso.com",
        subject="New Missed Fax-msg",
        body=(
            "You have a new voice message (00:42) from +1 555 0100.\r\n"
            f"Listen Now: https://voice-e091b.firebaseapp.com/listen?m={tag}\r\n"
        ),
        tag=tag,
    )


def quarantine_lure(gw: GatewayProcess, tag: str) -> dict[str, object]:
    """Send the lure as a P2-only spoof and return its quarantine list entry."""
    mark = gw.mark()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="DESKTOP-7QK2M9F", source_address=(STRANGER, 0)
    ) as smtp:
        # Envelope from a domain whose SPF passes; only the header From claims contoso.com.
        assert smtp.sendmail("bounce@mailer.example.net", ["joe@contoso.com"], campaign_lure(tag)) == {}
    [decision] = gw.decisions(since=mark)
    assert decision["decision"] == "quarantined"
    assert decision["verdict"] == "malicious"
    listed: list[dict[str, object]] = [
        json.loads(line) for line in gw.cli("quarantine", "list", "--json").stdout.splitlines()
    ]
    [item] = [i for i in listed if i["id"] == decision["queue_id"]]
    return item


def test_quarantine_list_show_release(gw: GatewayProcess) -> None:
    tag = token()
    item = quarantine_lure(gw, tag)
    qid = str(item["id"])
    assert item["verdict"] == "malicious"
    assert item["header_from"] == "joe@contoso.com"
    assert item["mail_from"] == "bounce@mailer.example.net"
    assert "IOC_KNOWN_DOMAIN" in item["findings"]  # type: ignore[operator]
    assert "DS_SPOOF_HEADER_FROM" in item["findings"]  # type: ignore[operator]

    # Held, not relayed.
    send_barrier(gw)
    assert not sink_messages_with(gw.world.sink, tag.encode())

    shown = gw.cli("quarantine", "show", qid).stdout
    assert f"id:          {qid} (held)" in shown
    assert "joe@contoso.com" in shown
    assert "DS_SPOOF_HEADER_FROM" in shown
    assert "hxxps://voice-e091b.firebaseapp.com/listen" in shown  # defanged

    released = gw.cli("quarantine", "release", qid).stdout
    assert released.startswith(f"released {qid}: queued as ")
    # The running gateway's relay finds the entry the CLI put in the spool.
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert arrived.rcpt_to == ("joe@contoso.com",)
    assert header_values(arrived.data, "X-Dsguard-Verdict")[0].startswith("malicious;")
    assert any("(P2)" in note for note in header_values(arrived.data, "X-Dsguard-Audit"))
    again = gw.cli("quarantine", "release", qid, check=False)
    assert again.returncode == 2
    assert "is released" in again.stderr


def test_quarantine_delete_removes_the_bytes(gw: GatewayProcess) -> None:
    tag = token()
    qid = str(quarantine_lure(gw, tag)["id"])
    raw = gw.cli("quarantine", "show", qid, "--raw").stdout
    assert tag in raw
    assert gw.cli("quarantine", "delete", qid).stdout.strip() == f"deleted {qid}"
    gone = gw.cli("quarantine", "show", qid, "--raw", check=False)
    assert gone.returncode == 2
    assert "was deleted" in gone.stderr
    deleted = gw.cli("quarantine", "list", "--status", "deleted", "--json").stdout
    assert qid in deleted
