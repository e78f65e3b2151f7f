"""``voxloc keys``: CURVE key pairs for the service and its clients (docs/deploy.md).

    voxloc keys keys/ --client cam-pc --client analysis

writes ``keys/service.key`` + ``keys/service.key_secret`` (the service's pair; kept if it
exists), one pair per client (``keys/<name>.key_secret`` goes to that client's machine)
and the allowed-keys directory ``keys/clients/`` with each client's public key. Adding a
client later (same command, another ``--client``) needs no service restart.

Also the ``--curve-server-key`` / ``--curve-key`` options of ``voxloc camera`` and
``voxloc record`` (:func:`add_curve_options`, :func:`curve_keys`).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.curve import CurveClientKeys

SERVICE = "service"
CLIENTS = "clients"
DEFAULT_CLIENTS = ("camera", "record")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def make_keys(directory: Path, clients: list[str], *, force: bool = False) -> list[Path]:
    """The service's pair (unless present, or ``force``), a pair per client and the
    allowed-keys directory; the files written."""
    import zmq.auth

    for name in clients:
        if not _NAME.match(name) or name in (SERVICE, CLIENTS):
            raise ValueError(
                f"client name {name!r}: letters, digits, '_', '.', '-' (at most 64), "
                f"not {SERVICE!r} or {CLIENTS!r}"
            )
    directory.mkdir(parents=True, exist_ok=True)
    allowed = directory / CLIENTS
    allowed.mkdir(exist_ok=True)
    written: list[Path] = []
    if force or not (directory / f"{SERVICE}.key_secret").exists():
        written += [Path(p) for p in zmq.auth.create_certificates(directory, SERVICE)]
    for name in clients:
        if (directory / f"{name}.key_secret").exists() and not force:
            raise ValueError(f"{directory / name}.key_secret exists (--force replaces it)")
        public, secret = zmq.auth.create_certificates(directory, name)
        shutil.copy(public, allowed / f"{name}.key")
        written += [Path(public), Path(secret), allowed / f"{name}.key"]
    for path in written:
        if path.name.endswith(".key_secret"):
            path.chmod(0o600)
    return written


def _cmd_keys(args: argparse.Namespace) -> int:
    clients = args.client or list(DEFAULT_CLIENTS)
    make_keys(args.dir, clients, force=args.force)
    d = args.dir.resolve()
    print(
        f"keys in {d}\n\n"
        "service settings (voxloc.toml):\n"
        f'  [security]\n  curve = true\n  server_key = "{d / SERVICE}.key_secret"\n'
        f'  client_keys = "{d / CLIENTS}"\n\n'
        "clients (copy service.key and the client's .key_secret to its machine):"
    )
    for name in clients:
        print(f"  {name}: --curve-server-key {d / SERVICE}.key --curve-key {d / name}.key_secret")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="make CURVE keys for encrypted, authenticated camera/localization streams",
        description="Write the service's CURVE key pair, a key pair per client and the "
        "directory of allowed client public keys that [security] client_keys names "
        "(docs/deploy.md). Existing client pairs are never replaced without --force.",
    )
    p.add_argument("dir", type=Path, help="key directory (created if missing)")
    p.add_argument(
        "--client",
        action="append",
        default=None,
        metavar="NAME",
        help=f"a client to make a key pair for (repeat; default {' '.join(DEFAULT_CLIENTS)})",
    )
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=_cmd_keys)


def add_curve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE (a service with [security] curve = true)")
    g.add_argument(
        "--curve-server-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the service's public key (service.key of voxloc keys)",
    )
    g.add_argument(
        "--curve-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="this client's key pair (NAME.key_secret of voxloc keys)",
    )


def curve_keys(args: argparse.Namespace) -> CurveClientKeys | None:
    """The client keys the options name (None: CURVE off); both options or neither."""
    server, own = args.curve_server_key, args.curve_key
    if server is None and own is None:
        return None
    if server is None or own is None:
        raise ValueError("--curve-server-key and --curve-key go together")
    from service.curve import CurveClientKeys

    return CurveClientKeys.from_files(server, own)
