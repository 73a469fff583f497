"""Turn an inventory into the change: a PowerShell 7 script, a dsguard config, KQL queries.

``enable-rejectdirectsend.ps1`` follows Microsoft's order (Exchange Team, "Introducing more
control over Direct Send in Exchange Online"; the dszp/Microsoft-Direct-Send-Reporting
cookbook): connect, check the accepted domains, create one Partner inbound connector per group
of legitimate sources - restricted to their IPs (``-RestrictDomainsToIPAddresses``) or to a
certificate name (``-RestrictDomainsToCertificate``, ``-RequireTls``), ``-SenderDomains`` set
to the accepted domains and never ``*`` (with a restrict flag, ``*`` breaks all inbound mail) -,
the transport-rule alternative for vendors with neither a static IP nor a certificate (Microsoft's
FAQ: do not rely on RejectDirectSend for those), then ``Set-OrganizationConfig -RejectDirectSend
$true`` and its verification. PowerShell 7 because Windows PowerShell 5.1 fails on that cmdlet
("Unable to find type [short]").

Only ``device_or_app`` and ``third_party_service`` sources become connectors. Forwarders get a
"turn on SRS" note (a connector would let anyone on the forwarding host send as the
organisation). Suspicious and malicious sources never appear in a connector or the dsguard
config, and an IP shared with one of them is dropped from every connector.

SECURITY: the inventory JSON may have been edited and its strings come from hostile exports.
Everything written into code is validated first (IP addresses by ``ipaddress``, domains and
certificate names by dsguard's config models, which also refuse ``*``); connector names are cut
to a safe alphabet; every PowerShell value is a single-quoted literal with all four quote
characters PowerShell accepts doubled (``'``, ``‘``, ``’``, ``‚``, ``‛``); comments keep printable
characters only, so a HELO or subject cannot end a comment line and start a command. TOML and
KQL strings are escaped for their syntax.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dsguard import __version__
from dsguard.config import Connector, Organization
from dsguard.m365.inventory import (
    CERTIFICATE_CONNECTOR,
    DEVICE,
    FORWARDING,
    IP_CONNECTOR,
    LEGITIMATE,
    SCHEMA,
    SRS,
    THIRD_PARTY,
    TRANSPORT_RULE,
)

SCRIPT_NAME = "enable-rejectdirectsend.ps1"
CONFIG_NAME = "dsguard.toml"
KQL_NAME = "hunting.kql"
MAX_INVENTORY_BYTES = 256 * 1024 * 1024
NAME_PREFIX = "dsguard - "
_NAME_CHARS = re.compile(r"[^A-Za-z0-9 ._()/-]+")
_PS_QUOTES = re.compile("['\u2018\u2019\u201a\u201b]")


class PlanError(Exception):
    """The inventory cannot be turned into a plan; the message is one line for the user."""


@dataclass(slots=True)
class PlannedConnector:
    name: str
    kind: str  # IP_CONNECTOR or CERTIFICATE_CONNECTOR
    ips: list[str] = field(default_factory=list)
    certificate: str | None = None
    shared_certificate: bool = False
    evidence: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PlannedRule:
    service: str
    evidence: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    accepted_domains: list[str]
    domains_inferred: bool
    home_countries: list[str]
    connectors: list[PlannedConnector] = field(default_factory=list)
    transport_rules: list[PlannedRule] = field(default_factory=list)
    srs: list[str] = field(default_factory=list)
    not_allow_listed: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)


# -- loading ---------------------------------------------------------------------------------


def is_inventory_file(path: str | Path) -> bool:
    """True when ``path`` starts like an inventory document written by dsguard."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b'"schema"' in head and SCHEMA.split("/")[0].encode() in head


def load_inventory(path: str | Path) -> dict[str, Any]:
    try:
        size = os.stat(path).st_size
        if size > MAX_INVENTORY_BYTES:
            raise PlanError(f"{path}: larger than {MAX_INVENTORY_BYTES // 2**20} MiB: not an "
                            "inventory written by dsguard")
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except PlanError:
        raise
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise PlanError(f"{path}: not an inventory written by 'dsguard m365 inventory --format "
                        f"json' (expected \"schema\": \"{SCHEMA}\")")
    return doc


