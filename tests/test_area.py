"""Area jobs: classify only an area of interest, STAC items and catalogue, mosaics across UTM zones.

Real files and a real LocalCluster (``cluster_client``): the synthetic scene of ``synth_dir``
(300 x 260 px at 10 m, EPSG:32617) classified with chunks of 64 (25 chunks) with and without an
area of interest given in WGS84; two small tiles either side of the UTM 17N/18N boundary for the
mosaic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2dask.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=240)


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


def test_bad_aoi_files_are_one_line_exit_2(tmp_path, synth_dir, tiny_model):
    from s2dask.errors import AreaError
    from s2dask.scene.aoi import read_aoi

    gpd.GeoDataFrame(geometry=[shapely.Point(X0 + 10, Y0 - 10)], crs="EPSG:32617").to_file(tmp_path / "points.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.box(X0, Y0 - 100, X0 + 100, Y0)]).to_file(tmp_path / "nocrs.shp")
    (tmp_path / "broken.gpkg").write_text("not a vector file")
    for name, words in (("points.gpkg", "is not a polygon layer (Point)"), ("nocrs.shp", "has no CRS"),
                        ("broken.gpkg", "cannot read the area of interest")):
        proc = _cli("classify", str(synth_dir / "scene.tif"), "-m", str(tiny_model), "-o", str(tmp_path / "o"),
                    "--aoi", str(tmp_path / name), "--quiet")  # a process of its own: GDAL's stderr counts
        err = proc.stderr
        assert proc.returncode == 2 and words in err and len(err.strip().splitlines()) == 1, err
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
    classify(c, tiny_model, out, client=cluster_client, chunks=CHUNK, progress=False, quicklook=False,
             uncertainty="margin", probabilities=True)
    assert listed() == ["a", "b", "c"]
    assets = pystac.Item.from_file(str(out / "c" / "item.json")).assets
    assert "quicklook" not in assets and assets["uncertainty_margin"].href == "./uncertainty-margin.tif"
    assert "probabilities" in assets["zarr"].extra_fields["s2dask:variables"]


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


# ---------------------------------------------------------------------------------------- mosaic

# two 2 km tiles at 43 N either side of -78 deg (the UTM 17N / 18N boundary), overlapping by ~1 km
TILE_A = ("EPSG:32617", (742900.0, 4766200.0))
TILE_B = ("EPSG:32618", (254800.0, 4766200.0))


@pytest.fixture(scope="module")
def tiles(tiny_model, cluster_client, tmp_path_factory):
    from s2dask.scene.synthetic import make_scene

    d = tmp_path_factory.mktemp("tiles")
    outs = []
    for name, (crs, origin), seed in (("A", TILE_A, 5), ("B", TILE_B, 6)):
        scene = make_scene(d / f"{name}.tif", size=(200, 200), seed=seed, crs=crs, origin=origin)
        classify(scene, tiny_model, d / f"out-{name}", client=cluster_client, chunks=100, progress=False,
                 quicklook=False)
        outs.append(d / f"out-{name}")
    return outs


def nearest(out: Path, cog: Path) -> tuple[np.ndarray, np.ndarray]:
    """A tile's classes and confidence at the centres of the mosaic's pixels (nearest neighbour,
    computed here with pyproj, not GDAL): 255 / 0 outside the tile."""
    from pyproj import Transformer

    with rasterio.open(cog) as m:
        t, crs, (ny, nx) = m.transform, m.crs, (m.height, m.width)
    tile = next(out.iterdir())
    with rasterio.open(tile / "classes.tif") as src:
        classes, inv, tcrs = src.read(1), ~src.transform, src.crs
    conf = xr.open_zarr(tile / "classes.zarr")["confidence"].values
    cols, rows = np.meshgrid(np.arange(nx) + 0.5, np.arange(ny) + 0.5)
    xs, ys = t @ (cols, rows)
    tx, ty = Transformer.from_crs(crs, tcrs, always_xy=True).transform(xs, ys)
    c, r = inv @ (tx, ty)
    r, c = np.floor(r).astype(int), np.floor(c).astype(int)
    inside = (r >= 0) & (r < classes.shape[0]) & (c >= 0) & (c < classes.shape[1])
    out_c = np.full((ny, nx), 255, dtype="uint8")
    out_p = np.zeros((ny, nx), dtype="uint8")
    out_c[inside], out_p[inside] = classes[r[inside], c[inside]], conf[r[inside], c[inside]]
    return out_c, out_p


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean()) if a.size else 1.0


def _interior(region: np.ndarray) -> np.ndarray:
    """``region`` without its edge pixels (GDAL and pyproj round a few pixel centres apart: pixels
    at a tile's edge, and some 0.1 % in EPSG:4326 whose centre lies on a source pixel's edge)."""
    out = region.copy()
    out[1:] &= region[:-1]
    out[:-1] &= region[1:]
    out[:, 1:] &= region[:, :-1]
    out[:, :-1] &= region[:, 1:]
    out[[0, -1], :] = out[:, [0, -1]] = False
    return out


@pytest.mark.parametrize("crs", ["EPSG:32617", "EPSG:4326"])
def test_mosaic_across_utm_zones_follows_the_overlap_rule(tiles, cluster_client, tmp_path, crs):
    from s2dask.maps.mosaic import mosaic

    for rule in ("confidence", "first", "last"):
        res = mosaic(tiles, tmp_path / f"{rule}.tif", crs=crs, overlap=rule, client=cluster_client,
                     confidence=rule == "confidence")
        with rasterio.open(res.path) as m:
            got = m.read(1)
            assert m.crs.to_epsg() == int(crs[5:]) and m.nodata == 255
            assert json.loads(m.tags()["CLASS_NAMES"]) and m.colormap(1)
        (a, ca), (b, cb) = nearest(tiles[0], Path(res.path)), nearest(tiles[1], Path(res.path))
        only_a, only_b = _interior((a != 255) & (b == 255)), _interior((b != 255) & (a == 255))
        both = _interior((a != 255) & (b != 255))
        assert only_a.sum() > 5000 and only_b.sum() > 5000 and both.sum() > 5000
        assert (a[both] != b[both]).mean() > 0.2  # the tiles disagree there: the rule decides
        assert _agree(got[only_a], a[only_a]) > 0.995 and _agree(got[only_b], b[only_b]) > 0.995
        want = {"first": a, "last": b, "confidence": np.where(cb > ca, b, a)}[rule]
        assert _agree(got[both], want[both]) > 0.995, rule
        # outside both tiles: 255 (but for a few pixels whose centre falls on a tile's very edge)
        neither = (a == 255) & (b == 255)
        assert (got[neither] != 255).mean() < 0.005
        if rule == "confidence":
            with rasterio.open(res.confidence) as c:
                conf = c.read(1)
            # confidence varies pixel to pixel: the 4326 centres rounded apart show more here
            assert _agree(conf[both], np.maximum(ca, cb)[both]) > 0.98


def test_mosaic_cli_item_and_aoi(tiles, tmp_path):
    pystac = pytest.importorskip("pystac")
    odc_stac = pytest.importorskip("odc.stac")

    # an area across the boundary, in WGS84: the mosaic covers it, outside it is 255
    area = write_aoi(tmp_path / "area.geojson", [shapely.box(-78.006, 43.0, -77.99, 43.01)], crs="EPSG:4326")
    out = tmp_path / "m" / "mosaic.tif"
    # the command in a process of its own, as users run it (an in-process mosaic on Dask's
    # threads left GDAL state that changed a later test's all_touched rasterisation)
    proc = _cli("mosaic", *map(str, tiles), "--out", str(out), "--crs", "EPSG:4326", "--aoi", str(area),
                "--overlap", "first", "--block", "128")
    assert proc.returncode == 0, proc.stderr
    assert "mosaic.tif" in proc.stdout
    item = pystac.Item.from_file(str(out.with_name("mosaic.json")))
    assert item.properties["proj:code"] == "EPSG:4326" and item.properties["s2dask:overlap"] == "first"
    assert item.assets["classes"].extra_fields["classification:classes"]
    loaded = odc_stac.load([item], bands=["classes"])
    with rasterio.open(out) as m:
        got = m.read(1)
        west, south, east, north = m.bounds
    np.testing.assert_array_equal(loaded["classes"].values[0], got)
    assert west <= -78.006 and east >= -77.99 and south <= 43.0 and north >= 43.01
    assert east - west < 0.0165 and north - south < 0.0105
    assert (got != 255).mean() > 0.9  # the area lies inside the two tiles
    # bad input: one line, exit 2
    elsewhere = write_aoi(tmp_path / "far.geojson", [shapely.box(10, 10, 11, 11)], crs="EPSG:4326")
    for extra, words in ((["--crs", "EPSG:999999"], "unknown CRS"),
                         (["--crs", "EPSG:4326", "--aoi", str(elsewhere)], "misses every map")):
        proc = _cli("mosaic", *map(str, tiles), "--out", str(tmp_path / "x.tif"), *extra)
        err = proc.stderr
        assert proc.returncode == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_mosaic_of_maps_with_different_class_tables_is_refused(tiles, tmp_path, capsys):
    import shutil

    from s2dask.cli.main import main

    other = tmp_path / "other"
    shutil.copytree(tiles[1], other)
    cog = next(other.iterdir()) / "classes.tif"
    with rasterio.open(cog, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        names = json.loads(ds.tags()["CLASS_NAMES"])
        names[next(iter(names))] = "something else"
        ds.update_tags(CLASS_NAMES=json.dumps(names))
    code = main(["mosaic", str(tiles[0]), str(other), "--out", str(tmp_path / "x.tif"), "--crs", "EPSG:32617"])
    err = capsys.readouterr().err
    assert code == 2 and "different class tables" in err and len(err.strip().splitlines()) == 1, err


def test_mosaic_larger_than_a_worker_memory_limit(tiles, tmp_path):
    """511 MiB of classes at 0.11 m on workers limited to 400 MiB: blocks keep memory bounded.

    A worker starts at about 245 MiB and peaked at 293-309 MiB for this mosaic at 0.13 m and at
    0.11 m alike (sampled every 50 ms): the peak does not grow with the mosaic. A 300 MiB limit
    (95%: 285 MiB) killed the COG task's workers in one CI run."""
    import dask
    from distributed import Client, LocalCluster

    from s2dask.maps.mosaic import mosaic

    limit = 400 * 2**20
    config = {"distributed.worker.memory.pause": False, "distributed.worker.memory.spill": False,
              "distributed.worker.memory.target": False}  # only the nanny's kill at 95% is left
    with dask.config.set(config), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                               dashboard_address=None, memory_limit=limit) as cluster, \
            Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        res = mosaic(tiles, tmp_path / "big.tif", crs="EPSG:32617", resolution=0.11, overlap="first",
                     client=client, overview_resampling="nearest")
        assert client.run(os.getpid) == pids  # no worker was killed and restarted
    ny, nx = res.shape
    assert ny * nx > limit
    with rasterio.open(res.path) as m:
        assert m.overviews(1) and (m.height, m.width) == (ny, nx)
        centre = m.read(1, window=((ny // 2, ny // 2 + 64), (nx // 4, nx // 4 + 64)))
    assert (centre != 255).all()


def test_sample_respects_the_aoi(synth_dir, aoi_file, tmp_path):
    import pandas as pd

    from s2dask.training.labels import sample

    points = pd.read_csv(synth_dir / "points.csv")[["x", "y", "Class_ID"]]
    points.to_csv(tmp_path / "labels.csv", index=False)
    kw = dict(labels_crs="EPSG:32617", client="threads", chunks=CHUNK)
    full = sample(synth_dir / "scene.tif", tmp_path / "labels.csv", out=tmp_path / "all.csv", **kw)
    part = sample(synth_dir / "scene.tif", tmp_path / "labels.csv", out=tmp_path / "aoi.csv", aoi=aoi_file, **kw)
    a, b = pd.read_csv(full.table), pd.read_csv(part.table)
    inside = inside_mask(aoi_file, synth_dir / "scene.tif")
    row = lambda t: ((Y0 - t["y"]) // 10).astype(int)  # noqa: E731
    col = lambda t: ((t["x"] - X0) // 10).astype(int)  # noqa: E731
    assert 0 < len(b) < len(a) and inside[row(b), col(b)].all()
    pd.testing.assert_frame_equal(a[inside[row(a), col(a)]].reset_index(drop=True), b.reset_index(drop=True),
                                  check_dtype=False)
    assert part.summary["outside_aoi_pixels_left_out"] >= len(a) - len(b)  # (before nodata is left out)
    assert part.summary["aoi"]["sha256"]
