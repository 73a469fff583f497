"""Attribution: who the sender is to the organisation.

Mirrors Exchange Online: a message is *attributed* when it was submitted with SMTP AUTH or
matches an inbound connector (client IP in the connector's ranges, or a verified TLS client
certificate whose name matches ``tls_certificate_name``); otherwise it is *anonymous*
(Microsoft: "not attributed to any mail flow connector"). SPF/DKIM/DMARC never attribute.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from dsguard.config import Connector
from dsguard.mail.ipaddr import parse_ip
from dsguard.model import Attribution, AttributionKind, Envelope

ANONYMOUS = Attribution(AttributionKind.ANONYMOUS, reason="no SMTP AUTH and no connector matched")


def _cert_matches(pattern: str, names: Sequence[str]) -> bool:
    # Exchange's TlsSenderCertificateName accepts a wildcard ("*.contoso.com"); match it
    # against the certificate's DNS names (already verified against a trusted CA).
    pat = pattern.lower()
    return any(fnmatch.fnmatchcase(n.lower().rstrip("."), pat) for n in names)


# Both cached: every message of a mailbox is matched against the same connector ranges, and
# the same sending IPs recur; parsing an address or a network costs microseconds each time.
@lru_cache(maxsize=4096)
def _client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return parse_ip(text)
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)  # an invalid range raises each time: not cached


def match_connector(envelope: Envelope, connectors: Sequence[Connector]) -> Attribution | None:
    ip = _client_address(envelope.client_ip) if envelope.client_ip else None
    cert_names = envelope.tls.verified_peer_names if envelope.tls else ()
    for connector in connectors:
        if (
            connector.tls_certificate_name
            and cert_names
            and _cert_matches(connector.tls_certificate_name, cert_names)
        ):
            return Attribution(
                AttributionKind.CONNECTOR,
                connector.name,
                f"verified client certificate {cert_names[0]} matches {connector.tls_certificate_name}",
                connector.sender_domains,
            )
        if ip is not None:
            for net in connector.sender_ip_ranges:
                network = _network(net)
                if ip.version == network.version and ip in network:
                    return Attribution(
                        AttributionKind.CONNECTOR,
                        connector.name,
                        f"client IP {ip} in {net}",
                        connector.sender_domains,
                    )
    return None


def attribute(envelope: Envelope, connectors: Sequence[Connector]) -> Attribution:
    if envelope.auth_user:
        return Attribution(AttributionKind.AUTHENTICATED, envelope.auth_user, "SMTP AUTH")
    stamped = (envelope.stamped_auth_as or "").lower()
    if stamped == "internal":
        return Attribution(
            AttributionKind.AUTHENTICATED,
            "exchange-online",
            "X-MS-Exchange-Organization-AuthAs: Internal",
        )
    matched = match_connector(envelope, connectors)
    if matched is not None:
        return matched
    if stamped == "partner":
        return Attribution(
            AttributionKind.CONNECTOR,
            "exchange-partner-connector",
            "X-MS-Exchange-Organization-AuthAs: Partner",
        )
    return ANONYMOUS
