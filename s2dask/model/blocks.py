"""Prediction of one block: raw band values in, classes / confidence / probabilities out.

Nothing distributed happens here. :class:`Predictor` wraps a Keras model's forward pass
in a compiled function of one fixed batch shape (every call, the last ragged batch of a
chunk included, is padded to it), so the function is traced once and the arithmetic of
a pixel does not depend on which chunk, worker or batch it came in: class maps are
identical whatever the chunking.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Mapping

import numpy as np

from .backend import compile_forward, compile_outputs
from .contract import OUTPUT_NODATA, InputContract

__all__ = ["DEFAULT_BATCH_SIZE", "valid_rows", "RowPredictor", "Predictor", "block_outputs"]

#: pixels per forward call: large enough that per-call overhead is negligible, small
#: enough that a batch's activations (batch x 200 float32 x a few) stay in cache-friendly MBs;
#: 4096..8192 is fastest for single-thread worker processes (benchmarks/forward.py)
DEFAULT_BATCH_SIZE = 8192


def valid_rows(values: np.ndarray, nodata: Any) -> np.ndarray:
    """True for rows ``(N, bands)`` whose bands are all finite and none equals ``nodata``
    (the one nodata test of every predictor, pixel or spatial)."""
    valid = np.ones(values.shape[0], dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values).all(axis=1)
    if nodata is not None:
        valid &= ~(values == nodata).any(axis=1)
    return valid


class RowPredictor:
    """What every predictor shares: nodata rows, the fixed padded batch, and the outputs.

    A subclass sets ``batch_size``, ``n_bands``, ``n_classes``, ``class_values`` (uint8),
    ``input_nodata`` and ``_local`` (a ``threading.local``), and provides ``forward`` (probabilities of valid rows) and
    ``_fill_rows`` (classes, confidence and optionally uint8 probabilities of valid rows,
    written into the arrays it is given). :class:`Predictor` (Keras) and
    :class:`s2dask.model.engines.OpenVINOPredictor` are the two.
    """

    batch_size: int
    n_bands: int
    n_classes: int
    class_values: np.ndarray
    input_nodata: Any

    def _batch_buffer(self, band_major: bool) -> np.ndarray:
        """This thread's float32 input buffer, ``(batch_size, bands)`` or band-major
        ``(bands, batch_size)`` (each created on first use)."""
        name = "xt" if band_major else "x"
        buf = getattr(self._local, name, None)
        if buf is None:
            shape = (self.n_bands, self.batch_size) if band_major else (self.batch_size, self.n_bands)
            buf = np.zeros(shape, dtype="float32")
            setattr(self._local, name, buf)
        return buf

    def _padded_batches(self, values: np.ndarray, *, band_major: bool = False):
        """Yield ``(start, stop, buf)``: rows ``start:stop`` of ``values`` copied into the
        fixed batch buffer, the rest of it zeroed (the last, ragged batch). ``band_major``:
        the buffer is ``(bands, batch_size)``; a chunk's rows are a transposed view, so each
        band is then one contiguous copy."""
        n, bs = values.shape[0], self.batch_size
        buf = self._batch_buffer(band_major)
        rows = buf.T if band_major else buf  # (batch_size, bands) either way
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            m = stop - start
            rows[:m] = values[start:stop]
            if m < bs:
                rows[m:] = 0.0
            yield start, stop, buf

    def valid_mask(self, values: np.ndarray) -> np.ndarray:
        """True for rows whose bands are all finite and none equals the input nodata."""
        return valid_rows(values, self.input_nodata)

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
        if valid.all():  # the common case: no compaction copy, results written in place
            self._fill_rows(values, classes, confidence, probs)
        elif valid.any():
            rows = values[valid]
            m = rows.shape[0]
            part = (np.empty(m, "uint8"), np.empty(m, "uint8"),
                    np.empty((m, self.n_classes), "uint8") if probabilities else None)
            self._fill_rows(rows, *part)
            classes[valid], confidence[valid] = part[0], part[1]
            if probabilities:
                probs[valid] = part[2]
        return classes, confidence, probs

    def forward(self, values: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fill_rows(self, values: np.ndarray, classes: np.ndarray, confidence: np.ndarray,
                   probs: np.ndarray | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Predictor(RowPredictor):
    """The compiled, fixed-batch forward pass of a model bundle.

    Parameters
    ----------
    model
        The Keras model (normalisation inside; takes raw values).
    contract
        The bundle's :class:`~s2dask.model.contract.InputContract` (bands, classes, nodata), or
        its ``model.json`` dict.
    batch_size
        Pixels per forward call. Every call is padded to this size.

    Raises
    ------
    ModelError
        If a contract given as a dict is invalid.
    """

    def __init__(self, model, contract: InputContract | Mapping[str, Any], *,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if not isinstance(contract, InputContract):
            contract = InputContract.from_dict(contract)
        self.model = model
        self.contract = contract
        self.batch_size = int(batch_size)
        self.n_bands = len(contract.bands)
        self.n_classes = len(contract.classes)
        self.class_values = np.array(contract.class_values, dtype="uint8")
        self.input_nodata = contract.input_nodata
        #: threads of a forward pass when the caller set them (the backend's), for records
        self.threads: int | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._forward = None  # the probabilities (forward, predict_proba), compiled on first use
        # what a job writes, compiled now (not in a task); with probabilities on first use
        self._outputs = {False: compile_outputs(model, self.batch_size, self.n_bands)}

    @property
    def engine(self) -> str:
        return "keras"

    def record(self) -> dict:
        """What a job record stores about this predictor (per worker)."""
        keras = sys.modules.get("keras")
        return {"engine": "keras", "precision": "fp32", "batch_size": self.batch_size,
                "threads": self.threads, "model_source": "keras",
                "backend": keras.backend.backend() if keras else None}

    def _compiled(self, probabilities: bool | None):
        """The forward pass (``None``) or the outputs function, compiled once per process."""
        with self._lock:
            if probabilities is None:
                if self._forward is None:
                    self._forward = compile_forward(self.model, self.batch_size, self.n_bands)
                return self._forward
            if probabilities not in self._outputs:
                self._outputs[probabilities] = compile_outputs(
                    self.model, self.batch_size, self.n_bands, probabilities=probabilities)
            return self._outputs[probabilities]

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` float32 for valid rows ``(N, bands)``; no nodata handling."""
        fn = self._compiled(None)
        out = np.empty((values.shape[0], self.n_classes), dtype="float32")
        for start, stop, buf in self._padded_batches(values):
            out[start:stop] = fn(buf)[:stop - start]
        return out

    def _fill_rows(self, values, classes, confidence, probs) -> None:
        fn = self._compiled(probs is not None)
        if fn is None:
            return self._fill_rows_numpy(values, classes, confidence, probs)
        for start, stop, buf in self._padded_batches(values, band_major=True):
            m = stop - start
            out = fn(buf)
            classes[start:stop] = self.class_values[out[0][:m]]
            confidence[start:stop] = out[1][:m]
            if probs is not None:
                probs[start:stop] = out[2][:, :m].T

    def _fill_rows_numpy(self, values, classes, confidence, probs) -> None:
        p = self.forward(values)
        best = p.argmax(axis=1)
        classes[:] = self.class_values[best]
        confidence[:] = _percent(p[np.arange(p.shape[0]), best])
        if probs is not None:
            probs[:] = _percent(p)


