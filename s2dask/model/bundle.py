"""The model bundle: build, save, load, and the input contract it carries.

A bundle is a directory::

    MODEL_DIR/
      model.keras     the Keras 3 model, normalisation included (it takes raw DNs)
      model.json      the input contract: bands in order, scale, nodata, classes, sha256 ...
      metrics.json    the held-out evaluation written by training (optional here)

:func:`load_model` checks the bundle before anything runs: the contract is complete,
``model.keras`` matches the sha256 recorded in ``model.json``, and the Keras model
deserialises in safe mode. What travels to Dask workers is a :class:`ModelHandle`
(bytes plus hash), never a live Keras model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ModelError
from ..io.records import sha256_file
from ..io.storage import atomic_write_json
from ..scene.bands import canonical_bands
from .backend import UNSAFE_MESSAGE, load_keras_model, require_keras
from .card import MLM_FILE, card, mlm_item
from .contract import (
    CONTRACT_FILE,
    CONTRACT_VERSION,
    DEFAULT_COLOURS,
    MAX_CLASSES,
    MODEL_FILE,
    OUTPUT_NODATA,
    ClassInfo,
    InputContract,
    check_model_size,
    normalise_classes,
)
from .openvino_ir import ir_from_bytes, ir_record, read_ir

__all__ = [
    "CONTRACT_VERSION",
    "OUTPUT_NODATA",
    "MAX_CLASSES",
    "DEFAULT_COLOURS",
    "build_model",
    "save_bundle",
    "load_model",
    "inspect_archive",
    "check_model_shape",
    "ModelBundle",
    "ModelHandle",
    "sha256_file",
    "library_versions",
    "metrics_summary",
    "unsafe_layers",
]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's behaviour (for records)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("s2dask", "keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy",
                 "dask", "distributed", "xarray", "rioxarray", "rasterio", "zarr"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    if "keras" in sys.modules:  # never import a backend just to name it
        out["keras_backend"] = sys.modules["keras"].backend.backend()
    else:
        out["keras_backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    return out


def build_model(
    n_bands: int,
    n_classes: int,
    *,
    mean: Sequence[float],
    variance: Sequence[float],
    units: Sequence[int] = (200, 200, 200, 200),
    dropout: Sequence[float] = (0.2, 0.2, 0.1, 0.1),
    l1: float = 1e-5,
    l2: float = 1e-4,
    seed: int | None = None,
):
    """Build the tutorial's MLP with its normalisation inside.

    ``Input(n_bands) -> Normalization(mean, variance) -> [Dense(u, relu) -> Dropout(d)]*
    -> Dense(n_classes, softmax)``. The normalisation statistics are those of the
    training split, so the model takes raw band values at prediction time.

    Parameters
    ----------
    n_bands, n_classes
        Input and output sizes.
    mean, variance
        Per-band statistics of the training split (the ``Normalization`` layer's).
    units, dropout
        Hidden layer widths and their dropout rates (one per layer, or none).
    l1, l2
        Kernel regularisation of the hidden layers.
    seed
        Seeds the weight initialisation.

    Raises
    ------
    ModelError
        If the sizes are inconsistent, or Keras is not installed.
    """
    if n_bands < 1 or n_classes < 2:
        raise ModelError(f"a model needs >= 1 band and >= 2 classes, got {n_bands} and {n_classes}")
    if len(dropout) not in (0, len(units)):
        raise ModelError(f"give one dropout rate per hidden layer ({len(units)}), got {len(dropout)}")
    keras = require_keras()
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    mean = np.asarray(mean, dtype="float32").reshape(n_bands)
    variance = np.maximum(np.asarray(variance, dtype="float32").reshape(n_bands), 1e-6)
    reg = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
    layers: list[Any] = [
        keras.Input(shape=(n_bands,), name="bands", dtype="float32"),
        keras.layers.Normalization(mean=mean, variance=variance, name="normalise"),
    ]
    for i, u in enumerate(units):
        layers.append(keras.layers.Dense(int(u), activation="relu", kernel_regularizer=reg,
                                         name=f"dense_{i}"))
        if dropout and dropout[i] > 0:
            layers.append(keras.layers.Dropout(float(dropout[i]), name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(n_classes, activation="softmax", name="classes"))
    return keras.Sequential(layers, name="s2dask_mlp")


def save_bundle(
    model,
    out_dir: str | os.PathLike,
    *,
    bands: Sequence[str],
    classes: Sequence[dict],
    input_nodata: float | None = 0,
    input_scale: str = "dn",
    extra: dict | None = None,
) -> dict:
    """Write ``model.keras``, ``model.json`` and ``mlm.json`` (the model's STAC MLM item,
    :func:`s2dask.model.card.mlm_item`) into an existing directory.

    Parameters
    ----------
    model
        A Keras 3 model taking ``(N, len(bands))`` raw values and returning
        ``(N, len(classes))`` probabilities.
    out_dir
        Directory to write into (the caller creates it, usually a temporary one that is
        renamed into place when everything is written).
    bands
        Band names in the model's input order (aliases accepted, stored canonical).
    classes
        ``[{"value": int, "name": str, "colour": "#rrggbb"}, ...]`` in the model's output order.
    input_nodata
        The band value that marks a missing pixel (0 for Sentinel-2 DNs).
    input_scale
        ``"dn"``: raw L1C/L2A digital numbers with no baseline offset (reflectance x 10000).
    extra
        More provenance (training data hash, split, seed, training parameters).

    Returns
    -------
    dict
        The contract written to ``model.json``.

    Raises
    ------
    ModelError
        If bands or classes do not match the model's input and output sizes.
    """
    out = Path(out_dir)
    bands = canonical_bands(bands)
    infos = normalise_classes(classes)
    check_model_size(model.input_shape[-1], model.output_shape[-1], bands=len(bands),
                     classes=len(infos), where="the model")
    model_path = out / MODEL_FILE
    model.save(model_path)
    contract = {
        "contract_version": CONTRACT_VERSION,
        "bands": bands,
        "input_scale": input_scale,
        "input_offset": 0,
        "input_nodata": input_nodata,
        "classes": [c.to_dict() for c in infos],
        "output_nodata": OUTPUT_NODATA,
        "model_file": MODEL_FILE,
        "model_sha256": sha256_file(model_path),
        "versions": library_versions(),
    }
    contract.update(extra or {})
    atomic_write_json(out / CONTRACT_FILE, contract)
    atomic_write_json(out / MLM_FILE, mlm_item(contract))
    return contract


@dataclass(frozen=True)
class ModelHandle:
    """What travels to a Dask worker: the model file's bytes, its hash and its contract.

    It is small (the default MLP is about 1.5 MB) and is sent once per worker by
    :class:`s2dask.job.cluster.ModelPlugin`, never inside a task.
    """

    sha256: str
    payload: bytes = field(repr=False)
    contract: InputContract = field(repr=False)
    source: str = ""  # where the bytes came from, for messages
    #: the bundle's stored OpenVINO IR, ``(xml, bin)`` bytes (about 0.5 MB), when it has one
    ir: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def ir_model(self):
        """The stored IR as an ``openvino.Model`` (hashes checked), or ``None``; no backend import."""
        if self.ir is None:
            return None
        rec = ir_record(self.contract) or {}
        return ir_from_bytes(*self.ir, xml_sha256=rec.get("xml_sha256"), bin_sha256=rec.get("bin_sha256"),
                             source=f"{self.source or 'the model'} (OpenVINO IR)")

    def build(self):
        """Deserialise the Keras model (safe mode) from the bytes."""
        if hashlib.sha256(self.payload).hexdigest() != self.sha256:
            raise ModelError(f"model payload does not match its sha256 {self.sha256[:12]}...")
        with tempfile.TemporaryDirectory(prefix="s2dask-model-") as d:
            p = Path(d) / MODEL_FILE
            p.write_bytes(self.payload)
            try:
                return load_keras_model(p)
            except ModelError as exc:  # name the bundle, not the worker's temporary copy
                raise ModelError(str(exc).replace(str(p), self.source or "the model")) from None


def unsafe_layers(config: Any) -> list[str]:
    """``"Lambda 'name'"`` for each layer of a Keras model configuration that needs unsafe
    deserialisation: Lambda layers (Python bytecode inside the file) and classes from
    packages other than Keras' (importing them runs their code)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
            cfg = node.get("config")
            name = cfg.get("name") if isinstance(cfg, dict) else None
            foreign = isinstance(cls, str) and isinstance(module, str) and \
                not (module == "builtins" or module.startswith("keras"))
            if cls == "Lambda" or foreign or (isinstance(registered, str) and ">" in registered):
                found.append(f"{cls} {name!r}" if name else str(cls or registered))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def inspect_archive(path: str | os.PathLike) -> dict:
    """Check a ``.keras`` archive's configuration without importing Keras.

    Refuses what Keras' safe mode would refuse (``Lambda`` layers, layers or functions from
    modules other than Keras') and reports the input and output sizes where the model is
    a ``Sequential`` stack. Lets a client validate a bundle without loading TensorFlow;
    the workers still deserialise it in safe mode.

    Returns
    -------
    dict
        ``{"n_inputs": int | None, "n_outputs": int | None}``.

    Raises
    ------
    ModelError
        If the file is not a Keras 3 archive or needs unsafe deserialisation.
    """
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {exc}); "
                         "save it with model.save('model.keras') from Keras 3") from None

    bad = unsafe_layers(config)
    if bad:
        raise ModelError(UNSAFE_MESSAGE.format(path=path))
    n_in = n_out = None
    if config.get("class_name") == "Sequential":
        layers = config.get("config", {}).get("layers", [])
        if layers and layers[0].get("class_name") == "InputLayer":
            shape = layers[0].get("config", {}).get("batch_shape") or []
            n_in = shape[-1] if shape else None
        for layer in reversed(layers):
            units = layer.get("config", {}).get("units")
            if units is not None:
                n_out = int(units)
                break
    return {"n_inputs": n_in, "n_outputs": n_out}


