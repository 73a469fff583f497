"""Attribution and Reject Direct Send: Microsoft's semantics as pure functions."""

import pytest

from dsguard.config import Connector
from dsguard.model import AttributionKind, Envelope, EnvelopeOrigin, RdsOutcome, TlsInfo
from dsguard.policy.attribution import attribute
from dsguard.policy.domains import AcceptedDomains, aligned, org_domain
from dsguard.policy.rds import REJECT_DIRECT_SEND_REPLY, decide_p1, decide_p2

ACCEPTED = AcceptedDomains(["contoso.com", "*.fabrikam.com"])
CONNECTORS = (
    Connector(name="printers", sender_ip_ranges=("192.0.2.0/28",), sender_domains=("contoso.com",)),
    Connector(name="saas", tls_certificate_name="*.mailer.example.net"),
)


def env(**kw: object) -> Envelope:
    return Envelope(origin=EnvelopeOrigin.SMTP, **kw)  # type: ignore[arg-type]


def test_microsoft_reply_text_byte_for_byte() -> None:
    assert REJECT_DIRECT_SEND_REPLY == (
        "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
        "from unauthorized sources"
    )


def test_accepted_domain_matching() -> None:
    assert ACCEPTED.matches("contoso.com") and ACCEPTED.matches("CONTOSO.COM.")
    assert not ACCEPTED.matches("sub.contoso.com")  # no wildcard for contoso.com
    assert ACCEPTED.matches("fabrikam.com") and ACCEPTED.matches("a.b.fabrikam.com")
    assert not ACCEPTED.matches("notfabrikam.com")


def test_org_domain_and_alignment() -> None:
    assert org_domain("mail.contoso.co.uk") == "contoso.co.uk"
    assert aligned("bounce.contoso.com", "contoso.com")
    assert not aligned("contoso.com.example.net", "contoso.com")


def test_attribution_order() -> None:
    assert (
        attribute(env(auth_user="alice@contoso.com", client_ip="192.0.2.1"), CONNECTORS).kind
        is AttributionKind.AUTHENTICATED
    )
    a = attribute(env(client_ip="192.0.2.5"), CONNECTORS)
    assert (a.kind, a.name) == (AttributionKind.CONNECTOR, "printers")
    c = attribute(
        env(
            client_ip="198.51.100.1", tls=TlsInfo(verified_peer_names=("out1.mailer.example.net",))
        ),
        CONNECTORS,
    )
    assert (c.kind, c.name) == (AttributionKind.CONNECTOR, "saas")
    assert (
        attribute(
            env(client_ip="198.51.100.1", tls=TlsInfo(verified_peer_names=("evil.example.org",))),
            CONNECTORS,
        ).kind
        is AttributionKind.ANONYMOUS
    )
    assert attribute(env(stamped_auth_as="Internal"), ()).kind is AttributionKind.AUTHENTICATED
    assert (
        attribute(env(stamped_auth_as="Anonymous", client_ip="203.0.113.1"), CONNECTORS).kind
        is AttributionKind.ANONYMOUS
    )


@pytest.mark.parametrize("mode", ["on", "audit", "off"])
def test_p1_anonymous_accepted_domain(mode: str) -> None:
    d = decide_p1(
        mode, ACCEPTED, attribute(env(client_ip="139.28.36.171"), CONNECTORS), "contoso.com"
    )
    assert d.outcome is RdsOutcome.WOULD_REJECT
    assert d.enforced is (mode == "on")
    assert d.reply == REJECT_DIRECT_SEND_REPLY


def test_p1_connector_only_covers_its_sender_domains() -> None:
    printers = attribute(env(client_ip="192.0.2.5"), CONNECTORS)
    assert decide_p1("on", ACCEPTED, printers, "contoso.com").outcome is RdsOutcome.NOT_APPLICABLE
    other = decide_p1("on", ACCEPTED, printers, "fabrikam.com")
    assert other.outcome is RdsOutcome.WOULD_REJECT and "may not send as" in other.reason


def test_p1_foreign_domain_is_not_applicable() -> None:
    anon = attribute(env(client_ip="139.28.36.171"), CONNECTORS)
    assert decide_p1("on", ACCEPTED, anon, "example.net").outcome is RdsOutcome.NOT_APPLICABLE
    assert decide_p1("on", ACCEPTED, anon, None).outcome is RdsOutcome.NOT_APPLICABLE


def test_p2_needs_proof_and_names_the_header_from() -> None:
    anon = attribute(env(client_ip="139.28.36.171"), CONNECTORS)
    d = decide_p2("on", True, ACCEPTED, anon, ["contoso.com"], [], "ceo@contoso.com")
    assert d.enforced and "ceo@contoso.com" in d.reply and d.reply.startswith("550 5.7.68 ")
    assert (
        decide_p2("on", True, ACCEPTED, anon, ["contoso.com"], ["contoso.com"], "x").outcome
        is RdsOutcome.NOT_APPLICABLE
    )
    assert (
        decide_p2("on", False, ACCEPTED, anon, ["contoso.com"], [], "x").outcome
        is RdsOutcome.NOT_APPLICABLE
    )
