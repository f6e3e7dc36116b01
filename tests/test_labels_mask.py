"""``s2dask sample`` with cloud masks: masked pixels are left out of the table and counted.

A band folder (40 x 40 px at 10 m, 3 bands) with a 20 m SCL file marking a cloud square, a
shadow square and an SCL "no data" corner; chunks of 16 px so the mask of every gather task is
computed at its own offset. Real GDAL files in tmp_path, Dask's threaded scheduler.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")

from rasterio.transform import from_origin  # noqa: E402
from shapely.geometry import Point, box  # noqa: E402

from s2dask.cli import main  # noqa: E402
from s2dask.training.labels import format_summary, sample  # noqa: E402

CRS = "EPSG:32617"
X0, Y0, RES, N = 600000.0, 5000000.0, 10.0, 40
BANDS = ["B02", "B03", "B04"]
CLOUD, SHADOW = (4, 12, 20, 32), (24, 32, 4, 16)  # 10 m rows r0:r1, cols c0:c1
SCL_NODATA = (36, 40, 36, 40)


def _write(path: Path, data: np.ndarray, res: float) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=CRS, transform=from_origin(X0, Y0, res, res), nodata=0) as dst:
        dst.write(data, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("masked")
    rows, cols = np.mgrid[0:N, 0:N]
    for k, band in enumerate(BANDS):
        _write(d / f"T17TNH_20230801T160000_{band}.tif", (rows * N + cols + 1 + 10000 * k).astype("uint16"), RES)
    scl = np.full((N // 2, N // 2), 4, dtype="uint8")
    for (r0, r1, c0, c1), value in ((CLOUD, 9), (SHADOW, 3), (SCL_NODATA, 0)):
        scl[r0 // 2:r1 // 2, c0 // 2:c1 // 2] = value
    _write(d / "T17TNH_20230801T160000_SCL_20m.tif", scl, 2 * RES)
    return d


def _rect(r0, r1, c0, c1):
    return box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES)


def _labels(path: Path) -> Path:
    """Class 1 half over the cloud, class 2 half over the shadow, class 3: a clear point and one on SCL 0."""
    geoms = [_rect(2, 10, 16, 28), _rect(26, 30, 0, 10),
             Point(X0 + 20.5 * RES, Y0 - 20.5 * RES), Point(X0 + 37.5 * RES, Y0 - 37.5 * RES)]
    gpd.GeoDataFrame({"Class_ID": [1, 2, 3, 3]}, geometry=geoms, crs=CRS).to_file(path)
    return path


def _cells(df) -> set[tuple[int, int]]:
    rows = np.floor((Y0 - df["y"].to_numpy()) / RES).astype(int)
    cols = np.floor((df["x"].to_numpy() - X0) / RES).astype(int)
    return set(zip(rows.tolist(), cols.tolist()))


def _square(r0, r1, c0, c1) -> set[tuple[int, int]]:
    return {(r, c) for r in range(r0, r1) for c in range(c0, c1)}


def test_masked_pixels_left_out_and_counted(folder, tmp_path):
    import pandas as pd

    labels = _labels(tmp_path / "labels.gpkg")
    res = sample(folder, labels, out=tmp_path / "s.parquet", chunks=16, client="threads")  # default: the SCL
    printed = format_summary(res.summary)
    df = pd.read_parquet(tmp_path / "s.parquet")
    everything = _square(2, 10, 16, 28) | _square(26, 30, 0, 10) | {(20, 20), (37, 37)}
    cloud = _square(2, 10, 16, 28) & _square(*CLOUD)
    shadow = _square(26, 30, 0, 10) & _square(*SHADOW)
    assert (len(cloud), len(shadow)) == (48, 24)
    assert _cells(df) == everything - cloud - shadow - {(37, 37)} and len(df) == 96 + 40 + 2 - 48 - 24 - 1
    rows = np.floor((Y0 - df["y"].to_numpy()) / RES).astype(int)  # the values are those of the pixels kept
    cols = np.floor((df["x"].to_numpy() - X0) / RES).astype(int)
    assert np.array_equal(df["B04"].to_numpy(), rows * N + cols + 1 + 20000)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mask"] == {"mode": "scl", "scl_classes": [0, 1, 3, 8, 9, 10],
                               "scl_class_names": summary["mask"]["scl_class_names"]}
    assert summary["masked_pixels_left_out"] == 72 and summary["nodata_pixels_left_out"] == 1
    assert summary["masked_by_reason"]["cloud"] == 48 and summary["masked_by_reason"]["shadow"] == 24
    assert sum(summary["masked_by_reason"].values()) == 72
    by = {c["value"]: c for c in summary["classes"]}
    assert (by[1]["pixels"], by[1]["masked_pixels_left_out"], by[1]["masked_by_reason"]["cloud"]) == (48, 48, 48)
    assert (by[2]["pixels"], by[2]["masked_pixels_left_out"], by[2]["masked_by_reason"]["shadow"]) == (16, 24, 24)
    assert (by[3]["pixels"], by[3]["masked_pixels_left_out"], by[3]["nodata_pixels_left_out"]) == (1, 0, 1)
    assert "masked pixels left out: 72 (cloud 48, shadow 24); mask scl, SCL classes 0,1,3,8,9,10" in printed
    assert (summary["reads"]["chunks_read"], summary["reads"]["chunks"]) == (4, 9)  # the 4 touched of 3 x 3

    # --mask none keeps them (SCL 0 is band-valid: kept too), and reads exactly as without a mask
    res = sample(folder, labels, out=tmp_path / "none.parquet", mask="none", chunks=16, client="threads")
    kept = pd.read_parquet(res.table)
    assert _cells(kept) == everything and len(kept) == 138
    assert res.summary["masked_pixels_left_out"] == 0 and res.summary["mask"] == {"mode": "none"}
    assert res.summary["nodata_pixels_left_out"] == 0 and "masked pixels" not in format_summary(res.summary)
    assert format_summary(res.summary).splitlines()[1].split()[-1] == "dropped"  # no masked column


@pytest.mark.parametrize("extra, want", [
    (["--mask-classes", "3,12"], "mask class '12' is not an SCL class"),
    (["--mask", "none", "--mask-classes", "3"], "--mask-classes applies to the SCL mask"),
])
def test_bad_mask_options_one_line_exit_2_nothing_written(folder, tmp_path, capsys, extra, want):
    labels = _labels(tmp_path / "labels.gpkg")
    out = tmp_path / "out"
    out.mkdir()
    code = main(["sample", str(folder), str(labels), "--out", str(out / "s.parquet"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and want in err, err
    assert list(out.iterdir()) == []
