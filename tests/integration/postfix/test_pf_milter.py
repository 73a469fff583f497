"""The milter inside a real Postfix: P2 at end of data, live SPF/DKIM/DMARC on the message as
Postfix hands it over, our headers in and forged ones out, malicious mail on hold.

One Postfix for the module with the README's main.cf block (policy server + milter), dsguard
"on", DNS from nsd (contoso.com: SPF 127.0.0.1 only, DMARC p=reject, a DKIM key;
mailer.example.net and example.org: SPF for 127.0.0.0/8).
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator

import dkim as dkimpy  # type: ignore[import-untyped]
import pytest
from tests.fixtures.gateway import (
    DKIM_SELECTOR,
    RDS_REPLY,
    header_values,
    message,
    sink_messages_with,
    token,
    wait_at_sink,
)
from tests.fixtures.postfix import MX_HOSTNAME, POSTSUPER, STRANGER_IP, PostfixWorld, postfix_world

SRS_SENDER = "SRS0=x7Hq=TT=contoso.com=joe@example.org"


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixWorld]:
    with postfix_world(tmp_path_factory.mktemp("pf-milter"), mode="on") as world:
        yield world


def send(pf: PostfixWorld, sender: str, data: bytes, *, helo: str = "mailer.example.net") -> tuple[int, str]:
    """MAIL, one RCPT (joe@contoso.com), DATA from the stranger's address: the final reply."""
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname=helo, source_address=(STRANGER_IP, 0)) as smtp:
        smtp.ehlo()
        assert smtp.mail(sender)[0] == 250
        assert smtp.rcpt("joe@contoso.com")[0] == 250
        code, text = smtp.data(data)
    return code, text.decode()


def barrier(pf: PostfixWorld) -> None:
    """An ordinary message sent after: once it is at the sink, Postfix has had its chance to
    deliver whatever came before."""
    tag = "barrier-" + token()
    code, _ = send(pf, "news@example.org", message(from_="news@example.org", tag=tag))
    assert code == 250
    wait_at_sink(pf.world.sink, tag.encode())


def test_a_p2_spoof_is_refused_by_the_milter_at_end_of_data(pf: PostfixWorld) -> None:
    tag = token()
    # The envelope is someone else's and its SPF passes: P1 and the policy server let it by.
    code, text = send(
        pf,
        "bounce@mailer.example.net",
        message(from_="payroll@contoso.com", subject="Updated timesheet template", tag=tag),
    )
    assert f"{code} {text}" == RDS_REPLY + " (header From payroll@contoso.com is not authenticated)"
    decision = pf.milter.wait_for_decision(lambda d: d.get("reason", "").startswith("P2 "))
    assert decision["front_door"] == "milter"
    assert (decision["p1"], decision["p2"]) == ("not_applicable", "would_reject")
    [event] = pf.wait_events(lambda e: tag in (e["message_id"] or ""))
    assert (event["front_door"], event["decision"], event["header_from"]) == (
        "milter",
        "refused",
        "payroll@contoso.com",
    )
    barrier(pf)
    assert not sink_messages_with(pf.world.sink, tag.encode())


def test_a_legitimate_external_message_is_delivered_with_our_headers(pf: PostfixWorld) -> None:
    tag = token()
    code, text = send(pf, "news@example.org", message(from_="news@example.org", subject="Newsletter", tag=tag))
    assert code == 250
    queue_id = text.rsplit(" ", 1)[1]
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    assert header_values(arrived.data, "Authentication-Results") == [
        f"{MX_HOSTNAME}; spf=pass smtp.mailfrom=example.org; dkim=none; dmarc=none header.from=example.org"
    ]
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert verdict == "clean; score=0; direct_send=no; attribution=anonymous"
    # Ours come first (inserted at the top), above Postfix's own Received.
    head = arrived.data.split(b"\n\n", 1)[0].decode()
    assert head.index("Authentication-Results:") < head.index("X-Dsguard-Verdict:")
    assert head.index("X-Dsguard-Verdict:") < head.index(f"by {MX_HOSTNAME} (Postfix)")
    decision = pf.milter.wait_for_decision(lambda d: d.get("queue_id") == queue_id)
    assert decision["decision"] == "accepted"


