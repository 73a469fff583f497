"""Persistent storage: quarantine, events, audit log, users. SQLite by default, PostgreSQL by URL.

``open_store(url)`` gives a :class:`Store`; the functions in :mod:`dsguard.store.repository`
read and write it.
"""

from dsguard.store.db import DEFAULT_URL, Store, open_store

__all__ = ["DEFAULT_URL", "Store", "open_store"]
