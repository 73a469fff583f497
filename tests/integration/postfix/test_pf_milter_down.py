"""milter_default_action = tempfail, as the README says: when the milter is down, Postfix
answers 451 and keeps nothing; when it is back, mail flows again."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.gateway import RawSmtp, message, sink_messages_with, token, wait_at_sink
from tests.fixtures.postfix import DsguardDaemon, PostfixWorld, postfix_world

MILTER_UNAVAILABLE = b"451 4.7.1 Service unavailable - try again later\r\n"


def transaction(pf: PostfixWorld, tag: str) -> list[bytes]:
    """An ordinary inbound message; every reply Postfix gave, in order."""
    with RawSmtp("127.0.0.1", pf.port, source="127.0.0.5") as smtp:
        replies = [smtp.cmd("EHLO mailer.example.net"), smtp.cmd("MAIL FROM:<news@example.org>")]
        replies.append(smtp.cmd("RCPT TO:<joe@contoso.com>"))
        reply = smtp.cmd("DATA")
        replies.append(reply)
        if reply.startswith(b"354"):
            data = message(from_="news@example.org", tag=tag).replace(b"\r\n.", b"\r\n..")
            replies.append(smtp.cmd(data + b"."))
        smtp.cmd("QUIT")
    return replies


def test_milter_down_means_tempfail_and_nothing_queued(tmp_path: Path) -> None:
    with postfix_world(tmp_path, mode="on") as pf:
        port = pf.milter.port
        assert pf.milter.stop() == 0
        refused_tag = token()
        replies = transaction(pf, refused_tag)
        # Postfix cannot reach the milter when the client says MAIL: 451, then no DATA.
        assert replies[1] == MILTER_UNAVAILABLE, replies
        assert not any(r.startswith(b"250 2.0.0") for r in replies), replies
        assert pf.postfix.queue() == []
        # The milter is back on its port: the next message goes through and is stamped.
        pf.milter = DsguardDaemon("milter", pf.config_path, pf.root, port=port).start()
        tag = token()
        replies = transaction(pf, tag)
        assert replies[-1].startswith(b"250 2.0.0 Ok: queued as"), replies
        [arrived] = wait_at_sink(pf.world.sink, tag.encode())
        assert b"X-Dsguard-Verdict: clean;" in arrived.data
        assert not sink_messages_with(pf.world.sink, refused_tag.encode())
