"""Worker side: what runs inside Dask worker processes.

The model reaches workers through :class:`ModelPlugin`, a ``WorkerPlugin`` registered by
the client: the scheduler hands it to every worker, including workers that join or are
restarted later, and each worker process resolves the engine (OpenVINO on CPU workers,
Keras on GPU workers), builds its predictor once and caches it (:func:`get_predictor`).
Tasks carry only a :class:`ModelRef` (hash, path, batch size, engine and precision as
asked), so the model is never pickled into a task graph.

The task functions of a job live here too: :func:`predict_and_store` (one chunk:
predict, write its Zarr region, leave its ledger marker) and :func:`write_rasters` (the
COG and the quick-look, streamed from the Zarr store next to the data); and the task of
:func:`s2dask.predict`, :func:`predict_layers`. Both prediction tasks run one block through
:func:`predict_block`.
"""

from __future__ import annotations

import collections
import functools
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ModelError, S2DaskError, detached
from ..io.retry import RetryPolicy, call_with_retry, take_read
from ..io.storage import Location, put_file
from ..maps.outputs import MapSpec
from ..maps.writers import MASK, validate_cog, write_cog, write_layer, write_quicklook, write_region
from ..model.backend import configure_threads
from ..model.blocks import block_outputs
from ..model.bundle import ModelHandle, check_model_shape, load_model
from ..model.contract import OUTPUT_NODATA, ClassInfo
from ..model.engines import EngineChoice, build_predictor, describe, detect_device, resolve
from ..scene.mask import NODATA, VALID, ChunkMask, count_codes
from .ledger import N_COUNTS, N_TOTALS, write_marker

__all__ = ["ModelRef", "ModelPlugin", "get_predictor", "engine_record", "predict_block", "predict_and_store",
           "predict_layers", "write_rasters", "build_counts", "forward_counts"]

# ---------------------------------------------------------------- the per-process model cache

_CACHE: dict[tuple, Any] = {}
_CHOICES: dict[tuple, EngineChoice] = {}
_BUILDS: collections.Counter = collections.Counter()
_FORWARDS: collections.Counter = collections.Counter()
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """The small identifier of a model that tasks carry (never the model itself).

    ``engine`` and ``precision`` are the options as asked (``auto`` included): each worker
    resolves them for itself, so a GPU worker and a CPU worker of one cluster may differ.
    ``batch_size`` ``None`` is the resolved engine's default.
    """

    sha256: str
    path: str
    batch_size: int | None = None
    engine: str = "auto"
    precision: str = "auto"
    #: a spatial model's halo in pixels (its chunks are read with it); ``None``: a pixel model
    halo: int | None = None
    #: a spatial model's total stride (chunks must be multiples of it)
    stride: int = 1

    @classmethod
    def of(cls, bundle: Any, batch_size: int | None = None, engine: str = "auto",
           precision: str = "auto") -> "ModelRef":
        """The reference of a loaded bundle (:class:`~s2dask.model.bundle.ModelBundle`), with
        its card's halo and stride when it is a spatial model."""
        card = bundle.card
        spatial = card.get("kind", "pixel") != "pixel"
        return cls(bundle.sha256, str(Path(bundle.path).resolve()), batch_size, engine, precision,
                   int(card.get("halo", 0)) if spatial else None, int(card.get("stride", 1)))

    @property
    def key(self) -> tuple:
        """The predictor cache key of this reference in a worker process."""
        return (self.sha256, self.engine, self.precision, int(self.batch_size or 0))


def build_counts() -> dict[str, int]:
    """How many times each model (by sha256) was built in this process with one set of engine
    options (the most over its option sets: 1 means never rebuilt; for tests, records)."""
    out: dict[str, int] = {}
    for (sha, *_), n in _BUILDS.items():
        out[sha] = max(out.get(sha, 0), n)
    return out


def forward_counts() -> dict[str, int]:
    """How many chunks each model (by sha256) ran through its forward pass in this process."""
    return dict(_FORWARDS)


