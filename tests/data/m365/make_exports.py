"""Write the m365 inventory fixtures of this directory from one scenario (see README.md).

    .venv/bin/python tests/data/m365/make_exports.py          # rewrite the committed fixtures

Every export is built from the column layouts documented in the project's format notes
(message trace, Enhanced summary / Extended reports, EmailEvents, Graph exchangeMessageTrace);
none is a real tenant export. Output is deterministic (fixed seed, fixed dates).

``write_big_message_trace(path, rows)`` streams a large Get-MessageTrace export with the same
kinds of traffic and a FIXED set of Direct Send sources, whatever the row count: the suite uses
it (20,000 rows) to check that memory does not grow with rows, bench/inventory.py for
1,000,000 rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "corpus" / "cases"
TENANT_ID = "5b3c1f0e-8a2d-4c6e-9f71-2d4e8a6b0c13"
EOP_SERVER = "BN8NAM11FT044"
DEFAULT_CONNECTOR = f"{EOP_SERVER}.eop-nam11.prod.protection.outlook.com\\Default {EOP_SERVER}"
DAYS = [datetime(2026, 3, d, tzinfo=UTC) for d in range(2, 7)]  # Mon 2 .. Fri 6 March 2026

ATTACK_IPS = [
    "139.28.36.117", "139.28.36.40", "139.28.36.201", "139.28.37.155", "139.28.37.44", "139.28.38.201",
    "139.28.38.19", "139.28.39.77", "139.28.39.12", "139.28.39.150", "139.28.41.23", "139.28.41.87",
]
USERS = ["joe", "anna", "lee", "mia", "sam", "kim", "ben", "eva", "tom", "zoe", "max", "ida"]


@dataclass
class Msg:
    when: datetime
    ip: str  # "" = submitted inside Exchange Online
    helo: str
    p1: str
    p2: str
    rcpts: list[str]
    subject: str
    direction: str  # in | out | intra
    connector: str = ""  # named inbound connector; "" = none
    spf: str = "none"
    dkim: str = "none"
    dmarc: str = "none"
    compauth: str = "none"
    country: str = ""
    status: str = "Delivered"
    size: int = 24_000
    msgid: str = ""
    nmid: str = ""
    to_ip: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _c(user: str) -> str:
    return f"{user}@contoso.com"


def scenario() -> list[Msg]:
    """The week of mail every fixture format tells (as far as the format can)."""
    rnd = random.Random(5)
    msgs: list[Msg] = []

    def at(day: datetime, hour: int, minute: int) -> datetime:
        return day + timedelta(hours=hour, minutes=minute, seconds=rnd.randrange(60))

    for day in DAYS:
        # Printer A: Ricoh MFP, scan-to-mail by Direct Send; in contoso.com's SPF.
        for i in range(4):
            msgs.append(Msg(at(day, 8 + 2 * i, 31), "198.51.100.20", "RNP002673F2C1A4",
                            _c("printer"), _c("printer"), [_c(USERS[i])],
                            "Scan Data from RNP002673F2C1A4", "in",
                            spf="pass", dkim="none", dmarc="pass", compauth="pass", country="US",
                            size=310_000))
        # Printer B: second-floor copier, also in SPF.
        for i in range(3):
            msgs.append(Msg(at(day, 9 + 3 * i, 5), "198.51.100.21", "KMC450I-2F",
                            _c("scanner-2f"), _c("scanner-2f"), [_c(USERS[(i + 3) % 6])],
                            "Message from KMC450i-2F", "in",
                            spf="pass", dkim="none", dmarc="pass", compauth="pass", country="US",
                            size=280_000))
        # CodeTwo signature service re-injecting users' internal mail (two relay IPs).
        subjects = ["Re: Q1 planning", "Budget review notes", "Team lunch on Friday",
                    "Updated org chart", "Re: Customer visit"]
        for n, ip in enumerate(("203.0.113.80", "203.0.113.81")):
            for i in range(6):
                sender = USERS[(i + n) % 5]
                rcpt = USERS[(i + n + 1) % 5 + 5]
                msgs.append(Msg(at(day, 8 + i, 10 + 20 * n), ip,
                                "us2-emailsignatures-cloud.codetwo.com", _c(sender), _c(sender),
                                [_c(rcpt)], subjects[(i + n) % 5], "in",
                                spf="pass", dkim="pass", dmarc="pass", compauth="pass",
                                country="US"))
        # A mailing list at example.org forwarding members' posts back without SRS.
        for i in range(2):
            sender = USERS[(DAYS.index(day) * 2 + i) % 4]
            members = [u for u in ("lee", "mia", "kim", "ben") if u != sender][:2]
            msgs.append(Msg(at(day, 10 + 4 * i, 2), "198.51.100.140", "mx.example.org",
                            _c(sender), _c(sender), [_c(m) for m in members],
                            f"[committee] Notes {day:%Y-%m-%d} part {i + 1}", "in",
                            spf="fail", dkim="pass", dmarc="pass", compauth="pass", country="US"))
        # A marketing platform: its own envelope domain, contoso.com only in the header From.
        msgs.append(Msg(at(day, 15, 30), "198.51.100.120", "mta12.saas.example.net",
                        "bounces+t1c2@mail.saas.example.net", "events@contoso.com", [_c("joe")],
                        "You're invited: Contoso spring town hall", "in",
                        spf="pass", dkim="pass", dmarc="pass", compauth="pass", country="US"))
        # The scanner behind the partner connector scanner-floor2 (not Direct Send).
        for i in range(2):
            msgs.append(Msg(at(day, 10 + 3 * i, 15), "203.0.113.25", "mfp-floor2.contoso.com",
                            _c("scanner"), _c("scanner"), [_c("joe")], "Scanned document",
                            "in", connector="scanner-floor2", spf="pass", dmarc="pass",
                            compauth="pass", country="US", size=150_000))
        # Ordinary external inbound mail.
        for i in range(3):
            msgs.append(Msg(at(day, 7 + 4 * i, 0), "198.51.100.201", "o1.em.example.org",
                            "bounces+2219-8f1c-joe=contoso.com@em.example.org", "news@example.org",
                            [_c(USERS[i])], "This week at Example", "in",
                            spf="pass", dkim="pass", dmarc="pass", compauth="pass", country="US"))
        for i in range(2):
            msgs.append(Msg(at(day, 11 + 2 * i, 55), "198.51.100.90", "mail.example.com",
                            "lena.fischer@example.com", "lena.fischer@example.com", [_c("joe")],
                            "Re: Offer 2026-114", "in",
                            spf="softfail", dkim="none", dmarc="none", compauth="pass",
                            country="US"))
        # Internal user mail (inside Exchange Online: no sender IP) and outbound mail.
        for i in range(3):
            msgs.append(Msg(at(day, 9 + 2 * i, 41), "", "", _c("anna"), _c("anna"), [_c("joe")],
                            "Lunch?", "intra", spf="pass", dkim="pass", dmarc="pass",
                            compauth="pass"))
        for i in range(2):
            msgs.append(Msg(at(day, 13 + i, 20), "", "", _c("joe"), _c("joe"),
                            ["partner@example.net"], "Contract draft", "out",
                            to_ip="203.0.113.200"))
    # The attack wave: Wednesday and Thursday, 6 IPs a day, 3 self-addressed lures each.
    lures = ["New Missed Fax-msg", "Caller Left VM Message"]
    for n, ip in enumerate(ATTACK_IPS):
        day = DAYS[2] if n < 6 else DAYS[3]
        for k in range(3):
            victim = _c(USERS[(n * 3 + k) % len(USERS)])
            msgs.append(Msg(at(day, 6 + n % 6, 10 * k), ip, "[127.0.0.1]", victim, victim,
                            [victim], lures[(n + k) % 2], "in",
                            spf="fail", dkim="none", dmarc="fail", compauth="fail",
                            country="PL" if ip.startswith("139.28.41.") else "UA",
                            status="FilteredAsSpam" if k == 2 else "Delivered", size=96_000))
    msgs.sort(key=lambda m: m.when)
    for i, m in enumerate(msgs):
        m.nmid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        m.msgid = f"<{m.when:%Y%m%d%H%M%S}.{i:04d}@{m.p1.rsplit('@', 1)[1]}>"
    return msgs


# -- Get-MessageTrace (V1) and Get-MessageTraceV2 saved with Export-Csv -----------------------

V1_COLUMNS = ["PSComputerName", "RunspaceId", "PSShowComputerName", "Organization", "MessageId",
              "Received", "SenderAddress", "RecipientAddress", "Subject", "Status", "ToIP",
              "FromIP", "Size", "MessageTraceId", "StartDate", "EndDate", "Index"]
V2_COLUMNS = ["Received", "SenderAddress", "RecipientAddress", "Subject", "Status", "ToIP",
              "FromIP", "Size", "MessageId", "MessageTraceId"]


def _us(when: datetime) -> str:
    """en-US DateTime.ToString(), as Export-Csv writes it: 3/2/2026 9:31:04 AM."""
    hour = when.hour % 12 or 12
    return f"{when.month}/{when.day}/{when.year} {hour}:{when:%M:%S} {'AM' if when.hour < 12 else 'PM'}"


def _invariant(when: datetime) -> str:
    return f"{when:%m/%d/%Y %H:%M:%S}"


def _trace_rows(msgs: list[Msg]) -> Iterator[tuple[Msg, str]]:
    # Get-MessageTrace returns newest first, one row per recipient.
    for m in sorted(msgs, key=lambda m: m.when, reverse=True):
        for r in m.rcpts:
            yield m, r


def write_message_trace_v1(path: Path, msgs: list[Msg]) -> None:
    start, end = DAYS[0], DAYS[-1] + timedelta(days=1)
    with path.open("w", encoding="utf-8-sig", newline="") as fh:  # PS 5.1 -Encoding UTF8: BOM
        fh.write("#TYPE Deserialized.Microsoft.Exchange.Management.FfoReporting.MessageTrace\r\n")
        w = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        w.writerow(V1_COLUMNS)
        for index, (m, rcpt) in enumerate(_trace_rows(msgs)):
            w.writerow(["outlook.office365.com", "7c4b5e0a-2f1d-4b8e-9a3c-0d1e2f3a4b5c", "False",
                        "contoso.onmicrosoft.com", m.msgid, _us(m.when), m.p1, rcpt, m.subject,
                        m.status, m.to_ip, m.ip, m.size, m.nmid, _us(start), _us(end), index])


def write_message_trace_v2(path: Path, msgs: list[Msg]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:  # PS 7: UTF-8 without BOM, no #TYPE
        w = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(V2_COLUMNS)
        for m, rcpt in _trace_rows(msgs):
            w.writerow([_invariant(m.when), m.p1, rcpt, m.subject, m.status, m.to_ip, m.ip,
                        m.size, m.msgid, m.nmid])


# -- Portal reports / Start-HistoricalSearch -------------------------------------------------

SUMMARY_COLUMNS = ["origin_timestamp_utc", "sender_address", "Recipient_status", "message_subject",
                   "total_bytes", "message_id", "network_message_id", "original_client_ip",
                   "directionality", "connector_id", "delivery_priority"]
# Our reading of a ConnectorReport: the summary columns with the sender fourth (as
# Start-DirectSendAudit.ps1 indexes it) and the connector type in connector_id.
CONNECTOR_REPORT_COLUMNS = ["origin_timestamp_utc", "message_id", "network_message_id",
                            "sender_address", "Recipient_status", "message_subject", "total_bytes",
                            "original_client_ip", "directionality", "connector_id"]
EXTENDED_COLUMNS = ["date_time_utc", "client_ip", "client_hostname", "server_ip", "server_hostname",
                    "source_context", "connector_id", "source", "event_id", "internal_message_id",
                    "message_id", "network_message_id", "recipient_address", "recipient_status",
                    "total_bytes", "recipient_count", "related_recipient_address", "reference",
                    "message_subject", "sender_address", "return_path", "message_info",
                    "directionality", "tenant_id", "original_client_ip", "original_server_ip",
                    "custom_data"]


def _iso7(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


def _events(m: Msg) -> str:
    if m.direction == "out":
        return "Receive, Send"
    if m.status == "FilteredAsSpam":
        return "Receive, Deliver, FilteredAsSpam"
    return "Receive, Deliver"


def _write_utf16(path: Path, text: str) -> None:
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))


def write_enhanced_summary(path: Path, msgs: list[Msg]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    w.writerow(SUMMARY_COLUMNS)
    for m in msgs:
        status = ";".join(f"{r}##{_events(m)}" for r in m.rcpts)
        w.writerow([_iso7(m.when), m.p1, status, m.subject, m.size, m.msgid,
                    m.nmid.replace("-", ""), m.ip, "1" if m.direction == "in" else "2",
                    m.connector, "Normal"])
    _write_utf16(path, buf.getvalue())


def write_connector_report(path: Path, msgs: list[Msg]) -> None:
    """Start-HistoricalSearch -ReportType ConnectorReport -ConnectorType NoConnector -Direction
    Received: inbound mail that matched no connector."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    w.writerow(CONNECTOR_REPORT_COLUMNS)
    for m in msgs:
        if m.direction != "in" or m.connector:
            continue
        status = ";".join(f"{r}##{_events(m)}" for r in m.rcpts)
        w.writerow([_iso7(m.when), m.msgid, m.nmid.replace("-", ""), m.p1, status, m.subject,
                    m.size, m.ip, "1", "NoConnector"])
    _write_utf16(path, buf.getvalue())


