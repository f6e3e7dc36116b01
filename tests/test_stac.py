"""s2dask.scene.stac_catalog: STAC items, item lists and catalogues parsed into scene records, on real small COGs."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

pystac = pytest.importorskip("pystac")
rasterio = pytest.importorskip("rasterio")

from _stac_fixtures import add_cog_asset, l2a_item, write_cog  # noqa: E402

from s2dask.errors import BandError, SceneError  # noqa: E402
from s2dask.scene.stac_catalog import (  # noqa: E402
    expand_inputs,
    gdal_path,
    is_stac,
    open_stac_item,
    read_plan,
    read_stac,
    split_item_ref,
)

SIZE = 60  # 10 m pixels; 20 m assets are 30 x 30, 60 m assets 10 x 10
ES1 = "earthsearch_v1_c1-l2a__S2B_T38XNF_20250422T091553_L2A.json"
ES0 = "earthsearch_v0_sentinel-s2-l2a-cogs__S2A_28QCH_20200714_0_L2A.json"
PC = "planetary_computer_sentinel-2-l2a__4items_N0510_list.json"
ES1_KEYS = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
            "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
            "swir16": "B11", "swir22": "B12"}
RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
       "B8A": 20, "B09": 60, "B11": 20, "B12": 20, "SCL": 20}


def stac_dir() -> Path:
    root = os.environ.get("S2DASK_SAMPLE_DATA")
    if not root or not (Path(root) / "stac" / ES1).is_file():
        pytest.skip("S2DASK_SAMPLE_DATA not set or holds no stac/ fixtures (see ../shared/data/stac/README.md)")
    return Path(root) / "stac"


def dn(band: str, seed: int = 0) -> np.ndarray:
    """Values of one band at its native resolution: 1001..9000, with a nodata (0) corner."""
    n = SIZE * 10 // RES[band]
    rng = np.random.default_rng(abs(hash(band)) % 1000 + seed)
    out = rng.integers(1001, 9000, size=(n, n), dtype="uint16")
    out[: max(1, n // 6), : max(1, n // 6)] = 0
    if band == "SCL":
        out = rng.integers(0, 12, size=(n, n)).astype("uint8")
    return out


def write_asset(path: Path, data: np.ndarray, res: float, *, epsg: int, x0: float, y0: float) -> Path:
    return write_cog(path, data, res, crs=f"EPSG:{epsg}", x0=x0, y0=y0)


def point_item_at_rasters(item: dict, folder: Path, keys: dict[str, str], *, relative: bool = True) -> dict:
    """Rewrite the band and SCL asset hrefs of a real item to small COGs written in ``folder``."""
    item = copy.deepcopy(item)
    props = item["properties"]
    epsg = int(props.get("proj:epsg") or str(props.get("proj:code", "EPSG:32617")).split(":")[1])
    x0, y0 = 500000.0, 8000000.0
    folder.mkdir(parents=True, exist_ok=True)
    for key, band in keys.items():
        asset = item["assets"][key]
        res = RES[band]
        path = write_asset(folder / f"{key}.tif", dn(band), res, epsg=epsg, x0=x0, y0=y0)
        asset["href"] = f"./{path.name}" if relative else str(path)
        n = SIZE * 10 // res
        asset["proj:shape"] = [n, n]
        asset["proj:transform"] = [res, 0, x0, 0, -res, y0]
    return item


def apply_plan(plan, band: str) -> np.ndarray:
    """Read one band through the plan's GDAL path and apply its offset as scene.py does."""
    with rasterio.open(plan.paths[band]) as src:
        data = src.read(1)
    offset = plan.offsets[band]
    if not offset:
        return data
    shifted = np.clip(data.astype(np.int64) + offset, 1, 65535).astype(data.dtype)
    return np.where(data == 0, data, shifted)


def harmonised(band: str, subtract: int) -> np.ndarray:
    raw = dn(band)
    if not subtract:
        return raw
    return np.where(raw == 0, 0, np.clip(raw.astype(np.int64) - subtract, 1, None)).astype("uint16")


# ------------------------------------------------------------------------- the shared fixtures


