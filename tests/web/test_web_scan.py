"""Scan uploads: the same results as ``dsguard scan``, with size limits and clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.web.conftest import Admin, Web, campaign_lure, csrf_of, sign_in

from dsguard.store import repository as repo

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN_EML = ROOT / "examples" / "demo" / "mail" / "exo-campaign-fax-qr-vector.eml"
PRINTER_EML = ROOT / "examples" / "demo" / "mail" / "exo-printer-direct-send-spf.eml"
OUTLOOK_MSG = (
    ROOT / "tests" / "data" / "mail-parser-mails" / "mail_outlook_1"
)  # a real Outlook .msg


def _mbox(tmp_path: Path) -> Path:
    path = tmp_path / "two.mbox"
    parts = []
    for source in (CAMPAIGN_EML, PRINTER_EML):
        parts.append(
            b"From joe@contoso.com Tue Jun 17 06:14:25 2025\n"
            + source.read_bytes().replace(b"\r\n", b"\n")
        )
    path.write_bytes(b"\n".join(parts) + b"\n")
    return path


def _cli_json(config: Path, files: list[Path]) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsguard",
            "scan",
            "--config",
            str(config),
            "--format",
            "json",
            *map(str, files),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode()
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


def _comparable(document: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results = []
    for result in document["results"]:
        result = dict(result)
        result["path"] = Path(result["path"]).name
        result["source"] = Path(result["source"]).name
        results.append(result)
    summary = dict(document["summary"])
    summary.pop("elapsed_seconds")
    return results, summary


def _upload(files: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in files]


def test_upload_gives_the_same_results_as_dsguard_scan(
    signed_in: Admin, web: Web, tmp_path: Path
) -> None:
    mbox = _mbox(tmp_path)
    msg = tmp_path / "newsletter.msg"
    msg.write_bytes(OUTLOOK_MSG.read_bytes())
    files = [CAMPAIGN_EML, mbox, msg]
    expected = _cli_json(Path(web.config.source), files)
    response = signed_in.api(
        "POST", "/api/scan", files=_upload([(f.name, f.read_bytes()) for f in files])
    )
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["schema"] == expected["schema"]
    assert _comparable(document) == _comparable(expected)
    results, summary = _comparable(document)
    assert [(r["path"], r["index"]) for r in results] == [
        ("exo-campaign-fax-qr-vector.eml", None),
        ("two.mbox", 0),
        ("two.mbox", 1),
        ("newsletter.msg", None),
    ]
    assert results[0]["verdict"] == "malicious"
    assert results[0]["iocs"]["qr_urls"] == [
        "https://voice-e091b.firebaseapp.com/vm/listen?id=0617"
    ] or (results[0]["iocs"]["qr_urls"] and results[0]["direct_send"])
    assert summary["messages"] == 4


def test_the_results_page_shows_the_table_findings_and_a_json_download(
    signed_in: Admin, web: Web
) -> None:
    response = signed_in.post(
        "/scan",
        files=_upload(
            [(CAMPAIGN_EML.name, CAMPAIGN_EML.read_bytes()), ("lure.eml", campaign_lure())]
        ),
    )
    assert response.status_code == 200
    page = response.text
    assert '<p id="scan-summary"><strong>2</strong> messages scanned' in page
    rows = page[page.index('id="results"') :]
    assert "exo-campaign-fax-qr-vector.eml" in rows and "lure.eml" in rows
    assert "DS_SPOOF_ENVELOPE" in rows  # findings with evidence, in the row's details
    assert "hxxps://voice-e091b[.]firebaseapp[.]com/?id=test" in rows  # the QR URL, defanged
    assert "<script" not in rows
    link = re.search(r'href="(/scan/reports/[^"]+\.json)"', page)
    assert link
    download = signed_in.client.get(link.group(1))
    assert download.headers["content-disposition"].startswith("attachment;")
    document = download.json()
    assert [r["path"] for r in document["results"]] == [
        "exo-campaign-fax-qr-vector.eml",
        "lure.eml",
    ]
    assert document["summary"]["messages"] == 2
    with web.client() as other:  # another signed-in browser cannot fetch it
        repo.add_user(web.store, "second", "another long password", kind="admin")
        sign_in(other, "second", "another long password")
        assert other.get(link.group(1)).status_code == 404
    [entry] = [e for e in repo.list_audit(web.store, target="scan").items]
    assert (entry.actor, entry.action) == ("web:admin", "upload")
    assert entry.detail == "2 file(s), 2 message(s): exo-campaign-fax-qr-vector.eml, lure.eml"


def test_unreadable_files_are_reported_and_the_rest_scanned(signed_in: Admin) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    response = signed_in.api(
        "POST",
        "/api/scan",
        files=_upload([("photo.png", png), ("empty.eml", b""), ("lure.eml", campaign_lure())]),
    )
    results = response.json()["results"]
    assert [r["path"] for r in results] == ["photo.png", "empty.eml", "lure.eml"]
    assert results[0]["error"] == "not an e-mail message: binary data, no header lines at the start"
    assert results[1]["error"] == "empty file"
    assert results[2]["verdict"] == "malicious"
    assert response.json()["summary"]["errors"] == 2
    page = signed_in.post("/scan", files=_upload([("photo.png", png)])).text
    assert "not an e-mail message: binary data" in page


def test_file_names_are_only_names(signed_in: Admin, tmp_path: Path) -> None:
    response = signed_in.api(
        "POST",
        "/api/scan",
        files=_upload([("../../../etc/passwd", campaign_lure()), ("C:\\Users\\x\\<b>.eml", b"x")]),
    )
    assert [r["path"] for r in response.json()["results"]] == ["passwd", "<b>.eml"]
    assert not (tmp_path / "passwd").exists()


def test_an_upload_over_the_size_limit_is_refused_clearly(
    make_web: Callable[..., Web],
) -> None:
    web = make_web(max_upload_bytes=2000)
    big = campaign_lure() * 40  # far above 2000 bytes plus the multipart allowance
    with web.client() as client:
        sign_in(client)
        token = csrf_of(client)
        page = client.post("/scan", data={"csrf_token": token}, files=_upload([("big.eml", big)]))
        assert page.status_code == 413
        assert "Upload too large: at most 2.0 KB per upload (all files together)." in page.text
        api = client.post(
            "/api/scan", headers={"X-CSRF-Token": token}, files=_upload([("big.eml", big)])
        )
        assert api.status_code == 413
        assert api.json() == {
            "detail": "Upload too large: at most 2.0 KB per upload (all files together)."
        }
    assert not repo.list_audit(web.store, target="scan").items  # nothing was scanned


def test_too_many_files_and_no_file(make_web: Callable[..., Web]) -> None:
    web = make_web(max_upload_files=2)
    with web.client() as client:
        sign_in(client)
        token = csrf_of(client)
        three = _upload([(f"m{i}.eml", campaign_lure(f"m{i}")) for i in range(3)])
        response = client.post("/api/scan", headers={"X-CSRF-Token": token}, files=three)
        assert response.status_code == 400
        assert response.json() == {"detail": "3 files: at most 2 per upload"}
        page = client.post(
            "/scan",
            data={"csrf_token": token},
            files=[("files", ("", b"", "application/octet-stream"))],
        )
        assert page.status_code == 400
        assert "choose at least one file to scan" in page.text


@pytest.mark.parametrize("path", ["/scan", "/api/scan"])
def test_other_requests_have_a_small_body_limit(signed_in: Admin, path: str) -> None:
    # Only the upload routes take large bodies; a form or JSON body elsewhere is capped.
    response = signed_in.client.post(
        "/quarantine/" + "a" * 32 + "/delete",
        data={"csrf_token": signed_in.csrf, "pad": "x" * 200_000},
    )
    assert response.status_code == 413
    assert (
        signed_in.client.get(path.replace("/api", "") if path == "/scan" else "/scan").status_code
        == 200
    )


def test_an_upload_without_the_csrf_token_is_not_scanned(signed_in: Admin, web: Web) -> None:
    files = _upload([("lure.eml", campaign_lure())])
    page = signed_in.client.post("/scan", data={"csrf_token": "forged"}, files=files)
    assert page.status_code == 403
    api = signed_in.client.post("/api/scan", files=files)
    assert api.status_code == 403
    assert not repo.list_audit(web.store, target="scan").items
