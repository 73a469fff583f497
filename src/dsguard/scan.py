"""The file front door: raw messages in, one ScanResult each out.

Used by ``dsguard scan`` (and the web upload page). The envelope is rebuilt from the trusted
hop (``mail.envelope``); the receiver's authentication results come from its own stamps.
When no accepted domains are configured, the organisation is inferred per message from its
recipients and the result says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from dsguard.auth.summary import summarise
from dsguard.config import Config
from dsguard.engine import Engine
from dsguard.intel.geo import country_of
from dsguard.mail.addresses import decode_words
from dsguard.mail.envelope import analyse_hops
from dsguard.mail.message import ParsedMessage
from dsguard.mail.source import LoadError, RawMessage
from dsguard.model import EnvelopeOrigin, MessageSummary, ScanResult
from dsguard.policy.domains import AcceptedDomains

INFERRED_NOTE = "accepted domains inferred from the recipients (no --accepted-domain or config)"


class Scanner:
    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine if engine is not None else Engine(config)

    def scan(self, raw: RawMessage) -> ScanResult:
        limits = self.config.limits
        msg = ParsedMessage(raw.data, limits, truncated=raw.truncated, size=raw.size)
        # The country is filled in while the envelope is built (dataclasses.replace of the
        # finished envelope cost about 3 us).
        hops = analyse_hops(msg, self.config.trust, country_of=country_of)
        envelope = hops.envelope
        notes = list(hops.notes)
        accepted = self.engine.accepted
        if not accepted:
            accepted = AcceptedDomains.infer_from_recipients(envelope.rcpt_to or msg.recipients)
            notes.append(f"{INFERRED_NOTE}: {', '.join(accepted.entries()) or 'none found'}")
        if envelope.origin is EnvelopeOrigin.INFERRED:
            notes.append(
                f"receiving hop inferred ({envelope.receiver or 'unknown host'}); "
                "configure [trust] receivers to make it certain"
            )
        auth = summarise(hops.trusted_results, hops.received_spf)
        verdict = self.engine.evaluate(msg, envelope, auth, accepted=accepted, hops=hops)
        first = None
        for field in msg.from_fields:
            if field.first is not None:
                first = field.first
                break
        summary = MessageSummary(
            message_id=_short(msg.message_id),
            from_addr=first.addr if first else _short(msg.first("from")),
            from_display=_short(first.display) if first and first.display else None,
            to=tuple(msg.recipients[:20]),
            subject=_short(msg.subject, 300),
            date=_short(msg.first("date")),
        )
        return ScanResult(
            path=raw.path,
            index=raw.index,
            summary=summary,
            envelope=envelope,
            verdict=verdict,
            notes=tuple(notes),
        )

    def scan_all(self, items: Iterable[RawMessage | LoadError]) -> Iterator[ScanResult]:
        for item in items:
            yield self.scan_item(item)

    def scan_item(self, item: RawMessage | LoadError) -> ScanResult:
        if isinstance(item, LoadError):
            return error_result(item)
        try:
            return self.scan(item)
        except Exception as exc:
            where = item.path if item.index is None else f"{item.path}#{item.index}"
            return ScanResult(
                path=item.path,
                index=item.index,
                error=f"internal error while analysing {where}: {type(exc).__name__}: {exc}"[:300],
            )


def error_result(err: LoadError) -> ScanResult:
    return ScanResult(
        path=err.path, index=err.index, error=err.problem, notes=() if err.fatal else ("skipped",)
    )


def _short(value: str | None, limit: int = 200) -> str | None:
    if value is None:
        return None
    text = decode_words(value) if "=?" in value else value
    return text[:limit]