def test_earth_search_v1_c1_fixture(tmp_path):
    item = json.loads((stac_dir() / ES1).read_text())
    keys = {**ES1_KEYS, "scl": "SCL"}
    item = point_item_at_rasters(item, tmp_path / "es1", keys)
    (tmp_path / "es1" / "item.json").write_text(json.dumps(item))

    scene = open_stac_item(tmp_path / "es1" / "item.json")
    assert {a.key: a.band for a in scene.bands} == ES1_KEYS  # visual, wvp, aot, cloud, snow left out
    assert [a.band for a in scene.bands] == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                             "B8A", "B09", "B11", "B12"]
    assert {a.band: a.resolution for a in scene.bands} == {b: float(RES[b]) for b in ES1_KEYS.values()}
    assert scene.scl.key == "scl" and scene.scl.resolution == 20.0 and scene.scl.offset == 0
    assert (scene.tile_id, scene.processing_baseline, scene.product_level, scene.crs) == (
        "T38XNF", "05.11", "L2A", "EPSG:32638")
    assert scene.sensing_time == "2025-04-22T09:19:42"
    assert scene.scene_id == scene.item_id == "S2B_T38XNF_20250422T091553_L2A"
    assert scene.offset_rule == "raster:bands"
    for a in scene.bands:
        assert a.offset == -1000
        assert a.offset_note == "subtracted 1000 (raster:bands offset -0.1 / scale 0.0001)"
        assert a.path == str(tmp_path / "es1" / f"{a.key}.tif")  # relative href resolved to the file

    plan = read_plan(scene, ["B2", "B8A", "B11"])
    assert list(plan.paths) == ["B02", "B8A", "B11"]
    assert plan.offsets == {"B02": -1000, "B8A": -1000, "B11": -1000}
    assert plan.resolutions == {"B02": 10.0, "B8A": 20.0, "B11": 20.0}
    assert plan.scl_path == str(tmp_path / "es1" / "scl.tif") and plan.scl_resolution == 20.0
    assert plan.labels[plan.paths["B02"]].startswith("asset 'blue' (")
    assert plan.attrs["offset_applied"] == {"B02": -1000, "B8A": -1000, "B11": -1000}
    assert plan.attrs["harmonised"] is True and plan.attrs["stac_collection"] == "sentinel-2-c1-l2a"
    for band in plan.paths:
        np.testing.assert_array_equal(apply_plan(plan, band), harmonised(band, 1000))


def test_earth_search_v0_fixture_pre_04_baseline(tmp_path):
    item = json.loads((stac_dir() / ES0).read_text())
    keys = {b: b for b in RES if b != "SCL"} | {"SCL": "SCL"}
    keys.pop("B10", None)
    item = point_item_at_rasters(item, tmp_path / "es0", keys, relative=False)
    path = tmp_path / "es0" / "item.json"
    path.write_text(json.dumps(item))

    scene = open_stac_item(path)
    assert {a.key: a.band for a in scene.bands} == {b: b for b in keys if b != "SCL"}
    assert scene.scl.key == "SCL"
    # no baseline property: it is read from sentinel:product_id (..._N0214_...)
    assert scene.processing_baseline == "02.14" and scene.offset_rule == "s2:processing_baseline"
    assert scene.tile_id == "T28QCH" and scene.crs == "EPSG:32628"
    assert {a.offset for a in scene.bands} == {0}
    assert scene.band("B04").offset_note == "none (processing baseline 02.14 < 04.00: no offset in the data)"
    plan = read_plan(scene, ["B04", "B05"])
    for band in plan.paths:
        np.testing.assert_array_equal(apply_plan(plan, band), dn(band))


def test_planetary_computer_fixture_list_of_items(tmp_path):
    items = json.loads((stac_dir() / PC).read_text())
    keys = {b: b for b in RES if b not in ("B10",)}
    rewritten = [point_item_at_rasters(it, tmp_path / "pc" / str(i), keys, relative=False)
                 for i, it in enumerate(items)]
    path = tmp_path / "pc" / "items.json"
    path.write_text(json.dumps(rewritten))

    entries = read_stac(path)
    assert [e.source for e in entries] == [f"{path}#{it['id']}" for it in items]
    assert all(e.error is None for e in entries)
    scene = entries[0].scene
    # B8A's eo:bands common name is "rededge" here: the key decides, not the common name
    assert {a.key: a.band for a in scene.bands} == {b: b for b in keys if b != "SCL"}
    assert scene.offset_rule == "s2:processing_baseline" and scene.processing_baseline == "05.10"
    assert scene.band("B8A").offset_note == (
        "subtracted 1000 (processing baseline 05.10 >= 04.00: the offset is in the data)")
    assert [e.scene.tile_id for e in entries] == ["T47XML", "T47XMJ", "T46XES", "T46XER"]
    plan = read_plan(scene, ["B03", "B12"])
    for band in plan.paths:
        np.testing.assert_array_equal(apply_plan(plan, band), harmonised(band, 1000))
    # one item of the list by id
    one = open_stac_item(f"{path}#{items[2]['id']}")
    assert one.tile_id == "T46XES"


