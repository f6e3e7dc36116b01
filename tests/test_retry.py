"""s2dask.io.retry against real faults: moto's S3 behind a proxy that answers 503 or drops connections.

Every storage call here is real (s3fs/aiobotocore, GDAL's /vsis3/, zarr); only the network
between them and moto is made unreliable, by tests/_faulty_proxy.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

from _cluster import make_tiny_scene  # noqa: E402
from _faulty_proxy import Fault, FaultyProxy  # noqa: E402
from _s3 import fresh_bucket, isolate_aws  # noqa: E402

from s2dask.errors import ParameterError, StorageError  # noqa: E402
from s2dask.io import storage  # noqa: E402
from s2dask.io.retry import (  # noqa: E402
    OTHER,
    PERMANENT,
    TRANSIENT,
    RetryCounter,
    RetryPolicy,
    call_with_retry,
    classify_error,
    read_with_retry,
    redact,
    single_layer,
)

BUCKET = "s2dask-retry"
FAST = RetryPolicy(retries=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def proxy(moto_url, monkeypatch, tmp_path):
    """A fault proxy in front of moto, AWS_* pointing at it, a bucket holding scene.tif."""
    isolate_aws(monkeypatch, tmp_path)
    client = boto3.client("s3", endpoint_url=moto_url)
    with fresh_bucket(client, BUCKET):
        local = make_tiny_scene(tmp_path / "scene.tif", width=128, height=96)
        client.upload_file(str(local), BUCKET, "scene.tif")
        with FaultyProxy(moto_url) as p:
            monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
            p.local_scene = local
            yield p


def s3fs_single_layer(url: str):
    """An s3fs filesystem where call_with_retry is the only retry layer."""
    options = FAST.storage_options(url, storage.storage_options_for(url))
    fs, path = storage.fs_for(url, storage_options=options, fresh=True)
    return single_layer(fs), path


def gdal_read(url: str):
    import rasterio

    with rasterio.Env(**storage.gdal_env_for(url)), rasterio.open(url) as src:
        return src.read()


def expected_pixels(proxy):
    import rasterio

    with rasterio.open(proxy.local_scene) as src:
        return src.read()


# ----------------------------------------------------------------------------- policy


@pytest.mark.parametrize("bad", [-1, 1.5, "x"])
def test_negative_or_odd_retries_is_one_line(bad):
    with pytest.raises(ParameterError) as err:
        RetryPolicy(retries=bad)
    assert "retries must be an integer >= 0" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ParameterError, match="S2DASK_RETRIES"):
        RetryPolicy.from_env({"S2DASK_RETRIES": "many"})
    with pytest.raises(ParameterError, match=">= 0"):
        RetryPolicy.from_env({"S2DASK_RETRIES": "-2"})


def test_backoff_doubles_is_capped_and_jittered():
    p = RetryPolicy(retries=8, base_delay=1.0, max_delay=10.0, jitter=0.5)
    rng = random.Random(0)
    delays = [p.delay(i, rng) for i in range(1, 9)]
    for i, d in enumerate(delays, start=1):
        full = min(10.0, 2 ** (i - 1))
        assert full / 2 <= d <= full
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered
    assert RetryPolicy(retries=0).gdal_env() == {"GDAL_HTTP_MAX_RETRY": "0", "GDAL_HTTP_RETRY_DELAY": "0.5"}
    assert RetryPolicy().storage_options("/local", {}) == {}
    s3 = RetryPolicy().storage_options("s3://b/x", {"client_kwargs": {"region_name": "x"}})
    assert s3["config_kwargs"]["retries"]["total_max_attempts"] == 1


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_classify_error_types_and_gdal_texts():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, ReadTimeoutError
    from rasterio.errors import RasterioIOError

    transient = [_client_error("SlowDown", 503), _client_error("InternalError", 500),
                 _client_error("Throttling", 400), ConnectionResetError(104, "reset"),
                 TimeoutError(), ReadTimeoutError(endpoint_url="http://x"),
                 EndpointConnectionError(endpoint_url="http://x"), OSError(16, "Please reduce your request rate."),
                 RasterioIOError("HTTP response code: 503"), RasterioIOError("CURL error: Connection reset by peer"),
                 RasterioIOError("Operation timed out after 30000 milliseconds")]
    permanent = [_client_error("NoSuchKey", 404), _client_error("AccessDenied", 403),
                 _client_error("InvalidAccessKeyId", 403), FileNotFoundError("s3://b/x"),
                 PermissionError("denied"), NoCredentialsError(),
                 RasterioIOError("'/vsis3/b/x.tif' does not exist in the file system, and is not "
                                 "recognized as a supported dataset name."),
                 RasterioIOError("HTTP response code: 403")]
    for exc in transient:
        assert classify_error(exc) == TRANSIENT, exc
    for exc in permanent:
        assert classify_error(exc) == PERMANENT, exc
    assert classify_error(ValueError("bad value")) == OTHER
    assert classify_error(RasterioIOError("not a TIFF file")) == OTHER
    # the block reader wraps GDAL's error in a StorageError: the cause decides
    try:
        try:
            raise RasterioIOError("HTTP response code: 503")
        except RasterioIOError as inner:
            raise StorageError("reading window y=0:8 x=0:8 of s3://b/x.tif failed") from inner
    except StorageError as wrapped:
        assert classify_error(wrapped) == TRANSIENT
    assert classify_error(StorageError("no cause")) == OTHER


def test_redact_secrets():
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE123"}
    text = ("key AKIAEXAMPLE123 secret wJalrXUtnFEMI/K7MDENG url "
            "https://b.s3.amazonaws.com/x?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abc123")
    out = redact(text, env)
    assert "wJalrXUtnFEMI" not in out and "AKIAEXAMPLE123" not in out and "abc123" not in out
    assert "X-Amz-Signature=***" in out


def test_call_with_retry_without_storage():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "Connection reset by peer")
        return "ok"

    counter = RetryCounter()
    assert call_with_retry(flaky, policy=FAST, what="x", counter=counter, sleep=slept.append) == "ok"
    assert counter.retries == 2 and len(slept) == 2 and "ConnectionResetError" in counter.reasons[0]
    with pytest.raises(ValueError):  # not a storage failure: raised as is, once
        call_with_retry(lambda: int("x"), policy=FAST, what="x", sleep=slept.append)


# ----------------------------------------------------------------------------- s3fs through the proxy


def test_s3fs_write_retried_once_per_503(proxy):
    url = f"s3://{BUCKET}/out/marker.json"
    fs, path = s3fs_single_layer(url)
    proxy.set_faults([Fault(methods={"PUT"}, path=r"marker\.json", first=2)])
    counter = RetryCounter()
    call_with_retry(fs.pipe_file, path, b'{"chunk": [0, 0]}', policy=FAST, what=url,
                    action="write", counter=counter)
    assert counter.retries == 2 and proxy.failed == 2
    assert counter.reasons[0] == "503 SlowDown"
    # one layer: the server saw exactly the 3 attempts, no hidden retries multiplied in
    assert sum(1 for m, p, _ in proxy.log if m == "PUT" and "marker.json" in p) == 3
    assert fs.cat_file(path) == b'{"chunk": [0, 0]}'


def test_s3fs_read_retried_after_connection_resets(proxy):
    url = f"s3://{BUCKET}/scene.tif"
    fs, path = s3fs_single_layer(url)
    proxy.set_faults([Fault(methods={"GET"}, path=r"scene\.tif", first=2, kind="reset")])
    counter = RetryCounter()
    data = call_with_retry(fs.cat_file, path, policy=FAST, what=url, counter=counter)
    assert data == proxy.local_scene.read_bytes()
    assert proxy.failed == 2 and sum(1 for m, p, _ in proxy.log if m == "GET" and "scene" in p) == 3
    # aiohttp itself re-sends an idempotent GET once when a pooled keep-alive connection turns
    # out closed (stale-connection handling, not a retry policy): that reset is not counted
    assert counter.retries in (1, 2)


def test_zarr_region_write_retried(proxy):
    zarr = pytest.importorskip("zarr")
    from zarr.storage import FsspecStore

    url = f"s3://{BUCKET}/out/classes.zarr"
    opts = FAST.storage_options(url, {**storage.storage_options_for(url), "asynchronous": True})
    fs, path = storage.fs_for(url, storage_options=opts, fresh=True)
    store = FsspecStore(single_layer(fs), path=path)
    arr = zarr.create_array(store, shape=(8, 8), chunks=(4, 4), dtype="uint8", fill_value=255)
    proxy.set_faults([Fault(methods={"PUT"}, path=r"classes\.zarr/c/", first=1)])
    counter = RetryCounter()

    def write():
        arr[0:4, 4:8] = 7

    call_with_retry(write, policy=FAST, what=f"chunk y=0:4 x=4:8 of {url}", action="write",
                    counter=counter)
    assert counter.retries == 1 and proxy.failed == 1
    got = zarr.open_array(FsspecStore(fs, path=path, read_only=True))[:]
    assert (got[0:4, 4:8] == 7).all() and (got[:, 0:4] == 255).all()


# ----------------------------------------------------------------------------- GDAL /vsis3/


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_gdal_vsis3_read_retried_by_gdal_and_counted(proxy, kind):
    url = f"s3://{BUCKET}/scene.tif"
    proxy.set_faults([Fault(methods={"GET"}, path=r"scene\.tif", first=2, kind=kind)])
    counter = RetryCounter()
    policy = RetryPolicy(retries=3, base_delay=0.05)
    data = read_with_retry(gdal_read, url, policy=policy, what=url, counter=counter)
    np.testing.assert_array_equal(data, expected_pixels(proxy))
    assert proxy.failed == 2 and counter.retries == 2  # counted once, by GDAL's own retries
    assert all(r.startswith("GDAL HTTP") for r in counter.reasons)


def test_gdal_without_retry_settings_fails_on_one_503(proxy):
    """Why the policy's GDAL options are needed: GDAL 3.10 does not retry by default."""
    from rasterio.errors import RasterioIOError

    url = f"s3://{BUCKET}/scene.tif"
    proxy.set_faults([Fault(methods={"GET"}, path=r"scene\.tif", first=1)])
    with pytest.raises(RasterioIOError) as err:
        gdal_read(url)
    assert classify_error(err.value) == TRANSIENT


