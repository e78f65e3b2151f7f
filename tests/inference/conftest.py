"""Fixtures for the inference engines: a writable model copy, simulated frames, backends.

Every test here runs with ``VOXLOC_CACHE`` pointing into a temporary folder, so exports
of the shipped model never land in the user's cache or in the package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.modeldir import resolve_model
from engines.simulator import Simulator


@pytest.fixture(scope="session", autouse=True)
def voxloc_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voxloc-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOXLOC_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def shared_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the shipped model, shared by tests that do not modify it."""
    dst = tmp_path_factory.mktemp("models") / "default"
    shutil.copytree(resolve_model("default"), dst)
    return dst


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A private writable copy of the shipped model (for tests that write into it)."""
    dst = tmp_path / "default"
    shutil.copytree(resolve_model("default"), dst, ignore=shutil.ignore_patterns("*.onnx"))
    return dst


@pytest.fixture(scope="session")
def frames(shared_model_dir: Path) -> np.ndarray:
    """``(6, 4, 48, 40)`` float32 simulated frames, 30 molecules each."""
    from engines.modeldir import read_info

    sim = Simulator(read_info(shared_model_dir).settings, seed=11)
    return sim.sample(6, 30, height=48, width=40).frames.numpy()
