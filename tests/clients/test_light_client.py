"""The acquisition-PC client is light (issue 16, item 3): the camera publisher, the
Micro-Manager stream and the subscriber import only numpy, pyzmq and msgpack, and the
install line the README names for an acquisition PC brings no torch."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clients.entrypoint import ENGINE_MODULES

REPO = Path(__file__).resolve().parents[2]
LIGHT_MODULES = "clients.camera, clients.subscriber, clients.micromanager"
ALLOWED_THIRD_PARTY = {"numpy", "zmq", "msgpack"}
OURS = {"clients", "engines", "service"}
# what a light install lacks: every top-level module of the engine extra
HEAVY = ENGINE_MODULES
ACQUISITION_INSTALL = 'pip install "voxloc[micromanager]"'

BLOCKER = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def test_light_clients_import_without_torch(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(HEAVY)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    blocked = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert blocked.returncode != 0 and "blocked" in blocked.stderr  # the blocker works
    baseline = _loaded_modules("", env)  # what this interpreter loads at start-up (.pth)
    loaded = _loaded_modules(f"import {LIGHT_MODULES}", env)
    assert "torch" not in loaded
    third_party = {
        m
        for m in loaded - baseline - set(sys.stdlib_module_names) - OURS
        if not m.startswith("_") and m != "cython_runtime"  # made by Cython extensions
    }
    assert third_party <= ALLOWED_THIRD_PARTY, third_party


def _loaded_modules(code: str, env: dict[str, str]) -> set[str]:
    report = "import json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\n{report}"
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.splitlines()[-1]))


def _requirements(extras: set[str]) -> dict[str, str]:
    """Requirement name -> requirement of ``voxloc[extras]``, self-references resolved."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            m = re.fullmatch(r"voxloc\[([\w,\s-]+)\]", req.strip())
            if m:
                todo += [e.strip() for e in m.group(1).split(",")]
            else:
                reqs.append(req)
    return {_name(r): r for r in reqs}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def test_readme_names_the_acquisition_install_and_it_brings_no_torch() -> None:
    readme = (REPO / "README.md").read_text()
    assert ACQUISITION_INSTALL in readme
    extras = set(re.search(r"\[(.*)\]", ACQUISITION_INSTALL).group(1).split(","))
    names = set(_requirements(extras))
    assert names == {"numpy", "pyzmq", "msgpack", "pymmcore-plus"}, names
    assert "torch" in _requirements({"engine"})  # the service still gets its engine


def test_pymmcore_plus_brings_no_torch_either() -> None:
    """Walk the installed distributions the acquisition install pulls in, transitively."""
    pytest.importorskip("pymmcore_plus")
    from packaging.requirements import Requirement

    todo, seen = ["pymmcore-plus"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    assert not seen & {"torch", "onnxruntime", "onnx"}, sorted(seen)


def test_voxloc_command_on_a_light_install_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(HEAVY)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    run = subprocess.run(
        [sys.executable, "-m", "clients.entrypoint", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "pip install 'voxloc[engine]'" in run.stderr and "Traceback" not in run.stderr
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["voxloc"] == "clients.entrypoint:main"


def test_engine_modules_cover_the_engine_extra() -> None:
    """Every installed distribution of the engine extra provides only modules that
    ``clients.entrypoint`` knows as engine modules (so its message covers them)."""
    provides: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provides.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    light = set(_requirements(set()))
    for name in set(_requirements({"engine"})) - light - {"tomli"}:
        modules = {m for m in provides.get(name, set()) if not m.startswith("_")}
        assert modules, f"{name} is not installed"
        assert modules & ENGINE_MODULES, f"{name} provides {modules}, none in ENGINE_MODULES"