@pytest.mark.parametrize("flag, baseline, raster, offset, note", [
    (True, "05.11", True, 0,
     "none: the provider already applied BOA_ADD_OFFSET (earthsearch:boa_offset_applied true; "
     "raster:bands offsets ignored)"),
    (False, "05.11", True, -1000,
     "subtracted 1000 (earthsearch:boa_offset_applied false, processing baseline 05.11 >= 04.00: "
     "the offset is in the data)"),
    (False, "02.14", True, 0,
     "none (earthsearch:boa_offset_applied false, processing baseline 02.14 < 04.00: no offset in the data)"),
    (None, "05.11", False, -1000,
     "subtracted 1000 (processing baseline 05.11 >= 04.00: the offset is in the data)"),
    (None, "02.12", False, 0, "none (processing baseline 02.12 < 04.00: no offset in the data)"),
])
def test_earth_search_offset_cases(tmp_path, flag, baseline, raster, offset, note):
    item = json.loads((stac_dir() / ES1).read_text())
    item = point_item_at_rasters(item, tmp_path, {"blue": "B02", "nir08": "B8A"})
    props = item["properties"]
    props["s2:processing_baseline"] = baseline
    for key in ("s2:product_uri", "s2:datatake_id", "s2:datastrip_id", "s2:tile_id"):
        props.pop(key)
    if flag is not None:
        props["earthsearch:boa_offset_applied"] = flag
    for asset in item["assets"].values():
        if not raster:
            asset.pop("raster:bands", None)
    (tmp_path / "item.json").write_text(json.dumps(item))

    scene = open_stac_item(tmp_path / "item.json")
    assert {a.band: (a.offset, a.offset_note) for a in scene.select(["B02", "B8A"])} == {
        "B02": (offset, note), "B8A": (offset, note)}
    plan = read_plan(scene, ["B02", "B8A"])
    for band in plan.paths:
        np.testing.assert_array_equal(apply_plan(plan, band), harmonised(band, -offset))


# ------------------------------------------------------------------------- items built with pystac


def build_item(folder: Path, convention: str, *, item_id: str = "S2B_T17TNH_20230801T160000_L2A",
               bands=("B02", "B03", "B04", "B05", "B8A", "B11"), scl: bool = True,
               properties: dict | None = None, raster: bool = False) -> "pystac.Item":
    """An L2A item whose assets are small COGs in ``folder`` (Earth Search v1 or PC names)."""
    inverse = {v: k for k, v in ES1_KEYS.items()}
    item = l2a_item(item_id, collection="sentinel-2-l2a", properties=properties)
    folder.mkdir(parents=True, exist_ok=True)
    for band in (*bands, *(("SCL",) if scl else ())):
        key = (inverse.get(band, "scl") if convention == "es1" else band)
        path = write_asset(folder / f"{key}.tif", dn(band), RES[band], epsg=32617, x0=600000, y0=5000000)
        extra = {"gsd": RES[band]}
        if band != "SCL":
            extra["eo:bands"] = [{"name": band}]
            if raster:
                extra["raster:bands"] = [{"nodata": 0, "scale": 0.0001, "offset": -0.1}]
        add_cog_asset(item, key, str(path), extra)
    return item


@pytest.mark.parametrize("convention", ["es1", "pc"])
def test_items_built_with_pystac(tmp_path, convention):
    items = pystac.ItemCollection([build_item(tmp_path / convention, convention)])
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items.to_dict()))
    assert is_stac(path)

    (entry,) = read_stac(path)
    scene = entry.scene
    assert [a.band for a in scene.bands] == ["B02", "B03", "B04", "B05", "B8A", "B11"]
    assert scene.scl is not None and scene.tile_id == "T17TNH" and scene.crs == "EPSG:32617"
    plan = read_plan(scene, ["B04", "B05"])
    assert plan.offsets == {"B04": -1000, "B05": -1000}
    np.testing.assert_array_equal(apply_plan(plan, "B05"), harmonised("B05", 1000))
    assert pickle.loads(pickle.dumps(scene)) == scene


