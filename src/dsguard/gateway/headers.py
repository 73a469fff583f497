"""The header fields dsguard writes into accepted mail, and the removal of forged copies.

Shared by every front door that passes mail on (the SMTP gateway prepends them to the spooled
message; the milter asks Postfix to insert them): our ``Authentication-Results`` (RFC 8601)
and ``<prefix>-Verdict`` / ``-Findings`` / ``-Audit``, in that order.

SECURITY: only we write these fields, so copies arriving with a message are forged: an
``Authentication-Results`` whose authserv-id is ours (RFC 8601 section 5: a receiver MUST
remove or rename them) and any field whose name starts with our prefix. Values built from
message data (attribution labels, audit notes) have control characters replaced so they
cannot start a header of their own, and long lines are folded (RFC 5322 section 2.2.3).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

from dsguard.model import Envelope, Verdict

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_SPLIT = re.compile(rb"\r\n(?![ \t])")
_AR_TOKEN_END = re.compile(rb"[\s;]")
MAX_FINDINGS_LISTED = 30
MAX_AUDIT_NOTE = 300


def header_safe(text: str) -> str:
    return _CONTROL.sub(" ", text)


def fold(line: str, width: int = 78) -> str:
    """Fold a header line at spaces (RFC 5322 section 2.2.3) so no line exceeds ~998 bytes."""
    if len(line) <= width:
        return line
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n".join(out)


def received_header(env: Envelope, hostname: str, queue_id: str, submission: bool) -> str:
    """Our trace field (RFC 5321 section 4.4), with the protocol per RFC 3848."""
    tls = env.tls is not None
    proto = "ESMTP" + ("S" if tls else "") + ("A" if env.auth_user else "")
    helo = header_safe(env.helo or "unknown")[:255]
    tls_note = (
        f" ({env.tls.version} cipher={env.tls.cipher})" if env.tls and env.tls.version else ""
    )
    rcpt = f" for <{env.rcpt_to[0]}>" if len(env.rcpt_to) == 1 else ""
    when = format_datetime(datetime.now(UTC))
    return (
        f"Received: from {helo} ([{env.client_ip}]){tls_note} by {hostname} (dsguard) "
        f"with {proto} id {queue_id}{rcpt}; {when}"
    )


def verdict_fields(
    prefix: str, verdict: Verdict, audit_notes: list[str], ar_value: str | None
) -> list[tuple[str, str]]:
    """(name, value) of every field we add, top to bottom, values unfolded."""
    fields: list[tuple[str, str]] = []
    if ar_value:
        fields.append(("Authentication-Results", ar_value))
    fields.append(
        (
            f"{prefix}-Verdict",
            f"{verdict.level.value}; score={verdict.score:g}; "
            f"direct_send={'yes' if verdict.direct_send else 'no'}; "
            f"attribution={header_safe(verdict.attribution.label())}",
        )
    )
    if verdict.findings:
        fields.append(
            (
                f"{prefix}-Findings",
                ", ".join(f.id for f in verdict.findings[:MAX_FINDINGS_LISTED]),
            )
        )
    for note in audit_notes:
        fields.append((f"{prefix}-Audit", header_safe(note)[:MAX_AUDIT_NOTE]))
    return fields


def is_own_field(field: bytes, authserv_id: str, prefix: str) -> bool:
    """Whether one raw header field (``Name:value``, any case) claims to be ours: an
    Authentication-Results with our authserv-id, or a name with our prefix."""
    low = field.lower()
    if low.startswith(prefix.lower().encode() + b"-"):
        return True
    if low.startswith(b"authentication-results:"):
        value = low.split(b":", 1)[1].lstrip()
        token = _AR_TOKEN_END.split(value, maxsplit=1)[0]
        return token == authserv_id.lower().encode()
    return False


def strip_our_headers(raw: bytes, authserv_id: str, prefix: str) -> bytes:
    """Remove incoming Authentication-Results that claim our authserv-id (RFC 8601 section 5)
    and any header with our prefix: only we write those."""
    end = raw.find(b"\r\n\r\n")
    if end == -1:
        head, body = raw, b""
    else:
        head, body = raw[: end + 2], raw[end + 2 :]
    fields = _FIELD_SPLIT.split(head)
    kept: list[bytes] = []
    changed = False
    for fld in fields:
        if not fld:
            continue
        if is_own_field(fld, authserv_id, prefix):
            changed = True
            continue
        kept.append(fld)
    if not changed:
        return raw
    return b"\r\n".join(kept) + b"\r\n" + body
