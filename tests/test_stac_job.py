"""STAC items as scenes and SCL masks in whole jobs: same class map as a band folder, masks, refusals.

One small scene (120 x 120 px at 10 m, 20 m bands at native resolution, an SCL with known cloud and
shadow squares) is written three ways: a band folder of harmonised values with an SCL file, and two
STAC items (Earth Search v1 and Planetary Computer asset names, COG assets) whose DNs carry the
baseline 05.10 offset (+1000) that the items declare in two different ways.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _rasters import CRS, X0, Y0, make_scene
from _stac_fixtures import add_cog_asset, l2a_item, write_cog

from s2dask import cli
from s2dask.job.run import classify
from s2dask.job.worker import forward_counts
from s2dask.model.bundle import load_model
from s2dask.scene import open_scene
from s2dask.scene.bands import BANDS
from s2dask.scene.mask import CLOUD, NODATA, SHADOW, VALID

pystac = pytest.importorskip("pystac")

BAND_ORDER = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
ES1 = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
       "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
ES1_ID, PC_ID = "S2B_17TNH_20230801_0_L2A", "S2B_MSIL2A_20230801T160000_R097_T17TNH_20230801T200000"
SIZE, CHUNK = 120, 60  # 4 chunks; chunk (1, 1) is all cloud


def scl_grid() -> np.ndarray:
    """The 20 m SCL (60 x 60): vegetation, a nodata corner, a cloud square, a shadow square, a cloudy chunk."""
    scl = np.full((SIZE // 2, SIZE // 2), 4, dtype="uint8")
    scl[:6, :6] = 0                 # under the bands' 12 x 12 nodata corner
    scl[0:15, 30:45] = 9            # cloud: 10 m rows 0:30, cols 60:90
    scl[40:50, 5:15] = 3            # shadow: 10 m rows 80:100, cols 10:30
    scl[30:60, 30:60] = 8           # the whole chunk (1, 1)
    scl[20:25, 50:55] = 11          # snow: not masked by default
    return scl


def expected_codes() -> np.ndarray:
    codes = np.zeros((SIZE, SIZE), dtype="uint8")
    codes[0:30, 60:90] = CLOUD
    codes[80:100, 10:30] = SHADOW
    codes[60:120, 60:120] = CLOUD
    codes[:12, :12] = NODATA
    return codes


def write_tif(path: Path, data: np.ndarray, res: float) -> Path:
    return write_cog(path, data, res, crs=CRS, x0=X0, y0=Y0, BLOCKSIZE=256)


def native(data: np.ndarray, band: str) -> tuple[np.ndarray, int]:
    f = BANDS[band].resolution // 10
    return data[::f, ::f], 10 * f


def build_item(folder: Path, raw: np.ndarray, convention: str, *, with_scl: bool = True,
               item_id: str | None = None) -> "pystac.Item":
    """An L2A item whose COG assets hold ``raw`` (offset DNs): es1 says it in raster:bands, pc by baseline."""
    item = l2a_item(item_id or (ES1_ID if convention == "es1" else PC_ID), properties={"proj:code": CRS},
                    collection="sentinel-2-c1-l2a" if convention == "es1" else "sentinel-2-l2a")
    for k, band in enumerate(BAND_ORDER + (["SCL"] if with_scl else [])):
        key = ES1[band] if convention == "es1" else band
        values, res = (scl_grid(), 20) if band == "SCL" else native(raw[k], band)
        path = write_tif(folder / f"{key}.tif", values, res)
        extra = {"gsd": res, "proj:shape": list(values.shape), "proj:transform": [res, 0, X0, 0, -res, Y0]}
        if convention == "es1" and band != "SCL":
            extra["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]
        add_cog_asset(item, key, f"./{path.name}", extra)
    return item


def save_items(path: Path, items) -> Path:
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The band folder, the two items (folders of COGs) and their data."""
    root = tmp_path_factory.mktemp("stac-job")
    data = make_scene(BAND_ORDER, height=SIZE, width=SIZE, seed=5)
    raw = np.where(data == 0, 0, data + 1000).astype("uint16")
    folder = root / "folder"
    for k, band in enumerate(BAND_ORDER):
        write_tif(folder / f"T17TNH_20230801T160000_{band}.tif", *native(data[k], band))
    write_tif(folder / "T17TNH_20230801T160000_SCL_20m.tif", scl_grid(), 20)
    es1 = build_item(root / "es1", raw, "es1")
    pc = build_item(root / "pc", raw, "pc")
    (root / "es1" / "item.json").write_text(json.dumps(es1.to_dict(transform_hrefs=False)))
    (root / "pc" / "item.json").write_text(json.dumps(pc.to_dict(transform_hrefs=False)))
    return {"root": root, "data": data, "raw": raw, "folder": folder,
            "es1": root / "es1" / "item.json", "pc": root / "pc" / "item.json"}


