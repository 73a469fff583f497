"""The gateway's SMTP server as it was up to smtpserver.py: aiosmtpd 1.4.6 with the DATA phase
read by ``DataScanner`` (``BlockDataSMTP``) and the gateway's admission control, session time
limit, idle 421, fast address parse and AUTH check off the event loop (``LegacyGatewaySMTP``),
copied from src/dsguard/gateway/{smtpdata,server}.py as they were (one slip restored: see
``BlockDataSMTP.smtp_DATA``).

Kept only as the reference the differential tests (test_smtpserver.py, test_smtpdata.py) run
dsguard's own server against, over real sockets. ``AiosmtpdHooks`` puts aiosmtpd's all-async
hook interface in front of ``GatewayHandler`` (whose hooks are synchronous but for DATA now),
and ``legacy_authenticator`` does the same for the AUTH check.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax

from dsguard.gateway import smtpserver
from dsguard.gateway.smtpdata import TOO_LONG_REPLY, TOO_MUCH_REPLY, DataScanner, DataState
from dsguard.gateway.smtpserver import (
    IDLE_TIMEOUT,
    SESSION_TOO_LONG,
    SHUTTING_DOWN,
    TOO_MANY_SESSIONS,
    ConnectionGate,
)

_READ_ALL = 1 << 30
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>[ \t]*(?=[^ \t(\r\n]|\Z)"
)


class AiosmtpdHooks:
    """aiosmtpd's async hooks over a handler with smtpserver's interface."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def forget(self, session: Any) -> None:
        self.handler.forget(session)

    async def handle_exception(self, error: Exception) -> str:
        reply: str = self.handler.handle_exception(error)
        return reply

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        lines: list[str] = self.handler.handle_EHLO(server, session, envelope, hostname, responses)
        return lines

    async def handle_AUTH(self, server: Any, session: Session, envelope: Any, args: Any) -> Any:
        status = self.handler.handle_AUTH(server, session, envelope, args)
        return MISSING if status is None else status

    async def handle_MAIL(self, server: Any, session: Session, envelope: Any, *args: Any) -> Any:
        status = self.handler.handle_MAIL(server, session, envelope, *args)
        return await status if inspect.isawaitable(status) else status

    async def handle_RCPT(self, server: Any, session: Session, envelope: Any, *args: Any) -> Any:
        return self.handler.handle_RCPT(server, session, envelope, *args)

    async def handle_DATA(self, server: Any, session: Session, envelope: Any) -> Any:
        return await self.handler.handle_DATA(server, session, envelope)


def legacy_authenticator(check: smtpserver.Authenticator) -> Any:
    """aiosmtpd's authenticator callback over smtpserver's."""

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        credentials = smtpserver.LoginPassword(auth_data.login, auth_data.password)
        result = check(session, mechanism, credentials)
        if result.success:
            return AuthResult(success=True, auth_data=auth_data, message=result.message)
        return AuthResult(success=False, handled=False, message=result.message)

    return authenticate


class BlockDataSMTP(SMTP):
    """aiosmtpd's protocol with the DATA phase read by ``DataScanner``."""

    # aiosmtpd's own smtp_DATA carries @syntax("DATA"); the gateway's override lost it, so
    # HELP stopped listing DATA. A slip, not a behaviour to keep: restored here.
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if self._decode_data:  # str content: not how dsguard runs; keep aiosmtpd's own
            await super().smtp_DATA(arg)
            return
        # The checks and replies before the data are aiosmtpd's, in its order.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        scanner = DataScanner(self.data_size_limit, self.line_length_limit)
        reader = self._reader
        try:
            while not scanner.done:
                chunk = await reader.read(_READ_ALL)
                if not chunk:  # end of stream (eof_received cancels this coroutine anyway)
                    return
                scanner.feed(chunk)
        except asyncio.CancelledError:
            self._writer.close()  # the connection was lost during DATA (as aiosmtpd does)
            raise
        # read() took everything buffered and nothing arrived since (no await in between):
        # put back what the client pipelined after the data, in order, for the command loop.
        if scanner.rest and not reader.at_eof():
            reader.feed_data(scanner.rest)
        if scanner.state is not DataState.NOMINAL:
            too_long = scanner.state is DataState.TOO_LONG
            await self.push(TOO_LONG_REPLY if too_long else TOO_MUCH_REPLY)
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # unannotated in aiosmtpd
            return
        content = scanner.content()
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._set_post_data_state()  # type: ignore[no-untyped-call]  # unannotated in aiosmtpd
        await self.push("250 OK" if status is MISSING else status)


