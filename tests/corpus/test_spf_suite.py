"""The openspf RFC 7208 test suite, run against ``check_spf`` with its zones served by real nsd.

Data: tests/data/spf-test-suite/ (see its README; the YAML is converted to JSON there because
PyYAML is not a dependency). Each scenario's ``zonedata`` becomes zones of one throwaway nsd on
loopback; every test of the scenario is checked against the suite's ``result`` (one value or a
list of acceptable ones) and, where given, its ``explanation``.

How ``zonedata`` is served (the schema is http://www.openspf.org/Test_Suite/Schema, and
pyspf's own driver, test/testspf.py, is the reference for its corner cases):

- names live in a root zone (``.``), so any name of the scenario can be served as written;
- ``SPF`` records are served as type SPF and, unless the name has ``TXT`` entries, also as TXT
  (the suite header: "auto-magic duplication of SPF to TXT records"); ``TXT: NONE`` only
  stops that duplication;
- ``TIMEOUT`` means: a query for a type not listed before it times out. nsd cannot time out,
  but answers SERVFAIL for a zone configured without data, which is what a resolver reports
  as a temporary error just like a timeout. A name whose TXT records precede ``TIMEOUT`` is
  served normally (SPF evaluation only asks for TXT there); any other such name becomes a
  SERVFAIL zone, and names below it that have data get zones of their own;
- two identical TXT/SPF entries (the "two records" tests) are served as two distinct RRs by
  splitting the second into two character-strings, which SPF joins back (RFC 7208 section
  3.3) — nsd would otherwise merge them;
- a TXT/SPF entry given as an empty list (a record with no character-string, which the zone
  file syntax cannot express) is left out: pyspf's driver ignores it too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.dns import DnsServer, quote_strings

from dsguard.auth.resolver import Resolver
from dsguard.auth.spf import DEFAULT_FAIL_EXPLANATION, check_spf

DATA = Path(__file__).resolve().parents[1] / "data" / "spf-test-suite"
SUITE = json.loads((DATA / "rfc7208-tests.json").read_text(encoding="utf-8"))

#: Tests not generated at all, with the reason (zone data a real DNS server cannot serve).
#: Empty: every zonedata form of the suite is served as described in the module docstring.
EXCLUDED: dict[str, str] = {}

#: Tests where pyspf (through our resolver) gives a result the suite does not accept, with the
#: reason. Asserted to disagree, so a change in pyspf or in our DNS layer is noticed. Empty:
#: pyspf 2.0.14 agrees with all 203 tests, explanations included.
EXPECTED_DISAGREEMENTS: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    scenario: int
    name: str
    data: Mapping[str, Any]


def _cases() -> list[Case]:
    return [
        Case(index, name, data)
        for index, scenario in enumerate(SUITE["scenarios"])
        for name, data in scenario["tests"].items()
    ]


ALL_CASES = _cases()
RUN_CASES = [case for case in ALL_CASES if case.name not in EXCLUDED]


# -- zonedata → nsd zones -----------------------------------------------------------------

_LABEL_SAFE = re.compile(r"[A-Za-z0-9_-]")


def _label(text: str) -> str:
    out = []
    for ch in text:
        if _LABEL_SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"\\{b:03d}" for b in ch.encode("utf-8"))
    return "".join(out)


def _absolute(name: str) -> str:
    name = name.rstrip(".")
    if not name:
        return "."
    return ".".join(_label(part) for part in name.split(".")) + "."


def _txt_rdata(value: str | list[str], *, split: bool) -> str | None:
    strings = [value] if isinstance(value, str) else list(value)
    if not strings:
        return None
    if split:  # a distinct RR with the same joined text (see the module docstring)
        first = strings[0]
        strings = [first[:1], first[1:], *strings[1:]]
    chunks: list[bytes] = []
    for text in strings:
        raw = text.encode("utf-8")
        chunks.extend([raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""])
    return quote_strings(chunks)


def _rdata(rtype: str, value: Any, *, split: bool = False) -> str | None:
    if rtype in ("TXT", "SPF"):
        return _txt_rdata(value, split=split)
    if rtype == "MX":
        preference, exchange = value
        return f"{int(preference)} {_absolute(str(exchange))}"
    if rtype in ("PTR", "CNAME"):
        return _absolute(str(value))
    return str(value)  # A, AAAA


def _entries(records: list[Any]) -> tuple[list[tuple[str, Any]], bool, bool]:
    """(typed entries incl. generated TXT, has TIMEOUT, TXT answered before TIMEOUT)."""
    typed: list[tuple[str, Any]] = []
    has_txt = any(isinstance(r, dict) and "TXT" in r for r in records)
    timeout = False
    txt_before_timeout = False
    for record in records:
        if record == "TIMEOUT":
            timeout = True
            continue
        for rtype, value in record.items():
            if value == "NONE":
                continue
            if rtype == "TXT" and not timeout:
                txt_before_timeout = True
            typed.append((rtype, value))
    if not has_txt:
        generated = [("TXT", v) for t, v in typed if t == "SPF"]
        typed.extend(generated)
    return typed, timeout, txt_before_timeout


def scenario_zones(zonedata: Mapping[str, list[Any]]) -> tuple[dict[str, list[str]], list[str]]:
    """(zones for :class:`DnsServer`, SERVFAIL zones) serving one scenario's ``zonedata``."""
    by_name: dict[str, list[str]] = {}
    servfail: list[str] = []
    for raw_name, records in zonedata.items():
        name = _absolute(raw_name.lower())
        typed, timeout, txt_before = _entries(records)
        if timeout and not txt_before:
            servfail.append(name)
            continue
        lines = by_name.setdefault(name, [])
        seen: set[tuple[str, str]] = set()
        for rtype, value in typed:
            key = (rtype, json.dumps(value))
            rdata = _rdata(rtype, value, split=key in seen)
            seen.add(key)
            if rdata is not None:
                lines.append(f"{rtype} {rdata}")
    zones: dict[str, list[str]] = {".": []}
    for name, lines in by_name.items():
        under_servfail = any(name != s and name.endswith("." + s) for s in servfail)
        if under_servfail:
            if any(line.startswith("CNAME ") for line in lines):
                raise ValueError(f"{name}: a CNAME cannot be a zone apex")
            zones[name] = [f"@ 300 IN {line}" for line in lines]
        else:
            zones["."].extend(f"{name} 300 IN {line}" for line in lines)
    return zones, servfail


