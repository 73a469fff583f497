"""Sign-in throttling: failed attempts counted per client IP and per user name.

After ``max_failures`` failures within ``window`` seconds from one IP, or against one user
name (from anywhere), further attempts are refused with 429 until the oldest failure has left
the window. A refused attempt is not checked against the password at all, so a throttled
attacker learns nothing, not even from timing. A success clears the user name's failures
(not the IP's: one known account must not reset the counter for guessing others).

The user name key is the name as typed, lower-cased, whether or not the account exists, so
throttling does not reveal which accounts exist.

SECURITY: both tables are bounded (``MAX_KEYS`` each, oldest key dropped first) so a spray
from many addresses cannot exhaust memory. The trade-off of per-user throttling is that
anyone who can reach the sign-in page can lock an admin out for one window; the UI is bound to
loopback by default for that reason too.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(self, max_failures: int, window: float, clock: Callable[[], float]) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._by_ip: OrderedDict[str, deque[float]] = OrderedDict()
        self._by_user: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, ip: str, username: str) -> int:
        """Seconds until an attempt for (ip, username) is allowed; 0 = allowed now."""
        now = self._clock()
        with self._lock:
            wait = max(
                self._wait(self._by_ip, ip, now),
                self._wait(self._by_user, _user_key(username), now),
            )
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, ip: str, username: str) -> None:
        now = self._clock()
        with self._lock:
            self._add(self._by_ip, ip, now)
            self._add(self._by_user, _user_key(username), now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._by_user.pop(_user_key(username), None)

    def _wait(self, table: OrderedDict[str, deque[float]], key: str, now: float) -> float:
        failures = table.get(key)
        if failures is None:
            return 0.0
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del table[key]
            return 0.0
        if len(failures) < self.max_failures:
            return 0.0
        # Allowed again when enough of the failures have left the window.
        return failures[len(failures) - self.max_failures] + self.window - now

    def _add(self, table: OrderedDict[str, deque[float]], key: str, now: float) -> None:
        failures = table.get(key)
        if failures is None:
            failures = table[key] = deque(maxlen=self.max_failures * 2)
            while len(table) > MAX_KEYS:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        failures.append(now)


def _user_key(username: str) -> str:
    return username.strip().lower()[:256]
