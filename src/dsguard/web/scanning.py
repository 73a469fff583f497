"""Scan uploaded files exactly as ``dsguard scan`` scans files on disk.

Uploads are written to a private temporary directory and handed to the same loader
(:func:`dsguard.mail.source.iter_messages`), :class:`~dsguard.scan.Scanner` and serializer
(:func:`dsguard.report.serialize.result_to_dict`) as the command line, so a report from the
browser and ``dsguard scan --format json`` agree result for result; only ``path`` is the
name the browser sent instead of a path on disk.

SECURITY: the files are hostile. The request body is capped before it is read
(``[web] max_upload_bytes``, enforced by FastAPI's body limit), the file count by
``max_upload_files``, each message by ``[limits] max_message_bytes``, and the results of one
upload by ``MAX_RESULTS`` (an mbox of tiny messages must not fill the server's memory). File
names from the browser are never used as paths: files are stored as ``upload-N`` in a 0700
directory that is removed afterwards; the name is kept only for display. One upload is
scanned at a time (attachment decoding already runs in sandboxed child processes).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from dsguard.config import Config
from dsguard.mail.source import iter_messages
from dsguard.report.serialize import SCHEMA_VERSION, RunSummary, one_line, result_to_dict
from dsguard.scan import INFERRED_NOTE, Scanner

MAX_RESULTS = 5_000
MAX_REPORTS = 20  # kept for the JSON download, oldest dropped first
_COPY_CHUNK = 1 << 20


class UploadError(ValueError):
    """The upload as a whole cannot be scanned (no file, too many files); one line."""


@dataclass
class ScanReport:
    id: str
    owner: str
    created: float
    files: list[str]
    results: list[dict[str, Any]]
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """The same document as ``dsguard scan --format json``."""
        return {"schema": SCHEMA_VERSION, "results": self.results, "summary": self.summary}


class ScanService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.scanner = Scanner(config)  # builds the engine now: bad IOC files fail at start
        self._lock = threading.Lock()
        self._reports: OrderedDict[str, ScanReport] = OrderedDict()
        self._reports_lock = threading.Lock()

    def scan(self, files: Sequence[tuple[str, BinaryIO]], owner: str) -> ScanReport:
        """Scan uploaded (name, stream) pairs; the report is kept for :meth:`report`."""
        if not files:
            raise UploadError("choose at least one file to scan")
        limit = self.config.web.max_upload_files
        if len(files) > limit:
            raise UploadError(f"{len(files)} files: at most {limit} per upload")
        names = [_display_name(name, i) for i, (name, _stream) in enumerate(files)]
        directory = tempfile.mkdtemp(prefix="dsguard-upload-")  # mode 0700
        try:
            paths = []
            for i, (_name, stream) in enumerate(files):
                path = os.path.join(directory, f"upload-{i}")
                _store(stream, path)
                paths.append(path)
            report = self._scan_paths(paths, names, owner)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        with self._reports_lock:
            self._reports[report.id] = report
            while len(self._reports) > MAX_REPORTS:
                self._reports.popitem(last=False)
        return report

    def report(self, report_id: str, owner: str) -> ScanReport | None:
        with self._reports_lock:
            report = self._reports.get(report_id)
        return report if report is not None and report.owner == owner else None

    def _scan_paths(self, paths: list[str], names: list[str], owner: str) -> ScanReport:
        display = dict(zip(paths, names, strict=True))
        summary = RunSummary()
        if not self.config.organization.accepted_domains:
            summary.notes.append(INFERRED_NOTE)
        results: list[dict[str, Any]] = []
        notes: list[str] = []
        started = time.monotonic()
        with self._lock:
            items = iter_messages(paths, max_message_bytes=self.config.limits.max_message_bytes)
            for item in items:
                if len(results) >= MAX_RESULTS:
                    notes.append(
                        f"stopped after {MAX_RESULTS} messages; scan the rest with dsguard scan"
                    )
                    break
                item = dataclasses.replace(item, path=display.get(item.path, item.path))
                result = self.scanner.scan_item(item)
                summary.add(result)
                results.append(result_to_dict(result))
        summary.elapsed_seconds = time.monotonic() - started
        return ScanReport(
            id=secrets.token_urlsafe(16),
            owner=owner,
            created=time.time(),
            files=names,
            results=results,
            summary=summary.to_dict(),
            notes=notes,
        )


def _display_name(name: str, index: int) -> str:
    # Browsers send the base name; some old ones sent a full client path. Keep the last part.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return one_line(base, 200) or f"upload-{index + 1}"


def _store(stream: BinaryIO, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(_COPY_CHUNK):
            out.write(chunk)