def _install(key: tuple, build: Callable[[], tuple[EngineChoice, Any]]) -> Any:
    with _CACHE_LOCK:
        pred = _CACHE.get(key)
        if pred is None:
            choice, pred = build()
            _CACHE[key], _CHOICES[key] = pred, choice
            _BUILDS[key] += 1
        return pred


def get_predictor(ref: ModelRef) -> Any:
    """The cached predictor of ``ref`` in this process, built on first use.

    On a worker with :class:`ModelPlugin` the model is already there. Elsewhere (the
    threaded scheduler, a worker that missed the plugin) it is loaded once from
    ``ref.path`` and its sha256 checked; ``engine``/``precision`` are resolved here.

    Parameters
    ----------
    ref
        The model's reference, as tasks carry it.

    Raises
    ------
    ModelError
        If the model file at ``ref.path`` no longer matches ``ref.sha256``.
    """
    pred = _CACHE.get(ref.key)
    if pred is not None:
        return pred

    def build() -> tuple[EngineChoice, Any]:
        bundle = load_model(ref.path, check_keras=False)
        if bundle.sha256 != ref.sha256:
            raise ModelError(f"model at {ref.path} changed during the job (sha256 differs): rerun")
        choice = resolve(ref.engine, ref.precision, detect_device(), contract=bundle.contract)
        return choice, bundle.predictor_for(choice, batch_size=ref.batch_size)

    return _install(ref.key, build)


def engine_record(ref: ModelRef) -> dict | None:
    """This worker's engine record for ``ref`` (engine, precision, device, batch size, threads,
    model source), or ``None`` if it has not built it; run with ``client.run``."""
    pred, choice = _CACHE.get(ref.key), _CHOICES.get(ref.key)
    return describe(choice, pred) if pred is not None and choice is not None else None


try:  # distributed is a core dependency; keep import errors readable anyway
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[misc,assignment]


class ModelPlugin(WorkerPlugin):
    """Deliver a model handle to every worker once; build it once per worker process.

    Each worker resolves ``engine``/``precision`` for itself (:func:`s2dask.model.engines.resolve`
    with its own device): OpenVINO on CPU workers, from the bundle's stored IR when the
    handle carries one (no deep-learning backend is imported then), else converted from
    the Keras model once; Keras on GPU workers.

    Parameters
    ----------
    handle
        :class:`s2dask.model.bundle.ModelHandle` (bytes + sha256 + contract [+ IR]).
    batch_size
        The forward pass's fixed batch size (``None``: the resolved engine's default).
    tf_threads
        Threads per task of the forward pass (the backend's, or OpenVINO's). ``None``: the
        worker's cores divided by the Dask threads of all workers on its host
        (``host_threads``), at least 1.
    host_threads
        ``{host: total Dask threads on that host}`` measured by the client when it
        registers the plugin; workers that join later fall back to their own count.
    engine, precision
        ``auto|keras|openvino`` and ``auto|fp32|bf16``, as asked.
    """

    idempotent = False

    def __init__(self, handle: ModelHandle, *, batch_size: int | None = None, tf_threads: int | None = None,
                 host_threads: dict[str, int] | None = None, engine: str = "auto",
                 precision: str = "auto"):
        self.handle = handle
        self.batch_size = int(batch_size) if batch_size else None
        self.tf_threads = tf_threads
        self.host_threads = dict(host_threads or {})
        self.engine, self.precision = engine, precision
        self.ref_key = ModelRef(handle.sha256, "", self.batch_size, engine, precision).key
        self.name = f"s2dask-model-{handle.sha256[:16]}-{engine}-{precision}-{self.batch_size or 'auto'}"

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
        threads = self._threads_for(worker)

        def keras_model():
            model = self.handle.build()
            check_model_shape(model, self.handle.contract, where=f"model {self.handle.sha256[:12]}")
            return model

        def build() -> tuple[EngineChoice, Any]:
            choice = resolve(self.engine, self.precision, detect_device(), contract=self.handle.contract)
            if choice.engine == "keras":  # OpenVINO takes its threads per compiled model
                configure_threads(threads)
            return choice, build_predictor(
                choice, sha256=self.handle.sha256, contract=self.handle.contract,
                keras_model=keras_model, ir=self.handle.ir_model if self.handle.ir else None,
                batch_size=self.batch_size, threads=threads)

        _install(self.ref_key, build)


