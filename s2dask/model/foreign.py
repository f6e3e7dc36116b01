"""Models made elsewhere: a Keras 3 ``.keras`` file, a legacy HDF5 ``.h5`` (Keras 2, as R
``keras`` and ``tf.keras`` write it) or a TensorFlow SavedModel directory, turned into a
bundle that every s2dask command accepts (:func:`bundle`).

The scaling a user applied outside the model (R's ``scale()``: z-scores with the training
means and standard deviations; or ``x * scale + offset``) is folded into the bundle as
standard Keras layers in front of the model, and logits get a softmax behind it, so every
engine and :meth:`~s2dask.model.bundle.ModelBundle.predict` take raw digital numbers, as they
do for the models ``s2dask train`` writes. Everything is checked on the client before
anything is written; the bundle is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ModelError, OutputExistsError, ParameterError
from ..io.records import sha256_file
from ..io.storage import atomic_write_json, staged_dir
from ..scene.bands import canonical_bands
from .backend import require_keras
from .bundle import load_model, save_bundle, unsafe_layers
from .contract import CONTRACT_FILE, normalise_classes
from .engines import PRECISION_AGREEMENT_BAR, PRECISION_CHECK_KEY
from .openvino_ir import export_ir
from .spatial import describe

__all__ = ["SOURCE_FORMATS", "OUTPUTS", "Scaling", "source_format", "read_model_file",
           "read_class_table", "bf16_scene_check", "bundle"]

#: the model files :func:`bundle` reads
SOURCE_FORMATS = ("keras", "h5", "savedmodel")
#: what a model's output units hold
OUTPUTS = ("probabilities", "logits")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_FLAG = "--unsafe (unsafe=True in Python)"


@dataclass(frozen=True)
class Scaling:
    """The scaling applied to raw band values before the model: clipped to ``clip``, then
    ``x * scale + offset``, then ``(x - mean) / std`` per band (each part optional)."""

    #: multiplies every band value (``None``: 1)
    scale: float | None = None
    #: added after the scale (``None``: 0)
    offset: float | None = None
    #: per-band means of the z-score (``None``: no z-score)
    mean: tuple[float, ...] | None = None
    #: per-band standard deviations of the z-score
    std: tuple[float, ...] | None = None
    #: ``(minimum, maximum)`` of the raw values, either ``None`` (``None``: no clipping)
    clip: tuple[float | None, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The card's ``scaling`` entry."""
        return {"scale": self.scale, "offset": self.offset,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None,
                "clip": list(self.clip) if self.clip is not None else None}

    @property
    def empty(self) -> bool:
        return self.scale is None and self.offset is None and self.mean is None and self.clip is None


def source_format(path: str | os.PathLike) -> str:
    """Which of :data:`SOURCE_FORMATS` ``path`` is, from its content (not its name).

    Raises
    ------
    ModelError
        If it does not exist, is an s2dask bundle already, or is none of them.
    """
    path = Path(path)
    hint = "give a Keras 3 .keras file, a Keras 2 .h5 file or a TensorFlow SavedModel directory"
    if not path.exists():
        raise ModelError(f"model file {path} does not exist: {hint}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        if (path / "model.json").is_file():
            raise ModelError(f"{path} is an s2dask bundle already: give it to 'classify --model' as it is")
        raise ModelError(f"{path} is a directory without saved_model.pb, not a SavedModel: {hint}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return "keras"
    if head == _HDF5_MAGIC:
        return "h5"
    raise ModelError(f"{path} is not a model file (neither a .keras archive nor HDF5): {hint}")


def _refuse_unsafe(path: Path, bad: list[str], unsafe: bool) -> None:
    if bad and not unsafe:
        raise ModelError(f"{path} needs unsafe deserialisation for layer {bad[0]} (it would run code "
                         f"from the file): rebuild it from standard layers, or pass {_FLAG} if you trust it")


def _config_of(path: Path, fmt: str) -> Any:
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        if fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
            if raw is None:
                raise ModelError(f"{path} holds weights only (no model_config): save the whole model, "
                                 "e.g. save_model_hdf5() in R or model.save('model.h5') in Python")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path} is not a readable {fmt} model ({type(exc).__name__}: {exc})") from None
    return None


def read_model_file(path: str | os.PathLike, *, unsafe: bool = False) -> tuple[Any, str]:
    """Load a model file made elsewhere as a Keras 3 model, without compiling it.

    Parameters
    ----------
    path
        A ``.keras`` archive, a legacy ``.h5`` file, or a SavedModel directory written by
        Keras 2 (``tf.keras`` ``save()``, R's ``save_model_tf()``), read through ``tf_keras``.
    unsafe
        Allow layers that need unsafe deserialisation (Lambda layers, custom classes): only
        for files you trust, since loading them runs their code.

    Returns
    -------
    (model, format)

    Raises
    ------
    ModelError
        If the file is none of the formats, needs unsafe deserialisation without ``unsafe``
        (naming the layer), or cannot be loaded.
    """
    path = Path(path)
    fmt = source_format(path)
    keras = require_keras()
    if fmt == "savedmodel":
        return _read_savedmodel(path, keras, unsafe=unsafe), fmt
    _refuse_unsafe(path, unsafe_layers(_config_of(path, fmt)), unsafe)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {first})") from None
    return model, fmt


