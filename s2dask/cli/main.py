"""Command line: argument parsing only.

Every subcommand calls the library. :class:`~s2dask.errors.S2DaskError` is turned into
one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import S2DaskError
from . import area as area_commands
from . import models as model_commands
from .args import chunk_size, positive_int
from .maps import add_classify_options, add_subcommands

Handler = Callable[[argparse.Namespace], int | None]


# --------------------------------------------------------------------------- train / evaluate
# (section owned by the training feature: samples.py, train.py)


def _add_train(sub: argparse._SubParsersAction) -> None:
    def _ints(text: str) -> list[int]:
        try:
            return [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None

    def _floats(text: str) -> list[float]:
        try:
            return [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None

    def _cmd_train(args: argparse.Namespace) -> int:
        from ..training.train import train

        train(
            args.samples, args.out, label=args.label, bands=args.bands, class_table=args.classes,
            split=args.split, block_size=args.block_size, seed=args.seed, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.learning_rate, optimizer=args.optimizer,
            units=args.units, dropout=args.dropout, early_stopping=args.patience,
            class_weight=None if args.class_weight == "none" else args.class_weight,
            overwrite=args.overwrite, verbose=0 if args.quiet else 1, group_column=args.group_column,
            folds=args.folds,
        )
        return 0

    p = sub.add_parser(
        "train",
        help="train the MLP on a labelled table and write a model bundle",
        description="Train the tutorial's MLP (normalisation inside) on a labelled CSV/Parquet "
        "table, write MODEL_DIR atomically (model.keras, model.json, metrics.json, plots) and "
        "report test accuracy. The default split keeps every pixel (or labelled feature) on one "
        "side; --split random is the tutorial's protocol and leaks pixels between train and "
        "test on point data.",
    )
    p.add_argument("samples", metavar="SAMPLES", help="labelled table (.csv or .parquet)")
    p.add_argument("--out", "-o", required=True, metavar="MODEL_DIR", help="model directory to create")
    p.add_argument("--label", default=None,
                   help="class column (default: the one a table from 's2dask sample' names, else Class_ID)")
    p.add_argument("--bands", default=None,
                   help="comma-separated bands, aliases accepted (default the tutorial's 10)")
    p.add_argument("--classes", default=None, metavar="CLASS_TABLE.csv",
                   help="class table: value (or id/Class_ID), name, optional colour")
    p.add_argument("--split", choices=("auto", "random", "pixel", "block", "group"), default="auto",
                   help="train/val/test split (default auto: group when the table has feature ids, "
                   "else pixel with x,y; random is the tutorial's protocol and leaks; group: whole "
                   "labelled features on one side)")
    p.add_argument("--group-column", default="feature_id", metavar="COL",
                   help="groups for --split group (default feature_id, written by 's2dask sample')")
    p.add_argument("--block-size", type=float, default=250.0, metavar="M",
                   help="block side in metres for --split block (default 250)")
    p.add_argument("--folds", type=positive_int, default=None, metavar="K",
                   help="cross-validate first: K models on K disjoint test folds grouped like "
                   "--split; report mean, sd and range across folds (the bundle is then fitted "
                   "on the usual train/validation part)")
    p.add_argument("--seed", type=int, default=0, help="seed for split and training (default 0)")
    p.add_argument("--epochs", type=positive_int, default=100, help="maximum epochs (default 100)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch (default 64)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="default 0.001")
    p.add_argument("--optimizer", choices=("adam", "sgd", "rmsprop"), default="adam")
    p.add_argument("--units", type=_ints, default=[200, 200, 200, 200],
                   help="hidden layer widths (default 200,200,200,200)")
    p.add_argument("--dropout", type=_floats, default=[0.2, 0.2, 0.1, 0.1],
                   help="dropout per hidden layer (default 0.2,0.2,0.1,0.1)")
    p.add_argument("--patience", type=int, default=10,
                   help="early stopping on validation loss, 0 = off (default 10)")
    p.add_argument("--class-weight", choices=("balanced", "none"), default="none",
                   help="weight classes inversely to frequency (default none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing MODEL_DIR once the new one is complete")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-epoch lines or report")
    p.set_defaults(handler=_cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    def _cmd_evaluate(args: argparse.Namespace) -> int:
        from ..training.train import evaluate

        evaluate(args.model_dir, args.samples, out=args.out, label=args.label,
                 verbose=0 if args.quiet else 1)
        return 0

    p = sub.add_parser(
        "evaluate",
        help="score a model bundle on another labelled table",
        description="Apply MODEL_DIR to a labelled table (the model's bands are required) and "
        "report overall accuracy, kappa, per-class accuracies and the confusion matrix.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="bundle written by 's2dask train'")
    p.add_argument("samples", metavar="SAMPLES", help="labelled table (.csv or .parquet)")
    p.add_argument("--out", "-o", default=None, metavar="metrics.json", help="write the metrics here")
    p.add_argument("--label", default=None,
                   help="class column (default: the one a table from 's2dask sample' names, else Class_ID)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    p.set_defaults(handler=_cmd_evaluate)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    def _cmd_sample(args: argparse.Namespace) -> int:
        from ..training.labels import format_summary, sample

        client = cluster = None
        if args.scheduler or args.scheduler_file:
            from ..job.cluster import connect

            client, cluster = connect(args.scheduler, scheduler_file=args.scheduler_file)
        try:
            result = sample(
                args.scene, args.labels, out=args.out, label=args.label, name_column=args.name_column,
                bands=_band_list(args.bands), per_feature=args.per_feature, buffer=args.buffer,
                all_touched=args.all_touched, seed=args.seed, labels_crs=args.labels_crs,
                chunks=args.chunks, mask=args.mask, mask_classes=args.mask_classes,
                client=client, overwrite=args.overwrite, aoi=args.aoi,
            )
        finally:
            if client is not None:
                client.close()
        print(format_summary(result.summary))
        print(f"wrote {result.table} and {result.summary_path}")
        return 0

    p = sub.add_parser(
        "sample",
        help="labelled points/polygons + a scene -> a training table (Parquet or CSV)",
        description="Read LABELS (GeoPackage, GeoJSON, Shapefile, FlatGeobuf in any CRS, or a CSV "
        "of x,y points with --labels-crs), find the pixels of SCENE each feature labels (points: "
        "the containing pixel; polygons: pixels whose centre is inside) and write one row per "
        "feature and pixel: x, y, the bands, the label, feature_id and the scene id. Only the "
        "chunks the labels touch are read, on Dask. A summary goes to SAMPLES.json.",
    )
    p.add_argument("scene", metavar="SCENE", help="GeoTIFF/COG, band folder, .SAFE product or Zarr store")
    p.add_argument("labels", metavar="LABELS", help="vector file or CSV of x,y points")
    p.add_argument("--out", "-o", required=True, metavar="SAMPLES.parquet|.csv", help="table to write")
    p.add_argument("--label", default="Class_ID", metavar="COL",
                   help="integer class column of the labels (default Class_ID)")
    p.add_argument("--name-column", metavar="COL", help="class-name column to copy into the table")
    _add_bands(p, "select")
    p.add_argument("--per-feature", type=positive_int, metavar="N",
                   help="at most N pixels per feature, drawn with --seed")
    p.add_argument("--buffer", type=float, metavar="METRES",
                   help="buffer geometries first; negative shrinks polygons (keeps mixed edge pixels out)")
    p.add_argument("--all-touched", action="store_true",
                   help="every pixel a polygon touches, not only those whose centre is inside")
    p.add_argument("--seed", type=int, default=0, help="seed of the --per-feature draw (default 0)")
    p.add_argument("--labels-crs", metavar="CRS",
                   help="CRS of a CSV's x,y (or of a vector file declaring none), e.g. EPSG:32617")
    p.add_argument("--chunks", type=positive_int, default=1024, metavar="N",
                   help="chunk edge of the scene reads (default 1024); each touched chunk is one task")
    _add_mask_args(p, "pixels left out of the table and counted (as classify masks them)")
    p.add_argument("--aoi", metavar="FILE",
                   help="area of interest (polygon layer, any CRS): only pixels inside it are sampled")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="join a running scheduler")
    where.add_argument("--scheduler-file", metavar="FILE", help="join the scheduler of this scheduler file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table and summary")
    p.set_defaults(handler=_cmd_sample)


# --------------------------------------------------------------------------- scenes
# (section owned by the scene feature: scene/, grid.py)


def _band_list(values: Sequence[str] | None) -> list[str] | None:
    """``--bands B02 B03`` and ``--bands B02,B03`` alike."""
    if not values:
        return None
    return [b.strip() for v in values for b in v.split(",") if b.strip()]


#: what ``--bands`` does, per kind of subcommand (one option, one parser, every command)
_BANDS_HELP = {
    "name": "the scene's bands in stored order, for a GeoTIFF without band descriptions, e.g. "
            "--bands B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12 (never guessed; where the file names "
            "its bands they must agree)",
    "select": "bands to use, in order (default: all); for a GeoTIFF without band descriptions, "
              "its bands in file order",
    "write": "bands to write, in order (default: all)",
}


def _add_bands(p: argparse.ArgumentParser, role: str) -> None:
    """The one ``--bands`` option of every subcommand that takes a scene or band table."""
    p.add_argument("--bands", nargs="+", metavar="BAND", help=_BANDS_HELP[role])


def _add_grid_to_raster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grid-to-raster",
        help="write a pixel table on a regular grid (x, y, B2..B12) as a georeferenced COG",
        description="Write a CSV of cell centres (x, y) and band DNs as a tiled, DEFLATE-compressed "
        "multi-band COG with canonical band names; cells missing from the table become nodata.",
    )
    p.add_argument("grid", metavar="GRID.csv", help="table with columns x, y (cell centres) and B2..B12")
    p.add_argument("out", metavar="OUT.tif", help="the COG to write")
    p.add_argument("--crs", required=True, help="CRS of x/y, e.g. EPSG:32617")
    _add_bands(p, "write")
    p.add_argument("--nodata", type=float, default=0, help="value of missing cells (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.tif if it exists")
    p.set_defaults(handler=_cmd_grid_to_raster)


def _cmd_grid_to_raster(args: argparse.Namespace) -> int:
    import rasterio

    from ..io.records import normalise_nodata
    from ..scene.grid import grid_to_raster

    out = grid_to_raster(
        args.grid, args.out, crs=args.crs, bands=_band_list(args.bands),
        nodata=normalise_nodata(args.nodata),
        overwrite=args.overwrite,
    )
    with rasterio.open(out) as src:
        print(
            f"wrote {out}: {src.count} bands ({', '.join(d or '?' for d in src.descriptions)}), "
            f"{src.height} x {src.width} px of {src.res[0]:g} m, {src.crs}, {src.dtypes[0]}, nodata {src.nodata:g}"
        )
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a scene (GeoTIFF, band folder, .SAFE, Zarr) without reading pixels, "
        "or print a model bundle's card",
    )
    p.add_argument("scene", metavar="SCENE",
                   help="multi-band GeoTIFF, band folder, .SAFE product, Zarr store or STAC item (FILE#ID); "
                   "or a model bundle directory")
    _add_bands(p, "select")
    p.add_argument("--chunks", type=positive_int, default=2048, help="spatial chunk edge (default 2048)")
    _add_boa_option(p)
    p.set_defaults(handler=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..scene import open_scene, scene_summary

    if model_commands.is_bundle(args.scene):
        return model_commands.print_card(args.scene)

    scene = open_scene(args.scene, bands=_band_list(args.bands), chunks=args.chunks,
                       boa_add_offset=args.boa_add_offset)
    info = scene_summary(scene)
    offsets = {b: o for b, o in info["offset_applied"].items() if o}
    if offsets:
        harmonised = "yes, offsets applied: " + ", ".join(f"{b} {o:+d}" for b, o in offsets.items())
    else:
        harmonised = "yes, no offset needed" if info["harmonised"] else "no (values as stored)"
    n_bands, height, width = info["shape"]
    lines = [
        ("scene", info["scene_id"]),
        ("source", info["source"]),
        *[(k.replace("_", " "), info[k]) for k in ("tile_id", "sensing_time", "product_level", "processing_baseline") if k in info],
        ("shape", f"{n_bands} bands x {height} rows x {width} cols ({info['dtype']})"),
        ("bands", " ".join(info["bands"])),
        ("crs", info["crs"]),
        ("resolution", f"{info['resolution'][0]:g} x {info['resolution'][1]:g}"),
        ("nodata", info["nodata"]),
        ("chunks", f"{info['chunks']}, {info['n_chunks']} chunks"),
        ("harmonised", harmonised),
        *([("offset rule", scene.attrs["offset_rule"])] if scene.attrs.get("offset_rule") else []),
        ("scl", scene.attrs.get("scl_path") or "none (default --mask none)"),
    ]
    for key, value in lines:
        print(f"{key:<20} {value}")
    return 0


# --------------------------------------------------------------------------- classify / demo
# (section owned by the job feature: job.py, demo.py)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify whole scenes with a model bundle on a Dask cluster",
        description="Predict a land-cover class for every pixel of each SCENE with MODEL_DIR, "
        "block by block on Dask workers, and write OUT/<scene-id>/ with classes.zarr, "
        "classes.tif (COG), job.json and quicklook.png. Without --scheduler an embedded "
        "LocalCluster is started.",
    )
    p.add_argument("scenes", nargs="+", metavar="SCENE",
                   help="GeoTIFF/COG, band folder, .SAFE product, Zarr store, or STAC item / item "
                   "collection / catalogue (one scene per item; several allowed)")
    p.add_argument("--model", "-m", required=True, metavar="MODEL_DIR", help="bundle from 's2dask train'")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    p.add_argument("--chunks", type=chunk_size, default=None, metavar="N",
                   help="spatial chunk edge in pixels (default 2048, smaller for scenes of fewer than "
                   "4 such chunks); memory per task scales with it")
    p.add_argument("--probabilities", action="store_true",
                   help="also write per-class probabilities (uint8 percent) to the Zarr store")
    _add_bands(p, "name")
    p.add_argument("--aoi", metavar="FILE",
                   help="area of interest: a polygon layer in any CRS; only the chunks it touches are read "
                   "and predicted, pixels outside it get 255, scenes it misses are skipped")
    add_classify_options(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="join a running scheduler (tcp:// or tls://)")
    where.add_argument("--scheduler-file", metavar="FILE", help="join the scheduler of this scheduler file")
    p.add_argument("--tls-ca-file", metavar="FILE", help="CA certificate of a TLS cluster")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate of a TLS cluster")
    p.add_argument("--tls-key", metavar="FILE", help="client key of a TLS cluster")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S",
                   help="seconds to wait for the scheduler (default 20)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="workers of the embedded cluster (default: one per core)")
    p.add_argument("--threads-per-worker", type=positive_int, metavar="N",
                   help="threads per worker of the embedded cluster (default 1)")
    p.add_argument("--gpu", action="store_true",
                   help="embedded cluster of one worker per GPU (needs the gpu extra: dask-cuda)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="pixels per forward call (default: the engine's, Keras 8192, OpenVINO 2048)")
    p.add_argument("--engine", choices=("auto", "keras", "openvino"), default="auto",
                   help="inference engine (default auto, chosen on each worker: OpenVINO on CPU "
                   "workers, Keras on GPU workers)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="arithmetic of the forward pass (default auto: bf16 where OpenVINO runs on a "
                   "CPU with bf16 matrix units, else fp32)")
    p.add_argument("--overview-resampling", choices=("mode", "nearest"), default="mode",
                   help="COG overview resampling (default mode)")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs (the old one goes only when the new is complete)")
    state.add_argument("--resume", action="store_true",
                       help="finish an interrupted job: compute only the chunks not yet written")
    p.add_argument("--retries", type=int, default=None, metavar="N",
                   help="retries of a failed storage request, with backoff (default 5, or "
                   "$S2DASK_RETRIES; 0 = none); recorded per chunk in job.json")
    p.add_argument("--scheduler-timeout", type=float, default=60.0, metavar="S",
                   help="seconds without an answer from the scheduler before the job stops, "
                   "keeping finished chunks for --resume (default 60)")
    p.add_argument("--task-timeout", type=float, default=None, metavar="S",
                   help="seconds a chunk task may run before it is retried on another worker; after "
                   "2 retries the job stops, keeping finished chunks (default: 10 x the median "
                   "chunk time, at least 60 s)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="memory limit per worker of the embedded cluster, e.g. 1.5GiB (default: "
                   "the machine's memory shared out); chunks are picked to fit it")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_mask_options(p)
    p.set_defaults(handler=_cmd_classify)


def _add_mask_options(p: argparse.ArgumentParser) -> None:
    _add_mask_args(p, "pixels not to classify (class 255, Zarr 'mask' layer)")
    _add_boa_option(p)


def _add_mask_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--mask", metavar="scl|none|FILE", default=None,
                   help=f"{what}: scl = the scene's Scene "
                   "Classification Layer, none, or a single-band raster on the scene's grid (non-zero = "
                   "invalid); default: scl where the scene has one (L2A SAFE, SCL file, STAC scl asset)")
    p.add_argument("--mask-classes", metavar="0,1,3,8,9,10", default=None,
                   help="SCL classes masked (default 0,1,3,8,9,10: no data, defective, cloud shadow, "
                   "clouds, cirrus; snow 11 and water 6 are kept)")


def _add_boa_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boa-add-offset", type=int, default=None, metavar="DN",
                   help="STAC items: the offset their DNs carry when the item does not say it "
                   "(-1000: baseline 04.00+ values with the offset in them; 0: none)")


def _cmd_classify(args: argparse.Namespace) -> int:
    from ..io.storage import check_output_location
    from ..job.cluster import make_security
    from ..job.startup import ClusterStart
    from ..model.bundle import load_model

    security = make_security(ca_file=args.tls_ca_file, cert=args.tls_cert, key=args.tls_key)
    check_output_location(args.out)
    load_model(args.model, check_keras=False)  # a bad bundle fails before any cluster starts
    if args.aoi:  # so does an area of interest that is not a polygon layer with a CRS
        from ..scene.aoi import read_aoi

        read_aoi(args.aoi)
    # the cluster starts (and gets the model) while this process imports the job's libraries
    # and checks the scenes; the job takes it over
    delivery = {"engine": args.engine, "precision": args.precision, "batch_size": args.batch_size,
                "tf_threads": None}
    starter = ClusterStart(args.model, delivery=delivery, scheduler=args.scheduler,
                           scheduler_file=args.scheduler_file, security=security, timeout=args.timeout,
                           workers=args.workers, threads_per_worker=args.threads_per_worker, gpu=args.gpu,
                           memory_limit=args.memory_limit or "auto")
    try:
        from ..job.run import classify

        starter.timeline.mark("imports")
        results = classify(
            args.scenes if len(args.scenes) > 1 else args.scenes[0], args.model, args.out,
            client=starter, chunks=args.chunks, probabilities=args.probabilities,
            scheduler=args.scheduler, scheduler_file=args.scheduler_file, security=security,
            workers=args.workers, threads_per_worker=args.threads_per_worker, gpu=args.gpu,
            overwrite=args.overwrite, resume=args.resume, batch_size=args.batch_size,
            connect_timeout=args.timeout, overview_resampling=args.overview_resampling,
            bands=_band_list(args.bands), aoi=args.aoi,
            engine=args.engine, precision=args.precision, progress=False if args.quiet else None,
            mask=args.mask, mask_classes=args.mask_classes, boa_add_offset=args.boa_add_offset,
            uncertainty=args.uncertainty, smooth=args.smooth, retries=args.retries,
            scheduler_timeout=args.scheduler_timeout, memory_limit=args.memory_limit,
            task_timeout=args.task_timeout,
            resume_command=_resume_command(getattr(args, "argv", None)),
        )
    finally:
        starter.close()  # only if the job did not take it over (it failed before)
    failed = 0
    for r in results:
        if r.status == "complete":
            print(_job_line(r.record))
        elif r.status == "skipped":  # the area of interest misses it: not an error
            print(f"s2dask classify: {r.error}", file=sys.stderr)
        else:
            failed += 1
            print(f"s2dask classify: error: {r.error}", file=sys.stderr)
    return 2 if failed else 0


def _resume_command(argv: Sequence[str] | None) -> str | None:
    """``s2dask classify ... --resume``: this command, made to finish an interrupted job."""
    if argv is None:
        return None
    import shlex

    kept = [a for a in argv if a not in ("--overwrite", "--resume")]
    return shlex.join(["s2dask", *kept, "--resume"])


def _job_line(record: dict) -> str:
    st = record["statistics"]
    tp = record["throughput_mpx_s"]["end_to_end"]
    top = sorted(st["classes"], key=lambda c: -c["pixels"])[:3]
    cls = ", ".join(f"{c['name']} {100 * c['fraction']:.1f}%" for c in top)
    line = (f"{record['output']['dir']}: {st['pixels'] / 1e6:.2f} Mpx in "
            f"{record['timings_s']['total']:.1f} s ({tp:.2f} Mpx/s); {cls}; "
            f"nodata {st['nodata_pixels']} px"
            + (f", masked {st['masked_pixels']} px" if st.get("masked_pixels") else ""))
    from ..model.engines import engine_line

    engines = engine_line((record.get("engine") or {}).get("workers") or {})
    first = (record["timings_s"].get("startup") or {}).get("first_chunk")
    return "\n".join([line] + ([f"  engine: {engines}" + (f"; first chunk at {first:.1f} s"
                                                             if first is not None else "")]
                                if engines else []) + _task_line(record.get("task_seconds")))


def _task_line(seconds: dict | None) -> list[str]:
    """``  tasks: read 18%, model 78%, write 4% of 12.3 s in 4 chunks`` (none: no timed chunk;
    a resumed run adds `` (n kept from an earlier run)``)."""
    from ..job.ledger import TASK_STEPS

    if not seconds:
        return []
    known = {k: seconds[k] for k in TASK_STEPS if seconds.get(k) is not None}
    total = sum(known.values())
    if not total:
        return []
    shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in known.items())
    kept = seconds.get("kept_chunks") or 0
    return [f"  tasks: {shares} of {total:.1f} s in {seconds['chunks']} chunks"
            + (f" ({kept} kept from an earlier run)" if kept else "")]


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job end to end on embedded data: build a scene, train, classify",
        description="With the Buffalo sample data (../shared/data/buffalo or $S2DASK_SAMPLE_DATA) "
        "build the real scene with grid-to-raster, train on point_data.csv and classify the "
        "scene on an embedded LocalCluster; without it, do the same on a synthetic scene "
        "the project generates (deterministic by --seed).",
    )
    p.add_argument("--out", "-o", default="s2dask-out", metavar="DIR", help="output directory (default ./s2dask-out)")
    p.add_argument("--data", metavar="DIR", help="folder holding buffalo/ (default: $S2DASK_SAMPLE_DATA or ../shared/data)")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic scene even if sample data exists")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: a quick run)")
    p.add_argument("--chunks", type=int, default=None, metavar="N", help="chunk edge for the classification")
    p.add_argument("--workers", type=positive_int, metavar="N", help="workers (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo in DIR")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, data=args.data, synthetic=args.synthetic, seed=args.seed,
             epochs=args.epochs, chunks=args.chunks, workers=args.workers,
             overwrite=args.overwrite)
    return 0


# --------------------------------------------------------------------------- parser and entry point

_ADDERS = (_add_demo, _add_train, _add_evaluate, _add_sample, _add_grid_to_raster, _add_inspect, _add_classify)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other bad input.

    The line points to the help of the subcommand at fault and, for a mistyped option,
    subcommand or choice, suggests the closest one (``did you mean --probabilities?``).
    """

    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        prog, hint = _error_context(self, message)
        self.exit(2, f"{prog}: error: {message}{hint} (see '{prog} --help')\n")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _error_context(parser: argparse.ArgumentParser, message: str) -> tuple[str, str]:
    """The prog whose help applies and a ``: did you mean X?`` hint (or ``""``)."""
    import difflib
    import re

    prog, target = parser.prog, parser
    subs = _subcommands(parser)
    for token in getattr(parser, "_argv", []):
        if token in subs:
            prog, target = subs[token].prog, subs[token]
            break
    wrong, options = None, []
    if m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
        wrong, options = m.group(1), re.findall(r"'([^']*)'", m.group(2))
    elif m := re.search(r"unrecognized arguments: (.*)", message):
        flags = [t.split("=", 1)[0] for t in m.group(1).split() if t.startswith("-")]
        if flags:
            wrong = flags[0]
            options = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(wrong, options, n=1, cutoff=0.6) if wrong else []
    return prog, (f": did you mean {close[0]}?" if close else "")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="s2dask",
        description="Classify whole Sentinel-2 scenes with Keras models on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"s2dask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    add_subcommands(sub)
    model_commands.add_subcommands(sub)
    area_commands.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``s2dask`` command line; return the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except S2DaskError as exc:
        print(f"s2dask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"s2dask {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The ``s2dask`` program (console script and ``python -m s2dask.cli``): :func:`main`,
    then exit with its code.

    Everything a command made is frozen out of the garbage collector first: the
    interpreter's last collection would otherwise walk every object a job left (Dask,
    GDAL, pandas), 0.5-0.6 s after the outputs are committed and the result printed.
    Only here, never in :func:`main`: a process that goes on (a test, a notebook) keeps
    collecting as before.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
