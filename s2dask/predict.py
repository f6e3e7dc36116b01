"""Prediction of one block: raw band values in, classes / confidence / probabilities out.

Nothing distributed happens here. :class:`Predictor` wraps a Keras model's forward pass
in a compiled function of one fixed batch shape (every call, the last ragged batch of a
chunk included, is padded to it), so the function is traced once and the arithmetic of
a pixel does not depend on which chunk, worker or batch it came in: class maps are
identical whatever the chunking.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .model import OUTPUT_NODATA

__all__ = ["DEFAULT_BATCH_SIZE", "Predictor", "predict_block", "block_outputs"]

#: pixels per forward call: large enough that per-call overhead is negligible, small
#: enough that a batch's activations (batch x 200 float32 x a few) stay in cache-friendly MBs;
#: 4096..8192 is fastest for single-thread worker processes (benchmarks/forward.py)
DEFAULT_BATCH_SIZE = 8192


def _compile_forward(model, batch_size: int, n_bands: int, *, jit_compile: bool | None = None):
    """A function ``(batch_size, n_bands) float32 -> (batch_size, n_classes) float32``.

    ``jit_compile`` (TensorFlow only; ``None``: on) compiles the whole forward pass with
    XLA, which fuses the normalisation, bias + ReLU and the softmax into the matmuls'
    neighbours (``benchmarks/forward.py`` measures it against ``False``). The input shape
    is fixed, so XLA compiles once and every pixel gets the same arithmetic.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec((batch_size, n_bands), tf.float32)
        jit = True if jit_compile is None else bool(jit_compile)

        @tf.function(input_signature=[spec], jit_compile=jit, reduce_retracing=True)
        def forward(x):
            return model(x, training=False)

        concrete = forward.get_concrete_function()
        concrete(tf.zeros((batch_size, n_bands), tf.float32))  # XLA compiles here, not in a task

        def run(x: np.ndarray) -> np.ndarray:
            return concrete(tf.constant(x)).numpy()

        return run
    if backend == "jax":
        import jax

        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def forward(tv, ntv, x):
            out, _ = model.stateless_call(tv, ntv, x, training=False)
            return out

        forward(tv, ntv, np.zeros((batch_size, n_bands), dtype="float32"))  # compile now

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(forward(tv, ntv, x))

        return run
    if backend == "torch":
        import torch

        device = next(iter(p.device for p in model.parameters()), torch.device("cpu")) \
            if hasattr(model, "parameters") else torch.device("cpu")

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(torch.from_numpy(x).to(device), training=False)
            return out.detach().cpu().numpy()

        return run

    def run(x: np.ndarray) -> np.ndarray:  # any other backend: Keras' own compiled step
        return np.asarray(model.predict_on_batch(x))

    return run


