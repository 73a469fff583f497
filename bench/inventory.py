"""Benchmark ``dsguard m365 inventory`` on a large message-trace export.

    .venv/bin/python bench/inventory.py [--rows 1000000] [--out bench/out]

Generates a Get-MessageTraceV2 CSV of ``--rows`` rows (and one of a tenth of that) with
tests/data/m365/make_exports.py's ``write_big_message_trace``: 60 % external inbound mail, 10 %
internal/outbound, 30 % Direct Send from a FIXED set of 1,024 sources (20 printers, 4 relay IPs,
1,000 attack IPs in 139.28.36-39.x), so both files have the same sources and only the row count
differs. Then runs the command end to end (``--format json --output /dev/null
--no-progress``) on each and prints, for this machine and this invocation: rows/s, MB/s and the
peak RSS of the process - the memory figure must not grow with the rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
MAKE_EXPORTS = ROOT / "tests" / "data" / "m365" / "make_exports.py"


def _make_exports() -> ModuleType:
    spec = importlib.util.spec_from_file_location("m365_make_exports", MAKE_EXPORTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rss(pid: int) -> int:
    """Resident set size of one process in bytes (Linux /proc), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_inventory(path: Path) -> tuple[float, int, str]:
    cmd = [sys.executable, "-m", "dsguard", "m365", "inventory", str(path),
           "--accepted-domain", "contoso.com", "--format", "json", "--output", os.devnull,
           "--no-progress"]
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dsguard m365 inventory failed ({proc.returncode}): {err[-500:]}")
    return elapsed, peak, err


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_exports = _make_exports()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for rows in (args.rows // 10, args.rows):
        path = args.out / f"message-trace-{rows}.csv"
        started = time.perf_counter()
        size = make_exports.write_big_message_trace(path, rows)
        made = time.perf_counter() - started
        elapsed, peak, _ = run_inventory(path)
        print(
            f"{rows:>9,} rows ({size / 1e6:6.1f} MB, generated in {made:5.1f} s): "
            f"{rows / elapsed:9,.0f} rows/s  {size / 1e6 / elapsed:5.1f} MB/s  "
            f"peak RSS {peak / 2**20:5.0f} MiB  ({elapsed:.1f} s)"
        )


if __name__ == "__main__":
    main()
