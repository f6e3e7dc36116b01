"""Area jobs: classify only an area of interest, STAC items and catalogue, mosaics across UTM zones.

Real files and a real LocalCluster (``cluster_client``): the synthetic scene of ``synth_dir``
(300 x 260 px at 10 m, EPSG:32617) classified with chunks of 64 (25 chunks) with and without an
area of interest given in WGS84; two small tiles either side of the UTM 17N/18N boundary for the
mosaic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from s2dask.job.run import classify
from s2dask.scene.mask import OUTSIDE_AOI, VALID

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")

CHUNK = 64
X0, Y0 = 600000.0, 4800000.0  # make_scene's default origin (EPSG:32617)


def write_aoi(path: Path, polygons, crs: str = "EPSG:32617", to: str | None = None) -> Path:
    frame = gpd.GeoDataFrame({"name": [f"p{i}" for i in range(len(polygons))]}, geometry=list(polygons), crs=crs)
    if to:
        frame = frame.to_crs(to)
    frame.to_file(path)
    return path


def inside_mask(aoi_path: Path, scene: Path) -> np.ndarray:
    """Pixels whose centre is inside the AOI, rasterised on the scene's grid in the test."""
    from rasterio.features import rasterize

    with rasterio.open(scene) as src:
        frame = gpd.read_file(aoi_path).to_crs(src.crs)
        return rasterize(frame.geometry, out_shape=(src.height, src.width), transform=src.transform) == 1


@pytest.fixture(scope="module")
def aoi_file(tmp_path_factory) -> Path:
    """An L-shaped area over the scene's upper-left part, written in WGS84."""
    d = tmp_path_factory.mktemp("aoi")
    box = shapely.box(X0 + 100, Y0 - 1500, X0 + 1000, Y0 - 100)
    foot = shapely.box(X0 + 100, Y0 - 1500, X0 + 1400, Y0 - 1100)
    return write_aoi(d / "aoi.gpkg", [box, foot], to="EPSG:4326")


@pytest.fixture(scope="module")
def runs(synth_dir, tiny_model, cluster_client, aoi_file, tmp_path_factory):
    """The scene classified without and with the AOI (task streams kept)."""
    from distributed import get_task_stream

    out = tmp_path_factory.mktemp("area-out")
    [full] = classify(synth_dir / "scene.tif", tiny_model, out / "full", client=cluster_client, chunks=CHUNK,
                      progress=False)
    with get_task_stream(client=cluster_client) as stream:
        [part] = classify(synth_dir / "scene.tif", tiny_model, out / "aoi", client=cluster_client, chunks=CHUNK,
                          aoi=str(aoi_file), progress=False)
    return full, part, stream.data


def _classes(result) -> np.ndarray:
    with rasterio.open(Path(result.out) / "classes.tif") as src:
        return src.read(1)


def test_aoi_inside_equals_full_run_outside_is_255(runs, synth_dir, aoi_file):
    full, part, _ = runs
    inside = inside_mask(aoi_file, synth_dir / "scene.tif")
    assert 0 < inside.sum() < inside.size
    a, b = _classes(full), _classes(part)
    np.testing.assert_array_equal(b[inside], a[inside])
    assert (b[~inside] == 255).all()
    ds = xr.open_zarr(Path(part.out) / "classes.zarr")
    mask = ds["mask"].values
    np.testing.assert_array_equal(mask == OUTSIDE_AOI, ~inside)
    assert ((mask == VALID) <= inside).all()
    np.testing.assert_array_equal(ds["classes"].values, b)


def test_aoi_chunks_outside_are_never_read(runs, aoi_file, synth_dir):
    _, part, tasks = runs
    aoi = part.record["aoi"]
    assert aoi["chunks_total"] == 25
    # the L: chunk rows 0..2 of columns 0..1, and column 2 (x up to px 140) in rows 1..2 (px rows 110..150)
    assert aoi["chunks_computed"] == 8
    touched = {(iy, ix) for iy in range(5) for ix in range(5)
               if shapely.intersects(gpd.read_file(aoi_file).to_crs("EPSG:32617").union_all(), shapely.box(
                   X0 + ix * CHUNK * 10, Y0 - min(300, (iy + 1) * CHUNK) * 10,
                   X0 + min(260, (ix + 1) * CHUNK) * 10, Y0 - iy * CHUNK * 10))}
    keys = [t["key"] for t in tasks if isinstance(t["key"], tuple)]
    reads = [k for k in keys if k[0].startswith("open-scene")]  # the scene's block reads
    predicted = [k for k in keys if k[0].startswith("s2dask-predict")]
    assert len(reads) == len(predicted) == aoi["chunks_computed"] == len(touched)
    assert {(k[2], k[3]) for k in reads} == {(k[2], k[3]) for k in predicted} == touched
    assert aoi["sha256"] and aoi["crs"] == "EPSG:4326" and len(aoi["bounds"]) == 4
    assert aoi["file"] == str(aoi_file)


