"""Spatial models: patch classifiers and fully-convolutional networks, run seamlessly over chunks.

Two kinds, found from a model's shapes (:func:`describe`):

* **patch**: ``(N, k, k, bands) -> (N, classes)`` with odd ``k``: the class of each window's
  centre pixel. Its halo is ``k // 2``. Where a pixel's window leaves the scene, the scene is
  mirrored at its edge (``numpy.pad(mode="reflect")``, the edge pixel not repeated): every
  pixel of the scene gets a class, the same for any chunking.
* **dense** (fully convolutional): ``(N, H, W, bands) -> (N, H, W, classes)`` for any ``H, W``.
  Its halo is the receptive field's radius, derived from the layers (kernel sizes,
  dilations, strides) or given. Models with a total stride ``s > 1`` (pooling, strided
  convolutions) see windows whose size is a multiple of ``s``, aligned with the scene's own
  grid of ``s``; at the scene's bottom and right edges the window is mirrored up to the next
  multiple, as it would be for the whole scene.

The promise: each chunk, read with its halo, is predicted in tiles whose inputs reach ``halo``
pixels beyond the tile (clipped to the scene), so a pixel's class is what the model gives
applied to the whole scene at once (dense: the scene as it is at its edges, the model's own
padding; patch: each pixel's own window), whatever the chunking: pixel for pixel up to the
last bits of float32 arithmetic, which different tile shapes may order differently.

:class:`SpatialPredictor` holds that tiling for any forward function; the engines supply the
function (Keras here, OpenVINO in :mod:`s2dask.model.engines`).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np

from ..errors import ModelError, ParameterError
from .blocks import valid_rows
from .openvino_ir import OV_PRECISION, core, import_openvino

__all__ = ["KINDS", "PATCH_EDGE", "describe", "receptive_field", "flexible", "SpatialPredictor",
           "KerasSpatialPredictor", "OpenVINOSpatialPredictor", "DEFAULT_TILE"]

KINDS = ("pixel", "patch", "dense")
#: how a patch window that leaves the scene is filled (recorded in the card)
PATCH_EDGE = "reflect"
#: the output tile edge of a dense model's forward calls (its input: tile + 2 x halo)
DEFAULT_TILE = 512

# layers that move no pixel: receptive field and stride unchanged
_POINTWISE = {
    "InputLayer", "Dense", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "Normalization", "Rescaling",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Add",
    "Concatenate", "Multiply", "Subtract", "Average", "Maximum", "Minimum", "Identity",
    "UnitNormalization", "Sequential", "Functional", "Model",
}


def _flat_layers(model) -> list:
    out = []
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Sequential", "Functional", "Model"):
            out.extend(_flat_layers(layer))
        else:
            out.append(layer)
    return out


def receptive_field(model) -> tuple[int | None, int, str | None]:
    """``(receptive field edge, total stride, the first layer it could not follow)`` of a
    fully-convolutional model, its layers taken in order (the longest path of an
    encoder-decoder; a skip connection only shortens a path).

    The receptive field is ``None`` when a layer's reach is unknown (named in the third
    value): the user must give ``--receptive-field``.
    """
    rf, jump, stride = 1, 1.0, 1
    for layer in _flat_layers(model):
        name = layer.__class__.__name__
        cfg = layer.get_config()
        if name in _POINTWISE:
            continue
        if name in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose",
                    "MaxPooling2D", "AveragePooling2D"):
            k = cfg.get("kernel_size") or cfg.get("pool_size")
            s = cfg.get("strides") or (1, 1)
            d = cfg.get("dilation_rate") or (1, 1)
            k, s, d = (k if isinstance(k, (list, tuple)) else (k, k)), \
                (s if isinstance(s, (list, tuple)) else (s, s)), (d if isinstance(d, (list, tuple)) else (d, d))
            if s[0] != s[1] or k[0] != k[1]:
                return None, stride, f"{name} {layer.name!r} (not square)"
            k_eff = d[0] * (k[0] - 1) + 1
            # 'valid' keeps the size only for windows that tile the input (k = stride)
            if cfg.get("padding", "valid") != "same" and k_eff != s[0]:
                return None, stride, f"{name} {layer.name!r} (padding {cfg.get('padding')!r}, not 'same')"
            if name == "Conv2DTranspose":
                rf += int(math.ceil((k_eff - 1) * jump / s[0]))
                jump /= s[0]
            else:
                rf += int(math.ceil((k_eff - 1) * jump))
                jump *= s[0]
                stride = max(stride, int(round(jump)))
        elif name == "UpSampling2D":
            size = cfg.get("size") or (2, 2)
            jump /= size[0] if isinstance(size, (list, tuple)) else size
        else:
            return None, stride, f"{name} {layer.name!r}"
    return rf, stride, None


def flexible(model, keras):
    """``model`` rebuilt to take ``(N, None, None, bands)`` when its input fixes ``H, W``.

    Raises
    ------
    ModelError
        If the model cannot be rebuilt with a free input size.
    """
    shape = tuple(model.input_shape)
    if shape[1] is None and shape[2] is None:
        return model
    try:
        config = model.get_config()
        for layer in config.get("layers", []):
            if layer.get("class_name") == "InputLayer":
                c = layer["config"]
                key = "batch_shape" if "batch_shape" in c else "batch_input_shape"
                c[key] = [None, None, None, shape[-1]]
        new = model.__class__.from_config(config)
        new.set_weights(model.get_weights())
    except Exception as exc:
        raise ModelError(f"the model's input is fixed at {shape[1]} x {shape[2]} px and it cannot be "
                         f"rebuilt for any size ({type(exc).__name__}): save it with "
                         "Input(shape=(None, None, bands))") from None
    return new


def describe(model, *, where: Any, receptive_field_given: int | None = None, keras=None) -> tuple[Any, dict]:
    """The model (made size-free where needed) and its card: kind, window, receptive field,
    halo, stride.

    Raises
    ------
    ModelError
        For several inputs or outputs, an input rank s2dask cannot map, an even patch size,
        or a receptive field that cannot be derived and was not given.
    """
    shape_in, shape_out = model.input_shape, model.output_shape
    if isinstance(shape_in, list) or isinstance(shape_out, list):
        raise ModelError(f"{where} has several inputs or outputs: s2dask runs models with one input "
                         "(the bands) and one output (the classes)")
    shape_in, shape_out = tuple(shape_in), tuple(shape_out)
    if len(shape_in) == 2 and len(shape_out) == 2:
        return model, {"kind": "pixel", "window": 1, "receptive_field": 1, "halo": 0, "stride": 1}
    if len(shape_in) == 4 and len(shape_out) == 2:
        k, k2 = shape_in[1], shape_in[2]
        if k is None or k != k2:
            raise ModelError(f"{where} takes windows of {k} x {k2} px: a patch classifier needs a fixed "
                             "square window (N, k, k, bands)")
        if k % 2 == 0:
            raise ModelError(f"{where} takes {k} x {k} px windows: a patch classifier needs an odd window "
                             "edge, so that it has a centre pixel")
        return model, {"kind": "patch", "window": int(k), "receptive_field": int(k), "halo": int(k) // 2,
                       "stride": 1, "edge": PATCH_EDGE}
    if len(shape_in) == 4 and len(shape_out) == 4:
        rf, stride, stuck = receptive_field(model)
        if receptive_field_given is not None:
            rf = int(receptive_field_given)
            if rf < 1:
                raise ModelError(f"--receptive-field must be >= 1 px, got {rf}")
        elif rf is None:
            raise ModelError(f"{where}: the receptive field cannot be derived past layer {stuck}: give "
                             "--receptive-field N (pixels; the model's window edge)")
        halo = rf // 2
        if stride > 1:
            halo = int(math.ceil(halo / stride) * stride)
        model = flexible(model, keras) if keras is not None else model
        return model, {"kind": "dense", "window": None, "receptive_field": int(rf), "halo": int(halo),
                       "stride": int(stride), "edge": "scene"}
    raise ModelError(f"{where} takes inputs of shape {shape_in[1:]} and gives {shape_out[1:]}: s2dask "
                     "maps pixel (N, bands), patch (N, k, k, bands) -> (N, classes) and fully "
                     "convolutional (N, H, W, bands) -> (N, H, W, classes) models")


class SpatialPredictor:
    """The tiling of a spatial model's forward pass over one block (engine-independent).

    A subclass (or a caller) gives ``run(x)``: ``(B, h, w, bands)`` float32 -> ``(B, classes)``
    (patch) or ``(B, h, w, classes)`` (dense) probabilities.

    Parameters
    ----------
    contract
        The bundle's contract: bands, classes, input nodata and the card (kind, halo, window,
        stride).
    run
        The forward function.
    batch_size
        Patch models: windows per call; dense models: pixels per call (tiles of
        ``tile`` x ``tile`` plus halo are grouped up to it).
    tile
        A dense model's output tile edge.
    """

    spatial = True

    def __init__(self, contract, run: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 batch_size: int = 4096, tile: int = DEFAULT_TILE):
        from .card import card

        c = card(contract)
        classes = _get(contract, "classes")
        self.contract = contract
        self.kind = c["kind"]
        self.halo = int(c.get("halo", 0))
        self.window = c.get("window")
        self.stride = int(c.get("stride", 1))
        self.n_bands = len(_get(contract, "bands"))
        self.n_classes = len(classes)
        self.class_values = np.array([_get(k, "value") for k in classes], dtype="uint8")
        self.input_nodata = _get(contract, "input_nodata")
        self.batch_size = int(batch_size)
        self.tile = max(self.stride, int(tile) // self.stride * self.stride)
        if run is not None:
            self.run = run

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - given by the engine
        raise NotImplementedError

    def valid_mask(self, values: np.ndarray) -> np.ndarray:
        """True for rows ``(N, bands)`` whose bands are all finite and none equals the input nodata."""
        return valid_rows(values, self.input_nodata)

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Refused: a spatial model needs each pixel's neighbourhood, not a row of bands.

        Raises
        ------
        ModelError
            Always (naming what to use instead).
        """
        raise ModelError(f"this is a {self.kind} model: it predicts images, not tables of pixels; "
                         "use classify, s2dask.predict or ModelBundle.predict_image")

    predict_proba = predict_classes = predict_rows = forward

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """Probabilities ``(classes, y, x)`` float32 of a whole ``(bands, y, x)`` image, the
        image's own edges being the scene's (what a job's chunks equal)."""
        prob, _ = self.block_probabilities(image, ((True, True), (True, True)))
        return prob

    def block_probabilities(self, block: np.ndarray, scene_edges: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of a ``(bands, y, x)`` block and where they are exact.

        Parameters
        ----------
        block
            Raw band values: the scene part of a chunk and its halo (no padding).
        scene_edges
            ``((top, bottom), (left, right))``: True where that side of the block is the
            scene's edge (a chunk's halo was clipped there).

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
            ``(classes, y, x)`` float32 (0 where not exact) and ``(y, x)`` bool: True where the
            pixel's whole receptive field (or window) was in the block or the rule at the
            scene's edge applies.
        """
        x = np.ascontiguousarray(np.moveaxis(np.asarray(block, dtype="float32"), 0, -1))
        if self.kind == "patch":
            return self._patches(x, scene_edges)
        return self._dense(x, scene_edges)

    # ---------------------------------------------------------------- patch models
    def _patches(self, x: np.ndarray, edges) -> tuple[np.ndarray, np.ndarray]:
        h = self.halo
        ny, nx, nb = x.shape
        (t, b), (l, r) = edges
        pads = ((h if t else 0, h if b else 0), (h if l else 0, h if r else 0), (0, 0))
        if any(p for pair in pads[:2] for p in pair):
            if min(ny, nx) <= h:
                mode = "symmetric"  # a sliver of scene narrower than the halo
            else:
                mode = PATCH_EDGE
            x = np.pad(x, pads, mode=mode)
        k = 2 * h + 1
        oy, ox = x.shape[0] - 2 * h, x.shape[1] - 2 * h  # centres whose window fits
        prob = np.zeros((self.n_classes, ny, nx), dtype="float32")
        exact = np.zeros((ny, nx), dtype=bool)
        if oy <= 0 or ox <= 0:
            return prob, exact
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(0, 1))  # (oy, ox, nb, k, k)
        out = np.empty((oy * ox, self.n_classes), dtype="float32")
        flat = windows.reshape(oy * ox, nb, k, k)
        bs = self.batch_size
        for start in range(0, oy * ox, bs):
            batch = np.ascontiguousarray(np.moveaxis(flat[start:start + bs], 1, -1))  # (B, k, k, nb)
            out[start:start + bs] = self.run(batch)
        y0 = 0 if t else h
        x0 = 0 if l else h
        prob[:, y0:y0 + oy, x0:x0 + ox] = out.T.reshape(self.n_classes, oy, ox)
        exact[y0:y0 + oy, x0:x0 + ox] = True
        return prob, exact

    # ---------------------------------------------------------------- dense models
    def _dense(self, x: np.ndarray, edges) -> tuple[np.ndarray, np.ndarray]:
        h, s, tile = self.halo, self.stride, self.tile
        ny, nx, _ = x.shape
        (t, b), (l, r) = edges
        prob = np.zeros((self.n_classes, ny, nx), dtype="float32")
        exact = np.zeros((ny, nx), dtype=bool)
        # the region whose pixels have their whole receptive field here (or the scene's edge)
        ey0, ey1 = (0 if t else h), (ny if b else ny - h)
        ex0, ex1 = (0 if l else h), (nx if r else nx - h)
        if ey1 <= ey0 or ex1 <= ex0:
            return prob, exact
        groups: dict[tuple[int, int], list] = {}
        for ty in range(ey0, ey1, tile):
            for tx in range(ex0, ex1, tile):
                oy1, ox1 = min(ty + tile, ey1), min(tx + tile, ex1)
                iy0, ix0 = max(0, ty - h), max(0, tx - h)
                iy1, ix1 = min(ny, oy1 + h), min(nx, ox1 + h)
                hh, ww = _multiple(iy1 - iy0, s), _multiple(ix1 - ix0, s)
                groups.setdefault((hh, ww), []).append((iy0, iy1, ix0, ix1, ty, oy1, tx, ox1))
        per_call = max(1, self.batch_size // max(1, tile * tile))
        for (hh, ww), tiles in groups.items():
            for start in range(0, len(tiles), per_call):
                part = tiles[start:start + per_call]
                batch = np.empty((len(part), hh, ww, x.shape[2]), dtype="float32")
                for i, (iy0, iy1, ix0, ix1, *_) in enumerate(part):
                    win = x[iy0:iy1, ix0:ix1]
                    if win.shape[0] != hh or win.shape[1] != ww:  # the scene's end: mirror to s
                        win = np.pad(win, ((0, hh - win.shape[0]), (0, ww - win.shape[1]), (0, 0)),
                                     mode="symmetric")
                    batch[i] = win
                res = np.asarray(self.run(batch), dtype="float32")
                for i, (iy0, iy1, ix0, ix1, ty, oy1, tx, ox1) in enumerate(part):
                    prob[:, ty:oy1, tx:ox1] = np.moveaxis(res[i, ty - iy0:oy1 - iy0, tx - ix0:ox1 - ix0], -1, 0)
        exact[ey0:ey1, ex0:ex1] = True
        return prob, exact

    def record(self) -> dict:
        """What a job record stores about this predictor."""
        return {"kind": self.kind, "halo": self.halo, "batch_size": self.batch_size,
                **({"tile": self.tile} if self.kind == "dense" else {})}


def _multiple(n: int, s: int) -> int:
    return n if s <= 1 else int(math.ceil(n / s) * s)


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


class KerasSpatialPredictor(SpatialPredictor):
    """A spatial model's forward pass on its Keras backend (CPU or GPU workers)."""

    def __init__(self, model, contract, *, batch_size: int = 4096, tile: int = DEFAULT_TILE):
        super().__init__(contract, batch_size=batch_size, tile=tile)
        self._model = model
        self.threads = None

    @property
    def engine(self) -> str:
        return "keras"

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict_on_batch(x), dtype="float32")

    def record(self) -> dict:
        import keras

        return {"engine": "keras", "backend": keras.backend.backend(), "precision": "fp32",
                "model_source": "keras", **super().record()}


