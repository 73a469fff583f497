"""Releasing quarantined mail: one implementation for ``dsguard quarantine release`` and the
web UI.

A release marks the message released in the store and then enqueues its raw bytes, with the
original envelope, into the gateway's spool; the gateway's relay (which scans the spool every
``[gateway] relay_poll_interval`` seconds for entries written by other processes) delivers it
to the downstream server like any accepted message.

The status change comes first and is atomic in the database (``UPDATE ... WHERE status =
'held'``), so two admins releasing the same message at once queue it once: the loser gets
:class:`NotHeldError`. If the spool write then fails, the message stays marked released and
:class:`QueueError` says so; the raw bytes are still in the store for a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dsguard.gateway.spool import Spool
from dsguard.store import repository as repo
from dsguard.store.db import Store

__all__ = [
    "NotFoundError",
    "NotHeldError",
    "QueueError",
    "ReleaseError",
    "Released",
    "release",
]


class ReleaseError(Exception):
    """A release that did not happen (or half happened); the message is one line."""


class NotFoundError(ReleaseError):
    """No quarantined message with that id."""


class NotHeldError(ReleaseError):
    """The message is not held any more (released or deleted, perhaps by someone else)."""


class QueueError(ReleaseError):
    """Marked released, but the spool write failed: the message was not queued."""


@dataclass(frozen=True, slots=True)
class Released:
    qid: str
    spool_id: str  # the spool entry that carries it to the downstream


def release(store: Store, spool_dir: str | Path, qid: str, actor: str) -> Released:
    """Release ``qid``: mark it released (audited as ``actor``) and queue it in the spool.

    Raises :class:`NotFoundError`, :class:`NotHeldError` or :class:`QueueError`.
    """
    item = repo.get_quarantined(store, qid)
    if item is None:
        raise NotFoundError(f"no message {qid!r}")
    if item.status != "held" or item.raw is None:
        raise NotHeldError(f"{qid} is {item.status}")
    if not repo.mark_released(store, qid, actor):
        raise NotHeldError(f"{qid} is no longer held")
    try:
        entry = Spool(Path(spool_dir)).enqueue(
            item.raw, item.mail_from, item.rcpt_to, {"released_from": qid}
        )
    except (OSError, ValueError) as exc:
        raise QueueError(
            f"{qid} marked released but could not be queued ({exc}); "
            f"download it with 'dsguard quarantine show --raw {qid}'"
        ) from exc
    return Released(qid, entry.id)
