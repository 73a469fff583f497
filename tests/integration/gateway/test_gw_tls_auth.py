"""Certificate connectors and SMTP AUTH submission over real TLS (certificates made by trustme).

One gateway for the module, reject_direct_send = "on": STARTTLS with a server certificate for
its host name, client certificates verified against the test CA, a connector matched by the
certificate name "scanner.contoso.com" (no IP range), and the submission listener
(STARTTLS required, AUTH only after TLS, at most 3 AUTH failures per IP). The SMTP user is
created with the real CLI against the same config file.

The TLS clients here are Python's ssl/smtplib: this machine's swaks has no Net::SSLeay, so it
cannot speak TLS (swaks is used for the plain-text tests in the other modules).
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from tests.fixtures import gateway as gwf
from tests.fixtures.gateway import (
    GATEWAY_HOSTNAME,
    RDS_REPLY,
    GatewayFactory,
    GatewayProcess,
    RawSmtp,
    assert_never_delivered,
    client_tls_context,
    header_values,
    message,
    reply_line,
    token,
    wait_at_sink,
)

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway

ALICE = "alice@contoso.com"
PASSWORD = "Tr0ub4dor&3-horse-battery"
MAX_AUTH_FAILURES = 3


@dataclass(frozen=True)
class Pki:
    ca: str  # the CA the gateway trusts for client certificates (and clients for the server)
    server: str  # key + chain for gw.contoso.com (and 127.0.0.1, the address clients dial)
    scanner: str  # client certificate for the connector's name
    printer: str  # a valid client certificate for another name
    rogue_scanner: str  # the connector's name, from a CA the gateway does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root: Path = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    rogue = trustme.CA()

    def write(name: str, cert: trustme.LeafCert) -> str:
        path = root / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return str(path)

    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    return Pki(
        ca=str(root / "ca.pem"),
        server=write("server", ca.issue_cert(GATEWAY_HOSTNAME, "127.0.0.1")),
        scanner=write("scanner", ca.issue_cert("scanner.contoso.com")),
        printer=write("printer", ca.issue_cert("printer.contoso.com")),
        rogue_scanner=write("rogue", rogue.issue_cert("scanner.contoso.com")),
    )


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, pki: Pki) -> GatewayProcess:
    gateway = module_gateway(
        {
            "organization": {"reject_direct_send": "on"},
            "gateway": {
                "tls_cert": pki.server,
                "tls_key": pki.server,
                "tls_client_ca": pki.ca,
                "limits": {"max_auth_failures": MAX_AUTH_FAILURES},
            },
            "connectors": [
                {
                    "name": "scanner",
                    "tls_certificate_name": "scanner.contoso.com",
                    "sender_domains": ["contoso.com"],
                }
            ],
        },
        submission=True,
    )
    added = gateway.cli("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    assert added.stdout.strip() == f"added {ALICE}"
    assert gateway.cli("user", "list").stdout.split() == [ALICE]
    return gateway


def tls(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    return client_tls_context(pki.ca, (cert, cert) if cert else None)


# -- certificate connectors -------------------------------------------------------------------


def test_client_certificate_connector_is_accepted_from_any_ip(gw: GatewayProcess, pki: Pki) -> None:
    tag = token()
    mark = gw.mark()
    # 127.0.0.7 is in no connector's range: only the certificate can attribute this session.
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="scanner.contoso.com", source_address=("127.0.0.7", 0)
    ) as smtp:
        smtp.starttls(context=tls(pki, pki.scanner))
        assert smtp.sendmail("scan@contoso.com", ["joe@contoso.com"], message(tag=tag)) == {}
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    [received] = header_values(arrived.data, "Received")
    assert "([127.0.0.7]) (TLSv1." in received
    assert "with ESMTPS " in received
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert "attribution=connector:scanner" in verdict
    [decision] = gw.decisions(since=mark)
    assert (decision["decision"], decision["attribution"]) == ("accepted", "connector:scanner")


@pytest.mark.parametrize("cert", ["none", "printer"])
def test_without_the_matching_certificate_the_spoof_is_refused(
    gw: GatewayProcess, pki: Pki, cert: str
) -> None:
    context = tls(pki, pki.printer if cert == "printer" else None)
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="scanner.contoso.com", source_address=("127.0.0.7", 0)
    ) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo()
        assert smtp.mail("scan@contoso.com")[0] == 250
        code, text = smtp.rcpt("joe@contoso.com")
    assert f"{code} {text.decode()}" == RDS_REPLY


def starttls_and_ehlo(smtp: smtplib.SMTP, context: ssl.SSLContext) -> None:
    smtp.starttls(context=context)
    # With TLS 1.3 the server checks the client certificate after the client considers the
    # handshake done: its verdict arrives with the next read.
    smtp.ehlo()


def test_certificate_from_an_untrusted_ca_does_not_get_in(gw: GatewayProcess, pki: Pki) -> None:
    tag = token()
    with (
        smtplib.SMTP(
            gw.host, gw.port, local_hostname="scanner.contoso.com", source_address=("127.0.0.7", 0)
        ) as smtp,
        # The presented certificate fails verification: the handshake is refused.
        pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)),
    ):
        starttls_and_ehlo(smtp, tls(pki, pki.rogue_scanner))
    with smtplib.SMTP(
        gw.host, gw.port, local_hostname="scanner.contoso.com", source_address=("127.0.0.7", 0)
    ) as smtp:
        # Falling back to plain text leaves it anonymous: the spoof is refused.
        smtp.ehlo()
        smtp.mail("scan@contoso.com")
        assert reply_line(*smtp.rcpt("joe@contoso.com")) == RDS_REPLY
    assert_never_delivered(gw, tag.encode())


# -- SMTP AUTH on the submission listener ------------------------------------------------------------


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_no_auth_before_tls(gw: GatewayProcess) -> None:
    with RawSmtp(gw.host, gw.submission_port, source="127.0.0.11") as client:
        ehlo = client.cmd("EHLO laptop.contoso.com")
        assert b"250-STARTTLS" in ehlo
        assert b"AUTH" not in ehlo
        assert client.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)).startswith(b"530 ")
        assert client.cmd("MAIL FROM:<alice@contoso.com>").startswith(b"530 ")


def test_the_mx_listener_offers_no_auth_even_over_tls(gw: GatewayProcess, pki: Pki) -> None:
    with smtplib.SMTP(gw.host, gw.port, local_hostname="laptop.contoso.com") as smtp:
        smtp.starttls(context=tls(pki))
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN " + plain(ALICE, PASSWORD)) == (
            503,
            b"5.5.1 Error: authentication not enabled",
        )


def submission(gw: GatewayProcess, pki: Pki, source: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP(
        gw.host, gw.submission_port, local_hostname="laptop.contoso.com", source_address=(source, 0)
    )
    smtp.starttls(context=tls(pki))
    smtp.ehlo()
    return smtp


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """Exactly one AUTH PLAIN attempt (smtplib.login would try the next mechanism too)."""
    return smtp.docmd("AUTH", "PLAIN " + plain(user, password))


def test_auth_plain_and_login_after_starttls(gw: GatewayProcess, pki: Pki) -> None:
    with submission(gw, pki, "127.0.0.12") as smtp:
        assert smtp.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        # Without AUTH the submission listener takes no mail.
        assert smtp.mail(ALICE)[0] == 530
        assert auth_plain(smtp, ALICE, PASSWORD) == (235, b"2.7.0 Authentication successful")
    with submission(gw, pki, "127.0.0.12") as smtp:
        assert smtp.docmd("AUTH", "LOGIN")[0] == 334
        assert smtp.docmd(b64(ALICE))[0] == 334
        assert smtp.docmd(b64(PASSWORD)) == (235, b"2.7.0 Authentication successful")


def test_authenticated_user_may_relay_as_herself(gw: GatewayProcess, pki: Pki) -> None:
    tag = token()
    mark = gw.mark()
    with submission(gw, pki, "127.0.0.12") as smtp:
        smtp.login(ALICE, PASSWORD)
        sent = smtp.sendmail(
            ALICE, ["bob@example.net"], message(from_=ALICE, to="bob@example.net", tag=tag)
        )
    assert sent == {}
    [arrived] = wait_at_sink(gw.world.sink, tag.encode())
    assert arrived.rcpt_to == ("bob@example.net",)
    [received] = header_values(arrived.data, "Received")
    assert "with ESMTPSA " in received
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert f"attribution=authenticated:{ALICE}" in verdict
    [decision] = gw.decisions(since=mark)
    assert decision["attribution"] == f"authenticated:{ALICE}"


def test_send_as_someone_else_is_refused(gw: GatewayProcess, pki: Pki) -> None:
    with submission(gw, pki, "127.0.0.12") as smtp:
        smtp.login(ALICE, PASSWORD)
        code, text = smtp.mail("bob@contoso.com")
    assert code == 553
    assert text.startswith(b"5.7.1 ")


def test_wrong_password_is_535(gw: GatewayProcess, pki: Pki) -> None:
    with submission(gw, pki, "127.0.0.13") as smtp:
        code, text = auth_plain(smtp, ALICE, "not-the-password")
        assert code == 535
        assert text.startswith(b"5.7.8 ")
        assert smtp.mail(ALICE)[0] == 530


def test_auth_failures_are_throttled_per_ip(gw: GatewayProcess, pki: Pki) -> None:
    with submission(gw, pki, "127.0.0.14") as smtp:
        for attempt in range(MAX_AUTH_FAILURES):
            assert auth_plain(smtp, ALICE, f"guess-{attempt}")[0] == 535
        code, text = auth_plain(smtp, ALICE, PASSWORD)
        assert code == 454, text
        assert text.startswith(b"4.7.0 ")
    # Still throttled in a new session from the same address...
    with submission(gw, pki, "127.0.0.14") as smtp:
        assert auth_plain(smtp, ALICE, PASSWORD)[0] == 454
    # ...but not for anyone else.
    with submission(gw, pki, "127.0.0.15") as smtp:
        assert auth_plain(smtp, ALICE, PASSWORD)[0] == 235


def test_passwords_never_reach_the_log(gw: GatewayProcess, pki: Pki) -> None:
    wrong = "Wr0ng-but-secret-guess"
    with submission(gw, pki, "127.0.0.16") as smtp:
        assert auth_plain(smtp, ALICE, wrong)[0] == 535
        assert smtp.docmd("AUTH", "LOGIN")[0] == 334
        assert smtp.docmd(b64(ALICE))[0] == 334
        assert smtp.docmd(b64(PASSWORD))[0] == 235
        smtp.sendmail(ALICE, ["bob@example.net"], message(from_=ALICE, to="bob@example.net"))
    gw.wait_for_record(lambda r: r.get("event") == "decision" and r.get("client_ip") == "127.0.0.16")
    log = gw.log_text()
    assert '"auth_failed"' in log  # the failure is logged...
    for secret in (PASSWORD, wrong, b64(PASSWORD), plain(ALICE, wrong), plain(ALICE, PASSWORD)):
        assert secret not in log  # ...without the secret
    # Every line is structured: one JSON object per line.
    records = gw.records()
    assert records
    assert not [r for r in records if "raw" in r]
