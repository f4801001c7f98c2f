"""``--background-load K``: K busy processes that stand in for another job on a shared machine.

Each process spins a pure-Python loop (one core's worth of work, no memory traffic to speak of) and
stops on its own after `MAX_SECONDS` or as soon as the process that started it is gone, so a
benchmark that is killed with SIGKILL leaves nothing behind for long. `BackgroundLoad` starts them
on entry and stops them on exit, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType, TracebackType

from evoked.device import available_cores

#: At most this many busy processes per core this process may use (a bound on a typo).
MAX_PER_CORE = 4
#: A busy process gives up after this long even if nobody stops it.
MAX_SECONDS = 3600

_BUSY = (
    "import os, time\n"
    "parent, end = {parent}, time.monotonic() + {seconds}\n"
    "while time.monotonic() < end and os.getppid() == parent:\n"
    "    for _ in range(200000):\n"
    "        pass\n"
)


def check_count(k: int) -> int:
    """`k` when it is 0..MAX_PER_CORE x usable cores, else ValueError naming the bound."""
    limit = MAX_PER_CORE * available_cores()
    if not 0 <= k <= limit:
        raise ValueError(f"--background-load {k}: use 0 to {limit} ({MAX_PER_CORE} per usable core)")
    return k


class BackgroundLoad:
    """``with BackgroundLoad(k):`` k busy processes run inside the block, none after it."""

    def __init__(self, k: int, max_seconds: float = MAX_SECONDS):
        self.k, self.max_seconds = check_count(k), max_seconds
        self.procs: list[subprocess.Popen] = []
        self._old_term: object = None

    def __enter__(self) -> BackgroundLoad:
        if self.k and threading_main():
            self._old_term = signal.signal(signal.SIGTERM, _raise_exit)
        try:
            for _ in range(self.k):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _BUSY.format(parent=os.getpid(), seconds=self.max_seconds)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                    )
                )
        except BaseException:
            self.stop()
            raise
        time.sleep(0.2 if self.k else 0)  # let them reach the loop
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)  # type: ignore[arg-type]
            self._old_term = None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through BackgroundLoad.__exit__
