"""How many threads each process of the app uses, and how idle ones wait: set once, before torch loads.

The app, the retrain subprocess and the indexer share one machine. Left alone, every torch process starts
one OpenMP thread per core, and an idle one spins for a while before it sleeps; two busy processes then take
the cores from each other's working threads (on 2 busy cores one training step went from 0.3 s to 3.3 s and
a demo retrain from 25 s to 435 s). OpenMP reads its settings once, when torch (or FAISS) loads it, so each
entry point calls configure() before anything imports torch; a value already in the environment wins, so an
operator can still choose (OMP_NUM_THREADS, OMP_WAIT_POLICY).
"""

from __future__ import annotations

import os
import sys

# Threads per role, from the cores this process may use. The app and the CLI take every core; a retrain the
# app started leaves one core to the app's own sessions when there are more than two.
ROLES = ("app", "cli", "finetune", "retrain")
_OPERATOR_THREADS = os.environ.get("OMP_NUM_THREADS", "").strip()  # as the process started, before configure()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(role: str, cores: int | None = None) -> int:
    """Threads for a process of this role on `cores` cores."""
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}; one of {', '.join(ROLES)}")
    cores = cores or usable_cores()
    return max(1, cores - 1) if role == "retrain" and cores > 2 else cores


def readable_threads(value: str) -> str | None:
    """OMP_NUM_THREADS as set, when OpenMP can read it: a count, or a comma list of counts (one per nesting level)."""
    value = value.strip()
    return value if value and all(part.strip().isdigit() and int(part) > 0 for part in value.split(",")) else None


def policy(role: str, env: dict | None = None) -> dict[str, str]:
    """The variables a process of this role starts with; values already in env are kept (an OMP_NUM_THREADS that
    OpenMP cannot read, such as `abc` or `0`, would be ignored by it: the role's count replaces it)."""
    env = os.environ if env is None else env
    threads = readable_threads(env.get("OMP_NUM_THREADS", "")) or str(default_threads(role))
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", "").strip() or threads.split(",")[0],
        "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "").strip() or "PASSIVE",  # an idle thread sleeps, never spins
        "TOKENIZERS_PARALLELISM": env.get("TOKENIZERS_PARALLELISM", "").strip() or "false",
    }


def configure(role: str) -> int:
    """Apply the policy to this process (call it before torch is imported); returns its thread count."""
    os.environ.update(policy(role))
    threads = int(os.environ["OMP_NUM_THREADS"].split(",")[0])  # the outermost level's count
    if "torch" in sys.modules:  # too late for the environment (OpenMP has read it): tell torch directly
        sys.modules["torch"].set_num_threads(threads)
    return threads


def child_env(role: str) -> dict[str, str]:
    """The environment for a child process of this role (the retrain the app starts): this process's, with the
    role's own thread count unless the operator chose one when this process started."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if _OPERATOR_THREADS:
        env["OMP_NUM_THREADS"] = _OPERATOR_THREADS
    return {**env, **policy(role, env)}


def process_started(pid: int) -> float | None:
    """When the process with this id started (seconds since the epoch), or None when there is none."""
    import psutil  # (accelerate's dependency; listed in requirements.txt)

    try:
        return psutil.Process(int(pid)).create_time()
    except (psutil.Error, ValueError, OverflowError, OSError):
        return None


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether the process with this id runs (on any OS: os.kill(pid, 0) would be a Ctrl+C on Windows), and when
    started is given, whether it is the one that started then, not a later process given the same id."""
    now = process_started(pid)
    return now is not None and (started is None or abs(now - started) < 1.0)


def lock_holder(lock_file) -> str:
    """Which process holds an flock on this lock file, as "process 1234 (python -m finetune ...)", from Linux's
    /proc/locks; "" where that cannot be told (another OS, a network file system, the lock let go meanwhile)."""
    import psutil

    try:
        info = os.stat(lock_file)
        wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            pids = [int(f[4]) for line in table if len(f := line.split()) > 5 and f[1] == "FLOCK" and f[5] == wanted]
        pids = [pid for pid in pids if pid > 0]  # 0: a holder in another pid namespace (a container's neighbour)
    except (OSError, ValueError):
        return ""
    for pid in pids:
        try:
            command = " ".join(" ".join(psutil.Process(pid).cmdline()).split())  # one line, whatever its arguments hold
        except psutil.Error:
            continue
        return f"process {pid} ({command[:157] + '...' if len(command) > 160 else command})"
    return f"process {pids[0]}" if pids else ""
