"""Olofsson et al. (2014) estimators, `design` and `assess` on real rasters and point files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _maps import CRS, write_class_tif, write_job_json

from s2dask.errors import OutputExistsError, ParameterError, SamplesError
from s2dask.maps.accuracy import allocate, assess, design, estimate

NAMES = ["Deforestation", "Forest gain", "Stable forest", "Stable non-forest"]
# Olofsson et al. (2014), section 5 (Tables 8-10): sample counts (rows = map) and mapped pixels
COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
MAPPED = np.array([200_000, 150_000, 3_200_000, 6_450_000])
# published estimates: (value, 95% half-width)
USERS = [(0.88, 0.07), (0.73, 0.10), (0.93, 0.04), (0.96, 0.02)]
PRODUCERS = [(0.75, 0.21), (0.85, 0.23), (0.93, 0.03), (0.96, 0.01)]
AREA_HA = [(21_158, 6_158), (11_686, 3_756), (285_770, 15_510), (581_386, 16_282)]
OVERALL = (0.95, 0.02)
PROPORTIONS = [[0.0176, 0, 0.0013, 0.0011], [0, 0.0110, 0.0016, 0.0024],
               [0.0019, 0, 0.2967, 0.0213], [0.0040, 0.0020, 0.0179, 0.6212]]


def _olofsson_map(tmp_path, *, scale=40, seed=0):
    """A class raster whose pixel counts are the paper's mapped counts / 50000 * scale, with
    pixels of 1000 m x 1125 m so that its area is the paper's 900,000 ha; and points on pixels
    of each mapped class carrying the paper's reference labels."""
    import geopandas as gpd

    per_class = MAPPED // 50_000 * scale                  # 160, 120, 2560, 5160 = 8000 pixels
    flat = np.repeat(np.arange(4, dtype="uint8"), per_class)
    rng = np.random.default_rng(seed)
    rng.shuffle(flat)
    classes = flat.reshape(80, 100)
    area_m2 = 9e9 / classes.size                          # 900,000 ha over 8000 pixels
    path = write_class_tif(tmp_path / "change.tif", classes, names=dict(enumerate(NAMES)),
                           res_x=1000.0, res_y=area_m2 / 1000.0)
    rows, cols, labels = [], [], []
    for i in range(4):
        r, c = np.nonzero(classes == i)
        pick = rng.choice(len(r), size=COUNTS[i].sum(), replace=False)
        rows += list(r[pick])
        cols += list(c[pick])
        labels += [NAMES[j] for j in range(4) for _ in range(COUNTS[i, j])]
    rows, cols = np.array(rows), np.array(cols)
    xs = 677770.0 + (cols + 0.5) * 1000.0
    ys = 4764070.0 - (rows + 0.5) * (area_m2 / 1000.0)
    points = gpd.GeoDataFrame({"reference": labels}, geometry=gpd.points_from_xy(xs, ys), crs=CRS)
    return path, points


def _check_published(r):
    for i in range(4):
        assert r.users[i] == pytest.approx(USERS[i][0], abs=0.005)
        assert r.users_ci[i] == pytest.approx(USERS[i][1], abs=0.005)
        assert r.producers[i] == pytest.approx(PRODUCERS[i][0], abs=0.005)
        assert r.area_ha[i] == pytest.approx(AREA_HA[i][0], abs=1)
        assert r.area_ci_ha[i] == pytest.approx(AREA_HA[i][1], abs=1)
    # producer's intervals: the paper prints 0.21, 0.23, 0.03, 0.01; its own eq. 7 gives 0.213,
    # 0.254, 0.034, 0.018 (independent implementations agree: the 0.23 and 0.01 are misprints)
    assert r.producers_ci[[0, 2]] == pytest.approx([0.21, 0.03], abs=0.005)
    assert r.producers_ci[[1, 3]] == pytest.approx([0.254, 0.018], abs=0.0015)
    assert r.overall == pytest.approx(OVERALL[0], abs=0.005)
    assert r.overall_ci == pytest.approx(OVERALL[1], abs=0.005)
    assert np.allclose(r.proportions, PROPORTIONS, atol=0.00005)
    assert np.allclose(r.mapped_ha, [18_000, 13_500, 288_000, 580_500])


