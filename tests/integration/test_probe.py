"""``dsguard probe`` against dsguard's own gateway on loopback, as a user runs it.

Three real gateways (tests/fixtures/gateway.py) play the organisation's MX endpoint:
reject_direct_send = "on" (with STARTTLS, a trustme certificate), "audit" and "off". The
probe is the real command in a subprocess. It must report "protected" with Microsoft's exact
5.7.68 text against "on" (and nothing reaches the downstream smtp-sink), and "exposed" against
"audit" and "off", where the labelled probe message arrives at the sink. MX resolution and the
tenant-endpoint name go through a second nsd whose names point at 127.0.0.1; the gateways
listen on random ports, hence ``--port``. ``--dry-run`` must touch neither a listening SMTP
socket nor a DNS socket given to it.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.fixtures import dns as dns_fixtures
from tests.fixtures import gateway as gwf
from tests.fixtures.dns import DnsServer
from tests.fixtures.gateway import (
    GATEWAY_HOSTNAME,
    RDS_REPLY,
    GatewayFactory,
    GatewayProcess,
    assert_never_delivered,
    free_port,
    wait_at_sink,
)
from tests.fixtures.smtpsink import SmtpSink

from dsguard.m365.probe import PROBE_SUBJECT

module_mail_world = gwf.module_mail_world
module_gateway = gwf.module_gateway
module_dns_server = dns_fixtures.module_dns_server

TO = "joe@contoso.com"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsguard", "probe", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def probe_json(*args: str) -> tuple[int, dict[str, Any]]:
    done = probe(*args, "--format", "json", "--operator", "dsguard test suite")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def server(gw: GatewayProcess) -> str:
    return f"{gw.host}:{gw.port}"


@pytest.fixture(scope="module")
def gw_on(module_gateway: GatewayFactory, tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    root: Path = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    pem = root / "server.pem"
    ca.issue_cert(GATEWAY_HOSTNAME, "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(pem)
    )
    return module_gateway({
        "organization": {"reject_direct_send": "on"},
        "gateway": {"tls_cert": str(pem), "tls_key": str(pem)},
    })


@pytest.fixture(scope="module")
def gw_audit(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway({"organization": {"reject_direct_send": "audit"}})


@pytest.fixture(scope="module")
def gw_off(module_gateway: GatewayFactory) -> GatewayProcess:
    return module_gateway({"organization": {"reject_direct_send": "off"}})


@pytest.fixture(scope="module")
def probe_dns(module_dns_server: dns_fixtures.ServerFactory) -> DnsServer:
    """contoso.com's MX and its Exchange Online tenant endpoint, both at 127.0.0.1."""
    return module_dns_server({
        "contoso.com": ["@ 300 IN MX 10 mx.contoso.com.", "mx 300 IN A 127.0.0.1"],
        "protection.outlook.com": ["contoso-com.mail 300 IN A 127.0.0.1"],
        "example.org": [],  # example.org exists, with no MX
    })


def transcript(doc: dict[str, Any], who: str) -> list[str]:
    return [t["line"] for t in doc["transcript"] if t["from"] == who]


# -- protected ----------------------------------------------------------------------------------


def test_reject_direct_send_on_is_protected_with_microsofts_exact_reply(gw_on: GatewayProcess) -> None:
    code, doc = probe_json("--to", TO, "--server", server(gw_on))
    assert code == 0
    assert doc["verdict"] == "protected"
    assert doc["reply"] == RDS_REPLY
    assert doc["stage"] in ("MAIL", "RCPT")
    assert "RejectDirectSend refused the anonymous sender joe@contoso.com" in doc["reason"]
    # STARTTLS was offered and used, and recorded; no AUTH was ever sent.
    assert doc["tls"]["offered"] is True and doc["tls"]["used"] is True
    assert doc["tls"]["version"].startswith("TLSv1.")
    client = transcript(doc, "client")
    assert client[:3] == [client[0], "STARTTLS", client[0]] and client[0].startswith("EHLO ")
    assert f"MAIL FROM:<{TO}>" in client
    assert not any(line.upper().startswith("AUTH") for line in client)
    assert transcript(doc, "server")[-1].startswith("221")  # QUIT answered
    assert_never_delivered(gw_on, doc["probe_id"].encode())


