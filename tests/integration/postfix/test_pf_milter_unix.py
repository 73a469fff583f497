"""The milter on a unix socket (``dsguard milter --listen unix:/path``, main.cf
``smtpd_milters = unix:/path``): the same decisions as over TCP, and the socket file's life.

The socket has mode 0666 here because the test's milter runs as root and Postfix's smtpd and
cleanup as the postfix user; the default (0660) expects postfix in the milter's group.
"""

from __future__ import annotations

import os
import smtplib
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fixtures.gateway import RDS_REPLY, header_values, message, token, wait_at_sink
from tests.fixtures.postfix import MX_HOSTNAME, ROOT, STRANGER_IP, PostfixWorld, postfix_world


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixWorld]:
    with postfix_world(
        tmp_path_factory.mktemp("pf-milter-unix"),
        with_policyd=False,
        milter_unix=True,
        settings={"milter": {"socket_mode": 0o666}},
    ) as world:
        yield world


def test_postfix_talks_to_the_milter_over_the_unix_socket(pf: PostfixWorld) -> None:
    assert pf.milter.unix_path is not None
    assert pf.postfix.postconf("smtpd_milters") == f"unix:{pf.milter.unix_path}"
    mode = os.stat(pf.milter.unix_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o666

    # The campaign's spoof: refused at RCPT with Microsoft's reply.
    with smtplib.SMTP("127.0.0.1", pf.port, source_address=(STRANGER_IP, 0)) as smtp:
        smtp.ehlo("WIN-3J8KQ2H1LDF")
        assert smtp.mail("joe@contoso.com")[0] == 250
        code, text = smtp.rcpt("joe@contoso.com")
    assert f"{code} {text.decode()}" == RDS_REPLY

    # A legitimate external message: delivered with our headers (the end-of-message path,
    # which over a unix socket gets no reply to DATA: no Nagle delay to work around).
    tag = token()
    with smtplib.SMTP(
        "127.0.0.1", pf.port, local_hostname="mailer.example.net", source_address=(STRANGER_IP, 0)
    ) as smtp:
        refused = smtp.sendmail(
            "news@example.org", ["joe@contoso.com"], message(from_="news@example.org", tag=tag)
        )
    assert refused == {}
    [arrived] = wait_at_sink(pf.world.sink, tag.encode())
    [verdict] = header_values(arrived.data, "X-Dsguard-Verdict")
    assert verdict == "clean; score=0; direct_send=no; attribution=anonymous"
    [results] = header_values(arrived.data, "Authentication-Results")
    assert results.startswith(f"{MX_HOSTNAME}; spf=pass smtp.mailfrom=example.org")


def _milter(config: Path, listen: str) -> subprocess.CompletedProcess[str]:
    """A milter that should refuse to start: its one-line error."""
    return subprocess.run(
        [sys.executable, "-m", "dsguard", "milter", "--config", str(config), "--listen", listen],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_a_live_milter_socket_is_not_taken_over_and_a_file_is_not_replaced(
    pf: PostfixWorld, tmp_path: Path
) -> None:
    assert pf.milter.unix_path is not None
    busy = _milter(pf.config_path, f"unix:{pf.milter.unix_path}")
    assert busy.returncode != 0
    assert "another milter is listening there" in busy.stderr
    assert "Traceback" not in busy.stderr

    plain = tmp_path / "not-a-socket"
    plain.write_text("keep me")
    refused = _milter(pf.config_path, f"unix:{plain}")
    assert refused.returncode != 0 and "is not a socket" in refused.stderr
    assert plain.read_text() == "keep me"

    relative = _milter(pf.config_path, "unix:milter.sock")
    assert relative.returncode != 0 and "must be absolute" in relative.stderr


def test_a_stale_socket_of_a_dead_milter_is_replaced_and_removed_at_stop(
    pf: PostfixWorld, tmp_path: Path
) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed milter leaves behind
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsguard", "milter", "--config", str(pf.config_path),
         "--listen", f"unix:{path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"event": "ready"' in line:
                assert f'"milter": "unix:{path}"' in line
                break
        else:
            raise AssertionError("the milter did not start")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(path))  # it accepts there now
        probe.close()
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 0
    assert not path.exists()
