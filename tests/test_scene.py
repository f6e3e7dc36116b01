"""open_scene and grid_to_raster against real GDAL reads and writes of small rasters."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
xr = pytest.importorskip("xarray")
pytest.importorskip("rioxarray")

import _rasters as R  # noqa: E402

from s2dask import cli  # noqa: E402
from s2dask.errors import BandError, OutputExistsError, SceneError, StorageError  # noqa: E402
from s2dask.scene import grid_to_raster, open_scene, scene_summary  # noqa: E402
from s2dask.scene.bands import BAND_NAMES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

BANDS = ["B02", "B03", "B04", "B05", "B8A", "B11", "B01"]  # 10, 20 and 60 m bands
ASKED = ["B8A", "B02", "B01", "B11", "B04"]  # not the file order


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return R.make_scene(BANDS)


@pytest.fixture(scope="module")
def forms(tmp_path_factory, scene) -> dict[str, Path]:
    """The same scene as a COG, a band folder, an L2A SAFE (JP2, native resolution) and Zarr."""
    root = tmp_path_factory.mktemp("forms")
    return {
        "cog": R.write_multiband(root / "scene.tif", scene, BANDS),
        "folder": R.write_band_folder(root / "bands", scene, BANDS),
        "folder_native": R.write_band_folder(root / "bands_native", scene, BANDS, native=True),
        "safe": R.write_safe(root, scene, BANDS),
        "zarr": R.write_zarr(root / "scene.zarr", scene, BANDS),
        "zarr_per_band": R.write_zarr(root / "per_band.zarr", scene, BANDS, per_band=True),
    }


def _expected(scene: np.ndarray, names: list[str]) -> np.ndarray:
    return scene[[BANDS.index(b) for b in names]]


# --------------------------------------------------------------------------- every form, one array


@pytest.mark.parametrize("form", ["cog", "folder", "folder_native", "safe", "zarr", "zarr_per_band"])
def test_every_form_opens_to_the_same_array(forms, scene, form):
    da = open_scene(forms[form], bands=ASKED, chunks=50)  # 50: chunk edges cut 2x2 and 6x6 blocks

    assert da.dims == ("band", "y", "x")
    assert list(da["band"].values) == ASKED
    assert da.chunks == ((5,), (50, 50, 20), (50, 50, 20))
    assert da.dtype == np.uint16
    assert da.rio.crs.to_epsg() == 32617
    assert tuple(da.rio.transform())[:6] == tuple(R.transform())[:6]
    assert da.rio.nodata == 0 and da.attrs["nodata"] == 0
    ys, xs = R.scene_coords(*scene.shape[1:])
    np.testing.assert_allclose(da["y"].values, ys)
    np.testing.assert_allclose(da["x"].values, xs)
    assert da.attrs["source"] == str(forms[form])
    np.testing.assert_array_equal(da.values, _expected(scene, ASKED))


def test_all_bands_default_chunks_and_file_order(forms, scene):
    da = open_scene(forms["cog"])
    assert list(da["band"].values) == BANDS
    assert da.chunks == ((len(BANDS),), (120,), (120,))  # default 2048 is larger than the scene
    assert da.attrs["scene_id"] == "scene"
    safe = open_scene(forms["safe"], chunks=(40, 60))
    assert list(safe["band"].values) == [b for b in BAND_NAMES if b in BANDS]  # canonical order
    assert safe.chunks == ((len(BANDS),), (40, 40, 40), (60, 60))
    np.testing.assert_array_equal(safe.sel(band=BANDS).values, scene)


def test_safe_l2a_identity_and_harmonisation(forms):
    da = open_scene(forms["safe"], bands=["B02", "B05", "B01"])
    assert da.attrs["scene_id"] == "T17TNH_20230801T160000_L2A"
    assert da.attrs["tile_id"] == "T17TNH"
    assert da.attrs["sensing_time"] == "2023-08-01T16:00:00"
    assert da.attrs["processing_baseline"] == "04.00"
    assert da.attrs["product_level"] == "L2A"
    assert da.attrs["harmonised"] is True
    assert da.attrs["offset_applied"] == {"B02": -1000, "B05": -1000, "B01": -1000}
    assert da.attrs["native_resolution"] == {"B02": 10.0, "B05": 20.0, "B01": 60.0}  # finest copy picked
    assert da.attrs["resampling"] == "nearest"


def test_safe_l1c_opens_and_harmonises(tmp_path, scene):
    safe = R.write_safe(tmp_path, scene, BANDS, level="L1C")
    da = open_scene(safe, bands=["B04", "B11"], chunks=64)
    assert da.attrs["scene_id"] == "T17TNH_20230801T160000_L1C"
    assert da.attrs["product_level"] == "L1C"
    assert da.attrs["offset_applied"] == {"B04": -1000, "B11": -1000}
    np.testing.assert_array_equal(da.values, _expected(scene, ["B04", "B11"]))


def test_harmonisation_clips_low_dns_and_keeps_nodata(tmp_path):
    scene = R.make_scene(["B02"])
    scene[0, 20, 20:24] = [1, 1, 0, 1]
    safe = R.write_safe(tmp_path, scene, ["B02"])
    # DN 500 (below the -1000 offset) must become 1, not wrap or turn into nodata
    img = next(safe.rglob("*_B02_10m.jp2"))
    with rasterio.open(img) as src:
        dns = src.read(1)
        profile = src.profile
    dns[20, 20] = 500
    img.unlink()
    with rasterio.open(
        img, "w", **{**profile, "driver": "JP2OpenJPEG"}, QUALITY=100, REVERSIBLE="YES"
    ) as dst:
        dst.write(dns, 1)
    out = open_scene(safe).values[0]
    assert out[20, 20:24].tolist() == [1, 1, 0, 1]
    assert (out[:12, :12] == 0).all()


def test_pre_04_baseline_is_not_shifted(tmp_path, scene):
    safe = R.write_safe(tmp_path, scene, BANDS, offset=0, baseline="03.01")
    da = open_scene(safe, bands=["B03"])
    assert da.attrs["harmonised"] is True and da.attrs["offset_applied"] == {"B03": 0}
    np.testing.assert_array_equal(da.values, _expected(scene, ["B03"]))


def test_bilinear_is_seamless_across_chunks(forms, scene):
    one = open_scene(forms["safe"], bands=["B05", "B02"], resampling="bilinear", chunks=120).values
    many = open_scene(forms["safe"], bands=["B05", "B02"], resampling="bilinear", chunks=(35, 50)).values
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(one[1], _expected(scene, ["B02"])[0])  # 10 m band untouched
    assert not np.array_equal(one[0], _expected(scene, ["B05"])[0])  # interpolated, not replicated
    lo, hi = scene[BANDS.index("B05")][12:, 12:].min(), scene[BANDS.index("B05")][12:, 12:].max()
    assert lo <= one[0][14:, 14:].min() and one[0][14:, 14:].max() <= hi


def test_constant_band_stays_constant_under_bilinear(tmp_path):
    folder = tmp_path / "const"
    R.write_single(folder / "B02.tif", np.full((60, 60), 700, "uint16"))
    R.write_single(folder / "B05.tif", np.full((30, 30), 900, "uint16"), res=20)
    da = open_scene(folder, resampling="bilinear", chunks=25)
    assert (da.sel(band="B05").values == 900).all()


def test_multiband_without_descriptions_takes_names_from_bands(tmp_path, scene):
    path = R.write_multiband(tmp_path / "plain.tif", scene, None)
    da = open_scene(path, bands=BANDS)
    assert list(da["band"].values) == BANDS
    np.testing.assert_array_equal(da.values, scene)
    with pytest.raises(SceneError, match=r"without band descriptions: s2dask does not guess band order; name every band in stored order with --bands"):
        open_scene(path)
    with pytest.raises(SceneError, match=r"has 7 band\(s\) without band descriptions: s2dask does not guess"):
        open_scene(path, bands=["B02", "B03"])


def test_geotiff_tags_give_identity(tmp_path, scene):
    path = R.write_multiband(
        tmp_path / "tagged.tif",
        scene[:2],
        BANDS[:2],
        tags={"TILE_ID": "T17TNH", "SENSING_TIME": "2023-08-01T16:00:00", "PRODUCT_LEVEL": "L2A"},
    )
    da = open_scene(path)
    assert da.attrs["tile_id"] == "T17TNH" and da.attrs["product_level"] == "L2A"
    assert da.attrs["scene_id"] == "tagged" and da.attrs["harmonised"] is False


def test_aliases_and_comma_string_select_bands(forms, scene):
    da = open_scene(forms["folder"], bands="b8a, B2")
    assert list(da["band"].values) == ["B8A", "B02"]


def test_full_size_scene_graph_is_small_and_lazy(tmp_path):
    """A sparse 10980 x 10980 GeoTIFF: 36 tasks, and pixels are read only at compute."""
    path = tmp_path / "big.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=10980,
        height=10980,
        count=3,
        dtype="uint16",
        crs=R.CRS,
        transform=R.transform(),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        SPARSE_OK=True,
    ) as dst:
        for i, b in enumerate(["B02", "B03", "B04"], start=1):
            dst.set_band_description(i, b)
    assert path.stat().st_size < 1_000_000
    da = open_scene(path)
    assert da.chunks[0] == (3,) and da.chunks[1] == (2048,) * 5 + (740,)
    graph = da.data.__dask_graph__()
    assert len(graph) == 36
    assert len(pickle.dumps(dict(graph))) < 100_000  # paths travel, not data or open handles
    window = da.isel(y=slice(5000, 5010), x=slice(0, 10))
    assert (window.values == 0).all()
    os.remove(path)  # reads happen at compute: now it fails there, after a successful open
    with pytest.raises(StorageError, match="big.tif"):
        da.isel(y=slice(0, 10), x=slice(0, 10)).compute()


@pytest.mark.parametrize("per_band", [False, True], ids=["stacked", "per-band"])
def test_zarr_is_read_lazily(tmp_path, scene, per_band):
    import shutil

    import dask.array

    store = R.write_zarr(tmp_path / "lazy.zarr", scene, BANDS, per_band=per_band)
    da = open_scene(store, bands=["B05", "B02"], chunks=50)
    assert isinstance(da.data, dask.array.Array) and da.chunks[0] == (2,)
    shutil.rmtree(store)  # nothing was loaded at open: what compute sees is what is there then
    R.write_zarr(store, scene + 1, BANDS, per_band=per_band)
    np.testing.assert_array_equal(da.values, _expected(scene, ["B05", "B02"]) + 1)


def test_threaded_compute_matches(forms, scene):
    import dask

    da = open_scene(forms["safe"], bands=ASKED, chunks=24)
    with dask.config.set(scheduler="threads", num_workers=4):
        got = da.compute()
    np.testing.assert_array_equal(got.values, _expected(scene, ASKED))


# --------------------------------------------------------------------------- refusals, before compute


def _truncate(path: Path, keep: float = 0.6) -> Path:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))
    return path


def test_refuses_missing_path(tmp_path):
    with pytest.raises(SceneError, match=r"does not exist: check the path") as err:
        open_scene(tmp_path / "nope.tif")
    assert "nope.tif" in str(err.value)


def test_refuses_non_raster_file(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(SceneError, match=r"cannot read .*notes.tif as a raster"):
        open_scene(path)


def test_refuses_truncated_geotiff(tmp_path, scene):
    path = _truncate(R.write_multiband(tmp_path / "cut.tif", scene, BANDS))
    with pytest.raises(SceneError, match=r"cut.tif is truncated: its pixel data ends at byte"):
        open_scene(path)


def test_refuses_truncated_jp2_in_safe(tmp_path, scene):
    safe = R.write_safe(tmp_path, scene[:1], BANDS[:1])
    _truncate(next(safe.rglob("*_B02_10m.jp2")), keep=0.8)
    with pytest.raises(SceneError, match=r"B02_10m.jp2 is truncated or corrupt"):
        open_scene(safe)


def test_refuses_folder_without_bands(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    R.write_single(tmp_path / "elevation.tif", np.ones((6, 6), "uint16"))
    with pytest.raises(SceneError, match=r"no Sentinel-2 band rasters found in folder"):
        open_scene(tmp_path)


def test_refuses_bands_on_different_crs(tmp_path):
    R.write_single(tmp_path / "B02.tif", np.ones((6, 6), "uint16"))
    R.write_single(tmp_path / "B03.tif", np.ones((6, 6), "uint16"), crs="EPSG:32618")
    with pytest.raises(SceneError, match=r"different CRSs \(B02: EPSG:32617, B03: EPSG:32618\)"):
        open_scene(tmp_path)


@pytest.mark.parametrize("shift, res, size", [(5.0, 10, 6), (0.0, 15, 4), (0.0, 20, 2)])
def test_refuses_misaligned_grids(tmp_path, shift, res, size):
    R.write_single(tmp_path / "B02.tif", np.ones((6, 6), "uint16"))
    R.write_single(tmp_path / "B05.tif", np.ones((size, size), "uint16"), res=res, x0=R.X0 + shift)
    with pytest.raises(SceneError, match=r"band B05 of .* is not aligned with the B02 grid"):
        open_scene(tmp_path)


def test_refuses_missing_band_naming_what_exists(forms):
    with pytest.raises(
        BandError, match=r"band\(s\) B09, B12 missing from scene .*it has B01, B02, B03, B04, B05, B8A, B11"
    ):
        open_scene(forms["safe"], bands=["B02", "B09", "B12"])
    with pytest.raises(BandError, match=r"B06 missing .*scene.zarr"):
        open_scene(forms["zarr"], bands=["B06"])


def test_refuses_bad_arguments(forms):
    with pytest.raises(SceneError, match=r"invalid chunks=0"):
        open_scene(forms["cog"], chunks=0)
    with pytest.raises(SceneError, match=r"unknown resampling 'cubic'"):
        open_scene(forms["cog"], resampling="cubic")
    with pytest.raises(BandError, match=r"unknown Sentinel-2 band 'B13'"):
        open_scene(forms["cog"], bands=["B13"])


def test_refuses_new_baseline_without_offsets(tmp_path, scene):
    safe = R.write_safe(tmp_path, scene[:1], BANDS[:1])
    mtd = safe / "MTD_MSIL2A.xml"
    mtd.write_text(
        mtd.read_text()
        .replace("BOA_ADD_OFFSET band_id", "OTHER band_id")
        .replace("</BOA_ADD_OFFSET>", "</OTHER>")
    )
    with pytest.raises(SceneError, match=r"processing baseline 04.00 but no BOA_ADD_OFFSET"):
        open_scene(safe)


def test_refuses_zarr_without_crs(tmp_path, scene):
    ys, xs = R.scene_coords(*scene.shape[1:])
    xr.Dataset({"B02": (("y", "x"), scene[0])}, coords={"y": ys, "x": xs}).to_zarr(
        tmp_path / "nocrs.zarr", consolidated=False
    )
    with pytest.raises(SceneError, match=r"nocrs.zarr has no CRS"):
        open_scene(tmp_path / "nocrs.zarr")


# --------------------------------------------------------------------------- grid_to_raster


def _write_csv(path: Path, rows: list[tuple]) -> Path:
    lines = ["x,y,ID,B2,B3,B8A"] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _small_grid() -> list[tuple]:
    # 3 cols x 2 rows of 20 m cells, cell (x=540, y=1010) missing
    return [
        (500, 1030, 1, 11, 21, 31),
        (520, 1030, 2, 12, 22, 32),
        (540, 1030, 3, 13, 23, 33),
        (500, 1010, 4, 14, 24, 34),
        (520, 1010, 5, 15, 25, 35),
    ]


def test_grid_to_raster_small_grid_with_missing_cell(tmp_path):
    csv = _write_csv(tmp_path / "g.csv", _small_grid())
    out = grid_to_raster(csv, tmp_path / "sub" / "g.tif", crs="EPSG:32617", bands=["B8A", "B2"])
    assert out == tmp_path / "sub" / "g.tif"
    assert not list(out.parent.glob(".*tmp"))
    with rasterio.open(out) as src:
        assert src.descriptions == ("B8A", "B02")
        assert src.dtypes == ("uint16", "uint16")
        assert src.nodata == 0 and src.crs.to_epsg() == 32617
        assert tuple(src.transform)[:6] == (20.0, 0.0, 490.0, 0.0, -20.0, 1040.0)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert src.block_shapes[0] == (512, 512)
        assert src.read().tolist() == [[[31, 32, 33], [34, 35, 0]], [[11, 12, 13], [14, 15, 0]]]
    da = open_scene(out)
    assert float(da.sel(band="B02", x=540, y=1030)) == 13


def test_grid_to_raster_float_values_and_overwrite(tmp_path):
    rows = [r[:3] + (r[3] + 0.5,) + r[4:] for r in _small_grid()]
    csv = _write_csv(tmp_path / "f.csv", rows)
    out = grid_to_raster(csv, tmp_path / "f.tif", crs=32617)
    with pytest.raises(OutputExistsError, match=r"f.tif already exists: pass overwrite=True"):
        grid_to_raster(csv, out, crs=32617)
    grid_to_raster(csv, out, crs=32617, overwrite=True)
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "float32" and src.read(1)[0, 0] == 11.5


@pytest.mark.parametrize(
    "rows, match",
    [
        (_small_grid() + [(520, 1010, 9, 1, 1, 1)], r"has 1 duplicate cell\(s\) \(first at x=520, y=1010"),
        ([(500, 1030, 1, 1, 1, 1), (520, 1030, 2, 1, 1, 1), (545, 1030, 3, 1, 1, 1)], r"irregular x spacing"),
        (_small_grid() + [("", 1010, 9, 1, 1, 1)], r"missing or non-numeric x/y \(first at line 7\)"),
    ],
    ids=["duplicate", "irregular", "missing-xy"],
)
def test_grid_to_raster_refusals(tmp_path, rows, match):
    csv = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(SceneError, match=match):
        grid_to_raster(csv, tmp_path / "bad.tif", crs="EPSG:32617")
    assert not (tmp_path / "bad.tif").exists()


def test_grid_to_raster_refuses_bad_columns_and_crs(tmp_path):
    csv = tmp_path / "noy.csv"
    csv.write_text("x,Y2,B2\n1,2,3\n")
    with pytest.raises(SceneError, match=r"has no 'y' column"):
        grid_to_raster(csv, tmp_path / "o.tif", crs="EPSG:32617")
    good = _write_csv(tmp_path / "g.csv", _small_grid())
    with pytest.raises(BandError, match=r"B05 missing from grid table .*it has B02, B03, B8A"):
        grid_to_raster(good, tmp_path / "o.tif", crs="EPSG:32617", bands=["B05"])
    with pytest.raises(SceneError, match=r"invalid CRS 'EPSG:nope'"):
        grid_to_raster(good, tmp_path / "o.tif", crs="EPSG:nope")


def test_buffalo_grid_roundtrip(tmp_path):
    pd = pytest.importorskip("pandas")
    csv = R.sample_data_dir() / "buffalo" / "grid_data.csv"
    if not csv.is_file():
        pytest.skip(f"buffalo sample {csv} not found: set S2DASK_SAMPLE_DATA to the shared data folder")
    out = grid_to_raster(csv, tmp_path / "buffalo.tif", crs="EPSG:32617")
    da = open_scene(out, chunks=64)
    table = pd.read_csv(csv)
    names = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert list(da["band"].values) == names
    assert da.shape == (10, 170, 210) and da.dtype == np.uint16
    assert da.rio.crs.to_epsg() == 32617 and da.rio.resolution() == (10.0, -10.0)
    got = da.sel(
        x=xr.DataArray(table["x"].to_numpy(), dims="cell"), y=xr.DataArray(table["y"].to_numpy(), dims="cell")
    ).values  # exact centre lookups
    want = table[["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]].to_numpy().T
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- CLI


def test_cli_grid_to_raster_and_inspect(tmp_path, capsys, forms):
    csv = _write_csv(tmp_path / "g.csv", _small_grid())
    out = tmp_path / "g.tif"
    assert cli.main(["grid-to-raster", str(csv), str(out), "--crs", "EPSG:32617", "--bands", "B2,B3"]) == 0
    assert f"wrote {out}: 2 bands (B02, B03)" in capsys.readouterr().out
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32617 and src.read(1).tolist() == [[11, 12, 13], [14, 15, 0]]

    assert cli.main(["inspect", str(forms["safe"]), "--bands", "B02", "B05"]) == 0
    text = capsys.readouterr().out
    for piece in (
        "T17TNH_20230801T160000_L2A",
        "2 bands x 120 rows x 120 cols",
        "B02 B05",
        "EPSG:32617",
        "10 x 10",
        "B02 -1000, B05 -1000",
        "(2, 120, 120), 1 chunks",
    ):
        assert piece in text


@pytest.mark.parametrize(
    "argv, match",
    [
        (["inspect", "{tmp}/missing.SAFE"], "does not exist"),
        (["grid-to-raster", "{tmp}/dup.csv", "{tmp}/o.tif", "--crs", "EPSG:32617"], "duplicate cell"),
        (["grid-to-raster", "{tmp}/dup.csv", "{tmp}/exists.tif", "--crs", "EPSG:32617"], "already exists"),
    ],
    ids=["missing-scene", "duplicate-cells", "output-exists"],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, argv, match):
    _write_csv(tmp_path / "dup.csv", _small_grid() + [(500, 1030, 9, 1, 1, 1)])
    (tmp_path / "exists.tif").write_bytes(b"")
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "s2dask.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and lines[0].startswith(f"s2dask {argv[0]}: error:")


def test_summary_reads_no_pixels(forms):
    info = scene_summary(open_scene(forms["zarr"], bands=["B04"]))
    assert info["bands"] == ["B04"] and info["crs"] == "EPSG:32617" and info["resolution"] == (10.0, 10.0)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_refuses_raster_without_crs(tmp_path):
    path = tmp_path / "B02.tif"
    with rasterio.open(path, "w", driver="GTiff", width=6, height=6, count=1, dtype="uint16") as dst:
        dst.write(np.ones((1, 6, 6), "uint16"))
    with pytest.raises(SceneError, match=r"B02.tif has no CRS: assign one"):
        open_scene(tmp_path)


def test_grid_to_raster_refuses_missing_table(tmp_path):
    with pytest.raises(SceneError, match=r"grid table .*none.csv does not exist"):
        grid_to_raster(tmp_path / "none.csv", tmp_path / "o.tif", crs="EPSG:32617")


def test_a_cog_with_overviews_is_sampled_from_them(tmp_path):
    """The value checks read a COG's overviews (the whole extent, a tile or two per file)
    instead of one full-resolution tile per sample window; without overviews, the windows."""
    import rasterio
    from rasterio.enums import Resampling

    from s2dask.scene.checks import SAMPLE_GRID, SAMPLE_SIZE, sample_pixels
    from s2dask.scene.synthetic import make_scene

    path = make_scene(tmp_path / "s.tif", size=(520, 500), seed=1)
    windows = sample_pixels(open_scene(path, chunks=256))
    n = SAMPLE_GRID * SAMPLE_SIZE
    assert windows.shape == (10, n * n)
    with rasterio.open(path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.build_overviews([2, 4], Resampling.nearest)
    with rasterio.open(path) as src:
        want = src.read(out_shape=(src.count, n, n), resampling=Resampling.nearest)
    got = sample_pixels(open_scene(path, chunks=256))
    np.testing.assert_array_equal(got, want.reshape(src.count, -1))
    assert not np.array_equal(got, windows)