# -- building --------------------------------------------------------------------------------


def safe_name(text: str, limit: int = 64) -> str:
    """A connector / rule name: letters, digits, space and ``._()/-`` only, at most 64 chars."""
    cleaned = " ".join(_NAME_CHARS.sub(" ", text).split())
    return cleaned[:limit].rstrip() or "connector"


def _ip(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    return str(address)


def _strings(value: object, limit: int = 100) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:limit] if isinstance(v, str)]


def _evidence(source: dict[str, Any]) -> str:
    ips = ", ".join(_strings(source.get("ips")))
    helos = _strings(source.get("helos"))
    senders = source.get("senders")
    first_sender = ""
    if isinstance(senders, list) and senders and isinstance(senders[0], dict):
        first_sender = str(senders[0].get("address", ""))
    subjects = source.get("subjects")
    subject = ""
    if isinstance(subjects, list) and subjects and isinstance(subjects[0], dict):
        subject = str(subjects[0].get("subject", ""))
    parts = [ips + (f" (HELO {helos[0]})" if helos else "")]
    parts.append(f"{source.get('messages', 0)} messages, "
                 f"{source.get('first_seen') or '?'} to {source.get('last_seen') or '?'}")
    if first_sender:
        parts.append(f"sender {first_sender}")
    if subject:
        parts.append(f"e.g. subject {subject!r}")
    reasons = _strings(source.get("reasons"), 4)
    if reasons:
        parts.append("; ".join(reasons))
    return " - ".join(parts)


def build_plan(doc: dict[str, Any]) -> Plan:
    org = doc.get("organization")
    if not isinstance(org, dict):
        raise PlanError("inventory has no organization section")
    try:
        organization = Organization(
            accepted_domains=tuple(_strings(org.get("accepted_domains"), 1000)),
            home_countries=tuple(_strings(org.get("home_countries"), 300)),
        )
    except ValidationError as exc:
        raise PlanError(f"inventory organization: {exc.errors()[0]['msg']}") from None
    domains = list(organization.accepted_domains)
    if not domains:
        raise PlanError("the inventory names no accepted domains: run the inventory with "
                        "--accepted-domain (or --config) first")
    plan = Plan(domains, bool(org.get("accepted_domains_inferred")),
                list(organization.home_countries))
    plan.inputs = [str(i.get("path", "")) for i in doc.get("inputs", []) if isinstance(i, dict)]
    sources = [s for s in doc.get("sources", []) if isinstance(s, dict)]

    # IPs of every source that is not legitimate: never allow-listed, even when a legitimate
    # source (another HELO) shares the address.
    tainted: set[str] = set()
    for s in sources:
        if s.get("class") not in LEGITIMATE:
            plan.not_allow_listed[str(s.get("class"))] = \
                plan.not_allow_listed.get(str(s.get("class")), 0) + 1
            tainted.update(ip for ip in map(_ip, s.get("ips", [])) if ip)

    groups: dict[str, PlannedConnector] = {}
    for s in sources:
        cls = s.get("class")
        fix = s.get("fix")
        if cls not in LEGITIMATE or not s.get("rds_blocks") or not isinstance(fix, dict):
            continue
        kind = fix.get("kind")
        evidence = _evidence(s)
        service = s.get("service") if isinstance(s.get("service"), str) else None
        if cls == FORWARDING or kind == SRS:
            plan.srs.append(evidence)
            continue
        if kind == TRANSPORT_RULE:
            name = service or "vendor"
            rule = next((r for r in plan.transport_rules if r.service == name), None)
            if rule is None:
                rule = PlannedRule(name)
                plan.transport_rules.append(rule)
            rule.evidence.append(evidence)
            continue
        if cls not in (DEVICE, THIRD_PARTY) or kind not in (IP_CONNECTOR, CERTIFICATE_CONNECTOR):
            plan.warnings.append(f"source {s.get('id')!r}: unknown fix {kind!r}, skipped")
            continue
        if kind == CERTIFICATE_CONNECTOR:
            cert = fix.get("certificate")
            key = f"cert:{cert}"
            name = f"{NAME_PREFIX}{service or cert}"
        elif cls == THIRD_PARTY:
            cert = None
            key = f"service:{service}"
            name = f"{NAME_PREFIX}{service or 'third-party service'}"
        else:
            cert = None
            key = "devices"
            name = f"{NAME_PREFIX}Direct Send devices and applications"
        connector = groups.get(key)
        if connector is None:
            connector = groups[key] = PlannedConnector(
                safe_name(name), kind, certificate=cert if isinstance(cert, str) else None,
                shared_certificate=bool(s.get("service_shared_certificate")),
            )
        connector.evidence.append(evidence)
        if kind == IP_CONNECTOR:
            for raw in s.get("ips", []):
                ip = _ip(raw)
                if ip is None:
                    plan.warnings.append(f"source {s.get('id')!r}: {raw!r} is not an IP address, "
                                         "skipped")
                elif ip in tainted:
                    plan.warnings.append(f"{ip} also sent suspicious or malicious mail: not "
                                         "allow-listed")
                elif ip not in connector.ips:
                    connector.ips.append(ip)
    names: set[str] = set()
    for connector in groups.values():
        if connector.kind == IP_CONNECTOR and not connector.ips:
            plan.warnings.append(f"connector {connector.name!r} dropped: no IP left")
            continue
        base, n = connector.name, 2
        while connector.name in names:
            connector.name = safe_name(f"{base[:58]} ({n})")
            n += 1
        names.add(connector.name)
        _validate_connector(connector, domains)
        plan.connectors.append(connector)
    return plan


