"""``dsguard scan`` as a user runs it: real processes, real files, exit codes, formats."""

from __future__ import annotations

import csv
import io
import json
import mailbox
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CASES = ROOT / "tests" / "corpus" / "cases"
EXO = ROOT / "tests" / "corpus" / "configs" / "contoso-exo.toml"
DSGUARD = [sys.executable, "-m", "dsguard"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DSGUARD, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory: an mbox of three corpus cases, a Maildir with two, an Outlook .msg."""
    root = tmp_path_factory.mktemp("mixed")
    box = mailbox.mbox(str(root / "inbox.mbox"))
    for name in (
        "exo-campaign-fax-qr-vector.eml",
        "exo-newsletter-tracking-links.eml",
        "exo-p2only-payroll.eml",
    ):
        box.add((CASES / name).read_bytes())
    box.flush()
    box.close()
    md = mailbox.Maildir(str(root / "Maildir"))
    for name in ("exo-internal-user.eml", "exo-spoof-ceo-reply-to.eml"):
        md.add((CASES / name).read_bytes())
    md.close()
    shutil.copy(
        ROOT / "tests" / "data" / "mail-parser-mails" / "mail_outlook_1", root / "outlook.msg"
    )
    return root


def test_exit_status_and_text_report(mixed: Path) -> None:
    proc = run("scan", "--config", str(EXO), str(mixed))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout
    assert "MALICIOUS" in out
    assert "inbox.mbox#0" in out
    assert "Summary: 6 messages" in out
    assert "139.28.36.117" in out  # the campaign IP among the top sending IPs


def test_clean_mail_exits_zero() -> None:
    proc = run(
        "scan",
        "--config",
        str(EXO),
        str(CASES / "exo-internal-user.eml"),
        str(CASES / "exo-printer-direct-send-spf.eml"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unreadable_input_exits_two_and_the_rest_is_still_scanned(tmp_path: Path) -> None:
    junk = tmp_path / "junk.eml"
    junk.write_bytes(b"\x00\x01\x02binary junk")
    proc = run(
        "scan",
        "--config",
        str(EXO),
        "--format",
        "jsonl",
        str(junk),
        str(tmp_path / "missing.eml"),
        str(CASES / "exo-campaign-vm-loopback-helo.eml"),
    )
    assert proc.returncode == 2
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [bool(r["error"]) for r in lines] == [True, True, False]
    assert lines[2]["verdict"] == "malicious"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dsguard: ")]
    assert len(errors) == 2
    assert all("\n" not in e and len(e) < 300 for e in errors)
    assert "junk.eml" in errors[0]
    assert "missing.eml" in errors[1]


@pytest.mark.parametrize(
    "args",
    [
        ["scan"],
        ["scan", "--format", "xml", "x.eml"],
        ["scan", "--jobs", "-1", "x.eml"],
        ["scan", "--nope", "x.eml"],
    ],
)
def test_usage_errors_exit_two_without_traceback(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_bad_config_is_one_line_per_mistake(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[organization]\nreject_direct_send = "maybe"\naccepted_domains = ["a b"]\n')
    proc = run("scan", "--config", str(cfg), str(CASES / "exo-internal-user.eml"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"dsguard: config {cfg}: organization.") for line in lines)


def test_formats_agree(mixed: Path, tmp_path: Path) -> None:
    results = {}
    for fmt in ("jsonl", "json", "csv", "html"):
        out = tmp_path / f"report.{fmt}"
        proc = run("scan", "--config", str(EXO), "--format", fmt, "--output", str(out), str(mixed))
        assert proc.returncode == 1, proc.stderr
        results[fmt] = out.read_text(encoding="utf-8")
    jsonl = [json.loads(line) for line in results["jsonl"].splitlines()]
    doc = json.loads(results["json"])
    rows = list(csv.DictReader(io.StringIO(results["csv"])))
    assert (
        [r["source"] for r in jsonl]
        == [r["source"] for r in doc["results"]]
        == [r["source"] for r in rows]
    )
    assert [r["verdict"] for r in jsonl] == [r["verdict"] for r in rows]
    campaign = next(r for r in jsonl if r["source"].endswith("inbox.mbox#0"))
    assert campaign["direct_send"] is True
    assert "https://mv4lh.bsfff.es/m365/?vm=0617" in campaign["iocs"]["qr_urls"]
    html = results["html"]
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert "<script" not in html.lower()
    assert "hxxps://mv4lh[.]bsfff[.]es" in html


def test_two_jobs_give_the_same_results_in_the_same_order(mixed: Path) -> None:
    one = run("scan", "--config", str(EXO), "--format", "jsonl", "--jobs", "1", str(mixed))
    two = run("scan", "--config", str(EXO), "--format", "jsonl", "--jobs", "2", str(mixed))
    assert one.returncode == two.returncode == 1
    strip = [{k: v for k, v in json.loads(line).items()} for line in one.stdout.splitlines()]
    strip2 = [json.loads(line) for line in two.stdout.splitlines()]
    assert strip == strip2


def test_inferred_domains_are_said(tmp_path: Path) -> None:
    proc = run("scan", "--format", "jsonl", str(CASES / "exo-campaign-fax-qr-noconfig.eml"))
    assert proc.returncode == 1
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any("inferred from the recipients" in n for n in row["notes"])
    assert row["direct_send"] is True


def test_accepted_domain_option_and_no_progress_bar_when_piped() -> None:
    proc = run("scan", "--accepted-domain", "contoso.com", str(CASES / "exo-campaign-qr-png.eml"))
    assert proc.returncode == 1
    assert "\r" not in proc.stderr  # no progress bar redraws on a pipe
    assert "inferred" not in proc.stdout


def test_output_to_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    proc = run(
        "scan",
        "--output",
        str(tmp_path / "no" / "such" / "dir.txt"),
        str(CASES / "exo-internal-user.eml"),
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("dsguard: --output")


def test_findings_markdown_is_the_committed_docs() -> None:
    proc = run("findings", "--markdown")
    assert proc.returncode == 0
    assert proc.stdout == (ROOT / "docs" / "findings.md").read_text(encoding="utf-8"), (
        "docs/findings.md is stale: run `make docs`"
    )


def test_version() -> None:
    proc = run("version")
    assert proc.returncode == 0
    assert proc.stdout.strip()
    assert os.environ.get("NO_SUCH") is None