def model_answer(model_dir, data: np.ndarray) -> np.ndarray:
    rows = data.reshape(data.shape[0], -1).T
    return load_model(model_dir).predict(rows).reshape(data.shape[1:])


def total_forwards(client, sha: str) -> int:
    return sum(c.get(sha, 0) for c in client.run(forward_counts).values())


# ------------------------------------------------------------------------- opening


def test_items_open_to_the_band_folder_values(scenes):
    folder = open_scene(scenes["folder"], chunks=CHUNK)
    assert folder.attrs["scl_path"].endswith("_SCL_20m.tif") and folder.attrs["scl_resolution"] == 20.0
    for name in ("es1", "pc"):
        item = open_scene(scenes[name], chunks=CHUNK)
        assert [str(b) for b in item["band"].values] == BAND_ORDER
        np.testing.assert_array_equal(item.values, scenes["data"])
        assert item.rio.transform() == folder.rio.transform() and item.rio.crs == folder.rio.crs
        assert item.attrs["offset_applied"] == {b: -1000 for b in BAND_ORDER}
        assert item.attrs["offset_rule"] == ("raster:bands" if name == "es1" else "s2:processing_baseline")
        assert item.attrs["scl_path"].endswith("scl.tif" if name == "es1" else "SCL.tif")
        assert item.attrs["source"] == f"{scenes[name]}#{ES1_ID if name == 'es1' else PC_ID}"
    # the same item with the offset stated by the caller instead
    item = open_scene(scenes["pc"], bands=["B04"], boa_add_offset=0)
    np.testing.assert_array_equal(item.values[0], scenes["raw"][2])


# ------------------------------------------------------------------------- whole jobs


def test_stac_items_and_band_folder_classify_alike_with_scl_mask(scenes, tiny_model, cluster_client, tmp_path):
    """A batch: band folder + an item collection (ES1, PC, and a non-S2 item that fails alone)."""
    landsat = build_item(tmp_path / "l8", scenes["raw"], "pc", item_id="LC08_L2SP_017030")
    landsat.properties.update({"constellation": "landsat", "platform": "landsat-8",
                               "s2:processing_baseline": None, "s2:mgrs_tile": None, "s2:product_type": None})
    landsat.collection_id = "landsat-c2-l2"
    es1 = pystac.Item.from_dict(json.loads(scenes["es1"].read_text()))
    pc = pystac.Item.from_dict(json.loads(scenes["pc"].read_text()))
    for item, folder in ((es1, "es1"), (pc, "pc")):  # absolute hrefs in the collection
        for asset in item.assets.values():
            asset.href = str(scenes["root"] / folder / asset.href[2:])
    items = save_items(tmp_path / "items.json", [es1, pc, landsat])
    sha = load_model(tiny_model).sha256
    before = total_forwards(cluster_client, sha)

    results = classify([scenes["folder"], items], tiny_model, tmp_path / "out", chunks=CHUNK,
                       client=cluster_client, progress=False)
    assert [r.status for r in results] == ["complete", "complete", "complete", "failed"]
    assert "is not Sentinel-2" in results[3].error and "LC08_L2SP_017030" in results[3].error
    assert total_forwards(cluster_client, sha) - before == 3 * 3  # chunk (1, 1) of each scene: no forward pass

    codes = expected_codes()
    expected = np.where(codes == VALID, model_answer(tiny_model, scenes["data"]), 255)
    for res in results[:3]:
        ds = xr.open_zarr(Path(res.out) / "classes.zarr")
        np.testing.assert_array_equal(ds["classes"].values, expected)
        np.testing.assert_array_equal(ds["mask"].values, codes)
        assert ds["mask"].attrs["flag_meanings"].split()[:4] == ["valid", "nodata", "cloud", "shadow"]
        assert (ds["confidence"].values[codes != VALID] == 0).all()
        st = res.record["statistics"]
        assert st["valid_pixels"] == int((codes == VALID).sum()) == st["classified_pixels"]
        assert st["nodata_pixels"] == 144 and st["masked_pixels"] == 30 * 30 + 60 * 60 + 20 * 20
        assert st["masked_by_reason"]["cloud"] == 30 * 30 + 60 * 60
        assert st["masked_by_reason"]["shadow"] == 400 and st["masked_by_reason"]["snow"] == 0
        assert sum(c["pixels"] for c in st["classes"]) == st["valid_pixels"]
        assert abs(sum(c["fraction_of_valid"] for c in st["classes"]) - 1) < 1e-9
        assert res.record["mask"]["mode"] == "scl" and res.record["mask"]["scl_classes"] == [0, 1, 3, 8, 9, 10]
        job = json.loads((Path(res.out) / "job.json").read_text())
        assert job["statistics"]["masked_pixels"] == st["masked_pixels"]
        ql = _png(Path(res.out) / "quicklook.png")
        assert (np.abs(ql[..., :3] - np.array([0x9E, 0x9E, 0x9E]) / 255).max(axis=-1) < 0.02).sum() > 1000
    ident = results[1].record["scene"]
    assert ident["offset_applied"]["B02"] == -1000 and ident["offset_rule"] == "raster:bands"
    assert "subtracted 1000 (raster:bands offset -0.1 / scale 0.0001)" == ident["offset_notes"]["B02"]
    assert results[2].record["scene"]["offset_rule"] == "s2:processing_baseline"
    batch = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert [s["status"] for s in batch["scenes"]] == ["complete", "complete", "complete", "failed"]