def _custom_data(m: Msg) -> str:
    sfv = "SPM" if m.status == "FilteredAsSpam" else "NSPM"
    scl = "5" if m.status == "FilteredAsSpam" else "1"
    return (f"S:SFA=SUM|SFV={sfv}|IPV=NLI|SRV=|SFS=470454002|SCL={scl}|SCORE=-1|LIST=0|DI=SN|"
            f"RD={m.helo if not m.helo.startswith('[') else ''}|H={m.helo}|CIP={m.ip}|SFP=1501|"
            f"ASF=1|CTRY={m.country}|CLTCTRY=|LANG=en|LAT=287;"
            f"S:SPF={m.spf};S:DKIM={m.dkim};S:DMARC={m.dmarc}")


def write_extended(path: Path, msgs: list[Msg]) -> None:
    rows: list[tuple[datetime, int, list[str]]] = []
    for seq, m in enumerate(msgs):
        direction = {"in": "Incoming", "out": "Originating", "intra": "Originating"}[m.direction]
        connector = m.connector or (DEFAULT_CONNECTOR if m.direction == "in" else "")
        internal_id = str(200_000 + seq)
        base = {"message_id": m.msgid, "network_message_id": m.nmid,
                "internal_message_id": internal_id, "tenant_id": TENANT_ID,
                "message_subject": m.subject, "sender_address": m.p1, "return_path": m.p1,
                "directionality": direction, "total_bytes": str(m.size),
                "recipient_address": ";".join(m.rcpts), "recipient_count": str(len(m.rcpts))}
        receive = dict(base, event_id="RECEIVE", source="SMTP" if m.ip else "STOREDRIVER",
                       client_ip=m.ip, client_hostname=m.helo, original_client_ip=m.ip,
                       server_hostname=f"{EOP_SERVER}.mail.protection.outlook.com",
                       server_ip="10.13.177.149", connector_id=connector,
                       recipient_status="250 2.1.5 Recipient OK")
        rows.append((m.when, 0, [receive.get(c, "") for c in EXTENDED_COLUMNS]))
        if m.ip:
            agent = dict(base, event_id="AGENTINFO", source="AGENT",
                         source_context="Spam Filter Agent", custom_data=_custom_data(m))
            rows.append((m.when + timedelta(seconds=1), 1,
                         [agent.get(c, "") for c in EXTENDED_COLUMNS]))
        last = dict(base, event_id="SEND" if m.direction == "out" else "DELIVER",
                    source="SMTP" if m.direction == "out" else "STOREDRIVER",
                    server_ip=m.to_ip, message_info=_iso7(m.when)[:23] + "Z",
                    recipient_status="250 2.6.0 Queued mail for delivery")
        rows.append((m.when + timedelta(seconds=3), 2, [last.get(c, "") for c in EXTENDED_COLUMNS]))
    rows.sort(key=lambda r: (r[0], r[1]))
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow(EXTENDED_COLUMNS)
        for when, _, row in rows:
            row[0] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
            w.writerow(row)


