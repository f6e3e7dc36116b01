"""What a prediction task derives from one forward pass: classes, confidence, probabilities,
uncertainty layers, optionally after a spatial smoothing of the probabilities (worker side).

:class:`MapSpec` is the small, picklable description of those extras that every prediction
task of a job carries (``classify --uncertainty``, ``--smooth``). :meth:`MapSpec.outputs`
runs the forward pass once on the task's block and returns the uint8 layers to write:

* without smoothing, the block is the chunk; the classes, confidence and probabilities are
  exactly those of :func:`s2dask.model.blocks.block_outputs` (same forward, same arg-max and
  rounding), and the uncertainty layers come from the same float probabilities;
* with ``--smooth N`` the block is the chunk plus a halo of ``N // 2`` pixels
  (:func:`s2dask.maps.halo.halo_array`): every pixel of it is predicted (the fixed-batch forward
  makes a pixel's probabilities independent of the window), the probabilities are smoothed
  (:func:`s2dask.maps.smooth.smooth_block`: the mean over the valid pixels of the window), and the
  class, confidence, probabilities and uncertainty of the *inner chunk* are taken from the
  smoothed probabilities. Pixels outside the scene, nodata pixels and pixels a ``valid`` mask
  rules out (cloud masks) are neither predicted nor counted in any window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..scene.mask import NODATA as NODATA_CODE
from .halo import chunk_halo, inside
from .smooth import Halo, check_window, smooth_block
from .uncertainty import cog_name, compute_layers, layer_attrs, layer_name, parse_kinds

__all__ = ["MapSpec", "NODATA", "map_spec", "map_options", "map_record", "zarr_layers", "cog_layers"]

NODATA = 255
"""Class value of pixels without a prediction."""


def _percent(p: np.ndarray) -> np.ndarray:
    """Probabilities in uint8 percent, rounded as :mod:`s2dask.model.blocks` does."""
    return np.clip(np.rint(p * 100.0), 0, 100).astype("uint8")


@dataclass(frozen=True)
class MapSpec:
    """The extra outputs of a job's prediction tasks (picklable; travels with each task).

    Raises
    ------
    ParameterError
        On construction, if a measure is unknown or ``smooth`` is not an odd window edge.
    """

    #: uncertainty measures to write (``entropy``, ``margin``, ``least``)
    uncertainty: tuple[str, ...] = ()
    #: smoothing window edge (1: none)
    smooth: int = 1
    #: ``(cy, cx)``: the job's chunks (what each task writes)
    chunks: tuple[int, int] = (2048, 2048)
    #: ``(rows, cols)`` of the scene
    shape: tuple[int, int] = (0, 0)
    #: a spatial model's halo (its receptive field's radius); ``None`` for pixel models
    model_halo: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "uncertainty", parse_kinds(self.uncertainty))
        object.__setattr__(self, "smooth", check_window(self.smooth))

    @property
    def halo(self) -> int:
        """Halo width each task reads around its chunk (``smooth // 2``, plus a spatial
        model's own halo)."""
        return self.smooth // 2 + (self.model_halo or 0)

    def scene_edges(self, iy: int, ix: int) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
        """Which sides of chunk ``(iy, ix)``'s read window are the scene's edges."""
        ry0, ry1, rx0, rx1 = self.chunk_halo(iy, ix).read
        return (ry0 == 0, ry1 == self.shape[0]), (rx0 == 0, rx1 == self.shape[1])

    @property
    def layers(self) -> tuple[str, ...]:
        """Zarr array names of the uncertainty layers."""
        return tuple(layer_name(k) for k in self.uncertainty)

    def chunk_halo(self, iy: int, ix: int) -> Halo:
        """Where chunk ``(iy, ix)`` and its halo lie (see :func:`s2dask.maps.halo.chunk_halo`)."""
        return chunk_halo(iy, ix, chunks=self.chunks, shape=self.shape, halo=self.halo)

    def location(self, iy: int, ix: int) -> list[tuple[int, int]]:
        """dask's ``array-location`` of chunk ``(iy, ix)`` *without* its halo: ``[bands, y, x]``."""
        h = self.chunk_halo(iy, ix)
        ry0, ry1, rx0, rx1 = h.read
        y0 = ry0 - h.pad[0][0] + self.halo
        x0 = rx0 - h.pad[1][0] + self.halo
        ys, xs = h.inner
        return [(0, 0), (y0, y0 + ys.stop - ys.start), (x0, x0 + xs.stop - xs.start)]

    def codes(self, mask: Any, block: np.ndarray, *, chunk: tuple[int, int]) -> np.ndarray:
        """Mask codes of the whole block (chunk + halo); the padding outside the scene is nodata.

        ``mask`` is a :class:`s2dask.scene.mask.ChunkMask`: it reads the scene part of the block's
        window (never outside the scene).
        """
        h = self.chunk_halo(*chunk)
        (t, b), (l, r) = h.pad
        _, ny, nx = block.shape
        codes = mask.codes(block[:, t:ny - b, l:nx - r], h.read[0], h.read[2])
        return np.pad(codes, h.pad, constant_values=NODATA_CODE)

    def inner(self, layer: np.ndarray, *, chunk: tuple[int, int]) -> np.ndarray:
        """The chunk's own part of a ``(y, x)`` layer of the block (the block itself without halo)."""
        return layer[self.chunk_halo(*chunk).inner]

    def outputs(self, predictor: Any, block: np.ndarray, *, chunk: tuple[int, int],
                probabilities: bool, valid: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """One forward pass over ``block``; the uint8 layers of the chunk.

        Parameters
        ----------
        predictor
            A :class:`s2dask.model.blocks.Predictor` (or any object with ``forward``,
            ``valid_mask``, ``n_bands``, ``n_classes`` and ``class_values``).
        block
            ``(bands, y, x)``: the chunk, plus its halo when ``smooth > 1``.
        chunk
            ``(iy, ix)``: the chunk's position (dask's ``chunk-location``).
        probabilities
            Also return the probabilities (uint8 percent) in the stack.
        valid
            Optional ``block``-shaped mask of pixels to predict (a cloud mask); pixels
            where it is False are nodata and take no part in any smoothing window.

        Returns
        -------
        (numpy.ndarray, dict)
            ``(k, ch, cw)`` uint8 stack as :func:`s2dask.model.blocks.block_outputs` (classes,
            confidence, probabilities when asked) and ``{layer name: (ch, cw) uint8}``.

        Raises
        ------
        ValueError
            If the block does not have one band per model band or the halo's shape.
        """
        nb, ny, nx = block.shape
        if nb != predictor.n_bands:
            raise ValueError(f"block has {nb} bands, the model takes {predictor.n_bands}")
        rows = block.reshape(nb, ny * nx).T
        ok = predictor.valid_mask(rows)
        if self.halo:
            ok &= inside(self.chunk_halo(*chunk)).ravel()
        if valid is not None:
            ok &= np.asarray(valid, dtype=bool).ravel()
        n_cls = predictor.n_classes
        if getattr(predictor, "spatial", False):  # the model sees the scene part of the block
            (t, b), (l, r) = self.chunk_halo(*chunk).pad
            prob = np.zeros((n_cls, ny, nx), dtype="float32")
            exact = np.zeros((ny, nx), dtype=bool)
            if ok.any():
                part, sure = predictor.block_probabilities(block[:, t:ny - b, l:nx - r],
                                                           self.scene_edges(*chunk))
                prob[:, t:ny - b, l:nx - r], exact[t:ny - b, l:nx - r] = part, sure
            ok = ok.reshape(ny, nx) & exact
            m = self.model_halo or 0
            if m:  # the model's own halo is spent: what remains is the chunk (+ a smoothing ring)
                prob, ok = prob[:, m:ny - m, m:nx - m], ok[m:ny - m, m:nx - m]
        else:
            prob = np.zeros((ny * nx, n_cls), dtype="float32")
            if ok.all():
                prob[:] = predictor.forward(rows)
            elif ok.any():
                prob[ok] = predictor.forward(rows[ok])
            prob = prob.T.reshape(n_cls, ny, nx)
            ok = ok.reshape(ny, nx)
        if self.smooth > 1:
            s = smooth_block(prob, ok, size=self.smooth, values=predictor.class_values)
            classes, confidence, prob, ok = s.classes, s.confidence, s.probabilities, s.valid
        else:
            best = np.argmax(prob, axis=0)
            classes = np.where(ok, predictor.class_values[best], NODATA).astype("uint8")
            top = np.take_along_axis(prob, best[None], axis=0)[0]
            confidence = np.where(ok, _percent(top), 0).astype("uint8")
        out = np.empty((2 + (n_cls if probabilities else 0), *classes.shape), dtype="uint8")
        out[0], out[1] = classes, confidence
        if probabilities:
            out[2:] = np.where(ok, _percent(prob), 0)
        return out, compute_layers(prob, ok, self.uncertainty)


def map_spec(*, uncertainty: tuple[str, ...], smooth: int | None, chunks: tuple[int, int],
             shape: tuple[int, int], model_halo: int | None = None) -> MapSpec | None:
    """The :class:`MapSpec` of a job, or None when it asks for neither uncertainty nor smoothing
    (its tasks then run :func:`s2dask.model.blocks.block_outputs` as before) and the model is a
    pixel model (``model_halo`` None; a spatial model's tasks always read a halo).

    Raises
    ------
    ParameterError
        If a measure is unknown or ``smooth`` is not an odd window edge.
    """
    if not uncertainty and (smooth or 1) == 1 and model_halo is None:
        return None
    return MapSpec(tuple(uncertainty), int(smooth or 1), tuple(chunks), tuple(shape), model_halo)


def zarr_layers(uncertainty: tuple[str, ...]) -> dict[str, dict]:
    """``{array name: attrs}`` of the uncertainty layers, for the Zarr layout."""
    return {layer_name(k): layer_attrs(k) for k in parse_kinds(uncertainty)}


def cog_layers(uncertainty: tuple[str, ...]) -> dict[str, str]:
    """``{array name: COG file name}`` of the uncertainty layers."""
    return {layer_name(k): cog_name(k) for k in parse_kinds(uncertainty)}


def map_options(uncertainty: str | tuple[str, ...] | None, smooth: int | None) -> tuple[str, ...]:
    """Validate ``--uncertainty`` and ``--smooth`` (before any compute); the parsed measures.

    Raises
    ------
    ParameterError
        If a measure is unknown or ``smooth`` is not an odd window edge in 1..31.
    """
    if smooth is not None:
        check_window(smooth)
    return parse_kinds(uncertainty)


def map_record(options: Any, part: str = "parameters") -> dict:
    """The ``job.json`` entries of a job's uncertainty layers and smoothing.

    Parameters
    ----------
    options
        Anything with ``uncertainty``, ``smooth`` and ``cog`` (a :class:`~s2dask.job.run.JobOptions`).
    part
        ``"parameters"`` (``uncertainty``, ``smooth``; also what a resumed job must match) or
        ``"output"`` (the layers' arrays and files, their scale, the smoothing rule).
    """
    kinds, smooth = parse_kinds(options.uncertainty), options.smooth
    if part == "parameters":
        return {"uncertainty": list(kinds), "smooth": int(smooth) if smooth and smooth > 1 else None}
    layers = {k: {"zarr": f"classes.zarr/{layer_name(k)}", "cog": cog_name(k) if options.cog else None}
              for k in kinds}
    out: dict = {"uncertainty": {"layers": layers, "scale": SCALE_TEXT} if kinds else None}
    if smooth and smooth > 1:
        out["smoothing"] = (f"class probabilities replaced by their mean over the valid pixels "
                            f"of a {smooth} x {smooth} window before the class is chosen")
    return out


SCALE_TEXT = "uint8 percent: 0 = certain, 100 = most uncertain; 255 = nodata"
