"""One TOML file -> typed, validated settings.

The package ships ``defaults.toml`` (scores, thresholds, lures, limits, free-hosting list). A
user's file is merged over it: tables merge key by key, lists and scalars replace. Validation
reports every mistake at once, each as ``section.key: problem``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dsguard.errors import ConfigError

_DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if not _DOMAIN_RE.match(domain):
        raise ValueError(
            f"{value!r} is not a domain name (use e.g. 'contoso.com' or '*.contoso.com')"
        )
    return domain


class Connector(_Strict):
    """An inbound connector, as in Exchange Online's partner connectors."""

    name: str = Field(min_length=1)
    sender_ip_ranges: tuple[str, ...] = ()
    tls_certificate_name: str | None = None
    sender_domains: tuple[str, ...] = ()

    @field_validator("sender_ip_ranges")
    @classmethod
    def _ranges(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_ranges(values)

    @field_validator("sender_domains")
    @classmethod
    def _domains(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if value.strip() == "*":
                # Microsoft: -SenderDomains * with a restrict flag breaks all inbound mail, and
                # here it would let the connector send as anyone.
                raise ValueError(
                    "'*' is not allowed: list the accepted domains this connector may use"
                )
        return tuple(_check_domain(v) for v in values)

    @field_validator("tls_certificate_name")
    @classmethod
    def _cert_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_domain(value)

    @model_validator(mode="after")
    def _has_match(self) -> Connector:
        if not self.sender_ip_ranges and not self.tls_certificate_name:
            raise ValueError(
                f"connector {self.name!r} needs sender_ip_ranges or tls_certificate_name"
            )
        return self


class Organization(_Strict):
    accepted_domains: tuple[str, ...] = ()
    reject_direct_send: Literal["on", "off", "audit"] = "audit"
    check_header_from: bool = True
    # ISO 3166 alpha-2 codes the organisation's own mail normally comes from (optional).
    home_countries: tuple[str, ...] = ()

    @field_validator("accepted_domains")
    @classmethod
    def _domains(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_domain(v) for v in values)

    @field_validator("home_countries")
    @classmethod
    def _countries(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for value in values:
            if not re.fullmatch(r"[A-Za-z]{2}", value):
                raise ValueError(f"{value!r} is not a two-letter country code")
            out.append(value.upper())
        return tuple(out)


class Trust(_Strict):
    """Which stamps count as the receiving organisation's own (the trusted hop)."""

    # Host names (globs like "*.contoso.com") of the organisation's receiving MTAs.
    receivers: tuple[str, ...] = ()
    # authserv-ids whose Authentication-Results are the organisation's.
    authserv_ids: tuple[str, ...] = ()
    # Relays inside the organisation (content filters, internal hubs).
    internal_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Trust Exchange Online's stamps when its inbound frontend is the receiving hop.
    microsoft365: bool = True

    @field_validator("internal_networks")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_ranges(values)


class Composite(_Strict):
    """A finding raised when other findings occur together (rspamd-style composite)."""

    description: str
    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    score: float = 0.0


class Scoring(_Strict):
    suspicious: float = 5.0
    malicious: float = 10.0
    scores: dict[str, float] = Field(default_factory=dict)
    composites: dict[str, Composite] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _order(self) -> Scoring:
        if self.malicious < self.suspicious:
            raise ValueError("malicious threshold must not be below the suspicious threshold")
        return self


class Actions(_Strict):
    clean: Literal["deliver", "tag", "quarantine", "reject"] = "deliver"
    suspicious: Literal["deliver", "tag", "quarantine", "reject"] = "tag"
    malicious: Literal["deliver", "tag", "quarantine", "reject"] = "quarantine"


class Limits(_Strict):
    """Hard limits on hostile input. Hitting one is a finding, never a crash."""

    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_headers: int = Field(default=1000, gt=0)
    max_header_bytes: int = Field(default=1024 * 1024, gt=0)
    max_mime_depth: int = Field(default=20, gt=0)
    max_mime_parts: int = Field(default=500, gt=0)
    max_text_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_urls: int = Field(default=500, gt=0)
    max_pdf_pages: int = Field(default=5, gt=0)
    max_images: int = Field(default=20, ge=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_decode_seconds: float = Field(default=10.0, gt=0)
    pdf_render_dpi: int = Field(default=110, ge=36, le=400)
    decode_qr: bool = True
    # Decode attachments in a child process with this address-space cap, killed at the
    # deadline (PDFium can be made to allocate gigabytes by a tiny file).
    decode_sandbox: bool = True
    max_decode_memory_mb: int = Field(default=1024, ge=64)


class Intel(_Strict):
    # Extra IOC list files (one indicator per line: IP, CIDR, domain or URL; '#' comments).
    ioc_files: tuple[str, ...] = ()
    # Use the bundled list of published campaign indicators.
    bundled_iocs: bool = True
    # Registrable or host suffixes of free hosting / app platforms abused for phishing pages.
    free_hosting: tuple[str, ...] = ()


class Lures(_Strict):
    """Lure themes: finding id -> regular expressions (case-insensitive) on subject, body
    and attachment names."""

    patterns: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("patterns")
    @classmethod
    def _compile(cls, values: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for finding_id, regexes in values.items():
            for regex in regexes:
                try:
                    re.compile(regex)
                except re.error as exc:
                    raise ValueError(
                        f"{finding_id}: bad regular expression {regex!r}: {exc}"
                    ) from None
        return values


def _cidr_ranges(values: tuple[str, ...]) -> tuple[str, ...]:
    """CIDR ranges (a bare address is a /32 or /128), normalised; one clear error per bad one."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR range") from None
    return tuple(out)


UNIX_PREFIX = "unix:"
# sun_path holds 108 bytes on Linux, 104 on the BSDs, the terminating NUL included.
_MAX_SOCKET_PATH = 103


def check_unix_socket_path(path: str, what: str) -> str:
    """``unix:PATH`` for ``what`` if PATH is a usable socket path, else ValueError."""
    if not path.startswith("/"):
        raise ValueError(f"{what}: the unix socket path {path!r} must be absolute")
    if len(path.encode()) > _MAX_SOCKET_PATH or "\x00" in path:
        raise ValueError(f"{what}: the unix socket path {path!r} is too long for a socket")
    return UNIX_PREFIX + path


def _check_hostport(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port for {what} (e.g. '0.0.0.0:25', '[::]:25')")
    return value


class GatewayLimits(_Strict):
    """Hostile-client limits of the SMTP gateway."""

    max_message_bytes: int = Field(default=35 * 1024 * 1024, gt=0)  # SIZE; 552 above
    max_recipients: int = Field(default=100, gt=0)  # 452 4.5.3 above
    idle_timeout: float = Field(default=300.0, gt=0)  # per command / data read
    session_timeout: float = Field(default=1800.0, gt=0)  # whole session
    max_sessions: int = Field(default=500, gt=0)
    max_sessions_per_ip: int = Field(default=20, gt=0)
    max_auth_failures: int = Field(default=5, gt=0)  # per client IP within the window
    auth_failure_window: float = Field(default=600.0, gt=0)
    max_commands: int = Field(default=1000, gt=0)  # per command per session (pipelining abuse)


class Retry(_Strict):
    first_delay: float = Field(default=60.0, gt=0)
    factor: float = Field(default=2.0, ge=1.0)
    max_delay: float = Field(default=3600.0, gt=0)
    max_age: float = Field(default=5 * 86400.0, gt=0)


class Gateway(_Strict):
    """The SMTP gateway (``dsguard gateway``)."""

    listen: str = "127.0.0.1:2525"
    # STARTTLS + SMTP AUTH for the organisation's own users; "" disables it.
    submission_listen: str = ""
    hostname: str = "dsguard.localhost"
    tls_cert: str | None = None
    tls_key: str | None = None
    # CA bundle to verify client certificates against (certificate-matched connectors).
    tls_client_ca: str | None = None
    downstream: str = "smtp://127.0.0.1:10025"
    spool_dir: str = "var/spool"
    # Where live SPF/DKIM/DMARC lookups go: [] = off (no DNS at all), ["system"] = the host's
    # resolver, or nameservers "ip[:port]".
    dns_servers: tuple[str, ...] = ()
    dns_timeout: float = Field(default=5.0, gt=0)
    # Parallel deliveries to the downstream per gateway process: Postfix's
    # default_destination_concurrency_limit (20). With 4, at 10 busy sessions the relay fell
    # behind the SMTP side and the backlog cost CPU (new spool inodes, directory scans).
    relay_concurrency: int = Field(default=20, gt=0)
    # Seconds between spool scans for entries written by other processes (e.g. `dsguard
    # quarantine release`); mail accepted by the gateway itself is relayed at once.
    relay_poll_interval: float = Field(default=10.0, gt=0)
    # Seconds a downstream connection stays open after a delivery, for the next message
    # (connection reuse, like Postfix's connection cache); 0 = a new connection per message.
    relay_connection_idle: float = Field(default=5.0, ge=0)
    header_prefix: str = "X-Dsguard"
    # Processes serving the listeners (SO_REUSEPORT, under a supervisor): one per core; each
    # process is one event loop and uses a core at most. 1 = a single process, no supervisor.
    workers: int = Field(default=1, ge=1, le=64)
    limits: GatewayLimits = Field(default_factory=GatewayLimits)
    retry: Retry = Field(default_factory=Retry)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_hostport(value, "listen")

    @field_validator("submission_listen")
    @classmethod
    def _submission(cls, value: str) -> str:
        return _check_hostport(value, "submission_listen") if value else value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return _check_domain(value)

    @field_validator("header_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"X-[A-Za-z0-9-]{1,40}", value):
            raise ValueError(f"{value!r} is not an X- header name prefix")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Gateway:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.submission_listen and not self.tls_cert:
            raise ValueError("submission_listen needs tls_cert and tls_key (no AUTH before TLS)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return self


class Policyd(_Strict):
    """The Postfix policy delegation server (``dsguard policyd``)."""

    listen: str = "127.0.0.1:10040"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_hostport(value, "listen")


class Milter(_Strict):
    """The Postfix/Sendmail milter (``dsguard milter``); DNS, authserv-id and header prefix
    are the gateway's (``[gateway] dns_servers``, ``hostname``, ``header_prefix``)."""

    # host:port, or unix:/absolute/path (Postfix: smtpd_milters = unix:/absolute/path).
    listen: str = "127.0.0.1:10041"
    # Mode of a unix socket: Postfix's smtpd and cleanup (user postfix) must be able to write
    # to it; 0o660 with the postfix user in the milter's group, as other milters do.
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value.startswith(UNIX_PREFIX):
            return check_unix_socket_path(value[len(UNIX_PREFIX) :], "listen")
        return _check_hostport(value, "listen")


class Web(_Strict):
    """The admin web UI (``dsguard web``): quarantine, dashboard, scan uploads, JSON API.

    Bound to loopback by default; put it behind a TLS-terminating reverse proxy (and list the
    proxy in ``trusted_proxies``) or give it ``tls_cert``/``tls_key`` before exposing it.
    """

    listen: str = "127.0.0.1:8025"
    # Key that signs session and sign-in cookies; created (0600, 32 random bytes) on first
    # start when absent. Relative paths are relative to the config file.
    session_secret_file: str = "var/web-session.key"  # noqa: S105 -- a path, not a secret
    # Total request body of one scan upload (all files together); 413 above.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_upload_files: int = Field(default=20, gt=0, le=1000)
    # Failed sign-ins allowed per client IP and per user name within login_window seconds;
    # further attempts are refused with 429 until the window has passed.
    login_max_failures: int = Field(default=5, gt=0)
    login_window: float = Field(default=900.0, gt=0)
    # A session ends after this many seconds without a request, and at the latest after
    # session_max_age seconds (sign in again).
    session_idle_timeout: float = Field(default=1800.0, gt=0)
    session_max_age: float = Field(default=12 * 3600.0, gt=0)
    # Serve HTTPS directly (cookies then get the Secure flag).
    tls_cert: str | None = None
    tls_key: str | None = None
    # Reverse proxies whose X-Forwarded-For/-Proto are believed (client IP for login
    # throttling, https for Secure cookies). Empty: none.
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_hostport(value, "listen")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_ranges(values)

    @model_validator(mode="after")
    def _web_tls_pair(self) -> Web:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self


class Storage(_Strict):
    url: str = "sqlite:///var/dsguard.sqlite3"


class Config(_Strict):
    organization: Organization = Field(default_factory=Organization)
    connectors: tuple[Connector, ...] = ()
    trust: Trust = Field(default_factory=Trust)
    scoring: Scoring = Field(default_factory=Scoring)
    actions: Actions = Field(default_factory=Actions)
    limits: Limits = Field(default_factory=Limits)
    intel: Intel = Field(default_factory=Intel)
    lures: Lures = Field(default_factory=Lures)
    gateway: Gateway = Field(default_factory=Gateway)
    policyd: Policyd = Field(default_factory=Policyd)
    milter: Milter = Field(default_factory=Milter)
    storage: Storage = Field(default_factory=Storage)
    web: Web = Field(default_factory=Web)
    # Where the file came from (for messages); not a TOML key.
    source: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="after")
    def _unique_connectors(self) -> Config:
        names = [c.name for c in self.connectors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"connector names must be unique: {', '.join(dupes)}")
        return self


def _defaults_text() -> str:
    return resources.files("dsguard").joinpath("defaults.toml").read_text(encoding="utf-8")


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        problems.append(f"{where}: {msg}")
    return problems


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Load the shipped defaults, merge the user's file (if any) and ``overrides`` over them.

    Raises ConfigError naming the file and every problem found.
    """
    data: dict[str, Any] = tomllib.loads(_defaults_text())
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(source, ["file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(source, [f"cannot read: {exc}"]) from None
        try:
            user = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
        data = _merge(data, user)
    if overrides:
        data = _merge(data, overrides)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _format_errors(exc)) from None
    if path is not None:
        config = _resolve_paths(config, Path(path).resolve().parent)
    return config.model_copy(update={"source": source})


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative file paths in a config file mean "next to the config file", whatever the
    current directory of the command that reads it (the gateway, ``dsguard quarantine
    release`` run from elsewhere, a service manager)."""

    def rel(value: str | None) -> str | None:
        if not value or Path(value).is_absolute():
            return value
        return str(base / value)

    gw = config.gateway
    gateway = gw.model_copy(
        update={
            "spool_dir": rel(gw.spool_dir),
            "tls_cert": rel(gw.tls_cert),
            "tls_key": rel(gw.tls_key),
            "tls_client_ca": rel(gw.tls_client_ca),
        }
    )
    intel = config.intel.model_copy(
        update={"ioc_files": tuple(rel(f) or f for f in config.intel.ioc_files)}
    )
    url = config.storage.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        url = prefix + str(base / url[len(prefix) :])
    storage = config.storage.model_copy(update={"url": url})
    web = config.web.model_copy(
        update={
            "session_secret_file": rel(config.web.session_secret_file),
            "tls_cert": rel(config.web.tls_cert),
            "tls_key": rel(config.web.tls_key),
        }
    )
    return config.model_copy(
        update={"gateway": gateway, "intel": intel, "storage": storage, "web": web}
    )
