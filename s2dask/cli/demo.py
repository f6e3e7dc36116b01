"""``s2dask demo``: the main job end to end on data the project has or makes itself.

With the Buffalo sample (``$S2DASK_SAMPLE_DATA/buffalo`` or ``../shared/data/buffalo``):
grid table -> COG scene (``grid-to-raster``), ``point_data.csv`` -> model bundle
(``train``), scene + model -> class map (``classify`` on an embedded LocalCluster).
Without it, a synthetic Sentinel-2-like scene and labelled points are generated first.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import OutputExistsError, S2DaskError

__all__ = ["find_sample_data", "run_demo"]

BUFFALO_CRS = "EPSG:32617"
#: the demo trains for speed, not for the last 0.5% (``s2dask train`` keeps the tutorial's
#: batches of 64 and patience 10): 4x larger batches and early stopping after 5 stalled
#: epochs reach the same test accuracy on the Buffalo table in about a third of the time
DEMO_TRAINING = {"batch_size": 256, "early_stopping": 5}


def find_sample_data(data: str | os.PathLike | None = None) -> Path | None:
    """The folder holding ``buffalo/`` (grid and point tables), or ``None``.

    Looks at ``data``, then ``$S2DASK_SAMPLE_DATA``, then ``../shared/data`` from the
    current directory and from the source tree.
    """
    candidates = []
    if data:
        candidates.append(Path(data))
    if os.environ.get("S2DASK_SAMPLE_DATA"):
        candidates.append(Path(os.environ["S2DASK_SAMPLE_DATA"]))
    candidates.append(Path.cwd().parent / "shared" / "data")
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        for folder in (c / "buffalo", c):
            if (folder / "grid_data.csv").is_file() and (folder / "point_data.csv").is_file():
                return folder
    return None


def run_demo(out: str | os.PathLike = "s2dask-out", *, data: str | os.PathLike | None = None,
             synthetic: bool = False, seed: int = 0, epochs: int | None = None,
             chunks: int | None = None, workers: int | None = None, overwrite: bool = False,
             verbose: bool = True) -> dict:
    """Build a scene, train a model and classify the scene; print what came out.

    Returns
    -------
    dict
        ``{"scene", "model", "metrics", "job"}``: paths, the test metrics and the job record.

    Raises
    ------
    OutputExistsError
        If ``out`` holds a previous demo and ``overwrite`` is false.
    """
    from ..job.run import classify
    from ..training.train import train

    say = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"demo output {out} exists and is not empty: pass --overwrite "
                                    "or choose another --out")
        shutil.rmtree(out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True)
    t0 = time.perf_counter()
    folder = None if synthetic else find_sample_data(data)
    if folder is not None:
        from ..scene.grid import grid_to_raster

        say(f"[1/3] Buffalo sample data found in {folder}: writing the scene with grid-to-raster")
        scene = grid_to_raster(folder / "grid_data.csv", inputs / "buffalo.tif", crs=BUFFALO_CRS)
        samples = folder / "point_data.csv"
        split, n_epochs, chunk = "pixel", epochs or 40, chunks or 64
    else:
        from ..scene.synthetic import make_samples, make_scene

        why = "--synthetic given" if synthetic else (
            "no Buffalo sample data found (set S2DASK_SAMPLE_DATA to the folder holding buffalo/)")
        say(f"[1/3] {why}: generating a synthetic 1024 x 1024 Sentinel-2-like scene (seed {seed})")
        scene = make_scene(inputs / "synthetic.tif", size=1024, seed=seed, nodata_border=8)
        samples = make_samples(inputs / "points.csv", scene_size=1024, n_points=4000, seed=seed)
        split, n_epochs, chunk = "block", epochs or 20, chunks or 512
    say(f"[2/3] training the 4 x 200 ReLU MLP on {samples} (split {split}, seed {seed})")
    model_dir = out / "model"
    metrics = train(samples, model_dir, split=split, seed=seed, epochs=n_epochs,
                    verbose=1 if verbose else 0, **DEMO_TRAINING)
    say(f"[3/3] classifying {scene} on an embedded Dask LocalCluster")
    results = classify(scene, model_dir, out / "classified", chunks=chunk, workers=workers,
                       progress=None if verbose else False)  # a bar on a terminal only
    job = results[0]
    if job.status != "complete":  # pragma: no cover - single scenes raise instead
        raise S2DaskError(job.error or "classification failed")
    rec = job.record
    st = rec["statistics"]
    say("")
    meaning = {"pixel": "no 10 m pixel on both sides of the split",
               "block": "whole spatial blocks held out"}[split]
    say(f"test overall accuracy {metrics['overall_accuracy']:.3f}, kappa {metrics['kappa']:.3f} "
        f"({split} split: {meaning}; see {model_dir}/metrics.json)")
    say("class areas:")
    for c in st["classes"]:
        ha = f"{c['hectares']:10.1f} ha" if c["hectares"] is not None else ""
        say(f"  {c['value']:>3}  {c['name']:<24} {c['pixels']:>10} px {ha} {100 * c['fraction']:6.2f}%")
    say(f"  nodata {st['nodata_pixels']} px")
    tp = rec["throughput_mpx_s"]
    say(f"throughput: {st['pixels'] / 1e6:.2f} Mpx end to end at {tp['end_to_end']:.2f} Mpx/s "
        f"(predict {rec['timings_s']['predict']:.1f} s, write {rec['timings_s']['write']:.1f} s) "
        f"on {rec['cluster']['workers']} workers")
    say(f"outputs: {job.out}/ (classes.zarr, classes.tif, quicklook.png, job.json); "
        f"model: {model_dir}/ (metrics.json, training.png, confusion.png)")
    say(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return {"scene": str(scene), "model": str(model_dir), "metrics": metrics, "job": rec}