# ----------------------------------------------------------------------------- permanent, exhausted


def test_missing_key_fails_at_once(proxy):
    url = f"s3://{BUCKET}/no-such-scene.tif"
    fs, path = s3fs_single_layer(url)
    counter = RetryCounter()
    with pytest.raises(StorageError) as err:
        call_with_retry(fs.cat_file, path, policy=FAST, what=url, counter=counter)
    msg = str(err.value)
    assert msg.startswith(f"cannot read {url}: it does not exist") and "not retried" in msg
    assert "\n" not in msg and counter.retries == 0
    with pytest.raises(StorageError, match="does not exist") as err:
        read_with_retry(gdal_read, url, policy=FAST, what=url, counter=counter)
    assert counter.retries == 0


def test_access_denied_fails_at_once(proxy):
    url = f"s3://{BUCKET}/scene.tif"
    fs, path = s3fs_single_layer(url)
    proxy.set_faults([Fault(methods={"GET"}, path=r"scene\.tif", first=100, kind="403")])
    counter = RetryCounter()
    with pytest.raises(StorageError) as err:
        call_with_retry(fs.cat_file, path, policy=FAST, what=url, counter=counter)
    assert str(err.value).startswith(f"permission denied to read {url}")
    assert counter.retries == 0 and proxy.failed == 1
    with pytest.raises(StorageError, match="permission denied to read"):
        read_with_retry(gdal_read, url, policy=FAST, what=url, counter=counter)
    assert counter.retries == 0


