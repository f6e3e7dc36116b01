"""Uncertainty layers against independent numpy, and `suggest` on real Zarr/GeoTIFF maps."""

from __future__ import annotations

import numpy as np
import pytest
from _maps import CRS, write_class_tif, write_job_json, write_job_zarr

from s2dask.errors import OutputExistsError, ParameterError, SceneError
from s2dask.maps.uncertainty import (
    NODATA,
    cog_name,
    compute_layers,
    entropy,
    layer_attrs,
    layer_name,
    least,
    margin,
    parse_kinds,
    suggest,
)

CLASSES = [{"value": 0, "name": "road"}, {"value": 1, "name": "building"}, {"value": 2, "name": "tree"}]


def _random_prob(k=5, shape=(13, 17), seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(k, *shape))
    p = np.exp(logits) / np.exp(logits).sum(0)
    return p.astype("float32")


def test_layers_equal_numpy_within_uint8_rounding():
    p = _random_prob()
    p64 = p.astype("float64")
    k = p.shape[0]
    ref_entropy = -(p64 * np.log(p64)).sum(0) / np.log(k)
    s = np.sort(p64, axis=0)
    ref_margin = 1 - (s[-1] - s[-2])
    ref_least = 1 - s[-1]
    for got, ref in ((entropy(p), ref_entropy), (margin(p), ref_margin), (least(p), ref_least)):
        assert got.dtype == np.uint8 and got.shape == p.shape[1:]
        assert np.abs(got.astype(int) - ref * 100).max() <= 0.5 + 1e-4  # the rounding, nothing more
    assert np.array_equal(least(p), 100 - np.rint(p64.max(0) * 100).astype(int))


def test_extremes_and_nodata():
    p = np.zeros((4, 1, 4), dtype="float32")
    p[0, 0, 0] = 1                 # certain
    p[:, 0, 1] = 0.25              # uniform: most uncertain
    p[:2, 0, 2] = 0.5              # tie between two classes
    p[:, 0, 3] = np.nan            # broken pixel
    valid = np.array([[True, True, False, True]])
    e, m, lc = entropy(p, valid), margin(p, valid), least(p, valid)
    assert e.tolist() == [[0, 100, NODATA, NODATA]]
    assert m.tolist() == [[0, 100, NODATA, NODATA]]
    assert lc.tolist() == [[0, 75, NODATA, NODATA]]
    # the masked tie pixel is still computed when the mask allows it
    assert entropy(p)[0, 2] == 50 and margin(p)[0, 2] == 100


def test_names_attrs_and_validation():
    assert parse_kinds("margin, entropy") == ("entropy", "margin")
    assert layer_name("least") == "uncertainty_least" and cog_name("entropy") == "uncertainty-entropy.tif"
    assert layer_attrs("margin")["nodata"] == 255 and layer_attrs("margin")["units"] == "percent"
    layers = compute_layers(_random_prob(3), None, ["margin", "least"])
    assert sorted(layers) == ["uncertainty_least", "uncertainty_margin"]
    with pytest.raises(ParameterError, match="unknown uncertainty measure 'gini'"):
        parse_kinds("entropy,gini")
    with pytest.raises(ParameterError, match="n_classes >= 2"):
        entropy(np.ones((1, 3, 3), dtype="float32"))
    with pytest.raises(ParameterError, match="valid mask shape"):
        margin(_random_prob(3), np.ones((2, 2), bool))


def _brute_force(u, *, n, min_distance, res=10.0):
    """Global greedy over every pixel (ranked by value, then row-major), for comparison."""
    rows, cols = np.nonzero(u != NODATA)
    order = np.lexsort((cols, rows, -u[rows, cols].astype(int)))
    picked = []
    for r, c in zip(rows[order], cols[order]):
        if all((r - pr) ** 2 + (c - pc) ** 2 >= (min_distance / res) ** 2 for pr, pc in picked):
            picked.append((r, c))
            if len(picked) == n:
                break
    return picked


