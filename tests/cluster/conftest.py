"""Fixtures of the distributed tests: small stacks on disk, their single-process tables,
and one real ``LocalCluster`` of 2 worker processes (1 thread each) shared by the module.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_setup import BATCH, STACKS
from polling import wait_for

from clients.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def voxloc(capsys) -> Callable[..., CliResult]:
    """Run ``voxloc ARGS...`` through the real entry point; returns code, stdout, stderr."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@dataclass
class Stacks:
    folder: Path  # the input stacks, as a user's acquisition folder
    reference: dict[str, Path]  # stack name -> its table from a single-process run

    def copy_to(self, folder: Path, names: list[str]) -> Path:
        folder.mkdir()
        for name in names:
            for src in self.folder.glob(f"{name}*.tif"):
                shutil.copy2(src, folder / src.name)
        return folder


@pytest.fixture(scope="session")
def stacks(tmp_path_factory) -> Stacks:
    """Three 32x32x4 stacks (one of them one TIFF per plane) and their local tables."""
    from engines.config import SimSettings
    from engines.io.simstack import SimStackConfig, simulate_stack

    root = tmp_path_factory.mktemp("cluster")
    folder = root / "in"
    folder.mkdir()
    base = SimSettings()
    settings = base.model_copy(update={"geometry": base.geometry.with_size(32, 32)})
    reference = {}
    for seed, (name, (frames, per_plane)) in enumerate(STACKS.items()):
        cfg = SimStackConfig(
            frames=frames, molecules=12, seed=seed, per_plane=per_plane, progress=False
        )
        res = simulate_stack(folder / f"{name}.tif", settings, cfg)
        res.truth.unlink()
        ref = root / f"ref_{name}.csv"
        code = main(
            ["localize", *map(str, res.stacks), "-o", str(ref), "--batch", str(BATCH), "-q"]
        )
        assert code == 0
        reference[name] = ref
    return Stacks(folder, reference)


@dataclass
class Cluster:
    client: Any  # distributed.Client
    address: str

    def wait_for_workers(self, n: int = 2) -> None:
        wait_for(lambda: len(self.client.scheduler_info()["workers"]) == n, f"{n} workers", 120)

    def worker_pids(self) -> dict[str, int]:
        import os

        return self.client.run(os.getpid)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A real LocalCluster: 2 worker processes under nannies, 1 thread each."""
    distributed = pytest.importorskip("distributed", reason="pip install 'voxloc[cluster]'")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        ) as lc,
        distributed.Client(lc) as client,
    ):
        # import torch and the engine code in each worker before the timed-out tests
        client.run(importlib.import_module, "engines.chunks")
        c = Cluster(client, lc.scheduler_address)
        yield c