def test_aoi_statistics_are_over_the_area(runs, synth_dir, aoi_file):
    _, part, _ = runs
    stats = part.record["statistics"]
    inside = inside_mask(aoi_file, synth_dir / "scene.tif")
    assert stats["pixels"] == int(inside.sum())
    assert stats["outside_aoi_pixels"] == inside.size - int(inside.sum())
    b = _classes(part)
    for c in stats["classes"]:
        assert c["pixels"] == int((b == c["value"]).sum())
        assert c["fraction"] == pytest.approx(c["pixels"] / stats["pixels"])
    assert stats["valid_pixels"] + stats["nodata_pixels"] + stats["masked_pixels"] == stats["pixels"]
    record = json.loads((Path(part.out) / "job.json").read_text())
    assert record["aoi"]["chunks_computed"] == 8


def test_aoi_batch_skips_a_missed_scene_and_all_missed_is_an_error(synth_dir, tiny_model, cluster_client,
                                                                   aoi_file, tmp_path):
    from s2dask.errors import AreaError, AreaMissError
    from s2dask.scene.synthetic import make_scene

    far = make_scene(tmp_path / "far.tif", size=(64, 64), origin=(700000.0, 4700000.0))
    out = tmp_path / "out"
    results = classify([synth_dir / "scene.tif", far], tiny_model, out, client=cluster_client, chunks=CHUNK,
                       aoi=str(aoi_file), progress=False)
    assert [r.status for r in results] == ["complete", "skipped"]
    assert "misses scene" in results[1].error
    batch = json.loads((out / "batch.json").read_text())
    assert [s["status"] for s in batch["scenes"]] == ["complete", "skipped"]
    with pytest.raises(AreaError, match="misses every scene"):
        classify([far], tiny_model, tmp_path / "none", client=cluster_client, chunks=CHUNK, aoi=str(aoi_file),
                 progress=False)
    with pytest.raises(AreaMissError):
        classify(far, tiny_model, tmp_path / "none1", client=cluster_client, chunks=CHUNK, aoi=str(aoi_file),
                 progress=False)


def test_bad_aoi_files_are_one_line_exit_2(tmp_path, synth_dir, tiny_model, capsys):
    from s2dask.cli.main import main
    from s2dask.errors import AreaError
    from s2dask.scene.aoi import read_aoi

    gpd.GeoDataFrame(geometry=[shapely.Point(X0 + 10, Y0 - 10)], crs="EPSG:32617").to_file(tmp_path / "points.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.box(X0, Y0 - 100, X0 + 100, Y0)]).to_file(tmp_path / "nocrs.shp")
    (tmp_path / "broken.gpkg").write_text("not a vector file")
    for name, words in (("points.gpkg", "is not a polygon layer (Point)"), ("nocrs.shp", "has no CRS"),
                        ("broken.gpkg", "cannot read the area of interest")):
        code = main(["classify", str(synth_dir / "scene.tif"), "-m", str(tiny_model), "-o", str(tmp_path / "o"),
                     "--aoi", str(tmp_path / name), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(AreaError, match=words.split(" (")[0]):
            read_aoi(tmp_path / name)
    assert not (tmp_path / "o").exists()


def test_aoi_resume_computes_only_the_area_and_checks_it(synth_dir, tiny_model, cluster_client, aoi_file,
                                                        tmp_path):
    """An AOI job that failed is resumed: only the area's chunks run; another area is refused."""

    from distributed import get_task_stream

    from s2dask.errors import S2DaskError

    scene = synth_dir / "scene.tif"
    with rasterio.open(scene) as src:  # a user mask with 64 px tiles, its second half cut off
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, tiled=True, blockxsize=64, blockysize=64)
    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), dtype="uint8"))
    whole = mask.read_bytes()
    mask.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    with pytest.raises(S2DaskError, match="--resume"):
        classify(scene, tiny_model, out, client=cluster_client, chunks=CHUNK, aoi=str(aoi_file), progress=False,
                 mask=str(mask))
    assert (out / ".scene.partial").is_dir()
    mask.write_bytes(whole)
    other = write_aoi(tmp_path / "other.gpkg", [shapely.box(X0, Y0 - 600, X0 + 600, Y0)])
    with pytest.raises(S2DaskError, match="aoi"):
        classify(scene, tiny_model, out, client=cluster_client, chunks=CHUNK, aoi=str(other), progress=False,
                 resume=True, mask=str(mask))
    with get_task_stream(client=cluster_client) as stream:
        [again] = classify(scene, tiny_model, out, client=cluster_client, chunks=CHUNK, aoi=str(aoi_file),
                           progress=False, resume=True, mask=str(mask))
    kept = again.record["parameters"]["resumed_chunks"]
    predicted = [t for t in stream.data if str(t["key"]).startswith("('s2dask-predict")]
    assert len(predicted) + kept == again.record["aoi"]["chunks_computed"] == 8
    inside = inside_mask(aoi_file, scene)
    assert (_classes(again)[~inside] == 255).all()


