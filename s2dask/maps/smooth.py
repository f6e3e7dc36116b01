"""Seamless spatial smoothing of class probabilities, block by block with a halo.

**The filter**: each valid pixel's smoothed probability vector is the *mean of the probability
vectors of the valid pixels in the N x N window centred on it* (the pixel itself included);
the class is then the arg-max of that mean. Invalid pixels (nodata, masked, outside the
scene) are neither smoothed into (they stay nodata) nor counted (they add nothing to the sum
and nothing to the count).

Why this and not sits' Bayesian smoothing: the Bayesian smoother works on logits and needs a
prior-variance ("smoothness") parameter per class plus a local variance estimate, which adds
tuning knobs whose effect is hard to explain and logit(0)/logit(1) clipping; the window mean
has one parameter (N), keeps the output a probability vector (it sums to 1 when the inputs
do), degrades gracefully next to nodata (the mean of fewer pixels), and is a majority-like
vote weighted by confidence, which is what removes salt-and-pepper. It is exactly computable
block-wise, which the next paragraph relies on.

**Chunking independence, bit for bit**: the sums are accumulated offset by offset in one fixed
order (``for dy: for dx: acc += shifted``), never with running (cumulative) sums from the
window's start, so every output pixel adds the same float32 values in the same order whether
its chunk is 7 pixels or the whole scene. Invalid neighbours add an exact 0.0. Each block gets
its chunk plus a halo of ``h = N // 2`` pixels on every side; where the halo leaves the scene
it is padded with *invalid* pixels (:func:`halo_window` says what to read and how to pad).

Worker side: pure numpy, no IO except through the ``read`` callable of :func:`smooth_chunk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..errors import ParameterError

__all__ = ["MAX_WINDOW", "NODATA", "check_window", "Halo", "halo_window", "pad_to_halo",
           "Smoothed", "smooth_block", "smooth_chunk"]

MAX_WINDOW = 31
"""Largest window edge accepted (a 31 x 31 mean already blurs 300 m of 10 m pixels)."""
NODATA = 255
"""Class value (and confidence 0) of pixels without data."""


def check_window(size: int) -> int:
    """Validate a smoothing window edge: an odd integer in 1..MAX_WINDOW.

    Raises
    ------
    ParameterError
        If ``size`` is not an odd positive integer <= :data:`MAX_WINDOW`.
    """
    ok = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    if not ok or size < 1 or size % 2 == 0 or size > MAX_WINDOW:
        raise ParameterError(f"--smooth must be an odd window edge between 1 and {MAX_WINDOW} "
                             f"pixels (3, 5, 7 ...), got {size!r}")
    return int(size)


@dataclass(frozen=True)
class Halo:
    """How to read one chunk with its halo, and where the chunk lies in what was read."""

    read: tuple[int, int, int, int]
    """``(y0, y1, x0, x1)``: the window to read, clipped to the scene."""
    pad: tuple[tuple[int, int], tuple[int, int]]
    """``((top, bottom), (left, right))``: invalid pixels to add where the halo leaves the scene."""
    inner: tuple[slice, slice]
    """The chunk's ``(rows, cols)`` inside the *padded* window (always ``[h:-h, h:-h]``)."""
    halo: int
    """``h``: halo width in pixels."""


def halo_window(y0: int, y1: int, x0: int, x1: int, *, shape: tuple[int, int], halo: int) -> Halo:
    """The read window and padding that give the chunk ``[y0:y1, x0:x1]`` a halo of ``halo`` pixels.

    Parameters
    ----------
    y0, y1, x0, x1
        The chunk (end exclusive), inside the scene.
    shape
        ``(rows, cols)`` of the scene.
    halo
        Halo width (``N // 2`` for an N x N window; a CNN's receptive-field radius).

    Raises
    ------
    ParameterError
        If the chunk is empty or outside the scene, or ``halo`` is negative.
    """
    ny, nx = shape
    if halo < 0 or not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise ParameterError(f"chunk ({y0}:{y1}, {x0}:{x1}) with halo {halo} does not fit a "
                             f"scene of {ny} x {nx} pixels")
    ry0, ry1 = max(0, y0 - halo), min(ny, y1 + halo)
    rx0, rx1 = max(0, x0 - halo), min(nx, x1 + halo)
    pad = ((ry0 - (y0 - halo), (y1 + halo) - ry1), (rx0 - (x0 - halo), (x1 + halo) - rx1))
    inner = (slice(halo, halo + (y1 - y0)), slice(halo, halo + (x1 - x0)))
    return Halo((ry0, ry1, rx0, rx1), pad, inner, halo)