class OpenVINOSpatialPredictor(SpatialPredictor):
    """A spatial model (patch or fully convolutional) compiled by OpenVINO for any input size,
    in float32 or bf16 (``INFERENCE_PRECISION_HINT``), tiled over blocks by
    :class:`s2dask.model.spatial.SpatialPredictor`."""

    def __init__(self, model, contract, *, precision: str = "fp32", batch_size: int = 4096,
                 threads: int = 1):
        if precision not in OV_PRECISION:
            raise ParameterError(f"precision {precision!r} is not one of fp32, bf16: resolve() it first")
        super().__init__(contract, batch_size=batch_size)
        self.precision = precision
        self.threads = max(1, int(threads))
        self.source = "converted"
        self._compiled = core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
        self._local = threading.local()

    @property
    def engine(self) -> str:
        return "openvino"

    def run(self, x: np.ndarray) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:  # an infer request per thread: requests are not thread-safe
            req = self._local.request = self._compiled.create_infer_request()
        res = req.infer({0: np.ascontiguousarray(x, dtype="float32")})
        return np.array(res[0], dtype="float32")

    def record(self) -> dict:
        ov = import_openvino()
        return {"engine": "openvino", "precision": self.precision, "threads": self.threads,
                "model_source": self.source, "openvino": ov.__version__.split("-")[0], **super().record()}
