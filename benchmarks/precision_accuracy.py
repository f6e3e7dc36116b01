"""Accuracy of reduced precision on the real Buffalo data: class agreement with float32
over the scene's pixels, and test-set overall accuracy, per engine and precision.

Trains a bundle with ``s2dask train point_data.csv --split pixel`` and builds the scene
with ``s2dask grid-to-raster grid_data.csv`` (both cached in the scratch dir), then
classifies every valid pixel of the scene and the test split of the same split (same
method and seed as training) with:

- ``keras fp32``: :class:`s2dask.model.blocks.Predictor` (the reference);
- ``openvino fp32`` and ``openvino bf16``: :class:`s2dask.model.engines.OpenVINOPredictor`;
- ``openvino int8`` (``--int8``): NNCF post-training quantisation of the converted model,
  calibrated on the training split's rows, run through the same predictor.

Bars (issue 13): agreement with float32 >= 99.8% of the scene's pixels and test OA
within 0.002 of float32.

    python benchmarks/precision_accuracy.py [--int8] [--epochs N] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

AGREEMENT_BAR = 0.998
OA_BAR = 0.002


def data_dir() -> Path:
    root = Path(os.environ.get("S2DASK_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    folder = root / "buffalo"
    if not (folder / "point_data.csv").is_file():
        sys.exit(f"no Buffalo data in {folder}: set S2DASK_SAMPLE_DATA to the folder holding buffalo/")
    return folder


def s2dask(*args: str) -> None:
    cmd = [sys.executable, "-m", "s2dask.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


def prepare(folder: Path, epochs: int | None, seed: int) -> tuple[Path, Path]:
    model = C.scratch() / f"buffalo-pixel-s{seed}" if epochs is None else \
        C.scratch() / f"buffalo-pixel-s{seed}-e{epochs}"
    if not (model / "model.json").is_file():
        t = time.perf_counter()
        s2dask("train", str(folder / "point_data.csv"), "--split", "pixel", "--seed", str(seed),
               "--out", str(model), "--quiet", *(["--epochs", str(epochs)] if epochs else []))
        print(f"trained {model} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    scene = C.scratch() / "buffalo-grid.tif"
    if not scene.is_file():
        s2dask("grid-to-raster", str(folder / "grid_data.csv"), str(scene), "--crs", "EPSG:32617")
    return model, scene


def int8_model(ov_model, x_train: np.ndarray, batch_size: int):
    """NNCF post-training quantisation calibrated on the training rows."""
    import nncf

    from s2dask.model.openvino_ir import import_openvino

    ov = import_openvino()

    static = ov_model.clone()
    static.reshape({static.inputs[0]: ov.PartialShape([batch_size, x_train.shape[1]])})
    batches = [x_train[i:i + batch_size] for i in range(0, len(x_train) - batch_size + 1, batch_size)]
    if not batches:
        batches = [np.resize(x_train, (batch_size, x_train.shape[1]))]
    dataset = nncf.Dataset(batches)
    return nncf.quantize(static, dataset, subset_size=len(batches) * batch_size,
                         preset=nncf.QuantizationPreset.MIXED)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="result file (default results/precision_accuracy.json)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: train's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8", action="store_true", help="also try NNCF int8 quantisation")
    a = p.parse_args(argv)

    import rasterio

    from s2dask.model import engines as E
    from s2dask.model.blocks import block_outputs
    from s2dask.model.bundle import load_model
    from s2dask.training.samples import read_samples, split_samples

    folder = data_dir()
    model_dir, scene = prepare(folder, a.epochs, a.seed)
    bundle = load_model(model_dir)
    with rasterio.open(scene) as src:
        block = src.read()
    samples = read_samples(folder / "point_data.csv")
    split = split_samples(samples, method="pixel", seed=a.seed)
    x_test, y_test = samples.X[split.test], samples.y[split.test]
    ovm = E.convert(bundle.keras_model())
    bs = E.DEFAULT_OPENVINO_BATCH_SIZE
    preds = {"keras fp32": bundle.predictor(engine="keras"),
             "openvino fp32": E.OpenVINOPredictor(ovm, bundle.contract, precision="fp32", batch_size=bs),
             "openvino bf16": E.OpenVINOPredictor(ovm, bundle.contract, precision="bf16", batch_size=bs)}
    notes = {}
    if a.int8:
        t = time.perf_counter()
        q = int8_model(ovm, samples.X[split.train], bs)
        notes["int8_quantise_s"] = time.perf_counter() - t
        preds["openvino int8"] = E.OpenVINOPredictor(q, bundle.contract, precision="fp32", batch_size=bs)
    ref = block_outputs(preds["keras fp32"], block)
    valid = ref[0] != 255
    ref_test = preds["keras fp32"].predict_classes(x_test)
    oa_ref = float((ref_test == y_test).mean())
    rows, res = [], {}
    x = np.random.default_rng(0).uniform(100, 4000, (65536, 10)).astype("float32")
    for name, pr in preds.items():
        out = block_outputs(pr, block)
        agree = float((out[0][valid] == ref[0][valid]).mean())
        oa = float((pr.predict_classes(x_test) == y_test).mean())
        t = time.perf_counter()
        pr.forward(x)
        rate = len(x) / (time.perf_counter() - t) / 1e6
        conf = np.abs(out[1][valid].astype(int) - ref[1][valid])
        res[name] = {"scene_pixels": int(valid.sum()), "agreement_with_fp32": agree,
                     "pixels_differing": int((out[0][valid] != ref[0][valid]).sum()),
                     "confidence_max_abs_diff_pct": int(conf.max()), "test_oa": oa,
                     "test_oa_minus_fp32": oa - oa_ref, "test_rows": int(len(y_test)),
                     "mpx_s_1_call_64k": rate,
                     "meets_bar": agree >= AGREEMENT_BAR and abs(oa - oa_ref) <= OA_BAR}
        rows.append((name, int(valid.sum()), f"{100 * agree:.3f}%", res[name]["pixels_differing"],
                     f"{oa:.4f}", f"{oa - oa_ref:+.4f}", int(conf.max()), res[name]["meets_bar"]))
    data = C.header("precision_accuracy", {"model": str(model_dir), "scene": str(scene), "split": "pixel",
                                           "seed": a.seed, "epochs": a.epochs, "batch_size": bs,
                                           "agreement_bar": AGREEMENT_BAR, "oa_bar": OA_BAR})
    data["results"], data["notes"] = res, notes
    C.write_json(data, a.json, "precision_accuracy.json")
    print(C.table(rows, ["engine precision", "pixels", "agree w/ fp32", "differ", "test OA",
                         "d OA", "max d conf %", "bar"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
