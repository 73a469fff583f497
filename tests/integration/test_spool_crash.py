"""Kill -9 a process that is spooling mail: every message whose enqueue() returned survives,
and the relay then delivers all of them to a real smtp-sink.

The child process enqueues messages in a loop and prints each id right after enqueue()
returns (flushed), which is the moment the gateway would answer 250. The test SIGKILLs it
while it runs, recovers the spool and checks every printed id. A message the child was still
writing when it died may or may not be there (its client never got a 250); a printed one must.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.smtpsink import SmtpSink, expected_dump

from dsguard.gateway.relay import Downstream, Relay, RetryPolicy
from dsguard.gateway.spool import STATES, Spool

# One definition of the test messages, used by the child and by the checks here.
MAKE_MESSAGE = r"""
def make_message(n):
    lines = b"".join(b"line %d of message %d\r\n" % (i, n) for i in range(n % 40))
    head = b"Message-ID: <crash-%d@contoso.com>\r\nSubject: crash %d\r\n\r\n" % (n, n)
    return head + lines + bytes(range(128, 256)) + b"\r\n"
"""
_namespace: dict[str, Any] = {}
exec(MAKE_MESSAGE, _namespace)
make_message: Callable[[int], bytes] = _namespace["make_message"]

CHILD = (
    MAKE_MESSAGE
    + r"""
import sys
from pathlib import Path
from dsguard.gateway.spool import Spool

spool = Spool(Path(sys.argv[1]))
n = int(sys.argv[2])
while True:
    entry = spool.enqueue(make_message(n), "joe@contoso.com", ["user%d@contoso.com" % (n % 5)],
                          {"seq": str(n)})
    sys.stdout.write("%d %s\n" % (n, entry.id))
    sys.stdout.flush()
    n += 1
"""
)

ROUNDS = 3


def spool_and_kill(spool_dir: Path, first: int, kill_after: int) -> dict[int, str]:
    """Run the child until it reported ``kill_after`` messages, SIGKILL it, and return every
    (sequence number -> id) it reported, including lines written just before the kill."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool_dir), str(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    output = b""
    while output.count(b"\n") < kill_after:
        line = proc.stdout.readline()
        assert line, f"child stopped early: {proc.stderr.read().decode()}"
        output += line
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: it is busy enqueueing the next message
    output += proc.stdout.read()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    recorded = {}
    for line in output.split(b"\n")[:-1]:  # a line cut off by the kill was never reported
        seq, entry_id = line.decode().split()
        recorded[int(seq)] = entry_id
    return recorded


def test_sigkill_while_spooling_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    recorded: dict[int, str] = {}
    for round_number in range(ROUNDS):
        recorded |= spool_and_kill(spool_dir, round_number * 100_000, 60 + 17 * round_number)

        spool = Spool(spool_dir)
        spool.recover()

        assert os.listdir(spool_dir / "tmp") == []
        assert spool.list("failed") == []  # no half-written entry was ever visible
        stored = {entry.id: entry for entry in spool.list("new")}
        for seq, entry_id in recorded.items():
            assert entry_id in stored, f"message {seq} ({entry_id}) was acknowledged, then lost"
            entry = stored[entry_id]
            assert entry.meta == {"seq": str(seq)}
            assert entry.rcpt_to == (f"user{seq % 5}@contoso.com",)
            assert spool.read(entry) == make_message(seq)
        assert len(stored) - len(recorded) <= round_number + 1  # one unreported per kill, at most

    # After the crashes, the relay delivers every stored message to a real downstream.
    spool = Spool(spool_dir)
    stored_ids = {entry.id for entry in spool.list("new")}
    with SmtpSink(tmp_path / "sink") as sink:
        relay = Relay(
            spool,
            Downstream(host=sink.host, port=sink.port, timeout=10.0),
            RetryPolicy(first_delay=0.05, max_delay=0.2),
            concurrency=8,
            helo="gateway.example.com",
        )
        asyncio.run(deliver_everything(relay, spool))
        received = sink.wait_for(len(stored_ids))

    assert len(received) == len(stored_ids)  # each exactly once
    by_seq = {}
    for data in received:
        match = re.match(rb"Message-ID: <crash-(\d+)@contoso\.com>", data)
        assert match is not None
        by_seq[int(match.group(1))] = data
    for seq in recorded:
        assert by_seq[seq] == expected_dump(make_message(seq))


async def deliver_everything(relay: Relay, spool: Spool) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while any(spool.list(state) for state in STATES):
        assert loop.time() < deadline, "relay did not empty the spool"
        assert not task.done()
        await asyncio.sleep(0.05)
    stop.set()
    await task
