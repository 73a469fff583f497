"""Reject Direct Send, P1, over real sockets: the campaign's spoof is refused with Microsoft's
reply; SPF passing does not exempt it; a connector's IP does (only for its sender_domains);
no open relay, whatever the address trick.

One gateway for the module: reject_direct_send = "on", accepted domains contoso.com and
example.com, connector "branch-office" (127.0.0.2, may send as contoso.com) and connector
"partner-relay" (127.0.0.3, may send as example.com only).
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
    RawSmtp,
    assert_never_delivered,
    header_values,
    message,
    swaks,
    swaks_server_lines,
    token,
    wait_at_sink,
)

from dsguard.policy.relay import RELAY_DENIED

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway

SETTINGS = {
    "organization": {"reject_direct_send": "on"},
    "connectors": [
        {
            "name": "branch-office",
            "sender_ip_ranges": ["127.0.0.2/32"],
            "sender_domains": ["contoso.com"],
        },
        {
            "name": "partner-relay",
            "sender_ip_ranges": ["127.0.0.3/32"],
            "sender_domains": ["example.com"],
        },
    ],
}

# The campaign's lure, as Send-MailMessage sends it (HTML body, self-addressed).
LURE_BODY = (
    "<html><body><p>You have a new voice message (00:42).</p>"
    '<p><a href="https://voice-e091b.firebaseapp.com/listen">Listen Now</a></p></body></html>\r\n'
)


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway(SETTINGS)


def lure(tag: str) -> bytes:
    return message(
        subject="New Missed Fax-msg",
        body=LURE_BODY,
        tag=tag,
        extra_headers=["MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8"],
    )


def test_send_mailmessage_spoof_is_refused_with_microsofts_reply_smtplib(
    gw: GatewayProcess,
) -> None:
    tag = token()
    helo = f"DESKTOP-{tag[:7].upper()}"  # a Windows host name, unique to this test
    mark = gw.mark()
    with smtplib.SMTP(gw.host, gw.port, local_hostname=helo, timeout=30) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.mail("joe@contoso.com")[0] == 250
        code, text = smtp.rcpt("joe@contoso.com")
        assert f"{code} {text.decode()}" == RDS_REPLY
        # No recipient was accepted: there is no transaction to send data for.
        with pytest.raises(smtplib.SMTPDataError) as no_data:
            smtp.data(lure(tag))
        assert no_data.value.smtp_code == 503

    decisions = gw.decisions(since=mark)
    assert len(decisions) == 1, decisions
    [decision] = decisions
    assert decision["decision"] == "refused"
    assert decision["attribution"] == "anonymous"
    assert decision["helo"] == helo
    assert decision["mail_from"] == "joe@contoso.com"
    assert decision["rcpt_to"] == ["joe@contoso.com"]
    assert decision["reason"].startswith("P1 ")

    events = gw.wait_events("refused", lambda e: e["helo"] == helo)
    assert len(events) == 1
    assert events[0]["p1"] == "would_reject"
    assert events[0]["mode"] == "on"
    assert events[0]["mail_from"] == "joe@contoso.com"
    assert_never_delivered(gw, tag.encode())


def test_the_reply_is_byte_for_byte_on_the_wire(gw: GatewayProcess) -> None:
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO DESKTOP-7QK2M9F")
        assert client.cmd("MAIL FROM:<joe@contoso.com>") == b"250 2.1.0 OK\r\n"
        assert client.cmd("RCPT TO:<joe@contoso.com>") == RDS_REPLY.encode() + b"\r\n"
        # Every further own-domain recipient gets the same answer.
        assert client.cmd("RCPT TO:<ann@contoso.com>") == RDS_REPLY.encode() + b"\r\n"
        assert client.cmd("QUIT").startswith(b"221")


def test_send_mailmessage_spoof_is_refused_with_microsofts_reply_swaks(
    gw: GatewayProcess,
) -> None:
    tag = token()
    mark = gw.mark()
    done = swaks(
        "--server", f"{gw.host}:{gw.port}",
        "--helo", "WIN-8R3K2LQ0PQ1",
        "--from", "joe@contoso.com",
        "--to", "joe@contoso.com",
        "--header", "Subject: New Missed Fax-msg",
        "--body", f"Listen Now https://voice-e091b.firebaseapp.com/ {tag}",
    )
    assert done.returncode != 0, done.stdout
    assert RDS_REPLY in swaks_server_lines(done.stdout), done.stdout
    assert "<** " + RDS_REPLY in done.stdout.splitlines()
    assert [d["decision"] for d in gw.decisions(since=mark)] == ["refused"]
    assert_never_delivered(gw, tag.encode())


def test_a_pipelining_client_gets_every_reply_in_order(gw: GatewayProcess) -> None:
    # swaks --pipeline sends MAIL, the RCPTs and DATA in one write (RFC 2920) once EHLO offers
    # PIPELINING, then reads the replies in order: the campaign's spoof still gets 5.7.68 at its
    # RCPT, a foreign recipient 5.7.1, and a legitimate message from the connector goes through.
    tag = token()
    spoof = swaks(
        "--server", f"{gw.host}:{gw.port}", "--pipeline",
        "--helo", "WIN-8R3K2LQ0PQ1",
        "--from", "joe@contoso.com",
        "--to", "joe@contoso.com,user@example.net",
        "--body", f"spoof {tag}",
    )
    assert "<-  250-PIPELINING" in spoof.stdout.splitlines(), spoof.stdout
    lines = swaks_server_lines(spoof.stdout)
    assert RDS_REPLY in lines, spoof.stdout
    assert RELAY_DENIED in lines, spoof.stdout
    assert_never_delivered(gw, f"spoof {tag}".encode())

    delivered = swaks(
        "--server", f"{gw.host}:{gw.port}", "--pipeline", "--local-interface", "127.0.0.2",
        "--helo", "DESKTOP-7QK2M9F",
        "--from", "joe@contoso.com",
        "--to", "ann@contoso.com,user@example.net,bob@contoso.com",
        "--body", f"legitimate {tag}",
    )
    [arrived] = wait_at_sink(gw.world.sink, f"legitimate {tag}".encode())
    assert arrived.rcpt_to == ("ann@contoso.com", "bob@contoso.com"), delivered.stdout
    replies = swaks_server_lines(delivered.stdout)
    assert RELAY_DENIED in replies, delivered.stdout
    assert any(line.startswith("250 2.0.0 OK: queued as") for line in replies), delivered.stdout


def test_spf_pass_does_not_exempt_p1(gw: GatewayProcess) -> None:
    # 127.0.0.1 is Contoso's own SPF-authorised server ("v=spf1 ip4:127.0.0.1 -all") and the
    # message carries a valid contoso.com DKIM signature: Microsoft's rule still refuses it,
    # because only attribution (a connector or SMTP AUTH) exempts. test_gw_audit_quarantine
    # shows the same message earning spf=pass, dkim=pass and dmarc=pass.
    tag = token()
    signed = gw.world.dkim.sign(message(tag=tag))
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="mail.contoso.com", source_address=("127.0.0.1", 0)
    ) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], signed)
    code, text = refused.value.recipients["joe@contoso.com"]
    assert f"{code} {text.decode()}" == RDS_REPLY
    assert_never_delivered(gw, tag.encode())


def test_connector_ip_is_delivered_with_our_stamps(gw: GatewayProcess) -> None:
    tag = token()
    mark = gw.mark()
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="DESKTOP-7QK2M9F", source_address=("127.0.0.2", 0)
    ) as smtp:
        # Send-MailMessage's envelope (joe -> joe), an ordinary body: content analysis is not
        # what this test is about (the campaign's lure would be quarantined as malicious).
        refused = smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], message(tag=tag))
    assert refused == {}
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert arrived.mail_from == "joe@contoso.com"
    assert arrived.rcpt_to == ("joe@contoso.com",)
    [received] = header_values(arrived.data, "Received")
    assert received.startswith(f"from DESKTOP-7QK2M9F ([127.0.0.2]) by {GATEWAY_HOSTNAME} (dsguard)")
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert "attribution=connector:branch-office" in verdict
    assert "direct_send=no" in verdict
    [auth_results] = header_values(arrived.data, "Authentication-Results")
    assert auth_results.startswith(f"{GATEWAY_HOSTNAME};")
    # 127.0.0.2 is not in contoso.com's SPF: the connector, not SPF, let it in.
    assert "spf=fail" in auth_results

    [decision] = gw.decisions(since=mark)
    assert decision["decision"] == "accepted"
    assert decision["attribution"] == "connector:branch-office"
    assert decision["p1"] == "not_applicable"


def test_connector_without_the_domain_in_sender_domains_does_not_exempt(
    gw: GatewayProcess,
) -> None:
    tag = token()
    mark = gw.mark()
    with RawSmtp(gw.host, gw.port, source="127.0.0.3") as client:
        client.cmd("EHLO relay.example.com")
        assert client.cmd("MAIL FROM:<joe@contoso.com>").startswith(b"250")
        assert client.cmd("RCPT TO:<joe@contoso.com>") == RDS_REPLY.encode() + b"\r\n"
    [decision] = gw.decisions(since=mark)
    assert decision["attribution"] == "connector:partner-relay"
    assert decision["reason"] == "P1 connector partner-relay may not send as contoso.com"

    # The same connector may use the domain it was set up for.
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="relay.example.com", source_address=("127.0.0.3", 0)
    ) as smtp:
        smtp.sendmail(
            "notices@example.com",
            ["joe@contoso.com"],
            message(from_="notices@example.com", tag=tag),
        )
    wait_at_sink(gw.world.sink, tag.encode())


RELAY_TRICKS = [
    # (RCPT argument, what it tries)
    ("<victim@example.net>", "plain relay to a foreign domain"),
    ("<user%example.net@contoso.com>", "percent hack"),
    ('<"user@example.net"@contoso.com>', "quoted local part holding an address"),
    ("<@contoso.com:user@example.net>", "RFC 5321 source route"),
    ("<example.net!user@contoso.com>", "UUCP bang path"),
    ('<"user%example.net"@contoso.com>', "quoted percent hack"),
    ("<user@example.net@contoso.com>", "two @"),
]


@pytest.mark.parametrize(("rcpt", "trick"), RELAY_TRICKS, ids=[t for _r, t in RELAY_TRICKS])
def test_open_relay_attempts_are_refused_smtplib(
    gw: GatewayProcess, rcpt: str, trick: str
) -> None:
    tag = token()
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        assert client.cmd("MAIL FROM:<spammer@example.org>").startswith(b"250")
        reply = client.cmd(f"RCPT TO:{rcpt}")
        assert reply[:1] == b"5", (trick, reply)
        assert reply.startswith((b"550 5.7.1 ", b"553 5.1.3 ", b"501 ", b"553 5.1.")), reply
        assert client.cmd("DATA")[:3] == b"503"
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp:
        smtp.ehlo()
        smtp.mail("spammer@example.org")
        code, _text = smtp.rcpt(rcpt.strip("<>"))
        assert 500 <= code < 600, trick
        smtp.rset()
    assert_never_delivered(gw, tag.encode())


def test_plain_relay_reply_is_5_7_1(gw: GatewayProcess) -> None:
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp:
        smtp.ehlo()
        smtp.mail("spammer@example.org")
        code, text = smtp.rcpt("victim@example.net")
    assert code == 550
    assert text.startswith(b"5.7.1 ")


@pytest.mark.parametrize(("rcpt", "trick"), RELAY_TRICKS, ids=[t for _r, t in RELAY_TRICKS])
def test_open_relay_attempts_are_refused_swaks(gw: GatewayProcess, rcpt: str, trick: str) -> None:
    tag = token()
    done = swaks(
        "--server", f"{gw.host}:{gw.port}",
        "--helo", "mx.example.org",
        "--from", "spammer@example.org",
        "--to", rcpt.strip("<>"),
        "--body", f"relay test {tag}",
    )
    assert done.returncode != 0, done.stdout
    rcpt_reply = next(line for line in done.stdout.splitlines() if line.startswith("<** 5"))
    assert rcpt_reply.startswith(("<** 550 5.7.1 ", "<** 553 5.1.3 ", "<** 501 ")), (
        trick,
        done.stdout,
    )
    assert_never_delivered(gw, tag.encode())


def test_connector_sessions_are_not_an_open_relay_either(gw: GatewayProcess) -> None:
    with RawSmtp(gw.host, gw.port, source="127.0.0.2") as client:
        client.cmd("EHLO branch.contoso.com")
        assert client.cmd("MAIL FROM:<joe@contoso.com>").startswith(b"250")
        assert client.cmd("RCPT TO:<victim@example.net>").startswith(b"550 5.7.1 ")
