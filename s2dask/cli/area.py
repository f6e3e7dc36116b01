"""Command line for area products: ``mosaic`` (argument parsing only).

``s2dask.cli`` calls :func:`add_subcommands` with its subparsers; the handler calls
:func:`s2dask.maps.mosaic.mosaic`, and ``cli.main`` turns an :class:`~s2dask.errors.S2DaskError`
into one line on stderr and exit code 2. ``classify --aoi`` is an option of ``classify``.
"""

from __future__ import annotations

import argparse

from .args import positive_int

__all__ = ["add_subcommands"]


def _cmd_mosaic(args: argparse.Namespace) -> int:
    from ..maps.mosaic import mosaic

    client = None
    if args.scheduler or args.scheduler_file:
        from ..job.cluster import connect

        client, _ = connect(args.scheduler, scheduler_file=args.scheduler_file)
    try:
        result = mosaic(args.maps, args.out, crs=args.crs, resolution=args.resolution, aoi=args.aoi,
                        overlap=args.overlap, confidence=args.confidence, client=client, block=args.block,
                        overwrite=args.overwrite)
    finally:
        if client is not None:
            client.close()
    ny, nx = result.shape
    print(f"wrote {result.path}: {ny} x {nx} px in {result.crs} from {len(result.sources)} maps "
          f"({args.overlap} wins where they overlap); STAC item {result.item}"
          + (f"; confidence {result.confidence}" if result.confidence else ""))
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Add ``mosaic`` to the ``s2dask`` subparsers."""
    p = sub.add_parser(
        "mosaic",
        help="classify outputs (any CRS) -> one class COG in a target CRS, block by block",
        description="Mosaic the class maps of classify outputs (OUT folders or OUT/<scene-id> folders), "
        "in any CRS, into one Cloud-Optimized GeoTIFF in --crs: class values, colour table, class names, "
        "nodata 255, overviews. Classes are reprojected by nearest neighbour; where maps overlap the most "
        "confident pixel wins (--overlap). Each output block reads only the windows of the maps it "
        "needs, on Dask. A STAC item goes beside the COG (MOSAIC.json).",
    )
    p.add_argument("maps", nargs="+", metavar="OUT", help="classify output folder (OUT or OUT/<scene-id>)")
    p.add_argument("--out", "-o", required=True, metavar="MOSAIC.tif", help="the mosaic COG to write")
    p.add_argument("--crs", required=True, metavar="EPSG:XXXX", help="target CRS, e.g. EPSG:4326 or EPSG:32617")
    p.add_argument("--resolution", type=float, metavar="R",
                   help="pixel size in units of --crs (default: the finest of the maps in that CRS)")
    p.add_argument("--aoi", metavar="FILE",
                   help="polygon layer: the mosaic covers it, pixels outside it are 255")
    p.add_argument("--overlap", choices=("confidence", "first", "last"), default="confidence",
                   help="where maps overlap: the most confident pixel (default), the first or the last map given")
    p.add_argument("--confidence", action="store_true",
                   help="also write the matching confidence mosaic (MOSAIC-confidence.tif)")
    p.add_argument("--block", type=positive_int, default=1024, metavar="N",
                   help="edge of the output blocks in pixels (default 1024): memory per task scales with it")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on a running scheduler (default: in this process)")
    where.add_argument("--scheduler-file", metavar="FILE", help="run on the scheduler of this scheduler file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing mosaic")
    p.set_defaults(handler=_cmd_mosaic)
