"""Worker side: what runs inside Dask worker processes.

The model reaches workers through :class:`ModelPlugin`, a ``WorkerPlugin`` registered by
the client: the scheduler hands it to every worker, including workers that join or are
restarted later, and each worker process builds the Keras model once and caches it by
its sha256 (:func:`get_predictor`). Tasks carry only a :class:`ModelRef` (hash, path,
batch size), so the model is never pickled into a task graph.

The task functions of a job live here too: :func:`predict_and_store` (one chunk:
predict, write its Zarr region, leave its ledger marker) and :func:`write_rasters` (the
COG and the quick-look, streamed from the Zarr store next to the data).
"""

from __future__ import annotations

import collections
import functools
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .backend import configure_threads
from .contract import ClassInfo
from .errors import ModelError, S2DaskError, detached
from .ledger import N_COUNTS, write_marker
from .model import ModelHandle, check_model_shape, load_model
from .predict import Predictor, block_outputs
from .retry import RetryPolicy, call_with_retry, take_read_retries
from .storage import Location, put_file
from .write import validate_cog, write_cog, write_quicklook, write_region

__all__ = ["ModelRef", "ModelPlugin", "get_predictor", "predict_and_store", "write_rasters"]

# ---------------------------------------------------------------- the per-process model cache

_CACHE: dict[tuple[str, int], Any] = {}
_BUILDS: collections.Counter = collections.Counter()
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """The small identifier of a model that tasks carry (never the model itself)."""

    sha256: str
    path: str
    batch_size: int


def build_counts() -> dict[str, int]:
    """How many times each model (by sha256) was built in this process (for tests, records)."""
    return dict(_BUILDS)


def _install(sha256: str, batch_size: int, build: Callable[[], Predictor]) -> Predictor:
    key = (sha256, int(batch_size))
    with _CACHE_LOCK:
        pred = _CACHE.get(key)
        if pred is None:
            pred = build()
            _CACHE[key] = pred
            _BUILDS[sha256] += 1
        return pred


def get_predictor(ref: ModelRef) -> Predictor:
    """The cached predictor of ``ref`` in this process, built on first use.

    On a worker with :class:`ModelPlugin` the model is already there. Elsewhere (the
    threaded scheduler, a worker that missed the plugin) it is loaded once from
    ``ref.path`` and its sha256 checked.

    Parameters
    ----------
    ref
        The model's reference, as tasks carry it.

    Raises
    ------
    ModelError
        If the model file at ``ref.path`` no longer matches ``ref.sha256``.
    """
    key = (ref.sha256, int(ref.batch_size))
    pred = _CACHE.get(key)
    if pred is not None:
        return pred

    def build() -> Predictor:
        bundle = load_model(ref.path)
        if bundle.sha256 != ref.sha256:
            raise ModelError(f"model at {ref.path} changed during the job (sha256 differs): rerun")
        return bundle.predictor(batch_size=ref.batch_size)

    return _install(ref.sha256, ref.batch_size, build)


try:  # distributed is a core dependency; keep import errors readable anyway
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[misc,assignment]


