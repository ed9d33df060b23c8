"""Errors a user can cause and fix, and how the command-line tools report them.

``UsageError`` is raised wherever something the user gave is wrong: a recipe field, a data file or row, a model
folder, a checkpoint, the machine. Its message names the culprit and says what was expected. The command-line tools
(``rpo-train``, the benchmark scripts) print it as one line, ``<prog>: <message>``, on stderr and exit with status 2;
``--debug`` (or ``RPO_DEBUG=1``) shows the traceback instead. Any other exception is a bug and is raised as usual.
``WriteFailedError`` is the machine's share: an output file that cannot be written (disk full, quota, permissions).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path


class UsageError(ValueError):
    """A problem in what the user gave, with a message naming it and what was expected (one line)."""


class MissingPathError(UsageError, FileNotFoundError):
    """A file or folder the user named is missing, or is not the kind expected (a file where a folder should be)."""


class WriteFailedError(UsageError, OSError):
    """An output file (checkpoint, cache, log, lock) could not be written: the disk is full, a quota is reached, the
    folder is read-only or not ours. Names the file and the operating system's reason; ``remedy`` says what to do.
    An ``OSError`` too (``errno`` is the cause's), so code that catches ``OSError`` around a write still does."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        code = errno.errorcode.get(cause.errno, "") if cause.errno else ""
        reason = cause.strerror or one_line(cause)
        super().__init__(f"cannot write {path}: {reason}{f' ({code})' if code else ''}")
        self.path, self.cause, self.errno = Path(path), cause, cause.errno

    @property
    def remedy(self) -> str:
        """What the user does about it, as the start of a sentence ("free some space")."""
        if self.errno in (errno.ENOSPC, errno.EDQUOT):
            return "free some space"
        if self.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "make it writable"
        return "fix that"

    def moved(self, src: Path, dst: Path) -> WriteFailedError:
        """This error with a path under the folder ``src`` named by its place under ``dst`` instead (a file of a
        temporary folder that was to become ``dst``)."""
        if not self.path.is_relative_to(src):
            return self
        return WriteFailedError(dst / self.path.relative_to(src), self.cause)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr (``prog: message (see --help)``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a configuration, data, model, checkpoint or machine problem "
                             "instead of one line (also RPO_DEBUG=1)")


def report_usage_errors(prog: str, body: Callable[[], int], *, debug: bool = False) -> int:
    """Run ``body``; a ``UsageError`` becomes one line on stderr and exit status 2 (re-raised when ``debug`` or the
    environment variable RPO_DEBUG is set). Other exceptions are bugs and propagate untouched."""
    try:
        return body()
    except UsageError as exc:
        if debug or os.environ.get("RPO_DEBUG", "") not in ("", "0"):
            raise
        print(f"{prog}: {one_line(exc)}", file=sys.stderr)
        return 2


def _fits(value, hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict:
        return isinstance(value, dict)
    return True  # other annotations are checked by the dataclass itself


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return {type(None): "null", bool: "true or false", int: "an int", float: "a number", str: "a string",
            dict: "a mapping"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def check_types(config, section: str = "") -> None:
    """Raise ``UsageError`` naming ``section.field`` when a field of the dataclass ``config`` does not have its
    annotated type (ints pass for floats; a bool is not an int). Called first in each config's ``__post_init__``, so
    a range check never meets a string."""
    hints = typing.get_type_hints(type(config))
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if not dataclasses.is_dataclass(hint) and not _fits(value, hint):
            raise UsageError(f"{prefix}{f.name} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")