def _percent(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 100.0), 0, 100).astype("uint8")


def block_outputs(predictor: Predictor, block: np.ndarray, *, probabilities: bool = False,
                  valid: np.ndarray | None = None) -> np.ndarray:
    """Predict one ``(band, y, x)`` block; return ``(k, y, x)`` uint8.

    Layer 0 is the class map, layer 1 the confidence, layers 2.. the per-class
    probabilities when asked for. ``valid`` (``(y, x)`` bool) restricts the prediction
    to those pixels (the others get class :data:`OUTPUT_NODATA`, confidence 0); with no
    valid pixel the model is not called at all.

    Raises
    ------
    ValueError
        If the block does not have one band per contract band.
    """
    nb, ny, nx = block.shape
    if nb != predictor.n_bands:
        raise ValueError(f"block has {nb} bands, the model takes {predictor.n_bands}")
    if valid is not None and not np.all(valid):
        return _masked_outputs(predictor, block, np.asarray(valid, dtype=bool), probabilities)
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


def _masked_outputs(predictor, block: np.ndarray, valid: np.ndarray, probabilities: bool) -> np.ndarray:
    """:func:`block_outputs` for the ``valid`` pixels only (rows compacted, results scattered back)."""
    nb, ny, nx = block.shape
    n_cls = predictor.n_classes if probabilities else 0
    out = np.zeros((2 + n_cls, ny * nx), dtype="uint8")
    out[0] = OUTPUT_NODATA
    flat = valid.reshape(-1)
    if flat.any():
        rows = block.reshape(nb, ny * nx)[:, flat].T
        classes, confidence, probs = predictor.predict_rows(rows, probabilities=probabilities)
        out[0, flat], out[1, flat] = classes, confidence
        if probabilities:
            out[2:, flat] = probs.T
    return out.reshape(2 + n_cls, ny, nx)
