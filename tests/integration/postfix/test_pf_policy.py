"""The policy server inside a real Postfix: the campaign's spoof is refused at RCPT, connector
IPs and SASL-authenticated users pass.

One Postfix for the module, configured with the README's main.cf block (policy server and
milter), dsguard in "on" mode, contoso.com accepted, the "printers" connector = 127.0.0.2,
SMTP AUTH through a Dovecot-protocol auth server. Clients bind 127.0.0.x source addresses to
play the connector and strangers (loopback only).
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from tests.fixtures.gateway import RawSmtp, header_values, message, token, wait_at_sink
from tests.fixtures.postfix import (
    CONNECTOR_IP,
    SASL_USERS,
    STRANGER_IP,
    PostfixWorld,
    postfix_world,
)

# Postfix words every access/policy refusal as "<rcpt>: Recipient address rejected: <text>";
# the text after it is the policy server's answer, Microsoft's words.
POLICY_REFUSAL = (
    b"550 5.7.68 <joe@contoso.com>: Recipient address rejected: TenantInboundAttribution; "
    b"Direct Send not allowed for this organization from unauthorized sources\r\n"
)
ALICE = "alice@contoso.com"


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixWorld]:
    with postfix_world(tmp_path_factory.mktemp("pf-policy"), mode="on") as world:
        yield world


def test_postfix_runs_the_readme_lines(pf: PostfixWorld) -> None:
    assert pf.policyd is not None
    effective = pf.postfix.postconf_n().splitlines()
    assert (
        "smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, "
        f"reject_unauth_destination, check_policy_service {pf.policyd.address}"
    ) in effective
    assert f"smtpd_milters = {pf.milter.address}" in effective
    assert "milter_default_action = tempfail" in effective
    assert "milter_protocol = 6" in effective


def test_the_campaigns_spoof_is_refused_by_the_policy_server(pf: PostfixWorld) -> None:
    assert pf.policyd is not None
    with RawSmtp("127.0.0.1", pf.port, source=STRANGER_IP) as smtp:
        assert smtp.cmd("EHLO WIN-3J8KQ2H1LDF").startswith(b"250")
        assert smtp.cmd("MAIL FROM:<joe@contoso.com>").startswith(b"250")
        assert smtp.cmd("RCPT TO:<joe@contoso.com>") == POLICY_REFUSAL
        assert smtp.cmd("DATA").startswith(b"554 5.5.1")  # no valid recipients
    decision = pf.policyd.wait_for_decision(lambda d: d["client_ip"] == STRANGER_IP)
    assert decision["decision"] == "refused"
    assert decision["attribution"] == "anonymous"
    # Postfix asked the policy server first: the milter never saw that recipient.
    assert not [d for d in pf.milter.decisions() if d["client_ip"] == STRANGER_IP]
    [event] = pf.wait_events(lambda e: e["front_door"] == "policyd" and e["client_ip"] == STRANGER_IP)
    assert (event["decision"], event["p1"], event["mail_from"]) == (
        "refused",
        "would_reject",
        "joe@contoso.com",
    )


def test_a_connector_ip_passes_and_is_stamped(pf: PostfixWorld) -> None:
    tag = token()
    with smtplib.SMTP(
        "127.0.0.1", pf.port, local_hostname="mfp-floor2.contoso.com", source_address=(CONNECTOR_IP, 0)
    ) as smtp:
        assert smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], message(subject="Scan", tag=tag)) == {}
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert verdict.endswith("attribution=connector:printers")
    assert not header_values(arrived.data, "X-Dsguard-Audit")


def test_a_sasl_authenticated_user_passes_where_the_same_sender_anonymous_is_refused(
    pf: PostfixWorld,
) -> None:
    tag = token()
    with smtplib.SMTP("127.0.0.1", pf.port, source_address=(STRANGER_IP, 0)) as smtp:
        smtp.ehlo("laptop.contoso.com")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail(ALICE, ["joe@contoso.com"], message(from_=ALICE, tag=tag))
        assert refused.value.recipients["joe@contoso.com"][0] == 550
        smtp.login(ALICE, SASL_USERS[ALICE])  # Postfix -> Dovecot auth protocol -> OK
        assert smtp.sendmail(ALICE, ["joe@contoso.com"], message(from_=ALICE, tag=tag)) == {}
    assert ALICE in pf.auth.logins
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert verdict.endswith(f"attribution=authenticated:{ALICE}")


def test_a_wrong_password_gets_no_attribution(pf: PostfixWorld) -> None:
    with smtplib.SMTP("127.0.0.1", pf.port, source_address=(STRANGER_IP, 0)) as smtp:
        smtp.ehlo("laptop.contoso.com")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(ALICE, "wrong")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(ALICE, ["joe@contoso.com"], message(from_=ALICE))


