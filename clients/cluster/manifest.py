"""Resumable outputs: a manifest beside each output records the job and its finished chunks.

Beside ``OUT.csv`` a distributed run keeps ``OUT.csv.manifest.json`` (what identifies the
job: inputs with size and modification time, model with a hash of its weights, chunking
and settings; then every finished chunk with the engine and worker that ran it) and
``OUT.csv.parts/``, one ``.npy`` of localization rows per finished chunk. Both are
written atomically (temp file + rename), the part before the manifest line that names
it, so a crash at any moment leaves a consistent record. A re-run of the same job skips
the recorded chunks and rebuilds the identical table from the parts; a job that differs
in any identifying field starts over. When the output is complete the parts go, the
manifest stays (marked complete) so that a re-run knows the output is up to date.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.io.atomic import atomic_output

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "voxloc-localize-manifest"
MANIFEST_VERSION = 1

Span = tuple[int, int]


@dataclass(frozen=True)
class Finished:
    """One finished chunk: frames ``[first, stop)``, its row count and who ran it."""

    first: int
    stop: int
    rows: int
    engine: str
    worker: str


class Manifest:
    """The ledger of one output (see the module docstring)."""

    def __init__(self, output: Path, job: dict[str, Any], spans: list[Span]) -> None:
        self.output = Path(output)
        self.path = manifest_path(self.output)
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.job = job
        self.spans = list(spans)
        self.finished: dict[int, Finished] = {}
        self.complete = False

    @classmethod
    def open(
        cls, output: Path, job: dict[str, Any], spans: list[Span], *, fresh: bool = False
    ) -> Manifest:
        """The manifest of ``output`` for ``job``: resumed if it records the same job."""
        m = cls(output, job, spans)
        old = _read(m.path)
        if old is not None:
            _remove_stale_partials(m.output)
        if old is None or fresh:
            m._start_over("--fresh asked for" if old is not None else "")
        elif old.get("job") != job:
            m._start_over("the job differs: " + ", ".join(_differences(old.get("job"), job)))
        else:
            m._resume(old)
        return m

    @property
    def up_to_date(self) -> bool:
        """The output exists and was completed by this same job."""
        return self.complete and self.output.exists()

    def is_finished(self, span: Span) -> bool:
        return span[0] in self.finished

    def record(self, span: Span, rows: np.ndarray, engine: str, worker: str) -> None:
        """Store a finished chunk's rows, then note it in the manifest."""
        self.parts.mkdir(exist_ok=True)
        with atomic_output(self._part(span)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(rows, np.float64), allow_pickle=False)
        self.finished[span[0]] = Finished(span[0], span[1], int(rows.shape[0]), engine, worker)
        self._write()

    def rows(self, span: Span) -> np.ndarray:
        """``(N, 11)`` float64 rows of a finished chunk, ``LOC_COLUMNS`` then the chi2
        (``(N, 10)`` or ``(N, 5)`` for a chunk finished before the chi2 or before
        photometry: :func:`engines.chunks.chunk_table` reads all three)."""
        return np.load(self._part(span), allow_pickle=False)

    def engines(self) -> list[str]:
        return sorted({f.engine for f in self.finished.values() if f.engine})

    def mark_complete(self) -> None:
        self.complete = True
        self._write()
        shutil.rmtree(self.parts, ignore_errors=True)

    def _part(self, span: Span) -> Path:
        return self.parts / f"{span[0]:010d}-{span[1]:010d}.npy"

    def _start_over(self, why: str) -> None:
        if why:
            log.info("%s: starting over (%s)", self.output, why)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.finished.clear()
        self.complete = False
        self._write()

    def _resume(self, old: dict[str, Any]) -> None:
        for entry in old.get("finished", []):
            f = Finished(**entry)
            if (f.first, f.stop) in self.spans and self._part((f.first, f.stop)).is_file():
                self.finished[f.first] = f
        self.complete = bool(old.get("complete")) and self.output.exists()
        if self.complete:
            return
        log.info(
            "%s: resuming, %d of %d chunks already done",
            self.output,
            len(self.finished),
            len(self.spans),
        )
        self._write()

    def _write(self) -> None:
        doc = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "output": self.output.name,
            "job": self.job,
            "chunks": len(self.spans),
            "complete": self.complete,
            "finished": [vars(f) for _, f in sorted(self.finished.items())],
        }
        with atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")


def manifest_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".manifest.json")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable manifest (%s); starting over", path, exc)
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        log.warning("%s: not a voxloc manifest; starting over", path)
        return None
    return doc


def _differences(old: Any, new: dict[str, Any]) -> list[str]:
    if not isinstance(old, dict):
        return ["no job recorded"]
    keys = sorted(set(old) | set(new))
    return [f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _remove_stale_partials(output: Path) -> None:
    """Temp files a killed run left (``.OUT.partial-*``, ``.OUT.yaml.partial-*``)."""
    names = (output.name, output.with_suffix(".yaml").name)
    for name in names:
        for stale in output.parent.glob(f".{name}.partial-*"):
            log.info("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)
    for stale in output.parent.glob(f".{manifest_path(output).name}.partial-*"):
        stale.unlink(missing_ok=True)
