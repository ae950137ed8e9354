"""The thread policy every process starts with: a deliberate thread count, and idle OpenMP threads that sleep."""

import os
import subprocess
import sys

from captioner import runtime
from conftest import ROOT

PROBE = "import os, torch; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'])"


def start(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_each_role_gets_its_thread_count():
    assert runtime.default_threads("app", cores=8) == 8 and runtime.default_threads("cli", cores=2) == 2
    assert runtime.default_threads("retrain", cores=8) == 7  # one core left to the app's sessions
    assert runtime.default_threads("retrain", cores=2) == 2 and runtime.default_threads("retrain", cores=1) == 1


def test_what_the_operator_set_wins():
    chosen = runtime.policy("app", {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"})
    assert chosen["OMP_NUM_THREADS"] == "3" and chosen["MKL_NUM_THREADS"] == "3" and chosen["OMP_WAIT_POLICY"] == "ACTIVE"
    assert runtime.policy("app", {})["OMP_WAIT_POLICY"] == "PASSIVE"


def test_configure_before_torch_loads_sets_torch_threads_and_the_wait_policy():
    threads, wait, told = start("from captioner import runtime; runtime.configure('cli'); " + PROBE)
    assert wait == "PASSIVE" and int(threads) == int(told) == runtime.usable_cores()
    threads, wait, _ = start("from captioner import runtime; runtime.configure('cli'); " + PROBE, OMP_NUM_THREADS="1")
    assert (threads, wait) == ("1", "PASSIVE")
    threads, _, told = start("from captioner import runtime; runtime.configure('cli'); " + PROBE, OMP_NUM_THREADS="1,1")
    assert (threads, told) == ("1", "1,1")  # one count per nesting level, as OpenMP reads it: the first is torch's
    for unreadable in ("abc", "0", "1.5"):  # OpenMP would ignore these: the CLI's own count, never a traceback
        threads, _, told = start("from captioner import runtime; runtime.configure('cli'); " + PROBE, OMP_NUM_THREADS=unreadable)
        assert int(threads) == int(told) == runtime.usable_cores()


def test_a_retrain_child_gets_its_own_count_unless_the_operator_chose_one():
    code = ("from captioner import runtime; runtime.configure('app'); e = runtime.child_env('retrain'); "
            "print(e['OMP_NUM_THREADS'], e['OMP_WAIT_POLICY'])")
    assert start(code) == [str(runtime.default_threads("retrain")), "PASSIVE"]
    assert start(code, OMP_NUM_THREADS="1") == ["1", "PASSIVE"]
