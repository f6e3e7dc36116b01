"""A whole-scene classification job: scene -> prediction graph -> outputs, with its record.

For each scene, :func:`classify` writes ``OUT/<scene-id>/``::

    classes.zarr/   Zarr v3 group: classes, confidence [, probabilities], x/y, spatial_ref
    classes.tif     Cloud-Optimized GeoTIFF of the class map (colour table, overviews)
    job.json        the record: inputs, model, parameters, cluster, statistics, timings
    quicklook.png   the class map with a legend

Everything is first written under ``OUT/.<scene-id>.partial/`` and renamed into place
when complete, so a final path never holds a half-written output. Prediction tasks
write their own chunk of the Zarr store and leave a small marker with the chunk's class
counts in ``.partial/chunks/``; ``resume=True`` computes only chunks without a marker.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import posixpath
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import (JobError, OutputExistsError, ParameterError, S2DaskError, SceneError,
                     StorageError)

__all__ = ["classify", "JobResult", "scene_output_dir"]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
#: spatial chunk edge when none is given (smaller for small scenes: see _auto_chunks)
DEFAULT_CHUNKS = 2048
_MIN_AUTO_CHUNKS = 256
N_COUNTS = 256  # bincount length: every uint8 class value, 255 = nodata


@dataclass
class _Prepared:
    source: str
    scene: Any  # xarray.DataArray (band, y, x)
    scene_id: str
    final: str
    partial: str
    resume_from: int  # chunks already done (resume)
    chunks: tuple[int, int] = (DEFAULT_CHUNKS, DEFAULT_CHUNKS)


@dataclass
class JobResult:
    """What one scene's job produced (also written as ``job.json``)."""

    scene: str
    status: str  # "complete" | "failed"
    out: str | None
    record: dict
    error: str | None = None


def scene_output_dir(out: str | os.PathLike, scene_id: str) -> str:
    """``OUT/<scene-id>``: where a scene's outputs end up (a path or URL)."""
    from .storage import join

    return join(out, scene_id)


class _Loc:
    """Directory operations on local disk (atomic renames) or an object store (fsspec)."""

    def __init__(self, url: str | os.PathLike):
        from .storage import fs_for, is_remote, storage_options_for

        self.url = os.fspath(url)
        self.remote = is_remote(self.url)
        self.options = storage_options_for(self.url) if self.remote else None
        self.fs = fs_for(self.url)[0] if self.remote else None

    def exists(self, path: str) -> bool:
        return self.fs.exists(path) if self.remote else os.path.exists(path)

    def makedirs(self, path: str) -> None:
        if self.remote:
            return  # object stores have no directories
        os.makedirs(path, exist_ok=True)

    def rm(self, path: str) -> None:
        if self.remote:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        elif os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)

    def read_text(self, path: str) -> str:
        if self.remote:
            return self.fs.cat_file(path).decode()
        return Path(path).read_text()

    def write_json(self, path: str, data: dict) -> None:
        text = json.dumps(data, indent=2, default=_json_default) + "\n"
        if self.remote:  # an object PUT is atomic
            try:
                self.fs.pipe_file(path, text.encode())
            except Exception as exc:
                raise StorageError(f"cannot write {path}: {exc}") from None
            return
        _write_json_atomic(Path(path), data)

    def markers(self, folder: str) -> dict[str, str]:
        """``{"iy_ix": path}`` of the chunk markers in ``folder``."""
        if self.remote:
            paths = self.fs.glob(folder.rstrip("/") + "/*.json") if self.fs.exists(folder) else []
            return {posixpath.basename(p)[:-5]: f"{self.url.split('://')[0]}://{p}" for p in paths}
        return {p.stem: str(p) for p in Path(folder).glob("*.json")}

    def rename(self, src: str, dst: str) -> None:
        if self.remote:  # copy then delete: object stores have no rename (not atomic)
            self.fs.copy(src.rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)
            self.fs.rm(src, recursive=True)
        else:
            os.rename(src, dst)


