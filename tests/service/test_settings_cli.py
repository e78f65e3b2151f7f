"""Settings from TOML + environment with validation; ``voxloc serve`` as a real process
that becomes ready and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import polling
import pytest
from pydantic import ValidationError

from engines.errors import EngineError
from service.pipeline import Pipeline
from service.settings import ServiceSettings, load_settings

TOML = """
name = "scope1"
[api]
port = {port}
[stream]
publish = "tcp://127.0.0.1:*"
assembly_timeout_ms = 250
[inference]
model = "tiny"
backend = "torch"
threshold = 0.6
{cameras}
"""


def cameras_toml(planes: int = 4) -> str:
    return "".join(
        f'[[cameras]]\nname = "c{k}"\nplane = {k}\nendpoint = "tcp://127.0.0.1:*"\ngain_adu = 2.0\n'
        for k in range(planes)
    )


def write_toml(tmp_path: Path, port: int = 8750, planes: int = 4) -> Path:
    path = tmp_path / "voxloc.toml"
    path.write_text(TOML.format(port=port, cameras=cameras_toml(planes)))
    return path


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(tmp_path)
    s = load_settings(path)
    assert s.name == "scope1" and s.inference.threshold == 0.6
    assert [c.name for c in s.cameras] == ["c0", "c1", "c2", "c3"]
    assert s.cameras[1].gain_adu == 2.0 and s.api.host == "127.0.0.1"
    monkeypatch.setenv("VOXLOC_INFERENCE__THRESHOLD", "0.4")
    monkeypatch.setenv("VOXLOC_API__TOKEN", "tok")
    s = load_settings(path)
    assert s.inference.threshold == 0.4 and s.api.token == "tok"
    assert s.runtime_config().assembly_timeout_ms == 250


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"api": {"host": "0.0.0.0"}}, "not loopback"),
        ({"stream": {"publish": "udp://x:1"}}, "udp://x:1"),
        ({"stream": {"planes": 3}}, "one camera per plane"),
        ({"inference": {"threshold": 1.0}}, "threshold"),
        ({"inference": {"precision": "int8"}}, "precision"),
        (
            {
                "cameras": [{"name": "a", "plane": 0, "endpoint": "tcp://127.0.0.1:99999"}],
                "stream": {"planes": 1},
            },
            "99999",
        ),
    ],
)
def test_unsafe_or_inconsistent_settings_are_refused(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ServiceSettings(**kwargs)


def test_precision_setting_reaches_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXLOC_INFERENCE__PRECISION", "bf16")
    pipeline = Pipeline(load_settings(write_toml(tmp_path)))
    pipeline.start()
    try:
        assert pipeline.models.active.backend == "torch/cpu/bf16"
        assert pipeline.models.active.engine.precision == "bf16"
    finally:
        pipeline.stop()


def test_missing_settings_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_settings(tmp_path / "nope.toml")


def test_plane_count_must_match_the_model(tmp_path: Path) -> None:
    s = load_settings(
        write_toml(tmp_path, planes=3), stream={"planes": 3, "publish": "tcp://127.0.0.1:*"}
    )
    pipeline = Pipeline(s)
    with pytest.raises(EngineError, match="expects 4 planes, the service streams 3"):
        pipeline.start()
    assert pipeline.state.value == "failed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_becomes_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    path = write_toml(tmp_path, port=port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "serve", "--config", str(path)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def ready() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        polling.wait_for(ready, "the service to become ready", 90, interval_s=0.2)
        r = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
        assert r.json()["model"] == "tiny"
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
        assert set(stats["cameras"]) == {"c0", "c1", "c2", "c3"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "pipeline stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def test_serve_reports_a_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from clients.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[api]\nhost = "0.0.0.0"\n')
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "voxloc serve: error:" in err and "loopback" in err
