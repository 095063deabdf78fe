"""Watching the server processes the embedded modules start."""

from __future__ import annotations

import os
import time
from pathlib import Path

POLL_INTERVAL_SECONDS = 0.05


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon is reparented to init once its launcher exits; an exited daemon stays a
    # zombie until init reaps it, which in some containers takes seconds.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def wait_for_exit(pid: int, timeout_seconds: float) -> bool:
    """Wait until ``pid`` has exited; False if it still runs after ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_SECONDS)
    return True
