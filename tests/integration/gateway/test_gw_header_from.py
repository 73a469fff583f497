"""P2 (the header From, beyond Microsoft's rule) and forwarded mail, with live SPF/DKIM/DMARC
against the nsd test zones.

contoso.com publishes DMARC p=reject, SPF for 127.0.0.1 only and a DKIM key;
mailer.example.net and example.org allow all of 127.0.0.0/8 in SPF.

Forwarding, documented by these tests:

- A forwarder that keeps the original envelope (no SRS) sends MAIL FROM:<joe@contoso.com>
  from its own address: P1 refuses it even though contoso.com's DKIM signature is intact.
  This is Microsoft's behaviour too (its Reject Direct Send documentation lists forwarding
  without SRS as a known cause); the fix is SRS at the forwarder or a connector for it.
- With SRS (envelope in the forwarder's domain) P1 does not apply, and P2 lets the message
  through because contoso.com's own DKIM signature survived: aligned DKIM is the proof P2 asks
  for. If the forwarder broke the signature, P2 refuses it.
"""

from __future__ import annotations

import smtplib

import pytest
from tests.fixtures import gateway as gwf
from tests.fixtures.gateway import (
    GATEWAY_HOSTNAME,
    RDS_REPLY,
    GatewayFactory,
    GatewayProcess,
    assert_never_delivered,
    header_values,
    message,
    reply_line,
    token,
    wait_at_sink,
)

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway
gateway_factory = gwf.gateway_factory

SETTINGS = {"organization": {"reject_direct_send": "on", "check_header_from": True}}
FORWARDER = "127.0.0.5"  # not in contoso.com's SPF, in example.org's
SRS_SENDER = "SRS0=x7Hq=TT=contoso.com=joe@example.org"


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway(SETTINGS)


def p2_spoof(tag: str) -> bytes:
    return message(
        from_="payroll@contoso.com",
        to="joe@contoso.com",
        subject="Updated timesheet template",
        body="Please use the attached template from Monday.\r\n",
        tag=tag,
    )


def test_p2_spoof_is_refused_at_end_of_data_naming_the_header_from(gw: GatewayProcess) -> None:
    tag = token()
    mark = gw.mark()
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mailer.example.net") as smtp:
        smtp.ehlo()
        # The envelope is someone else's (and its SPF passes): P1 has nothing to refuse.
        assert smtp.mail("bounce@mailer.example.net")[0] == 250
        assert smtp.rcpt("joe@contoso.com")[0] == 250
        code, text = smtp.data(p2_spoof(tag))
    assert f"{code} {text.decode()}" == RDS_REPLY + " (header From payroll@contoso.com is not authenticated)"

    [decision] = gw.decisions(since=mark)
    assert decision["decision"] == "refused"
    assert (decision["p1"], decision["p2"]) == ("not_applicable", "would_reject")
    assert decision["reason"].startswith("P2 ")
    [event] = gw.wait_events("refused", lambda e: tag in (e["message_id"] or ""))
    assert event["header_from"] == "payroll@contoso.com"
    assert event["p2"] == "would_reject"
    assert_never_delivered(gw, tag.encode())


def test_with_check_header_from_off_the_p2_spoof_is_accepted(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory({**SETTINGS, "organization": {"check_header_from": False}})
    tag = token()
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mailer.example.net") as smtp:
        assert smtp.sendmail("bounce@mailer.example.net", ["joe@contoso.com"], p2_spoof(tag)) == {}
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    [results] = header_values(arrived.data, "Authentication-Results")
    assert "dmarc=fail header.from=contoso.com" in results
    assert not header_values(arrived.data, "X-Dsguard-Audit")


def forwarded(gw: GatewayProcess, tag: str) -> bytes:
    """Joe's message as signed by contoso.com, with the trace field a forwarder adds on top
    (outside the signature, so the signature survives)."""
    signed = gw.world.dkim.sign(message(from_="joe@contoso.com", to="joe@example.org", tag=tag))
    trace = (
        b"Received: from mail.contoso.com (mail.contoso.com [127.0.0.1])\r\n"
        b"\tby fwd.example.org with ESMTP; Mon, 01 Jan 2024 09:00:05 +0000\r\n"
    )
    return trace + signed


def test_forwarded_without_srs_is_refused_by_p1_despite_surviving_dkim(
    gw: GatewayProcess,
) -> None:
    tag = token()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="fwd.example.org", source_address=(FORWARDER, 0)
    ) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.sendmail("joe@contoso.com", ["ann@contoso.com"], forwarded(gw, tag))
    code, text = refused.value.recipients["ann@contoso.com"]
    assert f"{code} {text.decode()}" == RDS_REPLY
    assert_never_delivered(gw, tag.encode())


def test_forwarded_with_srs_and_surviving_dkim_passes_p2(gw: GatewayProcess) -> None:
    tag = token()
    mark = gw.mark()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="fwd.example.org", source_address=(FORWARDER, 0)
    ) as smtp:
        assert smtp.sendmail(SRS_SENDER, ["ann@contoso.com"], forwarded(gw, tag)) == {}
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert arrived.mail_from == SRS_SENDER
    [results] = header_values(arrived.data, "Authentication-Results")
    assert results.startswith(f"{GATEWAY_HOSTNAME};")
    assert "spf=pass smtp.mailfrom=example.org" in results
    assert "dkim=pass header.d=contoso.com" in results
    assert "dmarc=pass header.from=contoso.com" in results
    [decision] = gw.decisions(since=mark)
    assert decision["decision"] == "accepted"
    assert (decision["p1"], decision["p2"]) == ("not_applicable", "not_applicable")


def test_forwarded_with_srs_but_broken_dkim_is_refused_by_p2(gw: GatewayProcess) -> None:
    tag = token()
    # A forwarder that rewrites the subject ("[list] ...") breaks contoso.com's signature.
    broken = forwarded(gw, tag).replace(b"Subject: Quarterly", b"Subject: [fwd] Quarterly")
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="fwd.example.org", source_address=(FORWARDER, 0)
    ) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail(SRS_SENDER, ["ann@contoso.com"], broken)
    assert reply_line(refused.value.smtp_code, refused.value.smtp_error) == (
        RDS_REPLY + " (header From joe@contoso.com is not authenticated)"
    )
    assert_never_delivered(gw, tag.encode())