def _png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


def test_mask_none_predicts_everything(scenes, tiny_model, cluster_client, tmp_path):
    sha = load_model(tiny_model).sha256
    before = total_forwards(cluster_client, sha)
    [res] = classify(scenes["es1"], tiny_model, tmp_path / "out", chunks=CHUNK, client=cluster_client,
                     progress=False, mask="none")
    assert total_forwards(cluster_client, sha) - before == 4
    ds = xr.open_zarr(Path(res.out) / "classes.zarr")
    np.testing.assert_array_equal(ds["classes"].values, model_answer(tiny_model, scenes["data"]))
    assert "mask" not in ds and res.record["mask"] == {"mode": "none"}
    st = res.record["statistics"]
    assert st["nodata_pixels"] == 144 and st["masked_pixels"] == 0 and st["valid_pixels"] == SIZE * SIZE - 144
    # the output's STAC item names the source item, and has its datetime
    item = pystac.Item.from_file(str(Path(res.out) / "item.json"))
    [link] = [x for x in item.links if x.rel == "derived_from"]
    assert link.href == str(scenes["es1"]) and item.datetime.date().isoformat() == "2023-08-01"


def test_user_mask_file(scenes, tiny_model, cluster_client, tmp_path):
    user = np.zeros((SIZE, SIZE), dtype="uint8")
    user[30:40, 0:50] = 1
    path = write_tif(tmp_path / "mask.tif", user, 10)
    [res] = classify(scenes["folder"], tiny_model, tmp_path / "out", chunks=CHUNK, client=cluster_client,
                     progress=False, mask=str(path))
    ds = xr.open_zarr(Path(res.out) / "classes.zarr")
    codes = ds["mask"].values
    assert (codes[30:40, 12:50] == 6).all() and (codes[:12, :12] == NODATA).all()
    assert ((codes == 6) == (user == 1)).all() and (ds["classes"].values[user == 1] == 255).all()
    assert res.record["statistics"]["masked_by_reason"]["user"] == 500
    assert res.record["mask"] == {"mode": "file", "path": str(path)}


# ------------------------------------------------------------------------- object storage


@pytest.fixture
def s3(moto_url, moto_s3):
    """AWS_* pointing at moto's S3 on loopback, with a fresh bucket (conftest: moto_s3);
    the client and the endpoint URL."""
    from _s3 import fresh_bucket

    with fresh_bucket(moto_s3, "s2dask-stac-job"):
        yield moto_s3, moto_url


def _upload_item(s3client, scenes, prefix: str, *, href_base: str | None = None) -> None:
    item = json.loads(scenes["es1"].read_text())
    for key, asset in item["assets"].items():
        s3client.upload_file(str(scenes["root"] / "es1" / asset["href"][2:]), "s2dask-stac-job", f"{prefix}/{key}.tif",
                             ExtraArgs={"ACL": "public-read"} if href_base else None)
        asset["href"] = f"{href_base}/{prefix}/{key}.tif" if href_base else f"./{key}.tif"
    s3client.put_object(Bucket="s2dask-stac-job", Key=f"{prefix}/item.json", Body=json.dumps(item).encode())


