"""Helpers shared by the CLI commands: config loading with one-line errors, the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dsguard.cli.errors import fail_config
from dsguard.config import Config, load_config
from dsguard.errors import ConfigError

if TYPE_CHECKING:
    from dsguard.store.db import Store


def config_or_exit(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail_config(exc)


def store_or_exit(cfg: Config) -> Store:
    # Imported here: SQLAlchemy and alembic cost ~0.3 s, which `dsguard scan` should not pay.
    from dsguard.store.db import open_store

    try:
        return open_store(cfg.storage.url)
    except ConfigError as exc:
        fail_config(exc)
