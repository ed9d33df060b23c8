"""One ``rpo-train`` run per ``out_dir``: the lock file ``<out_dir>/rpo-train.lock``.

The lock itself is the operating system's (``flock``) on that file, so two runs starting together can never both take
it, and the lock of a run that died, even by ``kill -9``, is free again: the next run takes the stale file over. The
file's JSON (pid, host, start time; written atomically) only says who holds it, for the message a second run prints.
The holder removes the file when its run ends, on success or error. Under torchrun only rank 0 takes the lock.

Replacing the file atomically gives it a new inode, so the new inode is locked *before* it takes the path, and a
process that locked a file that is no longer at the path (replaced or removed meanwhile) lets go and tries again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write, writing
from .distributed import DistContext
from .errors import UsageError
from .preflight import check_out_dir

LOCK_NAME = "rpo-train.lock"
NO_FILE_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # flock refused by the filesystem


class OutDirInUseError(UsageError):
    """Another run holds the lock of the ``out_dir``."""


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the one at ``path`` now."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it does, and is someone else's
        pass
    return True


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` exclusively without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass
class RunLock:
    """The lock of ``out_dir``: ``acquire()`` takes it or raises ``OutDirInUseError``; ``release()`` gives it back."""

    out_dir: Path
    fd: int | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / LOCK_NAME

    def acquire(self) -> bool:
        """Take the lock (creating ``out_dir``); False, with a note on stderr, where the filesystem has no file locks
        (the run goes on unguarded)."""
        check_out_dir(self.out_dir)
        with writing(self.out_dir):
            self.out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _try_lock(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in NO_FILE_LOCKS:
                    raise UsageError(f"cannot lock {self.path} ({exc.strerror}); use another out_dir") from exc
                print(f"rpo-train: note: {self.out_dir} has no file locks ({exc.strerror}): nothing keeps a second "
                      "run off this out_dir", file=sys.stderr)
                return False
            if not locked:
                os.close(fd)
                raise OutDirInUseError(self._in_use())
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder replaced or removed the file between our open and our lock: try the new one
        self.fd = self._write_holder(fd)
        return True

    def _write_holder(self, fd: int) -> int:
        """Replace the file (locked by ``fd``) with one naming this process, locked before it takes the path, so that
        the file at the path is locked throughout; returns the new file's descriptor."""
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        opened: list[int] = []

        def write(tmp: str) -> None:
            Path(tmp).write_text(json.dumps(holder) + "\n")
            opened.append(os.open(tmp, os.O_RDWR))
            _try_lock(opened[0])  # a file nobody else knows yet: always free

        try:
            atomic_write(self.path, write)
        except BaseException:
            for new in opened:
                os.close(new)
            raise
        finally:
            os.close(fd)
        return opened[0]

    def _in_use(self) -> str:
        """The message for a run that finds the lock held, naming the holder from the file's JSON."""
        holder: dict = {}
        for _ in range(40):  # the holder may be between creating the file and writing its JSON
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads(self.path.read_text())
            if isinstance(holder, dict) and "pid" in holder:
                break
            holder = {}
            time.sleep(0.05)
        pid, host = holder.get("pid"), holder.get("host", "an unknown host")
        who = f"pid {pid if pid is not None else 'unknown'} on {host}, started {holder.get('started', 'unknown')}"
        if host == socket.gethostname() and isinstance(pid, int) and pid > 0 and not _alive(pid):
            who += "; that process is gone, but a process it started still holds the lock: end that one"
        return (f"out_dir {self.out_dir} is in use by another rpo-train run ({who}); wait for it to finish or stop "
                f"it, or use another out_dir (lock file {self.path})")

    def release(self) -> None:
        """Remove the file and let go of the lock (nothing to do when not held)."""
        if self.fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # a file left behind is stale, and the next run takes it over
                if _same_file(self.fd, self.path):
                    self.path.unlink()
        finally:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def hold_out_dir(out_dir: str | os.PathLike, dist: DistContext) -> Iterator[bool]:
    """Hold the lock of ``out_dir`` for the block, taken by rank 0 only; released at the end, on errors too. Rank 0
    raises ``OutDirInUseError`` (or another ``UsageError``) when it cannot take it; every other rank then gets False
    (the job stops; rank 0 says why) and True otherwise."""
    lock = RunLock(Path(out_dir))
    failure = None
    if dist.is_main:
        try:
            lock.acquire()
        except UsageError as exc:
            failure = exc
    try:
        if dist.any_rank(failure is not None):
            if failure is not None:
                raise failure
            yield False
        else:
            yield True
    finally:
        lock.release()