def test_text_report_starts_with_the_verdict_and_the_reply(gw_on: GatewayProcess) -> None:
    done = probe("--to", TO, "--server", server(gw_on))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"protected: {RDS_REPLY}"
    assert "transcript:" in lines
    assert f"  C: MAIL FROM:<{TO}>" in lines
    assert done.stderr == ""


def test_mx_is_resolved_through_the_given_resolver(gw_on: GatewayProcess, probe_dns: DnsServer) -> None:
    code, doc = probe_json("--to", TO, "--resolver", probe_dns.nameserver(),
                           "--port", str(gw_on.port))
    assert (code, doc["verdict"], doc["reply"]) == (0, "protected", RDS_REPLY)
    assert doc["endpoint"] == f"mx.contoso.com (127.0.0.1):{gw_on.port}"
    assert doc["server"] == f"the MX of contoso.com, port {gw_on.port}"


def test_a_relay_refusal_is_not_reported_as_protection(gw_on: GatewayProcess) -> None:
    code, doc = probe_json("--to", "ann@example.net", "--server", server(gw_on))
    assert code == 2
    assert doc["verdict"] == "refused"
    assert doc["reply"].startswith("550 5.7.1 Relaying denied")
    assert "not Direct Send protection" in doc["reason"]


# -- exposed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["audit", "off"])
def test_audit_and_off_are_exposed_and_the_labelled_probe_arrives(
    mode: str, request: pytest.FixtureRequest
) -> None:
    gw: GatewayProcess = request.getfixturevalue(f"gw_{mode}")
    code, doc = probe_json("--to", TO, "--server", server(gw))
    assert code == 1
    assert doc["verdict"] == "exposed"
    assert doc["stage"] == "END-OF-DATA" and doc["reply"].startswith("250")
    assert doc["tls"] == {"offered": False, "used": False}
    assert "RejectDirectSend is not on" in doc["reason"]
    [arrived] = wait_at_sink(gw.world.sink, doc["probe_id"].encode())
    assert (arrived.mail_from, arrived.rcpt_to) == (TO, (TO,))
    msg = email.message_from_bytes(arrived.data, policy=email.policy.default)
    # The probe sent its X-Dsguard-Probe header; a dsguard gateway removes every X-Dsguard-*
    # field it did not write (anti-forgery), so downstream the label is the Subject, the
    # Message-ID and the body.
    assert "X-Dsguard-Probe: 1" in transcript(doc, "client")
    assert str(msg["Subject"]) == PROBE_SUBJECT
    assert msg["Message-ID"] == doc["message_id"]
    assert (msg["From"], msg["To"]) == (TO, TO)
    body = msg.get_body().get_content()  # type: ignore[union-attr]
    assert "harmless test message sent by dsguard probe" in body
    assert "sent on purpose by dsguard test suite" in body


def test_exposed_text_report(gw_off: GatewayProcess) -> None:
    done = probe("--to", TO, "--server", server(gw_off))
    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    assert first.startswith("exposed: accepted (250 ") and first.endswith(")")
    assert "  S: 354 End data with <CR><LF>.<CR><LF>" in done.stdout.splitlines()


def test_tenant_endpoint_is_found_by_its_predictable_name(
    gw_audit: GatewayProcess, probe_dns: DnsServer
) -> None:
    code, doc = probe_json("--to", TO, "--tenant-endpoint", "--resolver", probe_dns.nameserver(),
                           "--port", str(gw_audit.port))
    assert (code, doc["verdict"]) == (1, "exposed")
    assert doc["endpoint"] == f"contoso-com.mail.protection.outlook.com (127.0.0.1):{gw_audit.port}"


# -- dry run, errors ----------------------------------------------------------------------------


