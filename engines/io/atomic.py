"""Atomic output files: write to a hidden temp file next to the target, rename on success.

An interrupted or failed run leaves no file under the final name (a killed process may
leave a ``.NAME.partial-*`` file, which does not look like a finished output).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from engines.errors import VoxlocError


class OutputError(VoxlocError):
    """An output file cannot be written where asked."""


def reserve_temp(final: Path) -> Path:
    """Create an empty temp file in ``final``'s directory (fails early if unwritable)."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write output {final}: directory {parent} does not exist")
    if final.is_dir():
        raise OutputError(f"cannot write output {final}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.partial-", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write output {final}: {exc.strerror or exc}") from exc
    os.close(fd)
    mask = os.umask(0)  # mkstemp makes 0600; give the output the usual permissions
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return Path(tmp)


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    tmp = reserve_temp(final)
    try:
        yield tmp
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def discard(paths: list[Path]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
