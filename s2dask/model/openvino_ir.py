"""OpenVINO models of a bundle: conversion from Keras, and the IR stored in the bundle.

:func:`convert` turns any Keras 3 model into an ``openvino.Model`` with Keras' own
exporter (generic over layers and over the TensorFlow, JAX and torch backends; it needs
the backend). :func:`export_ir` stores that IR beside ``model.keras`` (``model.xml`` /
``model.bin``, their sha256 and the ``model.keras`` hash they came from under
``"openvino_ir"`` in ``model.json``); :func:`load_ir` and :func:`ir_from_bytes` read it back
with the hashes checked and without importing any deep-learning backend.
:func:`bf16_rewrites` (:func:`pad_hidden_widths`, :func:`exact_input_layers`) rewrites a
model for the CPU's bf16 matrix units; :func:`graph_with_outputs` is the graph a predictor
compiles (the class and the confidence computed in it); :func:`import_openvino` is how s2dask
imports OpenVINO (without its telemetry).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, OutputExistsError
from ..io.records import sha256_file
from ..io.storage import atomic_write_bytes, atomic_write_json

__all__ = [
    "OV_PRECISION", "IR_KEY", "IR_XML", "IR_BIN", "TELEMETRY_ENV", "BF16_WIDTH_MULTIPLE", "import_openvino",
           "pad_hidden_widths", "exact_input_layers", "bf16_rewrites", "graph_with_outputs",
           "softmax_input", "core", "convert", "ir_from_bytes", "export_ir", "load_ir", "read_ir",
           "ir_record", "contract_field"]

#: OpenVINO's ``INFERENCE_PRECISION_HINT`` of each precision s2dask offers
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}

#: the key of the IR record in ``model.json``
IR_KEY = "openvino_ir"
IR_XML = "model.xml"
IR_BIN = "model.bin"

#: bf16 matrix units (AMX) multiply tiles 32 bf16 wide: the tutorial's 200-wide layers padded
#: to 224 run 1.3-1.5x faster in bf16 on a CPU with AMX (benchmarks/forward.py). Without AMX
#: (AVX512_BF16 alone: AMD Zen 4, Intel Cooper Lake) the padding is 25% more FLOPs for
#: nothing: 200 wide ran 1.15x faster than 224 there. float32 is never padded (slower).
BF16_WIDTH_MULTIPLE = 32

#: set to 1 to let OpenVINO send its usage telemetry when s2dask imports it
TELEMETRY_ENV = "S2DASK_OPENVINO_TELEMETRY"


def import_openvino():
    """``import openvino``, with OpenVINO's import-time telemetry off.

    Importing ``openvino`` sends a Google Analytics event from a forked process unless the
    user opted out (``opt_in_out --opt_out``); on a cluster that is one event and one
    fork per worker process, from machines that may have no route out, and a fork from a
    thread inside a fork server (whose reaper then warns on stderr). s2dask imports it
    with OpenVINO's documented switch for automated runs (``CI=true`` during the import
    only) unless ``S2DASK_OPENVINO_TELEMETRY=1``.

    Raises
    ------
    ImportError
        If OpenVINO is not installed.
    """
    import sys

    if "openvino" in sys.modules or os.environ.get(TELEMETRY_ENV) == "1":
        import openvino as ov

        return ov
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        import openvino as ov
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before
    return ov


@functools.lru_cache(maxsize=1)
def core():
    """The process's ``openvino.Core`` (one per process)."""
    return import_openvino().Core()


def _require_openvino():
    try:
        return import_openvino()
    except ImportError:  # pragma: no cover - openvino is a core dependency
        raise ModelError("the OpenVINO engine needs openvino: pip install openvino, or give "
                         "--engine keras") from None


def convert(keras_model) -> Any:
    """Convert a Keras 3 model into an ``openvino.Model`` (float32, dynamic batch).

    Uses Keras' own exporter (``model.export(path, format="openvino")``), which traces
    the model with its backend (TensorFlow, JAX or torch) and runs OpenVINO's converter:
    any model the bundle accepts converts, not a hand-written copy of the MLP. It needs
    the backend; a bundle with a stored IR (:func:`export_ir`) does not.

    Raises
    ------
    ModelError
        If the exporter fails on this model.
    """
    return ir_from_bytes(*_export_bytes(keras_model))