def test_jp2_duplicates_and_band_named_keys(tmp_path):
    item = build_item(tmp_path, "es1", bands=("B02",), scl=False)
    item.add_asset("blue-jp2", pystac.Asset(str(tmp_path / "blue.jp2"), media_type="image/jp2",
                                            roles=["data"], extra_fields={"eo:bands": [{"name": "B02"}]}))
    item.add_asset("visual", pystac.Asset(str(tmp_path / "tci.tif"), roles=["visual"],
                                          extra_fields={"eo:bands": [{"name": "B04"}, {"name": "B03"}]}))
    # Copernicus Data Space style keys: one band at several resolutions, JPEG2000 only
    for key, res in (("B05_20m", 20), ("B05_60m", 60), ("SCL_60m", 60), ("SCL_20m", 20)):
        item.add_asset(key, pystac.Asset(str(tmp_path / f"{key}.jp2"), media_type="image/jp2",
                                         roles=["data"], extra_fields={"gsd": res}))
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict()))

    scene = open_stac_item(tmp_path / "item.json")
    assert {a.band: a.key for a in scene.bands} == {"B02": "blue", "B05": "B05_20m"}
    assert scene.scl.key == "SCL_20m"


def test_boa_add_offset_option_overrides(tmp_path):
    item = build_item(tmp_path, "pc", raster=True, bands=("B02",))
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict()))
    assert open_stac_item(tmp_path / "item.json").band("B02").offset == -1000
    scene = open_stac_item(tmp_path / "item.json", boa_add_offset=0)
    assert scene.band("B02").offset == 0 and scene.offset_rule == "boa_add_offset option"
    assert scene.band("B02").offset_note == "none (boa_add_offset=0 given)"
    with pytest.raises(SceneError, match="boa_add_offset='x'"):
        read_stac(tmp_path / "item.json", boa_add_offset="x")


# ------------------------------------------------------------------------- catalogue, object store


def test_catalogue_walk_bad_item_fails_alone(tmp_path):
    root = pystac.Catalog("root", "test catalogue")
    sub = pystac.Catalog("sub", "a child catalogue")
    root.add_child(sub)
    root.add_item(build_item(tmp_path / "a", "es1", item_id="S2B_A"))
    sub.add_item(build_item(tmp_path / "b", "pc", item_id="S2B_B"))
    landsat = build_item(tmp_path / "c", "pc", item_id="L8_C", properties={
        "constellation": "landsat", "platform": "landsat-8", "s2:processing_baseline": None,
        "s2:mgrs_tile": None, "s2:product_type": None})
    landsat.collection_id = "landsat-c2-l2"
    sub.add_item(landsat)
    root.normalize_hrefs(str(tmp_path / "cat"))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    missing = {"rel": "item", "href": "./gone/gone.json", "type": "application/json"}
    cat = json.loads((tmp_path / "cat" / "catalog.json").read_text())
    cat["links"].append(missing)
    (tmp_path / "cat" / "catalog.json").write_text(json.dumps(cat))
    assert is_stac(tmp_path / "cat") and is_stac(tmp_path / "cat" / "catalog.json")

    entries = read_stac(tmp_path / "cat")
    by_id = {e.source.rsplit("#", 1)[1]: e for e in entries}
    assert set(by_id) == {"S2B_A", "S2B_B", "L8_C", "?"}
    assert by_id["S2B_A"].scene.band("B02").key == "blue"
    assert by_id["S2B_B"].scene.band("B02").key == "B02"
    # the self-contained catalogue's relative asset hrefs resolve against each item's own file
    assert Path(by_id["S2B_B"].scene.band("B02").path).is_file()
    assert isinstance(by_id["L8_C"].error, SceneError) and by_id["L8_C"].scene is None
    assert str(by_id["L8_C"].error).startswith("STAC item L8_C (")
    assert "is not Sentinel-2 (collection landsat-c2-l2, platform landsat-8" in str(by_id["L8_C"].error)
    assert "cannot read STAC file" in str(by_id["?"].error) and "gone.json" in str(by_id["?"].error)