class Predictor:
    """The compiled, fixed-batch forward pass of a model bundle.

    Parameters
    ----------
    model
        The Keras model (normalisation inside; takes raw values).
    contract
        The bundle's contract (bands, classes, nodata).
    batch_size
        Pixels per forward call. Every call is padded to this size.
    """

    def __init__(self, model, contract: dict, *, batch_size: int = DEFAULT_BATCH_SIZE):
        self.model = model
        self.contract = contract
        self.batch_size = int(batch_size)
        self.n_bands = len(contract["bands"])
        self.n_classes = len(contract["classes"])
        self.class_values = np.array([c["value"] for c in contract["classes"]], dtype="uint8")
        self.input_nodata = contract.get("input_nodata")
        self._forward = _compile_forward(model, self.batch_size, self.n_bands)
        self._buffer = threading.local()

    def _batch_buffer(self) -> np.ndarray:
        buf = getattr(self._buffer, "x", None)
        if buf is None:
            buf = self._buffer.x = np.zeros((self.batch_size, self.n_bands), dtype="float32")
        return buf

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` float32 for valid rows ``(N, bands)``; no nodata handling."""
        n = values.shape[0]
        out = np.empty((n, self.n_classes), dtype="float32")
        bs = self.batch_size
        buf = self._batch_buffer()
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            m = stop - start
            buf[:m] = values[start:stop]
            if m < bs:
                buf[m:] = 0.0
            out[start:stop] = self._forward(buf)[:m]
        return out

    def valid_mask(self, values: np.ndarray) -> np.ndarray:
        """True for rows whose bands are all finite and none equals the input nodata."""
        valid = np.ones(values.shape[0], dtype=bool)
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values).all(axis=1)
        if self.input_nodata is not None:
            valid &= ~(values == self.input_nodata).any(axis=1)
        return valid

    def predict_proba(self, values: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)``; NaN rows where any band is nodata."""
        valid = self.valid_mask(values)
        out = np.full((values.shape[0], self.n_classes), np.nan, dtype="float32")
        if valid.any():
            out[valid] = self.forward(values[valid])
        return out

    def predict_classes(self, values: np.ndarray) -> np.ndarray:
        """Class values (uint8); :data:`OUTPUT_NODATA` where any band is nodata."""
        classes, _, _ = self.predict_rows(values, probabilities=False)
        return classes

    def predict_rows(self, values: np.ndarray, *, probabilities: bool = False):
        """Classes, confidence (uint8 percent) and optionally probabilities (uint8 percent).

        Returns
        -------
        classes : (N,) uint8, 255 where nodata
        confidence : (N,) uint8, max probability in percent, 0 where nodata
        probs : (N, C) uint8 percent (0 where nodata) or None
        """
        n = values.shape[0]
        valid = self.valid_mask(values)
        classes = np.full(n, OUTPUT_NODATA, dtype="uint8")
        confidence = np.zeros(n, dtype="uint8")
        probs = np.zeros((n, self.n_classes), dtype="uint8") if probabilities else None
        if valid.all():  # the common case: no compaction copy, write results in place
            p = self.forward(values)
            best = p.argmax(axis=1)
            classes[:] = self.class_values[best]
            confidence[:] = _percent(p[np.arange(n), best])
            if probabilities:
                probs[:] = _percent(p)
        elif valid.any():
            p = self.forward(values[valid])
            best = p.argmax(axis=1)
            classes[valid] = self.class_values[best]
            confidence[valid] = _percent(p[np.arange(p.shape[0]), best])
            if probabilities:
                probs[valid] = _percent(p)
        return classes, confidence, probs


def _percent(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 100.0), 0, 100).astype("uint8")


def block_outputs(predictor: Predictor, block: np.ndarray, *, probabilities: bool = False) -> np.ndarray:
    """Predict one ``(band, y, x)`` block; return ``(k, y, x)`` uint8.

    Layer 0 is the class map, layer 1 the confidence, layers 2.. the per-class
    probabilities when asked for.
    """
    nb, ny, nx = block.shape
    if nb != predictor.n_bands:
        raise ValueError(f"block has {nb} bands, the model takes {predictor.n_bands}")
    # a (pixels, bands) view: the transpose and the cast to float32 happen batch by batch
    # when the forward pass copies rows into its fixed batch buffer, not as a chunk copy
    rows = block.reshape(nb, ny * nx).T
    classes, confidence, probs = predictor.predict_rows(rows, probabilities=probabilities)
    layers = [classes.reshape(ny, nx), confidence.reshape(ny, nx)]
    out = np.empty((2 + (predictor.n_classes if probabilities else 0), ny, nx), dtype="uint8")
    out[0] = layers[0]
    out[1] = layers[1]
    if probabilities:
        out[2:] = probs.T.reshape(predictor.n_classes, ny, nx)
    return out


def predict_block(block: np.ndarray, predictor: Any, *, probabilities: bool = False) -> np.ndarray:
    """Alias of :func:`block_outputs` with the data argument first (for ``map_blocks``)."""
    return block_outputs(predictor, block, probabilities=probabilities)