def _export_bytes(keras_model) -> tuple[bytes, bytes]:
    """The IR (xml, bin) bytes of a Keras model, from Keras' OpenVINO exporter."""
    _require_openvino()
    with tempfile.TemporaryDirectory(prefix="s2dask-ir-") as d:
        xml = Path(d) / IR_XML
        try:
            keras_model.export(str(xml), format="openvino", verbose=False)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"the model does not convert to OpenVINO ({type(exc).__name__}: "
                             f"{first}): use --engine keras") from None
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def ir_from_bytes(xml: bytes, weights: bytes, *, xml_sha256: str | None = None,
                  bin_sha256: str | None = None, source: str = "the IR") -> Any:
    """An ``openvino.Model`` from the IR's two files' bytes, their hashes checked when given.

    What a worker calls with the bytes a model handle carried (no file, no backend).

    Raises
    ------
    ModelError
        If a hash does not match.
    """
    ov = _require_openvino()
    for what, data, want in (("xml", xml, xml_sha256), ("bin", weights, bin_sha256)):
        if want is not None:
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise ModelError(f"{source} ({what}) does not match the sha256 recorded in model.json "
                                 f"({got[:12]}... != {want[:12]}...): the IR is corrupt or was "
                                 "modified; rerun export_ir on the bundle")
    tensor = ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy())
    return core().read_model(model=xml, weights=tensor)


def _contract_file(bundle_dir: Path) -> Path:
    path = Path(bundle_dir) / "model.json"
    if not path.is_file():
        raise ModelError(f"{bundle_dir} has no model.json: give the MODEL_DIR written by 's2dask train'")
    return path


def export_ir(bundle_dir: str | os.PathLike, *, overwrite: bool = False, keras_model=None) -> dict:
    """Store the bundle's model as an OpenVINO IR beside ``model.keras``.

    Writes ``model.xml`` and ``model.bin`` (float32 weights) and records their sha256,
    the ``model.keras`` hash they were made from and the OpenVINO version under
    ``"openvino_ir"`` in ``model.json``. Each file is written atomically, ``model.json``
    last, so an interrupted export leaves a bundle whose contract records no (new) IR.

    Parameters
    ----------
    bundle_dir
        A bundle written by ``s2dask train`` / :func:`s2dask.model.bundle.save_bundle`.
    overwrite
        Replace an IR the bundle already records.
    keras_model
        The bundle's Keras model when the caller has it in memory (training does); else
        ``model.keras`` is loaded (safe mode).

    Returns
    -------
    dict
        The ``"openvino_ir"`` record written to ``model.json``.

    Raises
    ------
    ModelError
        If the bundle is invalid or its model does not convert.
    OutputExistsError
        If the bundle has an IR already and ``overwrite`` is false.
    """
    from .backend import load_keras_model
    from .contract import InputContract

    ov = _require_openvino()
    path = Path(bundle_dir)
    cfile = _contract_file(path)
    try:
        contract = json.loads(cfile.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfile} is not valid JSON ({exc}): re-create the bundle") from None
    checked = InputContract.from_dict(contract, where=cfile)
    if contract.get(IR_KEY) and not overwrite:
        raise OutputExistsError(f"{path} already holds an OpenVINO IR ({IR_XML}): pass overwrite=True "
                                "to replace it")
    keras_file = path / checked.model_file
    if not keras_file.is_file() or sha256_file(keras_file) != checked.model_sha256:
        raise ModelError(f"{keras_file} is missing or does not match the sha256 in model.json: "
                         "export the IR of an intact bundle")
    keras_model = keras_model if keras_model is not None else load_keras_model(keras_file)
    checked.check_model_size(keras_model.input_shape[-1], keras_model.output_shape[-1], where=keras_file)
    xml, weights = _export_bytes(keras_model)
    ir_from_bytes(xml, weights)  # OpenVINO reads it back before it is published
    record = {"xml": IR_XML, "bin": IR_BIN, "xml_sha256": hashlib.sha256(xml).hexdigest(),
              "bin_sha256": hashlib.sha256(weights).hexdigest(), "model_sha256": checked.model_sha256,
              "openvino": ov.__version__.split("-")[0], "precision": "fp32"}
    atomic_write_bytes(path / IR_BIN, weights)
    atomic_write_bytes(path / IR_XML, xml)
    contract[IR_KEY] = record
    atomic_write_json(cfile, contract)  # last: until then the bundle records no (new) IR
    return record