@pytest.fixture
def s3(moto_s3):
    """AWS_* pointing at moto's S3 on loopback, with a fresh bucket (conftest: moto_s3)."""
    pytest.importorskip("s3fs")
    from _s3 import fresh_bucket

    with fresh_bucket(moto_s3, "s2dask-stac"):
        yield moto_s3


def test_item_on_s3(s3, tmp_path):
    from s2dask.io.storage import gdal_env_for

    item = build_item(tmp_path / "local", "es1", bands=("B02", "B05"))
    for key, asset in item.assets.items():
        s3.upload_file(asset.href, "s2dask-stac", f"scenes/one/{key}.tif")
        asset.href = f"./{key}.tif"
    s3.put_object(Bucket="s2dask-stac", Key="scenes/one/item.json", Body=json.dumps(item.to_dict()).encode())
    url = "s3://s2dask-stac/scenes/one/item.json"
    assert is_stac(url)

    scene = open_stac_item(url)
    assert scene.band("B02").href == "s3://s2dask-stac/scenes/one/blue.tif"
    assert scene.band("B02").path == "/vsis3/s2dask-stac/scenes/one/blue.tif"
    assert scene.scl.path == "/vsis3/s2dask-stac/scenes/one/scl.tif"
    plan = read_plan(scene, ["B05"])
    with rasterio.Env(**gdal_env_for("s3://s2dask-stac/scenes/one/rededge1.tif")):
        np.testing.assert_array_equal(apply_plan(plan, "B05"), harmonised("B05", 1000))
    with pytest.raises(SceneError, match="cannot read STAC file s3://s2dask-stac/nothing.json"):
        read_stac("s3://s2dask-stac/nothing.json")


# ------------------------------------------------------------------------- refusals, helpers


def test_item_lacking_a_band_lists_its_assets(tmp_path):
    item = build_item(tmp_path, "es1", bands=("B02", "B03"))
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict()))
    scene = open_stac_item(tmp_path / "item.json")
    with pytest.raises(BandError) as err:
        read_plan(scene, ["B02", "B05", "B11"])
    assert str(err.value) == (
        f"STAC item {scene.item_id} ({tmp_path / 'item.json'}#{scene.item_id}) has no asset for band(s) "
        "B05, B11; its assets are blue, green, scl (bands found: B02=blue, B03=green): "
        "use items that carry every band the model needs")


def test_refusals_one_line_each(tmp_path):
    def refused(path, match, **kw):
        with pytest.raises(SceneError, match=match) as err:
            open_stac_item(path, **kw)
        assert "\n" not in str(err.value)
        return str(err.value)

    refused(tmp_path / "none.json", r"cannot read STAC file .*none.json \(FileNotFoundError")
    (tmp_path / "bad.json").write_text("{not json")
    refused(tmp_path / "bad.json", r"is not valid JSON .*give a STAC Item")
    (tmp_path / "geo.json").write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    refused(tmp_path / "geo.json", r"is not STAC \('Polygon'\)")

    landsat = build_item(tmp_path / "l8", "pc", properties={
        "constellation": None, "platform": "landsat-8", "s2:processing_baseline": None,
        "s2:mgrs_tile": None, "s2:product_type": None})
    landsat.collection_id = "landsat-c2-l2"
    (tmp_path / "l8.json").write_text(json.dumps(landsat.to_dict()))
    refused(tmp_path / "l8.json", r"is not Sentinel-2 \(collection landsat-c2-l2, platform landsat-8, "
                                  r"constellation none\): give Sentinel-2 L2A or L1C items")

    vague = build_item(tmp_path / "v", "es1", properties={"s2:processing_baseline": None})
    (tmp_path / "vague.json").write_text(json.dumps(vague.to_dict()))
    msg = refused(tmp_path / "vague.json", r"does not say whether its DNs carry the 04.00 offset")
    assert "set s2:processing_baseline on the item" in msg and "--boa-add-offset" in msg
    assert open_stac_item(tmp_path / "vague.json", boa_add_offset=-1000).band("B02").offset == -1000

    odd = build_item(tmp_path / "o", "es1", raster=True, properties={"s2:processing_baseline": "02.14"})
    (tmp_path / "odd.json").write_text(json.dumps(odd.to_dict()))
    refused(tmp_path / "odd.json", r"contradicts itself: raster:bands states a DN offset")

    two = pystac.ItemCollection([build_item(tmp_path / "x", "es1", item_id="X"),
                                 build_item(tmp_path / "y", "es1", item_id="Y")])
    (tmp_path / "two.json").write_text(json.dumps(two.to_dict()))
    refused(tmp_path / "two.json", r"holds 2 items \(X, Y\): name one as FILE#ITEM_ID")
    refused(f"{tmp_path / 'two.json'}#Z", r"has no item 'Z'")


