"""The milter alone in a real Postfix (the README's block without check_policy_service): P1 is
refused at RCPT by the milter, with Microsoft's reply byte for byte."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.fixtures.gateway import RawSmtp
from tests.fixtures.postfix import STRANGER_IP, PostfixWorld, postfix_world

MICROSOFT_REPLY = (
    b"550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization "
    b"from unauthorized sources\r\n"
)


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixWorld]:
    with postfix_world(tmp_path_factory.mktemp("pf-milter-only"), with_policyd=False) as world:
        yield world


def test_without_the_policy_server_the_milter_refuses_p1_with_microsofts_exact_reply(
    pf: PostfixWorld,
) -> None:
    assert "check_policy_service" not in pf.postfix.postconf("smtpd_recipient_restrictions")
    with RawSmtp("127.0.0.1", pf.port, source=STRANGER_IP) as smtp:
        assert smtp.cmd("EHLO WIN-3J8KQ2H1LDF").startswith(b"250")
        assert smtp.cmd("MAIL FROM:<joe@contoso.com>").startswith(b"250")
        assert smtp.cmd("RCPT TO:<joe@contoso.com>") == MICROSOFT_REPLY
        assert smtp.cmd("RCPT TO:<ann@contoso.com>") == MICROSOFT_REPLY
    # One refused transaction, one event (not one per recipient).
    refused = pf.wait_events(lambda e: e["front_door"] == "milter" and e["decision"] == "refused")
    assert len(refused) == 1
    assert refused[0]["rcpt_to"] == ["joe@contoso.com"]
