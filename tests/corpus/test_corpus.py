"""The corpus: every case scanned with its config and compared with the expectations in
expected.toml, which were written down before the engine existed (see README.md)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from dsguard.config import Config, load_config
from dsguard.mail.source import RawMessage, iter_messages
from dsguard.model import Level, ScanResult
from dsguard.scan import Scanner

HERE = Path(__file__).parent
CASES = tomllib.loads((HERE / "expected.toml").read_text())["case"]


@cache
def _config(name: str) -> Config:
    if name == "none":
        return load_config()
    return load_config(HERE / "configs" / f"{name}.toml")


@cache
def _scanner(name: str) -> Scanner:
    return Scanner(_config(name))


def _scan(case: dict[str, Any]) -> ScanResult:
    path = HERE / "cases" / case["file"]
    (item,) = list(iter_messages([str(path)], max_message_bytes=50 * 1024 * 1024))
    assert isinstance(item, RawMessage), item
    result = _scanner(case["config"]).scan(item)
    assert result.verdict is not None
    return result


def test_every_case_file_has_an_expectation() -> None:
    files = {p.name for p in (HERE / "cases").glob("*.eml")}
    assert files == {c["file"] for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c["file"].removesuffix(".eml") for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    result = _scan(case)
    verdict = result.verdict
    assert verdict is not None
    ids = set(verdict.finding_ids())
    explain = (
        f"{case['file']}: {verdict.level} {verdict.score} "
        + ", ".join(f"{f.id}={f.score:g}" for f in verdict.findings)
        + f"\nwhy: {case.get('why', '')}"
    )
    expected = case["verdict"]
    if expected == "flagged":
        assert verdict.level in (Level.SUSPICIOUS, Level.MALICIOUS), explain
    else:
        assert verdict.level.value == expected, explain
    assert verdict.direct_send is case["direct_send"], explain
    missing = set(case.get("must", [])) - ids
    assert not missing, f"missing {sorted(missing)}\n{explain}"
    unwanted = set(case.get("must_not", [])) & ids
    assert not unwanted, f"unexpected {sorted(unwanted)}\n{explain}"
    for url in case.get("urls", []):
        assert url in verdict.iocs.urls, f"{url} not in {verdict.iocs.urls}\n{explain}"
