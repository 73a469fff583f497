"""``dsguard probe``: send what a Direct Send attacker sends, harmlessly, and report the answer."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from dsguard.cli.errors import fail
from dsguard.cli.posture_cmd import ResolverOption, make_resolver

_FORMATS = ("text", "json")


def probe(
    to: Annotated[
        str,
        typer.Option("--to", help="An existing mailbox of the domain to test, user@domain.",
                     show_default=False),
    ],
    mail_from: Annotated[
        str | None,
        typer.Option("--from", help="Envelope and header sender (default: the --to address, "
                     "as in the campaign). Use an external address to test a gateway bypass."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Connect here (HOST, HOST:PORT, [IPv6]:PORT) instead of "
                     "the MX of the --to domain."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="SMTP port (default 25), also for the MX hosts."),
    ] = None,
    tenant_endpoint: Annotated[
        bool,
        typer.Option("--tenant-endpoint", help="Connect to <domain-with-dashes>.mail.protection"
                     ".outlook.com, as the campaign does (bypasses a third-party MX)."),
    ] = False,
    resolver: ResolverOption = None,
    helo: Annotated[
        str | None, typer.Option("--helo", help="EHLO name (default: this host's name).")
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option("--operator", help="Who runs the probe, written in the message body "
                     "(default: user@host)."),
    ] = None,
    starttls: Annotated[
        bool, typer.Option("--starttls/--no-starttls", help="Use STARTTLS when offered.")
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds allowed for each step (DNS, connect, "
                            "each reply).")
    ] = 30.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be sent; contact nothing.")
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help=f"One of: {', '.join(_FORMATS)}.")
    ] = "text",
) -> None:
    """Send a labelled, harmless Direct Send test and report whether the server refused it.

    An anonymous SMTP session (no AUTH, STARTTLS if offered) to the MX of the --to domain
    (or --server), with an envelope sender in the domain, as the campaign does.

    Exit status: 0 protected (refused with 550 5.7.68, or 5.7.51 by a restricted connector),
    1 exposed (accepted), 2 refused for another reason, error, or usage error.
    """
    from dsguard.m365.probe import (
        EXIT_STATUS,
        ProbeError,
        headline,
        make_plan,
        render_plan,
        render_result,
        resolve_endpoints,
        result_doc,
        run_probe,
    )

    if fmt not in _FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(_FORMATS)}")
    if not 0 < timeout <= 600:
        fail(f"--timeout: {timeout} is not between 0 and 600 seconds")
    try:
        plan = make_plan(to, mail_from, server=server, port=port,
                         use_tenant_endpoint=tenant_endpoint, helo=helo, operator=operator)
    except ProbeError as exc:
        fail(str(exc))
    if dry_run:
        if fmt == "json":
            typer.echo(json.dumps(result_doc(plan, None, dry_run=True), indent=2))
        else:
            sys.stdout.write(render_plan(plan))
        raise SystemExit(0)
    dns = make_resolver(resolver, min(timeout, 30.0))
    try:
        endpoints = resolve_endpoints(plan, dns)
        result = run_probe(plan, endpoints, timeout=timeout, starttls=starttls)
    except ProbeError as exc:
        fail(f"probe: {exc}")
    if fmt == "json":
        typer.echo(json.dumps(result_doc(plan, result), indent=2))
    else:
        sys.stdout.write(render_result(plan, result))
    if result.verdict == "error":
        sys.stderr.write(f"dsguard: probe: {headline(result)}\n")
    raise SystemExit(EXIT_STATUS[result.verdict])