def ir_record(contract) -> dict | None:
    """The ``"openvino_ir"`` record of a contract (``model.json``'s dict or an ``InputContract``)."""
    rec = contract_field(contract, IR_KEY)
    return dict(rec) if rec else None


def read_ir(bundle_dir: str | os.PathLike, contract) -> tuple[bytes, bytes] | None:
    """The bytes of the bundle's stored IR (xml, bin), checked against ``model.json``; no OpenVINO import.

    What :func:`s2dask.model.bundle.load_model` runs on a bundle that records an IR, so a corrupt
    or stale IR is refused on load, before any worker sees it.

    Parameters
    ----------
    bundle_dir
        The bundle directory.
    contract
        Its ``model.json`` (dict or ``InputContract``).

    Returns
    -------
    tuple of bytes, or None
        ``None`` when the bundle records no IR.

    Raises
    ------
    ModelError
        If a file is missing, a hash does not match, or the IR was made from another
        ``model.keras`` than the one the contract names.
    """
    path = Path(bundle_dir)
    rec = ir_record(contract)
    if not rec:
        return None
    if rec.get("model_sha256") != contract_field(contract, "model_sha256"):
        raise ModelError(f"{path}/{rec.get('xml', IR_XML)} was made from another model.keras than the "
                         "bundle's: rerun export_ir with overwrite=True")
    try:
        xml = (path / rec["xml"]).read_bytes()
        weights = (path / rec["bin"]).read_bytes()
        want = {"xml": rec["xml_sha256"], "bin": rec["bin_sha256"]}
    except (OSError, KeyError) as exc:
        raise ModelError(f"{path}: the OpenVINO IR named in model.json cannot be read ({exc}): "
                         "rerun export_ir with overwrite=True") from None
    for what, data in (("xml", xml), ("bin", weights)):
        got = hashlib.sha256(data).hexdigest()
        if got != want[what]:
            raise ModelError(f"{path / rec['xml']} ({what}) does not match the sha256 recorded in "
                             f"model.json ({got[:12]}... != {want[what][:12]}...): the IR is corrupt or "
                             "was modified; rerun export_ir with overwrite=True")
    return xml, weights