# ------------------------------------------------------------------------------------------ STAC


def test_items_load_with_pystac_and_odc_stac_to_the_cogs(runs):
    pystac = pytest.importorskip("pystac")
    odc_stac = pytest.importorskip("odc.stac")
    for result in runs[:2]:
        out = Path(result.out).parent
        items = list(pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True))
        assert [i.id for i in items] == ["scene"]
        item = items[0]
        assert item.properties["proj:code"] == "EPSG:32617" and item.properties["proj:shape"] == [300, 260]
        assert item.properties["proj:transform"][:6] == [10.0, 0.0, X0, 0.0, -10.0, Y0]
        west, south, east, north = item.bbox
        assert -80 < west < east < -79 and 43 < south < north < 44
        classes = item.assets["classes"]
        assert "data" in classes.roles and classes.extra_fields["raster:bands"][0]["nodata"] == 255
        table = classes.extra_fields["classification:classes"]
        assert {c["value"] for c in table} == {c["value"] for c in result.record["statistics"]["classes"]}
        assert all(len(c["color_hint"]) == 6 and c["name"] for c in table)
        assert item.assets["quicklook"].roles == ["overview"] and item.assets["job"].roles == ["metadata"]
        assert "ml-model" in item.assets["model"].roles
        card = json.loads(Path(item.assets["model"].get_absolute_href()).read_text())
        assert "mlm:input" in card["properties"]
        for key in ("classes", "zarr", "quicklook", "job", "model"):
            assert Path(item.assets[key].get_absolute_href()).exists(), key
        loaded = odc_stac.load(items, bands=["classes"])
        with rasterio.open(Path(result.out) / "classes.tif") as src:
            cog = src.read(1)
        np.testing.assert_array_equal(loaded["classes"].values[0], cog)
        assert loaded.rio.crs.to_epsg() == 32617
    assert "s2dask:aoi" in pystac.Item.from_file(str(Path(runs[1].out) / "item.json")).properties


def test_catalogue_lists_the_batch_and_a_second_run_adds_to_it(synth_dir, tiny_model, cluster_client, tmp_path):
    pystac = pytest.importorskip("pystac")
    from s2dask.scene.synthetic import make_scene

    a = make_scene(tmp_path / "a.tif", size=(64, 64), seed=1)
    b = make_scene(tmp_path / "b.tif", size=(64, 64), seed=2, origin=(600640.0, 4800000.0))
    c = make_scene(tmp_path / "c.tif", size=(64, 64), seed=4, origin=(601280.0, 4800000.0))
    out = tmp_path / "out"
    classify([a, b], tiny_model, out, client=cluster_client, chunks=CHUNK, progress=False, quicklook=False)

    def listed() -> list[str]:
        return sorted(i.id for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True))

    assert listed() == ["a", "b"]
    classify(c, tiny_model, out, client=cluster_client, chunks=CHUNK, progress=False, quicklook=False)
    assert listed() == ["a", "b", "c"]
    assert "quicklook" not in pystac.Item.from_file(str(out / "c" / "item.json")).assets


def test_concurrent_catalogue_updates_keep_every_item(runs, tmp_path):
    """Runs committing into one folder at once: each adds its item; none is lost."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from s2dask.maps.stac import update_catalog

    source = Path(runs[0].out) / "item.json"

    def commit(i: int) -> None:
        folder = tmp_path / f"s{i:02d}"
        folder.mkdir()
        shutil.copy(source, folder / "item.json")
        update_catalog(tmp_path)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(commit, range(16)))
    links = [x["href"] for x in json.loads((tmp_path / "catalog.json").read_text())["links"] if x["rel"] == "item"]
    assert links == [f"./s{i:02d}/item.json" for i in range(16)]


def test_item_and_catalogue_on_object_storage(runs, moto_url, moto_s3):
    """item.json written into an s3:// partial output is committed with it; the catalogue follows."""
    from _s3 import fresh_bucket

    from s2dask.io.storage import Location, atomic_write_json, commit_dir
    from s2dask.maps.stac import update_catalog, write_map_item
    from s2dask.model.bundle import load_model

    record = runs[1].record
    with fresh_bucket(moto_s3, "s2dask-area"):
        out = Location("s3://s2dask-area/out")
        partial, final = out.join(".scene.partial"), out.join("scene")
        atomic_write_json(partial.join("job.json"), {})
        write_map_item(partial, record, classes=load_model(record["model"]["path"], check_keras=False).classes)
        commit_dir(partial, final, overwrite=False, appeared="appeared")
        assert update_catalog(out) == ["./scene/item.json"]
        item = json.loads(final.join("item.json").read_text())
        assert item["id"] == "scene" and item["assets"]["classes"]["href"] == "./classes.tif"
        assert not partial.exists()
