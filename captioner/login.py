"""Password checks with a brake: per client, failures slow the next attempt down, then lock it out for a while.

Attempts refused by the brake are not checked at all, so guessing costs wall-clock time whatever the number of
sessions a client opens. Every failure, lockout and refused attempt goes to the server log (logger
`captioner.login`, WARNING: printed on stderr when the server configures no logging).
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

LOG = logging.getLogger("captioner.login")
FREE_FAILURES = 3  # failures a client may make before each attempt has to wait
FIRST_DELAY_S = 2.0  # the wait after the first failure past the free ones; doubles per failure after that
MAX_DELAY_S = 60.0
LOCKOUT_AFTER = 10  # failures in a row that lock the client out
LOCKOUT_S = 15 * 60
FORGET_AFTER_S = 60 * 60  # a client with no failure for this long starts again from zero
MAX_CLIENTS = 10_000  # the oldest are forgotten beyond this, so a flood of addresses cannot exhaust memory


@dataclass(frozen=True)
class Verdict:
    """The outcome of one attempt: ok, or the seconds to wait before the next one is even checked."""

    ok: bool
    wait_s: float = 0.0
    locked: bool = False
    checked: bool = True  # False: refused by the brake without looking at the password

    def message(self) -> str:
        if self.ok:
            return ""
        if self.locked:
            return f"Too many wrong passwords: locked out for {max(1, round(self.wait_s / 60))} more minute(s)."
        if not self.checked:
            return f"Too many wrong passwords: wait {math.ceil(self.wait_s)} s before trying again (this attempt was not checked)."
        if self.wait_s > 0:
            return f"Wrong password. Wait {math.ceil(self.wait_s)} s before the next attempt."
        return "Wrong password."


class LoginGuard:
    """Checks passwords and brakes repeated failures per client (an IP address, or "local")."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (failures, last failure)
        self._guard = threading.Lock()

    def attempt(self, client: str, entered: str, password: str) -> Verdict:
        """Check `entered` for `client`, unless the client must still wait; log what happened."""
        now = self.clock()
        with self._guard:
            failures, last = self._clients.get(client, (0, now))
            if failures and now - last > FORGET_AFTER_S:
                failures = 0
            wait = self._wait(failures) - (now - last) if failures else 0.0
            if wait > 0:
                LOG.warning("admin login from %s refused unchecked: %d failures, %.0f s still to wait", client, failures, wait)
                return Verdict(False, wait, locked=failures >= LOCKOUT_AFTER, checked=False)
            if hmac.compare_digest(entered.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass")):
                self._clients.pop(client, None)
                if failures:
                    LOG.warning("admin login from %s succeeded after %d failure(s)", client, failures)
                return Verdict(True)
            failures += 1
            self._clients[client] = (failures, now)
            self._clients.move_to_end(client)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        wait = self._wait(failures)
        if failures >= LOCKOUT_AFTER:
            LOG.warning("admin login from %s failed %d times in a row: locked out for %.0f s", client, failures, wait)
        else:
            LOG.warning("admin login from %s failed (%d in a row); next attempt in %.0f s", client, failures, wait)
        return Verdict(False, wait, locked=failures >= LOCKOUT_AFTER)

    @staticmethod
    def _wait(failures: int) -> float:
        """Seconds a client with this many failures in a row must wait after the last one."""
        if failures >= LOCKOUT_AFTER:
            return float(LOCKOUT_S)
        if failures < FREE_FAILURES:
            return 0.0
        return min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (failures - FREE_FAILURES))
