"""Reading, validating and splitting labelled tables (no Keras here: fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import buffalo_dir, separable_table, write_table

from s2dask.errors import SamplesError
from s2dask.training.samples import read_samples, split_samples


@pytest.fixture
def table(tmp_path):
    return write_table(separable_table(40), tmp_path / "points.csv")


def test_read_csv_canonical_bands_classes_and_hash(table):
    from s2dask.model.bundle import sha256_file

    s = read_samples(table)
    assert s.X.shape == (3 * 40 * 4, 10) and s.X.dtype == np.float32
    assert s.bands == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert s.class_values == [1, 2, 3]
    assert [c["name"] for c in s.classes] == ["Road", "Building", "Tree"]
    assert all(c["colour"].startswith("#") for c in s.classes)
    assert s.xy.shape == (len(s), 2)
    assert s.sha256 == sha256_file(table)


def test_read_parquet_aliases_band_subset_and_class_table(tmp_path):
    df = separable_table(10).rename(columns={"B2": "B02", "B8": "b08"}).drop(columns=["x", "y"])
    path = write_table(df, tmp_path / "points.parquet")
    ct = tmp_path / "classes.csv"
    ct.write_text("value,name,colour\n1,Asphalt,#111111\n2,Roof,#222222\n3,Wood,#333333\n9,Snow,\n")
    s = read_samples(path, bands="B2,B8,B12", class_table=ct)
    assert s.bands == ["B02", "B08", "B12"]
    np.testing.assert_array_equal(s.X[:, 0], df["B02"].to_numpy(dtype="float32"))
    assert s.xy is None
    assert s.classes == [{"value": 1, "name": "Asphalt", "colour": "#111111"},
                         {"value": 2, "name": "Roof", "colour": "#222222"},
                         {"value": 3, "name": "Wood", "colour": "#333333"}]


def _bad(tmp_path, df, **kw):
    path = write_table(df, tmp_path / "bad.csv")
    with pytest.raises(SamplesError) as info:
        read_samples(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "bad.csv" in msg
    return msg


def test_refusals_say_which_column_and_row(tmp_path):
    df = separable_table(5)
    msg = _bad(tmp_path, df.drop(columns=["B11"]))
    assert "B11" in msg and "--bands" in msg
    msg = _bad(tmp_path, df.drop(columns=["Class_ID"]))
    assert "'Class_ID'" in msg and "--label" in msg and "Description" in msg
    bad = df.astype({"B4": object})
    bad.loc[7, "B4"] = "12x"
    msg = _bad(tmp_path, bad)
    assert "'B4'" in msg and "non-numeric" in msg and "row 8" in msg and "'12x'" in msg
    bad = df.astype({"B5": float})
    bad.loc[3, "B5"] = np.nan
    msg = _bad(tmp_path, bad)
    assert "'B5'" in msg and "missing value" in msg and "row 4" in msg
    msg = _bad(tmp_path, df[df.Class_ID == 1])
    assert "only 1 class" in msg
    msg = _bad(tmp_path, df.assign(Class_ID=df.Class_ID + 0.5))
    assert "integers" in msg


def test_unreadable_and_unsupported(tmp_path):
    p = tmp_path / "points.xlsx"
    p.write_bytes(b"whatever")
    with pytest.raises(SamplesError, match="unsupported extension"):
        read_samples(p)
    p = tmp_path / "broken.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(SamplesError, match="cannot read samples file"):
        read_samples(p)
    with pytest.raises(SamplesError, match="does not exist"):
        read_samples(tmp_path / "nope.csv")


def test_zero_based_class_table_is_explained(tmp_path, table):
    ct = tmp_path / "ids.csv"
    ct.write_text("Class_ID,Class,Description\n0,a,Road\n1,b,Building\n2,c,Tree\n")
    with pytest.raises(SamplesError, match="zero-based"):
        read_samples(table, class_table=ct)


def _sides(split):
    return {"train": split.train, "val": split.val, "test": split.test}


def test_random_split_stratified_proportions_and_reproducible(table):
    s = read_samples(table)
    sp = split_samples(s, method="random", seed=3)
    n = len(s)
    parts = _sides(sp)
    assert sum(len(p) for p in parts.values()) == n
    assert len(np.unique(np.concatenate(list(parts.values())))) == n
    for side, f in zip(parts, (0.75, 0.12, 0.13)):
        assert abs(len(parts[side]) / n - f) < 0.02
        for v in s.class_values:  # stratified: each class in the same proportion
            share = np.mean(s.y[parts[side]] == v)
            assert abs(share - np.mean(s.y == v)) < 0.03
    again = split_samples(s, method="random", seed=3)
    for a, b in zip(parts.values(), _sides(again).values()):
        np.testing.assert_array_equal(a, b)
    other = split_samples(s, method="random", seed=4)
    assert not np.array_equal(other.test, sp.test)
    # 4 points per pixel: a random split of points leaks pixels, and says so
    assert sp.info["leakage"]["test_pixels_in_train"] > 0
    assert "also have points in train" in sp.description


def _pixels_per_side(s, split, size):
    cells = [tuple(c) for c in np.floor(s.xy / size).astype(int)]
    return {side: {cells[i] for i in idx} for side, idx in _sides(split).items()}


@pytest.mark.parametrize("method,size", [("pixel", 10.0), ("block", 50.0)])
def test_group_splits_keep_groups_whole(table, method, size):
    s = read_samples(table)
    sp = split_samples(s, method=method, seed=1, block_size=size)
    px = _pixels_per_side(s, sp, size)
    assert not (px["train"] & px["val"]) and not (px["train"] & px["test"]) and not (px["val"] & px["test"])
    assert sp.info["leakage"]["test_pixels_in_train"] == 0
    assert all(len(p) for p in _sides(sp).values())
    assert set(s.y[sp.train]) == set(s.class_values)
    if method == "pixel":  # pure-class pixels: proportions close to the fractions
        assert abs(len(sp.train) / len(s) - 0.75) < 0.05
    again = split_samples(s, method=method, seed=1, block_size=size)
    np.testing.assert_array_equal(again.test, sp.test)


def test_split_refusals(tmp_path, table):
    s = read_samples(table)
    no_xy = read_samples(write_table(separable_table(10).drop(columns=["x", "y"]), tmp_path / "n.csv"))
    with pytest.raises(SamplesError, match="needs x,y coordinates"):
        split_samples(no_xy, method="pixel")
    with pytest.raises(SamplesError, match="too few"):
        split_samples(s, method="block", block_size=100000)
    tiny = read_samples(write_table(separable_table(1, points_per_pixel=2), tmp_path / "t.csv"))
    with pytest.raises(SamplesError, match="too few samples"):
        split_samples(tiny)
    with pytest.raises(SamplesError, match="unknown split"):
        split_samples(s, method="kfold")


def test_buffalo_splits_report_leakage():
    path = buffalo_dir() / "point_data.csv"
    if not path.is_file():
        pytest.skip(f"Buffalo sample data not found at {path} (set S2DASK_SAMPLE_DATA)")
    s = read_samples(path)
    assert len(s) > 10000 and s.class_values == [1, 2, 3, 4, 5]
    assert s.classes[4]["name"] == "Water"
    rnd = split_samples(s, method="random")
    assert rnd.info["leakage"]["test_pixels_in_train_pct"] > 80  # the tutorial's trap
    pix = split_samples(s, method="pixel")
    assert pix.info["leakage"]["test_pixels_in_train"] == 0
    assert pix.info["leakage"]["test_rows_spectrum_in_train_pct"] < 5
