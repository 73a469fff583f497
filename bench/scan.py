"""Benchmark ``dsguard scan`` against the stdlib parser on the same generated corpus.

    .venv/bin/python bench/scan.py [--messages 20000] [--out bench/out]

Generates an mbox of realistic received messages (the corpus cases' header blocks: Exchange
Online and Postfix stamps; 90 % legitimate mail -- newsletters, internal mail, printers,
forwarded mail -- and 10 % campaign spoofs) with bodies of mixed sizes, 5 % carrying PDF
attachments (a fifth of those with QR codes). Then prints, on this machine and in
this one invocation:

1. the stdlib baseline: ``email.message_from_bytes(data, policy=email.policy.default)`` over
   the messages held in memory (parse only, one core);
2. dsguard's scanner in-process on the same in-memory messages, QR decoding off (one core):
   the per-core figure the target compares with the baseline. 1 and 2 run alternately, three
   times each, and the best run of each counts, so a burst of other work on the machine does
   not decide the ratio (the load average is printed too);
3. the ``dsguard scan`` command end to end on the mbox file (``--jobs 1`` and ``--jobs 2``,
   with and without QR decoding): messages/s, MB/s, peak RSS of the whole process tree;
4. memory flatness: peak RSS of ``--jobs 1`` on a quarter of the corpus and on all of it.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsguard.config import load_config  # noqa: E402
from dsguard.mail.source import RawMessage, iter_messages  # noqa: E402
from dsguard.scan import Scanner  # noqa: E402

CASES = ROOT / "tests" / "corpus" / "cases"
QR = ROOT / "tests" / "data" / "qr"
CONFIG = ROOT / "tests" / "corpus" / "configs" / "contoso-exo.toml"
WORDS = [
    "please",
    "review",
    "the",
    "attached",
    "quarterly",
    "report",
    "and",
    "let",
    "me",
    "know",
    "if",
    "anything",
    "needs",
    "changing",
    "before",
    "friday",
    "meeting",
    "invoice",
    "shipment",
    "schedule",
    "update",
    "thanks",
    "regards",
    "team",
    "project",
    "budget",
    "the",
    "customer",
    "asked",
    "about",
    "delivery",
    "dates",
    "and",
    "pricing",
    "for",
    "next",
    "month",
    "see",
    "the",
    "link",
    "below",
]


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    head = raw[:end] if end != -1 else raw
    keep: list[bytes] = []
    skip = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skip:
                keep.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skip = name in (b"content-type", b"content-transfer-encoding", b"mime-version")
        if not skip:
            keep.append(line)
    return b"\r\n".join(keep)


def _text(rnd: random.Random, size: int) -> bytes:
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rnd.choice(WORDS) for _ in range(12))
        if rnd.random() < 0.1:
            line += f" https://www.example.org/item/{rnd.randrange(10**6)}"
        out.append(line)
        n += len(line) + 2
    return "\r\n".join(out).encode()


def _b64(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i : i + 76] for i in range(0, len(enc), 76))


def _templates() -> tuple[list[bytes], list[bytes]]:
    """Header blocks of the corpus cases, split into legitimate (expected clean) and attacks."""
    import tomllib

    expected = tomllib.loads((CASES.parent / "expected.toml").read_text())["case"]
    clean = {c["file"] for c in expected if c["verdict"] == "clean"}
    legit: list[bytes] = []
    attacks: list[bytes] = []
    for p in sorted(CASES.glob("*.eml")):
        (legit if p.name in clean else attacks).append(_header_block(p.read_bytes()))
    return legit, attacks


def generate(path: Path, count: int, seed: int = 1, attack_share: float = 0.1) -> tuple[int, int]:
    """A mailbox as an organisation sees it: mostly legitimate mail, ``attack_share`` spoofs."""
    rnd = random.Random(seed)
    legit, attacks = _templates()
    pdfs = [
        (QR / "no-qr.pdf").read_bytes(),
        (QR / "qr-raster.pdf").read_bytes(),
        (QR / "qr-vector.pdf").read_bytes(),
    ]
    total = 0
    pdf_count = 0
    with path.open("wb") as fh:
        for i in range(count):
            pool = attacks if rnd.random() < attack_share else legit
            head = rnd.choice(pool).replace(b"Message-ID: <", b"Message-ID: <%d." % i, 1)
            # Sizes: mostly a few KB, a tail up to ~60 KB.
            size = min(int(rnd.lognormvariate(8.2, 0.9)), 60_000)
            body = _text(rnd, size)
            if rnd.random() < 0.05:
                pdf_count += 1
                pdf = pdfs[0] if rnd.random() < 0.8 else rnd.choice(pdfs[1:])
                msg = (
                    head
                    + b'\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
                    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                    + body
                    + b'\r\n--b\r\nContent-Type: application/pdf; name="doc.pdf"\r\n'
                    b'Content-Disposition: attachment; filename="doc.pdf"\r\n'
                    b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(pdf) + b"\r\n--b--\r\n"
                )
            else:
                msg = (
                    head
                    + b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                    + body
                    + b"\r\n"
                )
            msg = msg.replace(b"\r\nFrom ", b"\r\n>From ")
            fh.write(
                b"From bench@example.org Thu Nov 27 12:00:00 2026\n"
                + msg.replace(b"\r\n", b"\n")
                + b"\n"
            )
            total += len(msg)
    return total, pdf_count


def load(path: Path) -> list[RawMessage]:
    return [
        m
        for m in iter_messages([str(path)], max_message_bytes=50 << 20)
        if isinstance(m, RawMessage)
    ]


def stdlib_rate(messages: list[RawMessage]) -> float:
    start = time.perf_counter()
    for m in messages:
        email.message_from_bytes(m.data, policy=email.policy.default)
    return len(messages) / (time.perf_counter() - start)


def dsguard_rate(messages: list[RawMessage]) -> float:
    scanner = Scanner(load_config(CONFIG, {"limits": {"decode_qr": False}}))
    start = time.perf_counter()
    for m in messages:
        scanner.scan(m)
    return len(messages) / (time.perf_counter() - start)


def _tree_rss(pid: int) -> int:
    """Resident set size of a process and all its descendants, in bytes (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
        stack.extend(children.get(p, []))
    return total


def run_cli(args: list[str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "dsguard", "scan", *args]
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    _, err = proc.communicate()
    t.join()
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"dsguard scan failed ({proc.returncode}): {err.decode()[-500:]}")
    return elapsed, peak


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument(
        "--in-process-only",
        action="store_true",
        help="measure only 1 and 2 (stdlib against Scanner.scan), skip the CLI runs 3 and 4",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    full = args.out / f"corpus-{args.messages}.mbox"
    quarter = args.out / f"corpus-{args.messages // 4}.mbox"
    size, pdfs = generate(full, args.messages)
    if not args.in_process_only:
        generate(quarter, args.messages // 4, seed=2)
    mb = size / 1e6
    print(
        f"corpus: {args.messages} messages, {mb:.1f} MB of message data "
        f"(mean {size / args.messages / 1024:.1f} KB), {pdfs} with PDF attachments; {full}"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    load1, load5, _ = os.getloadavg()
    print(f"load average at start: {load1:.2f} (1 min), {load5:.2f} (5 min)")

    messages = load(full)
    assert len(messages) == args.messages, len(messages)
    base = ours = 0.0
    for _ in range(3):
        base = max(base, stdlib_rate(messages))
        ours = max(ours, dsguard_rate(messages))
    print("\n1 core, messages in memory, QR decoding off (best of 3 alternating runs):")
    print(
        f"  stdlib email.message_from_bytes(policy=default): {base:9.0f} msg/s  {base * mb / args.messages:6.1f} MB/s"
    )
    print(
        f"  dsguard Scanner.scan (parse + envelope + checks): {ours:9.0f} msg/s  {ours * mb / args.messages:6.1f} MB/s"
        f"   ratio {ours / base:.2f}x"
    )
    del messages
    if args.in_process_only:
        load1, load5, _ = os.getloadavg()
        print(f"\nload average at end: {load1:.2f} (1 min), {load5:.2f} (5 min)")
        return

    print("\n`dsguard scan` end to end on the mbox (reading, scanning, jsonl report to /dev/null):")
    cfg = ["--config", str(CONFIG), "--format", "jsonl", "--output", os.devnull, "--no-progress"]
    for label, extra in (
        ("--jobs 1 --no-qr", ["--jobs", "1", "--no-qr"]),
        ("--jobs 2 --no-qr", ["--jobs", "2", "--no-qr"]),
        ("--jobs 2 (QR decoding on)", ["--jobs", "2"]),
    ):
        elapsed, peak = run_cli([*cfg, *extra, str(full)])
        print(
            f"  {label:28} {args.messages / elapsed:8.0f} msg/s  {mb / elapsed:6.1f} MB/s  "
            f"peak RSS {peak / 2**20:6.0f} MiB  ({elapsed:.1f} s)"
        )

    print("\nmemory as the corpus grows (--jobs 1 --no-qr):")
    for path, n in ((quarter, args.messages // 4), (full, args.messages)):
        elapsed, peak = run_cli([*cfg, "--jobs", "1", "--no-qr", str(path)])
        print(
            f"  {n:6d} messages ({path.stat().st_size / 1e6:6.1f} MB mbox): peak RSS {peak / 2**20:6.0f} MiB"
        )
    load1, load5, _ = os.getloadavg()
    print(f"\nload average at end: {load1:.2f} (1 min), {load5:.2f} (5 min)")


if __name__ == "__main__":
    main()