# -- one nsd per scenario, reused by its tests ------------------------------------------


class _ScenarioServers:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.current: tuple[int, DnsServer] | None = None

    def resolver_for(self, scenario: int) -> Resolver:
        if self.current is None or self.current[0] != scenario:
            self.close()
            zones, servfail = scenario_zones(SUITE["scenarios"][scenario]["zonedata"])
            server = DnsServer(zones, self.workdir / f"scenario{scenario}", servfail_zones=servfail)
            self.current = (scenario, server.start())
        return Resolver([self.current[1].nameserver()], timeout=2.0, lifetime=4.0)

    def close(self) -> None:
        if self.current is not None:
            self.current[1].stop()
            self.current = None


@pytest.fixture(scope="module")
def scenario_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_ScenarioServers]:
    servers = _ScenarioServers(tmp_path_factory.mktemp("spf-suite"))
    try:
        yield servers
    finally:
        servers.close()


def _agrees(case: Case, result: str, explanation: str) -> tuple[bool, str]:
    expected = case.data["result"]
    accepted = expected if isinstance(expected, list) else [expected]
    if result not in accepted:
        return False, f"result {result!r}, suite accepts {accepted}"
    want = case.data.get("explanation")
    if want is not None and result == "fail":
        wanted = DEFAULT_FAIL_EXPLANATION if want == "DEFAULT" else want
        if explanation != wanted:
            return False, f"explanation {explanation!r}, suite wants {wanted!r}"
    return True, ""


@pytest.mark.parametrize(
    "case", RUN_CASES, ids=[f"{c.scenario:02d}-{c.name}" for c in RUN_CASES]
)
def test_rfc7208_suite(case: Case, scenario_servers: _ScenarioServers) -> None:
    resolver = scenario_servers.resolver_for(case.scenario)
    data = case.data
    got = check_spf(data["host"], data["mailfrom"], data["helo"], resolver)
    agrees, why = _agrees(case, got.result, got.explanation)
    if case.name in EXPECTED_DISAGREEMENTS:
        assert not agrees, f"{case.name} agrees with the suite now: drop it from the dict"
    else:
        assert agrees, f"{case.name} (spec {data.get('spec')}): {why}"


def test_suite_bookkeeping() -> None:
    names = [c.name for c in ALL_CASES]
    assert len(names) == len(set(names)) == 203  # test ids are unique across scenarios
    assert set(EXCLUDED) <= set(names)
    assert set(EXPECTED_DISAGREEMENTS) <= set(names)
    assert not set(EXCLUDED) & set(EXPECTED_DISAGREEMENTS)
    assert len(EXCLUDED) < 0.1 * len(names)
    assert len(EXPECTED_DISAGREEMENTS) < 0.05 * len(names)


def test_json_matches_the_yaml_it_was_converted_from() -> None:
    raw = (DATA / "rfc7208-tests.yml").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SUITE["source_sha256"]
