"""The OpenVINO engine: resolve(), conversion, the IR in the bundle, and the predictor's outputs
against the Keras Predictor on a tiny deterministic model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from s2dask.errors import ModelError, OutputExistsError, ParameterError  # noqa: E402
from s2dask.model import engines as E  # noqa: E402
from s2dask.model.blocks import block_outputs  # noqa: E402

BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
CLASSES = [{"value": v, "name": f"c{v}"} for v in (1, 2, 3, 4, 7)]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """10 bands -> 32 -> 32 -> 5 classes, seeded weights, no training (deterministic, fast)."""
    from s2dask.model.bundle import build_model, save_bundle

    model = build_model(10, len(CLASSES), mean=np.full(10, 2000.0), variance=np.full(10, 1.0e6),
                        units=(32, 32), dropout=(0.0, 0.0), seed=7)
    path = tmp_path_factory.mktemp("engine") / "bundle"
    path.mkdir()
    save_bundle(model, path, bands=BANDS, classes=CLASSES)
    return path


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    from s2dask.model.bundle import load_model

    return load_model(bundle_dir)


@pytest.fixture(scope="module")
def ov_model(bundle):
    return E.convert(bundle.keras_model())


@pytest.fixture(scope="module")
def block() -> np.ndarray:
    """A random (band, y, x) uint16 block with a few nodata pixels."""
    rng = np.random.default_rng(3)
    b = rng.integers(1, 4000, size=(10, 60, 70), dtype="uint16")
    b[:, 0, :9] = 0  # whole-pixel nodata
    b[4, 5, 5] = 0  # one band missing is nodata too
    return b


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- resolve()


def test_resolve_auto_follows_device_and_bf16():
    c = E.resolve(bf16=True)
    assert (c.engine, c.precision, c.device) == ("openvino", "bf16", "cpu")
    assert "bf16" in c.reason and "present" in c.reason
    c = E.resolve(bf16=False)
    assert (c.engine, c.precision) == ("openvino", "fp32")
    assert "absent" in c.reason
    assert E.resolve(device="gpu").record() == {"engine": "keras", "precision": "fp32",
                                                 "device": "gpu", "reason": "auto: Keras on GPU workers"}
    assert (E.resolve("keras").engine, E.resolve("keras").precision) == ("keras", "fp32")
    assert E.resolve("openvino", "fp32", bf16=True).precision == "fp32"
    assert E.resolve("OpenVINO", "BF16", bf16=True).precision == "bf16"
    with pytest.raises(AttributeError):
        E.resolve().engine = "keras"  # frozen


def test_resolve_auto_matches_this_cpu():
    has, source = E.cpu_has_bf16()
    assert E.resolve().precision == ("bf16" if has else "fp32")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "OpenVINO" in source and flags:  # OpenVINO and the kernel agree on this machine
        assert has == ("amx_bf16" in flags or "avx512_bf16" in flags)


@pytest.mark.parametrize("kwargs, words", [
    ({"engine": "tensorrt"}, ["engine 'tensorrt'", "auto, keras, openvino"]),
    ({"precision": "fp16"}, ["precision 'fp16'", "auto, fp32, bf16"]),
    ({"device": "tpu"}, ["device 'tpu'"]),
    ({"engine": "openvino", "device": "gpu"}, ["CPU workers only", "--engine keras"]),
    ({"precision": "bf16", "device": "gpu"}, ["bf16", "GPU workers"]),
    ({"engine": "keras", "precision": "bf16"}, ["--engine openvino"]),
    ({"precision": "bf16", "bf16": False}, ["bf16 matrix instructions", "--precision fp32"]),
    ({"engine": None}, ["engine None"]),
])
def test_resolve_errors_are_one_line(kwargs, words):
    with pytest.raises(ParameterError) as exc:
        E.resolve(**kwargs)
    text = one_line(exc)
    for w in words:
        assert w in text


# ---------------------------------------------------------------- exactness


def test_fp32_equals_keras(bundle, ov_model, block):
    keras_pred = bundle.predictor(batch_size=1024, engine="keras")
    ov_pred = E.OpenVINOPredictor(ov_model, bundle.contract, precision="fp32", batch_size=1024)
    ref = block_outputs(keras_pred, block, probabilities=True)
    out = block_outputs(ov_pred, block, probabilities=True)
    assert out.dtype == np.uint8 and out.shape == ref.shape == (2 + 5, 60, 70)
    np.testing.assert_array_equal(out[0], ref[0])  # class maps equal
    assert np.abs(out[1:].astype(int) - ref[1:]).max() <= 1  # percent rounding at .5 at most
    assert (out[1:] == ref[1:]).mean() > 0.999
    rows = block.reshape(10, -1).T
    np.testing.assert_allclose(ov_pred.predict_proba(rows), keras_pred.predict_proba(rows),
                               rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(ov_pred.predict_classes(rows), keras_pred.predict_classes(rows))
    # the Keras engine keeps float32 products where a GPU would use TensorFloat-32
    import tensorflow as tf

    assert not tf.config.experimental.tensor_float_32_execution_enabled()
    # the graph stops at the logits: no Softmax over the classes for the class and confidence
    for kind in ("rows", "full"):
        ops = {op.get_rt_info()["layerType"].astype(str)
               for op in ov_pred._compile(kind).get_runtime_model().get_ordered_ops()}
        assert "Softmax" not in ops, kind


@pytest.mark.parametrize("layout", ["chunk", "table"])
def test_keras_outputs_from_the_backend_equal_the_probabilities(bundle, block, layout):
    """The class, confidence and percent layers the Keras engine computes on its device
    (band-major batches, a ragged last one) are what its probabilities give in numpy."""
    from s2dask.model.backend import compile_outputs

    assert compile_outputs(bundle.keras_model(), 8, 10) is not None  # TensorFlow has one
    pred = bundle.predictor(batch_size=1000, engine="keras")  # 4200 pixels: 5 batches
    rows = block.reshape(10, -1).T  # a chunk's rows: a transposed view
    if layout == "table":
        rows = np.ascontiguousarray(rows)
    p = pred.predict_proba(rows)
    valid = ~np.isnan(p).any(axis=1)
    assert 0 < (~valid).sum() < 20
    classes, confidence, probs = pred.predict_rows(rows, probabilities=True)
    np.testing.assert_array_equal(classes[valid], pred.class_values[p[valid].argmax(axis=1)])
    np.testing.assert_array_equal(confidence[valid], np.rint(p[valid].max(axis=1) * 100).astype("uint8"))
    np.testing.assert_array_equal(probs[valid], np.rint(p[valid] * 100).astype("uint8"))
    assert (classes[~valid] == 255).all() and (confidence[~valid] == 0).all()
    assert len(set(classes[valid].tolist())) >= 2  # not one class everywhere


def test_nodata_pixels_get_255_and_0(bundle, ov_model, block):
    pred = E.OpenVINOPredictor(ov_model, bundle.contract, precision="bf16", batch_size=512)
    out = block_outputs(pred, block, probabilities=True)
    assert (out[0, 0, :9] == 255).all() and out[0, 5, 5] == 255
    assert (out[1:, 0, :9] == 0).all() and (out[1:, 5, 5] == 0).all()
    valid = np.ones((60, 70), bool)
    valid[0, :9] = valid[5, 5] = False
    assert set(np.unique(out[0][valid])) <= {1, 2, 3, 4, 7}
    # confidence is the largest probability, in percent
    np.testing.assert_array_equal(out[1][valid], out[2:].max(axis=0)[valid])
    proba = pred.predict_proba(block.reshape(10, -1).T)
    assert np.isnan(proba[:9]).all() and np.isfinite(proba[9:70]).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_results_do_not_depend_on_chunking(bundle, ov_model, block, precision):
    pred = E.OpenVINOPredictor(ov_model, bundle.contract, precision=precision, batch_size=1024)
    whole = block_outputs(pred, block, probabilities=True)
    rows = block.reshape(10, -1).T
    pieces = [pred.predict_rows(rows[i:i + 64], probabilities=True) for i in range(0, len(rows), 64)]
    for k, name in enumerate(("classes", "confidence", "probabilities")):
        got = np.concatenate([p[k] for p in pieces])
        want = whole[k].ravel() if k < 2 else whole[2:].reshape(5, -1).T
        np.testing.assert_array_equal(got, want, err_msg=name)
    # asking for the probabilities does not change the class map or the confidence
    np.testing.assert_array_equal(block_outputs(pred, block, probabilities=False), whole[:2])
    # a pixel's position within the batch does not matter either
    shifted = pred.predict_rows(rows[5:], probabilities=False)
    np.testing.assert_array_equal(shifted[0], whole[0].ravel()[5:])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_confidence_is_the_largest_probability_exactly(bundle, ov_model, precision):
    """The graph stops at the logits (confidence ``1 / sum(exp(logit - max))``); the
    probabilities come from the same terms, so over 2^20 pixels the confidence equals their
    largest percent, and asking for them changes no class and no confidence (a Softmax
    kernel beside the confidence differed in ~3 pixels per million)."""
    pred = E.OpenVINOPredictor(ov_model, bundle.contract, precision=precision, batch_size=2048)
    rows = np.random.default_rng(5).integers(1, 6000, size=(1 << 20, 10)).astype("float32")
    classes, confidence, probs = pred.predict_rows(rows, probabilities=True)
    np.testing.assert_array_equal(confidence, probs.max(axis=1))
    plain = pred.predict_rows(rows, probabilities=False)
    np.testing.assert_array_equal(plain[0], classes)
    np.testing.assert_array_equal(plain[1], confidence)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_results_do_not_depend_on_threads(bundle, ov_model, block, precision):
    """A 1-thread worker and an all-cores in-process prediction write the same pixels."""
    one = E.OpenVINOPredictor(ov_model, bundle.contract, precision=precision, threads=1)
    two = E.OpenVINOPredictor(ov_model, bundle.contract, precision=precision, threads=2)
    np.testing.assert_array_equal(block_outputs(one, block, probabilities=True),
                                  block_outputs(two, block, probabilities=True))
    rows = block.reshape(10, -1).T
    np.testing.assert_array_equal(one.predict_proba(rows), two.predict_proba(rows))


def test_bf16_agrees_with_fp32(bundle, ov_model):
    rng = np.random.default_rng(11)
    block = rng.integers(1, 4000, size=(10, 128, 128), dtype="uint16")
    fp32 = E.OpenVINOPredictor(ov_model, bundle.contract, precision="fp32", batch_size=2048)
    bf16 = E.OpenVINOPredictor(ov_model, bundle.contract, precision="bf16", batch_size=2048)
    a, b = block_outputs(fp32, block), block_outputs(bf16, block)
    assert (a[0] == b[0]).mean() >= 0.99
    # the record says what was rewritten for bf16 (32-wide layers need no padding)
    assert bf16.record()["bf16_rewrites"] == {"width_multiple": E.bf16_width_multiple(),
                                              "hidden_widths_padded": 0, "input_layers_exact": 1}
    assert "bf16_rewrites" not in fp32.record()
    assert np.abs(a[1].astype(int) - b[1]).max() <= 3


# ---------------------------------------------------------------- the IR in the bundle


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_export_ir_and_load_ir(bundle_dir, bundle, ov_model, block, tmp_path):
    from s2dask.model.bundle import load_model

    d = _copy_bundle(bundle_dir, tmp_path / "b")
    rec = E.export_ir(d)
    contract = json.loads((d / "model.json").read_text())
    assert contract["openvino_ir"] == rec and rec["model_sha256"] == contract["model_sha256"]
    assert sorted(p.name for p in d.iterdir()) == ["mlm.json", "model.bin", "model.json", "model.keras", "model.xml"]
    assert load_model(d, check_keras=False).sha256 == bundle.sha256  # the contract still loads
    from_ir = E.OpenVINOPredictor(E.load_ir(d), contract, precision="bf16")
    converted = E.OpenVINOPredictor(ov_model, bundle.contract, precision="bf16")
    np.testing.assert_array_equal(block_outputs(from_ir, block, probabilities=True),
                                  block_outputs(converted, block, probabilities=True))
    with pytest.raises(OutputExistsError) as exc:
        E.export_ir(d)
    assert "overwrite=True" in one_line(exc)
    assert E.export_ir(d, overwrite=True)["bin_sha256"] == rec["bin_sha256"]  # reproducible


def test_load_ir_refuses_a_tampered_ir(bundle_dir, tmp_path):
    d = _copy_bundle(bundle_dir, tmp_path / "b")
    with pytest.raises(ModelError) as exc:
        E.load_ir(d)
    assert "holds no OpenVINO IR" in one_line(exc)
    E.export_ir(d)
    weights = bytearray((d / "model.bin").read_bytes())
    weights[100] ^= 0xFF
    (d / "model.bin").write_bytes(bytes(weights))
    with pytest.raises(ModelError) as exc:
        E.load_ir(d)
    text = one_line(exc)
    assert "does not match the sha256" in text and "model.xml" in text and "export_ir" in text
    # an IR recorded for another model.keras is refused too
    contract = json.loads((d / "model.json").read_text())
    contract["openvino_ir"]["model_sha256"] = "0" * 64
    with pytest.raises(ModelError) as exc:
        E.load_ir(d, contract=contract)
    assert "another model.keras" in one_line(exc)


def test_workers_need_no_backend_with_an_ir(bundle_dir, tmp_path):
    """A process that loads the stored IR and predicts never imports TensorFlow or Keras."""
    d = _copy_bundle(bundle_dir, tmp_path / "b")
    E.export_ir(d)
    code = (
        "import json, sys, numpy as np\n"
        "from s2dask.model import engines as E\n"
        f"d = {str(d)!r}\n"
        "c = json.loads(open(d + '/model.json').read())\n"
        "p = E.get_openvino_predictor(c['model_sha256'], c, lambda: E.load_ir(d, contract=c),"
        " precision='fp32', batch_size=256)\n"
        "print(p.predict_classes(np.full((10, 10), 1000, 'uint16'))[0])\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert int(lines[0]) in {1, 2, 3, 4, 7}
    assert lines[1] == "[]"


def test_cache_builds_once_per_key(bundle, ov_model):
    calls = []

    def load():
        calls.append(1)
        return ov_model

    sha = "f" * 64  # a key of this test's own
    a = E.get_openvino_predictor(sha, bundle.contract, load, precision="fp32", batch_size=256)
    b = E.get_openvino_predictor(sha, bundle.contract, load, precision="fp32", batch_size=256)
    c = E.get_openvino_predictor(sha, bundle.contract, load, precision="bf16", batch_size=256)
    assert a is b and a is not c and len(calls) == 2
    assert E.build_counts()[(sha, "fp32", 256, 1)] == 1
    assert a.config()["INFERENCE_NUM_THREADS"] == 1 and a.config()["NUM_STREAMS"] == 1
    # a Keras model is converted on the way in
    d = E.get_openvino_predictor("e" * 64, bundle.contract, bundle.keras_model, precision="fp32",
                                 batch_size=256, threads=2)
    assert d.threads == 2 and d.n_classes == 5 and list(d.class_values) == [1, 2, 3, 4, 7]
    assert (a.record()["model_source"], d.record()["model_source"]) == ("ir", "converted")
    assert d.record()["threads"] == 2 and a.record()["precision"] == "fp32"


def test_openvino_is_imported_without_its_telemetry(tmp_path):
    """s2dask imports OpenVINO with its import-time Google Analytics event off (a fork per
    worker process otherwise), and leaves the environment as it found it."""
    code = ("import os, sys\n"
            "from s2dask.model.openvino_ir import import_openvino\n"
            "import_openvino()\n"
            "import openvino_telemetry.main as m\n"
            "print(m.Telemetry().consent, 'CI' in os.environ, 'openvino' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "S2DASK_OPENVINO_TELEMETRY")}
    env["HOME"] = str(tmp_path)  # no consent file: OpenVINO's own default would be to send
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False", "True"]
    assert not (tmp_path / "intel").exists()  # no client id written into the user's home


def test_bf16_pads_hidden_widths_to_the_matrix_tiles():
    """200-wide dense layers are zero-padded to 224 for bf16 (AMX tiles are 32 wide): the
    same function (bias adds included), a multiple of 32 everywhere, other widths kept."""
    from s2dask.model.bundle import build_model

    model = build_model(10, 5, mean=np.full(10, 2000.0), variance=np.full(10, 1.0e6),
                        units=(200, 200), dropout=(0.0, 0.0), seed=3)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-zero biases: the Add nodes must be padded too
        w = layer.get_weights()
        if len(w) == 2:
            layer.set_weights([w[0], rng.normal(0.0, 0.5, w[1].shape).astype("float32")])
    plain = E.convert(model)
    padded = plain.clone()
    assert E.pad_hidden_widths(padded) == 2
    widths = [op.get_output_partial_shape(0)[1].get_length() for op in padded.get_ordered_ops()
              if op.get_type_name() == "MatMul"]
    assert widths == [224, 224, 5]
    assert any(op.get_type_name() == "Add" and op.get_output_partial_shape(0)[1].get_length() == 224
               for op in padded.get_ordered_ops())
    x = rng.integers(1, 6000, size=(4096, 10)).astype("float32")
    core = E.core()
    want = core.compile_model(plain, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([x])[0]
    got = core.compile_model(padded, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([x])[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert E.pad_hidden_widths(padded) == 0  # nothing left to pad


def test_bf16_pads_widths_only_where_the_cpu_has_amx_tiles():
    """A bf16 predictor pads 200-wide layers to 224 on a CPU with AMX, and keeps them 200
    wide on one with AVX512_BF16 alone; either way it writes the same class map."""
    from s2dask.model.bundle import build_model

    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    assert E.bf16_width_multiple() == (32 if "amx_bf16" in flags else 1)
    model = build_model(10, len(CLASSES), mean=np.full(10, 2000.0), variance=np.full(10, 1.0e6),
                        units=(200, 200, 200), dropout=(0.0, 0.0, 0.0), seed=5)
    ovm = E.convert(model)
    contract = {"bands": BANDS, "classes": CLASSES, "input_nodata": 0}
    tiles = E.OpenVINOPredictor(ovm, contract, precision="bf16", width_multiple=32)
    plain = E.OpenVINOPredictor(ovm, contract, precision="bf16", width_multiple=1)
    default = E.OpenVINOPredictor(ovm, contract, precision="bf16")
    assert tiles.record()["bf16_rewrites"] == {"width_multiple": 32, "hidden_widths_padded": 3,
                                               "input_layers_exact": 1}
    assert plain.record()["bf16_rewrites"] == {"width_multiple": 1, "hidden_widths_padded": 0,
                                               "input_layers_exact": 1}
    assert default.record()["bf16_rewrites"]["width_multiple"] == E.bf16_width_multiple()
    block = np.random.default_rng(2).integers(1, 4000, size=(10, 64, 64), dtype="uint16")
    a, b = block_outputs(tiles, block), block_outputs(plain, block)
    assert (a[0] == b[0]).mean() >= 0.995  # sums of 200 or 224 terms round differently in bf16
    assert np.abs(a[1].astype(int) - b[1]).max() <= 2


def test_bf16_keeps_the_input_layer_exact():
    """Under a bf16 hint the layer reading the inputs sees them at full precision: 1001 and
    1000 are one bf16 value (its spacing there is 4), yet their difference survives. Only
    that layer is rewritten, and in float32 the function is the same."""
    ov = E.import_openvino()
    import openvino.opset13 as ops

    x = ops.parameter([2048, 2], np.float32, name="bands")
    h = ops.relu(ops.matmul(x, ops.constant(np.array([[1.0], [-1.0]], "float32")), False, False))
    y = ops.matmul(h, ops.constant(np.array([[1.0]], "float32")), False, False)
    plain = ov.Model([y], [x], "difference")
    exact = plain.clone()
    assert E.exact_input_layers(exact) == 1
    rows = np.tile(np.array([[1001.0, 1000.0]], "float32"), (2048, 1))
    bf16 = {"INFERENCE_PRECISION_HINT": "bf16"}
    np.testing.assert_allclose(E.core().compile_model(exact, "CPU", bf16)([rows])[0], 1.0, rtol=0.01)
    if E.cpu_has_bf16()[0]:  # without bf16 units the hint runs float32: nothing is lost
        assert np.all(E.core().compile_model(plain, "CPU", bf16)([rows])[0] == 0.0)

    from s2dask.model.bundle import build_model

    model = E.convert(build_model(10, 5, mean=np.full(10, 2000.0), variance=np.full(10, 1.0e6),
                                  units=(64, 64), dropout=(0.0, 0.0), seed=5))
    rewritten = model.clone()
    assert E.exact_input_layers(rewritten) == 1  # the first dense layer, not the hidden ones
    widths = [op.input_value(0).get_partial_shape()[1].get_length() for op in rewritten.get_ordered_ops()
              if op.get_type_name() == "MatMul"]
    assert widths == [20, 64, 64]
    bands = np.random.default_rng(2).integers(1, 6000, size=(512, 10)).astype("float32")
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}
    np.testing.assert_allclose(E.core().compile_model(rewritten, "CPU", fp32)([bands])[0],
                               E.core().compile_model(model, "CPU", fp32)([bands])[0], atol=1e-6)


@pytest.mark.parametrize("within, want", [(False, "fp32"), (True, "bf16"), (None, "bf16")])
def test_auto_precision_keeps_fp32_for_a_model_bf16_moved_beyond_the_bar(within, want):
    """``auto`` follows what training measured: a model whose test accuracy bf16 changed by
    more than the bar stays float32 (the reason says by how much); asked-for bf16 is kept."""
    contract = {} if within is None else {E.PRECISION_CHECK_KEY: {"bf16": {
        "checked": True, "within_bar": within, "test_oa_minus_fp32": -0.0033, "bar": 0.002}}}
    choice = E.resolve("auto", "auto", "cpu", bf16=True, contract=contract)
    assert (choice.engine, choice.precision) == ("openvino", want)
    assert ("-0.0033" in choice.reason) == (want == "fp32")
    asked = E.resolve("auto", "bf16", "cpu", bf16=True, contract=contract)
    assert asked.precision == "bf16"
    assert E.resolve("auto", "auto", "cpu", bf16=False, contract=contract).precision == "fp32"
