"""The gateway process: listeners, TLS, SMTP AUTH, hostile-client limits, relay, signals.

Two listeners share one handler runtime: the MX listener (``[gateway] listen``: anonymous and
connector mail; STARTTLS offered when a certificate is configured, client certificates verified
against ``tls_client_ca`` for certificate connectors; no AUTH) and, optionally, the submission
listener (``submission_listen``: STARTTLS required, AUTH only after TLS). SIGHUP reloads the
configuration and applies it to new transactions at once (Microsoft needs 30 minutes); SIGTERM
stops accepting, lets sessions finish for a while, then tempfails the rest; the spool stays.
With ``[gateway] workers`` > 1 this is one worker process of several (dsguard.workers): its
listening sockets come from the supervisor, it claims into its own spool slot and never runs
``Spool.recover`` (the supervisor did, before starting the workers).

SECURITY: limits per session and per client IP are enforced by the SMTP protocol
(``smtpserver.SmtpSession``: concurrent sessions, whole session time, idle time, command count,
unrecognised commands, message size, line length; see its docstring) and AUTH failures are
throttled per IP here. Passwords never reach a log line.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsguard.auth.resolver import Resolver
from dsguard.config import Config, load_config
from dsguard.engine import Engine
from dsguard.errors import ConfigError
from dsguard.gateway.handler import GatewayHandler, Runtime
from dsguard.gateway.relay import Relay, RetryPolicy, parse_downstream
from dsguard.gateway.smtpserver import (
    AuthResult,
    ConnectionGate,
    LoginPassword,
    Session,
    SmtpSession,
    SmtpSettings,
)
from dsguard.gateway.spool import Spool
from dsguard.store import repository as repo
from dsguard.store.db import Store, open_store
from dsguard.store.events import EventWriter

log = logging.getLogger("dsguard.gateway")

AUTH_THROTTLED = "454 4.7.0 Too many authentication failures, try again later"
# [gateway] keys a reload cannot apply (sockets, spool, TLS, relay and processes are set up
# once at start); storage.url neither.
RESTART_KEYS = (
    "listen",
    "submission_listen",
    "spool_dir",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "downstream",
    "workers",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: decisions are already JSON, other records are wrapped."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):
            return message
        out: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if record.exc_info and record.levelno >= logging.ERROR:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, ensure_ascii=False)


class AuthThrottle:
    """At most ``limit`` failed AUTH attempts per client IP within ``window`` seconds."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.failures: dict[str, collections.deque[float]] = {}

    def blocked(self, ip: str) -> bool:
        times = self.failures.get(ip)
        if not times:
            return False
        cutoff = self.clock() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        return len(times) >= self.limit

    def failed(self, ip: str) -> None:
        self.failures.setdefault(ip, collections.deque()).append(self.clock())
        if len(self.failures) > 100_000:  # bound memory under a distributed attack
            self.failures.clear()


def server_tls_context(cfg: Config) -> ssl.SSLContext | None:
    gw = cfg.gateway
    if not gw.tls_cert or not gw.tls_key:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(gw.tls_cert, gw.tls_key)
        if gw.tls_client_ca:
            ctx.load_verify_locations(gw.tls_client_ca)
            # Optional: ordinary senders have no certificate; a presented one must verify.
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(cfg.source, [f"gateway TLS: {exc}"]) from None
    return ctx


def make_resolver(cfg: Config) -> Resolver | None:
    servers = cfg.gateway.dns_servers
    if not servers:
        return None
    if list(servers) == ["system"]:
        return Resolver.system(timeout=cfg.gateway.dns_timeout)
    return Resolver(list(servers), timeout=cfg.gateway.dns_timeout)


