"""What a first-time user trips over: band naming, contract checks, clean outputs, CLI hints.

Every refusal is checked as the user meets it: through ``s2dask.cli.main`` (exit code 2,
one line on stderr naming the input and the fix, nothing written) or through the API.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from s2dask import cli
from s2dask.errors import SceneError
from s2dask.job.run import classify
from s2dask.scene import open_scene

MODEL_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def _rewrite(src: Path, dst: Path, *, order=None, names=True, crs=None, transform=None,
             dtype=None, scale=1.0, tags=None, edit=None) -> Path:
    """A copy of ``src`` with its bands reordered, renamed, rescaled or re-georeferenced."""
    with rasterio.open(src) as s:
        data = s.read()
        profile = s.profile | {"driver": "GTiff"}
        described = list(s.descriptions)
    idx = list(range(data.shape[0])) if order is None else order
    data = data[idx]
    if dtype is not None:
        data = (data.astype("float64") * scale).astype(dtype)
        profile["dtype"] = dtype
    if edit is not None:
        edit(data)
    profile.update(crs=crs or profile["crs"], transform=transform or profile["transform"])
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
        if names:
            for i, k in enumerate(idx, 1):
                d.set_band_description(i, described[k])
        if tags:
            d.update_tags(**tags)
    return dst


def _refused(argv: list[str], capsys, out: Path) -> str:
    """Run the CLI; assert exit 2, one stderr line, nothing written under ``out``; the line."""
    before = sorted(out.rglob("*")) if out.exists() else None
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"s2dask {argv[0]}") or err.startswith("s2dask:"), err
    assert (sorted(out.rglob("*")) if out.exists() else None) == before, "something was written"
    return err


# ------------------------------------------------------------------------- band names


def test_unnamed_bands_refused_without_bands_and_named_by_it(synth_dir, tiny_model, tmp_path, capsys):
    plain = _rewrite(synth_dir / "scene.tif", tmp_path / "plain.tif", names=False)
    err = _refused(["classify", str(plain), "--model", str(tiny_model), "--out", str(tmp_path / "out")],
                   capsys, tmp_path / "out")
    assert str(plain) in err and "does not guess band order" in err
    assert "--bands " + ",".join(MODEL_BANDS) in err  # the model's list as the example
    err = _refused(["inspect", str(plain)], capsys, tmp_path / "out")
    assert "--bands" in err
    # with --bands the file opens, named in file order
    scene = open_scene(plain, bands=MODEL_BANDS[:3], names=MODEL_BANDS)
    assert list(scene["band"].values) == MODEL_BANDS[:3] and scene.attrs["bands_named_by"] == "names"


def test_reversed_file_with_bands_gives_the_named_files_map(synth_dir, tiny_model, cluster_client,
                                                             tmp_path):
    (tmp_path / "rev").mkdir()
    rev = _rewrite(synth_dir / "scene.tif", tmp_path / "rev" / "scene.tif", order=list(range(9, -1, -1)),
                   names=False)
    [named] = classify(synth_dir / "scene.tif", tiny_model, tmp_path / "a", chunks=128,
                       client=cluster_client, cog=False, progress=False)
    [given] = classify(rev, tiny_model, tmp_path / "b", chunks=128, client=cluster_client,
                       cog=False, progress=False, bands=MODEL_BANDS[::-1])
    a = xr.open_zarr(Path(named.out) / "classes.zarr")["classes"].values
    b = xr.open_zarr(Path(given.out) / "classes.zarr")["classes"].values
    np.testing.assert_array_equal(a, b)
    # a completed output holds no resume bookkeeping: it belonged to the partial output
    for res in (named, given):
        names = {p.name for p in Path(res.out).iterdir()}
        assert "params.json" not in names and "chunks" not in names, names
    assert given.record["model"]["metrics"] is None  # this bundle has no metrics.json


def test_descriptions_disagreeing_with_bands_refused(synth_dir, tiny_model, tmp_path, capsys):
    scene = synth_dir / "scene.tif"
    err = _refused(["classify", str(scene), "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                    "--bands", ",".join(MODEL_BANDS[::-1])], capsys, tmp_path / "out")
    assert "band descriptions say " + ",".join(MODEL_BANDS) in err
    assert "--bands (bands=) says " + ",".join(MODEL_BANDS[::-1]) in err
    # the same list in the file's order is accepted
    assert list(open_scene(scene, names=MODEL_BANDS)["band"].values) == MODEL_BANDS


# ------------------------------------------------------------------------- contract checks


def test_reflectance_floats_refused_unless_tagged_dn(synth_dir, tiny_model, tmp_path, capsys):
    refl = _rewrite(synth_dir / "scene.tif", tmp_path / "refl.tif", dtype="float32", scale=1e-4)
    err = _refused(["classify", str(refl), "--model", str(tiny_model), "--out", str(tmp_path / "out")],
                   capsys, tmp_path / "out")
    assert "every sampled value below 2" in err and "rescale it" in err and str(tiny_model) in err
    from s2dask.model.bundle import load_model
    from s2dask.scene.checks import check_fits

    tagged = _rewrite(synth_dir / "scene.tif", tmp_path / "dn.tif", dtype="float32", scale=1e-4,
                      tags={"scale": "dn"})
    scene = open_scene(tagged, bands=MODEL_BANDS)
    assert scene.attrs["scale"] == "dn"
    bundle = load_model(tiny_model, check_keras=False)
    check_fits(scene, bands=bundle.bands, input_scale="dn", model="m", source=str(tagged))


def test_band_of_only_nodata_refused(synth_dir, tiny_model, tmp_path, capsys):
    def blank_b05(data):
        data[3] = 0

    bad = _rewrite(synth_dir / "scene.tif", tmp_path / "nob05.tif", edit=blank_b05)
    err = _refused(["classify", str(bad), "--model", str(tiny_model), "--out", str(tmp_path / "out")],
                   capsys, tmp_path / "out")
    assert "band B05 of scene" in err and "nodata in every sampled pixel" in err


def test_geographic_crs_refused_with_a_utm_hint(synth_dir, tiny_model, tmp_path, capsys):
    from rasterio.transform import from_origin

    geo = _rewrite(synth_dir / "scene.tif", tmp_path / "geo.tif", crs="EPSG:4326",
                   transform=from_origin(-78.9, 42.9, 0.0001, 0.0001))
    err = _refused(["classify", str(geo), "--model", str(tiny_model), "--out", str(tmp_path / "out")],
                   capsys, tmp_path / "out")
    assert "geographic CRS (EPSG:4326, degrees)" in err and "gdalwarp -t_srs EPSG:32617" in err


def test_missing_band_names_the_model(synth_dir, tiny_model, tmp_path, capsys):
    with rasterio.open(synth_dir / "scene.tif") as s:
        profile = s.profile | {"count": 9, "driver": "GTiff"}
        data, desc = s.read(list(range(1, 10))), s.descriptions[:9]
    small = tmp_path / "no_b12.tif"
    with rasterio.open(small, "w", **profile) as d:
        d.write(data)
        for i, b in enumerate(desc, 1):
            d.set_band_description(i, b)
    err = _refused(["classify", str(small), "--model", str(tiny_model), "--out", str(tmp_path / "out")],
                   capsys, tmp_path / "out")
    assert f"model {tiny_model} needs band(s) B12 that scene {small} lacks" in err


# ------------------------------------------------------------------------- CLI and defaults


def test_typos_suggest_the_closest_option_and_subcommand(capsys, tmp_path):
    err = _refused(["classify", "x.tif", "--model", "m", "--out", str(tmp_path / "o"), "--probabilites"],
                   capsys, tmp_path / "o")
    assert "did you mean --probabilities?" in err and "(see 's2dask classify --help')" in err
    err = _refused(["clasify", "x.tif"], capsys, tmp_path / "o")
    assert "did you mean classify?" in err
    err = _refused(["train", "t.csv", "--out", "m", "--split", "rando"], capsys, tmp_path / "o")
    assert "did you mean random?" in err and "s2dask train --help" in err


def test_default_split_is_leak_free():
    from s2dask.training.samples import Samples
    from s2dask.training.train import default_split

    assert cli.build_parser().parse_args(["train", "t.csv", "--out", "m"]).split == "auto"
    rng = np.random.default_rng(0)
    y = np.repeat([1, 2], 30)
    xy = rng.uniform(0, 1000, (60, 2))
    classes = [{"value": 1, "name": "a", "colour": "#000000"}, {"value": 2, "name": "b", "colour": "#ffffff"}]
    base = dict(X=rng.uniform(0, 1, (60, 2)).astype("float32"), y=y, bands=["B02", "B03"],
                classes=classes, source="t.csv", sha256="0", label="Class_ID")
    assert default_split(Samples(xy=xy, **base)) == "pixel"
    assert default_split(Samples(xy=None, **base)) == "random"  # nothing to group by
    groups = np.arange(60) // 5  # 6 features per class
    assert default_split(Samples(xy=xy, groups=groups, group_column="feature_id", **base)) == "group"


def test_metrics_summary_in_the_job_record(tmp_path):
    from s2dask.model.bundle import metrics_summary
    from s2dask.training.metrics import plot_history

    (tmp_path / "metrics.json").write_text(json.dumps({
        "evaluated_on": "test split", "overall_accuracy": 0.98, "kappa": 0.97, "n": 100,
        "split": {"method": "pixel", "leakage": {"test_pixels_in_train": 0}}, "best_epoch": 7,
        "epochs_run": 12}))
    s = metrics_summary(tmp_path)
    assert s["overall_accuracy"] == 0.98 and s["split"] == "pixel" and s["best_epoch"] == 7
    assert metrics_summary(tmp_path / "none") is None
    hist = {"loss": [1.0, 0.5, 0.6], "val_loss": [1.1, 0.4, 0.7], "accuracy": [0.5, 0.7, 0.7],
            "val_accuracy": [0.5, 0.8, 0.7]}
    plot_history(hist, tmp_path / "training.png", title="t", best_epoch=2)
    assert (tmp_path / "training.png").stat().st_size > 1000


def test_bad_input_table_exit_2_one_line_nothing_written(synth_dir, tiny_model, tmp_path, capsys):
    """A representative row of each group of the README's bad-input table."""
    out = tmp_path / "out"
    (tmp_path / "t.csv").write_text("x,y\n1,2\n")
    (tmp_path / "exists" / "scene").mkdir(parents=True)
    (tmp_path / "exists" / "scene" / "keep.txt").write_text("old")
    cases = [
        (["classify", str(tmp_path / "nope.tif"), "--model", str(tiny_model), "--out", str(out)],
         "does not exist"),
        (["classify", str(synth_dir / "scene.tif"), "--model", str(tmp_path / "nomodel"), "--out", str(out)],
         "nomodel"),
        (["classify", str(synth_dir / "scene.tif"), "--model", str(tiny_model), "--out", str(out),
          "--chunks", "0"], "chunk"),
        (["classify", str(synth_dir / "scene.tif"), "--model", str(tiny_model), "--out", str(out),
          "--bands", "B02,B99"], "B99"),
        (["classify", str(synth_dir / "scene.tif"), "--model", str(tiny_model), "--out",
          str(tmp_path / "exists")], "already exists: pass --overwrite"),
        (["train", str(tmp_path / "t.csv"), "--out", str(out / "m")], "t.csv"),
        (["evaluate", str(tmp_path / "nomodel"), str(tmp_path / "t.csv")], "nomodel"),
        (["grid-to-raster", str(tmp_path / "nogrid.csv"), str(out / "g.tif"), "--crs", "EPSG:32617"],
         "nogrid.csv"),
        (["inspect", str(tmp_path / "nope.tif")], "does not exist"),
    ]
    for argv, expect in cases:
        err = _refused(argv, capsys, out if "exists" not in argv[-1] else tmp_path / "exists")
        assert expect in err, (argv, err)
    assert (tmp_path / "exists" / "scene" / "keep.txt").read_text() == "old"
    with pytest.raises(SceneError):
        open_scene(tmp_path / "nope.tif")