def test_bad_item_in_a_collection_fails_alone(tmp_path):
    good = build_item(tmp_path / "g", "es1", item_id="GOOD").to_dict()
    vague = build_item(tmp_path / "v", "es1", item_id="VAGUE",
                       properties={"s2:processing_baseline": None}).to_dict()
    (tmp_path / "items.json").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [good, vague, {"type": "Feature"}]}))
    entries = read_stac(tmp_path / "items.json")
    assert [e.source.rsplit("#", 1)[1] for e in entries] == ["GOOD", "VAGUE", "2"]
    assert entries[0].scene is not None and entries[0].error is None
    assert entries[1].scene is None and "VAGUE" in str(entries[1].error)
    assert isinstance(entries[2].error, SceneError) and "cannot be parsed" in str(entries[2].error)

    # a batch: STAC inputs expanded to one source per item, other inputs passed through
    expanded = expand_inputs([tmp_path / "items.json", "scene.SAFE", tmp_path / "missing.json"])
    assert [src for src, _ in expanded] == [
        f"{tmp_path / 'items.json'}#GOOD", f"{tmp_path / 'items.json'}#VAGUE", f"{tmp_path / 'items.json'}#2",
        "scene.SAFE", str(tmp_path / "missing.json")]
    assert expanded[0][1] == entries[0].scene and isinstance(expanded[1][1], SceneError)
    assert expanded[3][1] is None
    # a path that does not exist is not recognised as STAC: it reaches open_scene, which says so
    assert expanded[4][1] is None


def test_is_stac_and_paths(tmp_path):
    (tmp_path / "item.json").write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0"}))
    (tmp_path / "other.json").write_text(json.dumps({"model": "x"}))
    write_asset(tmp_path / "B02.tif", dn("B02"), 10, epsg=32617, x0=0, y0=0)
    assert is_stac(tmp_path / "item.json") and is_stac(f"{tmp_path / 'item.json'}#ID")
    assert not is_stac(tmp_path / "other.json") and not is_stac(tmp_path / "B02.tif")
    assert not is_stac(tmp_path) and not is_stac(tmp_path / "missing.json")
    assert is_stac("s3://bucket/items.json") and not is_stac("s3://bucket/scene.tif")
    assert split_item_ref("a/items.json#S2B_X") == ("a/items.json", "S2B_X")
    assert split_item_ref("a/items.json") == ("a/items.json", None)
    assert gdal_path("s3://bucket/k/B02.tif") == "/vsis3/bucket/k/B02.tif"
    assert gdal_path("https://host/k/B02.tif") == "/vsicurl/https://host/k/B02.tif"
    assert gdal_path("gs://bucket/B02.tif") == "/vsigs/bucket/B02.tif"
    assert gdal_path("/data/B02.tif") == "/data/B02.tif"
    with pytest.raises(SceneError, match="uses ftp:// which s2dask cannot read"):
        gdal_path("ftp://host/B02.tif")


@pytest.mark.parametrize("props, collection, ident, level", [
    ({"s2:product_uri": "S2A_MSIL1C_20230801T160000_N0509_R097_T17TNH_20230801T190000.SAFE"}, None, "x", "L1C"),
    ({"s2:product_type": "S2MSI2A"}, None, "x", "L2A"),
    ({}, "sentinel-2-l1c", "x", "L1C"),
    ({}, None, "S2B_T38XNF_20250422T091553_L2A", "L2A"),
    ({}, None, "S2A_item", None),
])
def test_product_level(tmp_path, props, collection, ident, level):
    from s2dask.scene.stac_catalog import scene_from_item

    item = build_item(tmp_path, "es1", bands=("B02",), scl=False, item_id=ident,
                      properties={"s2:product_type": None, **props})
    item.collection_id = collection
    scene = scene_from_item(item, href=str(tmp_path / "item.json"))
    assert scene.product_level == level
