"""LIMIT_* and MIME_DEFECT: hard limits that were hit and broken structure. A limit is a
finding, never a crash: the message is still judged on what was read."""

from __future__ import annotations

from collections.abc import Iterator

from dsguard.checks.base import Facts, Hit


def check(f: Facts) -> Iterator[Hit]:
    msg = f.message
    for finding_id, detail in msg.limit_hits + msg.body.limit_hits:
        yield Hit(finding_id, detail)
    defects = list(msg.header_defects) + msg.body.defects
    if defects:
        yield Hit(
            "MIME_DEFECT",
            f"broken message structure: {defects[0]}",
            "; ".join(dict.fromkeys(defects))[:240],
        )
