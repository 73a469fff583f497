"""``dsguard scan``: find Direct Send abuse in mail already received."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from dsguard.batch import default_jobs, scan_stream
from dsguard.cli.errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FLAGGED, fail, fail_config
from dsguard.config import load_config
from dsguard.engine import Engine
from dsguard.errors import ConfigError, InputError
from dsguard.mail.source import LoadError, RawMessage, input_size, iter_messages
from dsguard.report.registry import FORMATS, get_renderer
from dsguard.report.serialize import RunSummary
from dsguard.scan import INFERRED_NOTE


def _progress_items(
    items: Iterator[RawMessage | LoadError], total: int, stack: ExitStack
) -> Iterator[RawMessage | LoadError]:
    """Advance a byte-based progress bar on stderr as messages are read."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = stack.enter_context(
        Progress(
            TextColumn("scanning {task.fields[messages]} messages"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    )
    task = progress.add_task("scan", total=total or None, messages=0)
    messages = 0
    for item in items:
        if isinstance(item, RawMessage):
            messages += 1
            progress.update(task, advance=item.size, messages=messages)
        yield item


def scan(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help=".eml, .msg, mbox, Maildir, directories, header pastes.", show_default=False
        ),
    ],
    accepted_domain: Annotated[
        list[str] | None,
        typer.Option(
            "--accepted-domain",
            "-d",
            help="Your organisation's domain (repeatable; '*.d' includes subdomains).",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="dsguard TOML config file.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMATS)}.")
    ] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here.")
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Worker processes (0 = one per core).")
    ] = 1,
    no_qr: Annotated[
        bool, typer.Option("--no-qr", help="Do not decode QR codes in attachments.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr (default: when stderr is a terminal).",
        ),
    ] = None,
) -> None:
    """Scan received mail for Direct Send abuse.

    Exit status: 0 nothing flagged, 1 something suspicious or malicious, 2 usage error or an
    input that could not be read (the other inputs are still scanned).
    """
    if fmt not in FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if jobs < 0:
        fail("--jobs: must be 0 (one per core) or more")
    overrides: dict[str, Any] = {}
    if accepted_domain:
        overrides["organization"] = {"accepted_domains": list(accepted_domain)}
    if no_qr:
        overrides["limits"] = {"decode_qr": False}
    try:
        cfg = load_config(config, overrides)
        Engine(cfg)  # validates scores, lures and IOC lists before any work starts
    except ConfigError as exc:
        fail_config(exc)
    except InputError as exc:
        fail(f"{exc.name}: {exc.problem}")
    workers = default_jobs() if jobs == 0 else jobs
    str_paths = [str(p) for p in paths]
    show_progress = sys.stderr.isatty() if progress is None else progress

    summary = RunSummary()
    if not cfg.organization.accepted_domains:
        summary.notes.append(INFERRED_NOTE)
    started = time.monotonic()
    with ExitStack() as stack:
        out: TextIO
        if output is None:
            out = sys.stdout
        else:
            try:
                out = stack.enter_context(output.open("w", encoding="utf-8", newline=""))
            except OSError as exc:
                fail(f"--output {output}: {exc.strerror or exc}")
        color = output is None and fmt == "text" and sys.stdout.isatty()
        renderer = get_renderer(fmt, color=color)
        renderer.start(out)
        items: Iterator[RawMessage | LoadError] = iter_messages(
            str_paths, max_message_bytes=cfg.limits.max_message_bytes
        )
        items = _skip_notes(items, summary)
        if show_progress:
            items = _progress_items(items, input_size(str_paths), stack)
        for result in scan_stream(items, cfg, workers):
            summary.add(result)
            if result.error:
                sys.stderr.write(f"dsguard: {result.source}: {result.error}\n")
            renderer.add(result)
        summary.elapsed_seconds = time.monotonic() - started
        renderer.finish(summary)
        out.flush()
    if summary.errors:
        raise SystemExit(EXIT_ERROR)
    flagged = summary.by_level.get("suspicious", 0) + summary.by_level.get("malicious", 0)
    raise SystemExit(EXIT_FLAGGED if flagged else EXIT_CLEAN)


def _skip_notes(
    items: Iterator[RawMessage | LoadError], summary: RunSummary
) -> Iterator[RawMessage | LoadError]:
    """Non-fatal "skipped, not mail" notes from directory walks go to stderr, not the report."""
    for item in items:
        if isinstance(item, LoadError) and not item.fatal:
            summary.skipped += 1
            sys.stderr.write(f"dsguard: skipped {item.path}: {item.problem}\n")
            continue
        yield item