def test_olofsson_example_from_the_matrix():
    _check_published(estimate(COUNTS, MAPPED, pixel_area_m2=900.0,
                              classes=[{"value": i, "name": n} for i, n in enumerate(NAMES)]))


def test_olofsson_example_through_assess(tmp_path):
    path, points = _olofsson_map(tmp_path)
    ref = tmp_path / "reference.gpkg"
    points.to_file(ref, driver="GPKG")
    out = tmp_path / "report" / "assessment.json"
    r = assess(path, ref, label="reference", out=out, chunk=32)
    _check_published(r)
    assert np.array_equal(r.counts, COUNTS)
    record = json.loads(out.read_text())
    assert record["n_points"] == 640 and record["classes"][0]["name"] == "Deforestation"
    assert record["classes"][0]["estimated_ha"] == pytest.approx(21_158, abs=1)
    assert record["overall_accuracy_ci95"] == pytest.approx(0.0185, abs=0.0005)
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = r.format_table()
    assert "Overall accuracy: 0.947 +- 0.018" in table and "21157.8 +- 6157.6" in table
    with pytest.raises(OutputExistsError, match="assessment.json already exists"):
        assess(path, ref, label="reference", out=out)
    # the same from a CSV of x, y with class values, in another CRS for the point file
    csv = tmp_path / "reference.csv"
    values = {n: i for i, n in enumerate(NAMES)}
    points.assign(x=points.geometry.x, y=points.geometry.y,
                  cls=points["reference"].map(values)).drop(columns="geometry").to_csv(csv, index=False)
    assert np.array_equal(assess(path, csv, label="cls").counts, COUNTS)
    wgs = tmp_path / "reference.geojson"
    points.to_crs("EPSG:4326").to_file(wgs, driver="GeoJSON")
    assert np.array_equal(assess(path, wgs, label="reference").counts, COUNTS)


def test_bad_reference_input_is_refused_and_nothing_written(tmp_path):
    path, points = _olofsson_map(tmp_path)
    out = tmp_path / "a.json"

    def refused(pts, match, label="reference"):
        f = tmp_path / "bad.gpkg"
        pts.to_file(f, driver="GPKG")
        with pytest.raises(SamplesError, match=match) as err:
            assess(path, f, label=label, out=out)
        assert "\n" not in str(err.value)
        assert not out.exists() and not out.with_suffix(".png").exists()
        return str(err.value)

    msg = refused(points, "no label column 'truth'", label="truth")
    assert "reference" in msg
    moved = points.copy()
    moved.geometry = moved.geometry.translate(xoff=1e6)
    moved = moved.iloc[:5]
    msg = refused(moved, "5 of 5 reference points fall outside the map")
    assert "x=" in msg
    wrong = points.copy()
    wrong.loc[3, "reference"] = "Cloud"
    msg = refused(wrong, "reference class 'Cloud'")
    assert "not in the map's class table" in msg and "0=Deforestation" in msg
    # a mapped class without any point: its pixels cannot be apportioned
    no_gain = points[~points.index.isin(range(75, 150))]
    refused(no_gain, "'Forest gain' has mapped pixels but no reference point")


def test_a_stratum_with_one_point_gets_no_interval():
    counts = COUNTS.copy()
    counts[1] = [0, 1, 0, 0]
    r = estimate(counts, MAPPED, pixel_area_m2=900.0,
                 classes=[{"value": i, "name": n} for i, n in enumerate(NAMES)])
    assert np.isnan(r.users_ci[1]) and np.isfinite(r.users_ci[0])
    assert np.isnan(r.overall_ci) and np.isnan(r.area_ci_ha).all()
    assert np.isfinite(r.area_ha).all()
    assert any("'Forest gain': only 1 reference point" in m for m in r.messages)
    assert "(no CI)" in r.format_table()
    assert r.to_dict()["overall_accuracy_ci95"] is None


