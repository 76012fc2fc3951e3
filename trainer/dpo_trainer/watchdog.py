"""Parent-death watchdog: a trainer never outlives the worker that spawned it.

When the GPU worker dies (kill -9, OOM killer, a crashed host agent), nobody is left to upload
the trainer's checkpoints or relay its progress, and Temporal retries the attempt elsewhere. A
trainer that kept running would hold the GPU and keep writing files that nothing will ever use.
So the trainer dies with its parent:

- on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)` has the kernel kill it the moment the parent goes;
- everywhere, a daemon thread polls `os.getppid()`; when the parent changes (the trainer was
  re-parented to init or a subreaper) the process exits at once with `os._exit`.

Exiting without a checkpoint is deliberate: a checkpoint written now could not be uploaded, and
the retry resumes from the newest uploaded one (at most one checkpoint interval back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 70  # sysexits EX_SOFTWARE; nobody reads it (the parent is gone)


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ParentWatchdog:
    """Ends the process when its parent process is gone. `start` once, early in `main`."""

    def __init__(
        self,
        poll_seconds: float = 0.5,
        on_parent_gone: Callable[[], None] | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.poll_seconds = poll_seconds
        self.parent_pid = parent_pid if parent_pid is not None else os.getppid()
        self._on_parent_gone = on_parent_gone or self._exit_now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.kernel_signal_armed = False

    def start(self) -> "ParentWatchdog":
        self.kernel_signal_armed = _set_parent_death_signal(signal.SIGKILL)
        # The parent may have died before prctl took effect: check once now, then poll.
        if self.parent_gone():
            self._on_parent_gone()
            return self
        self._thread = threading.Thread(target=self._run, name="parent-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def parent_gone(self) -> bool:
        return os.getppid() != self.parent_pid

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if self.parent_gone():
                self._on_parent_gone()
                return

    def _exit_now(self) -> None:
        try:
            sys.stderr.write(f"parent process {self.parent_pid} is gone: exiting without writing anything more\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_PARENT_GONE)