def _read_savedmodel(path: Path, keras, *, unsafe: bool):
    try:
        import tf_keras
    except ImportError:
        raise ModelError(f"{path} is a SavedModel; reading one needs tf-keras (Keras 2): "
                         "pip install 's2dask[keras2]'") from None
    try:
        old = tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} is a SavedModel without a loadable Keras model ({first}): export it "
                         "from Keras with model.save() (Python) or save_model_tf() (R)") from None
    _refuse_unsafe(path, unsafe_layers(json.loads(old.to_json())), unsafe)
    with tempfile.TemporaryDirectory(prefix="s2dask-savedmodel-") as d:
        h5 = Path(d) / "model.h5"
        old.save(str(h5), save_format="h5")
        try:
            return keras.saving.load_model(h5, compile=False, safe_mode=not unsafe)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{path}: its Keras 2 model does not load in Keras 3 ({first})") from None


def read_class_table(path: str | os.PathLike) -> list[dict]:
    """``value,name[,colour]`` rows (a header row is optional), row *i* naming output unit *i*.

    Raises
    ------
    ModelError
        If the file is missing, empty, or a value is not an integer.
    """
    path = Path(path)
    try:
        rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise ModelError(f"class table {path} cannot be read ({exc}): give a CSV of value,name[,colour]") from None
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]  # a header
    out = []
    for i, row in enumerate(rows):
        try:
            value = int(row[0])
        except ValueError:
            raise ModelError(f"class table {path}, row {i + 1}: value {row[0]!r} is not an integer "
                             "(columns: value,name[,colour])") from None
        entry: dict[str, Any] = {"value": value, "name": row[1].strip() if len(row) > 1 else str(value)}
        if len(row) > 2 and row[2].strip():
            entry["colour"] = row[2].strip()
        out.append(entry)
    if not out:
        raise ModelError(f"class table {path} has no rows: give one row value,name[,colour] per output unit")
    return out