def load_ir(bundle_dir: str | os.PathLike, *, contract=None) -> Any:
    """The bundle's stored IR as an ``openvino.Model``, its hashes checked. No backend import.

    Parameters
    ----------
    bundle_dir
        The bundle directory.
    contract
        Its ``model.json`` as already read (dict or ``InputContract``; default: read it).

    Raises
    ------
    ModelError
        If the bundle records no IR, a file is missing, a hash does not match, or the IR
        was made from another ``model.keras`` than the one the contract names.
    """
    path = Path(bundle_dir)
    if contract is None:
        try:
            contract = json.loads(_contract_file(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}/model.json is not valid JSON ({exc}): re-create the bundle") from None
    ir = read_ir(path, contract)
    if ir is None:
        raise ModelError(f"{path} holds no OpenVINO IR: run s2dask.model.engines.export_ir on it (or let "
                         "workers convert model.keras)")
    return ir_from_bytes(*ir)


def contract_field(contract, key: str, default=None):
    """A contract field, whether the contract is ``model.json``'s dict or an ``InputContract``
    (whose untyped keys, such as ``"openvino_ir"``, are in its ``extra``)."""
    if isinstance(contract, dict):
        return contract.get(key, default)
    if hasattr(contract, key):
        return getattr(contract, key)
    return (getattr(contract, "extra", None) or {}).get(key, default)


# ---------------------------------------------------------------- CPU-friendly rewrites


def _const_2d(node) -> np.ndarray | None:
    if node.get_type_name() != "Constant":
        return None
    data = node.get_data()
    return data if data.ndim == 2 else None


def _only_consumer(output):
    inputs = list(output.get_target_inputs())
    return inputs[0] if len(inputs) == 1 else None


def _next_dense(matmul, width: int):
    """The chain from ``matmul`` (output ``[batch, width]``) to the MatMul that reduces over
    ``width``: ``(bias Add or None, that MatMul)``, or None if it is not MatMul [-> Add of a
    constant bias] [-> Relu] -> MatMul with constant weights, each consumed once."""
    bias, inp = None, _only_consumer(matmul.output(0))
    if inp is not None and inp.get_node().get_type_name() == "Add":
        add = inp.get_node()
        other = add.input_value(1 - inp.get_index()).get_node()
        if other.get_type_name() != "Constant" or other.get_data().size != width \
                or other.get_data().shape[-1] != width:
            return None
        bias, inp = add, _only_consumer(add.output(0))
    if inp is not None and inp.get_node().get_type_name() == "Relu":
        inp = _only_consumer(inp.get_node().output(0))
    if inp is None or inp.get_index() != 0 or inp.get_node().get_type_name() != "MatMul":
        return None
    nxt = inp.get_node()
    w = _const_2d(nxt.input_value(1).get_node())
    attrs = nxt.get_attributes()
    if w is None or attrs["transpose_a"] or w.shape[1 if attrs["transpose_b"] else 0] != width:
        return None
    return bias, nxt


def pad_hidden_widths(model, multiple: int = BF16_WIDTH_MULTIPLE) -> int:
    """Zero-pad the hidden widths of an ``openvino.Model``'s dense layers, in place.

    A width N is padded to the next multiple of ``multiple`` where a MatMul with constant
    weights gives ``[batch, N]``, followed by an optional Add of a constant bias and an
    optional Relu, consumed only by another MatMul with constant weights that reduces over
    N. The new units get zero weights and bias, Relu(0) = 0, and their rows of the next
    weights are zero: the model computes the same function (in bf16 the sums may round
    differently in their last bit). Any other pattern is left as it is.

    Returns
    -------
    int
        How many widths were padded.
    """
    import openvino.opset13 as ops

    padded = 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "MatMul" or op.get_attributes()["transpose_a"]:
            continue
        w = _const_2d(op.input_value(1).get_node())
        if w is None:
            continue
        tb = op.get_attributes()["transpose_b"]
        width = w.shape[0] if tb else w.shape[1]
        extra = -width % multiple
        chain = _next_dense(op, width) if extra else None
        if chain is None:
            continue
        bias, nxt = chain
        op.input(1).replace_source_output(ops.constant(
            np.pad(w, ((0, extra), (0, 0)) if tb else ((0, 0), (0, extra)))).output(0))
        if bias is not None:
            k = 1 if bias.input_value(1).get_node().get_type_name() == "Constant" else 0
            b = bias.input_value(k).get_node().get_data()
            bias.input(k).replace_source_output(ops.constant(
                np.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, extra)])).output(0))
        w2 = nxt.input_value(1).get_node().get_data()
        tb2 = nxt.get_attributes()["transpose_b"]
        nxt.input(1).replace_source_output(ops.constant(
            np.pad(w2, ((0, 0), (0, extra)) if tb2 else ((0, extra), (0, 0)))).output(0))
        padded += 1
    if padded:
        model.validate_nodes_and_infer_types()
    return padded


def exact_input_layers(model) -> int:
    """Give the dense layers that read the model's inputs their inputs at full precision
    under a bf16 hint, in place.

    bf16 keeps 8 bits of mantissa: rounding normalised reflectances to it is where bf16
    loses accuracy (on the Buffalo model it moved test OA by -0.0033; rounding every
    hidden activation and weight instead moved it by 0.0000). Each MatMul with constant
    2-D weights that no other MatMul or Convolution precedes gets ``[hi, lo]`` for its input
    ``x``, ``hi`` = x rounded to bf16 and ``lo = x - hi``, and its weights stacked twice
    along the reduced axis: ``hi @ W + lo @ W = x @ W`` with ``hi`` exact in bf16 and ``lo``
    rounded 2^8 times finer. The reduced width grows (10 bands -> 20), which the matrix
    units' 32-wide tiles absorb. In float32 the function is unchanged.

    Returns
    -------
    int
        How many layers were rewritten.
    """
    import openvino.opset13 as ops

    after_dense: set[str] = set()
    chosen = []
    for op in model.get_ordered_ops():
        inputs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        if any(n.get_name() in after_dense or n.get_type_name() in ("MatMul", "Convolution")
               for n in inputs):
            after_dense.add(op.get_name())
        elif op.get_type_name() == "MatMul" and not op.get_attributes()["transpose_a"] \
                and op.input_value(0).get_partial_shape().rank.get_length() == 2:
            w = _const_2d(op.input_value(1).get_node())
            if w is not None:
                chosen.append((op, w))
    for op, w in chosen:
        x = op.input_value(0)
        hi = ops.convert(ops.convert(x, "bf16"), x.get_element_type())
        both = ops.concat([hi, ops.subtract(x, hi)], axis=1)
        op.input(0).replace_source_output(both.output(0))
        op.input(1).replace_source_output(ops.constant(
            np.concatenate([w, w], axis=1 if op.get_attributes()["transpose_b"] else 0)).output(0))
    if chosen:
        model.validate_nodes_and_infer_types()
    return len(chosen)


