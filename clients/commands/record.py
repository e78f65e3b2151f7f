"""``voxloc record``: write the live localization stream to CSV or HDF5."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from clients.commands.keys import add_curve_options, curve_keys
from clients.commands.options import add_geometry_options, value
from clients.commands.signals import stop_on_signals
from engines.config import Geometry

PAPER = Geometry()


def _cmd_record(args: argparse.Namespace) -> int:
    from clients.record import acquisition_path, open_stream_writer, record
    from clients.subscriber import LocalizationSubscriber
    from engines.io.loctable import TableMeta, model_meta

    from_model = {}
    if args.model is not None:  # its camera and PSF width: sigma1/2 [nm] (HDF5 sx, sy)
        from engines.modeldir import read_info, resolve_model

        settings = read_info(resolve_model(args.model)).settings
        from_model = model_meta(settings, px_nm=value(args.px_nm), dz_nm=value(args.dz_nm))
    meta = TableMeta(
        frames=0,
        height=args.height,
        width=args.width,
        px_nm=value(args.px_nm),
        dz_nm=value(args.dz_nm),
        planes=value(args.planes),
        source=args.endpoint,
        data_type="float32",
        info={"Recorded by": "voxloc record"},
        **from_model,
    )
    curve = curve_keys(args)
    writer = open_stream_writer(args.out, meta)
    stop = threading.Event()
    with stop_on_signals(stop), LocalizationSubscriber(args.endpoint, curve=curve) as sub:
        print(f"recording {args.endpoint} -> {args.out} (Ctrl-C to stop)", flush=True)
        result = record(
            sub,
            writer,
            max_frames=args.frames,
            duration_s=args.duration,
            idle_timeout_s=args.idle_timeout,
            stop=stop,
            next_writer=lambda acq: open_stream_writer(acquisition_path(args.out, acq), meta),
        )
    files = ", ".join(str(f) for f in result.files)
    print(
        f"wrote {result.rows} localizations from {result.messages} frame sets to {files}"
        f"; {result.missed} messages missed (seq gaps)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record the service's localizations to CSV / HDF5",
        description="Subscribe to the service's localization stream and write it to a "
        "ThunderSTORM CSV (.csv) or Picasso HDF5 (.h5 + .yaml) table, flushing after every "
        "batch of messages: an interrupted recording keeps everything written so far. "
        "A new acquisition goes to a new file: -o run.csv, then run.<acquisition>.csv.",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output .csv, .h5 or .hdf5")
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:5560",
        help="localization stream (default tcp://127.0.0.1:5560)",
    )
    p.add_argument("--frames", type=int, default=None, help="stop after N frame sets")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after S seconds without a message"
    )
    add_curve_options(p)
    m = p.add_argument_group("metadata for the Picasso yaml (defaults: paper set-up)")
    add_geometry_options(m, planes="focal planes (default %(default)s)")
    m.add_argument("--height", type=int, default=PAPER.height, help="frame height, px")
    m.add_argument("--width", type=int, default=PAPER.width, help="frame width, px")
    m.add_argument(
        "--model",
        default=None,
        help="the model the service runs (name or directory): its camera goes into the yaml "
        "and its PSF width into the table (sigma1/2 [nm], which Picasso's import_ts needs; "
        "HDF5 sx, sy); without it the table has no PSF width",
    )
    p.set_defaults(func=_cmd_record)
