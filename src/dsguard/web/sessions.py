"""Server-side sessions of the web UI, and the signed cookies that point at them.

A session is created at sign-in and lives in this process's memory: the user name, a CSRF
token, when it started and when it was last used. The cookie holds only the session id (32
random bytes) signed with the key from ``[web] session_secret_file`` (itsdangerous HMAC).

Why server-side rather than a self-contained signed cookie: signing out, ``dsguard admin
remove`` and the idle timeout must end a session for real, including a copy of the cookie
someone else holds; a self-contained cookie stays valid until it expires. The price is that
restarting ``dsguard web`` signs everyone out, which is acceptable for an admin tool.

SECURITY: the session id is unguessable (``secrets.token_urlsafe(32)``) and the signature lets
forged or truncated cookies be refused before any look-up. A new id is issued at every
sign-in (no session fixation). Expiry is enforced here, on the server, whatever the browser
keeps: ``idle_timeout`` after the last request, ``max_age`` after sign-in. The table is
bounded (``MAX_SESSIONS``); when full, the least recently used session is dropped, so a flood
of sign-ins cannot exhaust memory. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer, TimestampSigner

MAX_SESSIONS = 10_000
# How often a session re-checks that its admin account still exists (``dsguard admin remove``
# ends the sessions of that admin within this many seconds).
ACCOUNT_RECHECK_SECONDS = 15.0
# A sign-in form is good for this long (its token is in a signed, timestamped cookie).
LOGIN_FORM_MAX_AGE = 3600


@dataclass(slots=True)
class Session:
    id: str
    username: str
    csrf_token: str
    created: float
    last_seen: float
    account_checked: float

    @property
    def actor(self) -> str:
        """How audit entries name this admin."""
        return f"web:{self.username}"

    def csrf_ok(self, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(
            token.encode("utf-8", "replace"), self.csrf_token.encode("ascii")
        )


class SessionStore:
    """Sessions by id; safe to use from the event loop and worker threads at once."""

    def __init__(
        self,
        secret: bytes,
        *,
        idle_timeout: float,
        max_age: float,
        clock: Callable[[], float],
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._clock = clock
        self._signer = Signer(secret, salt="dsguard.web.session")
        self._login_signer = TimestampSigner(secret, salt="dsguard.web.login-form")
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    # -- sessions ---------------------------------------------------------------------------

    def create(self, username: str) -> tuple[Session, str]:
        """A new session for ``username`` and the cookie value that points at it."""
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            username=username,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
            account_checked=now,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session, self._signer.sign(session.id).decode("ascii")

    def resolve(self, cookie: str | None) -> Session | None:
        """The live session a cookie value points at (and mark it used), or None."""
        if not cookie or len(cookie) > 200:
            return None
        try:
            sid = self._signer.unsign(cookie).decode("ascii")
        except (BadSignature, UnicodeError):
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.last_seen > self.idle_timeout or now - session.created > self.max_age:
                del self._sessions[sid]
                return None
            session.last_seen = now
            self._sessions.move_to_end(sid)
            return session

    def needs_account_check(self, session: Session) -> bool:
        return self._clock() - session.account_checked >= ACCOUNT_RECHECK_SECONDS

    def account_checked(self, session: Session) -> None:
        session.account_checked = self._clock()

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def end_user(self, username: str) -> None:
        """End every session of ``username`` (the account is gone)."""
        with self._lock:
            for sid in [s.id for s in self._sessions.values() if s.username == username]:
                del self._sessions[sid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    # -- sign-in form tokens ----------------------------------------------------------------

    def login_token(self, cookie: str | None) -> tuple[str, str]:
        """(token for the form, cookie value): the form may only be posted back by the browser
        that received it, within ``LOGIN_FORM_MAX_AGE`` (login CSRF).

        A browser that still holds a fresh token keeps it, so a second sign-in page loaded
        meanwhile (another tab, a redirected favicon request) does not invalidate the first.
        """
        if cookie and len(cookie) <= 200:
            try:
                kept = self._login_signer.unsign(cookie, max_age=LOGIN_FORM_MAX_AGE // 2)
                return kept.decode("ascii"), cookie
            except (BadSignature, UnicodeError):
                pass
        fresh = secrets.token_urlsafe(24)
        return fresh, self._login_signer.sign(fresh).decode("ascii")

    def login_token_ok(self, cookie: str | None, token: object) -> bool:
        if not cookie or not isinstance(token, str) or len(cookie) > 200:
            return False
        try:
            expected = self._login_signer.unsign(cookie, max_age=LOGIN_FORM_MAX_AGE)
        except (BadSignature, UnicodeError):
            return False
        return hmac.compare_digest(expected, token.encode("utf-8", "replace"))