class ModelPlugin(WorkerPlugin):
    """Deliver a model handle to every worker once; build it once per worker process.

    Parameters
    ----------
    handle
        :class:`s2dask.model.ModelHandle` (bytes + sha256 + contract).
    batch_size
        The forward pass's fixed batch size.
    tf_threads
        Backend threads per task. ``None``: the worker's cores divided by the Dask
        threads of all workers on its host (``host_threads``), at least 1.
    host_threads
        ``{host: total Dask threads on that host}`` measured by the client when it
        registers the plugin; workers that join later fall back to their own count.
    """

    idempotent = False

    def __init__(self, handle: ModelHandle, *, batch_size: int, tf_threads: int | None = None,
                 host_threads: dict[str, int] | None = None):
        self.handle = handle
        self.batch_size = int(batch_size)
        self.tf_threads = tf_threads
        self.host_threads = dict(host_threads or {})
        self.name = f"s2dask-model-{handle.sha256[:16]}-{self.batch_size}"

    def _threads_for(self, worker) -> int:
        if self.tf_threads:
            return int(self.tf_threads)
        env = os.environ.get("S2DASK_TF_THREADS")
        if env:
            return max(1, int(env))
        from dask.system import CPU_COUNT

        host = worker.address.split("://")[-1].rsplit(":", 1)[0]
        dask_threads = self.host_threads.get(host) or worker.state.nthreads
        return max(1, CPU_COUNT // max(1, dask_threads))

    def setup(self, worker) -> None:
        configure_threads(self._threads_for(worker))

        def build() -> Predictor:
            model = self.handle.build()
            check_model_shape(model, self.handle.contract, where=f"model {self.handle.sha256[:12]}")
            return Predictor(model, self.handle.contract, batch_size=self.batch_size)

        _install(self.handle.sha256, self.batch_size, build)


# ---------------------------------------------------------------- the job's tasks


def predict_and_store(block: np.ndarray, *, ref: ModelRef, store: Location, markers: Location,
                      probabilities: bool, retry: RetryPolicy | None = None,
                      block_info=None) -> np.ndarray:
    """One prediction task: predict a ``(band, y, x)`` block, write it, return class counts.

    The model comes from the worker's cache (put there by :class:`ModelPlugin`); only
    ``ref`` travels with the task. The chunk's region and then its marker are written, each
    retried on transient storage errors (:func:`s2dask.retry.call_with_retry`; both are
    idempotent); the marker records the retries of the chunk's read and writes. A marker
    means the chunk's region is in the store.

    Parameters
    ----------
    block
        The chunk's raw band values.
    ref
        The model.
    store, markers
        The partial output's Zarr group and its ledger folder.
    probabilities
        Also write the per-class probabilities.
    retry
        How to retry the writes (default :class:`~s2dask.retry.RetryPolicy`).
    block_info
        Dask's description of the block (its position in the scene).

    Returns
    -------
    numpy.ndarray
        ``(1, 1, 1, N_COUNTS)`` int64 class counts.

    Raises
    ------
    StorageError
        A write failed for good: at once when permanent, after the retries when transient
        (one line naming the chunk window and the store).
    """
    where = block_info[0]["array-location"]
    iy, ix = block_info[0]["chunk-location"][1:]
    (y0, y1), (x0, x1) = where[1], where[2]
    ys, xs = slice(y0, y1), slice(x0, x1)
    policy = retry or RetryPolicy()
    counter = take_read_retries((y0, x0, y1 - y0, x1 - x0))
    predictor = get_predictor(ref)
    out = block_outputs(predictor, block, probabilities=probabilities)
    counts = np.bincount(out[0].ravel(), minlength=N_COUNTS).astype("int64")
    window = f"chunk y={y0}:{y1} x={x0}:{x1}"
    error = None
    try:
        each = functools.partial(call_with_retry, policy=policy, action="write",
                                 what=f"{window} of {store}", counter=counter)
        write_region(_retrying(store, policy), out, y=ys, x=xs, probabilities=probabilities,
                     call=each)  # each request retried alone: an open, a region write
        call_with_retry(write_marker, _retrying(markers, policy), (iy, ix), where[1], where[2],
                        counts, retries=counter, policy=policy, action="write",
                        what=f"the marker of {window} in {markers}", counter=counter)
    except S2DaskError as exc:
        error = exc
    if error is not None:
        raise detached(error)  # outside the handler: no cause travels (see errors.detached)
    return counts.reshape(1, 1, 1, N_COUNTS)


def _retrying(loc: Location, policy: RetryPolicy) -> Location:
    """``loc`` with the storage's own retry layers off: :func:`call_with_retry` is the one."""
    if not loc.remote:
        return loc
    return Location(loc.url, policy.storage_options(loc.url, loc.options))


def _portable(fn: Callable) -> Callable:
    """Raise a task's :class:`S2DaskError` without its causes (see :func:`errors.detached`)."""

    @functools.wraps(fn)
    def task(*args, **kwargs):
        error = None
        try:
            return fn(*args, **kwargs)
        except S2DaskError as exc:
            error = exc
        raise detached(error)

    return task


@_portable
def write_rasters(store: Location, partial: Location, *, classes: Sequence[ClassInfo], crs: str,
                  transform, overview_resampling: str, quicklook: bool, title: str,
                  tags: dict) -> dict:
    """Stream the COG from the Zarr, validate it, draw the quicklook (a worker task).

    Written in a local temporary folder (inside the partial output when it is local) and
    then moved or uploaded into the partial output.

    Parameters
    ----------
    store, partial
        The partial output's Zarr group and folder.
    classes, crs, transform
        The class table and the georeferencing of the map.
    overview_resampling
        ``"mode"`` or ``"nearest"``.
    quicklook
        Also draw ``quicklook.png``.
    title, tags
        The quick-look's title; GeoTIFF metadata of the COG.

    Returns
    -------
    dict
        The COG validation report: ``{"valid", "errors", "warnings"}``.

    Raises
    ------
    StorageError
        If the COG cannot be written.
    """
    with tempfile.TemporaryDirectory(prefix="s2dask-cog-",
                                     dir=None if partial.remote else partial.url) as tmp:
        cog_path = os.path.join(tmp, "classes.tif")
        write_cog(store, cog_path, classes=classes, crs=crs, transform=transform,
                  overview_resampling=overview_resampling, tags=tags)
        valid, errors, warnings = validate_cog(cog_path)
        if quicklook:
            write_quicklook(cog_path, os.path.join(tmp, "quicklook.png"), classes=classes, title=title)
        for name in os.listdir(tmp):
            put_file(os.path.join(tmp, name), partial.join(name))
    return {"valid": bool(valid), "errors": list(errors), "warnings": list(warnings)}