def _floats(values: Sequence[float] | str | None, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be numbers separated by commas, got {values!r}") from None


def _scaling(bands: list[str], mean, std, scale, offset, clip=None) -> Scaling:
    mean, std = _floats(mean, "--mean"), _floats(std, "--std")
    if clip is not None:
        if isinstance(clip, str):
            clip = [None if not v.strip() else v for v in clip.split(",")]
        if len(clip) != 2:
            raise ParameterError(f"--clip takes MIN,MAX (either may be empty), got {clip!r}")
        try:
            clip = tuple(None if v is None else float(v) for v in clip)
        except (TypeError, ValueError):
            raise ParameterError(f"--clip takes numbers MIN,MAX, got {clip!r}") from None
        if clip == (None, None):
            clip = None
        elif None not in clip and clip[0] >= clip[1]:
            raise ParameterError(f"--clip minimum {clip[0]:g} is not below its maximum {clip[1]:g}")
    if (mean is None) != (std is None):
        raise ParameterError("give --mean and --std together (R: attr(scale(x), 'scaled:center') and "
                             "'scaled:scale')")
    if mean is not None:
        for what, vals in (("--mean", mean), ("--std", std)):
            if len(vals) != len(bands):
                raise ParameterError(f"{what} has {len(vals)} values but --bands names {len(bands)} "
                                     f"bands ({','.join(bands)}): give one per band, in that order")
        if any(not s > 0 for s in std):
            raise ParameterError(f"--std values must be > 0, got {','.join(f'{s:g}' for s in std)}")
    return Scaling(None if scale is None else float(scale), None if offset is None else float(offset),
                   mean, std, clip)


def _wrap(model, scaling: Scaling, outputs: str, keras):
    """The model with its scaling in front and a softmax behind logits, as standard layers."""
    if scaling.empty and outputs == "probabilities":
        return model
    inp = keras.Input(shape=tuple(model.input_shape[1:]), name="bands", dtype="float32")
    x = inp
    if scaling.clip is not None:  # clip(x, lo, hi) = lo + min(max(x - lo, 0), hi - lo)
        lo, hi = scaling.clip
        if lo is None:  # min(x, hi) = hi - max(hi - x, 0)
            x = keras.layers.Rescaling(-1.0, hi, name="clip_flip")(x)
            x = keras.layers.ReLU(name="clip")(x)
            x = keras.layers.Rescaling(-1.0, hi, name="clip_back")(x)
        else:
            x = keras.layers.Rescaling(1.0, -lo, name="clip_shift")(x)
            x = keras.layers.ReLU(max_value=None if hi is None else hi - lo, name="clip")(x)
            x = keras.layers.Rescaling(1.0, lo, name="clip_back")(x)
    if scaling.scale is not None or scaling.offset is not None:
        x = keras.layers.Rescaling(scaling.scale if scaling.scale is not None else 1.0,
                                   scaling.offset or 0.0, name="scale_offset")(x)
    if scaling.mean is not None:
        x = keras.layers.Normalization(mean=np.asarray(scaling.mean, "float32"),
                                       variance=np.square(np.asarray(scaling.std, "float32")),
                                       name="zscore")(x)
    y = model(x)
    if outputs == "logits":
        y = keras.layers.Softmax(name="softmax")(y)
    return keras.Model(inp, y, name="s2dask_bundle")


def _check_probabilities(model, card: dict, n_bands: int, where: Any) -> None:
    """Refuse outputs that are not probabilities (summing to 1 over the classes) on DN-like input."""
    rng = np.random.default_rng(0)
    if card["kind"] == "pixel":
        shape = (64, n_bands)
    elif card["kind"] == "patch":
        shape = (8, card["window"], card["window"], n_bands)
    else:
        edge = max(16, 2 * card.get("stride", 1))
        shape = (1, edge, edge, n_bands)
    x = rng.uniform(1, 10000, size=shape).astype("float32")
    p = np.asarray(model.predict(x, batch_size=shape[0], verbose=0), dtype="float64")
    if not (np.all(np.isfinite(p)) and np.all(p >= -1e-4) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3)):
        raise ModelError(f"{where}'s outputs are not probabilities (rows do not sum to 1): if its last "
                         "layer has no softmax, pass --outputs logits")


