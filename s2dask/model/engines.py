"""Inference engines: which one runs a bundle's forward pass, in which precision, and the
OpenVINO one itself (bf16 on the CPU's matrix units).

Three pieces, usable on their own:

- :func:`resolve` turns the user's ``engine`` / ``precision`` / ``device`` options into a
  frozen :class:`EngineChoice` (what runs, and why). ``auto`` is OpenVINO on CPU workers,
  bfloat16 where the CPU has bf16 matrix instructions (AMX / AVX512_BF16, as OpenVINO
  reports them), float32 elsewhere, and Keras on GPU workers.
- :func:`convert` (from :mod:`s2dask.model.openvino_ir`, re-exported here) turns any Keras 3
  model of a bundle into an OpenVINO model (Keras' own ``model.export(format="openvino")``:
  generic over layers and over the TensorFlow, JAX and torch backends); :func:`export_ir`
  stores that IR in the bundle (``model.xml`` /
  ``model.bin`` beside ``model.keras``, their sha256 in ``model.json``) so that workers can
  load it with :func:`load_ir` without importing a deep-learning backend at all.
- :class:`OpenVINOPredictor` has the interface of :class:`s2dask.model.blocks.Predictor`
  (``forward``, ``valid_mask``, ``predict_proba``, ``predict_classes``, ``predict_rows``
  and the attributes :func:`s2dask.model.blocks.block_outputs` reads), so every prediction path
  takes either. The compiled graph ends in the outputs the job writes: the class value
  (argmax mapped through the class table) and the confidence (max probability in uint8
  percent, rounded like ``predict.py`` does), the probabilities only when asked. Every call
  is padded to one fixed batch shape, so a pixel's result does not depend on the chunking.

:func:`get_openvino_predictor` caches compiled predictors per process by
``(sha256, precision, batch_size, threads)``; that is the call a worker makes.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ModelError, ParameterError
from .blocks import DEFAULT_BATCH_SIZE as DEFAULT_KERAS_BATCH_SIZE
from .blocks import RowPredictor
from .card import card
from .openvino_ir import (
    BF16_WIDTH_MULTIPLE,
    OV_PRECISION,
    bf16_rewrites,
    convert,
    core,
    exact_input_layers,
    export_ir,
    graph_with_outputs,
    import_openvino,
    ir_from_bytes,
    load_ir,
    pad_hidden_widths,
)
from .openvino_ir import contract_field as _get
from .spatial import KerasSpatialPredictor, OpenVINOSpatialPredictor

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "DEVICES",
    "DEFAULT_OPENVINO_BATCH_SIZE",
    "DEFAULT_KERAS_BATCH_SIZE",
    "DEFAULT_KERAS_GPU_BATCH_SIZE",
    "EngineChoice",
    "check_options",
    "resolve",
    "detect_device",
    "default_batch_size",
    "cpu_has_bf16",
    "bf16_width_multiple",
    "convert",
    "export_ir",
    "load_ir",
    "ir_from_bytes",
    "OpenVINOPredictor",
    "BF16_WIDTH_MULTIPLE",
    "PRECISION_CHECK_KEY",
    "PRECISION_OA_BAR",
    "bf16_verdict",
    "pad_hidden_widths",
    "exact_input_layers",
    "get_openvino_predictor",
    "build_counts",
    "build_predictor",
    "describe",
    "engine_line",
]

ENGINES = ("auto", "keras", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("cpu", "gpu")

#: pixels per OpenVINO call: activations of a batch (2048 x 200 x 2-4 B) stay in L2;
#: measured best (or within noise of the best) for bf16 and fp32 (benchmarks/forward.py)
DEFAULT_OPENVINO_BATCH_SIZE = 2048
#: pixels per Keras call on a GPU: a call's fixed costs (dispatch, two transfers) then
#: weigh little against its pixels (benchmarks/gpu_tile.py)
DEFAULT_KERAS_GPU_BATCH_SIZE = 262144
#: OpenVINO's performance hint; with one stream and a fixed thread count LATENCY and
#: THROUGHPUT compile the same graph (benchmarks/forward.py measures both)
PERFORMANCE_HINT = "LATENCY"

_OV_PRECISION = OV_PRECISION


# ---------------------------------------------------------------- engine and precision


@dataclass(frozen=True)
class EngineChoice:
    """The engine, precision and device a predictor runs with, and why."""

    engine: str
    """``"keras"`` or ``"openvino"``."""
    precision: str
    """``"fp32"`` or ``"bf16"`` (the arithmetic of the matmuls; outputs are float32)."""
    device: str
    """``"cpu"`` or ``"gpu"``."""
    reason: str
    """One line: why ``auto`` chose this, or ``"asked for"``."""

    def record(self) -> dict[str, str]:
        """A JSON-ready dict (what ``job.json`` stores per worker)."""
        return asdict(self)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """The CPU flags of ``/proc/cpuinfo`` (Linux), ``None`` where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> tuple[bool, str]:
    """Whether this CPU has bf16 matrix instructions, and who said so.

    OpenVINO's own ``OPTIMIZATION_CAPABILITIES`` of the CPU device is asked first (it is
    what decides whether its bf16 kernels run); without OpenVINO, the ``amx_bf16`` /
    ``avx512_bf16`` flags of ``/proc/cpuinfo``.
    """
    try:
        caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "BF16" in caps, "OpenVINO CPU OPTIMIZATION_CAPABILITIES"
    except Exception:  # no openvino, or no CPU plugin: fall back on the kernel's flags
        pass
    flags = _cpu_flags()
    if flags is None:
        return False, "no OpenVINO and no /proc/cpuinfo"
    found = sorted(flags & {"amx_bf16", "avx512_bf16"})
    return bool(found), f"/proc/cpuinfo flags {','.join(found) or 'without amx_bf16/avx512_bf16'}"


