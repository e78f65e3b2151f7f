"""``voxloc export``: write a model's ONNX graph (decoding inside the graph)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx

    path = export_onnx(args.model, args.output, force=args.force)
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write model.onnx (dynamic batch and HxW, decoding in the graph)",
        description="Export a model to ONNX with the threshold as a runtime input and the "
        "threshold+gather inside the graph. Writes <model dir>/model.onnx unless -o is given.",
    )
    p.add_argument("model", nargs="?", default="default", help="model name or directory")
    p.add_argument("-o", "--output", type=Path, default=None, help="output .onnx path")
    p.add_argument("--force", action="store_true", help="export even if up to date")
    p.set_defaults(func=_cmd_export)
