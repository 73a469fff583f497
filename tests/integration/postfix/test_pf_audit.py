"""Audit mode inside a real Postfix: nothing is refused for Direct Send, every would-be refusal
is stamped and recorded, and malicious mail is still held.

One Postfix for the module with the README's main.cf block, dsguard in "audit" mode.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from tests.fixtures.gateway import header_values, message, token, wait_at_sink
from tests.fixtures.postfix import STRANGER_IP, PostfixWorld, postfix_world

P1_NOTE = "would refuse (P1): anonymous sender using accepted domain contoso.com in MAIL FROM"


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixWorld]:
    with postfix_world(tmp_path_factory.mktemp("pf-audit"), mode="audit") as world:
        yield world


def test_a_device_sending_as_contoso_is_delivered_stamped_and_recorded(pf: PostfixWorld) -> None:
    # What audit mode is for: a device that sends as contoso.com from an address in
    # contoso.com's SPF (127.0.0.1) with no connector. "on" would refuse it.
    tag = token()
    with smtplib.SMTP(
        "127.0.0.1", pf.port, local_hostname="DESKTOP-7QK2M9F", source_address=("127.0.0.1", 0)
    ) as smtp:
        assert smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], message(subject="Scanned", tag=tag)) == {}
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    assert header_values(arrived.data, "X-Dsguard-Audit") == [P1_NOTE]
    [results] = header_values(arrived.data, "Authentication-Results")
    assert "spf=pass smtp.mailfrom=contoso.com" in results
    policy = pf.wait_events(lambda e: e["front_door"] == "policyd" and e["client_ip"] == "127.0.0.1")
    assert [(e["decision"], e["mode"]) for e in policy] == [("audited", "audit")]
    [milter] = pf.wait_events(lambda e: e["front_door"] == "milter" and tag in (e["message_id"] or ""))
    assert (milter["decision"], milter["p1"]) == ("audited", "would_reject")


def test_the_campaigns_lure_is_accepted_but_held_with_both_notes(pf: PostfixWorld) -> None:
    tag = token()
    lure = message(
        from_="joe@contoso.com",
        to="joe@contoso.com",
        subject="New Missed Fax-msg",
        body=f"Listen Now: https://voice-e091b.firebaseapp.com/listen?m={tag}\r\n",
        tag=tag,
    )
    with smtplib.SMTP(
        "127.0.0.1", pf.port, local_hostname="WIN-3J8KQ2H1LDF", source_address=(STRANGER_IP, 0)
    ) as smtp:
        assert smtp.sendmail("joe@contoso.com", ["joe@contoso.com"], lure) == {}
    held = pf.wait_held(tag)
    notes = header_values(pf.postfix.postcat(held["queue_id"]).encode(), "X-Dsguard-Audit")
    assert notes[0] == P1_NOTE
    assert notes[1].startswith("would refuse (P2): header From in accepted domain contoso.com")
    [event] = pf.wait_events(lambda e: e["queue_id"] == held["queue_id"])
    assert (event["decision"], event["p1"], event["p2"]) == ("quarantined", "would_reject", "would_reject")
