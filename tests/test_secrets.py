"""Credentials never reach job.json, batch.json, logs, error lines or written files.

``s2dask classify`` runs as a subprocess with a unique test secret in its environment,
reading from and writing to moto's S3 on loopback (through the fault proxy, so that storage
retries and their reasons are recorded in chunk markers and job.json, and the worker logs
are on stderr with ``S2DASK_DEBUG=1``); then every object written to the bucket, every file under the test's directory, and the command's stdout and stderr are
searched for the secret (and for the access key id).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from _cluster import make_tiny_model, make_tiny_scene, recipe_env  # noqa: E402
from _faulty_proxy import Fault, FaultyProxy  # noqa: E402
from _s3 import aws_env  # noqa: E402

BUCKET = "s2dask-secrets"


def _env(endpoint, tmp_path, key, secret, token):
    env = {k: v for k, v in recipe_env().items() if not k.startswith("AWS_")}
    env.update(aws_env(tmp_path, endpoint=endpoint, key=key, secret=secret, token=token))
    env["S2DASK_DEBUG"] = "1"
    return env


def _grep_everything(needles, *, s3, tmp_path, texts) -> list[str]:
    found = []
    for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        found += [f"s3://{BUCKET}/{obj['Key']}" for n in needles if n.encode() in body]
    for root, _, files in os.walk(tmp_path):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            found += [path for n in needles if n.encode() in data]
    found += [f"output {i}" for i, t in enumerate(texts) for n in needles if n in t]
    return found


def test_no_secret_in_outputs_records_logs_or_errors(moto_url, tmp_path):
    key = f"AKIATEST{uuid.uuid4().hex[:12].upper()}"
    secret, token = f"s3cr3t-{uuid.uuid4().hex}", f"t0ken-{uuid.uuid4().hex}"
    s3 = boto3.client("s3", endpoint_url=moto_url, aws_access_key_id=key,
                      aws_secret_access_key=secret, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    scene = make_tiny_scene(tmp_path / "scene.tif")
    s3.upload_file(str(scene), BUCKET, "scenes/scene.tif")
    model = make_tiny_model(tmp_path / "model")
    # through the fault proxy: retries happen, and their reasons go to markers and job.json
    proxy = FaultyProxy(moto_url, [
        Fault(methods={"PUT"}, path=r"\.partial/(classes\.zarr/classes/c/|chunks/)", first=3),
        Fault(methods={"GET"}, path=r"/scenes/scene\.tif", fraction=0.2, seed=3),
    ]).start()
    env = _env(proxy.url, tmp_path, key, secret, token)
    env["S2DASK_RETRY_DELAY"] = "0.05"
    cli = [sys.executable, "-m", "s2dask.cli", "classify"]
    try:
        ok = subprocess.run([*cli, f"s3://{BUCKET}/scenes/scene.tif", str(scene), "--model",
                             str(model), "--out", f"s3://{BUCKET}/out", "--chunks", "32",
                             "--workers", "1"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        proxy.stop()
    # the second scene has the same id: it fails with its own line (checked for secrets too)
    record = json.loads(s3.get_object(Bucket=BUCKET, Key="out/scene/job.json")["Body"].read())
    assert record["retries"]["total"] >= 3 and "503 SlowDown" in record["retries"]["reasons"]
    env = _env(moto_url, tmp_path, key, secret, token)
    # a failing scene: its error line goes to stderr and batch.json
    bad = subprocess.run([*cli, f"s3://{BUCKET}/scenes/missing.tif", "--model", str(model),
                          "--out", f"s3://{BUCKET}/out2", "--workers", "1"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.endswith("job.json") for k in keys) and any(k.endswith("batch.json") for k in keys), \
        (ok.returncode, ok.stderr[-2000:])
    leaks = _grep_everything([secret, token, key], s3=s3, tmp_path=tmp_path,
                             texts=[ok.stdout, ok.stderr, bad.stdout, bad.stderr])
    assert leaks == [], leaks