def _split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class GatewayServer:
    """The gateway; with ``sockets`` (listener name -> listening socket) and ``slot`` it is
    one worker of several (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        *,
        sockets: dict[str, socket.socket] | None = None,
        slot: int | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.stop_event = asyncio.Event()
        self._servers: list[asyncio.base_events.Server] = []
        self._handlers: list[GatewayHandler] = []
        self._sockets = sockets
        self.slot = slot
        self.spool = Spool(Path(config.gateway.spool_dir), slot=slot)
        self.store: Store | None = None
        self.relay: Relay | None = None
        self.runtime: Runtime | None = None
        gl = config.gateway.limits
        self.gate = ConnectionGate(gl.max_sessions, gl.max_sessions_per_ip)
        self.throttle = AuthThrottle(gl.max_auth_failures, gl.auth_failure_window)
        self.bound: dict[str, tuple[str, int]] = {}
        self._settings: dict[str, SmtpSettings] = {}  # per listener, for new sessions

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        if self.slot is None:  # a worker's supervisor has recovered the spool already
            recovered = await asyncio.to_thread(self.spool.recover)
            if recovered:
                log.info("spool: %d messages from an interrupted run requeued", recovered)
        self.store = await asyncio.to_thread(open_store, cfg.storage.url)
        engine = Engine(cfg)
        downstream = parse_downstream(cfg.gateway.downstream)
        r = cfg.gateway.retry
        self.relay = Relay(
            self.spool,
            downstream,
            RetryPolicy(
                first_delay=r.first_delay, factor=r.factor, max_delay=r.max_delay, max_age=r.max_age
            ),
            concurrency=cfg.gateway.relay_concurrency,
            helo=cfg.gateway.hostname,
            poll_interval=cfg.gateway.relay_poll_interval,
            connection_idle=cfg.gateway.relay_connection_idle,
        )
        self.events = EventWriter(self.store)
        self.runtime = Runtime(
            cfg, engine, make_resolver(cfg), self.spool, self.store, self.relay, self.events
        )
        if self.runtime.resolver is None:
            log.warning("gateway: no [gateway] dns_servers configured: live SPF/DKIM/DMARC is off")
        tls = server_tls_context(cfg)
        loop = asyncio.get_running_loop()
        listeners = [("mx", cfg.gateway.listen, False)]
        if cfg.gateway.submission_listen:
            listeners.append(("submission", cfg.gateway.submission_listen, True))
        for name, address, submission in listeners:
            handler = GatewayHandler(self.runtime, submission=submission, alone=self._alone)
            self._handlers.append(handler)
            factory = functools.partial(self._protocol, name, handler, submission, tls)
            if self._sockets is not None:
                server = await loop.create_server(factory, sock=self._sockets[name])
            else:
                host, port = _split_hostport(address)
                server = await loop.create_server(factory, host=host, port=port, reuse_address=True)
            self._servers.append(server)
            sock = server.sockets[0].getsockname()
            self.bound[name] = (sock[0], sock[1])
            log.info(
                json.dumps(
                    {"event": "listening", "listener": name, "address": f"{sock[0]}:{sock[1]}"}
                )
            )
        self._relay_task = asyncio.create_task(self.relay.run(self.stop_event))

    def _alone(self) -> bool:
        """No session but the asking one is open in this process."""
        return len(self.gate.sessions) <= 1

    def _protocol(
        self, name: str, handler: GatewayHandler, submission: bool, tls: ssl.SSLContext | None
    ) -> SmtpSession:
        settings = self._settings.get(name)
        if settings is None:  # built once per listener and configuration (reload clears)
            settings = self._settings[name] = self._listener_settings(submission, tls)
        return SmtpSession(handler, settings, self.gate)

    def _listener_settings(self, submission: bool, tls: ssl.SSLContext | None) -> SmtpSettings:
        cfg = self.runtime.config if self.runtime else self.config
        gl = cfg.gateway.limits
        return SmtpSettings(
            hostname=cfg.gateway.hostname,
            ident="dsguard ESMTP",
            data_size_limit=gl.max_message_bytes,
            idle_timeout=gl.idle_timeout,
            session_timeout=gl.session_timeout,
            max_commands=gl.max_commands,
            tls_context=tls,
            require_starttls=submission and tls is not None,
            auth_required=submission,
            authenticator=self._authenticate if submission else None,
        )

    def _authenticate(
        self, session: Session, mechanism: str, credentials: LoginPassword
    ) -> AuthResult:
        """In a worker thread (the password hash is slow): throttle, then check."""
        peer = session.peer
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        if self.throttle.blocked(ip):
            return AuthResult(success=False, message=AUTH_THROTTLED)
        if self.store is None:
            self.throttle.failed(ip)
            return AuthResult(success=False)
        user = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        info = repo.verify_password(self.store, user, password, "smtp")
        if info is None:
            self.throttle.failed(ip)
            log.info(json.dumps({"event": "auth_failed", "client_ip": ip, "user": user[:100]}))
            return AuthResult(success=False)
        return AuthResult(success=True, auth_data=credentials)

    def reload(self) -> None:
        """SIGHUP: load the config again; new transactions use it at once. A bad file keeps the
        running config (and says why)."""
        if self.config_path is None or self.runtime is None:
            return
        try:
            cfg = load_config(self.config_path)
            engine = Engine(cfg)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error(
                    json.dumps({"event": "reload_failed", "config": exc.source, "problem": problem})
                )
            return
        old = self.runtime
        for key in RESTART_KEYS:
            if getattr(cfg.gateway, key) != getattr(old.config.gateway, key):
                log.warning(
                    json.dumps({"event": "reload", "note": f"gateway.{key} changes need a restart"})
                )
        if cfg.storage.url != old.config.storage.url:
            log.warning(
                json.dumps({"event": "reload", "note": "storage.url changes need a restart"})
            )
        new = Runtime(cfg, engine, make_resolver(cfg), old.spool, old.store, old.relay, old.events)
        self.runtime = new
        # Admission control and AUTH throttling are shared objects, built once at start: give
        # them the new limits too (new sessions already read theirs from the runtime).
        gl = cfg.gateway.limits
        self.gate.max_sessions, self.gate.max_per_ip = gl.max_sessions, gl.max_sessions_per_ip
        self.throttle.limit, self.throttle.window = gl.max_auth_failures, gl.auth_failure_window
        for handler in self._handlers:
            handler.runtime = new
        self._settings.clear()  # new sessions take the new limits and host name
        log.info(
            json.dumps(
                {
                    "event": "reloaded",
                    "config": cfg.source,
                    "pid": os.getpid(),
                    "reject_direct_send": cfg.organization.reject_direct_send,
                }
            )
        )
        # The old engine's decoder child may serve a transaction still in flight: stop it later.
        asyncio.get_running_loop().call_later(60, old.engine.close)

    async def stop(self, grace: float = 10.0) -> None:
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        while self.gate.sessions and time.monotonic() < deadline:
            # Sessions between transactions have nothing to finish: tell them now instead of
            # holding the shutdown (and them) for the whole grace period.
            for session in list(self.gate.sessions):
                if not session.in_transaction:
                    session.shutdown()
            await asyncio.sleep(0.1)
        for session in list(self.gate.sessions):
            session.shutdown()
        self.stop_event.set()
        if self.relay is not None:
            await self._relay_task
        if self.runtime is not None:
            self.runtime.engine.close()
            if self.runtime.events is not None:
                self.runtime.events.close()
        if self.store is not None:
            self.store.close()


def configure_logging(level: int = logging.INFO) -> None:
    # JsonFormatter uses none of the caller, thread or process fields: do not collect them for
    # every record (the logging HOWTO's "Optimization" section; two records per relayed
    # message, each ~25 % cheaper without them).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no findCaller() stack walk per record
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("dsguard")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


async def run_gateway(
    config: Config,
    config_path: str | None,
    *,
    sockets: dict[str, socket.socket] | None = None,
    slot: int | None = None,
    parent: int | None = None,
) -> None:
    """The whole gateway, or (``sockets``, ``slot``, ``parent``: the supervisor's pid) one
    worker of ``[gateway] workers``."""
    server = GatewayServer(config, config_path, sockets=sockets, slot=slot)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    if parent is None:
        ready: dict[str, object] = {"event": "ready"}
        ready.update({k: f"{h}:{p}" for k, (h, p) in server.bound.items()})
    else:
        # The supervisor says "ready" for the whole gateway; a worker only that it serves.
        from dsguard.workers import watch_parent

        watch_parent(loop, parent, stopping.set)
        ready = {"event": "worker_ready", "pid": os.getpid(), "slot": slot}
    # One write (not print: line and newline separately): workers share the stream.
    sys.stderr.write(json.dumps(ready) + "\n")
    sys.stderr.flush()
    await stopping.wait()
    log.info(json.dumps({"event": "stopping"}))
    await server.stop()
    if parent is not None:
        log.info(
            json.dumps(
                {
                    "event": "worker_stopped",
                    "pid": os.getpid(),
                    "slot": slot,
                    "sessions": server.gate.admitted,
                }
            )
        )
