"""Servers the tests start on this machine: a free local port, waiting until one answers, stopping one."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on: any the OS gives, or one of CAPTIONER_TEST_PORTS (e.g. 8611-8619) where a shared
    machine gives each user a range."""
    first, _, last = os.environ.get("CAPTIONER_TEST_PORTS", "").partition("-")
    for port in range(int(first), int(last or first) + 1) if first else [0]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError(f"no free port in CAPTIONER_TEST_PORTS={os.environ['CAPTIONER_TEST_PORTS']}")


def wait_healthy(health_url: str, process: subprocess.Popen, name: str, log: Path, timeout: float) -> None:
    """Return once health_url answers 200; a process that exits or never answers raises with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{name} did not answer at {health_url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Terminate, and kill what does not stop within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