def test_item_on_s3_end_to_end(s3, scenes, tiny_model, tmp_path):
    """The item JSON and its COGs on moto's S3; the CLI (own embedded cluster) reads them through /vsis3/."""
    client, _ = s3
    _upload_item(client, scenes, "one")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "s2dask.cli", "classify", "s3://s2dask-stac-job/one/item.json",
                           "--model", str(tiny_model), "--out", str(out), "--chunks", str(CHUNK),
                           "--workers", "1", "-q"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"masked {30 * 30 + 60 * 60 + 20 * 20} px" in proc.stdout
    codes = expected_codes()
    ds = xr.open_zarr(out / ES1_ID / "classes.zarr")
    np.testing.assert_array_equal(ds["classes"].values,
                                  np.where(codes == VALID, model_answer(tiny_model, scenes["data"]), 255))
    record = json.loads((out / ES1_ID / "job.json").read_text())
    assert record["scene"]["source"] == f"s3://s2dask-stac-job/one/item.json#{ES1_ID}"
    assert record["scene"]["scl_path"] == "/vsis3/s2dask-stac-job/one/scl.tif"


def test_https_assets_through_vsicurl(s3, scenes):
    """Asset hrefs as http(s):// URLs are read through GDAL's /vsicurl/ (moto's endpoint serves them)."""
    client, endpoint = s3
    _upload_item(client, scenes, "web", href_base=f"{endpoint}/s2dask-stac-job")
    scene = open_scene("s3://s2dask-stac-job/web/item.json", bands=["B02", "B05"], chunks=CHUNK)
    assert scene.attrs["scl_path"] == f"/vsicurl/{endpoint}/s2dask-stac-job/web/scl.tif"
    np.testing.assert_array_equal(scene.compute(scheduler="synchronous").values, scenes["data"][[0, 3]])


# ------------------------------------------------------------------------- bad input: one line, exit 2


def _refused(capsys, args, match: str, out: Path) -> str:
    code = cli.main(["classify", *map(str, args), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert match in err, err
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return err


def test_bad_inputs_are_one_line(scenes, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    model = ["--model", tiny_model]
    raw = scenes["raw"]
    # an item lacking a band the model needs: its assets listed
    lacking = build_item(tmp_path / "lack", raw, "es1")
    del lacking.assets["swir22"]
    (tmp_path / "lack" / "item.json").write_text(json.dumps(lacking.to_dict(transform_hrefs=False)))
    err = _refused(capsys, [tmp_path / "lack" / "item.json", *model], "has no asset for band(s) B12", out)
    assert "its assets are blue, green, red" in err
    # not Sentinel-2
    other = build_item(tmp_path / "l8", raw, "pc", item_id="LC08_X")
    other.properties.update({"constellation": "landsat", "platform": "landsat-8", "s2:processing_baseline": None,
                             "s2:mgrs_tile": None, "s2:product_type": None})
    other.collection_id = "landsat-c2-l2"
    (tmp_path / "l8" / "item.json").write_text(json.dumps(other.to_dict(transform_hrefs=False)))
    _refused(capsys, [tmp_path / "l8" / "item.json", *model], "is not Sentinel-2", out)
    # an asset that cannot be opened: named by key and href
    broken = json.loads(scenes["pc"].read_text())
    broken["assets"]["B04"]["href"] = str(tmp_path / "gone" / "B04.tif")
    for key, asset in broken["assets"].items():
        if key != "B04":
            asset["href"] = str(scenes["root"] / "pc" / asset["href"][2:])
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    _refused(capsys, [tmp_path / "broken.json", *model],
             f"cannot open asset 'B04' ({tmp_path / 'gone' / 'B04.tif'}) of STAC item {PC_ID}", out)
    # a mask raster on another grid
    off = write_tif(tmp_path / "off.tif", np.zeros((SIZE, SIZE - 6), dtype="uint8"), 10)
    _refused(capsys, [scenes["folder"], *model, "--mask", off], f"mask raster {off} is not on the grid of", out)
    # mask classes outside 0..11, and classes with --mask none
    _refused(capsys, [scenes["folder"], *model, "--mask-classes", "3,12"], "mask class '12' is not an SCL class", out)
    _refused(capsys, [scenes["folder"], *model, "--mask", "none", "--mask-classes", "3"],
             "--mask-classes applies to the SCL mask", out)
    # --mask scl on a scene without an SCL
    no_scl = build_item(tmp_path / "noscl", raw, "pc", with_scl=False)
    (tmp_path / "noscl" / "item.json").write_text(json.dumps(no_scl.to_dict(transform_hrefs=False)))
    _refused(capsys, [tmp_path / "noscl" / "item.json", *model, "--mask", "scl"],
             f"--mask scl: scene {PC_ID} has no Scene Classification Layer", out)


def test_inspect_a_stac_item(scenes, capsys):
    assert cli.main(["inspect", str(scenes["es1"]), "--chunks", str(CHUNK)]) == 0
    text = capsys.readouterr().out
    assert f"scene                {ES1_ID}" in text
    assert "offset rule          raster:bands" in text and "scl.tif" in text
    assert "B02 -1000" in text