def pad_to_halo(prob: np.ndarray, valid: np.ndarray, halo: Halo) -> tuple[np.ndarray, np.ndarray]:
    """Pad what was read for ``halo.read`` to the full chunk + halo window, with invalid pixels."""
    (t, b), (l, r) = halo.pad
    p = np.pad(prob, ((0, 0), (t, b), (l, r)), constant_values=0)
    v = np.pad(np.asarray(valid, dtype=bool), ((t, b), (l, r)), constant_values=False)
    return p, v


class Smoothed(NamedTuple):
    """Smoothing result for the inner chunk."""

    probabilities: np.ndarray
    """``(n_classes, y, x)`` float32 window means; 0 where invalid."""
    classes: np.ndarray
    """``(y, x)`` uint8 class values (arg-max); :data:`NODATA` where invalid."""
    confidence: np.ndarray
    """``(y, x)`` uint8 percent, the smoothed probability of the chosen class; 0 where invalid."""
    valid: np.ndarray
    """``(y, x)`` bool: the inner chunk's own valid mask (smoothing never creates data)."""


def smooth_block(prob: np.ndarray, valid: np.ndarray, *, size: int,
                 values: Sequence[int] | None = None) -> Smoothed:
    """Smooth one chunk given its probabilities *with the halo*: ``(K, ch + 2h, cw + 2h)``.

    Parameters
    ----------
    prob
        ``(n_classes, ch + 2h, cw + 2h)`` probabilities of the chunk and its halo
        (``h = size // 2``), already padded at scene edges (:func:`pad_to_halo`).
    valid
        ``(ch + 2h, cw + 2h)`` bool: pixels with data (padding is False).
    size
        Window edge N (odd, 1..:data:`MAX_WINDOW`).
    values
        Class value of each probability index (default: the index).

    Returns
    -------
    Smoothed
        For the inner ``(ch, cw)`` chunk only.

    Raises
    ------
    ParameterError
        If ``size`` is invalid or the shapes do not fit.
    """
    size = check_window(size)
    h = size // 2
    p = np.asarray(prob, dtype="float32")
    v = np.asarray(valid, dtype=bool)
    if p.ndim != 3 or v.shape != p.shape[1:] or p.shape[1] <= 2 * h or p.shape[2] <= 2 * h:
        raise ParameterError(f"smooth_block needs (K, ch + {2 * h}, cw + {2 * h}) probabilities and a "
                             f"matching mask, got {p.shape} and {v.shape}")
    v = v & np.isfinite(p).all(axis=0)
    ch, cw = p.shape[1] - 2 * h, p.shape[2] - 2 * h
    pz = np.where(v, p, np.float32(0))
    acc = np.zeros((p.shape[0], ch, cw), dtype="float32")
    cnt = np.zeros((ch, cw), dtype="float32")
    for dy in range(size):  # fixed order: the same additions for every pixel, any chunking
        for dx in range(size):
            acc += pz[:, dy:dy + ch, dx:dx + cw]
            cnt += v[dy:dy + ch, dx:dx + cw]
    inner = v[h:h + ch, h:h + cw]
    mean = np.where(inner, acc / np.maximum(cnt, 1), np.float32(0)).astype("float32")
    idx = np.argmax(mean, axis=0)
    lut = np.asarray(values if values is not None else np.arange(p.shape[0]), dtype="uint8")
    classes = np.where(inner, lut[idx], NODATA).astype("uint8")
    best = np.take_along_axis(mean, idx[None], axis=0)[0]
    confidence = np.where(inner, np.rint(np.clip(best, 0, 1) * 100), 0).astype("uint8")
    return Smoothed(mean, classes, confidence, inner)


def smooth_chunk(read: Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]],
                 window: tuple[int, int, int, int], *, shape: tuple[int, int], size: int,
                 values: Sequence[int] | None = None) -> Smoothed:
    """Read a chunk plus its halo through ``read``, pad it at scene edges, and smooth it.

    Parameters
    ----------
    read
        ``read(y0, y1, x0, x1) -> (prob (K, y, x), valid (y, x))`` for a window inside the scene
        (e.g. from the job's probabilities Zarr array).
    window
        The chunk ``(y0, y1, x0, x1)``.
    shape
        ``(rows, cols)`` of the scene.
    size, values
        As :func:`smooth_block`.

    Raises
    ------
    ParameterError
        If ``size`` or the window is invalid.
    """
    size = check_window(size)
    halo = halo_window(*window, shape=shape, halo=size // 2)
    prob, valid = read(*halo.read)
    prob, valid = pad_to_halo(prob, valid, halo)
    return smooth_block(prob, valid, size=size, values=values)
