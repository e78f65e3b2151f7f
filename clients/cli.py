"""The ``voxloc`` command: one entry point, subcommands registered by each package."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engines.errors import VoxlocError

# modules that provide ``register(subparsers)``; a missing one (not built yet, or an
# optional extra not installed) just contributes no subcommands
COMMAND_MODULES = (
    "engines.cli",
    "engines.cli_engines",
    "engines.cli_evaluate",
    "service.cli",
    "clients.commands",
    "engines.calibration.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxloc",
        description="Real-time 3D single-molecule localization for multifocal-plane microscopes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("voxloc: interrupted", file=sys.stderr)
        return 130
    except (VoxlocError, OSError, ValueError) as exc:
        print(f"voxloc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