class ModelBundle:
    """A validated model bundle: its contract, hash, and (lazily) the Keras model.

    Use :func:`load_model` to get one.
    """

    def __init__(self, path: Path, contract: InputContract):
        self.path = Path(path)
        self.contract = contract
        self._keras = None
        self._predictors: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    # -- the contract
    @property
    def sha256(self) -> str:
        return self.contract.model_sha256

    @property
    def bands(self) -> list[str]:
        return list(self.contract.bands)

    @property
    def classes(self) -> list[ClassInfo]:
        return list(self.contract.classes)

    @property
    def class_values(self) -> np.ndarray:
        return np.array(self.contract.class_values, dtype="uint8")

    @property
    def input_nodata(self):
        return self.contract.input_nodata

    @property
    def model_file(self) -> Path:
        return self.path / self.contract.model_file

    @property
    def card(self) -> dict:
        """The model card: kind, receptive field and halo, scaling, outputs, source file."""
        return card(self.contract)

    def __repr__(self) -> str:
        return (f"ModelBundle({str(self.path)!r}, bands={self.bands}, "
                f"classes={[c.name for c in self.classes]}, sha256={self.sha256[:12]})")

    # -- the model
    def keras_model(self):
        """The Keras model, deserialised once (safe mode) and checked against the contract."""
        with self._lock:
            if self._keras is None:
                model = load_keras_model(self.model_file)
                check_model_shape(model, self.contract, where=self.model_file)
                self._keras = model
            return self._keras

    def handle(self) -> ModelHandle:
        """The small, picklable handle that carries the model to workers."""
        payload = self.model_file.read_bytes()
        if hashlib.sha256(payload).hexdigest() != self.sha256:
            raise ModelError(
                f"{self.model_file} changed since it was loaded (sha256 mismatch): reload the bundle"
            )
        return ModelHandle(self.sha256, payload, self.contract, str(self.model_file),
                           ir=read_ir(self.path, self.contract))

    @property
    def has_ir(self) -> bool:
        """Whether the bundle stores an OpenVINO IR (``model.xml``/``model.bin``)."""
        return ir_record(self.contract) is not None

    def predictor(self, *, batch_size: int | None = None, engine: str = "auto", precision: str = "auto",
                  threads: int | None = None):
        """The compiled, fixed-batch forward pass used by every prediction path.

        ``engine`` and ``precision`` are resolved here, as a job's workers resolve them
        (:func:`s2dask.model.engines.resolve` for this process's device), so the default
        in-process prediction equals the default job's, pixel for pixel.

        Parameters
        ----------
        batch_size
            Pixels per call (``None``: the engine's default, Keras 8192, OpenVINO 2048).
        engine, precision
            ``auto|keras|openvino`` and ``auto|fp32|bf16``.
        threads
            OpenVINO threads (``None``: all cores); Keras uses its backend's.

        Raises
        ------
        ParameterError
            If ``engine``/``precision`` is unknown or cannot run here.
        ModelError
            If the model cannot be loaded, converted or compiled.
        """
        from .engines import detect_device, resolve

        choice = resolve(engine, precision, detect_device(), contract=self.contract)
        return self.predictor_for(choice, batch_size=batch_size, threads=threads)

    def predictor_for(self, choice, *, batch_size: int | None = None, threads: int | None = None):
        """:meth:`predictor` for an engine choice already resolved
        (:class:`s2dask.model.engines.EngineChoice`): built once per engine, precision, batch size
        and threads, and cached in this bundle."""
        from .engines import build_predictor

        key = (choice.engine, choice.precision, batch_size, threads)
        with self._lock:
            pred = self._predictors.get(key)
        if pred is None:
            pred = build_predictor(
                choice, sha256=self.sha256, contract=self.contract, keras_model=self.keras_model,
                ir=(lambda: ir_from_bytes(*read_ir(self.path, self.contract))) if self.has_ir else None,
                batch_size=batch_size, threads=threads or os.cpu_count() or 1)
            with self._lock:
                self._predictors[key] = pred
        return pred

    def predict_proba(self, values: np.ndarray, *, batch_size: int | None = None, engine: str = "auto",
                      precision: str = "auto") -> np.ndarray:
        """Class probabilities, ``(N, n_classes)`` float32, for raw band values ``(N, bands)``.

        Rows with the input nodata value in any band get NaN probabilities.

        Raises
        ------
        ModelError
            If ``values`` does not have one column per contract band.
        """
        pred = self.predictor(batch_size=batch_size, engine=engine, precision=precision)
        return pred.predict_proba(self._check(values))

    def predict(self, values: np.ndarray, *, batch_size: int | None = None, engine: str = "auto",
                precision: str = "auto") -> np.ndarray:
        """Class values (uint8, the contract's values; 255 where any band is nodata).

        ``engine``/``precision``/``batch_size`` as for :meth:`predictor` (default: what a
        job's workers on this machine run).

        Raises
        ------
        ModelError
            If ``values`` does not have one column per contract band.
        ParameterError
            If ``engine``/``precision`` is unknown or cannot run here.
        """
        pred = self.predictor(batch_size=batch_size, engine=engine, precision=precision)
        return pred.predict_classes(self._check(values))

    def predict_image(self, image: np.ndarray, *, engine: str = "auto", precision: str = "auto",
                      batch_size: int | None = None) -> np.ndarray:
        """Class values ``(y, x)`` uint8 of a whole ``(bands, y, x)`` image of raw band values
        (255 where any band is nodata), the image's edges taken as the scene's: what a job
        gives for that scene, whatever its chunks. Pixel and spatial models alike.

        Raises
        ------
        ModelError
            If ``image`` does not have one band per contract band.
        ParameterError
            If ``engine``/``precision`` is unknown or cannot run here.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] != len(self.bands):
            raise ModelError(f"expected an image of shape ({len(self.bands)}, y, x) with bands "
                             f"{','.join(self.bands)}, got shape {image.shape}")
        pred = self.predictor(batch_size=batch_size, engine=engine, precision=precision)
        nb, ny, nx = image.shape
        rows = image.reshape(nb, ny * nx).T
        if not getattr(pred, "spatial", False):
            return pred.predict_classes(rows).reshape(ny, nx)
        prob = pred.predict_image(image)
        valid = pred.valid_mask(rows).reshape(ny, nx)
        return np.where(valid, self.class_values[np.argmax(prob, axis=0)], OUTPUT_NODATA).astype("uint8")

    def _check(self, values) -> np.ndarray:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != len(self.bands):
            raise ModelError(
                f"expected an array of shape (N, {len(self.bands)}) with bands "
                f"{','.join(self.bands)}, got shape {values.shape}"
            )
        return values


def check_model_shape(model, contract: InputContract, *, where) -> None:
    """Refuse a Keras model whose input/output sizes disagree with its contract.

    Raises
    ------
    ModelError
        If a size disagrees.
    """
    contract.check_model_size(model.input_shape[-1], model.output_shape[-1], where=where)


def load_model(model_dir: str | os.PathLike, *, check_keras: bool = True) -> ModelBundle:
    """Open and validate a model bundle directory.

    Parameters
    ----------
    model_dir
        A directory written by ``s2dask train`` (or :func:`save_bundle`).
    check_keras
        Also deserialise the Keras model now (safe mode) and check its input and output
        sizes against the contract. Without it the archive's configuration is still
        checked (safe-mode rules, and the sizes of a Sequential model) without importing
        Keras; jobs do that on the client and leave deserialisation to the workers.

    Returns
    -------
    ModelBundle

    Raises
    ------
    ModelError
        If the directory, ``model.json`` or ``model.keras`` is missing, the contract is
        incomplete, the sha256 does not match (a tampered or corrupt bundle), a stored
        OpenVINO IR does not match its recorded hashes, or the model needs unsafe
        deserialisation.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"model bundle {path} does not exist or is not a directory: "
                         "give the MODEL_DIR written by 's2dask train'")
    cpath = path / CONTRACT_FILE
    if not cpath.is_file():
        raise ModelError(f"{path} has no {CONTRACT_FILE}: the bundle's contract is missing; "
                         "re-create it with 's2dask train'")
    try:
        contract = json.loads(cpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cpath} is not valid JSON ({exc}): re-create the bundle") from None
    contract = InputContract.from_dict(contract, where=cpath)
    mpath = path / contract.model_file
    if not mpath.is_file():
        raise ModelError(f"{path} has no {mpath.name}: the bundle is incomplete")
    actual = sha256_file(mpath)
    if actual != contract.model_sha256:
        raise ModelError(
            f"{mpath} does not match the sha256 recorded in {CONTRACT_FILE} "
            f"({actual[:12]}... != {contract.model_sha256[:12]}...): the bundle is corrupt or "
            "was modified; re-train or restore it"
        )
    read_ir(path, contract)  # a stored IR must match its recorded hashes and this model.keras
    bundle = ModelBundle(path, contract)
    shape = inspect_archive(mpath)
    contract.check_model_size(shape["n_inputs"], shape["n_outputs"], where=mpath,
                              hint=": the bundle is inconsistent; re-create it with 's2dask train'")
    if check_keras:
        bundle.keras_model()
    return bundle


def metrics_summary(model_dir: str | Path) -> dict | None:
    """The headline of a bundle's ``metrics.json``: test OA, kappa, split; ``None`` if absent.

    Parameters
    ----------
    model_dir
        A model bundle directory.
    """
    import json

    try:
        m = json.loads((Path(model_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    split = m.get("split") or {}
    leak = split.get("leakage") or {}
    bf16 = (m.get("precision") or {}).get("bf16") or {}
    return {"evaluated_on": m.get("evaluated_on"), "overall_accuracy": m.get("overall_accuracy"),
            "kappa": m.get("kappa"), "n": m.get("n", split.get("counts", {}).get("test")),
            "split": split.get("method"),
            "test_pixels_in_train": leak.get("test_pixels_in_train"),
            "best_epoch": m.get("best_epoch"), "epochs_run": m.get("epochs_run"),
            "bf16_test_oa_minus_fp32": bf16.get("test_oa_minus_fp32")}