def test_retries_exhausted_names_input_and_attempts(proxy):
    url = f"s3://{BUCKET}/out/never.json"
    fs, path = s3fs_single_layer(url)
    proxy.set_faults([Fault(methods={"PUT"}, path="never", first=1000)])
    policy = RetryPolicy(retries=2, base_delay=0.01)
    counter = RetryCounter()
    with pytest.raises(StorageError) as err:
        call_with_retry(fs.pipe_file, path, b"x", policy=policy, what=url, action="write",
                        counter=counter)
    msg = str(err.value)
    assert msg.startswith(f"could not write {url}: 3 attempts failed with transient errors")
    assert "503 SlowDown" in msg and "\n" not in msg
    assert proxy.failed == 3 and counter.retries == 2  # bounded: retries + 1 requests, no more

    scene = f"s3://{BUCKET}/scene.tif"
    proxy.set_faults([Fault(methods={"GET"}, path=r"scene\.tif", first=1000)])
    with pytest.raises(StorageError) as err:
        read_with_retry(gdal_read, scene, policy=policy, what=f"window y=0:96 x=0:128 of {scene}")
    msg = str(err.value)
    assert msg.startswith(f"could not read window y=0:96 x=0:128 of {scene}: 3 attempts failed")
    # GDAL's retries, bounded: the object was asked 3 times (then GDAL lists its "directory" once)
    assert sum(1 for m, p, a in proxy.log if p.endswith("/scene.tif") and a == "503") == 3
