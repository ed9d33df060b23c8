"""Crash-safe file writes: write a temporary file beside the target, fsync, rename over it, fsync the folder.

A reader sees either the old file or the new one, never a torn one, even after ``kill -9`` mid-write. A write that
fails (disk full, quota, permissions) leaves the old one in place and raises ``WriteFailedError`` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import WriteFailedError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error_of(exc: BaseException) -> OSError | None:
    """The operating system's error behind a failed write: ``exc`` itself, or the one that safetensors' writer
    reports only in the message of its ``SafetensorError`` ("... No space left on device (os error 28)")."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"os error (\d+)|code: (\d+)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    if found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code))


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Run a block that writes ``path``: an operating-system error in it becomes a ``WriteFailedError`` naming
    ``path`` (one raised deeper, naming a more precise file, passes through); any other exception is untouched."""
    try:
        yield
    except WriteFailedError:
        raise
    except Exception as exc:
        cause = os_error_of(exc)
        if cause is None:
            raise
        raise WriteFailedError(path, cause) from exc


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then atomically move it to ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; a result or checkpoint is as readable as any file
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")

    return atomic_write(path, write)


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` (matplotlib) through ``atomic_write``; the format comes from ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def atomic_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Call ``build(tmp_dir)`` to fill a hidden temporary folder beside ``path``, fsync its files, then rename it to
    ``path`` (replacing an older one). A crash leaves either the old folder or the new one, plus at most a hidden
    temporary folder. A ``WriteFailedError`` naming a file of the temporary folder names its place in ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with writing(path):
            os.chmod(tmp, _DIR_MODE)  # mkdtemp creates 0700
            build(tmp)
            for item in tmp.iterdir():
                if item.is_file():
                    with writing(path / item.name), open(item, "rb") as f:
                        os.fsync(f.fileno())
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    except WriteFailedError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise exc.moved(tmp, path) from exc.__cause__
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
