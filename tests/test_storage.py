"""s2dask.io.storage against a real S3 API: moto's server on loopback, no other network."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("boto3")

from _cluster import make_tiny_scene  # noqa: E402
from _s3 import fresh_bucket  # noqa: E402

from s2dask.errors import StorageError  # noqa: E402
from s2dask.io import storage  # noqa: E402

BUCKET = "s2dask-test"


@pytest.fixture
def s3(moto_url, moto_s3):
    """AWS_* pointing at the moto server, a fresh bucket; yields the endpoint URL."""
    with fresh_bucket(moto_s3, BUCKET):
        yield moto_url


# ------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("url, remote, proto", [
    ("s3://bucket/key", True, "s3"),
    ("S3://bucket/key", True, "s3"),
    ("gs://bucket/key", True, "gs"),
    ("/data/out", False, "file"),
    ("relative/dir", False, "file"),
    ("file:///data/out", False, "file"),
    ("C:/data/out", False, "file"),
])
def test_is_remote(url, remote, proto):
    assert storage.is_remote(url) is remote
    assert storage.protocol_of(url) == proto


def test_join():
    assert storage.join("s3://b/prefix/", "scene", "job.json") == "s3://b/prefix/scene/job.json"
    assert storage.join("/data/out", "scene") == os.path.join("/data/out", "scene")


def test_gdal_env_for_custom_endpoint():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-central-1"}
    assert storage.gdal_env_for("s3://b/scene.tif", env) == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "AWS_S3_ENDPOINT": "127.0.0.1:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "eu-central-1",
    }
    https = storage.gdal_env_for("s3://b/x.tif", {"AWS_ENDPOINT_URL_S3": "https://minio.example:443",
                                                  "AWS_ENDPOINT_URL": "http://ignored:1"})
    assert https["AWS_S3_ENDPOINT"] == "minio.example:443" and https["AWS_HTTPS"] == "YES"
    # explicit GDAL settings win; AWS itself needs no endpoint settings; local paths need nothing
    assert storage.gdal_env_for("s3://b/x", {"AWS_ENDPOINT_URL": "http://h:1", "AWS_VIRTUAL_HOSTING": "TRUE"}
                                )["AWS_VIRTUAL_HOSTING"] == "TRUE"
    assert storage.gdal_env_for("s3://b/x", {}) == {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    assert storage.gdal_env_for("s3://b/x", {"AWS_NO_SIGN_REQUEST": "YES"})["AWS_NO_SIGN_REQUEST"] == "YES"
    assert storage.gdal_env_for("/data/scene.tif", env) == {}
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in storage.gdal_env_for("s3://b/x", env))


def test_storage_options_for():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "us-west-2",
           "AWS_SECRET_ACCESS_KEY": "never-copied"}
    assert storage.storage_options_for("s3://b/out", env) == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us-west-2"}}
    assert storage.storage_options_for("s3://b/out", {"AWS_NO_SIGN_REQUEST": "yes"}) == {"anon": True}
    assert storage.storage_options_for("s3://b/out", {}) == {}
    assert storage.storage_options_for("/local", env) == {}


# ------------------------------------------------------------------------------- local checks


def test_local_output_checks(tmp_path):
    storage.check_output_location(tmp_path / "new" / "deeper")  # creatable: fine, nothing made
    assert not (tmp_path / "new").exists()
    storage.check_output_location(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(StorageError, match="is a file, not a directory") as err:
        storage.check_output_location(a_file)
    with pytest.raises(StorageError, match="is a file, not a directory") as err:
        storage.check_output_location(a_file / "sub")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_local_output_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            storage.check_output_location(ro / "out")
    finally:
        ro.chmod(0o700)


def test_local_input_checks(tmp_path):
    scene = make_tiny_scene(tmp_path / "scene.tif")
    storage.check_input_location(scene)
    with pytest.raises(StorageError, match=r"input .*missing\.tif does not exist"):
        storage.check_input_location(tmp_path / "missing.tif")


# ------------------------------------------------------------------------------- S3


def test_geotiff_round_trip_through_s3(s3, tmp_path):
    import rasterio

    local = make_tiny_scene(tmp_path / "scene.tif")
    url = f"s3://{BUCKET}/scenes/scene.tif"
    storage.check_output_location(f"s3://{BUCKET}/scenes")
    fs, path = storage.fs_for(url)
    assert path == f"{BUCKET}/scenes/scene.tif"
    fs.put_file(str(local), path)
    storage.check_input_location(url)
    with rasterio.open(local) as src:
        expected, profile = src.read(), src.profile
    with rasterio.Env(**storage.gdal_env_for(url)):
        with rasterio.open(url) as src:
            assert src.crs == profile["crs"] and src.transform == profile["transform"]
            assert src.descriptions[0] == "B02"
            np.testing.assert_array_equal(src.read(), expected)


def test_zarr_round_trip_through_s3(s3):
    xr = pytest.importorskip("xarray")
    url = f"s3://{BUCKET}/out/classes.zarr"
    ds = xr.Dataset({"classes": (("y", "x"), np.arange(12, dtype="uint8").reshape(3, 4))})
    ds.to_zarr(url, storage_options=storage.storage_options_for(url), mode="w")
    back = xr.open_zarr(url, storage_options=storage.storage_options_for(url))
    np.testing.assert_array_equal(back["classes"].values, ds["classes"].values)


def test_output_missing_bucket(s3):
    with pytest.raises(StorageError) as err:
        storage.check_output_location("s3://s2dask-no-such-bucket/out")
    msg = str(err.value)
    assert "bucket 's2dask-no-such-bucket' does not exist" in msg and "\n" not in msg
    with pytest.raises(StorageError, match="s2dask-no-such-bucket' does not exist"):
        storage.check_input_location("s3://s2dask-no-such-bucket/scene.tif")


def test_input_missing_object(s3):
    with pytest.raises(StorageError, match=r"no object or prefix s3://s2dask-test/nothing\.tif"):
        storage.check_input_location(f"s3://{BUCKET}/nothing.tif")


def test_missing_credentials(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    for check in (storage.check_output_location, storage.check_input_location):
        with pytest.raises(StorageError) as err:
            check(f"s3://{BUCKET}/out")
        assert str(err.value).startswith(f"no AWS credentials found for s3://{BUCKET}/out")
        assert "AWS_ACCESS_KEY_ID" in str(err.value)


def test_rejected_credentials(s3, monkeypatch):
    """A server that checks signatures (moto with authentication on) rejects unknown keys."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    with monkeypatch.context() as m, pytest.raises(StorageError) as err:  # undone before teardown
        m.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        m.setattr(ActionAuthenticatorMixin, "request_count", 0)
        storage.check_output_location(f"s3://{BUCKET}/out")
    msg = str(err.value)
    assert msg.startswith(f"the credentials were rejected when trying to write to s3://{BUCKET}/out"), msg


