"""The gateway as an operator runs it: SIGHUP reloads, SIGTERM, downstream outages and an
internal fault. Each test has its own gateway process (it reloads, stops or breaks it); DNS
and the smtp-sink are shared by the module.
"""

from __future__ import annotations

import json
import shutil
import signal
import smtplib
from collections.abc import Iterator

import pytest
from tests.fixtures import gateway as gwf
from tests.fixtures.gateway import (
    RDS_REPLY,
    GatewayFactory,
    GatewayProcess,
    MailWorld,
    RawSmtp,
    assert_never_delivered,
    message,
    reply_line,
    sink_messages_with,
    token,
    wait_at_sink,
    wait_until,
)

module_mail_world = gwf.module_mail_world
gateway_factory = gwf.gateway_factory

SHUTTING_DOWN = b"421 4.3.2 Service shutting down, try again later\r\n"
TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"


def spoof(gw: GatewayProcess, tag: str, client: RawSmtp | None = None) -> bytes:
    """The Send-MailMessage envelope from 127.0.0.1 (in contoso.com's SPF, so in audit mode
    it is delivered, not quarantined); returns the RCPT reply."""
    own = client is None
    session = client or RawSmtp(gw.host, gw.port, source="127.0.0.1")
    try:
        if own:
            session.cmd("EHLO DESKTOP-7QK2M9F")
        assert session.cmd("MAIL FROM:<joe@contoso.com>").startswith(b"250")
        reply = session.cmd("RCPT TO:<joe@contoso.com>")
        if reply.startswith(b"250"):
            assert session.cmd("DATA").startswith(b"354")
            session.send(message(tag=tag) + b".\r\n")
            assert session.reply().startswith(b"250 ")
        else:
            assert session.cmd("RSET").startswith(b"250")
        return reply
    finally:
        if own:
            session.close()


@pytest.fixture
def sink_restored(module_mail_world: MailWorld) -> Iterator[MailWorld]:
    """For tests that stop the shared sink: it runs again afterwards, on the same port."""
    yield module_mail_world
    module_mail_world.sink.start()


# -- SIGHUP ----------------------------------------------------------------------------------------


