"""``voxloc demo``: service + four simulated cameras + dashboard, in one command.

The service and the cameras run as child processes (``voxloc serve``, ``voxloc camera``)
with their logs in a temporary directory; this process prints the dashboard URL and a
live one-line status from ``GET /stats``, and on Ctrl-C (or after ``--duration``) stops
the cameras, then the service, and waits for both.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from clients.commands.signals import on_stop_signals

STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(
    api_port: int, locs_port: int, camera_ports: list[int], model: str, threshold: float
) -> str:
    """The demo's service settings (docs/protocol.md Sec. 7) as TOML."""
    cams = "".join(
        f'\n[[cameras]]\nname = "cam{k}"\nplane = {k}\nendpoint = "tcp://127.0.0.1:{port}"\n'
        for k, port in enumerate(camera_ports)
    )
    return (
        f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n\n'
        f'[stream]\npublish = "tcp://127.0.0.1:{locs_port}"\nplanes = {len(camera_ports)}\n'
        f"height = 64\nwidth = 64\n\n"
        f'[inference]\nmodel = "{model}"\nthreshold = {threshold}\n' + cams
    )


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with open(log_path, "w") as log:
        # own process group: the terminal's Ctrl-C reaches only us; we stop children in order
        return subprocess.Popen(
            [sys.executable, "-m", "clients.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"\n{name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it", flush=True)
            proc.kill()
            proc.wait()


def status_line(s: dict[str, Any], t0: float) -> str:
    cams = s.get("cameras", {})
    frames_in = sum(c.get("frames_in", 0) for c in cams.values())
    lat = s.get("latency_ms") or {}
    asm = (s.get("assembler") or {}).get("dropped", {})
    drops = sum(asm.values()) + (s.get("batcher") or {}).get("dropped", 0)
    rejects = sum((s.get("rejects") or {}).values())
    model = (s.get("model") or {}).get("name", "-")
    pub = (s.get("publisher") or {}).get("published", 0)

    def num(v: Any) -> str:
        return f"{v:.0f}" if isinstance(v, (int, float)) else "-"

    return (
        f"[{time.monotonic() - t0:5.0f} s] {model}: in {num(s.get('fps_in'))} fps, "
        f"out {num(s.get('fps_out'))} fps, latency p50 {num(lat.get('p50'))} / "
        f"p99 {num(lat.get('p99'))} ms, {pub} frame sets published, "
        f"{frames_in} frames in, drops {drops}, rejects {rejects}"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    # SIGTERM ends the demo like Ctrl-C: stop the cameras, then the service
    with on_stop_signals(_interrupt):
        return _run(args)


def check_ports(ports: list[tuple[int, str]]) -> None:
    """OSError, one line naming the first busy port and its flag, before anything starts."""
    from service.preflight import EndpointBusyError, bind_error, describe_bind_error

    for port, flag in ports:
        exc = bind_error("127.0.0.1", port)
        if exc is not None:
            raise EndpointBusyError(
                exc.errno,
                describe_bind_error(exc, "port", f"{port} on 127.0.0.1", f"{flag} (0: any free)"),
            )


def _run(args: argparse.Namespace) -> int:
    from clients.control import ControlClient

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per status poll
    ports = [(args.port, "--port"), (args.locs_port, "--locs-port")]
    if args.camera_base_port:
        ports += [(args.camera_base_port + k, "--camera-base-port") for k in range(4)]
    check_ports(ports)  # before anything starts: a busy port is one line, at once
    api_port = args.port or free_port()
    locs_port = args.locs_port or free_port()
    cam_ports = (
        [args.camera_base_port + k for k in range(4)]
        if args.camera_base_port
        else [free_port() for _ in range(4)]
    )
    instance = uuid.uuid4().hex  # the service reports it: another one on the port is not ours
    workdir = Path(tempfile.mkdtemp(prefix="voxloc-demo-"))
    config = workdir / "voxloc.toml"
    config.write_text(demo_config(api_port, locs_port, cam_ports, args.model, args.threshold))
    url = f"http://127.0.0.1:{api_port}"
    print(f"voxloc demo: starting the service (logs in {workdir})", flush=True)
    service = _spawn(
        ["serve", "--config", str(config), "--instance-id", instance], workdir / "service.log"
    )
    # the cameras start loading at once, then wait for the model to be ready themselves
    cameras = _spawn(
        [
            "camera",
            "--rate",
            str(args.rate),
            "--molecules",
            str(args.molecules),
            "--seed",
            str(args.seed),
            "--register",
            url,
            "--wait-ready",
            str(args.ready_timeout),
            "--instance",
            instance,
            *[a for p in cam_ports for a in ("--endpoint", f"tcp://127.0.0.1:{p}")],
        ],
        workdir / "cameras.log",
    )
    t0 = time.monotonic()
    try:
        with ControlClient(url) as ctl:
            _wait_ready(ctl, service, workdir / "service.log", args.ready_timeout, instance)
            print(
                f"\n  dashboard:      {url}/\n  API docs:       {url}/docs\n"
                f"  localizations:  tcp://127.0.0.1:{locs_port}   (try: voxloc record -o "
                f"locs.csv --endpoint tcp://127.0.0.1:{locs_port})\n"
                f"  control:        voxloc ctl --url {url} status\n\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            _status_loop(ctl, service, cameras, t0, args.duration, workdir)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping cameras and service...", flush=True)
        _stop(cameras, "cameras")
        _stop(service, "service")
        print(f"stopped (logs in {workdir})", flush=True)
    return 0


def _interrupt(_sig: signal.Signals) -> None:
    raise KeyboardInterrupt


def _wait_ready(
    ctl: Any, service: subprocess.Popen, log: Path, timeout_s: float, instance: str
) -> None:
    """Until the service we started (``instance``) is ready; another service answering on
    the port is never taken for it."""
    from clients.control import ControlError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise ControlError(_exit_reason("the service", service.returncode, log))
        try:
            if ctl.is_instance(instance) and ctl.ready():
                return
        except ControlError:
            pass  # not listening yet
        time.sleep(0.3)
    raise ControlError(f"the service was not ready after {timeout_s:.0f} s; see {log}")


def _exit_reason(name: str, code: int | None, log: Path) -> str:
    """The child's own one-line error when it printed one, else the end of its log."""
    text = _tail(log, 200)
    errors = [
        line for line in text.splitlines() if line.startswith("voxloc ") and ": error:" in line
    ]
    if errors:
        return f"{name} exited with code {code}: {errors[-1].split(': error: ', 1)[1]}"
    return f"{name} exited with code {code}; {log} ends with:\n{_tail(log)}"


def _status_loop(
    ctl: Any,
    service: subprocess.Popen,
    cameras: subprocess.Popen,
    t0: float,
    duration_s: float | None,
    workdir: Path,
) -> None:
    from clients.control import ControlError

    tty = sys.stdout.isatty()
    last_print = 0.0
    while duration_s is None or time.monotonic() - t0 < duration_s:
        for proc, name in ((service, "service"), (cameras, "cameras")):
            if proc.poll() is not None:
                raise ControlError(_exit_reason(name, proc.returncode, workdir / f"{name}.log"))
        try:
            line = status_line(ctl.stats(), t0)
        except ControlError as exc:
            line = f"stats unavailable: {exc}"
        if tty:
            print("\r\033[K" + line, end="", flush=True)
        elif time.monotonic() - last_print >= 5.0:
            print(line, flush=True)
            last_print = time.monotonic()
        time.sleep(1.0)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="service + four simulated cameras + live dashboard, in one command",
        description="Start the service, four simulated cameras (filament sample, per-camera "
        "misalignment with the matching registration) and the web dashboard; print the URL "
        "and a live status line; Ctrl-C stops everything. Runs on a CPU.",
    )
    p.add_argument("--port", type=int, default=8750, help="dashboard/API port (0: any free)")
    p.add_argument(
        "--locs-port", type=int, default=0, help="localization stream port (default: any free)"
    )
    p.add_argument(
        "--camera-base-port",
        type=int,
        default=0,
        help="cam0's port, cam1..3 follow (default: any free)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="frame sets per second (default 10: sustainable on a laptop CPU)",
    )
    p.add_argument("--molecules", type=int, default=30, help="blinking molecules per frame")
    p.add_argument("--model", default="default", help="model name or directory")
    p.add_argument("--threshold", type=float, default=0.5, help="initial threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the model to load and warm up",
    )
    p.set_defaults(func=_cmd_demo)