def bf16_width_multiple() -> int:
    """The multiple a bf16 model's hidden widths are padded to on this CPU.

    :data:`BF16_WIDTH_MULTIPLE` (32, the width of an AMX tile) where the CPU has AMX
    (``amx_bf16`` in ``/proc/cpuinfo``); 1 (no padding) elsewhere: AVX512_BF16 works on
    16-wide vectors and pays for every padded unit (measured on AMD Zen 4: 200 wide
    1.15x faster than 224; benchmarks/forward.py).
    """
    flags = _cpu_flags() or frozenset()
    return BF16_WIDTH_MULTIPLE if "amx_bf16" in flags else 1


def _openvino_available() -> bool:
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ParameterError(f"{name} {value!r} is not one of {', '.join(allowed)}: "
                             f"give --{name} {'|'.join(allowed)}")
    return value.lower()


def check_options(engine: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """Check the names of the ``engine`` and ``precision`` options (what a client can check
    before its workers resolve ``auto``); return them lower-cased.

    Raises
    ------
    ParameterError
        For a value that is not one of :data:`ENGINES` / :data:`PRECISIONS`, or bf16 with
        the Keras engine.
    """
    engine = _check_choice("engine", engine, ENGINES)
    precision = _check_choice("precision", precision, PRECISIONS)
    if engine == "keras" and precision == "bf16":
        raise ParameterError("precision 'bf16' needs --engine openvino (or auto): the Keras "
                             "engine runs fp32 only")
    return engine, precision


def detect_device() -> str:
    """``"gpu"`` when this process sees an NVIDIA GPU, else ``"cpu"``; imports no backend.

    A GPU is seen when the driver lists one (``/proc/driver/nvidia/gpus`` or
    ``/dev/nvidia<N>``) and ``CUDA_VISIBLE_DEVICES`` does not hide them all (``""`` or
    ``-1``; dask-cuda sets it per worker). ``S2DASK_DEVICE=cpu|gpu`` overrides.
    """
    forced = os.environ.get("S2DASK_DEVICE", "").strip().lower()
    if forced in DEVICES:
        return forced
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return "gpu"
    except OSError:
        pass
    return "gpu" if any(Path("/dev").glob("nvidia[0-9]*")) else "cpu"


def default_batch_size(engine: str, device: str = "cpu") -> int:
    """Pixels per forward call of an engine when none is given (OpenVINO 2048; Keras 8192
    on a CPU, 262144 on a GPU)."""
    if engine == "openvino":
        return DEFAULT_OPENVINO_BATCH_SIZE
    return DEFAULT_KERAS_GPU_BATCH_SIZE if device == "gpu" else DEFAULT_KERAS_BATCH_SIZE


#: the key in ``model.json`` of what bf16 did to the model's test split at training
PRECISION_CHECK_KEY = "precision_check"
#: output pixels per forward call of a fully-convolutional model (one 512 x 512 tile and its halo)
DEFAULT_SPATIAL_BATCH_SIZE = 262144
#: windows per forward call of a patch model
DEFAULT_PATCH_BATCH_SIZE = 4096
#: bf16 should keep a model's test accuracy within this of float32 (issue 13's bar)
PRECISION_OA_BAR = 0.002
#: the least share of a check scene's classes bf16 must give as float32 (s2dask bundle --check)
PRECISION_AGREEMENT_BAR = 0.998


def bf16_verdict(contract) -> tuple[bool | None, str]:
    """Whether bf16 kept the model's test accuracy within the bar when it was trained.

    ``(True|False, what it measured)`` from the contract's ``precision_check`` (written by
    ``s2dask train``); ``(None, "")`` for no contract or a bundle without one (trained
    before, or on a machine that could not run bf16).
    """
    check = (_get(contract, PRECISION_CHECK_KEY) or {}).get("bf16") or {}
    if not check.get("checked"):
        return None, ""
    if "agreement" in check:  # s2dask bundle --check SCENE: class agreement on a window
        return bool(check.get("within_bar")), (
            f"bf16 gave {check['agreement']:.3%} of a check scene's classes as float32 when the "
            f"bundle was made (bar {check.get('bar', PRECISION_AGREEMENT_BAR):.1%})")
    return bool(check.get("within_bar")), (
        f"bf16 changed this model's test accuracy by {check.get('test_oa_minus_fp32', 0.0):+.4f} at "
        f"training (bar {check.get('bar', PRECISION_OA_BAR):g})")


def resolve(engine: str = "auto", precision: str = "auto", device: str = "cpu", *,
            bf16: bool | None = None, contract=None) -> EngineChoice:
    """Resolve the engine and precision options for a worker of ``device``.

    Parameters
    ----------
    engine
        ``"auto"`` (OpenVINO on CPU, Keras on GPU), ``"keras"`` or ``"openvino"``.
    precision
        ``"auto"`` (bf16 where the CPU has bf16 matrix instructions and the engine is
        OpenVINO, else fp32), ``"fp32"`` or ``"bf16"``.
    device
        ``"cpu"`` or ``"gpu"``: what the worker computes on.
    bf16
        Whether the CPU has bf16 matrix instructions; ``None``: ask this machine
        (:func:`cpu_has_bf16`). A client resolving for remote workers leaves ``auto`` to
        them, or passes what they reported.
    contract
        The model's contract: ``auto`` precision stays fp32 for a model whose test accuracy
        bf16 changed by more than the bar at training (:func:`bf16_verdict`).

    Returns
    -------
    EngineChoice

    Raises
    ------
    ParameterError
        For an unknown value, or a combination that cannot run (OpenVINO on a GPU
        worker, bf16 with the Keras engine, bf16 on a CPU without bf16 instructions).
    """
    engine = _check_choice("engine", engine, ENGINES)
    precision = _check_choice("precision", precision, PRECISIONS)
    device = _check_choice("device", device, DEVICES)
    if device == "gpu":
        if engine == "openvino":
            raise ParameterError("engine 'openvino' runs on CPU workers only: use --engine keras "
                                 "(or auto) on GPU workers")
        if precision == "bf16":
            raise ParameterError("precision 'bf16' needs the OpenVINO engine on a CPU worker: use "
                                 "--precision fp32 (or auto) on GPU workers")
        why = "auto: Keras on GPU workers" if engine == "auto" else "asked for"
        return EngineChoice("keras", "fp32", "gpu", why)
    if engine == "keras":
        if precision == "bf16":
            raise ParameterError("precision 'bf16' needs --engine openvino (or auto): the Keras "
                                 "engine runs fp32 only")
        return EngineChoice("keras", "fp32", "cpu", "asked for")
    if engine == "auto" and not _openvino_available():
        if precision == "bf16":
            raise ParameterError("precision 'bf16' needs OpenVINO, which is not installed: "
                                 "pip install openvino, or give --precision fp32")
        return EngineChoice("keras", "fp32", "cpu", "auto: openvino is not installed")
    engine_why = "auto: OpenVINO on CPU workers" if engine == "auto" else "asked for"
    if bf16 is None:
        bf16, source = cpu_has_bf16()
    else:
        source = "given by the caller"
    if precision == "bf16" and not bf16:
        raise ParameterError(f"precision 'bf16' needs a CPU with bf16 matrix instructions (AMX or "
                             f"AVX512_BF16) and this one has none ({source}): give --precision fp32 or auto")
    ok, measured = bf16_verdict(contract)  # (None, "") without a contract or a check
    if precision == "auto" and bf16 and ok is False:
        precision, why = "fp32", f"{engine_why}; fp32 because {measured}: give --precision bf16 for speed"
    elif precision == "auto":
        precision = "bf16" if bf16 else "fp32"
        why = f"{engine_why}; {precision} because bf16 matrix instructions are " \
              f"{'present' if bf16 else 'absent'} ({source})"
    else:
        why = engine_why if engine == "auto" else "asked for"
    return EngineChoice("openvino", precision, "cpu", why)


# ---------------------------------------------------------------- the predictor


class OpenVINOPredictor(RowPredictor):
    """A bundle's forward pass compiled by OpenVINO, with :class:`s2dask.model.blocks.Predictor`'s interface.

    Parameters
    ----------
    model
        An ``openvino.Model`` taking ``(N, bands)`` raw float32 values and returning
        ``(N, classes)`` probabilities (from :func:`convert` or :func:`load_ir`).
    contract
        The bundle's contract (bands, classes, input nodata).
    precision
        ``"fp32"`` or ``"bf16"`` (``INFERENCE_PRECISION_HINT``).
    batch_size
        Pixels per call; every call is padded to it.
    threads
        ``INFERENCE_NUM_THREADS``: the cores this predictor may use (1 in a
        single-threaded worker).
    hint
        ``PERFORMANCE_HINT`` (``"LATENCY"`` or ``"THROUGHPUT"``; one stream either way).
    width_multiple
        bf16 only: pad the hidden widths to this multiple (1: none); ``None``: what this
        CPU wants (:func:`bf16_width_multiple`).
    """

    def __init__(self, model, contract, *, precision: str = "fp32",
                 batch_size: int = DEFAULT_OPENVINO_BATCH_SIZE, threads: int = 1,
                 hint: str = PERFORMANCE_HINT, width_multiple: int | None = None):
        if precision not in _OV_PRECISION:
            raise ParameterError(f"precision {precision!r} is not one of fp32, bf16: resolve() it first")
        classes = _get(contract, "classes")
        self.contract = contract
        self.precision = precision
        self.batch_size = int(batch_size)
        self.threads = max(1, int(threads))
        self.hint = hint
        #: where the OpenVINO model came from: "ir" (stored / shipped IR) or "converted"
        self.source = "ir"
        self.n_bands = len(_get(contract, "bands"))
        self.n_classes = len(classes)
        self.class_values = np.array([_get(c, "value") for c in classes], dtype="uint8")
        self.input_nodata = _get(contract, "input_nodata")
        #: the bf16 graph rewrites (how many widths padded, input layers made exact), made once
        self.rewrites: dict[str, int] = {}
        if precision == "bf16":
            if width_multiple is None:
                width_multiple = bf16_width_multiple()
            model, self.rewrites = bf16_rewrites(model, width_multiple=width_multiple)
        self._model = model
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        n_out = model.outputs[0].get_partial_shape()[-1]
        if n_out.is_static and n_out.get_length() != self.n_classes:
            raise ModelError(f"the model has {n_out.get_length()} outputs but its contract names "
                             f"{self.n_classes} classes")
        self._compile("rows")  # now, not in the first task

    @property
    def engine(self) -> str:
        return "openvino"

    def record(self) -> dict:
        """What a job record stores about this predictor (per worker)."""
        ov = import_openvino()

        return {"engine": "openvino", "precision": self.precision, "batch_size": self.batch_size,
                "threads": self.threads, "hint": self.hint, "model_source": self.source,
                "openvino": ov.__version__.split("-")[0],
                **({"bf16_rewrites": dict(self.rewrites)} if self.rewrites else {})}

    def config(self) -> dict:
        """The compile properties (``PERFORMANCE_HINT``, threads, streams, precision)."""
        return {"INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
                "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": self.hint,
                # several single-thread worker processes on one host: never pin them all
                # to the same core
                "ENABLE_CPU_PINNING": False}

    def _compile(self, kind: str):
        with self._lock:
            compiled = self._compiled.get(kind)
            if compiled is None:
                model = graph_with_outputs(self._model, self.class_values, kind, self.batch_size, self.n_bands)
                compiled = core().compile_model(model, "CPU", self.config())
                self._compiled[kind] = compiled
            return compiled

    def _request(self, kind: str):
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = {}
        req = reqs.get(kind)
        if req is None:  # an infer request per thread: requests are not thread-safe
            req = reqs[kind] = self._compile(kind).create_infer_request()
        return req

    def _run(self, kind: str, values: np.ndarray, outs: list[np.ndarray]) -> None:
        """Fill ``outs`` (one array per graph output, first axis N) batch by batch."""
        req = self._request(kind)
        for start, stop, buf in self._padded_batches(values):
            res = req.infer({0: buf}, share_inputs=True, share_outputs=True)
            for i, out in enumerate(outs):
                out[start:stop] = res[i][:stop - start]

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` float32 for valid rows ``(N, bands)``; no nodata handling."""
        n = values.shape[0]
        outs = [np.empty(n, "uint8"), np.empty(n, "uint8"), np.empty((n, self.n_classes), "uint8"),
                np.empty((n, self.n_classes), "float32")]
        self._run("full", values, outs)
        return outs[3]

    def _fill_rows(self, values, classes, confidence, probs) -> None:
        """The graph writes the class values, confidence (and uint8 probabilities) straight
        into the given arrays; the float probabilities are dropped."""
        kind = "full" if probs is not None else "rows"
        outs = [classes, confidence] + ([probs, _Discard()] if probs is not None else [])
        self._run(kind, values, outs)


class _Discard:
    """An output sink that drops what is written to it (the float probabilities)."""

    def __setitem__(self, key, value) -> None:
        pass


# ---------------------------------------------------------------- the per-process cache

_CACHE: dict[tuple[str, str, int, int], OpenVINOPredictor] = {}
_BUILDS: dict[tuple[str, str, int, int], int] = {}
_CACHE_LOCK = threading.Lock()


def build_counts() -> dict[tuple[str, str, int, int], int]:
    """How many times each ``(sha256, precision, batch, threads)`` was compiled here."""
    return dict(_BUILDS)


def get_openvino_predictor(sha256: str, contract, load: Callable[[], Any], *, precision: str,
                           batch_size: int = DEFAULT_OPENVINO_BATCH_SIZE,
                           threads: int = 1) -> OpenVINOPredictor | OpenVINOSpatialPredictor:
    """The process's compiled predictor for a model, built on first use: an
    :class:`OpenVINOPredictor`, or an :class:`~s2dask.model.spatial.OpenVINOSpatialPredictor`
    for a patch or fully-convolutional model (its contract's card says which).

    Parameters
    ----------
    sha256
        The bundle's ``model_sha256`` (the identity of the model).
    contract
        The bundle's contract.
    load
        Called once, on a cache miss: returns an ``openvino.Model`` (e.g.
        ``lambda: load_ir(path)`` or ``lambda: ir_from_bytes(...)``, no backend import) or
        a Keras model (then converted with :func:`convert`, which imports the backend).
    precision
        ``"fp32"`` or ``"bf16"`` (an :class:`EngineChoice`'s).
    batch_size, threads
        As for :class:`OpenVINOPredictor`.

    Raises
    ------
    ModelError
        If the model cannot be loaded or converted.
    """
    key = (sha256, precision, int(batch_size), max(1, int(threads)))
    pred = _CACHE.get(key)
    if pred is not None:
        return pred
    with _CACHE_LOCK:
        pred = _CACHE.get(key)
        if pred is None:
            model = load()
            source = "ir"
            if not hasattr(model, "get_results"):  # a Keras model
                model, source = convert(model), "converted"
            kind = OpenVINOSpatialPredictor if card(contract).get("kind", "pixel") != "pixel" \
                else OpenVINOPredictor
            pred = kind(model, contract, precision=precision, batch_size=key[2], threads=key[3])
            pred.source = source
            _CACHE[key] = pred
            _BUILDS[key] = _BUILDS.get(key, 0) + 1
        return pred


# ---------------------------------------------------------------- either engine


def build_predictor(choice: EngineChoice, *, sha256: str, contract, keras_model: Callable[[], Any],
                    ir: Callable[[], Any] | None = None, batch_size: int | None = None,
                    threads: int | None = None):
    """The predictor of a resolved :class:`EngineChoice` (what workers and bundles call).

    Parameters
    ----------
    choice
        From :func:`resolve`.
    sha256, contract
        The bundle's model hash and contract.
    keras_model
        Returns the Keras model (deserialised in safe mode); called only by the Keras
        engine, or by OpenVINO when there is no stored IR (then converted, once per
        process).
    ir
        Returns the bundle's stored IR as an ``openvino.Model`` (no backend import), or
        ``None`` when the bundle has none.
    batch_size
        Pixels per call; ``None``: :func:`default_batch_size` of the engine.
    threads
        Threads of one forward pass (OpenVINO's ``INFERENCE_NUM_THREADS``; ``None``: 1).
        The Keras engine's threads are the backend's (``configure_threads``).

    Returns
    -------
    s2dask.model.blocks.Predictor or OpenVINOPredictor
        Either has ``record()``: engine, precision, batch size, threads, model source.

    Raises
    ------
    ModelError
        If the model cannot be loaded, converted or compiled.
    """
    bs = int(batch_size or default_batch_size(choice.engine, choice.device))
    if card(contract).get("kind", "pixel") != "pixel":
        bs = int(batch_size or (DEFAULT_PATCH_BATCH_SIZE if card(contract)["kind"] == "patch"
                                else DEFAULT_SPATIAL_BATCH_SIZE))
        if choice.engine == "keras":
            pred = KerasSpatialPredictor(keras_model(), contract, batch_size=bs)
            pred.threads = threads
            return pred
        return get_openvino_predictor(sha256, contract, ir or keras_model, precision=choice.precision,
                                      batch_size=bs, threads=threads or 1)
    if choice.engine == "keras":
        from .blocks import Predictor

        pred = Predictor(keras_model(), contract, batch_size=bs)
        pred.threads = threads
        return pred
    return get_openvino_predictor(sha256, contract, ir or keras_model, precision=choice.precision,
                                  batch_size=bs, threads=threads or 1)


def describe(choice: EngineChoice, predictor) -> dict:
    """One worker's engine record for ``job.json``: the choice and what the predictor runs with."""
    return {**choice.record(), **predictor.record()}


def engine_line(workers: dict) -> str:
    """One line about what the workers of a job ran: ``{worker: describe(...)}`` grouped.

    E.g. ``openvino bf16 on cpu, batch 2048, 1 thread, IR (2 workers)``; a spatial model adds
    its kind and halo (``..., dense model with a 6 px halo``).
    """
    groups: dict[str, int] = {}
    for rec in workers.values():
        threads = rec.get("threads")
        text = (f"{rec.get('engine')} {rec.get('precision')} on {rec.get('device', '?')}, "
                f"batch {rec.get('batch_size')}"
                + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
                + {"ir": ", IR", "converted": ", converted"}.get(rec.get("model_source"), "")
                + (f", {rec['kind']} model with a {rec.get('halo', 0)} px halo" if rec.get("kind") else ""))
        groups[text] = groups.get(text, 0) + 1
    return "; ".join(f"{text} ({n} worker{'s' if n != 1 else ''})" for text, n in groups.items())
