"""One writer per output: an exclusive lock file beside a store, held for a whole run.

``OUT.lock`` is locked with a POSIX record lock (``fcntl.lockf``): the kernel drops it when the
holding process dies, even by ``kill -9``, so a stale lock never blocks a rerun; and it is not
inherited by forked reader processes, so it ends with the run's own process. The file holds the
holder's pid, which the refusal names. A run removes its lock file when it ends; one left by a
killed run is unlocked and simply reused. (A locker checks after locking that the file it locked
is still the one at the path, so removing it cannot let two writers in.)

A lock is keyed on the real file, not on the name it was given: ``OUT`` is resolved through
symlinks before its lock file is named, and an existing output is also locked by its device and
inode (a lock file in a per-user folder of the temporary directory), so a symlink or a hard link
to a store being written is refused like its own name. A writer that creates the output calls
`claim_file` once the file exists, so a hard link made afterwards is refused too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evoked.errors import ConfigError

log = logging.getLogger(__name__)

_HELD: dict[str, int] = {}  # lock path -> fd; POSIX locks do not exclude threads of one process
_IDENTITY: dict[str, str] = {}  # real output path -> its inode lock path, while held here
_GUARD = threading.Lock()


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(os.path.realpath(out))
    return out.with_name(out.name + ".lock")


def identity_lock_path(out: str | os.PathLike) -> Path | None:
    """The lock file of the file `out` by device and inode (None when it does not exist yet)."""
    try:
        st = os.stat(out)
    except OSError:
        return None
    folder = Path(tempfile.gettempdir()) / f"evoked-locks-{os.getuid()}"
    return folder / f"{st.st_dev}-{st.st_ino}.lock"


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _acquire(path: Path, out: str | os.PathLike) -> int:
    """Lock `path` for `out` (called under _GUARD); the fd of the locked file, else a ConfigError."""
    key = str(path)
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
    return fd


def _release(path: Path) -> None:
    fd = _HELD.pop(str(path), None)
    if fd is None:
        return
    path.unlink(missing_ok=True)  # while still locked: see the module doc
    fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)


def claim_file(out: str | os.PathLike) -> None:
    """Inside `output_lock(out)`: lock the file `out` by its device and inode too, now that it
    exists (a writer that created it calls this, so a hard link made to it is refused)."""
    real = os.path.realpath(out)
    ident = identity_lock_path(real)
    with _GUARD:
        if ident is None or _IDENTITY.get(real) == str(ident):
            return
        if real not in _IDENTITY:
            raise ConfigError(f"claim_file({out}) outside output_lock({out})")  # a programming error
        try:
            ident.parent.mkdir(mode=0o700, exist_ok=True)
            _acquire(ident, out)
        except OSError as e:  # no usable temporary folder: the lock by name still holds
            log.warning("cannot lock %s by its inode (%s); only its name is locked", out, e)
            return
        old = _IDENTITY[real]
        _IDENTITY[real] = str(ident)
        if old:  # the file was replaced (a new inode): the old identity is no longer this output's
            _release(Path(old))


@contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of `out` for the body; a second writer gets a `ConfigError`."""
    real = os.path.realpath(out)
    path = lock_path(real)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _GUARD:
        _acquire(path, out)
        _IDENTITY[real] = ""
    try:
        claim_file(real)
    except BaseException:
        with _GUARD:
            _IDENTITY.pop(real, None)
            _release(path)
        raise
    try:
        yield path
    finally:
        with _GUARD:
            ident = _IDENTITY.pop(real, "")
            if ident:
                _release(Path(ident))
            _release(path)
