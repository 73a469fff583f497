"""Relay failure handling against a real smtp-sink: outages, 4xx, 5xx, giving up, requeue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.fixtures import smtpsink
from tests.fixtures.smtpsink import SmtpSink, expected_dump

from dsguard.gateway.relay import Downstream, Relay, RetryPolicy
from dsguard.gateway.spool import STATES, Spool, SpoolEntry

smtp_sink = smtpsink.smtp_sink

FAST = RetryPolicy(first_delay=0.05, factor=2.0, max_delay=0.2, max_age=3600.0)
HELO = "gateway.example.com"
MESSAGE = b"From: joe@contoso.com\r\nSubject: retry me\r\n\r\nbody\r\n"

Events = list[tuple[SpoolEntry, str, str]]


def downstream(sink: SmtpSink, *, starttls: bool = False) -> Downstream:
    return Downstream(host=sink.host, port=sink.port, starttls=starttls, timeout=10.0)


def recorder() -> tuple[Events, Callable[[SpoolEntry, str, str], None]]:
    events: Events = []

    def on_result(entry: SpoolEntry, outcome: str, detail: str) -> None:
        events.append((entry, outcome, detail))

    return events, on_result


def outcomes(events: Events) -> list[str]:
    return [outcome for _entry, outcome, _detail in events]


async def run_until(relay: Relay, condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Run the relay until ``condition()`` holds (the limit only stops a broken test)."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while not condition():
            assert not task.done(), "relay.run() returned before it was stopped"
            assert loop.time() < deadline, "condition not reached"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task


def enqueue(spool: Spool, rcpt_to: tuple[str, ...] = ("ann@contoso.com",)) -> SpoolEntry:
    return spool.enqueue(MESSAGE, "joe@contoso.com", rcpt_to, {"session": "s1"})


def test_downstream_outage_defers_with_backoff_then_delivers(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    entry = enqueue(spool)
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, on_result=on_result)
    smtp_sink.stop()  # the downstream is down: connection refused

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        while outcomes(events).count("deferred") < 3:
            await asyncio.sleep(0.02)
        smtp_sink.start()  # back on the same port
        while "delivered" not in outcomes(events):
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 60))

    deferrals = [e for e, outcome, _d in events if outcome == "deferred"]
    assert [d.id for d in deferrals[:3]] == [entry.id] * 3
    assert [d.attempts for d in deferrals[:3]] == [1, 2, 3]
    # Backoff: each retry is planned later than the previous one.
    plans = [d.next_attempt for d in deferrals]
    assert plans == sorted(plans)
    assert len(set(plans)) == len(plans)
    assert all(f"{smtp_sink.host}:{smtp_sink.port}" in d.last_error for d in deferrals)
    assert [m.data for m in smtp_sink.received()] == [expected_dump(MESSAGE)]
    assert all(spool.list(s) == [] for s in STATES)


def test_5xx_fails_permanently_and_stays_visible_with_the_reason(tmp_path: Path) -> None:
    options = ["-f", "RCPT", "-B", "550 5.1.1 No such user here"]
    with SmtpSink(tmp_path / "sink", options=options) as sink:
        spool = Spool(tmp_path / "spool")
        entry = enqueue(spool)
        events, on_result = recorder()
        relay = Relay(spool, downstream(sink), FAST, helo=HELO, on_result=on_result)

        asyncio.run(run_until(relay, lambda: spool.list("failed") != []))

        assert sink.messages() == []
    [failed] = spool.list("failed")
    assert failed.id == entry.id
    assert "550 5.1.1 No such user here" in failed.last_error
    assert failed.rcpt_to == ("ann@contoso.com",)
    assert spool.read(failed) == MESSAGE
    assert outcomes(events) == ["failed"]
    assert "550 5.1.1" in events[0][2]


def test_5xx_after_data_fails_permanently(tmp_path: Path) -> None:
    options = ["-f", ".", "-B", "554 5.6.0 Message content rejected"]
    with SmtpSink(tmp_path / "sink", options=options) as sink:
        spool = Spool(tmp_path / "spool")
        enqueue(spool)
        relay = Relay(spool, downstream(sink), FAST, helo=HELO)

        asyncio.run(run_until(relay, lambda: spool.list("failed") != []))

    [failed] = spool.list("failed")
    assert "554 5.6.0 Message content rejected" in failed.last_error


def test_4xx_defers_and_keeps_the_message(tmp_path: Path) -> None:
    options = ["-r", "RCPT", "-b", "452 4.2.2 Mailbox full"]
    with SmtpSink(tmp_path / "sink", options=options) as sink:
        spool = Spool(tmp_path / "spool")
        entry = enqueue(spool)
        events, on_result = recorder()
        relay = Relay(spool, downstream(sink), FAST, helo=HELO, on_result=on_result)
        [claimed] = spool.claim_due(datetime.now(UTC), 1)

        assert asyncio.run(relay.deliver_once(claimed)) == "deferred"

        assert sink.messages() == []
    [deferred] = spool.list("deferred")
    assert deferred.id == entry.id
    assert deferred.attempts == 1
    assert "452 4.2.2 Mailbox full" in deferred.last_error
    assert deferred.next_attempt > claimed.received_at
    assert spool.read(deferred) == MESSAGE
    assert spool.list("failed") == []
    assert outcomes(events) == ["deferred"]


def test_4xx_to_mail_from_defers(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "sink", options=["-r", "MAIL"]) as sink:
        spool = Spool(tmp_path / "spool")
        enqueue(spool)
        relay = Relay(spool, downstream(sink), FAST, helo=HELO)
        [claimed] = spool.claim_due(datetime.now(UTC), 1)

        assert asyncio.run(relay.deliver_once(claimed)) == "deferred"

    [deferred] = spool.list("deferred")
    assert "450 4.3.0" in deferred.last_error  # smtp-sink's default soft reply


def test_421_and_disconnect_are_temporary(tmp_path: Path) -> None:
    for options in (["-Q", "RCPT"], ["-q", "DATA"]):
        with SmtpSink(tmp_path / options[1], options=options) as sink:
            spool = Spool(tmp_path / f"spool-{options[1]}")
            enqueue(spool)
            relay = Relay(spool, downstream(sink), FAST, helo=HELO)
            [claimed] = spool.claim_due(datetime.now(UTC), 1)

            assert asyncio.run(relay.deliver_once(claimed)) == "deferred"

            assert spool.list("failed") == []
            assert len(spool.list("deferred")) == 1


def test_temporary_failures_past_max_age_become_permanent(tmp_path: Path) -> None:
    policy = RetryPolicy(first_delay=0.05, factor=2.0, max_delay=0.1, max_age=0.5)
    with SmtpSink(tmp_path / "sink", options=["-r", "RCPT"]) as sink:
        spool = Spool(tmp_path / "spool")
        entry = enqueue(spool)
        events, on_result = recorder()
        relay = Relay(spool, downstream(sink), policy, helo=HELO, on_result=on_result)

        asyncio.run(run_until(relay, lambda: spool.list("failed") != []))

    [failed] = spool.list("failed")
    assert failed.id == entry.id
    assert "gave up after" in failed.last_error
    assert "450 4.3.0" in failed.last_error  # the last temporary reason is kept
    assert failed.attempts >= 2
    assert outcomes(events)[-1] == "failed"
    assert set(outcomes(events)[:-1]) == {"deferred"}
    # Retries never go past the deadline, so the last one happens at max_age, not after.
    deadline = (failed.received_at.timestamp()) + policy.max_age
    assert all(e.next_attempt.timestamp() <= deadline + 1e-3 for e, _o, _d in events[:-1])


def test_max_age_zero_fails_on_the_first_temporary_failure(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    enqueue(spool)
    smtp_sink.stop()
    policy = RetryPolicy(first_delay=60, max_age=0)
    relay = Relay(spool, downstream(smtp_sink), policy, helo=HELO)
    [claimed] = spool.claim_due(datetime.now(UTC), 1)

    assert asyncio.run(relay.deliver_once(claimed)) == "failed"

    [failed] = spool.list("failed")
    assert "gave up" in failed.last_error


def test_required_starttls_not_offered_is_temporary(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    spool = Spool(tmp_path / "spool")
    enqueue(spool)
    relay = Relay(spool, downstream(smtp_sink, starttls=True), FAST, helo=HELO)
    [claimed] = spool.claim_due(datetime.now(UTC), 1)

    assert asyncio.run(relay.deliver_once(claimed)) == "deferred"

    [deferred] = spool.list("deferred")
    assert "STARTTLS" in deferred.last_error
    assert smtp_sink.messages() == []  # nothing sent in clear text


def test_non_ascii_address_without_smtputf8_fails_permanently(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # smtp-sink does not offer SMTPUTF8; RFC 6531 3.2 forbids sending such an address then.
    spool = Spool(tmp_path / "spool")
    spool.enqueue(MESSAGE, "joe@contoso.com", ["j\u00f6rg@contoso.com"], {})
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO)
    [claimed] = spool.claim_due(datetime.now(UTC), 1)

    assert asyncio.run(relay.deliver_once(claimed)) == "failed"

    [failed] = spool.list("failed")
    assert "SMTPUTF8" in failed.last_error
    assert smtp_sink.messages() == []


def test_a_requeued_failure_is_delivered(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    spool = Spool(tmp_path / "spool")
    entry = enqueue(spool)
    with SmtpSink(tmp_path / "refusing", options=["-f", "RCPT"]) as refusing:
        relay = Relay(spool, downstream(refusing), FAST, helo=HELO)
        asyncio.run(run_until(relay, lambda: spool.list("failed") != []))

    assert spool.requeue_failed(entry.id) is True  # the admin fixed the downstream
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO)
    asyncio.run(run_until(relay, lambda: all(spool.list(s) == [] for s in STATES)))

    assert [m.data for m in smtp_sink.received()] == [expected_dump(MESSAGE)]


def test_a_damaged_spool_file_never_stops_the_relay_and_is_quarantined(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    damaged = enqueue(spool)
    healthy = enqueue(spool, ("bob@contoso.com",))
    [claimed, _other] = spool.claim_due(datetime.now(UTC), 2)
    assert claimed.id == damaged.id
    path = tmp_path / "spool" / "active" / damaged.id
    path.write_bytes(path.read_bytes()[:-5])  # the disk lost the end of the message
    spool.recover()  # the healthy one goes back to new/; the damaged one is set aside
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO)

    pending = ("new", "active", "deferred")
    asyncio.run(run_until(relay, lambda: all(spool.list(s) == [] for s in pending)))

    assert [m.rcpt_to for m in smtp_sink.received()] == [("bob@contoso.com",)]
    [failed] = spool.list("failed")
    assert failed.id == damaged.id
    assert "corrupt" in failed.last_error
    assert healthy.id not in {e.id for s in STATES for e in spool.list(s)}


def test_a_file_damaged_after_claim_is_a_temporary_internal_fault(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    spool = Spool(tmp_path / "spool")
    entry = enqueue(spool)
    [claimed] = spool.claim_due(datetime.now(UTC), 1)
    path = tmp_path / "spool" / "active" / entry.id
    path.write_bytes(path.read_bytes()[:-5])
    events, on_result = recorder()
    relay = Relay(spool, downstream(smtp_sink), FAST, helo=HELO, on_result=on_result)

    assert asyncio.run(relay.deliver_once(claimed)) == "deferred"  # not failed, not raised

    assert smtp_sink.messages() == []
    assert outcomes(events) == ["deferred"]
    # It stays claimed until the next start, where recover() sets it aside.
    spool.recover()
    [failed] = spool.list("failed")
    assert failed.id == entry.id