def bundle(model: str | os.PathLike, out: str | os.PathLike, *, bands: Sequence[str] | str,
           classes: str | os.PathLike | Sequence[dict], mean: Sequence[float] | str | None = None,
           std: Sequence[float] | str | None = None, scale: float | None = None,
           offset: float | None = None, clip: Sequence[float | None] | str | None = None,
           outputs: str = "probabilities",
           receptive_field: int | None = None, input_nodata: float | None = 0,
           check: str | os.PathLike | None = None, overwrite: bool = False, unsafe: bool = False,
           extra: dict | None = None):
    """Turn a model file made elsewhere into an s2dask model bundle.

    Parameters
    ----------
    model
        A Keras 3 ``.keras`` file, a legacy HDF5 ``.h5`` (Keras 2: R ``keras``'s
        ``save_model_hdf5()``, ``tf.keras``) or a SavedModel directory (R's
        ``save_model_tf()``, ``tf.keras`` ``save()``; needs ``tf-keras``).
    out
        The bundle directory to write.
    bands
        Band names in the model's input order (``B02,B03,...``; aliases such as ``B2`` accepted).
    classes
        A CSV of ``value,name[,colour]`` (row *i* names output unit *i*; its value is what
        maps hold), or the rows as dicts.
    mean, std
        Per-band z-score statistics applied outside the model in training (R's ``scale()``).
    scale, offset
        ``x * scale + offset`` before the model (before the z-score when both are given).
    clip
        ``(minimum, maximum)`` of the raw values (either ``None``), applied first.
    outputs
        ``"probabilities"`` (the default) or ``"logits"`` (a softmax is added).
    receptive_field
        A fully-convolutional model's receptive field edge in pixels (its halo is half of
        it); derived from the layers when ``None``.
    input_nodata
        The band value that marks a missing pixel (0 for Sentinel-2 digital numbers).
    check
        A scene to check bf16 against float32 on (:func:`bf16_scene_check`): the share of
        equal classes is recorded, and jobs' ``--precision auto`` keeps float32 for a
        model below the bar. Without it ``auto`` uses bf16 where the CPU has it.
    overwrite
        Replace an existing ``out``.
    unsafe
        Allow layers that need unsafe deserialisation (only for files you trust).
    extra
        More entries for ``model.json``.

    Returns
    -------
    ModelBundle
        The bundle, loaded and checked as :func:`~s2dask.model.bundle.load_model` does.

    Raises
    ------
    ModelError
        If the file is not a model, needs unsafe deserialisation, its input width or
        output units disagree with ``bands`` or ``classes``, its input rank cannot be
        mapped, a patch window is even, or a receptive field cannot be derived and was not
        given.
    ParameterError
        If ``mean``/``std`` do not give one value per band, or ``outputs`` is unknown.
    OutputExistsError
        If ``out`` exists and ``overwrite`` is false.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: choose another --out or pass --overwrite")
    if outputs not in OUTPUTS:
        raise ParameterError(f"--outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
    try:
        band_list = canonical_bands(bands)
    except Exception as exc:
        raise ParameterError(f"--bands: {exc}") from None
    table = read_class_table(classes) if isinstance(classes, (str, os.PathLike)) else list(classes)
    infos = normalise_classes(table)
    scaling = _scaling(band_list, mean, std, scale, offset, clip)
    src = Path(model)
    keras_model, fmt = read_model_file(src, unsafe=unsafe)
    keras_model, card = describe(keras_model, where=src, receptive_field_given=receptive_field,
                                 keras=require_keras())
    n_in, n_out = keras_model.input_shape[-1], keras_model.output_shape[-1]
    if n_in is not None and n_in != len(band_list):
        raise ModelError(f"{src} takes {n_in} input values per pixel but --bands names {len(band_list)} "
                         f"({','.join(band_list)}): name every input band in the model's order")
    if n_out != len(infos):
        raise ModelError(f"{src} has {n_out} output units but the class table has {len(infos)} rows: "
                         "give one row per output unit, in order")
    wrapped = _wrap(keras_model, scaling, outputs, require_keras())
    _check_probabilities(wrapped, card, len(band_list), src)
    card.update({"scaling": scaling.to_dict(), "outputs": outputs, "source_format": fmt,
                 "source_file": src.name,
                 "source_sha256": sha256_file(src) if src.is_file() else _dir_sha256(src)})
    with staged_dir(out, overwrite=overwrite, appeared=f"{out} appeared while the bundle was written: "
                    "choose another --out or pass --overwrite") as tmp:
        save_bundle(wrapped, tmp, bands=band_list, classes=[c.to_dict() for c in infos],
                    input_nodata=input_nodata, extra={"card": card, **(extra or {})})
        try:  # the IR beside model.keras, as training stores it: OpenVINO workers need no backend
            export_ir(tmp, keras_model=wrapped)
        except ModelError:
            pass  # a model OpenVINO cannot convert still runs with --engine keras
        if check is not None:
            contract = json.loads((tmp / CONTRACT_FILE).read_text())
            contract[PRECISION_CHECK_KEY] = bf16_scene_check(load_model(tmp, check_keras=False), check)
            atomic_write_json(tmp / CONTRACT_FILE, contract)
    return load_model(out, check_keras=False)


def _dir_sha256(path: Path) -> str:
    """One sha256 over a directory's files (relative names and contents, sorted)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def bf16_scene_check(bundle, scene: str | os.PathLike, *, size: int = 512) -> dict:
    """OpenVINO bf16 against float32 on a window of ``scene`` (its centre, at most
    ``size`` x ``size`` px): ``{"bf16": {...}}`` with the share of equal classes and whether it
    reaches :data:`~s2dask.model.engines.PRECISION_AGREEMENT_BAR`.

    Raises
    ------
    SceneError
        If the scene cannot be opened or lacks a model band.
    """
    from ..errors import S2DaskError
    from ..scene import open_scene

    da = open_scene(scene, bands=bundle.bands)
    _, ny, nx = da.shape
    y0, x0 = max(0, (ny - size) // 2), max(0, (nx - size) // 2)
    image = da[:, y0:y0 + size, x0:x0 + size].values
    try:
        fp32 = bundle.predict_image(image, engine="openvino", precision="fp32")
        bf16 = bundle.predict_image(image, engine="openvino", precision="bf16")
    except S2DaskError as exc:  # no OpenVINO, or no bf16 instructions on this CPU
        return {"bf16": {"checked": False, "why": str(exc)}}
    valid = fp32 != 255
    agreement = float((fp32[valid] == bf16[valid]).mean()) if valid.any() else 1.0
    return {"bf16": {"checked": True, "agreement": agreement, "pixels": int(valid.sum()),
                     "on": f"{Path(scene).name} [{y0}:{y0 + image.shape[1]}, {x0}:{x0 + image.shape[2]}]",
                     "bar": PRECISION_AGREEMENT_BAR, "within_bar": agreement >= PRECISION_AGREEMENT_BAR}}