def test_sighup_switches_audit_to_on_without_a_restart(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory({"organization": {"reject_direct_send": "audit"}})
    assert gw.proc is not None
    pid = gw.proc.pid
    delivered = token()
    with RawSmtp(gw.host, gw.port, source="127.0.0.1") as kept_open:
        kept_open.cmd("EHLO DESKTOP-7QK2M9F")
        assert spoof(gw, delivered, kept_open).startswith(b"250")
        wait_at_sink(gw.world.sink, delivered.encode())

        mark = gw.mark()
        assert gw.reload({"organization": {"reject_direct_send": "on"}}) == "reloaded"
        [reloaded] = [r for r in gw.records(since=mark) if r.get("event") == "reloaded"]
        assert reloaded["reject_direct_send"] == "on"

        # The session opened before the reload is still served, under the new rule...
        refused = token()
        assert spoof(gw, refused, kept_open) == RDS_REPLY.encode() + b"\r\n"
        assert kept_open.cmd("NOOP") == b"250 OK\r\n"
    # ...and so is a new one; same process, no restart.
    assert spoof(gw, token()) == RDS_REPLY.encode() + b"\r\n"
    assert gw.running
    assert gw.proc.pid == pid
    assert_never_delivered(gw, refused.encode())


def test_a_broken_config_on_sighup_keeps_the_running_one(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory({"organization": {"reject_direct_send": "on"}})
    good = gw.config_path.read_text()
    assert 'reject_direct_send = "on"' in good

    mark = gw.mark()
    invalid = good.replace('reject_direct_send = "on"', 'reject_direct_send = "sometimes"')
    assert gw.reload(raw=invalid) == "reload_failed"
    [failed] = [r for r in gw.records(since=mark) if r.get("event") == "reload_failed"]
    assert failed["config"] == str(gw.config_path)
    assert failed["problem"].startswith("organization.reject_direct_send: ")
    assert spoof(gw, token()) == RDS_REPLY.encode() + b"\r\n"

    mark = gw.mark()
    assert gw.reload(raw=good + "\n[gateway\n") == "reload_failed"
    [failed] = [r for r in gw.records(since=mark) if r.get("event") == "reload_failed"]
    assert failed["problem"].startswith("not valid TOML")
    assert spoof(gw, token()) == RDS_REPLY.encode() + b"\r\n"
    assert gw.running

    # Once the file is fixed, the next SIGHUP applies it, limits included.
    fixed = {
        "organization": {"reject_direct_send": "audit"},
        "gateway": {"limits": {"max_sessions_per_ip": 1}},
    }
    assert gw.reload(fixed) == "reloaded"
    tag = token()
    assert spoof(gw, tag).startswith(b"250")
    wait_at_sink(gw.world.sink, tag.encode())
    with RawSmtp(gw.host, gw.port, source="127.0.0.30") as first:
        assert first.greeting.startswith(b"220 ")
        with RawSmtp(gw.host, gw.port, source="127.0.0.30") as second:
            assert second.greeting == b"421 4.7.0 Too many connections, try again later\r\n"


# -- SIGTERM and the spool ------------------------------------------------------------------------


def test_sigterm_tells_an_idle_client_421_and_keeps_the_spool(
    gateway_factory: GatewayFactory, sink_restored: MailWorld
) -> None:
    gw = gateway_factory({"organization": {"reject_direct_send": "on"}})
    sink = sink_restored.sink
    sink.stop()  # downstream down: what the gateway accepts stays in its spool
    tag = token()
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp:
        smtp.sendmail("news@example.org", ["ann@contoso.com"], message(from_="news@example.org", tag=tag))
    assert gw.spool_holds(tag.encode(), settle=2.0)

    with RawSmtp(gw.host, gw.port) as idle:
        idle.cmd("EHLO idle.example.org")
        assert gw.terminate() == 0
        assert idle.reply() == SHUTTING_DOWN
        assert idle.closed_by_peer()
    assert gw.spool_holds(tag.encode(), settle=2.0)
    assert any(r.get("event") == "stopping" for r in gw.records())

    # Downstream back, gateway back: the spooled message is delivered.
    sink.start()
    gw.start()
    wait_at_sink(sink, tag.encode())
    wait_until(lambda: not gw.spool_holds(tag.encode()), "the spool to be empty")


def test_sigterm_lets_a_transaction_in_progress_finish(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    tag = token()
    with RawSmtp(gw.host, gw.port) as client:
        client.cmd("EHLO mx.example.org")
        assert client.cmd("MAIL FROM:<news@example.org>").startswith(b"250")
        assert client.cmd("RCPT TO:<ann@contoso.com>").startswith(b"250")
        mark = gw.mark()
        gw.send_signal(signal.SIGTERM)
        gw.wait_for_record(lambda r: r.get("event") == "stopping", since=mark)
        # The gateway is stopping, and still completes the transaction it is in...
        assert client.cmd("DATA").startswith(b"354")
        client.send(message(from_="news@example.org", tag=tag) + b".\r\n")
        assert client.reply().startswith(b"250 2.0.0 OK")
        # ...then tells the now idle client to come back later.
        assert client.reply() == SHUTTING_DOWN
    assert gw.wait_exit() == 0
    gw.start()  # whether it went out before the stop or after the restart: it arrives once
    wait_at_sink(gw.world.sink, tag.encode())
    gw.stop()
    assert len(sink_messages_with(gw.world.sink, tag.encode())) == 1


def test_downstream_outage_defers_then_delivers(
    gateway_factory: GatewayFactory, sink_restored: MailWorld
) -> None:
    gw = gateway_factory()
    sink = sink_restored.sink
    port = sink.port
    sink.stop()
    tag = token()
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp:
        smtp.sendmail("news@example.org", ["ann@contoso.com"], message(from_="news@example.org", tag=tag))

    def deferred() -> bool:
        return any(tag.encode() in p.read_bytes() for p in gw.spool_files("deferred"))

    wait_until(deferred, "the message to be deferred")
    # The retry (0.3 s here) claims it again and again, so each look may find it in active/
    # for a moment: look until one finds it deferred.
    listing = ""

    def listed() -> bool:
        nonlocal listing
        listing = gw.cli("spool", "list", "deferred").stdout
        return "news@example.org -> ann@contoso.com" in listing

    wait_until(listed, "the entry in `dsguard spool list deferred`")
    assert f"127.0.0.1:{port}" in listing  # the reason names the unreachable downstream
    headers: list[dict[str, object]] = []

    def header_read() -> bool:
        for path in gw.spool_files("deferred"):
            try:
                headers.append(json.loads(path.read_bytes().split(b"\n", 1)[0]))
            except FileNotFoundError:
                continue  # claimed for the next attempt meanwhile
            return True
        return False

    wait_until(header_read, "a deferred entry's header")
    attempts = headers[0]["attempts"]
    assert isinstance(attempts, int) and attempts >= 1

    sink.start()
    assert sink.port == port
    wait_at_sink(sink, tag.encode())
    wait_until(lambda: not gw.spool_holds(tag.encode()), "the spool to be empty")


# -- internal fault ---------------------------------------------------------------------------------


def test_internal_fault_is_451_and_a_retry_succeeds(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    # A real fault the root-run gateway cannot ignore: its spool's tmp/ is no directory.
    spool_tmp = gw.spool_dir / "tmp"
    shutil.rmtree(spool_tmp)
    spool_tmp.write_text("not a directory\n")
    tag = token()
    mail = message(from_="news@example.org", tag=tag)
    mark = gw.mark()
    with (
        smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp,
        pytest.raises(smtplib.SMTPDataError) as failed,
    ):
        smtp.sendmail("news@example.org", ["ann@contoso.com"], mail)
    assert reply_line(failed.value.smtp_code, failed.value.smtp_error) == TEMPFAIL
    records = gw.records(since=mark)
    assert any("spool write failed" in str(r.get("message")) for r in records)
    [decision] = [r for r in records if r.get("event") == "decision"]
    assert (decision["decision"], decision["reason"]) == ("tempfail", "spool write failed")
    assert [e["decision"] for e in gw.wait_events("tempfail", lambda e: True)] == ["tempfail"]
    assert not gw.spool_holds(tag.encode())

    # The fault is repaired; the client's retry (as any MTA does after a 4xx) goes through.
    spool_tmp.unlink()
    spool_tmp.mkdir(mode=0o700)
    with smtplib.SMTP(gw.host, gw.port, local_hostname="mx.example.org") as smtp:
        assert smtp.sendmail("news@example.org", ["ann@contoso.com"], mail) == {}
    assert len(wait_at_sink(gw.world.sink, tag.encode())) == 1