def bf16_rewrites(model, *, width_multiple: int = BF16_WIDTH_MULTIPLE) -> tuple[Any, dict[str, int]]:
    """A copy of ``model`` rewritten for bf16 (:func:`pad_hidden_widths` to
    ``width_multiple``, none where it is 1, then :func:`exact_input_layers`), and what
    each rewrite did."""
    model = model.clone()
    padded = pad_hidden_widths(model, width_multiple) if width_multiple > 1 else 0
    return model, {"width_multiple": int(width_multiple), "hidden_widths_padded": padded,
                   "input_layers_exact": exact_input_layers(model)}


# ---------------------------------------------------------------- the graph a predictor compiles


def graph_with_outputs(model, class_values: np.ndarray, kind: str, batch_size: int, n_bands: int):
    """A copy of ``model`` at a fixed batch shape whose outputs are what ``kind`` needs.

    ``rows``: class value (u8) and confidence (u8 percent); ``full``: those plus
    probabilities in u8 percent and float32.

    A model ending in a Softmax over its classes is cut before it (:func:`softmax_input`):
    the class is the largest logit and the confidence ``1 / sum(exp(logit - max))``, which
    is the largest probability without computing the others (OpenVINO's Softmax over 5
    classes was a sixth of a bf16 forward pass: 2.24 -> 2.54 Mpx/s on one thread). With
    ``full`` the probabilities are ``exp(logit - max) x confidence`` from the same terms, so
    the confidence is their maximum exactly. Other models: the largest of their outputs.
    """
    ov = import_openvino()
    import openvino.opset13 as ops

    model = model.clone()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"the OpenVINO engine takes a model of one input and one output, this one "
                         f"has {len(model.inputs)} and {len(model.outputs)}: use --engine keras")
    model.reshape({model.inputs[0]: ov.PartialShape([batch_size, n_bands])})
    probs = model.get_results()[0].input_value(0)
    logits = softmax_input(probs)
    axis1 = ops.constant(np.array([1], dtype=np.int64))
    top = ops.topk(probs if logits is None else logits, ops.constant(np.int64(1)), axis=1, mode="max",
                   sort="none", index_element_type="i32")
    best = ops.squeeze(top.output(1), axis1)
    classes = ops.gather(ops.constant(class_values.astype(np.uint8)), best, ops.constant(np.int64(0)))

    def percent(p):  # predict.py: clip(rint(p * 100.0), 0, 100).astype(uint8)
        scaled = ops.multiply(p, ops.constant(np.float32(100.0)))
        return ops.convert(ops.clamp(ops.round(scaled, "half_to_even"), 0.0, 100.0), "u8")

    if logits is None:
        confidence = ops.squeeze(top.output(0), axis1)
    else:
        terms = ops.exp(ops.subtract(logits, top.output(0)))  # the largest is exp(0) = 1
        total = ops.reduce_sum(terms, axis1, keep_dims=True)
        largest = ops.divide(ops.constant(np.ones((1, 1), np.float32)), total)
        confidence = ops.squeeze(largest, axis1)
        if kind == "full":  # terms x largest, not terms / sum: OpenVINO would fuse that back
            probs = ops.multiply(terms, largest).output(0)  # into a Softmax, whose largest may differ
    outs = [classes.output(0), percent(confidence).output(0)]
    if kind == "full":
        outs += [percent(probs).output(0), probs]
    return ov.Model(outs, model.get_parameters(), f"s2dask-{kind}")


def softmax_input(output):
    """The logits feeding ``output`` when it is a float32 Softmax over the last axis of a
    ``(batch, classes)`` tensor, else None."""
    node = output.get_node()
    if node.get_type_name() != "Softmax" or output.get_partial_shape().rank.get_length() != 2:
        return None
    axis = int(node.get_attributes().get("axis", 1))
    logits = node.input_value(0)
    return logits if axis in (1, -1) and logits.get_element_type().get_type_name() == "f32" else None