def _validate_connector(connector: PlannedConnector, domains: list[str]) -> None:
    """Through dsguard's own Connector model: IP ranges, certificate name, no '*'."""
    try:
        Connector(
            name=connector.name,
            sender_ip_ranges=tuple(connector.ips) if connector.kind == IP_CONNECTOR else (),
            tls_certificate_name=connector.certificate
            if connector.kind == CERTIFICATE_CONNECTOR else None,
            sender_domains=tuple(domains),
        )
    except ValidationError as exc:
        raise PlanError(f"connector {connector.name!r}: {exc.errors()[0]['msg']}") from None


# -- PowerShell ------------------------------------------------------------------------------


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted string literal holding exactly ``value``.

    PowerShell ends a single-quoted string at any of ' U+2018 U+2019 U+201A U+201B and reads
    a doubled one as the character itself; nothing else is special inside (no ``$``
    expansion, no backtick escapes). Non-printable characters are replaced so a literal never
    spans lines.
    """
    text = "".join(c if c.isprintable() else "?" for c in value)
    return "'" + _PS_QUOTES.sub(lambda m: m.group(0) * 2, text) + "'"


def ps_comment(text: str, limit: int = 300) -> str:
    """Text for a ``#`` comment line: printable characters only (no line breaks of any kind,
    which would end the comment), no block-comment markers."""
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    cleaned = cleaned.replace("<#", "< #").replace("#>", "# >")
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _ps_list(values: Iterable[str]) -> str:
    return ", ".join(ps_quote(v) for v in values)


def powershell_script(plan: Plan, *, generated: str | None = None) -> str:
    when = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    domains = _ps_list(plan.accepted_domains)
    lines: list[str] = []
    add = lines.append
    add("#Requires -Version 7")
    add("#Requires -Modules ExchangeOnlineManagement")
    add("<#")
    add(".SYNOPSIS")
    add(f"    Switch on RejectDirectSend for {ps_comment(', '.join(plan.accepted_domains))} "
        "without breaking legitimate Direct Send senders.")
    add(".DESCRIPTION")
    add(f"    Generated by dsguard {__version__} ('dsguard m365 plan') on {when}.")
    add("    Review every step before running it. Run it first with -WhatIf: nothing is changed.")
    add("    PowerShell 7 is required: Windows PowerShell 5.1 fails on")
    add("    'Set-OrganizationConfig -RejectDirectSend' with 'Unable to find type [short]'.")
    add(".PARAMETER ConnectorsOnly")
    add("    Create the connectors (and rules) but leave RejectDirectSend as it is.")
    add("#>")
    add("[CmdletBinding(SupportsShouldProcess = $true)]")
    add("param(")
    add("    [switch] $ConnectorsOnly")
    add(")")
    add("Set-StrictMode -Version Latest")
    add("$ErrorActionPreference = 'Stop'")
    add("")
    add("# Step 1 - Connect to Exchange Online. Needs the Organization Management role")
    add("# ('Organization Configuration'), as Set-OrganizationConfig -RejectDirectSend does.")
    add("Connect-ExchangeOnline -ShowBanner:$false")
    add("")
    add("# Step 2 - The accepted domains the connectors may send as. They come from the")
    add("# inventory; each must be an accepted domain of this tenant, else stop here.")
    if plan.domains_inferred:
        add("# NOTE: the inventory inferred these domains from the recipients: check them.")
    add(f"$AcceptedDomains = @({domains})")
    add("$tenantDomains = @(Get-AcceptedDomain | ForEach-Object { $_.DomainName.ToString().ToLowerInvariant() })")
    add("foreach ($domain in $AcceptedDomains) {")
    add("    if ($tenantDomains -notcontains ($domain -replace '^\\*\\.', '')) {")
    add("        throw \"$domain is not an accepted domain of this tenant: fix the inventory \" +")
    add("            '(--accepted-domain) and plan again'")
    add("    }")
    add("}")
    add("")
    add("# Step 3 - One Partner inbound connector per group of legitimate sources. Mail that")
    add("# matches a connector is attributed to it and is no longer 'Direct Send'. The restrict")
    add("# flag also makes Exchange reject mail claiming these domains from any other IP or")
    add("# certificate on this connector's path. -SenderDomains lists your accepted domains:")
    add("# never '*', which with a restrict flag would break all inbound mail.")
    if not plan.connectors:
        add("# (No legitimate source needs a connector.)")
    for n, c in enumerate(plan.connectors, 1):
        add("")
        add(f"# Connector {n}: {ps_comment(c.name)}")
        for line in c.evidence[:50]:
            add(f"#   {ps_comment(line)}")
        if len(c.evidence) > 50:
            add(f"#   ... and {len(c.evidence) - 50} more sources (see the inventory)")
        if c.kind == CERTIFICATE_CONNECTOR and c.shared_certificate:
            add("#   WARNING: this certificate is shared by all the vendor's customers. Only safe")
            add("#   with DMARC p=reject or p=quarantine (pct=100) on your domains.")
        name = ps_quote(c.name)
        add("$existing = $null")
        add(f"try {{ $existing = Get-InboundConnector -Identity {name} -ErrorAction Stop }} "
            "catch { $existing = $null }")
        add("if ($existing) {")
        add(f"    Write-Warning ({name} + ' exists already: left unchanged, compare it with this plan')")
        add(f"}} elseif ($PSCmdlet.ShouldProcess({name}, 'New-InboundConnector')) {{")
        add(f"    New-InboundConnector -Name {name} `")
        add("        -ConnectorType Partner `")
        add(f"        -SenderDomains {domains} `")
        if c.kind == CERTIFICATE_CONNECTOR and c.certificate:
            add(f"        -TlsSenderCertificateName {ps_quote(c.certificate)} `")
            add("        -RestrictDomainsToCertificate $true `")
            add("        -RequireTls $true `")
        else:
            add(f"        -SenderIPAddresses {_ps_list(c.ips)} `")
            add("        -RestrictDomainsToIPAddresses $true `")
        add(f"        -Comment {ps_quote('Created by dsguard m365 plan ' + when)} `")
        add("        -Enabled $true")
        add("}")
    vendors = [r.service for r in plan.transport_rules]
    if plan.transport_rules:
        add("")
        add("# Step 3b - Vendors with neither a static IP nor their own TLS certificate cannot be")
        add("# matched by a connector. Microsoft's FAQ: do not rely on RejectDirectSend for them;")
        add("# use a mail flow rule that quarantines mail from outside the organisation claiming")
        add("# your domains, with an exception for the X-header the vendor adds. Ask the vendor")
        add("# for that header and fill it in below; a rule without it is skipped.")
        for n, rule in enumerate(plan.transport_rules, 1):
            add(f"# Vendor {n}: {ps_comment(rule.service)}")
            for line in rule.evidence[:20]:
                add(f"#   {ps_comment(line)}")
            add(f"$VendorHeaderName{n} = ''   # e.g. 'X-Vendor-Id' (ask the vendor)")
            add(f"$VendorHeaderValue{n} = ''  # the value the vendor puts in it")
            rule_name = ps_quote(safe_name(f"{NAME_PREFIX}quarantine own-domain mail from "
                                           f"outside except {rule.service}"))
            add(f"if (-not $VendorHeaderName{n} -or -not $VendorHeaderValue{n}) {{")
            add(f"    Write-Warning ('No X-header for ' + {ps_quote(rule.service)} + ': transport rule skipped')")
            add(f"}} elseif ($PSCmdlet.ShouldProcess({rule_name}, 'New-TransportRule')) {{")
            add(f"    New-TransportRule -Name {rule_name} `")
            add("        -FromScope NotInOrganization `")
            add(f"        -SenderDomainIs {domains} `")
            add(f"        -ExceptIfHeaderContainsMessageHeader $VendorHeaderName{n} `")
            add(f"        -ExceptIfHeaderContainsWords $VendorHeaderValue{n} `")
            add("        -Quarantine $true `")
            add("        -Priority 0 `")
            add("        -StopRuleProcessing $true")
            add("}")
    if plan.srs:
        add("")
        add("# Forwarders without SRS: RejectDirectSend will reject mail they forward back to you")
        add("# with your own envelope sender (Microsoft's known issue). Ask each forwarder to")
        add("# rewrite the envelope sender (SRS). No connector is planned: it would let anyone on")
        add("# the forwarding host send as your domain.")
        for line in plan.srs[:50]:
            add(f"#   {ps_comment(line)}")
    if plan.not_allow_listed:
        counts = ", ".join(f"{n} {cls}" for cls, n in sorted(plan.not_allow_listed.items()))
        add("")
        add(f"# Not allow-listed: {ps_comment(counts)} sources. RejectDirectSend will reject their")
        add("# mail." + (" Review the suspicious ones in the inventory report in case one is yours."
                       if plan.not_allow_listed.get("suspicious") else ""))
    add("")
    add("# Step 4 - Switch RejectDirectSend on: anonymous mail whose envelope sender is an")
    add("# accepted domain and that matches no connector is refused with")
    add("# '550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization")
    add("# from unauthorized sources'. It takes up to 30 minutes to apply everywhere.")
    add(f"$VendorsWithoutConnector = @({_ps_list(vendors)})")
    add("if ($ConnectorsOnly) {")
    add("    Write-Host 'RejectDirectSend left unchanged (-ConnectorsOnly).'")
    add("} elseif ($VendorsWithoutConnector.Count -gt 0) {")
    add("    Write-Warning ('RejectDirectSend left unchanged: it would reject mail from ' +")
    add("        ($VendorsWithoutConnector -join ', ') +")
    add("        ', which no connector can match. Move them to a static IP or certificate first.')")
    add("} elseif ($PSCmdlet.ShouldProcess('organization', 'Set-OrganizationConfig -RejectDirectSend $true')) {")
    add("    Set-OrganizationConfig -RejectDirectSend $true")
    add("}")
    add("")
    add("# Step 5 - Verify. RejectDirectSend must read True (after up to 30 minutes). Then check")
    add("# that each partner's mail hits its connector: Get-MessageTraceV2 -SenderAddress <a sender>")
    add("# | Get-MessageTraceDetailV2 shows the connector of the Receive event (both")
    add("# -MessageTraceId and -RecipientAddress are needed), or run hunting.kql's third query.")
    add("Get-OrganizationConfig | Select-Object Identity, RejectDirectSend")
    add("Get-InboundConnector | Where-Object { $_.Name -like 'dsguard - *' } |")
    add("    Select-Object Name, Enabled, ConnectorType, SenderDomains, SenderIPAddresses,")
    add("        TlsSenderCertificateName, RestrictDomainsToIPAddresses, RestrictDomainsToCertificate")
    return "\n".join(lines) + "\n"


# -- dsguard.toml ----------------------------------------------------------------------------


def toml_str(value: str) -> str:
    """A TOML basic string (TOML 1.0: escape quote, backslash and control characters)."""
    out = ['"']
    for c in value:
        code = ord(c)
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04X}" if not 0xD800 <= code <= 0xDFFF else "\\uFFFD")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


def _toml_comment(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:300]


def dsguard_config(plan: Plan, *, generated: str | None = None) -> str:
    when = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "audit" if plan.transport_rules else "on"
    lines = [
        f"# dsguard configuration generated by 'dsguard m365 plan' (dsguard {__version__}, {when}).",
        "# The same allow-list as enable-rejectdirectsend.ps1, for a self-hosted dsguard gateway or",
        "# Postfix policy service: mail claiming these domains is rejected unless it is",
        "# authenticated (SMTP AUTH) or comes through one of these connectors.",
        "",
        "[organization]",
        f"accepted_domains = {_toml_list(plan.accepted_domains)}",
    ]
    if plan.domains_inferred:
        lines.append("# NOTE: inferred from the recipients by the inventory: check them.")
    lines.append(f"home_countries = {_toml_list(plan.home_countries)}")
    if plan.transport_rules:
        lines.append("# 'audit' (report only): vendors without a static IP or certificate still "
                     "send as you.")
    else:
        lines.append("# 'on' rejects like RejectDirectSend; 'audit' only reports what it would "
                     "reject.")
    lines.append(f"reject_direct_send = {toml_str(mode)}")
    for c in plan.connectors:
        lines.append("")
        for line in c.evidence[:20]:
            lines.append(f"# {_toml_comment(line)}")
        lines.append("[[connectors]]")
        lines.append(f"name = {toml_str(c.name)}")
        if c.kind == CERTIFICATE_CONNECTOR and c.certificate:
            lines.append(f"tls_certificate_name = {toml_str(c.certificate)}")
        else:
            ranges = [f"{ip}/{32 if ':' not in ip else 128}" for ip in c.ips]
            lines.append(f"sender_ip_ranges = {_toml_list(ranges)}")
        lines.append(f"sender_domains = {_toml_list(plan.accepted_domains)}")
    return "\n".join(lines) + "\n"


# -- KQL -------------------------------------------------------------------------------------


def kql_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kql_own(column: str, plan: Plan) -> str:
    exact = [d for d in plan.accepted_domains if not d.startswith("*.")]
    parents = [d[1:] for d in plan.accepted_domains if d.startswith("*.")]
    parts = [f"{column} in~ (AcceptedDomains)"] if exact else []
    parts += [f"{column} endswith {kql_str(p)}" for p in parents]
    parts += [f"{column} =~ {kql_str(p[1:])}" for p in parents]
    return "(" + " or ".join(parts) + ")" if parts else "false"


def hunting_kql(plan: Plan, *, generated: str | None = None) -> str:
    when = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    exact = [d for d in plan.accepted_domains if not d.startswith("*.")]
    ips = [ip for c in plan.connectors for ip in c.ips]
    p1 = _kql_own("SenderMailFromDomain", plan)
    p2 = _kql_own("SenderFromDomain", plan)
    domains = "dynamic([" + ", ".join(kql_str(d) for d in exact) + "])"
    return f"""// Defender XDR Advanced Hunting queries by 'dsguard m365 plan' (dsguard {__version__}, {when}).