def test_forged_copies_of_our_headers_are_deleted_and_others_kept(pf: PostfixWorld) -> None:
    tag = token()
    forged = message(
        from_="news@example.org",
        tag=tag,
        extra_headers=(
            f"Authentication-Results: {MX_HOSTNAME}; spf=pass smtp.mailfrom=contoso.com",
            "X-Dsguard-Verdict: clean; score=0",
            "Authentication-Results: upstream.example.net; spf=pass smtp.mailfrom=example.org",
            f"authentication-results: {MX_HOSTNAME.upper()};",
            "  dkim=pass header.d=contoso.com",
            "x-dsguard-findings: none",
        ),
    )
    assert send(pf, "news@example.org", forged)[0] == 250
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    results = header_values(arrived.data, "Authentication-Results")
    assert results == [
        f"{MX_HOSTNAME}; spf=pass smtp.mailfrom=example.org; dkim=none; dmarc=none header.from=example.org",
        "upstream.example.net; spf=pass smtp.mailfrom=example.org",
    ]
    assert header_values(arrived.data, "X-Dsguard-Verdict") == [
        "clean; score=0; direct_send=no; attribution=anonymous"
    ]
    assert not header_values(arrived.data, "X-Dsguard-Findings")


def _signed_simple(pf: PostfixWorld, tag: str) -> bytes:
    """Joe's message signed by contoso.com with simple/simple canonicalisation (every byte of
    the signed headers and the body counts), with a folded Subject and trailing spaces."""
    body = f"Hi,\r\nsee you at 10.  \r\n\r\nJoe\r\nref {tag}\r\n".encode()
    head = (
        "From: Joe <joe@contoso.com>\r\n"
        "To: joe@example.org\r\n"
        "Subject: Minutes of the Tuesday meeting,\r\n"
        "\tfolded onto a second line\r\n"
        "Date: Mon, 01 Jan 2024 09:00:00 +0000\r\n"
        f"Message-ID: <{tag}@contoso.com>\r\n"
    ).encode()
    raw = head + b"\r\n" + body
    signature = dkimpy.sign(
        raw,
        DKIM_SELECTOR.encode(),
        b"contoso.com",
        pf.world.dkim.private_pem,
        canonicalize=(b"simple", b"simple"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return bytes(signature) + raw


def test_own_domain_dkim_survives_the_milter_byte_for_byte(pf: PostfixWorld) -> None:
    # Forwarded with SRS (P1 does not apply); P2 asks for proof of the contoso.com From,
    # and contoso.com's own DKIM signature is it -- it verifies only if the message the
    # milter rebuilt from Postfix's header and body packets is the one that was sent.
    tag = token()
    code, _ = send(pf, SRS_SENDER, _signed_simple(pf, tag), helo="fwd.example.org")
    assert code == 250
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    [results] = header_values(arrived.data, "Authentication-Results")
    assert "dkim=pass header.d=contoso.com header.s=sel1" in results
    assert "dmarc=pass header.from=contoso.com" in results


def campaign_link_message(tag: str) -> bytes:
    return message(
        from_="news@example.org",
        subject="New Missed Fax-msg",
        body=f"Listen Now: https://voice-e091b.firebaseapp.com/listen?m={tag}\r\n",
        tag=tag,
    )


def test_malicious_content_lands_in_the_hold_queue_and_can_be_released(pf: PostfixWorld) -> None:
    tag = token()
    code, text = send(pf, "news@example.org", campaign_link_message(tag))
    assert code == 250  # accepted, then held: the sender learns nothing
    queue_id = text.rsplit(" ", 1)[1]
    held = pf.wait_held(tag)
    assert held["queue_id"] == queue_id
    content = pf.postfix.postcat(queue_id)
    assert "X-Dsguard-Verdict: malicious;" in content
    assert "IOC_KNOWN_DOMAIN" in content
    [event] = pf.wait_events(lambda e: e["queue_id"] == queue_id)
    assert (event["front_door"], event["decision"], event["verdict"]) == (
        "milter",
        "quarantined",
        "malicious",
    )
    barrier(pf)
    assert not sink_messages_with(pf.world.sink, tag.encode())
    # Released by the admin with Postfix's own tool, it is delivered as it was stamped.
    subprocess.run([POSTSUPER, "-c", str(pf.postfix.etc), "-H", queue_id], check=True, capture_output=True)
    pf.postfix.flush()
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    assert header_values(arrived.data, "X-Dsguard-Verdict")[0].startswith("malicious;")


def test_events_of_both_front_doors_are_in_one_store(pf: PostfixWorld) -> None:
    with smtplib.SMTP("127.0.0.1", pf.port, source_address=(STRANGER_IP, 0)) as smtp:
        smtp.ehlo("WIN-3J8KQ2H1LDF")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], message())
    assert pf.wait_events(lambda e: e["front_door"] == "policyd")
    assert pf.wait_events(lambda e: e["front_door"] == "milter")
    # `dsguard events` reads the one store both write to, as the web UI does.
