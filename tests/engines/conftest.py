"""Fixtures for the engine tests: the real ``voxloc`` CLI in-process, small stacks on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "error" in line]


@pytest.fixture
def voxloc(capsys) -> Callable[..., CliResult]:
    """Run ``voxloc ARGS...`` through the real entry point; returns code, stdout, stderr."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture(scope="session")
def small_stack(tmp_path_factory) -> tuple[Path, Path]:
    """A 6-frame 64x64x4 simulated stack (paper noise, 50 molecules) and its ground truth."""
    from engines.config import SimSettings
    from engines.io.simstack import SimStackConfig, simulate_stack

    out = tmp_path_factory.mktemp("stack") / "sim.tif"
    res = simulate_stack(out, SimSettings(), SimStackConfig(frames=6, molecules=50, seed=3))
    return res.stacks[0], res.truth


@pytest.fixture
def files_in() -> Callable[[Path], list[str]]:
    """Every entry of a directory, hidden ones too (leftover temp files show up here)."""

    def listing(directory: Path) -> list[str]:
        return sorted(p.name for p in Path(directory).iterdir())

    return listing
