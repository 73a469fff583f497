"""``dsguard m365 inventory`` and ``plan`` as a user runs them: real processes, exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "m365"
CONFIG = str(DATA / "contoso.toml")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsguard", "m365", *args], capture_output=True, text=True,
        cwd=cwd, check=False, timeout=300,
    )


def test_unreadable_input_is_one_line_and_exit_2_others_still_read() -> None:
    result = run("inventory", str(DATA / "not-a-trace.csv"), str(DATA / "extended.csv"),
                 "-c", CONFIG, "-f", "json")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"dsguard: {DATA / 'not-a-trace.csv'}: not a message trace or "
                               "EmailEvents export: expected columns such as Received, "
                               "SenderAddress")
    doc = json.loads(result.stdout)
    good = next(i for i in doc["inputs"] if i["path"].endswith("extended.csv"))
    assert good["records"] == 206 and doc["totals"]["sources"] == 17


def test_clean_run_exits_0_without_progress_noise_when_piped() -> None:
    result = run("inventory", str(DATA / "emailevents.csv"), "-d", "contoso.com", "-f", "csv")
    assert result.returncode == 0
    assert result.stderr == ""
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["ips"] for r in rows} >= {"198.51.100.20", "139.28.36.117"}


def test_html_report_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run("inventory", str(DATA / "eml"), "-c", CONFIG, "-f", "html", "-o", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text(encoding="utf-8")
    assert "<svg" in html and "What enabling RejectDirectSend would block" in html


def test_plan_from_an_inventory_file(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    assert run("inventory", str(DATA / "extended.csv"), "-c", CONFIG, "-f", "json",
               "-o", str(inventory)).returncode == 0
    result = run("plan", str(inventory), "--output-dir", str(tmp_path / "plan"))
    assert result.returncode == 0, result.stderr
    assert "connector dsguard - CodeTwo (email signatures): 203.0.113.80, 203.0.113.81" \
        in result.stdout
    script = (tmp_path / "plan" / "enable-rejectdirectsend.ps1").read_text(encoding="utf-8")
    assert "Set-OrganizationConfig -RejectDirectSend $true" in script
    config = tomllib.loads((tmp_path / "plan" / "dsguard.toml").read_text(encoding="utf-8"))
    assert len(config["connectors"]) == 2
    # A second plan into the same directory does not overwrite without --force.
    again = run("plan", str(inventory), "--output-dir", str(tmp_path / "plan"))
    assert again.returncode == 2 and "--force" in again.stderr


def test_plan_runs_the_inventory_on_exports(tmp_path: Path) -> None:
    result = run("plan", str(DATA / "emailevents.csv"), "-c", CONFIG,
                 "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hunting.kql").read_text(encoding="utf-8").count("EmailEvents") >= 3


def test_plan_refuses_when_an_input_cannot_be_read(tmp_path: Path) -> None:
    result = run("plan", str(DATA / "emailevents.csv"), str(DATA / "not-a-trace.csv"),
                 "-c", CONFIG, "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert "not planning" in result.stderr
    assert not (tmp_path / "enable-rejectdirectsend.ps1").exists()


def test_bad_format_option_is_a_usage_error() -> None:
    result = run("inventory", str(DATA / "extended.csv"), "-f", "xml")
    assert result.returncode == 2 and "--format" in result.stderr
