"""Command line for map products: ``suggest``, ``design``, ``assess`` and the map options of
``classify`` (``--uncertainty``, ``--smooth``); argument parsing only.

``s2dask.cli`` calls :func:`add_subcommands` with its subparsers and
:func:`add_classify_options` with the ``classify`` parser; each subcommand sets
``handler`` like the others, so ``cli.main`` turns an :class:`~s2dask.errors.S2DaskError` into
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse

from .args import metres, positive_int

__all__ = ["add_subcommands", "add_classify_options"]


def add_classify_options(p: argparse.ArgumentParser) -> None:
    """``--uncertainty`` and ``--smooth`` of ``s2dask classify`` (checked by the job, before any compute)."""
    p.add_argument("--uncertainty", default="", metavar="entropy,margin[,least]",
                   help="also write uncertainty layers (uint8 percent, 0 = certain, 100 = most "
                   "uncertain, 255 = nodata) to the Zarr store and as uncertainty-<kind>.tif COGs")
    p.add_argument("--smooth", type=int, default=None, metavar="N",
                   help="smooth the class probabilities over an N x N window (odd: 3, 5, 7) before "
                   "the class is chosen: the mean of the valid pixels' probabilities; the same "
                   "map for any chunking")


def _cmd_suggest(args: argparse.Namespace) -> int:
    from ..maps.uncertainty import suggest

    frame = suggest(args.map, n=args.n, out=args.out, min_distance=args.min_distance,
                    layer=args.layer, overwrite=args.overwrite)
    top = f", uncertainty {frame['uncertainty'].iloc[0]}..{frame['uncertainty'].iloc[-1]} %" if len(frame) else ""
    print(f"wrote {args.out}: {len(frame)} points to label ({args.layer}{top}, "
          f"at least {args.min_distance:g} m apart)")
    return 0


def _cmd_design(args: argparse.Namespace) -> int:
    from ..maps.accuracy import design

    frame = design(args.map, n=args.n, out=args.out, min_per_class=args.min_per_class,
                   seed=args.seed, overwrite=args.overwrite)
    per = frame.groupby("map_class", sort=False).size()
    print(f"wrote {args.out}: {len(frame)} points ({', '.join(f'{k} {v}' for k, v in per.items())}); "
          "fill in the 'reference' column, then run s2dask assess")
    return 0


def _cmd_assess(args: argparse.Namespace) -> int:
    from ..maps.accuracy import assess

    result = assess(args.map, args.reference, label=args.label, out=args.out, overwrite=args.overwrite)
    print(result.format_table())
    if args.out:
        print(f"\nwrote {args.out} and {str(args.out).rsplit('.', 1)[0]}.png")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Add ``suggest``, ``design`` and ``assess`` to the ``s2dask`` subparsers."""
    p = sub.add_parser(
        "suggest", help="the most uncertain pixels of a map, spread out, as points to label next",
        description="Read an uncertainty layer chunk-wise (a job run with --uncertainty, or a "
        "single-band uncertainty GeoTIFF) and write the N most uncertain pixels, at least "
        "--min-distance metres apart, as a GeoPackage of points with their predicted class.")
    p.add_argument("map", metavar="MAP_DIR", help="job output folder, its classes.zarr, or an uncertainty GeoTIFF")
    p.add_argument("--n", type=positive_int, default=200, help="points to suggest (default 200)")
    p.add_argument("--out", "-o", required=True, metavar="CANDIDATES.gpkg", help="GeoPackage to write")
    p.add_argument("--min-distance", type=metres, default=0.0, metavar="METRES",
                   help="minimum distance between points (default 0)")
    p.add_argument("--layer", choices=("entropy", "margin", "least"), default="entropy",
                   help="uncertainty measure (default entropy)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(handler=_cmd_suggest)

    p = sub.add_parser(
        "design", help="a stratified random sample of a class map, as points to label",
        description="Strata = mapped classes; allocation proportional to mapped area with a "
        "minimum per class (capped by the class's pixels), as Olofsson et al. (2014) recommend. "
        "Writes points at pixel centres with an empty 'reference' column.")
    p.add_argument("map", metavar="MAP", help="job output folder or single-band class raster")
    p.add_argument("--n", type=positive_int, required=True, help="target sample size")
    p.add_argument("--out", "-o", required=True, metavar="REFERENCE.gpkg", help="GeoPackage to write")
    p.add_argument("--min-per-class", type=int, default=50, help="minimum points per class (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(handler=_cmd_design)

    p = sub.add_parser(
        "assess", help="accuracy and error-adjusted areas with 95%% intervals (Olofsson et al. 2014)",
        description="Compare a class map with labelled reference points: error matrix in area "
        "proportions, overall/user's/producer's accuracy and error-adjusted area per class, each "
        "with a 95%% confidence interval, next to the mapped area.")
    p.add_argument("map", metavar="MAP", help="job output folder or single-band class raster")
    p.add_argument("reference", metavar="REFERENCE",
                   help="point file (GPKG, GeoJSON, Shapefile) or CSV with x, y in the map's CRS")
    p.add_argument("--label", required=True, metavar="COL", help="column of the reference class (values or names)")
    p.add_argument("--out", "-o", default=None, metavar="ASSESSMENT.json",
                   help="write the report as JSON (and a PNG next to it)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs if they exist")
    p.set_defaults(handler=_cmd_assess)