# -- Defender Advanced Hunting EmailEvents ---------------------------------------------------

EMAILEVENTS_COLUMNS = [
    "Timestamp", "NetworkMessageId", "InternetMessageId", "SenderMailFromAddress",
    "SenderFromAddress", "SenderDisplayName", "SenderObjectId", "SenderMailFromDomain",
    "SenderFromDomain", "SenderIPv4", "SenderIPv6", "RecipientEmailAddress", "RecipientObjectId",
    "Subject", "EmailClusterId", "EmailDirection", "DeliveryAction", "DeliveryLocation",
    "ThreatTypes", "ThreatNames", "DetectionMethods", "ConfidenceLevel", "BulkComplaintLevel",
    "EmailAction", "EmailActionPolicy", "EmailActionPolicyGuid", "AuthenticationDetails",
    "AttachmentCount", "UrlCount", "EmailLanguage", "Connectors", "OrgLevelAction",
    "OrgLevelPolicy", "UserLevelAction", "UserLevelPolicy", "ReportId", "AdditionalFields",
    "LatestDeliveryLocation", "LatestDeliveryAction", "OriginalThreatTypes",
    "OriginalDetectionMethods", "OriginalConfidenceLevel", "DistributionList",
    "ExchangeTransportRule", "ForwardingInformation", "Context", "To", "Cc",
    "ThreatClassification", "RecipientDomain", "EmailSize", "IsFirstContact", "Topics",
]


