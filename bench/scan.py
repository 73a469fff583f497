"""Benchmark ``dsguard scan`` against the stdlib parser on the same generated corpus.

    .venv/bin/python bench/scan.py [--messages 20000] [--out bench/out] [--seed 1]
        [--header-variety {corpus,unique}] [--in-process-only]

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
   not decide the ratio (the load average is printed too). Every dsguard run starts with its
   functools caches emptied;
3. the ``dsguard scan`` command end to end on the mbox file (``--jobs 1`` and ``--jobs 2``,
   with and without QR decoding): messages/s, MB/s, peak RSS of the whole process tree;
4. memory flatness: peak RSS of ``--jobs 1`` on a quarter of the corpus and on all of it.

Header variety. The scanner keeps bounded caches on parsed header values (Received lines
without their date, Authentication-Results, Received-SPF, address fields, X-Forefront-Antispam-
Report, IP addresses, ...; those of mail/ stop storing while they rarely hit, see
dsguard.mail.memo). The generated messages reuse 53 header blocks, so unless told
otherwise those caches answer nearly every lookup, and 2 looks faster than it would on mail it
has never seen. 1 and 2 are therefore measured on two mailboxes, one row pair each, labelled:

- ``corpus``: the header blocks repeated as they are, only the Message-ID differs: a tenant
  where the same servers and senders recur, where the caches do their job (an upper bound);
- ``unique``: the same messages (same templates, bodies and attachments for the seed) with
  every per-message or per-sender header value made new by textual substitution with a seeded
  RNG -- client IPs (Received, Authentication-Results, Received-SPF, X-Forefront CIP, X-MS-
  Exchange-*), HELO and rDNS names, Postfix/sendmail queue ids, local parts of the addresses
  (domains kept) and dates (shifted as a whole): nearly every cached key is new, the caches'
  worst case (a lower bound). The substitutions keep each message's verdict and findings
  (see vary_headers).

``--header-variety`` measures one of the two only; 3 and 4 use the corpus mailbox unless it
names ``unique``. Both rows feed the very same messages to the stdlib baseline and the scanner.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email
import email.policy
import ipaddress
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsguard.config import load_config  # noqa: E402
from dsguard.intel.geo import country_of  # noqa: E402
from dsguard.mail.source import RawMessage, iter_messages  # noqa: E402
from dsguard.policy.domains import org_domain  # noqa: E402
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


VARIETIES = ("corpus", "unique")
VARIETY_LEGEND = {
    "corpus": "the 53 corpus header blocks repeated, only the Message-ID differs "
    "(header caches hit)",
    "unique": "every message's client IPs, HELO/rDNS names, queue ids, local parts and dates "
    "new (header caches miss)",
}

# --header-variety unique: every generated message gets its own client addresses, HELO/rDNS
# names, queue ids, local parts and dates, by textual substitution on the header block. The
# substitutions keep what the verdict depends on: the same value stays the same throughout a
# message (an IP in Received, Authentication-Results, Received-SPF and X-Forefront alike); a
# global address stays in its /16 and registry country, a private one in its private range, a
# non-global one non-global and without country; configured connector IPs, loopback and
# sentinel addresses (255.255.255.255) are kept; domains are kept, only the first label of a
# host name and the local part of an address change.
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w.:])")
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
_NON_GLOBAL = ipaddress.ip_network("198.18.0.0/15")  # benchmarking range: not global, no country
_HOST_SLOTS = (
    re.compile(r"^Received:[ \t]*from[ \t]+([^\s()\[\];]+)", re.M | re.I),  # HELO
    re.compile(r"\(([^\s()\[\];]+)[ \t]+\["),  # rDNS: "(name [ip])"
    re.compile(r"\bhelo=([^\s;]+)", re.I),  # Received-SPF
    re.compile(r"\b(?:H|PTR):([^\s;]+);"),  # X-Forefront-Antispam-Report
)
_KEEP_HOSTS = frozenset({"localhost", "localhost.localdomain", "unknown"})
_QUEUE_ID = re.compile(r"(?<=\bid )[A-Za-z0-9]{5,}(?=[;\s])")
_ADDRESS = re.compile(
    r"(?<![\w.+%-])([A-Za-z0-9][A-Za-z0-9._%+-]*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)
_KEEP_LOCALS = frozenset({"postmaster", "mailer-daemon", "abuse"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),(\s+))?\b(\d{1,2})(\s+)(" + "|".join(_MONTHS) + r")(\s+)"
    r"(\d{4})(\s+)(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d)",
)
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def _keep_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    config = load_config(CONFIG)
    nets = [
        ipaddress.ip_network(r, strict=False) for c in config.connectors for r in c.sender_ip_ranges
    ]
    nets += [ipaddress.ip_network(n, strict=False) for n in config.trust.internal_networks]
    return tuple(nets)


def _new_ipv4(ip: ipaddress.IPv4Address, vary: random.Random, keep: tuple) -> str:
    if (
        any(ip in n for n in keep)
        or ip.is_loopback
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_link_local
        or int(ip) & 0xFF in (0, 255)
    ):
        return str(ip)
    for net in _PRIVATE:
        if ip in net:
            return str(net[vary.randrange(1, net.num_addresses - 1)])
    if not ip.is_global:
        return str(_NON_GLOBAL[vary.randrange(1, _NON_GLOBAL.num_addresses - 1)])
    country = country_of.__wrapped__(str(ip))  # uncached: generation must not warm the caches
    for _ in range(16):
        new = ipaddress.IPv4Address((int(ip) & 0xFFFF0000) | vary.randrange(1, 0xFFFF))
        if (
            new.is_global
            and int(new) & 0xFF not in (0, 255)
            and not any(new in n for n in keep)
            and country_of.__wrapped__(str(new)) == country
        ):
            return str(new)
    return str(ipaddress.IPv4Address((int(ip) & 0xFFFFFF00) | vary.randrange(1, 255)))


def _vary_ips(text: str, vary: random.Random, keep: tuple) -> str:
    seen: dict[str, str] = {}

    def v4(m: re.Match[str]) -> str:
        old = m.group(0)
        if old not in seen:
            try:
                ip = ipaddress.IPv4Address(old)
            except ValueError:
                seen[old] = old
            else:
                seen[old] = _new_ipv4(ip, vary, keep)
        return seen[old]

    def v6(m: re.Match[str]) -> str:
        old = m.group(0)
        key = old.lower()
        if key not in seen:
            try:
                ip = ipaddress.IPv6Address(old)
            except ValueError:
                seen[key] = old
            else:
                if ip.is_loopback or ip.is_unspecified or any(ip in n for n in keep):
                    seen[key] = old
                else:
                    seen[key] = str(
                        ipaddress.IPv6Address((int(ip) & ~0xFFFF) | vary.randrange(1, 0xFFFF))
                    )
        return seen[key]

    return _IPV6.sub(v6, _IPV4.sub(v4, text))


def _vary_hosts(text: str, vary: random.Random) -> str:
    names: dict[str, str] = {}
    for slot in _HOST_SLOTS:
        for m in slot.finditer(text):
            name = m.group(1).rstrip(".")
            low = name.lower()
            if low in names or low in _KEEP_HOSTS or not re.search(r"[A-Za-z]", name):
                continue
            if name.startswith("[") or not re.fullmatch(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*", name):
                continue
            if "." in name and org_domain.__wrapped__(low) == low:
                continue  # the domain itself: keep it
            names[low] = name.split(".", 1)[0]
    for low, label in names.items():
        digits = re.search(r"\d+$", label)
        keep_len = digits.start() if digits else len(label)
        # At least three digits, so that "mfp-floor2" has more than ten variants.
        width = max(len(label) - keep_len, 3)
        new_digits = "".join(vary.choice("0123456789") for _ in range(width))
        # A distinctive first label (Exchange's "BN8NAM11FT027") stands for the server wherever
        # it appears (with other zones, in X-MS-TrafficTypeDiagnostic); a plain one ("mail")
        # only as part of the whole name.
        distinctive = "." in low and len(label) >= 6 and re.search(r"\d", label)
        target = label if distinctive else low
        pattern = re.compile(
            r"(?<![\w.-])" + re.escape(target) + r"(?![\w-]|\.\w)"
            if not distinctive
            else r"(?<![\w.-])" + re.escape(target) + r"(?![\w-])",
            re.I,
        )
        end = len(label)
        text = pattern.sub(
            lambda m, k=keep_len, d=new_digits, n=end: m.group(0)[:k] + d + m.group(0)[n:],
            text,
        )
    return text


def _vary_queue_ids(text: str, vary: random.Random) -> str:
    def one(m: re.Match[str]) -> str:
        old = m.group(0)
        if all(c in "0123456789ABCDEF" for c in old):
            return "".join(vary.choice("0123456789ABCDEF") for _ in old)
        out = []
        for c in old:
            if c.isdigit():
                out.append(vary.choice("0123456789"))
            elif c.isupper():
                out.append(vary.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            else:
                out.append(vary.choice("abcdefghijklmnopqrstuvwxyz"))
        return "".join(out)

    return _QUEUE_ID.sub(one, text)


def _vary_locals(text: str, vary: random.Random) -> str:
    seen: dict[str, str] = {}

    def one(m: re.Match[str]) -> str:
        local, domain = m.group(1), m.group(2)
        if local.lower() in _KEEP_LOCALS:
            return m.group(0)
        key = local.lower()
        if key not in seen:
            seen[key] = "." + "".join(vary.choice(_ALNUM) for _ in range(6))
        return f"{local}{seen[key]}@{domain}"

    return _ADDRESS.sub(one, text)


def _vary_dates(text: str, vary: random.Random) -> str:
    shift = dt.timedelta(seconds=-vary.randrange(0, 180 * 86400))

    def one(m: re.Match[str]) -> str:
        sep_wd, day, s1, mon, s2, year, s3, hh, mm, ss = m.groups()
        try:
            when = dt.datetime(
                int(year), _MONTHS.index(mon) + 1, int(day), int(hh), int(mm), int(ss or 0)
            )
        except ValueError:
            return m.group(0)
        when += shift
        out = f"{_DAYS[when.weekday()]},{sep_wd}" if sep_wd is not None else ""
        out += f"{when.day}{s1}{_MONTHS[when.month - 1]}{s2}{when.year}{s3}{when.hour:02d}:{when.minute:02d}"
        return out + (f":{when.second:02d}" if ss is not None else "")

    return _DATE.sub(one, text)


def vary_headers(head: bytes, vary: random.Random, keep: tuple) -> bytes:
    """``head`` with the per-message and per-sender values of a real mailbox made new."""
    text = head.decode("latin-1")  # lossless for any bytes
    text = _vary_ips(text, vary, keep)
    text = _vary_hosts(text, vary)
    text = _vary_queue_ids(text, vary)
    text = _vary_locals(text, vary)
    text = _vary_dates(text, vary)
    return text.encode("latin-1")


def generate(
    path: Path, count: int, seed: int = 1, attack_share: float = 0.1, variety: str = "corpus"
) -> tuple[int, int]:
    """A mailbox as an organisation sees it: mostly legitimate mail, ``attack_share`` spoofs.

    ``variety`` "corpus" repeats the corpus header blocks (only the Message-ID differs);
    "unique" also passes each block through vary_headers. The choices of template, body and
    attachment come from the same random sequence either way, so for one seed the two
    mailboxes differ only in those header values.
    """
    rnd = random.Random(seed)
    vary = random.Random(seed * 1_000_003 + 7)
    keep = _keep_networks()
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
            if variety == "unique":
                head = vary_headers(head, vary, keep)
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


def clear_caches() -> None:
    """Empty every functools cache in dsguard's modules, so that each timed run starts cold and
    no run profits from answers a previous run (or the other header variety) left behind."""
    for name, module in list(sys.modules.items()):
        if name != "dsguard" and not name.startswith("dsguard."):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type):
                continue  # a class declaring the interface (mail.memo.Memo), not a cache
            if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                value.cache_clear()


def dsguard_rate(messages: list[RawMessage]) -> float:
    clear_caches()
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
    ap.add_argument(
        "--header-variety",
        choices=VARIETIES,
        default=None,
        help="measure 1 and 2 on this header variety only (default: both, one row pair each); "
        "runs 3 and 4 use it too (default: corpus)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated mailbox (default 1)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    varieties = [args.header_variety] if args.header_variety else list(VARIETIES)
    suffix = "" if args.seed == 1 else f"-seed{args.seed}"
    files: dict[str, tuple[Path, int, int]] = {}
    for variety in varieties:
        tag = "" if variety == "corpus" else f"-{variety}"
        path = args.out / f"corpus-{args.messages}{tag}{suffix}.mbox"
        files[variety] = (path, *generate(path, args.messages, args.seed, variety=variety))
    cli_variety = varieties[0]
    full, size, _ = files[cli_variety]
    quarter = full.with_name(full.name.replace(f"-{args.messages}", f"-{args.messages // 4}", 1))
    if not args.in_process_only:
        generate(quarter, args.messages // 4, seed=args.seed + 1, variety=cli_variety)
    mb = size / 1e6
    for variety, (path, vsize, vpdfs) in files.items():
        print(
            f"{variety} headers: {args.messages} messages, {vsize / 1e6:.1f} MB of message data "
            f"(mean {vsize / args.messages / 1024:.1f} KB), {vpdfs} with PDF attachments; {path}"
        )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    load1, load5, _ = os.getloadavg()
    print(f"load average at start: {load1:.2f} (1 min), {load5:.2f} (5 min)")

    print(
        "\n1 core, messages in memory, QR decoding off "
        "(best of 3 alternating runs per header variety):"
    )
    for variety in varieties:
        print(f"  [{variety}] = {VARIETY_LEGEND[variety]}")
    for variety in varieties:
        path, vsize, _ = files[variety]
        vmb = vsize / 1e6
        messages = load(path)
        assert len(messages) == args.messages, len(messages)
        base = ours = 0.0
        for _ in range(3):
            base = max(base, stdlib_rate(messages))
            ours = max(ours, dsguard_rate(messages))
        print(
            f"  [{variety}] stdlib email.message_from_bytes(policy=default): {base:9.0f} msg/s  "
            f"{base * vmb / args.messages:6.1f} MB/s"
        )
        print(
            f"  [{variety}] dsguard Scanner.scan (parse + envelope + checks): {ours:9.0f} msg/s  "
            f"{ours * vmb / args.messages:6.1f} MB/s"
            f"   ratio {ours / base:.2f}x"
        )
        del messages
    if args.in_process_only:
        load1, load5, _ = os.getloadavg()
        print(f"\nload average at end: {load1:.2f} (1 min), {load5:.2f} (5 min)")
        return

    print(
        f"\n`dsguard scan` end to end on the mbox ({cli_variety} headers; reading, scanning, "
        "jsonl report to /dev/null):"
    )
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
