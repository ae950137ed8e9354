"""The admin password's brake: failures slow a client down, then lock it out; each client on its own; all logged."""

import logging

from captioner import login
from captioner.login import LoginGuard


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_failures_slow_down_then_lock_out_and_are_logged(caplog):
    clock = Clock()
    guard = LoginGuard(clock)
    caplog.set_level(logging.WARNING, logger="captioner.login")
    verdicts = [guard.attempt("10.0.0.7", "guess", "secret") for _ in range(login.FREE_FAILURES)]
    assert [v.message() for v in verdicts[:-1]] == ["Wrong password."] * (login.FREE_FAILURES - 1)
    assert verdicts[-1].wait_s == login.FIRST_DELAY_S and "Wait 2 s" in verdicts[-1].message()
    refused = guard.attempt("10.0.0.7", "secret", "secret")  # even the right password waits its turn
    assert not refused.ok and not refused.checked and "not checked" in refused.message()
    clock.now += login.FIRST_DELAY_S - 0.3  # a fraction of a second left is said as 1 s, never as "wait 0 s"
    assert "wait 1 s before trying again" in guard.attempt("10.0.0.7", "secret", "secret").message()
    clock.now += 0.3
    for _ in range(login.LOCKOUT_AFTER - login.FREE_FAILURES):
        clock.now += login.MAX_DELAY_S + 1
        last = guard.attempt("10.0.0.7", "guess", "secret")
    assert last.locked and "locked out for 15 more minute(s)" in last.message()
    clock.now += login.MAX_DELAY_S + 1
    assert not guard.attempt("10.0.0.7", "secret", "secret").ok  # still locked out
    clock.now += login.LOCKOUT_S
    assert guard.attempt("10.0.0.7", "secret", "secret").ok
    logged = [r.getMessage() for r in caplog.records]
    assert any("failed 10 times in a row: locked out" in m for m in logged)
    assert any("refused unchecked" in m for m in logged) and any("succeeded after 10 failure(s)" in m for m in logged)
    assert all("secret" not in m and "guess" not in m for m in logged)  # passwords never reach the log


def test_each_client_is_braked_on_its_own_and_success_starts_again():
    clock = Clock()
    guard = LoginGuard(clock)
    for _ in range(login.FREE_FAILURES):
        guard.attempt("attacker", "x", "secret")
    assert guard.attempt("admin", "secret", "secret").ok
    assert not guard.attempt("attacker", "secret", "secret").checked
    clock.now += login.FIRST_DELAY_S
    assert guard.attempt("attacker", "secret", "secret").ok
    assert guard.attempt("attacker", "wrong", "secret").message() == "Wrong password."  # the count started again