def test_allocation():
    # proportional with largest remainders, a minimum per class, capped by the class size
    # (9000 / 9930 * 100 = 90.6: 90 plus the one point left over, the largest remainder)
    assert allocate({0: 9000, 1: 900, 2: 100}, 100, min_per_class=0) == {0: 90, 1: 9, 2: 1}
    assert allocate({0: 9000, 1: 900, 2: 30}, 100, min_per_class=50) == {0: 91, 1: 50, 2: 30}
    assert allocate({0: 1, 1: 1, 2: 1}, 2, min_per_class=0) == {0: 1, 1: 1, 2: 0}
    with pytest.raises(ParameterError, match="positive"):
        allocate({0: 5}, 0)


def test_design(tmp_path):
    import pyogrio

    rng = np.random.default_rng(2)
    classes = rng.choice(np.array([0, 1, 2], "uint8"), size=(50, 60), p=[0.8, 0.18, 0.02])
    classes[:4, :4] = 255
    folder = tmp_path / "job"
    folder.mkdir()
    table = [{"value": 0, "name": "grass"}, {"value": 1, "name": "tree"}, {"value": 2, "name": "water"}]
    write_class_tif(folder / "classes.tif", classes)
    write_job_json(folder, table)
    out = tmp_path / "sample.gpkg"
    frame = design(folder, n=100, out=out, min_per_class=20, seed=7, chunk=16)
    got = pyogrio.read_dataframe(out)
    assert got.crs == CRS and len(got) == len(frame)
    sizes = {v: int((classes == v).sum()) for v in (0, 1, 2)}
    assert dict(got["map_value"].value_counts()) == allocate(sizes, 100, min_per_class=20)
    rows = ((4764070.0 - got.geometry.y) / 10 - 0.5).round().astype(int)
    cols = ((got.geometry.x - 677770.0) / 10 - 0.5).round().astype(int)
    assert (classes[rows, cols] == got["map_value"]).all()          # on a pixel of its stratum
    assert len(set(zip(rows, cols))) == len(got)                    # no pixel twice
    assert got["reference"].isna().all()
    assert set(got["map_class"]) == {"grass", "tree", "water"}
    assert (got["stratum_pixels"] == got["map_value"].map(sizes)).all()
    again = design(folder, n=100, out=tmp_path / "again.gpkg", min_per_class=20, seed=7, chunk=16)
    assert np.array_equal(again.geometry.x, frame.geometry.x)      # reproducible
    other = design(folder, n=100, out=tmp_path / "other.gpkg", min_per_class=20, seed=8, chunk=16)
    assert not np.array_equal(other.geometry.x, frame.geometry.x)
    with pytest.raises(OutputExistsError):
        design(folder, n=100, out=out)
    # label the sample from the map itself (a perfect map): user's accuracy 1 everywhere
    got["reference"] = got["map_class"]
    labelled = tmp_path / "labelled.gpkg"
    got.to_file(labelled, driver="GPKG")
    r = assess(folder, labelled, label="reference")
    assert r.overall == 1 and np.allclose(r.users, 1)
    assert np.allclose(r.area_ha, r.mapped_ha)


# --------------------------------------------------------------------------- real data: Buffalo

BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory):
    """The Buffalo grid classified by a nearest-centroid rule trained on the labelled points
    (probabilities = softmax of minus half the squared standardised distances), written as a
    job output folder; and the labelled pixels (majority label of the points in each pixel)."""
    import os
    from pathlib import Path

    import pandas as pd

    root = os.environ.get("S2DASK_SAMPLE_DATA")
    if not root or not (Path(root) / "buffalo" / "grid_data.csv").exists():
        pytest.skip("S2DASK_SAMPLE_DATA is not set (or has no buffalo/): the Buffalo end-to-end "
                    "test needs the real sample data")
    data = Path(root) / "buffalo"
    grid = pd.read_csv(data / "grid_data.csv")
    points = pd.read_csv(data / "point_data.csv")
    table = pd.read_csv(data / "Landuse_ID_keras.csv")
    classes = [{"value": int(v), "name": str(n)} for v, n in zip(table["Class_ID"], table["Description"])]
    mu, sd = points[BANDS].mean(), points[BANDS].std()
    centroids = ((points[BANDS] - mu) / sd).groupby(points["Class_ID"] - 1).mean().to_numpy()
    xs, ys = np.sort(grid["x"].unique()), np.sort(grid["y"].unique())[::-1]
    rows = np.round((ys[0] - grid["y"]) / 10).astype(int)
    cols = np.round((grid["x"] - xs[0]) / 10).astype(int)
    d2 = ((((grid[BANDS] - mu) / sd).to_numpy()[:, None, :] - centroids[None]) ** 2).sum(-1)
    e = np.exp(-(d2 - d2.min(1, keepdims=True)) / 2)
    prob = np.zeros((len(classes), len(ys), len(xs)), dtype="float32")
    prob[:, rows, cols] = (e / e.sum(1, keepdims=True)).T
    valid = np.zeros((len(ys), len(xs)), bool)
    valid[rows, cols] = True
    folder = tmp_path_factory.mktemp("buffalo") / "buffalo"
    folder.mkdir()
    labelled = pd.DataFrame({"row": np.floor((ys[0] + 5 - points["y"]) / 10).astype(int),
                             "col": np.floor((points["x"] - (xs[0] - 5)) / 10).astype(int),
                             "label": points["Class_ID"] - 1})
    labelled = labelled.groupby(["row", "col"])["label"].agg(lambda s: s.mode().iloc[0]).reset_index()
    return {"folder": folder, "prob": prob, "valid": valid, "classes": classes, "labelled": labelled,
            "origin": (xs[0] - 5, ys[0] + 5)}


def _write_map(b, folder, prob, *, smooth=None):
    """classes.tif + job.json (+ classes.zarr with the entropy layer) from probabilities."""
    from _maps import write_job_zarr

    from s2dask.maps.smooth import smooth_chunk
    from s2dask.maps.uncertainty import compute_layers

    folder.mkdir(exist_ok=True)
    valid = b["valid"]
    if smooth:
        r = smooth_chunk(lambda y0, y1, x0, x1: (prob[:, y0:y1, x0:x1], valid[y0:y1, x0:x1]),
                         (0, valid.shape[0], 0, valid.shape[1]), shape=valid.shape, size=smooth)
        prob = r.probabilities
    cls = np.where(valid, prob.argmax(0), 255).astype("uint8")
    write_class_tif(folder / "classes.tif", cls)
    write_job_json(folder, b["classes"])
    layers = compute_layers(prob, valid, ["entropy"])
    write_job_zarr(folder / "classes.zarr", {"classes": cls, **layers}, classes=b["classes"], chunks=64)
    return cls


