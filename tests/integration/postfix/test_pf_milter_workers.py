"""``dsguard milter --workers N``: N processes on one port (SO_REUSEPORT), each a whole milter.

Connections spread over the workers, every worker answers correctly, SIGHUP reaches each,
a worker that dies is replaced, SIGTERM stops them all, and a worker does not outlive a killed
supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.gateway import to_toml
from tests.fixtures.processes import json_records, wait_for_record, wait_gone
from tests.integration.postfix.test_pf_milter_protocol import RDS_REPLY, Mta

ROOT = Path(__file__).resolve().parents[3]


class Workers:
    def __init__(self, root: Path, count: int) -> None:
        config = self.config = root / "dsguard.toml"
        config.write_text(
            to_toml(
                {
                    "organization": {
                        "accepted_domains": ["contoso.com"],
                        "reject_direct_send": "on",
                    },
                    "gateway": {"hostname": "mx.contoso.com"},
                    "storage": {"url": f"sqlite:///{root / 'events.sqlite3'}"},
                }
            ),
            encoding="utf-8",
        )
        self.log_path = root / "milter.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dsguard",
                    "milter",
                    "--config",
                    str(config),
                    "--listen",
                    "127.0.0.1:0",
                    "--workers",
                    str(count),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
                start_new_session=True,
            )
        ready = self.wait_for(lambda r: r.get("event") == "ready")
        self.port = int(ready["milter"].rsplit(":", 1)[1])
        self.pids: list[int] = ready["workers"]
        assert len(self.pids) == count
        self.wait_for(lambda r: r.get("event") == "worker_ready", count=count)

    def records(self) -> list[dict[str, Any]]:
        return json_records(self.log_path.read_text(errors="replace").splitlines())

    def wait_for(self, match: Any, count: int = 1, timeout: float = 30) -> dict[str, Any]:
        return wait_for_record(self.log_path, self.proc, match, count, timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    daemon = Workers(tmp_path, 2)
    yield daemon
    daemon.stop()
    for pid in daemon.pids:  # never leave a worker behind, whatever the test did
        wait_gone(pid, 10)


def _connections_per_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on the milter's port, per process (via /proc)."""
    inodes: set[str] = set()
    with open("/proc/net/tcp") as fh:
        for line in list(fh)[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                inodes.add(fields[9])
    out = {}
    for pid in pids:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        out[pid] = count
    return out


def _refused(port: int) -> Mta:
    mta = Mta(port)
    mta.negotiate()
    command, data = mta.envelope("ceo@contoso.com", "joe@contoso.com")
    assert command == b"y"
    assert data.startswith(RDS_REPLY)
    return mta


def test_connections_spread_over_workers_that_each_answer(workers: Workers) -> None:
    clients = [_refused(workers.port) for _ in range(16)]
    try:
        spread = _connections_per_pid(workers.pids, workers.port)
        assert sum(spread.values()) == 16
        assert all(count > 0 for count in spread.values()), spread
    finally:
        for mta in clients:
            mta.close()


def test_reload_reaches_every_worker(workers: Workers) -> None:
    workers.proc.send_signal(signal.SIGHUP)
    workers.wait_for(lambda r: r.get("event") == "reloaded", count=2)
    reloaded = {r["pid"] for r in workers.records() if r.get("event") == "reloaded"}
    assert reloaded == set(workers.pids)


def test_a_dead_worker_is_replaced(workers: Workers) -> None:
    victim = workers.pids[0]
    os.kill(victim, signal.SIGKILL)
    started = workers.wait_for(lambda r: r.get("event") == "worker_started")
    assert victim not in started["workers"] and len(started["workers"]) == 2
    workers.wait_for(lambda r: r.get("event") == "worker_ready", count=3)
    workers.pids = started["workers"]
    clients = [_refused(workers.port) for _ in range(12)]  # none lands on the dead socket
    for mta in clients:
        mta.close()


def test_a_replacement_worker_starts_with_the_reloaded_config(workers: Workers) -> None:
    text = workers.config.read_text(encoding="utf-8")
    assert 'reject_direct_send = "on"' in text
    workers.config.write_text(text.replace('= "on"', '= "audit"'), encoding="utf-8")
    workers.proc.send_signal(signal.SIGHUP)
    workers.wait_for(lambda r: r.get("event") == "reloaded", count=2)
    os.kill(workers.pids[0], signal.SIGKILL)
    started = workers.wait_for(lambda r: r.get("event") == "worker_started")
    workers.wait_for(lambda r: r.get("event") == "worker_ready", count=3)
    workers.pids = started["workers"]
    # Audit mode everywhere, the replacement included: the spoof's RCPT is let through.
    clients = []
    try:
        for _ in range(16):
            mta = Mta(workers.port)
            clients.append(mta)
            mta.negotiate()
            assert mta.envelope("ceo@contoso.com", "joe@contoso.com") == (b"c", b"")
        spread = _connections_per_pid(workers.pids, workers.port)
        assert all(count > 0 for count in spread.values()), spread
    finally:
        for mta in clients:
            mta.close()


def test_sigterm_stops_every_worker(workers: Workers) -> None:
    _refused(workers.port).close()
    assert workers.stop() == 0
    assert all(wait_gone(pid, 10) for pid in workers.pids)


def test_workers_do_not_outlive_a_killed_supervisor(workers: Workers) -> None:
    workers.proc.kill()
    workers.proc.wait()
    assert all(wait_gone(pid, 15) for pid in workers.pids)
