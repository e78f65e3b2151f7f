"""The ``voxloc`` command: one entry point, one module per subcommand in ``clients.commands``."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from clients.commands import (
    build_engine,
    calibrate,
    camera,
    ctl,
    demo,
    evaluate,
    export,
    keys,
    localize,
    record,
    render,
    serve,
    simulate,
    train,
)
from clients.commands.options import describe
from engines.errors import VoxlocError

# in the order ``voxloc --help`` lists them; each provides ``register(subparsers)``
COMMANDS = (
    train,
    simulate,
    localize,
    export,
    build_engine,
    evaluate,
    serve,
    camera,
    record,
    ctl,
    render,
    demo,
    calibrate,
    keys,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxloc",
        description="Real-time 3D single-molecule localization for multifocal-plane microscopes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
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
    except ValidationError as exc:
        print(f"voxloc {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2
    except (VoxlocError, OSError, ValueError) as exc:
        print(f"voxloc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
