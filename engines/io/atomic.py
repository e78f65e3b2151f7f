"""Atomic output files: write to a hidden temp file next to the target, rename on success.

The one place voxloc writes a file under its final name: an interrupted or failed write
leaves the old file (if any) untouched and no temp file behind (a killed process may
leave a ``.NAME.partial-*`` file, which does not look like a finished output).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engines.errors import OutputError

__all__ = [
    "OutputError",
    "atomic_output",
    "discard",
    "reserve_temp",
    "write_bytes",
    "write_json",
    "write_text",
]


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


def write_bytes(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically; returns ``final``."""
    with atomic_output(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` atomically; returns ``final``."""
    with atomic_output(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)


def write_json(final: Path, data: Any, *, allow_nan: bool = True) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``final`` atomically;
    ``allow_nan=False`` refuses NaN and infinities (strict JSON) with a ValueError."""
    return write_text(final, json.dumps(data, indent=2, allow_nan=allow_nan) + "\n")


def discard(paths: list[Path]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