# ---------------------------------------------------------------- the job's tasks


def predict_block(block: np.ndarray, predictor: Any, *, probabilities: bool,
                  origin: tuple[int, int] = (0, 0), mask: ChunkMask | None = None,
                  maps: MapSpec | None = None, chunk: tuple[int, int] = (0, 0),
                  count_as: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The layers of one raw ``(band, y, x)`` block: the per-block code of every prediction path.

    :func:`predict_and_store` (a ``classify`` task) and the tasks of :func:`s2dask.predict`
    both call it, so their maps cannot drift apart. It finds the block's mask codes, predicts
    the valid pixels only (a block without one never reaches the forward pass) and marks as
    nodata what the model's own nodata test refused.

    Parameters
    ----------
    block
        Raw band values in the model's band order; with ``maps.halo`` the block is the chunk
        plus its halo (:func:`s2dask.maps.halo.halo_array`), and only the chunk's layers are
        returned.
    predictor
        The model's predictor (:func:`get_predictor`).
    probabilities
        Also return the per-class probabilities (layers ``2..`` of the stack).
    origin
        ``(y0, x0)``: the block's top-left pixel in the scene (where mask rasters are read).
    mask
        How the mask codes are found (:class:`s2dask.scene.mask.ChunkMask`; default: no
        nodata value, no mask rasters).
    maps
        Uncertainty layers and smoothing (:class:`s2dask.maps.outputs.MapSpec`), or None.
    chunk
        ``(iy, ix)``: the chunk's position in ``maps``'s grid (used with a halo only).
    count_as
        Counts the block in :func:`forward_counts` under this key when it is predicted.

    Returns
    -------
    (numpy.ndarray, dict, numpy.ndarray)
        The ``(k, y, x)`` uint8 stack of :func:`s2dask.model.blocks.block_outputs` (classes,
        confidence [, probabilities]), ``{uncertainty layer name: (y, x) uint8}`` and the
        ``(y, x)`` uint8 mask codes.
    """
    chunk_mask = mask or ChunkMask()
    halo = maps is not None and maps.halo > 0
    if halo:  # the codes of the chunk and its halo: masked halo pixels are not smoothed into
        codes = maps.codes(chunk_mask, block, chunk=chunk)
    else:
        codes = chunk_mask.codes(block, *origin)
    valid = codes == VALID
    if count_as is not None and valid.any():
        _FORWARDS[count_as] += 1
    layers: dict[str, np.ndarray] = {}
    if maps is None:
        out = block_outputs(predictor, block, probabilities=probabilities, valid=valid)
    else:
        out, layers = maps.outputs(predictor, block, chunk=chunk, probabilities=probabilities, valid=valid)
        if halo:
            codes, valid = maps.inner(codes, chunk=chunk), maps.inner(valid, chunk=chunk)
    codes[valid & (out[0] == OUTPUT_NODATA)] = NODATA  # what the model's own nodata test refused
    return out, layers, codes


def predict_and_store(block: np.ndarray, *, ref: ModelRef, store: Location, markers: Location,
                      probabilities: bool, mask: ChunkMask | None = None, block_info=None,
                      maps: MapSpec | None = None, retry: RetryPolicy | None = None) -> np.ndarray:
    """One prediction task: predict a ``(band, y, x)`` block, write it, return its counts.

    The model comes from the worker's cache (put there by :class:`ModelPlugin`); only
    ``ref`` travels with the task. The chunk's region and then its marker are written, each
    retried on transient storage errors (:func:`s2dask.io.retry.call_with_retry`; both are
    idempotent); the marker records the retries of the chunk's read and writes, and the
    seconds its read, model (mask codes, forward pass, outputs) and writes took. A marker
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
    mask
        How the chunk's mask codes are found (nodata, SCL, user mask): only valid pixels are
        predicted, a chunk without one never reaches the forward pass; the codes are written
        to the ``mask`` layer when ``mask.layer``.
    block_info
        Dask's description of the block (its position in the scene).
    maps
        Uncertainty layers and smoothing (:class:`s2dask.maps.outputs.MapSpec`); with
        ``maps.smooth > 1`` the block is the chunk plus a halo (:func:`s2dask.maps.halo.halo_array`)
        and only the chunk is written.
    retry
        How to retry the writes (default :class:`~s2dask.io.retry.RetryPolicy`).

    Returns
    -------
    numpy.ndarray
        ``(1, 1, 1, N_TOTALS)`` int64: class counts, then mask code counts.

    Raises
    ------
    StorageError
        A write failed for good: at once when permanent, after the retries when transient
        (one line naming the chunk window and the store).
    """
    where = block_info[0]["array-location"]
    iy, ix = block_info[0]["chunk-location"][1:]
    # the read's retries and time (a read fused into this task, of this very window)
    read = take_read((where[1][0], where[2][0], where[1][1] - where[1][0], where[2][1] - where[2][0]))
    t_model = time.perf_counter()
    if maps is not None:
        where = maps.location(iy, ix)  # the chunk itself, without its halo
    out, layers, codes = predict_block(block, get_predictor(ref), probabilities=probabilities,
                                       origin=(where[1][0], where[2][0]), mask=mask, maps=maps,
                                       chunk=(iy, ix), count_as=ref.sha256)
    if mask is not None and mask.layer:
        layers[MASK] = codes
    counts = np.bincount(out[0].ravel(), minlength=N_COUNTS).astype("int64")
    mask_counts = count_codes(codes)
    seconds = {"read": read.seconds, "model": time.perf_counter() - t_model}
    _store_chunk(store, markers, out, layers, where=where, chunk=(iy, ix), counts=counts,
                 mask_counts=mask_counts, probabilities=probabilities,
                 policy=retry or RetryPolicy(), counter=read.counter, seconds=seconds)
    return np.concatenate([counts, mask_counts]).reshape(1, 1, 1, N_TOTALS)


def _store_chunk(store: Location, markers: Location, out: np.ndarray, layers: dict, *, where,
                 chunk: tuple[int, int], counts: np.ndarray, mask_counts: np.ndarray,
                 probabilities: bool, policy: RetryPolicy, counter, seconds: dict) -> None:
    """Write a chunk's region, its extra layers, then its marker, each storage request retried
    on its own (:func:`s2dask.io.retry.call_with_retry`; all idempotent). A failure for good
    raises one :class:`StorageError` line naming the chunk window and the store.

    ``seconds`` (the task's read and model time) goes into the marker with the writes' own."""
    (y0, y1), (x0, x1) = where[1], where[2]
    ys, xs = slice(y0, y1), slice(x0, x1)
    window = f"chunk y={y0}:{y1} x={x0}:{x1}"
    error = None
    t0 = time.perf_counter()
    try:
        each = functools.partial(call_with_retry, policy=policy, action="write",
                                 what=f"{window} of {store}", counter=counter)
        wstore = _retrying(store, policy)
        write_region(wstore, out, y=ys, x=xs, probabilities=probabilities, call=each)
        for name, layer in layers.items():
            each(write_layer, wstore, name, layer, y=ys, x=xs)
        seconds = {**seconds, "write": time.perf_counter() - t0}
        call_with_retry(write_marker, _retrying(markers, policy), chunk, where[1], where[2],
                        counts, mask_counts, retries=counter, seconds=seconds, policy=policy, action="write",
                        what=f"the marker of {window} in {markers}", counter=counter)
    except S2DaskError as exc:
        error = exc
    if error is not None:
        raise detached(error)  # outside the handler: no cause travels (see errors.detached)


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
def predict_layers(block: np.ndarray, *, ref: ModelRef, probabilities: bool, mask: ChunkMask | None = None,
                   maps: MapSpec | None = None, block_info=None) -> np.ndarray:
    """One task of :func:`s2dask.predict`: the layers of a ``(..., band, y, x)`` block, stacked.

    Each ``(band, y, x)`` step of the block (one per time step, say) goes through
    :func:`predict_block`, as a ``classify`` chunk does; only ``ref`` travels with the task.
    With ``maps.halo`` the block is chunk ``(iy, ix)`` of ``maps.chunks`` plus its halo
    (dask's ``chunk-location``) and the layers are the chunk's.

    Returns
    -------
    numpy.ndarray
        ``(..., k, y, x)`` uint8: classes, confidence, the probabilities when asked, then
        ``maps.layers`` in their order.
    """
    where = block_info[0]["array-location"] if block_info else [(0, 0)] * block.ndim
    origin = (where[-2][0], where[-1][0])
    chunk = tuple(block_info[0]["chunk-location"][-2:]) if block_info else (0, 0)
    ny, nx = block.shape[-2:]
    if maps is not None and maps.halo:  # the chunk and its halo in, the chunk out
        ys, xs = maps.chunk_halo(*chunk).inner
        ny, nx = ys.stop - ys.start, xs.stop - xs.start
    predictor = get_predictor(ref)
    names = maps.layers if maps is not None else ()
    k = 2 + (predictor.n_classes if probabilities else 0)
    out = np.empty((*block.shape[:-3], k + len(names), ny, nx), dtype="uint8")
    for step in np.ndindex(*block.shape[:-3]):
        stack, layers, _ = predict_block(block[step], predictor, probabilities=probabilities,
                                         origin=origin, mask=mask, maps=maps, chunk=chunk,
                                         count_as=ref.sha256)
        out[step][:k] = stack
        for i, name in enumerate(names):
            out[step][k + i] = layers[name]
    return out


@_portable
def write_rasters(store: Location, partial: Location, *, classes: Sequence[ClassInfo], crs: str,
                  transform, overview_resampling: str, quicklook: bool, title: str,
                  tags: dict, mask_legend: dict | None = None,
                  layers: dict[str, str] | None = None, threads: int = 1) -> dict:
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
    mask_legend
        :func:`s2dask.scene.mask.legend_entry`: masked pixels (the store's ``mask`` layer) are
        drawn in its colour with a legend entry; None: no mask layer.
    layers
        More COGs: ``{Zarr array name: file name}`` (uncertainty layers; overviews by
        ``average``, or ``nearest`` when that is the overview resampling).
    threads
        GDAL threads compressing each COG (the job gives more than one only when nothing
        else is running on the cluster).

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
                  overview_resampling=overview_resampling, tags=tags, threads=threads)
        valid, errors, warnings = validate_cog(cog_path)
        for name, filename in (layers or {}).items():
            path = os.path.join(tmp, filename)
            write_cog(store, path, classes=classes, crs=crs, transform=transform, tags=tags, layer=name,
                      overview_resampling="nearest" if overview_resampling == "nearest" else "average",
                      threads=threads)
            ok, errs, warns = validate_cog(path)
            valid, errors, warnings = valid and ok, [*errors, *errs], [*warnings, *warns]
        if quicklook:
            write_quicklook(cog_path, os.path.join(tmp, "quicklook.png"), classes=classes, title=title,
                            mask_store=store if mask_legend else None, mask_legend=mask_legend)
        for name in os.listdir(tmp):
            put_file(os.path.join(tmp, name), partial.join(name))
    return {"valid": bool(valid), "errors": list(errors), "warnings": list(warnings)}