def write_emailevents(path: Path, msgs: list[Msg]) -> None:
    rnd = random.Random(7)
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow(EMAILEVENTS_COLUMNS)
        report = 1000
        for m in msgs:
            spam = m.status == "FilteredAsSpam"
            phish = m.compauth == "fail"
            direction = {"in": "Inbound", "out": "Outbound", "intra": "Intra-org"}[m.direction]
            auth = json.dumps({"SPF": m.spf, "DKIM": m.dkim, "DMARC": m.dmarc,
                               "CompAuth": m.compauth}, separators=(",", ":"))
            for rcpt in m.rcpts:
                report += 1
                values = {
                    "Timestamp": _iso7(m.when), "NetworkMessageId": m.nmid,
                    "InternetMessageId": m.msgid, "SenderMailFromAddress": m.p1,
                    "SenderFromAddress": m.p2, "SenderDisplayName": m.p2.split("@")[0].title(),
                    "SenderMailFromDomain": m.p1.rsplit("@", 1)[1],
                    "SenderFromDomain": m.p2.rsplit("@", 1)[1], "SenderIPv4": m.ip,
                    "RecipientEmailAddress": rcpt,
                    "RecipientObjectId": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                    "Subject": m.subject, "EmailClusterId": str(rnd.getrandbits(40)),
                    "EmailDirection": direction,
                    "DeliveryAction": "Junked" if spam else "Delivered",
                    "DeliveryLocation": "Junk folder" if spam else "Inbox/folder",
                    "ThreatTypes": "Phish" if phish else "",
                    "DetectionMethods": '{"Phish":["Spoof intra-org"]}' if phish else "",
                    "ConfidenceLevel": '{"Phish":"High","Spam":null}' if phish else
                    '{"Phish":null,"Spam":"Low"}',
                    "BulkComplaintLevel": "0",
                    "EmailAction": "Move to junk folder" if spam else "No action taken",
                    "EmailActionPolicy": "Anti-phishing spoof" if spam else "",
                    "AuthenticationDetails": auth, "AttachmentCount": "1",
                    "UrlCount": "1" if phish else "0", "EmailLanguage": "en",
                    "Connectors": m.connector, "ReportId": str(report), "AdditionalFields": "{}",
                    "LatestDeliveryLocation": "Junk folder" if spam else "Inbox/folder",
                    "LatestDeliveryAction": "Junked" if spam else "Delivered",
                    "OriginalThreatTypes": "Phish" if phish else "",
                    "To": rcpt, "RecipientDomain": rcpt.rsplit("@", 1)[1],
                    "EmailSize": str(m.size), "IsFirstContact": "0",
                }
                w.writerow([values.get(c, "") for c in EMAILEVENTS_COLUMNS])