def test_unreachable_endpoint(s3, monkeypatch):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match="cannot reach the storage endpoint"):
        storage.check_output_location(f"s3://{BUCKET}/out")


# ------------------------------------------------------------------------------- s2dask classify on S3


def _classify(args, timeout=240):
    import subprocess
    import sys

    from _cluster import recipe_env

    return subprocess.run([sys.executable, "-m", "s2dask.cli", "classify", *map(str, args)],
                          env=recipe_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from _cluster import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "model")


def _check_outputs(fs, out: str, local_scene, model_dir) -> None:
    """The Zarr store, COG, record and quicklook under ``out/scene`` match the model's own answer."""
    import json

    import rasterio
    import xarray as xr

    from s2dask.model.bundle import load_model

    with rasterio.open(local_scene) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    expected = load_model(model_dir).predict(data.reshape(data.shape[0], -1).T).reshape(data.shape[1:])
    result = f"{out}/scene"
    ds = xr.open_zarr(f"{result}/classes.zarr", storage_options=storage.storage_options_for(result))
    np.testing.assert_array_equal(ds["classes"].values, expected)
    with rasterio.Env(**storage.gdal_env_for(result)):
        with rasterio.open(f"{result}/classes.tif") as cog:
            assert cog.crs == crs and cog.transform == transform and cog.dtypes[0] == "uint8"
            np.testing.assert_array_equal(cog.read(1), expected)
    _, path = storage.fs_for(result)
    assert json.loads(fs.cat_file(f"{path}/job.json"))["status"] == "complete"
    assert fs.exists(f"{path}/quicklook.png")
    item = json.loads(fs.cat_file(f"{path}/item.json"))  # the STAC item, committed with the rest
    assert item["assets"]["classes"]["href"] == "./classes.tif"
    catalog = json.loads(fs.cat_file(f"{path.rsplit('/', 1)[0]}/catalog.json"))
    assert {"rel": "item", "href": "./scene/item.json", "type": "application/geo+json"} in catalog["links"]


def test_classify_cli_writes_s3(s3, tmp_path, model_dir):
    """A local scene, outputs written to s3:// and read back through fsspec and GDAL."""
    local = make_tiny_scene(tmp_path / "scene.tif")
    out = f"s3://{BUCKET}/runs/one"
    proc = _classify([local, "--model", model_dir, "--out", out, "--chunks", 32, "--workers", 1, "-q"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    fs, _ = storage.fs_for(out)
    _check_outputs(fs, out, local, model_dir)


def test_classify_cli_reads_s3(s3, tmp_path, model_dir):
    """A scene read from s3:// (GeoTIFF through GDAL's /vsis3/), outputs on s3:// too."""
    from s2dask.errors import SceneError
    from s2dask.scene import open_scene

    local = make_tiny_scene(tmp_path / "scene.tif")
    scene = f"s3://{BUCKET}/scenes/scene.tif"
    fs, path = storage.fs_for(scene)
    fs.put_file(str(local), path)
    try:
        open_scene(scene)
    except SceneError as exc:
        pytest.skip(f"s2dask.scene cannot open s3:// scenes yet: {exc}")
    out = f"s3://{BUCKET}/runs/two"
    proc = _classify([scene, "--model", model_dir, "--out", out, "--chunks", 32, "--workers", 1, "-q"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_outputs(fs, out, local, model_dir)


def test_classify_cli_s3_errors_are_one_line(s3, tmp_path, model_dir, monkeypatch):
    scene = make_tiny_scene(tmp_path / "scene.tif")
    proc = _classify([scene, "--model", model_dir, "--out", "s3://s2dask-no-such-bucket/out", "-q"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bucket 's2dask-no-such-bucket' does not exist" in lines[0], proc.stderr

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    proc = _classify([scene, "--model", model_dir, "--out", f"s3://{BUCKET}/out", "-q"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no AWS credentials found" in lines[0], proc.stderr
