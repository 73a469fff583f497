"""A connector by TLS client certificate inside a real Postfix: the README's main.cf block plus
``smtpd_tls_ask_ccert = yes`` and ``smtpd_tls_CAfile``, certificates made by trustme.

A scanner that presents a certificate the CA issued for the connector's name passes (Postfix
hands its CN to the policy server as ``ccert_subject`` and to the milter as
``{cert_subject}``) from an address in no connector; the same scanner without a certificate,
or with a certificate for another name or from another CA, is refused with 550 5.7.68.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from tests.fixtures.gateway import header_values, message, token, wait_at_sink
from tests.fixtures.postfix import STRANGER_IP, PostfixWorld, postfix_world

SCANNER_CERT_NAME = "scanner.contoso.com"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[PostfixWorld]:
    # Postfix reads these as root at start, like its queue files outside pytest's private
    # temp tree (see postfix_world).
    tls_dir = Path(tempfile.mkdtemp(prefix="dsguard-postfix-tls-"))
    try:
        tls_dir.chmod(0o711)
        server = ca.issue_cert("mx.contoso.com", common_name="mx.contoso.com")
        server.cert_chain_pems[0].write_to_path(str(tls_dir / "server.pem"))
        server.private_key_pem.write_to_path(str(tls_dir / "server.key"))
        ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
        for name in ("server.pem", "ca.pem"):
            (tls_dir / name).chmod(0o644)
        (tls_dir / "server.key").chmod(0o600)
        with postfix_world(
            tmp_path_factory.mktemp("pf-tls"),
            mode="on",
            settings={
                "connectors": [
                    {
                        "name": "scanners",
                        "tls_certificate_name": SCANNER_CERT_NAME,
                        "sender_domains": ["contoso.com"],
                    }
                ]
            },
            postfix_settings={
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": str(tls_dir / "server.pem"),
                "smtpd_tls_key_file": str(tls_dir / "server.key"),
                "smtpd_tls_ask_ccert": "yes",
                "smtpd_tls_CAfile": str(tls_dir / "ca.pem"),
            },
        ) as world:
            yield world
    finally:
        shutil.rmtree(tls_dir, ignore_errors=True)


def _client_context(cert: trustme.LeafCert | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the client's trust in Postfix is not under test
    if cert is not None:
        with tempfile.TemporaryDirectory() as directory:
            pem = Path(directory) / "client.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
            context.load_cert_chain(pem)
    return context


def _send(pf: PostfixWorld, cert: trustme.LeafCert | None, tag: str) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", pf.port, source_address=(STRANGER_IP, 0)) as smtp:
        smtp.ehlo("mfp-floor3.contoso.com")
        smtp.starttls(context=_client_context(cert))
        smtp.ehlo("mfp-floor3.contoso.com")
        return dict(
            smtp.sendmail(
                "scanner@contoso.com",
                ["joe@contoso.com"],
                message(from_="scanner@contoso.com", subject="Scanned document", tag=tag),
            )
        )


def test_a_scanner_with_the_connectors_certificate_passes(pf: PostfixWorld, ca: trustme.CA) -> None:
    tag = token()
    scanner = ca.issue_cert(SCANNER_CERT_NAME, common_name=SCANNER_CERT_NAME)
    assert _send(pf, scanner, tag) == {}
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert verdict.endswith("attribution=connector:scanners")
    assert not header_values(arrived.data, "X-Dsguard-Audit")


@pytest.mark.parametrize("which", ["no certificate", "another name", "another CA"])
def test_without_the_right_certificate_the_same_scanner_is_refused(
    pf: PostfixWorld, ca: trustme.CA, which: str
) -> None:
    cert = {
        "no certificate": None,
        "another name": ca.issue_cert("laptop.contoso.com", common_name="laptop.contoso.com"),
        "another CA": trustme.CA().issue_cert(SCANNER_CERT_NAME, common_name=SCANNER_CERT_NAME),
    }[which]
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        _send(pf, cert, token())
    code, text = refused.value.recipients["joe@contoso.com"]
    assert code == 550
    assert b"5.7.68" in text and b"TenantInboundAttribution" in text