// Run each query separately (Microsoft Defender portal > Hunting > Advanced hunting).
// EmailEvents keeps 30 days; AuthenticationDetails holds SPF, DKIM, DMARC and CompAuth.

// 1. Direct Send inventory: inbound mail that matched no connector, from a sender IP, with one
//    of your domains as envelope sender (what RejectDirectSend rejects) or header From.
//    Microsoft's query (Exchange Team, "Direct Send vs sending directly to an Exchange Online
//    tenant"), narrowed to your accepted domains and summarised by sender IP.
let AcceptedDomains = {domains};
EmailEvents
| where Timestamp > ago(30d)
| where EmailDirection == "Inbound"
| where isempty(Connectors) and isnotempty(SenderIPv4)
| where {p1} or {p2}
| extend Auth = parse_json(AuthenticationDetails)
| summarize Messages = count(), FirstSeen = min(Timestamp), LastSeen = max(Timestamp),
    RejectedByRejectDirectSend = countif({p1}),
    EnvelopeSenders = make_set(SenderMailFromAddress, 10), FromAddresses = make_set(SenderFromAddress, 10),
    Recipients = dcount(RecipientEmailAddress), Subjects = make_set(Subject, 5),
    SpfPass = countif(tostring(Auth.SPF) == "pass"),
    DmarcPass = countif(tostring(Auth.DMARC) in ("pass", "bestguesspass"))
    by SenderIPv4
