"""Which stacks a distributed ``voxloc localize`` processes, and where each one's table goes.

Every INPUT is a file, a folder (its ``*.tif`` / ``*.tiff``, not recursive) or a glob.
Files named ``NAME_plane0.tif``, ``NAME_plane1.tif``, ... (as ``voxloc simulate
--per-plane`` writes them) form one per-plane stack called ``NAME``; any other TIFF is a
multi-plane stack of its own. With ``-o`` naming a table file, all inputs together are one
stack, exactly as in a local run.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.errors import FormatError
from engines.io.loctable import CSV_SUFFIXES, HDF5_SUFFIXES, SMLM_SUFFIXES

TIFF_SUFFIXES = (".tif", ".tiff")
PLANE_NAME = re.compile(r"^(?P<stem>.+?)[_-]plane(?P<plane>\d+)$", re.IGNORECASE)
TABLE_SUFFIXES = {"csv": ".csv", "h5": ".h5", "smlm": ".smlm"}


@dataclass(frozen=True)
class InputStack:
    """One stack to localize: its name, its files (one, or one per plane) and its output."""

    name: str
    sources: tuple[Path, ...]
    output: Path

    def describe(self) -> str:
        if len(self.sources) == 1:
            return str(self.sources[0])
        return f"{self.name} ({len(self.sources)} per-plane files in {self.sources[0].parent})"


def is_table_path(out: Path) -> bool:
    return out.suffix.lower() in CSV_SUFFIXES + HDF5_SUFFIXES + SMLM_SUFFIXES


def plan_inputs(inputs: Sequence[str | Path], out: Path, table_format: str) -> list[InputStack]:
    """The stacks named by ``inputs`` with their outputs (``-o`` a table file or a folder)."""
    paths = expand_paths(inputs)
    if is_table_path(out):
        return [InputStack(_stem(paths[0]), tuple(paths), out)]
    if table_format not in TABLE_SUFFIXES:
        raise FormatError(
            f"table format must be one of {sorted(TABLE_SUFFIXES)}, got {table_format!r}"
        )
    if out.exists() and not out.is_dir():
        raise FormatError(
            f"-o {out}: expected a folder (or a .csv / .h5 / .smlm file), it is a file"
        )
    suffix = TABLE_SUFFIXES[table_format]
    stacks = [
        InputStack(name, sources, out / f"{name}{suffix}") for name, sources in group_stacks(paths)
    ]
    _check_unique(stacks)
    return stacks


def expand_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders and globs to a list of paths, in order, each once.

    A path that does not exist is kept (it fails as an input of its own, named); a glob
    or folder without a TIFF is an error before anything runs.
    """
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        if Path(text).is_dir():
            hits = sorted(p for p in Path(text).iterdir() if _is_tiff(p))
            if not hits:
                raise FormatError(f"input folder {text} holds no .tif / .tiff file")
        elif glob.has_magic(text) and not Path(text).exists():
            hits = sorted(Path(p) for p in glob.glob(text) if _is_tiff(Path(p)))
            if not hits:
                raise FormatError(f"input pattern {text!r} matches no .tif / .tiff file")
        else:
            hits = [Path(text)]
        found.extend(hits)
    if not found:
        raise FormatError("no input files given")
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def group_stacks(paths: Sequence[Path]) -> list[tuple[str, tuple[Path, ...]]]:
    """``(name, sources)`` per stack: ``NAME_planeK`` files grouped in plane order."""
    order: list[str] = []
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in paths:
        m = PLANE_NAME.match(_stem(p))
        key = str(p.parent / m["stem"]) if m else str(p)
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append((int(m["plane"]) if m else 0, p))
    out = []
    for key in order:
        members = sorted(groups[key])
        planes = [k for k, _ in members]
        if len(members) > 1 and planes != list(range(len(members))):
            raise FormatError(
                f"per-plane files of {key}: expected planes 0..{len(members) - 1}, got {planes}"
            )
        name = Path(key).name if len(members) > 1 else _stem(members[0][1])
        out.append((name, tuple(p for _, p in members)))
    return out


def _check_unique(stacks: list[InputStack]) -> None:
    by_output: dict[Path, InputStack] = {}
    for s in stacks:
        if s.output in by_output:
            raise FormatError(
                f"inputs {by_output[s.output].describe()} and {s.describe()} would both "
                f"write {s.output}; give them different names or separate runs"
            )
        by_output[s.output] = s
        if any(src.resolve() == s.output.resolve() for src in s.sources):
            raise FormatError(f"output {s.output} is also an input")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_tiff(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TIFF_SUFFIXES