def test_dry_run_contacts_nothing(probe_dns: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as smtp_listener, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dns_listener:
        smtp_listener.bind(("127.0.0.1", 0))
        smtp_listener.listen(8)
        dns_listener.bind(("127.0.0.1", 0))
        smtp_port = smtp_listener.getsockname()[1]
        dns_port = dns_listener.getsockname()[1]
        via_server = probe("--to", TO, "--server", f"127.0.0.1:{smtp_port}", "--resolver",
                           f"127.0.0.1:{dns_port}", "--dry-run", "--operator", "dsguard test suite")
        via_mx = probe("--to", TO, "--resolver", f"127.0.0.1:{dns_port}", "--dry-run",
                       "--format", "json")
        # A connection attempt would sit in the listen queue; a DNS query in the UDP buffer.
        smtp_listener.setblocking(False)
        dns_listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            smtp_listener.accept()
        with pytest.raises(BlockingIOError):
            dns_listener.recv(4096)
    assert (via_server.returncode, via_server.stderr) == (0, "")
    out = via_server.stdout
    assert out.startswith("dry run: nothing sent, no connection made, no DNS lookup\n")
    assert f"server:   127.0.0.1:{smtp_port} (--server)" in out
    assert f"envelope: MAIL FROM:<{TO}>" in out and f"RCPT TO:<{TO}>" in out
    assert "  X-Dsguard-Probe: 1" in out
    assert "  Subject: dsguard Direct Send probe =?utf-8?" in out
    assert "sent on purpose by dsguard test suite" in out
    assert via_mx.returncode == 0
    doc = json.loads(via_mx.stdout)
    assert doc["dry_run"] is True and doc["server"] == "the MX of contoso.com, port 25"
    sent = email.message_from_string(doc["message"], policy=email.policy.default)
    assert str(sent["Subject"]) == PROBE_SUBJECT and sent["Message-ID"] == doc["message_id"]


def test_unreachable_server_is_exit_2_with_one_line() -> None:
    port = free_port()  # bound and released: nothing listens there
    done = probe("--to", TO, "--server", f"127.0.0.1:{port}", "--timeout", "5")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"dsguard: probe: cannot connect: 127.0.0.1:{port}: Connection refused\n"


def test_a_server_that_never_answers_times_out_with_exit_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the connection; nobody ever greets
        port = silent.getsockname()[1]
        done = probe("--to", TO, "--server", f"127.0.0.1:{port}", "--timeout", "1")
    assert done.returncode == 2
    assert done.stdout.splitlines()[0] == "error: no reply within 1 s (at GREETING)"
    assert done.stderr == "dsguard: probe: error: no reply within 1 s (at GREETING)\n"


def test_dns_problems_are_exit_2_with_one_line(probe_dns: DnsServer) -> None:
    done = probe("--to", "ann@example.org", "--resolver", probe_dns.nameserver())
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "dsguard: probe: example.org has no MX record: pass --server HOST[:PORT]\n"
    )


def test_another_refusal_is_refused_not_protected(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "sink", options=["-f", "RCPT"]) as sink:
        code, doc = probe_json("--to", TO, "--server", f"{sink.host}:{sink.port}")
    assert (code, doc["verdict"], doc["stage"]) == (2, "refused", "RCPT")
    assert doc["reply"].startswith("5")
    assert "not the RejectDirectSend refusal" in doc["reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "not-an-address"], "--to: 'not-an-address' is not an address like user@contoso.com"),
        (["--to", TO, "--server", "127.0.0.1:25", "--tenant-endpoint"],
         "--server and --tenant-endpoint both name the server: give one"),
        (["--to", TO, "--server", "127.0.0.1:2525", "--port", "25"],
         "--server HOST:PORT and --port disagree: give the port once"),
        (["--to", TO, "--from", "a@b@c"], "--from: 'a@b@c': unsupported local part (use a plain address)"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    done = probe(*args, "--dry-run")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"dsguard: {message}\n")


def test_the_subject_header_decodes_to_the_label() -> None:
    # The label has an em dash, so it travels as an RFC 2047 encoded word.
    from dsguard.m365.probe import make_plan

    plan = make_plan(TO, operator="x")
    raw = plan.message.decode("ascii")  # 7-bit clean on the wire
    subject = next(line for line in raw.split("\r\n") if line.startswith("Subject: "))
    decoded = str(email.header.make_header(email.header.decode_header(subject[9:])))
    assert decoded == PROBE_SUBJECT