# -- Graph exchangeMessageTrace --------------------------------------------------------------

GRAPH_STATUS = {"Delivered": "delivered", "FilteredAsSpam": "filteredAsSpam"}


def _graph_rows(msgs: list[Msg]) -> Iterator[dict[str, object]]:
    rnd = random.Random(9)
    for m in msgs:
        for rcpt in m.rcpts:
            yield {
                "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "messageId": m.msgid,
                "receivedDateTime": m.when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "senderAddress": m.p1,
                "recipientAddress": rcpt,
                "subject": m.subject,
                "status": GRAPH_STATUS.get(m.status, "delivered"),
                "size": m.size,
                "fromIP": m.ip or None,
                "toIP": m.to_ip or None,
            }


def write_graph_json(path: Path, msgs: list[Msg]) -> None:
    doc = {
        "@odata.context": "https://graph.microsoft.com/beta/$metadata#admin/exchange/tracing/messageTraces",
        "value": list(_graph_rows(msgs)),
        "@odata.nextLink": None,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def write_graph_jsonl(path: Path, msgs: list[Msg]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in _graph_rows(msgs):
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")


# -- .eml: the corpus messages of the same sources, plus the signature service ---------------

EML_FROM_CORPUS = [
    "exo-printer-direct-send-spf.eml",
    "exo-forwarded-no-srs.eml",
    "exo-forwarded-no-srs-forwarder-ar.eml",
    "exo-campaign-vm-loopback-helo.eml",
    "exo-campaign-vm-link-only.eml",
    "exo-campaign-fax-qr-vector.eml",
    "exo-saas-p2-dkim-aligned.eml",
    "exo-scanner-connector-ip.eml",
    "exo-external-softfail.eml",
    "exo-internal-user.eml",
]


def write_eml(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    for name in EML_FROM_CORPUS:
        shutil.copyfile(CORPUS / name, directory / name)
    # The signature service: the printer case re-addressed to CodeTwo's relay (its HELO, its
    # IP, a user's mail with contoso.com's DKIM signature intact).
    data = (CORPUS / "exo-printer-direct-send-spf.eml").read_bytes()
    for old, new in (
        (b"198.51.100.20", b"203.0.113.80"),
        (b"helo=RNP002673F2C1A4", b"helo=us2-emailsignatures-cloud.codetwo.com"),
        (b"Received: from RNP002673F2C1A4 (", b"Received: from us2-emailsignatures-cloud.codetwo.com ("),
        (b"H:RNP002673F2C1A4;PTR:;", b"H:us2-emailsignatures-cloud.codetwo.com;PTR:us2-emailsignatures-cloud.codetwo.com;"),
        (b"dkim=none (message not signed)\r\n header.d=none;", b"dkim=pass (signature was verified)\r\n header.d=contoso.com;"),
        (b"From: printer@contoso.com", b"From: Anna Berg <anna@contoso.com>"),
        (b"Return-Path: printer@contoso.com", b"Return-Path: anna@contoso.com"),
        (b"Subject: Scan Data from RNP002673F2C1A4", b"Subject: Re: Q1 planning"),
        (b"@ricoh.contoso.com>", b"@SJ0PR11MB5598.namprd11.prod.outlook.com>"),
    ):
        if old not in data:
            raise SystemExit(f"make_exports: corpus printer case changed, {old!r} not found")
        data = data.replace(old, new)
    (directory / "codetwo-signature-relay.eml").write_bytes(data)


# -- a big Get-MessageTrace export with a fixed set of sources -------------------------------

BIG_DEVICES = [f"198.51.100.{n}" for n in range(20, 40)]
BIG_SAAS = [f"203.0.113.{n}" for n in range(80, 84)]
# 139.28.36.1 - 139.28.39.250: the campaign's range, never 139.28.40.42 (a legitimate host).
BIG_ATTACK = [f"139.28.{36 + n // 250}.{n % 250 + 1}" for n in range(1000)]
BIG_EXTERNAL = [f"192.0.2.{n}" for n in range(1, 255)]


def write_big_message_trace(path: Path, rows: int, seed: int = 1) -> int:
    """Stream ``rows`` Get-MessageTraceV2 rows (UTF-8, Export-Csv quoting) to ``path``.

    Per 100 rows: 60 external inbound, 10 internal/outbound, 15 from the 20 printers, 5 from
    the 4 signature relays, 10 from the 1,000 attack IPs. Each group's IPs are cycled in
    order, so every run of at least 10,000 rows has the same 1,024 Direct Send sources.
    Returns the bytes written.
    """
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    span = 89 * 86400
    lures = ["New Missed Fax-msg", "Caller Left VM Message"]
    attack_i = device_i = saas_i = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(V2_COLUMNS)
        for i in range(rows):
            when = start + timedelta(seconds=span * i // max(rows, 1))
            slot = i % 100
            nmid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            user = _c(USERS[i % len(USERS)])
            if slot < 60:
                ip = BIG_EXTERNAL[i % len(BIG_EXTERNAL)]
                row = [_invariant(when), f"news{i % 50}@example.org", user,
                       f"Newsletter {i % 31}", "Delivered", "", ip, 20_000, f"<{nmid}@example.org>", nmid]
            elif slot < 70:
                row = [_invariant(when), user, "partner@example.net", "Contract draft",
                       "Delivered", "203.0.113.200", "", 15_000, f"<{nmid}@contoso.com>", nmid]
            elif slot < 85:
                ip = BIG_DEVICES[device_i % len(BIG_DEVICES)]
                device_i += 1
                dev = _c(f"scanner-{ip.rsplit('.', 1)[1]}")
                row = [_invariant(when), dev, user, "Scan Data from MFP", "Delivered", "", ip,
                       300_000, f"<{nmid}@contoso.com>", nmid]
            elif slot < 90:
                ip = BIG_SAAS[saas_i % len(BIG_SAAS)]
                saas_i += 1
                row = [_invariant(when), user, _c(USERS[(i + 1) % len(USERS)]), "Re: planning",
                       "Delivered", "", ip, 30_000, f"<{nmid}@contoso.com>", nmid]
            else:
                ip = BIG_ATTACK[attack_i % len(BIG_ATTACK)]
                attack_i += 1
                row = [_invariant(when), user, user, lures[i % 2], "Delivered", "", ip, 90_000,
                       f"<{nmid}@contoso.com>", nmid]
            w.writerow(row)
    return path.stat().st_size


def main() -> None:
    msgs = scenario()
    write_message_trace_v1(HERE / "message-trace-v1.csv", msgs)
    write_message_trace_v2(HERE / "message-trace-v2.csv", msgs)
    write_enhanced_summary(HERE / "enhanced-summary.csv", msgs)
    write_connector_report(HERE / "connector-report.csv", msgs)
    write_extended(HERE / "extended.csv", msgs)
    write_emailevents(HERE / "emailevents.csv", msgs)
    write_graph_json(HERE / "graph-messagetrace.json", msgs)
    write_graph_jsonl(HERE / "graph-messagetrace.jsonl", msgs)
    write_eml(HERE / "eml")
    (HERE / "not-a-trace.csv").write_text(
        "Name,Department,Phone\r\nJoe Miller,Sales,555-0100\r\n", encoding="utf-8"
    )
    print(f"wrote fixtures for {len(msgs)} messages to {HERE}")


if __name__ == "__main__":
    main()
