"""deploy/ stays consistent with the code: settings files load, every command in the
systemd units, the compose file and the Dockerfiles parses with the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from clients.cli import build_parser
from service.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent


def _parses(argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse reports the bad option on stderr
        pytest.fail(f"voxloc {' '.join(argv)} does not parse (exit {exc.code})")
    assert getattr(args, "func", None), argv


def test_example_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    host = load_settings(DEPLOY / "voxloc.toml")
    assert host.api.host == "127.0.0.1" and [c.plane for c in host.cameras] == [0, 1, 2, 3]
    monkeypatch.setenv("VOXLOC_API__TOKEN", "secret")
    docker = load_settings(DEPLOY / "voxloc.docker.toml")
    assert docker.api.host == "0.0.0.0" and docker.api.token == "secret"
    monkeypatch.delenv("VOXLOC_API__TOKEN")
    with pytest.raises(ValueError, match="token"):
        load_settings(DEPLOY / "voxloc.docker.toml")  # non-loopback without a token


def _exec_lines(unit: Path) -> list[list[str]]:
    text = unit.read_text().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        m = re.match(r"^(ExecStart|ExecStartPre)=(.*)$", line)
        if m:
            argv = shlex.split(m.group(2).replace("%i", "2"))
            assert argv[0] == "/opt/voxloc/venv/bin/voxloc", line
            cmds.append(argv[1:])
    return cmds


@pytest.mark.parametrize(
    "unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name
)
def test_systemd_units_run_real_commands(unit: Path) -> None:
    cmds = _exec_lines(unit)
    assert cmds, f"{unit.name} has no ExecStart"
    for argv in cmds:
        _parses(argv)
    text = unit.read_text()
    assert "[Install]" in text and "Restart=on-failure" in text


def test_compose_commands_and_files() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"voxloc", "cameras", "recorder"} <= set(services)
    for name, svc in services.items():
        assert (REPO / svc["build"]["dockerfile"]).is_file(), name
        if "command" in svc:
            _parses(svc["command"])
    ports = services["voxloc"]["ports"]
    assert any("8750" in p for p in ports) and any("5560" in p for p in ports)
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())["services"]["voxloc"]
    assert (REPO / gpu["build"]["dockerfile"]).is_file()
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_existing_paths_and_run_serve(name: str) -> None:
    text = (DEPLOY / name).read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for path in src.split():
            if path != "README.md":  # written by the lead; pyproject's readme
                assert (REPO / path).exists(), f"{name}: COPY {path} does not exist"
    cmd = re.search(r"^CMD (\[.*\])$", text, flags=re.M)
    assert cmd is not None
    _parses(yaml.safe_load(cmd.group(1)))
    assert "EXPOSE 8750" in text
    assert (DEPLOY / f"{name}.dockerignore").is_file()