class LegacyGatewaySMTP(BlockDataSMTP):
    """aiosmtpd's protocol (its DATA phase read in blocks, same outcome: ``smtpdata``) with
    admission control and a whole-session time limit."""

    def __init__(
        self,
        handler: Any,
        *,
        gate: ConnectionGate,
        session_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._gate = gate
        self._session_timeout = session_timeout
        self._peer_ip: str | None = None
        self._admitted = False
        self._dsguard_handler = handler
        self._told_to_leave = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's version parses with the email package's header parser (and defines a
        # class on every call): most of the MAIL/RCPT cost. Same answer, fast, for the
        # plain <local@domain> form; anything else goes to the full parser.
        match = _SIMPLE_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        addr = match.group(1)
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, arg[match.end() :]

    # -- SMTP AUTH off the event loop --------------------------------------------------------
    # aiosmtpd calls the authenticator synchronously from its async auth_* methods; an argon2
    # verification takes tens to hundreds of milliseconds, during which every session would
    # stall. The base auth_PLAIN/auth_LOGIN parse the exchange and hand the credentials to
    # _authenticate, which here only records them; the check then runs in a worker thread.
    _pending_credentials: Any = None

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._pending_credentials = (mechanism, auth_data)
        return AuthResult(success=False, handled=True)

    async def _checked(self, result: AuthResult) -> AuthResult:
        pending, self._pending_credentials = self._pending_credentials, None
        if pending is None:  # the exchange failed before credentials were complete
            return result
        mechanism, auth_data = pending
        return await asyncio.to_thread(SMTP._authenticate, self, mechanism, auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        self._pending_credentials = None
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        self._pending_credentials = None
        return await self._checked(await super().auth_LOGIN(_, args))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._peer_ip is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self._peer_ip = peer[0] if isinstance(peer, tuple) else "unknown"
            self._admitted = self._gate.admit(self._peer_ip)
            if self._admitted:
                self._gate.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted and self._peer_ip is not None:
            self._admitted = False
            self._gate.release(self._peer_ip)
            self._gate.sessions.discard(self)
        if self.session is not None:
            self._dsguard_handler.forget(self.session)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self._admitted:
            await self.push(TOO_MANY_SESSIONS)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            async with asyncio.timeout(self._session_timeout):
                await super()._handle_client()
        except TimeoutError:
            try:
                await self.push(SESSION_TOO_LONG)
            finally:
                if self.transport is not None:
                    self.transport.close()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes a silent client without a word; RFC 5321 section 3.8: a server that
        # closes the channel on its own SHOULD first send 421, so the client knows to retry.
        # (aiosmtpd's own callback only closes the transport, as this one does after the 421.)
        transport = self.transport
        if transport is None:
            return
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(IDLE_TIMEOUT.encode("ascii") + b"\r\n")
        transport.close()

    @property
    def in_transaction(self) -> bool:
        """A MAIL transaction is under way (MAIL accepted, not yet ended by DATA or RSET)."""
        envelope = self.envelope
        return envelope is not None and envelope.mail_from is not None

    async def shutdown(self) -> None:
        """Tell a session still open at shutdown to come back later, then close it (once:
        ``stop`` may see the session again before its connection is gone)."""
        if self._told_to_leave:
            return
        self._told_to_leave = True
        with contextlib.suppress(Exception):  # the peer may already be gone
            await self.push(SHUTTING_DOWN)
        if self.transport is not None:
            self.transport.close()
