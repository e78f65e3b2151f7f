"""``voxloc render``: a depth-coloured super-resolution image from a localization table."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.commands.options import Default, build
from engines.config import Geometry

CONFIG = "clients.render:RenderSettings"


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np

    from clients.render import RenderSettings, render, save_image
    from engines.io.loctable import read_table, table_format

    table = read_table(args.table)
    keep = table.confidence >= args.min_confidence
    xyz = table.xyz_nm[keep]
    extent = None
    if args.fov_px:
        extent = (args.fov_px[0] * args.px_nm, args.fov_px[1] * args.px_nm)
    elif table_format(args.table) == "hdf5":
        extent = _hdf5_extent(args.table)
    settings = build(
        RenderSettings,
        args,
        dict(
            nm_per_px="nm_per_px",
            mode="mode",
            sigma_nm="sigma_nm",
            min_sigma_nm="min_sigma_nm",
            z_range_nm="z_range",
            cmap="cmap",
        ),
    )
    rgb = render(xyz, settings, extent, table.precision_nm[keep])
    save_image(args.out, rgb, settings, colorbar=not args.no_colorbar)
    if settings.mode == "precision":
        known = np.isfinite(table.precision_nm[keep, :2]).all(axis=1)
        if not known.all():
            print(
                f"{int((~known).sum())} of {len(xyz)} localizations have no precision: "
                f"blurred with --sigma-nm {settings.sigma_nm:g}"
            )
    print(
        f"rendered {len(xyz)} localizations into {rgb.shape[1]}x{rgb.shape[0]} px at "
        f"{settings.nm_per_px:g} nm/px -> {args.out}"
    )
    return 0


def _hdf5_extent(path: Path) -> tuple[float, float] | None:
    from engines.io.loctable import read_hdf5

    _, info = read_hdf5(path)
    merged = {k: v for d in info if isinstance(d, dict) for k, v in d.items()}
    try:
        px = float(merged["Pixelsize"])
        return float(merged["Width"]) * px, float(merged["Height"]) * px
    except (KeyError, TypeError, ValueError):
        return None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="render localizations into a depth-coloured image (PNG/TIFF)",
        description="2D histogram, Gaussian, or per-localization precision rendering of a "
        "ThunderSTORM CSV or Picasso HDF5 table at a chosen scale, depth colour-coded with a "
        "colour bar (Fig. 11b).",
    )
    p.add_argument("table", type=Path, help="localizations (.csv, .h5)")
    p.add_argument("-o", "--out", type=Path, required=True, help="image (.png, .tif)")
    p.add_argument(
        "--nm-per-px",
        type=float,
        default=Default(CONFIG, "nm_per_px"),
        help="output scale (default %(default)s)",
    )
    p.add_argument(
        "--mode",
        choices=["hist", "gauss", "precision"],
        default=Default(CONFIG, "mode"),
        help="hist: counts per pixel; gauss: blurred by --sigma-nm; precision: each "
        "localization a Gaussian of its own lateral precision (default %(default)s)",
    )
    p.add_argument(
        "--sigma-nm",
        type=float,
        default=Default(CONFIG, "sigma_nm"),
        help="Gaussian width (gauss mode; precision mode: for localizations without one)",
    )
    p.add_argument(
        "--min-sigma-nm",
        type=float,
        default=Default(CONFIG, "min_sigma_nm"),
        help="smallest blur in precision mode (default %(default)s)",
    )
    p.add_argument(
        "--z-range",
        type=float,
        nargs=2,
        default=Default(CONFIG, "z_range_nm"),
        metavar=("LO", "HI"),
        help="depth range of the colour map, nm",
    )
    p.add_argument(
        "--cmap",
        default=Default(CONFIG, "cmap"),
        help="matplotlib colour map (default %(default)s)",
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="render only localizations at least this confident",
    )
    p.add_argument(
        "--fov-px",
        type=int,
        nargs=2,
        default=None,
        metavar=("W", "H"),
        help="field of view in camera pixels (default: the table's)",
    )
    p.add_argument(
        "--px-nm",
        type=float,
        default=Geometry().px_nm,
        help="camera pixel size for --fov-px",
    )
    p.add_argument("--no-colorbar", action="store_true", help="image only")
    p.set_defaults(func=_cmd_render)
