"""``s2dask sample``: labels + scene -> training table; group splits and folds.

Real GDAL files in tmp_path, a real LocalCluster (``cluster_client``) where distribution
matters; the Buffalo parts skip without the sample data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")
pd = pytest.importorskip("pandas")
shapely = pytest.importorskip("shapely")

from conftest import sample_data_dir  # noqa: E402
from rasterio.features import rasterize  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box  # noqa: E402

from s2dask.cli import main  # noqa: E402
from s2dask.errors import OutputExistsError, ParameterError, SamplesError  # noqa: E402
from s2dask.training.labels import plan_reads, sample  # noqa: E402
from s2dask.training.samples import Samples, fold_indices, read_samples, split_samples  # noqa: E402

CRS = "EPSG:32617"
X0, Y0, RES = 600000.0, 5000000.0, 10.0
H, W = 30, 40
BANDS3 = ["B02", "B03", "B04"]
TRANSFORM = from_origin(X0, Y0, RES, RES)


def _xy(col: float, row: float) -> tuple[float, float]:
    """Map coordinates of a (fractional) pixel position of the small scene."""
    return X0 + col * RES, Y0 - row * RES


def _poly(cols_rows) -> Polygon:
    return Polygon([_xy(c, r) for c, r in cols_rows])


def _rect(c0, r0, c1, r1) -> Polygon:
    return box(*_xy(c0, r1), *_xy(c1, r0))


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """40 x 30 px, 3 bands; band k = row * 40 + col + 1 + 10000 k; a 5 x 5 nodata corner."""
    d = tmp_path_factory.mktemp("small")
    rows, cols = np.mgrid[0:H, 0:W]
    data = np.stack([(rows * W + cols + 1 + 10000 * k) for k in range(3)]).astype("uint16")
    data[:, :5, :5] = 0
    path = d / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint16",
                       crs=CRS, transform=TRANSFORM, nodata=0) as dst:
        dst.write(data)
        for i, b in enumerate(BANDS3, 1):
            dst.set_band_description(i, b)
    return path, data


def _polygons() -> gpd.GeoDataFrame:
    outer = [(2.3, 15.2), (14.6, 15.2), (14.6, 27.7), (2.3, 27.7)]
    hole = [(5.5, 18.5), (10.5, 18.5), (10.5, 24.5), (5.5, 24.5)]
    geoms = [
        _rect(10, 5, 16, 11),  # aligned square: exactly 6 x 6 pixels
        _rect(20.6, 3.3, 24.4, 7.6),  # square off the pixel grid
        Polygon([_xy(*p) for p in outer], [[_xy(*p) for p in hole]]),  # polygon with a hole
        MultiPolygon([_poly([(25, 20), (33, 20), (25, 28)]), _poly([(36, 12), (39.5, 12), (39.5, 16)])]),
    ]
    return gpd.GeoDataFrame({"Class_ID": [1, 2, 3, 4], "name": ["a", "b", "c", "d"]}, geometry=geoms, crs=CRS)


def _pixels_of(df: pd.DataFrame) -> set[tuple[int, int]]:
    rows = np.floor((Y0 - df["y"].to_numpy()) / RES).astype(int)
    cols = np.floor((df["x"].to_numpy() - X0) / RES).astype(int)
    return set(zip(rows.tolist(), cols.tolist()))


def _expected(geom, data, *, all_touched=False) -> set[tuple[int, int]]:
    mask = rasterize([(geom, 1)], out_shape=(H, W), transform=TRANSFORM, all_touched=all_touched)
    rr, cc = np.nonzero(mask & (data[0] != 0))
    return set(zip(rr.tolist(), cc.tolist()))


def _run(scene, labels, out, **kw):
    kw.setdefault("client", "threads")
    return sample(scene, labels, out=out, **kw)


# --------------------------------------------------------------------------- polygons, options


@pytest.mark.parametrize("all_touched", [False, True])
def test_polygons_give_exactly_the_rasterized_pixels(small_scene, tmp_path, all_touched):
    scene, data = small_scene
    labels = _polygons()
    labels.to_file(tmp_path / "poly.gpkg", engine="pyogrio")
    res = _run(scene, tmp_path / "poly.gpkg", tmp_path / "s.parquet", name_column="name",
               all_touched=all_touched)
    df = pd.read_parquet(res.table)
    assert list(df.columns) == ["x", "y", *BANDS3, "Class_ID", "name", "feature_id", "scene_id"]
    assert df["B02"].dtype == np.uint16 and df["feature_id"].dtype == np.int64
    fids = sorted(df["feature_id"].unique())
    assert fids == [1, 2, 3, 4]  # GeoPackage fids
    for fid, geom in zip(fids, labels.geometry):
        mine = df[df["feature_id"] == fid]
        assert _pixels_of(mine) == _expected(geom, data, all_touched=all_touched), fid
        r = np.floor((Y0 - mine["y"].to_numpy()) / RES).astype(int)
        c = np.floor((mine["x"].to_numpy() - X0) / RES).astype(int)
        for k, b in enumerate(BANDS3):
            np.testing.assert_array_equal(mine[b].to_numpy(), data[k, r, c])
    assert len(df[df["feature_id"] == 1]) == 36
    hole_rows = df[df["feature_id"] == 3]
    assert not _pixels_of(hole_rows) & {(21, 8)}  # the hole's centre pixel is out
    summary = json.loads(res.summary_path.read_text())
    assert summary["label_crs"] == summary["scene_crs"] == CRS
    assert [c["features"] for c in summary["classes"]] == [1, 1, 1, 1]
    assert summary["rows"] == len(df)


def test_all_touched_per_feature_and_buffer_change_counts(small_scene, tmp_path):
    scene, data = small_scene
    labels = _polygons()
    labels.to_file(tmp_path / "poly.geojson", engine="pyogrio")
    counts = {}
    for key, kw in {"plain": {}, "touched": {"all_touched": True}, "shrunk": {"buffer": -10.0},
                    "per3": {"per_feature": 3, "seed": 1}, "per3b": {"per_feature": 3, "seed": 2}}.items():
        res = _run(scene, tmp_path / "poly.geojson", tmp_path / f"{key}.parquet", **kw)
        counts[key] = pd.read_parquet(res.table)
    by = {k: v.groupby("feature_id").size() for k, v in counts.items()}
    assert (by["touched"] >= by["plain"]).all() and (by["touched"].iloc[1:] > by["plain"].iloc[1:]).all()
    assert by["touched"][0] == by["plain"][0] == 36  # edges on pixel edges touch no more pixels
    assert _pixels_of(counts["plain"]) < _pixels_of(counts["touched"])
    # a -10 m buffer takes one pixel ring off the aligned 6 x 6 square: 4 x 4 left
    assert by["shrunk"][0] == 16 and (by["shrunk"] < by["plain"].loc[by["shrunk"].index]).all()
    for fid, geom in enumerate(labels.geometry):
        if fid in by["shrunk"].index:
            mine = counts["shrunk"][counts["shrunk"]["feature_id"] == fid]
            assert _pixels_of(mine) == _expected(geom.buffer(-10.0), data)
    assert (by["per3"] == 3).all()
    assert _pixels_of(counts["per3"]) <= _pixels_of(counts["plain"])
    assert _pixels_of(counts["per3"]) != _pixels_of(counts["per3b"])  # the seed draws
    again = _run(scene, tmp_path / "poly.geojson", tmp_path / "again.parquet", per_feature=3, seed=1)
    pd.testing.assert_frame_equal(pd.read_parquet(again.table), counts["per3"])
    summary = json.loads((tmp_path / "per3.json").read_text())
    dropped = sum(c["pixels_dropped_by_per_feature"] for c in summary["classes"])
    assert dropped == len(counts["plain"]) - len(counts["per3"])


def test_points_csv_nodata_and_shared_pixels(small_scene, tmp_path):
    scene, data = small_scene
    pts = pd.DataFrame({
        "x": [_xy(7.2, 0)[0], _xy(7.8, 0)[0], _xy(2, 0)[0], _xy(100, 0)[0], _xy(30.5, 0)[0]],
        "y": [_xy(0, 9.5)[1], _xy(0, 9.1)[1], _xy(0, 2)[1], _xy(0, 3)[1], _xy(0, 20.5)[1]],
        "Class_ID": [1, 2, 1, 1, 3],
    })
    pts.to_csv(tmp_path / "pts.csv", index=False)
    res = _run(scene, tmp_path / "pts.csv", tmp_path / "s.csv", labels_crs=CRS)
    df = pd.read_csv(res.table)
    # two points in pixel (9, 7) with different labels: one row per feature
    assert sorted(df["feature_id"]) == [0, 1, 4]
    assert df.loc[df["feature_id"] == 0, "B02"].item() == 9 * W + 7 + 1
    s = res.summary
    assert s["shared_pixels"] == {"pixels": 1, "rows": 2, "with_different_labels": 1}
    assert s["nodata_pixels_left_out"] == 1 and s["labels"]["features_outside_scene"] == 1
    assert {c["value"]: c["nodata_pixels_left_out"] for c in s["classes"]} == {1: 1, 2: 0, 3: 0}
    assert s["label_crs"] == CRS


def test_invalid_polygon_is_repaired_and_reported(small_scene, tmp_path):
    scene, data = small_scene
    bowtie = _poly([(10, 12), (20, 22), (20, 12), (10, 22)])
    ok = _rect(25, 2, 28, 5)
    gpd.GeoDataFrame({"Class_ID": [1, 2]}, geometry=[bowtie, ok], crs=CRS).to_file(
        tmp_path / "l.gpkg", engine="pyogrio")
    res = _run(scene, tmp_path / "l.gpkg", tmp_path / "s.parquet")
    assert res.summary["labels"]["invalid_polygons_repaired"] == 1
    assert res.summary["labels"]["repaired_ids"] == [1]
    df = pd.read_parquet(res.table)
    assert _pixels_of(df[df["feature_id"] == 1]) == _expected(shapely.make_valid(bowtie), data)


# --------------------------------------------------------------------------- bad input


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["sample", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def _nothing_written(folder: Path, keep=()) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.name not in keep) == [], list(folder.iterdir())


@pytest.mark.parametrize("case", ["unreadable", "no_crs", "outside", "no_column", "empty_column",
                                  "line", "crs_conflict"])
def test_bad_labels_one_line_exit_2_nothing_written(small_scene, tmp_path, capsys, case):
    scene, _ = small_scene
    lab = tmp_path / "in"
    lab.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    square = _rect(10, 5, 16, 11)
    extra: list[str] = []
    if case == "unreadable":
        path = lab / "l.gpkg"
        path.write_bytes(b"\x00garbage" * 100)
        want = "cannot read label file"
    elif case == "no_crs":
        path = lab / "l.shp"
        gpd.GeoDataFrame({"Class_ID": [1]}, geometry=[square], crs=None).to_file(path, engine="pyogrio")
        want = "declares no CRS"
    elif case == "outside":
        path = lab / "l.gpkg"
        gpd.GeoDataFrame({"Class_ID": [1]}, geometry=[Point(700000, 5000000)], crs=CRS).to_file(path)
        want = "do not overlap"
    elif case in ("no_column", "empty_column"):
        path = lab / "l.gpkg"
        gpd.GeoDataFrame({"Class_ID": [None, None] if case == "empty_column" else [1, 2]},
                         geometry=[square, square], crs=CRS).to_file(path)
        extra = ["--label", "landuse"] if case == "no_column" else []
        want = "no label column 'landuse'" if case == "no_column" else "is empty"
    elif case == "line":
        path = lab / "l.gpkg"
        gpd.GeoDataFrame({"Class_ID": [1, 2]}, geometry=[square, LineString([_xy(1, 1), _xy(9, 9)])],
                         crs=CRS).to_file(path)
        want = "geometry type LineString (ids 2)"
    else:
        path = lab / "l.gpkg"
        gpd.GeoDataFrame({"Class_ID": [1]}, geometry=[square], crs=CRS).to_file(path)
        extra = ["--labels-crs", "EPSG:4326"]
        want = "declares EPSG:32617 but --labels-crs says EPSG:4326"
    code, err = _cli(capsys, scene, path, "--out", out / "s.parquet", *extra)
    assert code == 2
    assert len(err.splitlines()) == 1 and want in err, err
    _nothing_written(out)
    if case == "outside":  # both extents, one CRS
        assert "in EPSG:32617 the labels span x 700000.0..700000.0" in err
        assert "scene x 600000.0..600400.0, y 4999700.0..5000000.0" in err


def test_csv_without_crs_and_all_nodata_and_existing_output(small_scene, tmp_path, capsys):
    scene, _ = small_scene
    pd.DataFrame({"x": [_xy(1.5, 0)[0]], "y": [_xy(0, 1.5)[1]], "Class_ID": [1]}).to_csv(
        tmp_path / "p.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    code, err = _cli(capsys, scene, tmp_path / "p.csv", "--out", out / "s.csv")
    assert code == 2 and "carries no CRS: give the CRS of its x,y with --labels-crs" in err
    with pytest.raises(SamplesError, match="every labelled pixel .1. is nodata"):
        _run(scene, tmp_path / "p.csv", out / "s.csv", labels_crs=CRS)
    _nothing_written(out)
    (out / "s.parquet").write_bytes(b"old")
    code, err = _cli(capsys, scene, tmp_path / "p.csv", "--out", out / "s.parquet", "--labels-crs", CRS)
    assert code == 2 and "already exists: pass --overwrite" in err
    assert (out / "s.parquet").read_bytes() == b"old" and sorted(p.name for p in out.iterdir()) == ["s.parquet"]
    with pytest.raises(OutputExistsError):
        _run(scene, tmp_path / "p.csv", out / "s.parquet", labels_crs=CRS)
    with pytest.raises(ParameterError, match="unsupported extension"):
        _run(scene, tmp_path / "p.csv", out / "s.xlsx", labels_crs=CRS)


# --------------------------------------------------------------------------- scale: a sparse tile


def test_sparse_full_tile_reads_only_touched_chunks(tmp_path, cluster_client):
    from dask.base import collections_to_expr

    n, bands = 10980, ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    path = tmp_path / "tile.tif"
    windows = [(100, 100), (5000, 7000), (10800, 10800), (2100, 9300)]  # (row, col), 100 x 100 each
    patch = np.arange(1, 101, dtype="uint16")[None, :, None] + 100 * np.arange(1, 101, dtype="uint16")[None, None, :]
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=10, dtype="uint16", crs=CRS,
                       transform=TRANSFORM, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                       compress="DEFLATE", SPARSE_OK=True) as dst:
        for r, c in windows:
            dst.write(patch + np.arange(10, dtype="uint16")[:, None, None] * 10000 + r // 100,
                      window=rasterio.windows.Window(c, r, 100, 100))
        for i, b in enumerate(bands, 1):
            dst.set_band_description(i, b)
    assert path.stat().st_size < 5_000_000  # sparse: nothing but the windows written
    geoms = [_rect(c + 10, r + 10, c + 30, r + 25) for r, c in windows]
    geoms.append(Point(_xy(windows[1][1] + 50.5, windows[1][0] + 60.5)))
    gpd.GeoDataFrame({"Class_ID": [1, 2, 3, 4, 5]}, geometry=geoms, crs=CRS).to_file(tmp_path / "l.gpkg")

    from s2dask.scene import open_scene
    from s2dask.training.vector import feature_pixels, labels_in_scene, read_labels

    scene = open_scene(path, chunks=1024)
    frame, report = read_labels(tmp_path / "l.gpkg")
    flat = np.unique(np.concatenate(feature_pixels(labels_in_scene(frame, report, scene, None), scene, False)))
    plan = plan_reads(scene, flat)
    graph = collections_to_expr(plan.tasks, optimize_graph=True).__dask_graph__()
    reads = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("open-scene-")]
    assert plan.chunks == 121 and len(plan.tasks) == 4
    assert sorted(k[2:] for k in reads) == [(0, 0), (2, 9), (4, 6), (10, 10)]

    res = sample(scene, tmp_path / "l.gpkg", out=tmp_path / "s.parquet", client=cluster_client)
    df = pd.read_parquet(res.table)
    assert res.summary["reads"] == {"chunks_read": 4, "chunks": 121, "unique_pixels": len(flat)}
    assert len(df) == 4 * 20 * 15 + 1
    rows = np.floor((Y0 - df["y"].to_numpy()) / RES).astype(int)
    cols = np.floor((df["x"].to_numpy() - X0) / RES).astype(int)
    for k, b in enumerate(bands):
        win = np.array([[wr, wc] for wr, wc in windows])
        which = np.argmin(np.abs(win[None, :, 0] - rows[:, None]) + np.abs(win[None, :, 1] - cols[:, None]), axis=1)
        r0, c0 = win[which, 0], win[which, 1]
        want = (rows - r0 + 1) + 100 * (cols - c0 + 1) + k * 10000 + r0 // 100
        np.testing.assert_array_equal(df[b].to_numpy(), want.astype("uint16"))


# --------------------------------------------------------------------------- Buffalo acceptance


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory):
    folder = sample_data_dir()
    if folder is None:
        pytest.skip("Buffalo sample data not found: set S2DASK_SAMPLE_DATA to the folder holding buffalo/")
    from s2dask.scene import grid_to_raster

    d = tmp_path_factory.mktemp("buffalo")
    scene = grid_to_raster(folder / "grid_data.csv", d / "scene.tif", crs="EPSG:32617")
    pts = pd.read_csv(folder / "point_data.csv")
    frame = gpd.GeoDataFrame(pts[["Class_ID", "Description"]], geometry=gpd.points_from_xy(pts.x, pts.y),
                             crs="EPSG:32617")
    frame.to_file(d / "points.gpkg", engine="pyogrio")
    frame.to_crs("EPSG:4326").to_file(d / "points.geojson", engine="pyogrio")
    return d, scene, pts


@pytest.mark.parametrize("name, first_fid, crs", [("points.gpkg", 1, "EPSG:32617"),
                                                  ("points.geojson", 0, "EPSG:4326")])
def test_buffalo_points_give_their_csv_bands(buffalo, cluster_client, tmp_path, name, first_fid, crs):
    d, scene, pts = buffalo
    res = sample(scene, d / name, out=tmp_path / "s.parquet", name_column="Description",
                 client=cluster_client)
    df = pd.read_parquet(res.table).sort_values("feature_id", kind="stable")
    assert len(df) == len(pts) and res.summary["label_crs"] == crs
    np.testing.assert_array_equal(df["feature_id"].to_numpy(), np.arange(len(pts)) + first_fid)
    for csv_band, band in zip(["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"],
                              ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]):
        np.testing.assert_array_equal(df[band].to_numpy(), pts[csv_band].to_numpy())
    assert np.all(np.abs(df["x"].to_numpy() - pts["x"].to_numpy()) <= 5)
    assert np.all(np.abs(df["y"].to_numpy() - pts["y"].to_numpy()) <= 5)
    np.testing.assert_array_equal(df["Class_ID"].to_numpy(), pts["Class_ID"].to_numpy())
    assert res.summary["shared_pixels"]["with_different_labels"] == 0
    assert res.summary["shared_pixels"]["pixels"] > 0  # ~16 points per pixel: one row each


# --------------------------------------------------------------------------- sample -> train --split group


def test_sample_then_train_group_split_end_to_end(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from s2dask.scene.synthetic import class_field, make_scene

    scene = make_scene(tmp_path / "scene.tif", size=(192, 192), seed=1, cog=False)
    rng = np.random.default_rng(0)
    origin_x, origin_y = 600000.0, 4800000.0
    geoms, values = [], []
    for _ in range(60):
        r, c = rng.integers(4, 186, size=2)
        geoms.append(box(origin_x + (c - 2) * 10, origin_y - (r + 2) * 10, origin_x + (c + 2) * 10,
                         origin_y - (r - 2) * 10))
        values.append(int(class_field(np.array([r]), np.array([c]), seed=1)[0]) + 1)
    gpd.GeoDataFrame({"landcover": values, "cls": [f"c{v}" for v in values]}, geometry=geoms,
                     crs=CRS).to_crs("EPSG:4326").to_file(tmp_path / "l.fgb", engine="pyogrio")
    code = main(["sample", str(scene), str(tmp_path / "l.fgb"), "--out", str(tmp_path / "s.parquet"),
                 "--label", "landcover", "--name-column", "cls", "--buffer", "-5"])
    out = capsys.readouterr().out
    assert code == 0 and "sampled" in out and "wrote" in out
    data = read_samples(tmp_path / "s.parquet")  # no options: the table's contract names the columns
    assert data.label == "landcover" and data.group_column == "feature_id"
    code = main(["train", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "model"), "--split", "group",
                 "--epochs", "2", "--units", "8,8", "--dropout", "0,0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    split = metrics["split"]
    assert split["method"] == "group" and split["group_column"] == "feature_id"
    assert set(split["groups_per_side"]) == {"train", "val", "test"}
    assert sum(sum(v.values()) for v in split["groups_per_side"].values()) >= 60 - 1


# --------------------------------------------------------------------------- group split, folds


def _grouped(n_groups=30, per=8, classes=3, seed=0) -> Samples:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per)
    y = (np.arange(n_groups) % classes + 1)[groups]
    X = rng.normal(size=(len(y), 2)).astype("float32")
    cls = [{"value": v, "name": f"c{v}", "colour": None} for v in range(1, classes + 1)]
    return Samples(X, y, None, ["B02", "B03"], cls, groups=groups, group_column="feature_id")


def test_group_split_keeps_groups_whole_and_warns():
    s = _grouped()
    sp = split_samples(s, method="group", seed=3)
    sides = [set(s.groups[p]) for p in (sp.train, sp.val, sp.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(map(len, sides)) == 30 and sp.info["warnings"] == []
    per = sp.info["groups_per_side"]
    assert all(per["test"][str(v)] >= 1 for v in (1, 2, 3))
    assert sum(per[side]["1"] for side in per) == 10
    # class 3 in only two groups: a warning
    y = s.y.copy()
    y[np.isin(s.groups, [2, 5, 8, 11, 14, 17, 20, 23])] = 1
    few = Samples(s.X, y, None, s.bands, s.classes, groups=s.groups, group_column="feature_id")
    sp2 = split_samples(few, method="group", seed=0)
    assert any("class 3 (c3) falls in only 2 group(s)" in w for w in sp2.info["warnings"])
    assert "Warning: class 3" in sp2.description
    with pytest.raises(SamplesError, match="needs a group column 'feature_id'"):
        split_samples(Samples(s.X, s.y, None, s.bands, s.classes), method="group")


@pytest.mark.parametrize("method", ["group", "random"])
def test_fold_indices_disjoint_cover_grouped_stratified(method):
    s = _grouped(n_groups=31)
    folds = fold_indices(s, method=method, k=5, seed=1)
    allrows = np.concatenate(folds.test)
    assert len(folds) == 5 and np.array_equal(np.sort(allrows), np.arange(len(s)))
    if method == "group":
        owner = {g: i for i, t in enumerate(folds.test) for g in np.unique(s.groups[t])}
        assert len(owner) == 31  # no group in two folds
        for i, t in enumerate(folds.test):
            assert set(np.unique(s.groups[t])) == {g for g, f in owner.items() if f == i}
    for f in folds.info["folds"]:
        assert all(n >= 8 for n in f["class_counts"].values())  # every class in every fold
    tr, va = folds.train_val(0, val_fraction=0.2, seed=0)
    assert not set(tr) & set(va) and not set(tr) & set(folds.test[0])
    assert len(tr) + len(va) + len(folds.test[0]) == len(s)
    few = fold_indices(_grouped(n_groups=9), method="group", k=5)
    assert any("is in only 3 of the 5 test folds" in w for w in few.info["warnings"])
    with pytest.raises(SamplesError, match="fewer than the 5 folds"):
        fold_indices(_grouped(n_groups=4), method="group", k=5)