@pytest.fixture()
def job_dir(tmp_path):
    rng = np.random.default_rng(3)
    u = rng.integers(0, 101, size=(40, 50)).astype("uint8")
    u[5:9, 5:9] = 100                       # a hot spot: its pixels must not all be picked
    u[30:, 40:] = NODATA
    cls = rng.integers(0, 3, size=u.shape).astype("uint8")
    cls[u == NODATA] = 255
    d = tmp_path / "T17TNH"
    d.mkdir()
    write_job_zarr(d / "classes.zarr", {"classes": cls, "uncertainty_entropy": u}, classes=CLASSES)
    write_job_json(d, CLASSES)
    return d, u, cls


def test_suggest_from_a_job_folder(job_dir, tmp_path):
    import pyogrio

    d, u, cls = job_dir
    out = tmp_path / "candidates.gpkg"
    frame = suggest(d, n=12, out=out, min_distance=50.0, chunk=16)
    got = pyogrio.read_dataframe(out)
    assert len(got) == 12 and got.crs == CRS
    assert list(got["uncertainty"]) == sorted(got["uncertainty"], reverse=True)
    assert got["uncertainty"].iloc[0] == 100
    assert ((got["uncertainty"] == u[got["row"], got["col"]]).all())
    assert (got["class_value"].to_numpy() == cls[got["row"], got["col"]]).all()
    names = {c["value"]: c["name"] for c in CLASSES}
    assert list(got["class_name"]) == [names[v] for v in got["class_value"]]
    # pixel centres in the map's CRS
    assert np.allclose(got.geometry.x, 677770.0 + (got["col"] + 0.5) * 10)
    assert np.allclose(got.geometry.y, 4764070.0 - (got["row"] + 0.5) * 10)
    xy = np.column_stack([got.geometry.x, got.geometry.y])
    dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert dist.min() >= 50.0
    assert (u[5:9, 5:9] == 100).all() and ((got["row"].between(5, 8)) & got["col"].between(5, 8)).sum() == 1
    # one window = the exact global greedy rule
    whole = suggest(d, n=12, out=tmp_path / "whole.gpkg", min_distance=50.0, chunk=4096)
    assert list(zip(whole["row"], whole["col"])) == _brute_force(u, n=12, min_distance=50.0)
    assert len(frame) == 12


def test_suggest_from_a_geotiff_layer_with_classes_next_to_it(tmp_path):
    import pyogrio

    rng = np.random.default_rng(5)
    u = rng.integers(0, 101, size=(20, 30)).astype("uint8")
    cls = rng.integers(0, 3, size=u.shape).astype("uint8")
    d = tmp_path / "job"
    d.mkdir()
    write_class_tif(d / "uncertainty-margin.tif", u)
    write_class_tif(d / "classes.tif", cls, names={c["value"]: c["name"] for c in CLASSES})
    out = tmp_path / "m.gpkg"
    suggest(d / "uncertainty-margin.tif", n=5, out=out, layer="margin")
    got = pyogrio.read_dataframe(out)
    assert len(got) == 5 and (got["layer"] == "margin").all()
    assert (got["class_value"].to_numpy() == cls[got["row"], got["col"]]).all()
    assert set(got["class_name"]) <= {"road", "building", "tree"}
    # alone (no class map beside it): class columns empty
    alone = tmp_path / "alone.tif"
    write_class_tif(alone, u)
    got = suggest(alone, n=3, out=tmp_path / "a.gpkg")
    assert got["class_value"].isna().all()


def test_suggest_refuses_bad_input(job_dir, tmp_path):
    d, _, _ = job_dir
    out = tmp_path / "c.gpkg"
    out.write_text("keep")
    with pytest.raises(OutputExistsError, match="already exists"):
        suggest(d, n=3, out=out)
    assert out.read_text() == "keep"
    with pytest.raises(ParameterError, match="positive"):
        suggest(d, n=0, out=tmp_path / "x.gpkg")
    with pytest.raises(SceneError, match="no array 'uncertainty_margin'"):
        suggest(d, n=3, out=tmp_path / "x.gpkg", layer="margin")
    assert not (tmp_path / "x.gpkg").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
