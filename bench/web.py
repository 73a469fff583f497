"""Benchmark the web UI's quarantine list with 100,000 stored messages.

    .venv/bin/python bench/web.py [--rows 100000] [--requests 200] [--url DATABASE_URL]

1. Fills a fresh store (a SQLite file in a temp dir, or ``--url`` for PostgreSQL) with
   ``--rows`` quarantined messages in bulk through SQLAlchemy core (the repository's tables:
   ``quarantine``, its blob, recipient and finding index rows): 90 days of mail, 90 % held /
   7 % released / 3 % deleted, 60 % malicious, 3-8 findings each from 20 ids, 2,000
   recipients, 500 senders, the campaign's subjects. Every row has a real (small) blob.
2. Builds the app (``dsguard.web.app.create_app``) over it, signs a session in, and times
   requests through the whole ASGI stack in-process (httpx's ASGITransport: middleware,
   session check, CSRF dependency, query, template): no sockets, so the figures are the
   server's own time. Each scenario runs ``--requests`` times after 5 warm-up requests;
   p50 / p99 / max in milliseconds.

Scenarios: the list page (HTML, 50 rows) first page, which also counts the matches; a deep
page (a keyset cursor about 90 % of the way down, found by walking the API 500 rows at a
time); filtered first pages (verdict, finding, recipient, sender substring, text search,
one week, status=all); the same through the JSON API; a message page for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.fixtures.postgres for --postgres

import httpx  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from dsguard.config import load_config  # noqa: E402
from dsguard.store import open_store  # noqa: E402
from dsguard.store import repository as repo  # noqa: E402
from dsguard.store.db import Store  # noqa: E402
from dsguard.store.models import (  # noqa: E402
    Quarantine,
    QuarantineBlob,
    QuarantineFinding,
    QuarantineRecipient,
)
from dsguard.web.app import create_app  # noqa: E402

FINDINGS = [
    "DS_SPOOF_ENVELOPE", "DS_SPOOF_HEADER_FROM", "DS_DIRECT_SEND", "DS_SELF_ADDRESSED",
    "ATT_QR_PDF", "ATT_QR_IMAGE", "LURE_VOICEMAIL_FAX", "LURE_PAYROLL", "LURE_CREDENTIAL",
    "AUTH_DMARC_FAIL", "AUTH_SPF_FAIL", "AUTH_COMPAUTH_FAIL", "IOC_KNOWN_DOMAIN",
    "IOC_FREE_HOSTING_LINK", "HOP_HELO_BARE_NAME", "HOP_FOREIGN_COUNTRY", "CAMPAIGN_DIRECT_SEND_LURE",
    "HDR_MULTIPLE_FROM", "HDR_FORGED_AR", "LIMIT_MESSAGE_SIZE",
]  # fmt: skip
SUBJECTS = [
    "New Missed Fax-msg", "Voicemail received (00:42)", "Payroll update for {m}",
    "Scanned document from MFP-Floor2", "Your password expires today", "Invoice {n} overdue",
    "Shared document: Q3 numbers", "New Missed Fax-msg ({n} pages)",
]  # fmt: skip
ROWS_PER_CHUNK = 5_000
# (name, path, query): "cursor": None takes the deep cursor; "next": True times the second
# page of that filter (a keyset page: no count) instead of the first (which counts matches).
SCENARIOS: list[tuple[str, str, dict[str, Any]]] = [
    ("first page (and the count of matches)", "/quarantine", {}),
    ("deep page, ~90 % down (cursor)", "/quarantine", {"cursor": None}),
    ("verdict=suspicious, first page", "/quarantine", {"verdict": "suspicious"}),
    ("verdict=suspicious, next page", "/quarantine", {"verdict": "suspicious", "next": True}),
    ("finding=ATT_QR_IMAGE, first page", "/quarantine", {"finding": "ATT_QR_IMAGE"}),
    ("finding=ATT_QR_IMAGE, next page", "/quarantine", {"finding": "ATT_QR_IMAGE", "next": True}),
    ("recipient (one mailbox)", "/quarantine", {"recipient": "user17@contoso.com"}),
    ("sender substring, first page", "/quarantine", {"sender": "sender42@"}),
    ("sender substring, next page", "/quarantine", {"sender": "sender42@", "next": True}),
    ("text search, first page", "/quarantine", {"q": "payroll"}),
    ("text search, next page", "/quarantine", {"q": "payroll", "next": True}),
    ("one week (since/until)", "/quarantine", {"since": None, "until": None}),
    ("status=all", "/quarantine", {"status": "all"}),
    ("API first page (50)", "/api/quarantine", {}),
    ("API deep page (cursor)", "/api/quarantine", {"cursor": None}),
    (
        "API finding + recipient",
        "/api/quarantine",
        {"finding": "ATT_QR_PDF", "recipient": "user3@contoso.com"},
    ),
]


def fill(store: Store, rows: int, seed: int = 7) -> tuple[datetime, float]:
    """Bulk-insert ``rows`` quarantined messages; returns (newest time, seconds taken)."""
    rng = random.Random(seed)
    raw = (
        b"From: joe@contoso.com\r\nTo: joe@contoso.com\r\nSubject: New Missed Fax-msg\r\n"
        b"Message-ID: <bench@WIN-3J8KQ2H1LDF>\r\n\r\nListen Now: https://voice-e091b.example/\r\n"
    )
    blob, sha, size = zlib.compress(raw, 6), hashlib.sha256(raw).hexdigest(), len(raw)
    newest = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
    span = 90 * 24 * 3600
    started = time.perf_counter()
    done = 0
    while done < rows:
        count = min(ROWS_PER_CHUNK, rows - done)
        quarantine, blobs, recipients, findings = [], [], [], []
        for i in range(count):
            qid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
            roll = rng.random()
            status = "held" if roll < 0.90 else ("released" if roll < 0.97 else "deleted")
            rcpt = [
                f"user{rng.randrange(2000)}@contoso.com" for _ in range(1 + (rng.random() < 0.1))
            ]
            ids = rng.sample(FINDINGS, rng.randint(3, 8))
            sender = f"sender{rng.randrange(500)}@contoso.com"
            quarantine.append(
                {
                    "id": qid,
                    "received_at": newest - timedelta(seconds=rng.randrange(span)),
                    "status": status,
                    "status_changed_at": None,
                    "status_changed_by": None,
                    "mail_from": sender,
                    "header_from": sender,
                    "rcpt_to": rcpt,
                    "client_ip": f"139.28.{rng.randrange(256)}.{rng.randrange(256)}",
                    "helo": "WIN-3J8KQ2H1LDF",
                    "country": "UA",
                    "subject": rng.choice(SUBJECTS).format(
                        m=rng.choice(["March", "April"]), n=done + i
                    ),
                    "message_id": f"<{qid}@WIN-3J8KQ2H1LDF>",
                    "verdict": "malicious" if rng.random() < 0.6 else "suspicious",
                    "score": round(rng.uniform(5, 40), 1),
                    "findings": [
                        {"id": f, "score": 2, "summary": f.lower(), "evidence": ""} for f in ids
                    ],
                    "iocs": {"ips": [], "urls": [], "domains": [], "qr_urls": []},
                    "attribution": "anonymous",
                    "reason": "verdict malicious",
                    "raw_size": size,
                    "raw_sha256": sha,
                }
            )
            if status != "deleted":
                blobs.append({"quarantine_id": qid, "compression": "zlib", "data": blob})
            recipients.extend({"quarantine_id": qid, "address": a} for a in dict.fromkeys(rcpt))
            findings.extend({"quarantine_id": qid, "finding_id": f} for f in ids)
        with store.engine.begin() as connection:
            connection.execute(insert(Quarantine.__table__), quarantine)
            connection.execute(insert(QuarantineBlob.__table__), blobs)
            connection.execute(insert(QuarantineRecipient.__table__), recipients)
            connection.execute(insert(QuarantineFinding.__table__), findings)
        done += count
    if store.dialect == "sqlite":
        with store.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    else:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    return newest, time.perf_counter() - started


async def measure(
    app: Any, cookie: str, requests: int, newest: datetime
) -> list[tuple[str, list[float], int]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        client.cookies["dsguard_session"] = cookie
        deep = await _deep_cursor(client)
        week = {"since": (newest - timedelta(days=30)).date().isoformat(),
                "until": (newest - timedelta(days=24)).date().isoformat()}  # fmt: skip
        results = []
        for name, path, params in SCENARIOS:
            params = dict(params)
            if "cursor" in params:
                params["cursor"] = deep
            if "since" in params:
                params.update(week)
            if params.pop("next", False):
                first = (await client.get("/api/quarantine", params=params)).json()
                params["cursor"] = first["next_cursor"]
            for _ in range(5):
                await client.get(path, params=params)
            times = []
            status = 0
            for _ in range(requests):
                started = time.perf_counter()
                response = await client.get(path, params=params)
                times.append((time.perf_counter() - started) * 1000)
                status = response.status_code
                if status != 200:
                    raise SystemExit(f"{name}: HTTP {status}: {response.text[:300]}")
            results.append((name, times, _rows(response)))
        qid = (await client.get("/api/quarantine", params={"limit": 1})).json()["items"][0]["id"]
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            await client.get(f"/quarantine/{qid}")
            times.append((time.perf_counter() - started) * 1000)
        results.append(("message page (for comparison)", times, 1))
    return results


async def _deep_cursor(client: httpx.AsyncClient) -> str:
    """Walk the API 500 rows at a time; the cursor about 90 % of the way down."""
    response = await client.get("/api/quarantine", params={"limit": 500})
    if response.status_code != 200:
        raise SystemExit(f"API: HTTP {response.status_code}: {response.text[:300]}")
    first = response.json()
    total = first["total_estimate"]
    cursor = first["next_cursor"]
    walked = 500
    while walked < total * 0.9 and cursor:
        params = {"limit": 500, "cursor": cursor}
        page = (await client.get("/api/quarantine", params=params)).json()
        cursor = page["next_cursor"] or cursor
        walked += 500
    return str(cursor)


def _rows(response: httpx.Response) -> int:
    if response.headers["content-type"].startswith("application/json"):
        return len(response.json()["items"])
    return response.text.count('<td class="clip subject">')


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--url", help="database URL (default: a SQLite file in a temp dir)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run on a throwaway PostgreSQL cluster (tests/fixtures/postgres.py)",
    )
    args = parser.parse_args()
    server = None
    if args.postgres:
        from tests.fixtures.postgres import start_postgres

        server = start_postgres()
        args.url = server.url(server.create_database())
    try:
        run(args)
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="dsguard-bench-web-") as tmp:
        url = args.url or f"sqlite:///{tmp}/dsguard.sqlite3"
        config_path = Path(tmp) / "dsguard.toml"
        config_path.write_text(
            f'[organization]\naccepted_domains = ["contoso.com"]\n[storage]\nurl = "{url}"\n'
            f'[web]\nsession_secret_file = "web.key"\n[gateway]\nspool_dir = "spool"\n',
            encoding="utf-8",
        )
        config = load_config(config_path)
        store = open_store(config.storage.url)
        newest, seconds = fill(store, args.rows)
        size = ""
        if store.dialect == "sqlite":
            size = f", {os.path.getsize(Path(tmp) / 'dsguard.sqlite3') / 1e6:.0f} MB on disk"
        print(f"store: {store.dialect}, {args.rows:,} quarantined messages inserted in {seconds:.1f} s "
              f"({args.rows / seconds:,.0f} rows/s{size})")  # fmt: skip
        app = create_app(config, store=store)
        _session, cookie = app.state.web.sessions.create("bench")
        # The admin account must exist for the session's periodic account check.
        repo.add_user(store, "bench", "bench password 123", kind="admin")
        load = os.getloadavg()[0]
        results = asyncio.run(measure(app, cookie, args.requests, newest))
        print(f"{args.requests} requests per scenario, in-process ASGI (load average {load:.2f})\n")
        print("| scenario | rows shown | p50 ms | p99 ms | max ms |")
        print("|---|--:|--:|--:|--:|")
        for name, times, rows in results:
            print(f"| {name} | {rows} | {statistics.median(times):.1f} | {_percentile(times, 0.99):.1f} "
                  f"| {max(times):.1f} |")  # fmt: skip
        store.close()


if __name__ == "__main__":
    main()