def _partial_dir(out: str, scene_id: str) -> str:
    from .storage import join

    return join(out, f".{scene_id}{PARTIAL_SUFFIX}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}; check free space and "
                           "permissions") from None


def _json_default(obj):
    """The bundle's JSON conversions (numpy, paths); anything else in a record as text."""
    from .model import _json_default as strict

    try:
        return strict(obj)
    except TypeError:
        return str(obj)


# ------------------------------------------------------------------------------ the task


def _predict_and_store(block: np.ndarray, *, ref, store: str, markers: str, probabilities: bool,
                       storage_options: dict | None = None, block_info=None) -> np.ndarray:
    """One prediction task: predict a ``(band, y, x)`` block, write it, return class counts.

    Runs on a worker. The model comes from the worker's cache (put there by
    :class:`s2dask.cluster.ModelPlugin`); only ``ref`` (hash, path) travels with the task.
    """
    from .cluster import get_predictor
    from .predict import block_outputs
    from .write import write_region

    loc = block_info[0]["array-location"]
    iy, ix = block_info[0]["chunk-location"][1:]
    ys, xs = slice(*loc[1]), slice(*loc[2])
    predictor = get_predictor(ref)
    out = block_outputs(predictor, block, probabilities=probabilities)
    write_region(store, out, y=ys, x=xs, probabilities=probabilities,
                 storage_options=storage_options)
    counts = np.bincount(out[0].ravel(), minlength=N_COUNTS).astype("int64")
    text = json.dumps({"chunk": [iy, ix], "y": list(loc[1]), "x": list(loc[2]),
                       "counts": {str(v): int(c) for v, c in enumerate(counts) if c}})
    if storage_options is not None:  # object store: one PUT is atomic
        import fsspec

        with fsspec.open(posixpath.join(markers, f"{iy}_{ix}.json"), "w", **storage_options) as f:
            f.write(text)
    else:
        marker = Path(markers) / f"{iy}_{ix}.json"
        tmp = marker.with_name(f".{marker.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, marker)
    return counts.reshape(1, 1, 1, N_COUNTS)


def _read_marker(text: str) -> np.ndarray:
    data = json.loads(text)
    counts = np.zeros(N_COUNTS, dtype="int64")
    for v, c in data["counts"].items():
        counts[int(v)] = c
    return counts


# ------------------------------------------------------------------------------ helpers


def _auto_chunks(ny: int, nx: int) -> tuple[int, int]:
    """2048, halved (down to 256) until the scene has at least 4 chunks.

    A scene smaller than one chunk would otherwise be a single task and leave all but one
    worker idle (benchmarks/scaling.py: 0.42 vs 0.75 Mpx/s on 2048^2 with 2 workers). It
    depends on the scene's shape only, so a resumed job finds the same chunks.
    """
    c = DEFAULT_CHUNKS
    while c > _MIN_AUTO_CHUNKS and -(-ny // c) * -(-nx // c) < 4:
        c //= 2
    return c, c


def _check_options(chunks, batch_size) -> tuple[int, int] | None:
    if chunks is None:
        if batch_size is not None and int(batch_size) <= 0:
            raise ParameterError(f"batch size must be a positive integer, got {batch_size!r}")
        return None
    if isinstance(chunks, (tuple, list)):
        if len(chunks) != 2:
            raise ParameterError(f"chunks must be one size or (y, x), got {chunks!r}")
        cy, cx = (int(c) for c in chunks)
    else:
        try:
            cy = cx = int(chunks)
        except (TypeError, ValueError):
            raise ParameterError(f"chunk size must be a positive integer, got {chunks!r}") from None
    if cy <= 0 or cx <= 0:
        raise ParameterError(f"chunk size must be a positive integer, got {chunks!r}: "
                             "use for example --chunks 2048")
    if batch_size is not None and int(batch_size) <= 0:
        raise ParameterError(f"batch size must be a positive integer, got {batch_size!r}")
    return cy, cx


def _scene_identity(scene) -> dict:
    keep = ("scene_id", "tile_id", "sensing_time", "processing_baseline", "product_level",
            "harmonised", "offset_applied", "source")
    ident = {k: scene.attrs[k] for k in keep if k in scene.attrs}
    ident.update({
        "shape": [int(scene.sizes["y"]), int(scene.sizes["x"])],
        "bands": [str(b) for b in scene["band"].values],
        "crs": scene.rio.crs.to_string() if scene.rio.crs else None,
        "transform": list(scene.rio.transform())[:6],
        "dtype": str(scene.dtype),
    })
    return ident


def _check_contract(scene, bundle, source: str) -> None:
    """Refuse a scene whose bands or scale the model cannot take (before any compute)."""
    have = [str(b) for b in scene["band"].values]
    if have != bundle.bands:
        missing = [b for b in bundle.bands if b not in have]
        if missing:
            raise SceneError(f"scene {source} lacks band(s) {', '.join(missing)} that the model "
                             f"needs (it has {', '.join(have)}): use a scene with all of "
                             f"{', '.join(bundle.bands)}")
        raise SceneError(f"scene {source} bands {have} are not in the model's order {bundle.bands}")
    if scene.rio.crs is None:
        raise SceneError(f"scene {source} has no CRS: the outputs could not be georeferenced; "
                         "write one with rio.write_crs() or gdal_edit.py -a_srs")
    scale = bundle.contract.get("input_scale", "dn")
    if scale == "dn" and np.issubdtype(scene.dtype, np.floating) and scene.attrs.get("scale") == "reflectance":
        raise SceneError(f"scene {source} holds reflectance (0..1) but the model takes digital "
                         "numbers (reflectance x 10000): rescale the scene")


def _prepare(paths: Sequence[str], bundle, *, out: _Loc, chunks, overwrite: bool, resume: bool,
             errors: dict[str, S2DaskError]) -> list[_Prepared]:
    from .scene import open_scene

    prepared: list[_Prepared] = []
    seen: dict[str, str] = {}
    for src in paths:
        try:
            scene = open_scene(src, bands=bundle.bands, chunks=chunks or DEFAULT_CHUNKS)
            scene_chunks = chunks or _auto_chunks(scene.sizes["y"], scene.sizes["x"])
            if chunks is None and scene_chunks != (DEFAULT_CHUNKS, DEFAULT_CHUNKS):
                scene = open_scene(src, bands=bundle.bands, chunks=scene_chunks)  # no pixel reads
            _check_contract(scene, bundle, src)
            sid = str(scene.attrs.get("scene_id") or Path(str(src).rstrip("/")).stem)
            if sid in seen:
                raise SceneError(f"scenes {seen[sid]} and {src} have the same id {sid!r}: their "
                                 "outputs would collide; classify them into different --out folders")
            seen[sid] = src
            final = scene_output_dir(out.url, sid)
            partial = _partial_dir(out.url, sid)
            done = 0
            if out.exists(final) and not overwrite:
                raise OutputExistsError(f"output {final} already exists: pass --overwrite to "
                                        "replace it, or choose another --out")
            if out.exists(partial):
                if resume:
                    done = _check_resumable(out, partial, scene, bundle, scene_chunks)
                elif not overwrite:
                    raise OutputExistsError(
                        f"an unfinished output of scene {src} is in {partial}: pass --resume to "
                        "finish it, or --overwrite to start again")
            prepared.append(_Prepared(src, scene, sid, final, partial, done, scene_chunks))
        except S2DaskError as exc:
            errors[src] = exc
    return prepared


def _check_resumable(out: _Loc, partial: str, scene, bundle, chunks) -> int:
    from .storage import join

    try:
        params = json.loads(out.read_text(join(partial, "params.json")))
    except (OSError, ValueError):
        raise OutputExistsError(f"the unfinished output {partial} has no readable params.json, so "
                                "it cannot be resumed: pass --overwrite to start again") from None
    want = {"model_sha256": bundle.sha256, "chunks": list(chunks),
            "scene": _scene_identity(scene)}
    for key, value in want.items():
        if json.loads(json.dumps(params.get(key), default=_json_default)) != \
                json.loads(json.dumps(value, default=_json_default)):
            raise OutputExistsError(f"cannot resume {partial}: its {key} differs from this run's; "
                                    "pass --overwrite to start again with the new settings")
    return len(out.markers(join(partial, "chunks")))


class _Progress:
    """A one-line terminal progress bar of chunks done."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.done = 0
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} chunks  {rate:.2f} chunks/s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------------------ the job


def classify(
    scenes: str | os.PathLike | Iterable[str | os.PathLike],
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunks: int | tuple[int, int] | None = None,
    probabilities: bool = False,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    security=None,
    client=None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    gpu: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    batch_size: int | None = None,
    tf_threads: int | None = None,
    cog: bool = True,
    quicklook: bool = True,
    overview_resampling: str = "mode",
    progress: bool | None = None,
    connect_timeout: float = 20.0,
) -> list[JobResult]:
    """Classify whole scenes with a model bundle on a Dask cluster.

    Parameters
    ----------
    scenes
        One scene or several (anything :func:`s2dask.open_scene` opens).
    model
        A model bundle directory (``s2dask train``).
    out
        Output directory; each scene goes to ``out/<scene-id>/``.
    chunks
        Spatial chunk edge in pixels (or ``(y, x)``); memory per task scales with it.
        ``None``: 2048, or smaller for a scene with fewer than 4 chunks of 2048.
    probabilities
        Also write per-class probabilities (uint8 percent) to the Zarr store.
    scheduler, scheduler_file, security
        Join an existing cluster (``tcp://`` or ``tls://``); else an embedded
        LocalCluster sized by ``workers``/``threads_per_worker`` is started and closed.
    client
        An existing ``distributed.Client`` to use as is.
    overwrite
        Replace existing outputs (the old one is removed only once the new one is complete).
    resume
        Finish an interrupted job: only chunks without a marker are computed.
    batch_size
        Pixels per forward call (default :data:`s2dask.predict.DEFAULT_BATCH_SIZE`).
    tf_threads
        Backend threads per task (default: the cores divided by the Dask threads per host).

    Returns
    -------
    list of JobResult
        One per scene, in order. Scenes that fail do so alone; their reason is in
        ``error`` (and in ``out/batch.json`` when several scenes were given).

    Raises
    ------
    S2DaskError
        When a single scene is given and it fails, or the model, options or cluster
        are unusable. Nothing is written at final paths in that case.
    """
    from .cluster import ModelPlugin, ModelRef, cluster_summary, connect, host_thread_counts
    from .model import load_model
    from .predict import DEFAULT_BATCH_SIZE

    t_start = time.perf_counter()
    single = isinstance(scenes, (str, os.PathLike))
    paths = [str(scenes)] if single else [str(s) for s in scenes]
    if not paths:
        raise ParameterError("no scene given: name at least one scene to classify")
    chunk_yx = _check_options(chunks, batch_size)
    if overwrite and resume:
        raise ParameterError("--overwrite and --resume exclude each other: choose one")
    bs = int(batch_size or DEFAULT_BATCH_SIZE)
    from .storage import check_output_location

    check_output_location(out)
    out = _Loc(out)

    # the archive is checked here (safe mode, sizes) without importing a backend; each
    # worker deserialises it once, in safe mode, when the model plugin reaches it
    bundle = load_model(model, check_keras=False)
    errors: dict[str, S2DaskError] = {}
    prepared = _prepare(paths, bundle, out=out, chunks=chunk_yx, overwrite=overwrite,
                        resume=resume, errors=errors)
    if single and errors:
        raise next(iter(errors.values()))
    t_open = time.perf_counter() - t_start

    results: dict[str, JobResult] = {
        src: JobResult(src, "failed", None, {"scene": src, "status": "failed", "error": str(exc)},
                       str(exc))
        for src, exc in errors.items()
    }
    if prepared:
        own_cluster = None
        if client is None:
            client, own_cluster = connect(scheduler, scheduler_file=scheduler_file,
                                          security=security, timeout=connect_timeout,
                                          workers=workers, threads_per_worker=threads_per_worker,
                                          gpu=gpu)
        try:
            show = sys.stderr.isatty() if progress is None else progress
            if getattr(client, "dashboard_link", None) and show is not False:
                print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
            plugin = ModelPlugin(bundle.handle(), batch_size=bs, tf_threads=tf_threads,
                                 host_threads=host_thread_counts(client))
            client.register_plugin(plugin)  # a model the workers cannot build fails here
            ref = ModelRef(bundle.sha256, str(Path(bundle.path).resolve()), bs)
            summary = cluster_summary(client)
            try:  # nothing is created before the model has reached the workers
                out.makedirs(out.url)
            except OSError as exc:
                raise StorageError(f"cannot create output directory {out.url}: {exc.strerror}; "
                                   "check permissions or choose another --out") from None
            for job in prepared:
                try:
                    results[job.source] = _run_one(
                        job, out=out, bundle=bundle, client=client, ref=ref,
                        probabilities=probabilities, overwrite=overwrite, cog=cog,
                        quicklook=quicklook, overview_resampling=overview_resampling,
                        cluster=summary, t_open=t_open, show=show, batch_size=bs)
                except S2DaskError as exc:
                    if single:
                        raise
                    results[job.source] = JobResult(job.source, "failed", None,
                                                    {"scene": job.source, "status": "failed",
                                                     "error": str(exc)}, str(exc))
        finally:
            if own_cluster is not None:
                client.close()
                own_cluster.close()
    ordered = [results[p] for p in paths]
    if not single:
        from .storage import join

        out.makedirs(out.url)
        out.write_json(join(out.url, "batch.json"), {
            "created": _now(), "model": str(model), "scenes": [
                {"scene": r.scene, "status": r.status, "out": r.out, "error": r.error}
                for r in ordered]})
    return ordered


def _run_one(job: _Prepared, *, out: _Loc, bundle, client, ref, probabilities, overwrite, cog,
             quicklook, overview_resampling, cluster, t_open, show, batch_size) -> JobResult:
    import dask.array as da
    from distributed import as_completed

    from .model import library_versions
    from .storage import join
    from .write import layout_zarr

    scene = job.scene
    cy, cx = job.chunks
    t0 = time.perf_counter()
    data = scene.data
    target = da.core.normalize_chunks((data.shape[0], cy, cx), data.shape)
    if data.chunks != target:  # every task must own whole Zarr chunks
        data = data.rechunk(target)
    partial, final = job.partial, job.final
    store = join(partial, "classes.zarr")
    markers = join(partial, "chunks")
    ident = _scene_identity(scene)
    params = {"model_sha256": bundle.sha256, "chunks": [cy, cx], "scene": ident,
              "probabilities": probabilities, "batch_size": batch_size}

    try:
        if job.resume_from == 0:
            out.rm(partial)
            out.makedirs(markers)
            attrs = {"title": f"s2dask classes of {job.scene_id}", "source": job.source,
                     "model_sha256": bundle.sha256,
                     "classes": json.dumps(bundle.classes), "nodata": 255,
                     "class_values": [c["value"] for c in bundle.classes],
                     "class_names": [c["name"] for c in bundle.classes],
                     "class_colours": [c["colour"] for c in bundle.classes]}
            layout_zarr(store, scene=scene, chunks=(cy, cx), classes=bundle.classes,
                        probabilities=probabilities, attrs=attrs, storage_options=out.options)
            out.write_json(join(partial, "params.json"), params)
    except OSError as exc:
        raise StorageError(f"cannot write output {partial}: {exc.strerror or exc}; check free "
                           "space and permissions") from None

    # the prediction graph: one task per chunk, each writes its region and returns counts
    nyb, nxb = len(data.chunks[1]), len(data.chunks[2])
    counts_arr = da.map_blocks(
        _predict_and_store, data, ref=ref, store=store, markers=markers,
        probabilities=probabilities, storage_options=out.options, dtype="int64",
        chunks=((1,), (1,) * nyb, (1,) * nxb, (N_COUNTS,)), new_axis=3,
        meta=np.empty((0, 0, 0, 0), dtype="int64"),
        name=f"s2dask-predict-{job.scene_id}-{uuid.uuid4().hex[:8]}",
    )
    blocks = counts_arr.to_delayed(optimize_graph=True).reshape(nyb, nxb)
    found = out.markers(markers)
    done = set(found)
    totals = np.zeros(N_COUNTS, dtype="int64")
    for path in found.values():
        totals += _read_marker(out.read_text(path))
    todo = [blocks[iy, ix] for iy in range(nyb) for ix in range(nxb) if f"{iy}_{ix}" not in done]
    bar = _Progress(nyb * nxb, job.scene_id, bool(show))
    bar.update(len(done))
    t_pred0 = time.perf_counter()
    if todo:
        futures = client.compute(todo)
        try:
            for fut in as_completed(futures, loop=client.loop):
                if fut.status == "error":
                    exc = fut.exception()
                    raise _task_error(exc, job)
                totals += fut.result().reshape(N_COUNTS)
                bar.update()
        except BaseException:
            client.cancel(futures)
            raise
    t_predict = time.perf_counter() - t_pred0

    # COG and quicklook are written by a worker (next to the data), not the client
    t_w0 = time.perf_counter()
    cog_report: dict[str, Any] = {}
    transform = scene.rio.transform()
    crs = scene.rio.crs
    if cog:
        fut = client.submit(_write_rasters, store, partial, storage_options=out.options,
                            classes=bundle.classes, crs=crs.to_wkt(), transform=transform,
                            overview_resampling=overview_resampling, quicklook=quicklook,
                            title=f"{job.scene_id} - s2dask classes",
                            tags={"S2DASK_SCENE": job.scene_id, "S2DASK_MODEL_SHA256": bundle.sha256},
                            pure=False)
        try:
            cog_report = fut.result()
        except S2DaskError:
            raise
        except Exception as exc:
            raise _task_error(exc, job) from None
        if not cog_report["valid"]:
            raise JobError(f"the COG written for {job.source} failed validation: "
                           f"{'; '.join(cog_report['errors'])}")
    t_write = time.perf_counter() - t_w0

    ny, nx = scene.sizes["y"], scene.sizes["x"]
    px_area_m2 = abs(transform.a * transform.e - transform.b * transform.d)
    metres = bool(crs and crs.is_projected and crs.linear_units.lower() in ("metre", "meter", "m"))
    per_class = []
    for c in bundle.classes:
        n = int(totals[c["value"]])
        per_class.append({"value": c["value"], "name": c["name"], "colour": c["colour"],
                          "pixels": n, "fraction": n / (ny * nx),
                          "hectares": (n * px_area_m2 / 1e4) if metres else None})
    total_t = time.perf_counter() - t0 + t_open
    record = {
        "status": "complete",
        "created": _now(),
        "scene": ident,
        "output": {"dir": str(final), "zarr": "classes.zarr", "cog": "classes.tif" if cog else None,
                   "quicklook": "quicklook.png" if (cog and quicklook) else None,
                   "cog_validation": cog_report},
        "model": {"path": str(bundle.path), "sha256": bundle.sha256, "contract": bundle.contract},
        "parameters": {"chunks": [cy, cx], "probabilities": probabilities,
                       "batch_size": batch_size, "overview_resampling": overview_resampling,
                       "resumed_chunks": len(done)},
        "cluster": cluster,
        "statistics": {"pixels": ny * nx, "nodata_pixels": int(totals[255]),
                       "classified_pixels": int(totals[:255].sum()),
                       "pixel_area_m2": px_area_m2, "classes": per_class},
        "timings_s": {"open": t_open, "predict": t_predict, "write": t_write, "total": total_t},
        "throughput_mpx_s": {"end_to_end": ny * nx / 1e6 / max(total_t, 1e-9),
                             "predict": (ny * nx - len(done) * cy * cx) / 1e6 / max(t_predict, 1e-9)
                             if todo else None},
        "versions": library_versions(),
        "host": {"client": socket.gethostname(), "python": platform.python_version()},
    }
    out.write_json(join(partial, "job.json"), record)
    _commit(out, partial, final, overwrite=overwrite)
    record["output"]["dir"] = str(final)
    return JobResult(job.source, "complete", str(final), record)


def _task_error(exc: BaseException, job: _Prepared) -> S2DaskError:
    if isinstance(exc, S2DaskError):
        return exc
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return StorageError(f"writing the output of {job.source} failed: "
                            f"{exc.strerror or exc}{where}; "
                            f"free space or fix permissions, then rerun with --resume "
                            f"(finished chunks are kept in {job.partial})")
    text = " ".join(str(exc).split())[:300]
    return JobError(f"classifying {job.source} failed in a worker: {type(exc).__name__}: {text}; "
                    f"finished chunks are kept in {job.partial}, rerun with --resume")


def _write_rasters(store: str, partial: str, *, storage_options: dict | None, classes, crs,
                   transform, overview_resampling: str, quicklook: bool, title: str,
                   tags: dict) -> dict:
    """Worker side: stream the COG from the Zarr, validate it, draw the quicklook.

    Written in a local temporary folder and then moved (local output) or uploaded
    (object store) into the partial output. Returns the COG validation report.
    """
    import tempfile

    from .write import validate_cog, write_cog, write_quicklook

    remote = storage_options is not None
    with tempfile.TemporaryDirectory(prefix="s2dask-cog-", dir=None if remote else partial) as tmp:
        cog_path = os.path.join(tmp, "classes.tif")
        write_cog(store, cog_path, classes=classes, crs=crs, transform=transform,
                  storage_options=storage_options, overview_resampling=overview_resampling,
                  tags=tags)
        valid, errors, warnings = validate_cog(cog_path)
        if quicklook:
            write_quicklook(cog_path, os.path.join(tmp, "quicklook.png"), classes=classes, title=title)
        if remote:
            import fsspec

            fs = fsspec.core.url_to_fs(partial, **storage_options)[0]
            for name in os.listdir(tmp):
                fs.put_file(os.path.join(tmp, name), posixpath.join(partial, name))
        else:
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(partial, name))
    return {"valid": bool(valid), "errors": list(errors), "warnings": list(warnings)}


def _commit(out: _Loc, partial: str, final: str, *, overwrite: bool) -> None:
    """Move a complete partial output into place; replace an old one only with overwrite."""
    old = None
    try:
        if out.exists(final):
            if not overwrite:
                raise OutputExistsError(f"output {final} appeared while the job ran: pass "
                                        "--overwrite to replace it")
            old = f"{final.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
            old = posixpath.join(posixpath.dirname(old), "." + posixpath.basename(old)) \
                if out.remote else os.path.join(os.path.dirname(old), "." + os.path.basename(old))
            out.rename(final, old)
        out.rename(partial, final)
    except OSError as exc:
        if old is not None and not out.exists(final):
            out.rename(old, final)
        raise StorageError(f"cannot move {partial} to {final}: {exc.strerror or exc}") from None
    if old is not None:
        try:
            out.rm(old)
        except OSError:
            pass
