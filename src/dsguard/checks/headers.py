"""HDR_*: header ambiguity and forgery -- the shapes of "Composition Kills" (Chen, Paxson,
Jiang; USENIX Security 2020, sections 5.1-5.2), where the receiver that checks DMARC and the
client that shows the message read different senders. RFC 5322 section 3.6 allows exactly one
From field; several mailboxes in it require a Sender field (section 3.6.2)."""

from __future__ import annotations

from collections.abc import Iterator

from dsguard.checks.base import Facts, Hit
from dsguard.policy.domains import aligned

_IDENTITY = frozenset(
    {"from", "sender", "reply-to", "to", "cc", "subject", "resent-from", "return-path"}
)


def _real_oddities(oddities: tuple[str, ...], raw: str) -> list[str]:
    # A From without any '@' (e.g. "MAILER-DAEMON") is odd but not a parser disagreement.
    if "@" not in raw:
        return [o for o in oddities if "is not a valid address" not in o]
    return list(oddities)


def check(f: Facts) -> Iterator[Hit]:
    msg = f.message
    froms = msg.from_fields
    if not froms or all(not fld.mailboxes and not fld.claimed_domains for fld in froms):
        yield Hit(
            "HDR_FROM_MISSING", "no usable From header", msg.first("from") or "(no From field)"
        )
    if len(froms) > 1:
        yield Hit(
            "HDR_FROM_MULTIPLE",
            f"{len(froms)} From headers: clients and receivers pick different ones",
            " | ".join(fld.raw[:80] for fld in froms),
        )
    has_sender = bool(msg.get_all("sender"))
    for fld in froms:
        if len(fld.mailboxes) > 1 and not has_sender:
            yield Hit(
                "HDR_FROM_MULTIPLE_ADDRESSES",
                f"From holds {len(fld.mailboxes)} mailboxes and there is no Sender header",
                fld.raw[:160],
            )
            break
    for fld in f.identity_fields:
        odd = _real_oddities(fld.oddities, fld.raw)
        if odd:
            yield Hit(
                "HDR_FROM_AMBIGUOUS",
                f"the sender field is ambiguous: {odd[0]}",
                f"{fld.raw[:160]} ({'; '.join(odd[1:3])})" if len(odd) > 1 else fld.raw[:160],
            )
            break
    for fld in froms:
        if fld.display_name_addresses and fld.first is not None:
            shown = fld.display_name_addresses[0]
            yield Hit(
                "HDR_FROM_DISPLAY_NAME_ADDRESS",
                f"the display name shows {shown} but the address is {fld.first.addr}",
                fld.raw[:160],
            )
            break
    if f.own_claims:
        for fld in msg.address_fields("sender"):
            for mb in fld.mailboxes:
                if mb.domain and not any(aligned(mb.domain, d) for d in f.own_claims):
                    yield Hit(
                        "HDR_SENDER_MISMATCH",
                        f"Sender {mb.addr} is outside the own-domain From ({', '.join(f.own_claims)})",
                        fld.raw[:160],
                    )
                    break
        if f.anonymous:
            for fld in msg.address_fields("reply-to"):
                foreign = [
                    mb for mb in fld.mailboxes if mb.domain and not f.accepted.matches(mb.domain)
                ]
                if foreign:
                    yield Hit(
                        "HDR_REPLY_TO_EXTERNAL",
                        f"replies to this own-domain message go to {foreign[0].addr}",
                        f"Reply-To: {fld.raw[:120]}",
                    )
                    break
    for h in msg.malformed_fields:
        if h.key.strip() in _IDENTITY or "hides" in h.malformed:
            yield Hit(
                "HDR_MALFORMED_NAME",
                f"malformed {h.name!r} field: {h.malformed}",
                f"{h.name}: {h.value[:120]}",
            )
            break
    if f.hops is not None and f.hops.forged_stamps:
        yield Hit(
            "HDR_EXCHANGE_STAMP_FORGED",
            "Exchange Online stamps that Exchange did not write",
            "; ".join(f.hops.forged_stamps)[:240],
        )
