"""``dsguard posture``: the DNS posture of mail domains against Direct Send spoofing."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from dsguard.cli.errors import fail

if TYPE_CHECKING:
    from dsguard.auth.resolver import Resolver

_FORMATS = ("text", "json")

ResolverOption = Annotated[
    list[str] | None,
    typer.Option(
        "--resolver",
        "-r",
        help="Nameserver to ask, IP[:PORT] or [IPv6]:PORT (repeatable). Default: the system's "
        "resolvers (/etc/resolv.conf).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", help="Seconds allowed for one DNS lookup, retries included."),
]


def make_resolver(servers: list[str] | None, timeout: float) -> Resolver:
    """A :class:`~dsguard.auth.resolver.Resolver` from the options, or a one-line exit 2."""
    from dsguard.auth.resolver import Resolver

    if not 0 < timeout <= 120:
        fail(f"--timeout: {timeout} is not between 0 and 120 seconds")
    per_try = min(timeout, 3.0)
    try:
        if servers:
            return Resolver(servers, timeout=per_try, lifetime=timeout)
        return Resolver.system(timeout=per_try, lifetime=timeout)
    except ValueError as exc:
        fail(f"--resolver: {exc}")
    except Exception as exc:  # dnspython: no usable /etc/resolv.conf
        fail(f"no system resolver ({type(exc).__name__}); pass --resolver IP[:PORT]")


def posture(
    domains: Annotated[
        list[str],
        typer.Argument(help="Mail domains to check, e.g. contoso.com.", show_default=False),
    ],
    resolver: ResolverOption = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help=f"One of: {', '.join(_FORMATS)}.")
    ] = "text",
    timeout: TimeoutOption = 6.0,
) -> None:
    """Rate mail domains' DNS against Direct Send spoofing, with the fix for each problem.

    Checks MX (Exchange Online, or a gateway in front of a reachable tenant), SPF, DMARC, the
    Microsoft 365 DKIM selectors, MTA-STS and TLS-RPT; rates each domain good, fair, poor or
    critical. Only DNS is queried. Exit status: 0 every domain good or fair, 1 a domain poor or
    critical, 2 usage error or a domain whose DNS lookups failed (the others are still
    reported).
    """
    from dsguard.m365.posture import exit_status, render_text, run_posture

    if fmt not in _FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(_FORMATS)}")
    dns = make_resolver(resolver, timeout)
    doc = run_posture(domains, dns)
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_text(doc))
    for item in doc["domains"]:
        errors = item["errors"]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            sys.stderr.write(f"dsguard: {item['domain']}: {errors[0]}{more}\n")
    sys.stdout.flush()
    raise SystemExit(exit_status(doc))
