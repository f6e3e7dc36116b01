"""Shared fixtures: a tiny trained model bundle, synthetic scenes, a real LocalCluster, moto's S3."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TUTORIAL_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


def make_bundle(path: Path, *, samples_csv: Path, units=(16, 16), epochs: int = 3, seed: int = 0,
                bands=TUTORIAL_BANDS) -> Path:
    """Train a small MLP on a labelled CSV, quickly, and save it as a bundle (no train.py)."""
    import pandas as pd

    from s2dask.model.bundle import build_model, save_bundle
    from s2dask.scene.synthetic import SYNTHETIC_CLASSES

    df = pd.read_csv(samples_csv)
    x = df[list(bands)].to_numpy("float32")
    values = sorted(df["Class_ID"].unique())
    y = np.searchsorted(values, df["Class_ID"].to_numpy())
    model = build_model(len(bands), len(values), mean=x.mean(0), variance=x.var(0),
                        units=units, dropout=(0.0,) * len(units), seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=False)
    meta = {c["value"]: c for c in SYNTHETIC_CLASSES}
    classes = [{"value": int(v), "name": meta.get(int(v), {}).get("name", str(v)),
                "colour": meta.get(int(v), {}).get("colour", "#888888")} for v in values]
    path.mkdir(parents=True)
    save_bundle(model, path, bands=list(bands), classes=classes)
    return path


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A synthetic 300 x 260 scene (nodata frame) and 1500 labelled points drawn from it."""
    from s2dask.scene.synthetic import make_samples, make_scene

    d = tmp_path_factory.mktemp("synthetic")
    make_scene(d / "scene.tif", size=(300, 260), seed=3, nodata_border=4)
    make_samples(d / "points.csv", scene_size=(300, 260), n_points=1500, seed=3)
    return d


@pytest.fixture(scope="session")
def tiny_model(synth_dir, tmp_path_factory) -> Path:
    """A small trained bundle (10 bands -> 16 -> 16 -> 5 classes) in a session temp dir."""
    return make_bundle(tmp_path_factory.mktemp("model") / "bundle", samples_csv=synth_dir / "points.csv")


@pytest.fixture(scope="session")
def cluster_client():
    """A real LocalCluster with two single-threaded worker processes, shared by the session."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit="3GiB")
    # not the default scheduler: other tests' plain dask computes stay in-process
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def moto_url():
    """moto's S3 server on loopback, one per test module; its endpoint URL (tests/_s3.py)."""
    pytest.importorskip("moto.server")
    from _s3 import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def moto_s3(moto_url, monkeypatch, tmp_path):
    """This process's AWS_* pointing at :func:`moto_url` with fake credentials and nothing from
    the machine (tests/_s3.py: isolate_aws); a boto3 S3 client for it."""
    boto3 = pytest.importorskip("boto3")
    from _s3 import isolate_aws

    isolate_aws(monkeypatch, tmp_path, endpoint=moto_url)
    return boto3.client("s3")


def sample_data_dir() -> Path | None:
    """``$S2DASK_SAMPLE_DATA/buffalo`` or ``../shared/data/buffalo`` beside the checkout."""
    root = Path(os.environ.get("S2DASK_SAMPLE_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data"))
    folder = root / "buffalo"
    return folder if (folder / "grid_data.csv").is_file() else None


def resigned_copy(src: Path, dst: Path, edit) -> Path:
    """Copy a bundle, let ``edit(members)`` change its archive's files, and re-sign it.

    The sha256 in model.json then matches again, so only a check of the content itself
    (the archive's configuration, or the workers' deserialisation) can refuse the bundle.
    """
    import json
    import shutil
    import zipfile

    from s2dask.model.bundle import sha256_file

    shutil.copytree(src, dst)
    archive = dst / "model.keras"
    with zipfile.ZipFile(archive) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    edit(members)
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    contract = json.loads((dst / "model.json").read_text())
    contract["model_sha256"] = sha256_file(archive)
    (dst / "model.json").write_text(json.dumps(contract))
    return dst
