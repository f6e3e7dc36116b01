"""Buffalo: smoothing's effect on the labelled pixels, then design -> label -> assess, with the CLI.

    S2DASK_SAMPLE_DATA=../shared/data python benchmarks/maps_buffalo.py [--epochs N] [--out DIR]

Runs, in ``DIR`` (default a temporary folder)::

    s2dask grid-to-raster grid_data.csv buffalo.tif --crs EPSG:32617
    s2dask train point_data.csv --out bundle --split pixel [--epochs N]
    s2dask classify buffalo.tif --model bundle --out plain --uncertainty entropy,margin
    s2dask classify buffalo.tif --model bundle --out smooth3 --smooth 3   (and smooth5 --smooth 5)
    s2dask suggest plain/buffalo --n 20 --min-distance 100 --out candidates.gpkg
    s2dask design plain/buffalo --n 3000 --min-per-class 300 --out design.gpkg
    (reference labels: the class of the labelled points in the same 10 m pixel; others left empty)
    s2dask assess plain/buffalo labelled.gpkg --label reference --out assessment.json

and prints the accuracy of each map on the unique labelled pixels of ``point_data.csv`` (all of
them, training pixels included, so the level is optimistic; the comparison between windows is
what it shows) and the assessment table. Writes ``results/maps_buffalo.json`` with ``--save``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

CRS = "EPSG:32617"


def labelled_pixels(points_csv: Path, map_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, labels)`` of the unique labelled pixels (majority label of their points)."""
    import pandas as pd

    from s2dask.maps.layers import open_map

    src, _ = open_map(map_dir)
    df = pd.read_csv(points_csv)
    rows, cols = src.rowcol(df["x"].to_numpy(), df["y"].to_numpy())
    keep = (rows >= 0) & (rows < src.shape[0]) & (cols >= 0) & (cols < src.shape[1])
    frame = pd.DataFrame({"r": rows[keep], "c": cols[keep], "label": df["Class_ID"].to_numpy()[keep]})
    major = frame.groupby(["r", "c"])["label"].agg(lambda s: s.value_counts().index[0]).reset_index()
    return major["r"].to_numpy(), major["c"].to_numpy(), major["label"].to_numpy()


def pixel_accuracy(map_dir: Path, pixels) -> float:
    """Share of the labelled pixels whose mapped class equals their label."""
    from s2dask.maps.layers import open_map

    src, _ = open_map(map_dir)
    rows, cols, labels = pixels
    classes = src.read(0, src.shape[0], 0, src.shape[1])  # a 170 x 210 map
    return float((classes[rows, cols] == labels).mean())


def label_design(design_gpkg: Path, pixels, out: Path, map_dir: Path) -> tuple[int, int]:
    """Fill the ``reference`` column of a design with the labelled pixels' classes; ``(labelled, all)``."""
    import geopandas as gpd

    from s2dask.maps.layers import open_map

    src, _ = open_map(map_dir)
    rows, cols, labels = pixels
    lookup = {(int(r), int(c)): int(v) for r, c, v in zip(rows, cols, labels)}
    frame = gpd.read_file(design_gpkg)
    r, c = src.rowcol(frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy())
    frame["reference"] = [str(lookup[(int(a), int(b))]) if (int(a), int(b)) in lookup else None
                          for a, b in zip(r, c)]
    frame.to_file(out, driver="GPKG", layer=out.stem)
    return int(frame["reference"].notna().sum()), len(frame)


def run(data: Path, work: Path, *, epochs: int | None, design_n: int = 3000, min_per_class: int = 300) -> dict:
    from s2dask.cli import main

    def cli(*args) -> None:
        code = main([str(a) for a in args])
        if code:
            raise SystemExit(f"s2dask {' '.join(map(str, args))} failed with exit code {code}")

    scene, bundle = work / "buffalo.tif", work / "bundle"
    cli("grid-to-raster", data / "grid_data.csv", scene, "--crs", CRS)
    cli("train", data / "point_data.csv", "--out", bundle, "--split", "pixel", "--quiet",
        *(["--epochs", epochs] if epochs else []))
    maps = {"plain": ["--uncertainty", "entropy,margin"], "smooth3": ["--smooth", "3"], "smooth5": ["--smooth", "5"]}
    for name, extra in maps.items():
        cli("classify", scene, "--model", bundle, "--out", work / name, "--quiet", "--workers", "1", *extra)
    plain = work / "plain" / "buffalo"
    pixels = labelled_pixels(data / "point_data.csv", plain)
    acc = {name: pixel_accuracy(work / name / "buffalo", pixels) for name in maps}
    cli("suggest", plain, "--n", 20, "--min-distance", 100, "--out", work / "candidates.gpkg")
    cli("design", plain, "--n", design_n, "--min-per-class", min_per_class, "--out", work / "design.gpkg")
    labelled, drawn = label_design(work / "design.gpkg", pixels, work / "labelled.gpkg", plain)
    cli("assess", plain, work / "labelled.gpkg", "--label", "reference", "--out", work / "assessment.json")
    report = json.loads((work / "assessment.json").read_text())
    return {"labelled_pixels": int(len(pixels[0])), "pixel_accuracy": acc,
            "design_points": drawn, "design_points_labelled": labelled,
            "overall_accuracy": report["overall_accuracy"], "overall_accuracy_ci95": report["overall_accuracy_ci95"],
            "classes": [{k: c[k] for k in ("name", "mapped_ha", "estimated_ha", "estimated_ha_ci95",
                                            "users_accuracy", "producers_accuracy")} for c in report["classes"]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: train's default)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/maps_buffalo.json")
    args = p.parse_args(argv)
    root = Path(os.environ.get("S2DASK_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    data = root / "buffalo"
    if not (data / "grid_data.csv").is_file():
        print(f"no Buffalo sample data under {root}: set S2DASK_SAMPLE_DATA", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(data, work, epochs=args.epochs)
    print(json.dumps(result, indent=2))
    if args.save:
        dst = Path(__file__).parent / "results" / "maps_buffalo.json"
        dst.write_text(json.dumps({"benchmark": "maps_buffalo", "command": " ".join(sys.argv), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
