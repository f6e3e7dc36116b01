"""Smoothing: known values, and identical results (bit for bit) for any chunking."""

from __future__ import annotations

import numpy as np
import pytest

from s2dask.errors import ParameterError
from s2dask.maps.smooth import MAX_WINDOW, NODATA, check_window, halo_window, smooth_block, smooth_chunk


def _field(k=4, shape=(45, 52), seed=1):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(k, *shape))
    p = (np.exp(logits) / np.exp(logits).sum(0)).astype("float32")
    valid = rng.random(shape) > 0.1
    valid[10:16, 20:30] = False           # a nodata hole across chunk edges
    valid[:, :3] = False                  # a nodata strip along the scene edge
    p[:, ~valid] = np.nan                 # whatever is under nodata must not leak in
    return p, valid


def _smooth_in_chunks(p, valid, *, size, chunk, values=None):
    ny, nx = valid.shape
    out_p = np.full(p.shape, -1, dtype="float32")
    out_c = np.full((ny, nx), 7, dtype="uint8")
    out_f = np.full((ny, nx), 7, dtype="uint8")

    def read(y0, y1, x0, x1):
        return p[:, y0:y1, x0:x1], valid[y0:y1, x0:x1]

    for y0 in range(0, ny, chunk):
        for x0 in range(0, nx, chunk):
            w = (y0, min(y0 + chunk, ny), x0, min(x0 + chunk, nx))
            r = smooth_chunk(read, w, shape=(ny, nx), size=size, values=values)
            out_p[:, w[0]:w[1], w[2]:w[3]] = r.probabilities
            out_c[w[0]:w[1], w[2]:w[3]] = r.classes
            out_f[w[0]:w[1], w[2]:w[3]] = r.confidence
    return out_p, out_c, out_f


@pytest.mark.parametrize("size", [3, 5])
def test_identical_for_any_chunking(size):
    p, valid = _field()
    whole = _smooth_in_chunks(p, valid, size=size, chunk=10_000, values=[10, 20, 30, 40])
    for chunk in (7, 16):
        got = _smooth_in_chunks(p, valid, size=size, chunk=chunk, values=[10, 20, 30, 40])
        for a, b in zip(got, whole):
            assert a.tobytes() == b.tobytes()          # bit for bit, chunk edges included
    probs, classes, conf = whole
    assert (classes[~valid] == NODATA).all() and (conf[~valid] == 0).all()
    assert (probs[:, ~valid] == 0).all() and np.isfinite(probs).all()
    assert set(np.unique(classes[valid])) <= {10, 20, 30, 40}
    # and equal (to float rounding) to an independent float64 mean over valid neighbours
    h = size // 2
    ny, nx = valid.shape
    ref = np.zeros(p.shape)
    for y in range(ny):
        for x in range(nx):
            if valid[y, x]:
                win = valid[max(0, y - h):y + h + 1, max(0, x - h):x + h + 1]
                vals = p[:, max(0, y - h):y + h + 1, max(0, x - h):x + h + 1].astype("float64")
                ref[:, y, x] = vals[:, win].mean(axis=1)
    assert np.allclose(probs, ref, atol=1e-6)
    assert np.allclose(probs[:, valid].sum(0), 1, atol=1e-5)


def test_known_values_on_a_tiny_array():
    # two classes, 3 x 3, window 3; the centre-right pixel is nodata
    p1 = np.array([[0.9, 0.8, 0.1],
                   [0.7, 0.2, 0.0],
                   [0.6, 0.3, 0.4]], dtype="float32")
    p = np.stack([p1, 1 - p1])
    valid = np.ones((3, 3), bool)
    valid[1, 2] = False
    probs, classes, conf = _smooth_in_chunks(p, valid, size=3, chunk=3)
    # centre: mean of the 8 valid pixels' p1 = (0.9+0.8+0.1+0.7+0.2+0.6+0.3+0.4) / 8 = 0.5
    assert probs[0, 1, 1] == pytest.approx(0.5, abs=1e-6)
    # top-left corner: its 4 in-scene neighbours (0.9, 0.8, 0.7, 0.2) -> 0.65
    assert probs[0, 0, 0] == pytest.approx(0.65, abs=1e-6)
    # top-right: (0.8, 0.1, 0.2) (the nodata pixel not counted) -> 0.3667
    assert probs[0, 0, 2] == pytest.approx(1.1 / 3, abs=1e-6)
    # bottom-left: (0.7, 0.2, 0.6, 0.3) -> 0.45, so the smoothed class flips to 1
    assert probs[0, 2, 0] == pytest.approx(0.45, abs=1e-6)
    assert classes.tolist() == [[0, 0, 1], [0, 0, NODATA], [1, 1, 1]]
    assert conf[0, 0] == 65 and conf[1, 2] == 0
    # window 1 changes nothing
    same, _, _ = _smooth_in_chunks(p, valid, size=1, chunk=2)
    assert np.array_equal(same[:, valid], p[:, valid])


def test_halo_window_at_edges_and_inside():
    h = halo_window(0, 4, 8, 12, shape=(10, 12), halo=2)
    assert h.read == (0, 6, 6, 12) and h.pad == ((2, 0), (0, 2))
    assert h.inner == (slice(2, 6), slice(2, 6))
    h = halo_window(4, 8, 4, 8, shape=(10, 12), halo=1)
    assert h.read == (3, 9, 3, 9) and h.pad == ((0, 0), (0, 0))
    with pytest.raises(ParameterError, match="does not fit"):
        halo_window(8, 12, 0, 4, shape=(10, 12), halo=1)


@pytest.mark.parametrize("bad", [0, 2, -3, MAX_WINDOW + 2, 3.0, True, "5"])
def test_window_validation(bad):
    with pytest.raises(ParameterError, match="odd window edge") as err:
        check_window(bad)
    assert "\n" not in str(err.value)


def test_block_shape_validation():
    with pytest.raises(ParameterError, match="needs"):
        smooth_block(np.zeros((2, 4, 4), "float32"), np.ones((4, 4), bool), size=5)
