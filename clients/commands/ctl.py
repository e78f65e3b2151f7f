"""``voxloc ctl``: the service's REST control plane from the shell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _print(data: Any) -> None:
    print(data if isinstance(data, str) else json.dumps(data, indent=2))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # e.g. drop_policy=reject


def _cmd_ctl(args: argparse.Namespace) -> int:
    from clients.control import ControlClient

    with ControlClient(args.url, token=args.token) as ctl:
        action = args.action
        if action == "status":
            s = ctl.stats()
            model = s.get("model") or {}
            lat = s.get("latency_ms") or {}
            print(
                f"{s.get('state')} model {model.get('name')} v{model.get('version')} "
                f"({model.get('backend')}), ready {ctl.ready()}, fps in {s.get('fps_in')} "
                f"out {s.get('fps_out')}, latency p50 {lat.get('p50')} ms "
                f"p99 {lat.get('p99')} ms"
            )
        elif action == "models":
            _print(ctl.models())
        elif action == "load":
            _print(ctl.load_model(args.name))
        elif action == "config":
            changes = {}
            for item in args.set:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"expected KEY=VALUE, got {item!r}")
                changes[key] = _parse_value(value)
            _print(ctl.set_config(**changes) if changes else ctl.config())
        elif action == "threshold":
            _print(ctl.set_threshold(args.value) if args.value is not None else ctl.config())
        elif action == "registration":
            if args.set:
                data = json.loads(args.set.read_text())
                _print(ctl.set_registration(data.get("cameras", data)))
            else:
                _print(ctl.registration())
        elif action == "stats":
            _print(ctl.stats())
        elif action == "metrics":
            _print(ctl.metrics())
        elif action == "wait":
            ctl.wait_ready(args.timeout)
            print("ready")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ctl",
        help="control a running service (models, threshold, stats)",
        description="Call the service's REST control plane (docs/protocol.md).",
    )
    p.add_argument("--url", default="http://127.0.0.1:8750", help="service URL")
    p.add_argument("--token", default=None, help="bearer token (default $VOXLOC_TOKEN)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    acts.add_parser("status", help="one-line health, model, fps and latency")
    acts.add_parser("models", help="available models and the active one")
    ld = acts.add_parser("load", help="load a model and switch to it without losing frames")
    ld.add_argument("name")
    cf = acts.add_parser("config", help="show, or set KEY=VALUE (threshold, max_batch, ...)")
    cf.add_argument("set", nargs="*", metavar="KEY=VALUE")
    th = acts.add_parser("threshold", help="show or set the confidence threshold")
    th.add_argument("value", nargs="?", type=float)
    rg = acts.add_parser("registration", help="show, or set from a JSON file")
    rg.add_argument(
        "--set",
        type=Path,
        default=None,
        metavar="FILE.json",
        help='{"cameras": {"cam1": {"affine": [[..],[..]]}}} (e.g. from '
        "`voxloc camera --registration-out` or `voxloc calibrate registration`)",
    )
    acts.add_parser("stats", help="full /stats JSON")
    acts.add_parser("metrics", help="Prometheus metrics")
    wt = acts.add_parser("wait", help="wait until the service is ready")
    wt.add_argument("--timeout", type=float, default=60.0, help="seconds")
    p.set_defaults(func=_cmd_ctl)