def test_buffalo_design_then_assess_end_to_end(buffalo, tmp_path):
    """design -> label from the labelled points -> assess, on the real Buffalo subset.

    Only drawn pixels that hold labelled points can be labelled (the tutorial's points cover
    ~5% of the grid, in polygons its author chose), so the estimates are a working example
    of the pipeline on real data, not an unbiased assessment of this map."""
    import time

    import pyogrio

    from s2dask.maps.uncertainty import suggest

    b = buffalo
    t0 = time.perf_counter()
    cls = _write_map(b, b["folder"], b["prob"])
    sample = design(b["folder"], n=3000, out=tmp_path / "design.gpkg", min_per_class=300, seed=1, chunk=64)
    x0, y0 = b["origin"]
    rows = np.floor((y0 - sample.geometry.y) / 10).astype(int)
    cols = np.floor((sample.geometry.x - x0) / 10).astype(int)
    lookup = {(r, c): k for r, c, k in zip(b["labelled"]["row"], b["labelled"]["col"], b["labelled"]["label"])}
    names = {c["value"]: c["name"] for c in b["classes"]}
    sample["reference"] = [names[lookup[rc]] if rc in lookup else None for rc in zip(rows, cols)]
    labelled = tmp_path / "labelled.gpkg"
    sample.to_file(labelled, driver="GPKG")
    r = assess(b["folder"], labelled, label="reference", out=tmp_path / "assessment.json", chunk=64)
    print("\n" + r.format_table())
    assert 100 < r.n_points < len(sample)
    assert any("without a label" in m for m in r.messages)
    assert r.mapped_pixels.sum() == (cls != 255).sum() == 35_700
    assert r.area_ha.sum() == pytest.approx(r.mapped_ha.sum()) == pytest.approx(357.0)
    assert 0.5 < r.overall < 1 and np.isfinite(r.overall_ci)
    assert [c["name"] for c in r.classes][:2] == ["Parking/road/pavement", "Building"]
    cand = suggest(b["folder"], n=20, out=tmp_path / "next.gpkg", min_distance=100.0, chunk=64)
    got = pyogrio.read_dataframe(tmp_path / "next.gpkg")
    assert len(got) == 20 and got.crs == "EPSG:32617" and cand["uncertainty"].iloc[0] >= cand["uncertainty"].iloc[-1]
    assert time.perf_counter() - t0 < 30


def test_buffalo_smoothed_vs_unsmoothed_on_the_labelled_points(buffalo, tmp_path):
    """The acceptance figure: accuracy on all labelled pixels, plain vs --smooth 3 and 5."""
    import pandas as pd

    b = buffalo
    lab = b["labelled"]
    rows = []
    for size in (None, 3, 5):
        folder = tmp_path / f"smooth{size or 0}"
        cls = _write_map(b, folder, b["prob"], smooth=size)
        acc = float((cls[lab["row"], lab["col"]] == lab["label"]).mean())
        ref = tmp_path / f"labelled{size or 0}.csv"
        x0, y0 = b["origin"]
        pd.DataFrame({"x": x0 + (lab["col"] + 0.5) * 10, "y": y0 - (lab["row"] + 0.5) * 10,
                      "label": lab["label"]}).to_csv(ref, index=False)
        r = assess(folder, ref, label="label")
        rows.append((size or 1, acc, r.overall))
    print("\nwindow  accuracy on labelled pixels  (Olofsson overall, labelled pixels as the sample)")
    for size, acc, overall in rows:
        print(f"{size:>6}  {acc:.3f}  ({overall:.3f})")
    assert all(0.5 < acc <= 1 for _, acc, _ in rows)


def _cli(argv):
    """What s2dask.cli.main does with these subcommands once wired (parse, handler, exit 2)."""
    import argparse

    from s2dask.cli.maps import add_subcommands
    from s2dask.errors import S2DaskError

    parser = argparse.ArgumentParser(prog="s2dask")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except S2DaskError as exc:
        print(f"s2dask {args.command}: error: {exc}")
        return 2


def test_cli_design_then_assess(tmp_path, capsys):
    import pyogrio

    path, _ = _olofsson_map(tmp_path)
    sample = tmp_path / "s.gpkg"
    assert _cli(["design", str(path), "--n", "40", "--min-per-class", "8", "--out", str(sample)]) == 0
    assert "fill in the 'reference' column" in capsys.readouterr().out
    got = pyogrio.read_dataframe(sample)
    got["reference"] = got["map_class"]
    got.loc[0, "reference"] = "Stable forest" if got.loc[0, "map_class"] != "Stable forest" else "Forest gain"
    got.to_file(sample, driver="GPKG")
    out = tmp_path / "a.json"
    assert _cli(["assess", str(path), str(sample), "--label", "reference", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Overall accuracy" in text and out.exists() and out.with_suffix(".png").exists()
    assert _cli(["assess", str(path), str(sample), "--label", "truth"]) == 2
    err = capsys.readouterr().out.strip()
    assert err.startswith("s2dask assess: error:") and "no label column 'truth'" in err and "\n" not in err
