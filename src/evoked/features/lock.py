"""One writer per output: an exclusive lock file beside a store, held for a whole run.

``OUT.lock`` is locked with a POSIX record lock (``fcntl.lockf``): the kernel drops it when the
holding process dies, even by ``kill -9``, so a stale lock never blocks a rerun; and it is not
inherited by forked reader processes, so it ends with the run's own process. The file holds the
holder's pid, which the refusal names. A run removes its lock file when it ends; one left by a
killed run is unlocked and simply reused. (A locker checks after locking that the file it locked
is still the one at the path, so removing it cannot let two writers in.)
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evoked.errors import ConfigError

_HELD: dict[str, int] = {}  # lock path -> fd; POSIX locks do not exclude threads of one process
_GUARD = threading.Lock()


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


@contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of `out` for the body; a second writer gets a `ConfigError`."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    with _GUARD:
        if key in _HELD:
            raise ConfigError(
                f"{out} is being written by this process (pid {os.getpid()}) already; one writer at a time"
            )
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                who = _holder(fd)
                os.close(fd)
                raise ConfigError(
                    f"{out} is being written by {who} (lock {path}); wait for it to finish, stop it, "
                    "or write to another --out"
                ) from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed the file as we locked it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[key] = fd
    try:
        yield path
    finally:
        with _GUARD:
            _HELD.pop(key, None)
            path.unlink(missing_ok=True)  # while still locked: see the module doc
            fcntl.lockf(fd, fcntl.LOCK_UN)
            os.close(fd)