| order by Messages desc

// 2. Direct Send spoofing: self-addressed own-domain mail that matched no connector and fails
//    both SPF and DMARC (the 2025 campaign: users "emailing themselves" voicemail/fax lures).
let AcceptedDomains = {domains};
EmailEvents
| where Timestamp > ago(30d)
| where EmailDirection == "Inbound"
| where isempty(Connectors) and isnotempty(SenderIPv4)
| where {p1} or {p2}
| where SenderMailFromAddress =~ RecipientEmailAddress or SenderFromAddress =~ RecipientEmailAddress
| extend Auth = parse_json(AuthenticationDetails)
| where tostring(Auth.SPF) in ("fail", "softfail") and tostring(Auth.DMARC) == "fail"
| project Timestamp, NetworkMessageId, SenderIPv4, SenderMailFromAddress, SenderFromAddress,
    RecipientEmailAddress, Subject, DeliveryAction, DeliveryLocation, LatestDeliveryLocation
| order by Timestamp desc

// 3. After creating the connectors: mail from the planned connector IPs that still matched no
//    connector (it would be rejected once RejectDirectSend is on).
let PlannedConnectorIPs = dynamic([{", ".join(kql_str(ip) for ip in ips)}]);
EmailEvents
| where Timestamp > ago(1d)
| where SenderIPv4 in (PlannedConnectorIPs)
| summarize Messages = count(), WithoutConnector = countif(isempty(Connectors)),
    SeenConnectors = make_set(Connectors, 5) by SenderIPv4
| order by WithoutConnector desc
"""


# -- writing ---------------------------------------------------------------------------------


def write_plan(plan: Plan, directory: Path, *, force: bool = False) -> list[Path]:
    """Write the three files; refuses to overwrite existing ones unless ``force``."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    files = {
        SCRIPT_NAME: powershell_script(plan, generated=generated),
        CONFIG_NAME: dsguard_config(plan, generated=generated),
        KQL_NAME: hunting_kql(plan, generated=generated),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlanError(f"{directory}: cannot create: {exc.strerror or exc}") from None
    existing = [name for name in files if (directory / name).exists()]
    if existing and not force:
        raise PlanError(f"{directory}: {', '.join(existing)} exist already (use --force to "
                        "overwrite)")
    written = []
    for name, text in files.items():
        target = directory / name
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except OSError as exc:
            raise PlanError(f"{target}: cannot write: {exc.strerror or exc}") from None
        written.append(target)
    return written
