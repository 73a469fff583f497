"""``dsguard m365``: the Microsoft 365 toolkit's commands (inventory, plan)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from dsguard.cli.errors import EXIT_CLEAN, EXIT_ERROR, fail, fail_config
from dsguard.config import Config, load_config
from dsguard.errors import ConfigError, InputError

app = typer.Typer(
    help="Microsoft 365: inventory Direct Send traffic from Exchange Online / Defender exports "
    "and plan the switch to RejectDirectSend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_FORMATS = ("text", "json", "csv", "html")

AcceptedDomainOption = Annotated[
    list[str] | None,
    typer.Option(
        "--accepted-domain",
        "-d",
        help="Your organisation's domain (repeatable; '*.d' includes subdomains). Default: the "
        "config's, else inferred from the recipients.",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="dsguard TOML config ([organization], [[connectors]])."),
]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress bar on stderr (default: when stderr is a terminal).",
    ),
]


def _load(config: Path | None, accepted_domain: list[str] | None) -> Config:
    overrides: dict[str, Any] = {}
    if accepted_domain:
        overrides["organization"] = {"accepted_domains": list(accepted_domain)}
    try:
        cfg = load_config(config, overrides)
        # Fail early on a bad IOC list (the classification reads it).
        from dsguard.intel.bundle import Intel

        Intel.from_config(cfg)
    except ConfigError as exc:
        fail_config(exc)
    except InputError as exc:
        fail(f"{exc.name}: {exc.problem}")
    return cfg


def _total_bytes(paths: list[str]) -> int:
    total = 0
    for path in paths:
        try:
            if os.path.isdir(path):
                for root, dirs, files in os.walk(path):
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                    for name in files:
                        with suppress(OSError):
                            total += os.lstat(os.path.join(root, name)).st_size
            else:
                total += os.stat(path).st_size
        except OSError:
            pass
    return total


@contextmanager
def _progress(
    enabled: bool, paths: list[str]
) -> Iterator[tuple[Callable[[int], None] | None, Callable[[Any], None] | None]]:
    """A byte-based rich progress bar on stderr, with the running record count."""
    if not enabled:
        yield None, None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("inventory: {task.fields[records]} records"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("read", total=_total_bytes(paths) or None, records=0)
    state = {"records": 0, "shown": 0}

    def on_bytes(n: int) -> None:
        progress.update(task, advance=n, records=state["records"])

    def on_record(builder: Any) -> None:
        state["records"] = builder.totals.rows

    with progress:
        yield on_bytes, on_record


def _inventory_doc(
    cfg: Config, paths: list[str], show_progress: bool
) -> tuple[dict[str, Any], list[str]]:
    from dsguard.m365.inventory import run_inventory

    with _progress(show_progress, paths) as (on_bytes, on_record):
        doc, reader = run_inventory(cfg, paths, on_bytes=on_bytes, on_record=on_record)
    for note in reader.skipped:
        sys.stderr.write(f"dsguard: skipped {note}\n")
    for error in reader.errors:
        sys.stderr.write(f"dsguard: {error}\n")
    return doc, reader.errors


def inventory(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Message-trace / historical-search / Extended CSVs, EmailEvents CSVs, Graph "
            "exchangeMessageTrace JSON or JSON lines, .eml files or directories.",
            show_default=False,
        ),
    ],
    accepted_domain: AcceptedDomainOption = None,
    config: ConfigOption = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help=f"One of: {', '.join(_FORMATS)}.")
    ] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here.")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Inventory who uses Direct Send today and what RejectDirectSend would block.

    Formats are detected from the content. Exit status: 0 done, 2 usage error or an input
    that could not be read (the other inputs are still used and reported).
    """
    from dsguard.m365.report import render

    if fmt not in _FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(_FORMATS)}")
    cfg = _load(config, accepted_domain)
    show = sys.stderr.isatty() if progress is None else progress
    str_paths = [str(p) for p in paths]
    with ExitStack() as stack:
        out: TextIO
        if output is None:
            out = sys.stdout
        else:
            try:
                out = stack.enter_context(output.open("w", encoding="utf-8", newline=""))
            except OSError as exc:
                fail(f"--output {output}: {exc.strerror or exc}")
        doc, errors = _inventory_doc(cfg, str_paths, show)
        color = output is None and fmt == "text" and sys.stdout.isatty()
        render(doc, fmt, out, color=color)
        out.flush()
    raise SystemExit(EXIT_ERROR if errors else EXIT_CLEAN)


def plan(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="An inventory written with 'dsguard m365 inventory --format json', or the "
            "exports themselves (the inventory is then run first).",
            show_default=False,
        ),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Where to write the three files.")
    ] = Path("."),
    accepted_domain: AcceptedDomainOption = None,
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files written by an earlier plan.")
    ] = False,
    progress: ProgressOption = None,
) -> None:
    """Write enable-rejectdirectsend.ps1, dsguard.toml and hunting.kql from an inventory.

    Only legitimate sources (devices and applications, third-party services) get connectors;
    suspicious and malicious sources are never allow-listed.
    """
    from dsguard.m365.plan import (
        PlanError,
        build_plan,
        is_inventory_file,
        load_inventory,
        write_plan,
    )

    try:
        if len(paths) == 1 and is_inventory_file(paths[0]):
            if accepted_domain or config:
                fail("--accepted-domain and --config apply when plan runs the inventory; an "
                     "inventory file already names its domains")
            doc = load_inventory(paths[0])
        else:
            cfg = _load(config, accepted_domain)
            show = sys.stderr.isatty() if progress is None else progress
            doc, errors = _inventory_doc(cfg, [str(p) for p in paths], show)
            if errors:
                fail(f"not planning: {len(errors)} input(s) could not be read (a plan from part "
                     "of the traffic could break the senders in the rest)")
        result = build_plan(doc)
        written = write_plan(result, output_dir, force=force)
    except PlanError as exc:
        fail(str(exc))
    for path in written:
        typer.echo(f"wrote {path}")
    for connector in result.connectors:
        what = (f"certificate {connector.certificate}" if connector.certificate
                else ", ".join(connector.ips))
        typer.echo(f"  connector {connector.name}: {what}")
    for rule in result.transport_rules:
        typer.echo(f"  transport rule (fill in the vendor's X-header): {rule.service}")
    if result.srs:
        typer.echo(f"  {len(result.srs)} forwarder(s) need SRS (no connector)")
    for warning in result.warnings:
        sys.stderr.write(f"dsguard: warning: {warning}\n")
    raise SystemExit(EXIT_CLEAN)


app.command("inventory")(inventory)
app.command("plan")(plan)
