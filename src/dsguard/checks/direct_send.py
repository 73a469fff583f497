"""DS_*: the organisation's own domain used by a sender who is neither authenticated nor a
connector. Microsoft's RejectDirectSend looks only at P1 (the envelope); these checks also
read P2 (the header From) and say which legitimate senders the switch would break."""

from __future__ import annotations

from collections.abc import Iterator

from dsguard.checks.base import Facts, Hit


def check(f: Facts) -> Iterator[Hit]:
    env = f.envelope
    p1 = env.mail_from or ""
    shown_from = f.header_from.addr if f.header_from else ""
    if f.direct_send:
        yield Hit(
            "DS_DIRECT_SEND",
            f"anonymous delivery with accepted-domain envelope sender {p1}: "
            "RejectDirectSend would refuse it (550 5.7.68)",
            f"MAIL FROM {p1}; {f.attribution.reason}",
        )
        if f.p1_authenticated:
            if f.auth.spf_passes_for(f.p1_domain or ""):
                yield Hit(
                    "DS_AUTHORISED_DIRECT_SEND",
                    f"Direct Send from {env.client_ip or 'an IP'} that SPF authorises for "
                    f"{f.p1_domain}: needs a connector before RejectDirectSend is switched on",
                    f"spf={f.auth.spf} smtp.mailfrom={f.auth.spf_domain}",
                )
            else:
                yield Hit(
                    "DS_FORWARDED_NO_SRS",
                    f"own-domain envelope {p1} via a foreign host with {f.p1_domain} DKIM intact: "
                    "forwarding without SRS (RejectDirectSend would refuse it)",
                    "; ".join(f"dkim={r} header.d={d}" for r, d in f.auth.dkim),
                )
        else:
            yield Hit(
                "DS_SPOOF_ENVELOPE",
                f"envelope sender {p1} is an accepted domain but not authenticated "
                "(no SPF pass, no aligned DKIM pass)",
                f"spf={f.auth.spf or 'unknown'}; dkim="
                + (",".join(r for r, _ in f.auth.dkim) or "none")
                + f"; source: {f.auth.source}",
            )
    if f.spoof_p2:
        claimed = ", ".join(f.own_unproven)
        yield Hit(
            "DS_SPOOF_HEADER_FROM",
            f"header From claims accepted domain {claimed} without an aligned DKIM or SPF pass",
            f"From: {shown_from or '(unparsable)'}; dmarc={f.auth.dmarc or 'unknown'}",
        )
        if f.null_sender:
            yield Hit(
                "DS_NULL_SENDER_INTERNAL_FROM",
                f"null envelope sender with an unauthenticated own-domain From ({claimed})",
                "MAIL FROM <>",
            )
    if f.anonymous and f.own_claims and f.p1_domain and not f.p1_accepted:
        # Informational whether or not DKIM proves it: the switch never looks at P2.
        yield Hit(
            "DS_P2_ONLY",
            f"envelope sender {p1} is foreign while the header From is {', '.join(f.own_claims)}: "
            "Microsoft's RejectDirectSend does not check the header From",
            f"MAIL FROM {p1}; From: {shown_from}",
        )
    if f.spoof_p1 or f.spoof_p2:
        senders = {m.addr.lower() for fld in f.message.from_fields for m in fld.mailboxes}
        if p1 and "@" in p1 and not p1.startswith("@"):
            senders.add(p1.lower())
        same = sorted(senders & set(f.recipients))
        if same:
            yield Hit(
                "DS_SELF_ADDRESSED",
                f"the message is addressed to its own sender {same[0]}",
                f"From/MAIL FROM and recipient {same[0]}",
            )
