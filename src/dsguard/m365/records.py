"""The normalised trace record: one message (or one message-recipient row) from any export.

Every reader in :mod:`dsguard.m365.formats` turns its rows into :class:`TraceRecord` values so
the inventory never looks at a format again. A field the format does not carry is ``None``
("unknown"), never a guess: a message trace has no HELO and no authentication results, and the
classification must know that rather than read "no SPF pass" into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTRA_ORG = "intra-org"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """What one export row says about a message, normalised.

    ``connector``: the connector name the export recorded; ``""`` when the export says the
    message matched none (empty ``Connectors``, ``<server>\\Default <server>``, ``NoConnector``);
    ``None`` when the format does not record connectors at all (message trace, Graph).
    ``mail_from`` is the envelope sender (P1) and ``header_from`` the header From (P2); ``None``
    when unknown, ``""`` for the null sender ``<>``. Authentication verdicts are lower-case
    words as the export wrote them (``pass``, ``fail``, ``softfail``, ``none`` ...).
    """

    timestamp: datetime | None
    sender_ip: str | None
    helo: str | None
    mail_from: str | None
    header_from: str | None
    recipients: tuple[str, ...]
    subject: str | None
    direction: Direction
    connector: str | None
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None
    compauth: str | None = None
    # DKIM signing domains that passed (known only from .eml files).
    dkim_pass_domains: tuple[str, ...] = ()
    country: str | None = None
    status: str | None = None
    # Identifies the message across its per-recipient rows (MessageTraceId, NetworkMessageId).
    message_key: str | None = None
    # Only for .eml inputs: dsguard's own verdict on the message and the finding ids.
    verdict: str | None = None
    findings: tuple[str, ...] = ()

    @property
    def auth_recorded(self) -> bool:
        return any(v is not None for v in (self.spf, self.dkim, self.dmarc, self.compauth))


NO_CONNECTOR_WORDS = frozenset({"", "noconnector", "no connector", "none", "null"})


def connector_from_export(value: str | None) -> str:
    """An export's connector cell as a connector name, ``""`` meaning "no connector".

    Exchange Online writes ``<EOP server>\\Default <EOP server>`` when a message matched no
    named inbound connector (the hidden default connector; dszp/Microsoft-Direct-Send-Reporting
    README); Start-HistoricalSearch's ConnectorReport says ``NoConnector``; EmailEvents leaves
    ``Connectors`` empty (Microsoft's Exchange Team post "Direct Send vs sending directly to an
    Exchange Online tenant").
    """
    text = (value or "").strip()
    if text.lower() in NO_CONNECTOR_WORDS or "\\default" in text.lower():
        return ""
    return text
