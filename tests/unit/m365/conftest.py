"""Shared fixtures for the m365 tests: the fixture exports, their expectations, the config."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dsguard.config import Config, load_config
from dsguard.m365.formats import ExportReader
from dsguard.m365.inventory import run_inventory

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data" / "m365"
CONFIG = DATA / "contoso.toml"


def load_expected() -> dict[str, Any]:
    with (DATA / "expected.toml").open("rb") as fh:
        return tomllib.load(fh)


def load_make_exports() -> ModuleType:
    spec = importlib.util.spec_from_file_location("m365_make_exports", DATA / "make_exports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses resolve their annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def expected() -> dict[str, Any]:
    return load_expected()


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(CONFIG)


@pytest.fixture(scope="session")
def make_exports() -> ModuleType:
    return load_make_exports()


Inventory = Callable[..., tuple[dict[str, Any], ExportReader]]


@pytest.fixture(scope="session")
def inventory(config: Config) -> Inventory:
    """Run the inventory over paths (relative to tests/data/m365 or absolute)."""

    def run(paths: Sequence[str | Path], cfg: Config | None = None) -> tuple[dict[str, Any], ExportReader]:
        full = [str(p if Path(p).is_absolute() else DATA / p) for p in paths]
        return run_inventory(cfg or config, full)

    return run
