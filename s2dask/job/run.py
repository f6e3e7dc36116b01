"""A whole-scene classification job: scene -> prediction graph -> outputs, with its record.

For each scene, :func:`classify` writes ``OUT/<scene-id>/``::

    classes.zarr/   Zarr v3 group: classes, confidence [, probabilities], x/y, spatial_ref
    classes.tif     Cloud-Optimized GeoTIFF of the class map (colour table, overviews)
    job.json        the record: inputs, model, parameters, cluster, statistics, timings
    quicklook.png   the class map with a legend

Everything is first written under ``OUT/.<scene-id>.partial/`` and renamed into place
when complete, so a final path never holds a half-written output. Prediction tasks
write their own chunk of the Zarr store and leave a small marker with the chunk's class
counts in ``.partial/chunks/`` (:mod:`s2dask.job.ledger`); ``resume=True`` computes only
chunks without a marker. The markers and ``params.json`` are removed once the output is
committed.

This module runs on the client, in stages: prepare (open and check every scene), start
(deliver the model to the workers), then per scene lay out, build the graph, run, finish
(COG and quick-look, on a worker), record and commit. The tasks themselves are in
:mod:`s2dask.job.worker`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import logging
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import (
    AreaMissError,
    BandError,
    JobError,
    OutputExistsError,
    ParameterError,
    S2DaskError,
    SceneError,
    StorageError,
)
from ..io.records import json_text_default
from ..io.retry import RetryPolicy, redact
from ..io.storage import Location, atomic_write_json, check_output_location, commit_dir, join
from ..maps.outputs import cog_layers, map_record, zarr_layers
from ..maps.writers import layout_zarr
from ..model.bundle import ModelBundle, library_versions, load_model, metrics_summary
from ..model.contract import OUTPUT_NODATA
from ..scene import open_scene
from ..scene.checks import check_fits, missing_bands_message
from ..scene.mask_source import SceneMask, record_mask, scene_mask, with_aoi
from ..scene.stac_catalog import expand_inputs
from .area import aoi_params, check_hits, job_aoi, place_aoi, publish, record_aoi, skipped, write_item
from .cluster import close_cluster, cluster_summary, host_thread_counts
from .graph import prediction_graph
from .ledger import (
    N_COUNTS,
    N_TOTALS,
    PARAMS_FILE,
    check_resumable,
    chunk_id,
    chunk_totals,
    clear_ledger,
    read_ledger,
    recorded_chunks,
)
from .memory import DEFAULT_CHUNKS, auto_chunks, fit_scene_chunks  # noqa: F401 (auto_chunks: API)
from .options import JobOptions
from .pipeline import run_pipelined
from .progress import Progress
from .startup import ClusterStart, Timeline, deliver_for_job, delivery_options, startup_timings
from .taskwatch import TaskWatch
from .watch import DEFAULT_RESUME, completed
from .worker import ModelRef, write_rasters

__all__ = ["classify", "JobOptions", "JobResult", "scene_output_dir"]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@dataclass
class JobResult:
    """What one scene's job produced (also written as ``job.json``)."""

    scene: str
    status: str  # "complete" | "failed" | "skipped" (the area of interest misses it)
    out: str | None
    record: dict
    error: str | None = None


def scene_output_dir(out: str | os.PathLike, scene_id: str) -> str:
    """``OUT/<scene-id>``: where a scene's outputs end up (a path or URL)."""
    return join(out, scene_id)


@dataclass
class _SceneJob:
    """One scene, opened and checked, with where its outputs go."""

    source: str
    scene: Any  # xarray.DataArray (band, y, x)
    scene_id: str
    final: Location
    partial: Location
    resume_from: int  # chunks already done (resume)
    chunks: tuple[int, int] = (DEFAULT_CHUNKS, DEFAULT_CHUNKS)
    mask: SceneMask | None = None
    chunks_from: str = "auto"  # "given" (--chunks), "recorded" (a resumed output's), "auto"
    where: Any = None  # what open_scene opened (a path, URL or parsed STAC item)
    t_open: float = 0.0  # seconds to open and check it
    aoi: Any = None  # the area of interest on its grid (s2dask.scene.aoi.SceneAoi), or None


@dataclass(frozen=True)
class _Run:
    """What every scene of one call shares: outputs, model, cluster, options."""

    out: Location
    bundle: ModelBundle
    client: Any
    ref: ModelRef
    options: JobOptions
    cluster: dict
    show: bool | None
    batch_size: int | None
    engine: dict = dataclasses.field(default_factory=dict)  # {worker: engine record}
    timeline: Timeline | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _failed(source: str, exc: S2DaskError) -> JobResult:
    return JobResult(source, "failed", None, {"scene": source, "status": "failed", "error": str(exc)},
                     str(exc))


# ------------------------------------------------------------------------------ the job


def classify(
    scenes: str | os.PathLike | Iterable[str | os.PathLike],
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    client=None,
    options: JobOptions | None = None,
    **keywords: Any,
) -> list[JobResult]:
    """Classify whole scenes with a model bundle on a Dask cluster.

    Parameters
    ----------
    scenes
        One scene or several (anything :func:`s2dask.open_scene` opens); a STAC item
        collection or catalogue is one scene per item (each item fails alone).
    model
        A model bundle directory (``s2dask train``).
    out
        Output directory (or ``s3://`` URL); each scene goes to ``out/<scene-id>/``.
    client
        An existing ``distributed.Client`` to use as is. Without one, the cluster named by
        ``scheduler``/``scheduler_file`` is joined, or an embedded LocalCluster is started
        (through :func:`s2dask.job.cluster.connect`) while the scenes are checked, and closed at
        the end; so is a :class:`s2dask.job.startup.ClusterStart` begun earlier (the CLI's).
    options
        A :class:`JobOptions`.
    **keywords
        Fields of :class:`JobOptions` (``chunks``, ``probabilities``, ``overwrite``,
        ``resume``, ``batch_size``, ``tf_threads``, ``engine``, ``precision``, ``cog``, ``quicklook``,
        ``overview_resampling``, ``progress``, ``scheduler``, ``scheduler_file``,
        ``security``, ``workers``, ``threads_per_worker``, ``gpu``, ``connect_timeout``,
        ``mask``, ``mask_classes``, ``aoi``, ``boa_add_offset``, ``uncertainty``, ``smooth``, ``retries``, ``scheduler_timeout``, ``task_timeout``, ``memory_limit``, ``bands``:
        the scene's bands in stored order, for files without band names), replacing those of
        ``options``.

    Returns
    -------
    list of JobResult
        One per scene, in order. Scenes that fail do so alone; their reason is in
        ``error`` (and in ``out/batch.json`` when several scenes were given).

    Raises
    ------
    ParameterError
        If no scene is given or an option is invalid.
    StorageError
        If ``out`` cannot be written (checked before anything runs).
    ModelError
        If the bundle is missing, corrupt or unloadable.
    ClusterError
        If the cluster cannot be reached.
    S2DaskError
        When a single scene is given and it fails (``SceneError``, ``BandError``,
        ``OutputExistsError``, ``StorageError``, ``JobError``). Nothing is written at final
        paths in that case.
    TypeError
        If a keyword is not a field of :class:`JobOptions`.
    """
    opts = JobOptions.build(options, **keywords)
    t_start = time.perf_counter()
    single = isinstance(scenes, (str, os.PathLike))
    paths = [str(scenes)] if single else [str(s) for s in scenes]
    if not paths:
        raise ParameterError("no scene given: name at least one scene to classify")
    check_output_location(out)
    out = Location(out)
    job_aoi(opts)  # a file that is not a polygon layer with a CRS fails before anything starts

    # the archive is checked here (safe mode, sizes) without importing a backend; each
    # worker deserialises it once, in safe mode, when the model plugin reaches it
    bundle = load_model(model, check_keras=False)
    if client is None:  # the cluster starts, and gets the model, while the scenes are checked
        with ClusterStart.for_job(model, opts) as starter:
            return classify(scenes, model, out.url, client=starter, options=opts)
    errors: dict[str, S2DaskError] = {}
    sources = expand_inputs(paths, boa_add_offset=opts.boa_add_offset)
    single, paths = single and len(sources) == 1, [src for src, _ in sources]
    jobs = _prepare(sources, bundle, out=out, options=opts, errors=errors, t_start=t_start)
    first = next(jobs, None)  # the first good scene now; a batch's others while it computes
    if single and errors:
        raise next(iter(errors.values()))

    results: dict[str, JobResult] = {}
    if first is not None:
        results.update(_run_all(itertools.chain([first], jobs), bundle, out=out, options=opts,
                                client=client, single=single))
    results.update({src: JobResult(*skipped(src, exc)) if isinstance(exc, AreaMissError) else _failed(src, exc)
                    for src, exc in errors.items()})
    ordered = [results[p] for p in paths]
    check_hits(ordered, opts)  # an area of interest that misses every scene is an error
    if not single:
        out.makedirs()
        atomic_write_json(out.join("batch.json"), {
            "created": _now(), "model": str(model), "scenes": [
                {"scene": r.scene, "status": r.status, "out": r.out, "error": r.error}
                for r in ordered]}, default=json_text_default)
    return ordered


def _run_all(prepared: Iterator[_SceneJob], bundle: ModelBundle, *, out: Location, options: JobOptions,
             client, single: bool) -> dict[str, JobResult]:
    """Connect (unless given a client), deliver the model, run every scene; close what we opened."""
    results: dict[str, JobResult] = {}
    own_cluster, starter = None, client if isinstance(client, ClusterStart) else None
    own_client = starter is not None
    if starter is not None:  # classify() gives one when it was given no client
        client, own_cluster = starter.result()
    try:  # chunks that fit the workers' memory; a --chunks too large is refused here
        first = next(prepared)
        fit_scene_chunks([first], client, bundle, options, reopen=_open_checked)
        run = _start(client, bundle, out=out, options=options, starter=starter)

        def failed(job: _SceneJob, exc: S2DaskError) -> None:
            if single or getattr(exc, "scheduler_lost", False):  # no scheduler: stop the batch
                raise exc
            results[job.source] = _failed(job.source, exc)

        def fitted() -> Iterator[_SceneJob]:  # the others, each opened when the pipeline asks
            yield first
            for job in prepared:
                try:
                    fit_scene_chunks([job], client, bundle, options, reopen=_open_checked)
                except S2DaskError as exc:
                    failed(job, exc)
                    continue
                yield job

        def finish(flight: _Flight) -> None:
            results[flight.job.source] = _conclude(flight, run)

        # the next scene's chunks run while the previous scene is finished (s2dask.job.pipeline)
        run_pipelined(fitted(), submit=lambda job, prev: _submit(job, run, prev), finish=finish,
                      cancel=lambda flight: client.status == "running" and client.cancel(flight.futures),
                      failed=failed)
    finally:  # a client of a dead scheduler closes in bounded time; never fails the job
        close_cluster(client if own_client else None, own_cluster)
    return results


def _start(client, bundle: ModelBundle, *, out: Location, options: JobOptions,
           starter: ClusterStart | None = None) -> _Run:
    """Deliver the model to every worker, describe the cluster, create the output folder."""
    show = sys.stderr.isatty() if options.progress is None else options.progress
    if getattr(client, "dashboard_link", None) and show is not False:
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
    delivery = deliver_for_job(client, bundle, options, starter)
    ref, bs = delivery.ref, options.batch_size or delivery.batch_size
    summary = cluster_summary(client)
    try:  # nothing is created before the model has reached the workers
        out.makedirs()
    except OSError as exc:
        raise StorageError(f"cannot create output directory {out.url}: {exc.strerror}; "
                           "check permissions or choose another --out") from None
    return _Run(out, bundle, client, ref, options, summary, show, bs, delivery.engines,
                starter.timeline if starter is not None else None)


# ------------------------------------------------------------------------------ prepare


def _scene_identity(scene) -> dict:
    keep = ("scene_id", "tile_id", "sensing_time", "processing_baseline", "product_level",
            "harmonised", "offset_applied", "offset_notes", "offset_rule", "stac_item",
            "stac_collection", "scl_path", "source")
    ident = {k: scene.attrs[k] for k in keep if k in scene.attrs}
    ident.update({
        "shape": [int(scene.sizes["y"]), int(scene.sizes["x"])],
        "bands": [str(b) for b in scene["band"].values],
        "crs": scene.rio.crs.to_string() if scene.rio.crs else None,
        "transform": list(scene.rio.transform())[:6],
        "dtype": str(scene.dtype),
    })
    return ident


def _open_checked(src: str, bundle: ModelBundle, options: JobOptions,
                  chunks: tuple[int, int] | None, *, where: Any):
    """The scene with the model's bands, checked against its contract (headers and a sample)."""
    kw = {"names": options.bands, "boa_add_offset": options.boa_add_offset,
          "retry": RetryPolicy.of(options.retries)}
    try:
        scene = open_scene(where, bands=bundle.bands, chunks=chunks or DEFAULT_CHUNKS, **kw)
    except BandError:  # say which model needs what the scene lacks
        if where is not src:  # a parsed STAC item already names its missing assets
            raise
        have = [str(b) for b in open_scene(where, **kw)["band"].values]
        raise BandError(missing_bands_message(src, str(bundle.path), bundle.bands, have)) from None
    scene_chunks = chunks or auto_chunks(scene.sizes["y"], scene.sizes["x"])
    if chunks is None and scene_chunks != (DEFAULT_CHUNKS, DEFAULT_CHUNKS):  # headers only
        scene = open_scene(where, bands=bundle.bands, chunks=scene_chunks, **kw)
    check_fits(scene, bands=bundle.bands, input_scale=bundle.contract.input_scale,
               model=str(bundle.path), source=src)
    return scene, scene_chunks


def _prepare(sources: list[tuple[str, Any]], bundle: ModelBundle, *, out: Location, options: JobOptions,
             errors: dict[str, S2DaskError], t_start: float) -> Iterator[_SceneJob]:
    """Open and check each scene when it is asked for; a scene that fails goes to ``errors``,
    the others on.

    Lazy: a batch's next scene is opened and checked (its sample windows read) while the
    previous one computes, not while the workers wait. ``sources``:
    :func:`s2dask.scene.stac_catalog.expand_inputs` (a parsed STAC item, its error, or None); the first
    scene's open time counts from ``t_start``.
    """
    seen: dict[str, str] = {}
    t0 = t_start
    for src, pre in sources:
        try:
            if isinstance(pre, S2DaskError):
                raise pre
            job = _prepare_one(src, bundle, out=out, options=options, parsed=pre)
            if job.scene_id in seen:
                raise SceneError(f"scenes {seen[job.scene_id]} and {src} have the same id "
                                 f"{job.scene_id!r}: their outputs would collide; classify them "
                                 "into different --out folders")
            seen[job.scene_id] = src
        except S2DaskError as exc:
            errors[src] = exc
        else:
            job.t_open = time.perf_counter() - t0
            yield job
        t0 = time.perf_counter()


def _prepare_one(src: str, bundle: ModelBundle, *, out: Location, options: JobOptions,
                 parsed: Any = None) -> _SceneJob:
    where, chunks_from = parsed or src, "given" if options.chunks else "auto"
    scene, scene_chunks = _open_checked(src, bundle, options, options.chunks, where=where)
    sid = str(scene.attrs.get("scene_id") or Path(str(src).rstrip("/")).stem)
    final, partial = out.join(sid), out.join(f".{sid}{PARTIAL_SUFFIX}")
    if options.chunks is None and options.resume and partial.exists():  # the chunks it was made with
        chunks_from, recorded = "recorded", recorded_chunks(partial)
        if recorded and recorded != scene_chunks:
            scene, scene_chunks = _open_checked(src, bundle, options, recorded, where=where)
    mask = scene_mask(scene, options.mask_spec(), scene_id=sid)
    aoi = place_aoi(options, scene, scene_chunks, sid)  # None without --aoi; raises AreaMissError
    mask = with_aoi(mask, aoi.reader) if aoi is not None else mask
    done = 0
    if final.exists() and not options.overwrite:
        raise OutputExistsError(f"output {final} already exists: pass --overwrite to "
                                "replace it, or choose another --out")
    if partial.exists():
        if options.resume:
            want = {"model_sha256": bundle.sha256, "chunks": list(scene_chunks),
                    "scene": _scene_identity(scene), "mask": mask.spec.to_json(), **map_record(options),
                    **aoi_params(aoi)}
            done = check_resumable(partial, partial.join("chunks"), want)
        elif not options.overwrite:
            raise OutputExistsError(
                f"an unfinished output of scene {src} is in {partial}: pass --resume to "
                "finish it, or --overwrite to start again")
    return _SceneJob(src, scene, sid, final, partial, done, scene_chunks, mask, chunks_from, where, aoi=aoi)


# ------------------------------------------------------------------------------ one scene


@dataclass
class _Flight:
    """A scene whose chunk tasks are on the cluster (submitted, not yet finished)."""

    job: _SceneJob
    store: Location
    markers: Location
    ident: dict
    grid: tuple[int, int]  # chunks along y, x
    done: set[str]  # chunks finished before (resume)
    totals: np.ndarray
    futures: list
    t_submit: float
    previous: "_Flight | None"  # the scene whose chunks run before these
    t_chunks_done: float = 0.0
    labels: dict = dataclasses.field(default_factory=dict)  # {future key: "chunk y=.. x=.. of SCENE"}


def _submit(job: _SceneJob, run: _Run, previous: _Flight | None) -> _Flight:
    """Lay out the output, build the graph, submit the chunks not in the ledger."""
    t0 = time.perf_counter()
    store, markers = job.partial.join("classes.zarr"), job.partial.join("chunks")
    opts = run.options
    ident = _scene_identity(job.scene)
    if job.resume_from == 0:
        _layout_output(job, run, store=store, markers=markers, params={
            "model_sha256": run.bundle.sha256, "chunks": list(job.chunks), "scene": ident,
            "probabilities": opts.probabilities, "batch_size": run.batch_size,
            "mask": job.mask.spec.to_json(), **map_record(opts), **aoi_params(job.aoi)})
    blocks = prediction_graph(job.scene, chunks=job.chunks, ref=run.ref, store=store, markers=markers,
                              options=opts, mask=job.mask.chunk, name=job.scene_id)
    nyb, nxb = blocks.shape
    done, totals = read_ledger(markers)
    ids = [(iy, ix) for iy in range(nyb) for ix in range(nxb) if chunk_id(iy, ix) not in done
           and (job.aoi is None or (iy, ix) in job.aoi.chunks)]  # chunks outside the area: never read
    futures = run.client.compute([blocks[i] for i in ids]) if ids else []
    (cy, cx), (ny, nx) = job.chunks, job.scene.shape[1:]
    labels = {f.key: f"chunk y={iy * cy}:{min(ny, (iy + 1) * cy)} x={ix * cx}:{min(nx, (ix + 1) * cx)} of "
              f"{job.source}" for f, (iy, ix) in zip(futures, ids)}
    return _Flight(job, store, markers, ident, (nyb, nxb), done, totals, futures, t0, previous, labels=labels)


def _conclude(flight: _Flight, run: _Run) -> JobResult:
    """Wait for a scene's chunks, then finish, record and commit it."""
    job, store, opts, ident = flight.job, flight.store, run.options, flight.ident
    # its chunks could start once the previous scene's were done (both are queued at once)
    prev, flight.previous = flight.previous, None
    t0 = max(flight.t_submit, prev.t_chunks_done if prev else 0.0)
    done, totals, t_predict, computed = _compute(flight, run, t0)
    flight.futures, flight.t_chunks_done = [], time.perf_counter()
    t_w0 = time.perf_counter()
    cog_report = _finish(job, run, store=store) if opts.cog else {}
    t_write = time.perf_counter() - t_w0
    timings = {"open": job.t_open, "predict": t_predict, "write": t_write,
               "total": time.perf_counter() - t0 + job.t_open,
               **startup_timings(run.timeline, run.client, time.time() - time.perf_counter() + flight.t_submit)}
    record = _record(job, run, ident=ident, totals=totals, resumed=len(done), computed=computed,
                     cog_report=cog_report, timings=timings)
    # storage retries and task time of every chunk (markers)
    record["retries"], record["task_seconds"] = chunk_totals(flight.markers, kept=flight.done)
    record_aoi(record, job.aoi, totals, N_COUNTS)  # statistics over the area of interest only
    write_item(job.partial, record, bundle=run.bundle, layers=cog_layers(opts.uncertainty))  # item.json
    atomic_write_json(job.partial.join("job.json"), record, default=json_text_default)
    commit_dir(job.partial, job.final, overwrite=opts.overwrite,
               appeared=f"output {job.final} appeared while the job ran: pass --overwrite to "
                        "replace it")
    clear_ledger(job.final)  # resume bookkeeping belongs to the partial output only
    publish(run.out)  # OUT/catalog.json links the new item (added to, never overwritten)
    record["output"]["dir"] = str(job.final)
    return JobResult(job.source, "complete", str(job.final), record)


def _layout_output(job: _SceneJob, run: _Run, *, store: Location, markers: Location,
                   params: dict) -> None:
    """A fresh partial output: the empty Zarr group, the ledger folder and the parameters."""
    classes = run.bundle.classes
    attrs = {"title": f"s2dask classes of {job.scene_id}", "source": job.source,
             "model_sha256": run.bundle.sha256,
             "classes": json.dumps([c.to_dict() for c in classes]), "nodata": OUTPUT_NODATA,
             "class_values": [c.value for c in classes],
             "class_names": [c.name for c in classes],
             "class_colours": [c.colour for c in classes]}
    try:
        job.partial.rm()
        markers.makedirs()
        layout_zarr(store, scene=job.scene, chunks=job.chunks, classes=classes,
                    probabilities=run.options.probabilities, attrs=attrs,
                    mask_attrs=job.mask.layer_attrs, layers=zarr_layers(run.options.uncertainty),
                    mask_fill=job.mask.fill)
        atomic_write_json(job.partial.join(PARAMS_FILE), params, default=json_text_default)
    except OSError as exc:
        raise StorageError(f"cannot write output {job.partial}: {exc.strerror or exc}; check free "
                           "space and permissions") from None


def _compute(flight: _Flight, run: _Run, t0: float) -> tuple[set[str], np.ndarray, float, bool]:
    """Wait for a flight's chunks; ``(done before, class totals, seconds since t0, any run)``."""
    job, done, totals, futures = flight.job, flight.done, flight.totals, flight.futures
    nyb, nxb = flight.grid
    bar = Progress(nyb * nxb, job.scene_id, bool(run.show))
    bar.update(len(done))
    if futures:
        try:
            for fut, value in _watched(run, job, futures, flight.labels):
                if fut.status == "error":
                    raise _task_error(value, job)
                totals += value.reshape(N_TOTALS)
                bar.update()
        except BaseException as exc:
            if not getattr(exc, "scheduler_lost", False):  # nobody to cancel them with
                run.client.cancel(futures)
            raise
    return done, totals, time.perf_counter() - t0, bool(futures)


def _watched(run: _Run, job: _SceneJob, futures: list, labels: dict | None = None):
    """``(future, value)`` as a scene's futures finish, under the scheduler watch
    (:func:`s2dask.job.watch.completed`) with the job's timeout and ``--resume`` command;
    with ``labels`` (chunk tasks) under the task watch too (:class:`s2dask.job.taskwatch.TaskWatch`)."""
    opts, resume = run.options, run.options.resume_command or DEFAULT_RESUME
    tasks = TaskWatch(run.client, labels, timeout=opts.task_timeout, retries=opts.task_retries,
                      resume=resume, kept=str(job.partial)) if labels else None
    return completed(run.client, futures, timeout=opts.scheduler_timeout, kept=str(job.partial),
                     resume=resume, tasks=tasks)


def _cog_threads(client) -> int:
    """GDAL threads for a scene's COG: every Dask thread of the smallest host when the
    cluster has nothing else to run (the last scene of a job), else one (the next scene's
    chunks are running: no oversubscription)."""
    try:
        if any(client.processing().values()):
            return 1
        return max(1, min(host_thread_counts(client).values(), default=1))
    except Exception:  # a worker leaving at this moment: the safe choice
        return 1


def _finish(job: _SceneJob, run: _Run, *, store: Location) -> dict:
    """COG and quick-look, written by a worker (next to the data), not the client."""
    scene, opts = job.scene, run.options
    fut = run.client.submit(
        write_rasters, store, job.partial, classes=tuple(run.bundle.classes),
        crs=scene.rio.crs.to_wkt(), transform=scene.rio.transform(),
        overview_resampling=opts.overview_resampling, quicklook=opts.quicklook,
        title=f"{job.scene_id} - s2dask classes",
        tags={"S2DASK_SCENE": job.scene_id, "S2DASK_MODEL_SHA256": run.bundle.sha256},
        mask_legend=job.mask.legend, layers=cog_layers(opts.uncertainty),
        threads=_cog_threads(run.client), pure=False,
        priority=10)  # before the next scene's queued chunks (s2dask.job.pipeline)
    # under the scheduler watch like the chunks: a scheduler lost while the COG is written
    # ends in its one line, not in a wait without end
    [(_, report)] = _watched(run, job, [fut])
    if fut.status == "error":
        if isinstance(report, S2DaskError):
            raise report
        raise _task_error(report, job) from None
    if not report["valid"]:
        raise JobError(f"the COG written for {job.source} failed validation: "
                       f"{'; '.join(report['errors'])}")
    return report


def _record(job: _SceneJob, run: _Run, *, ident: dict, totals: np.ndarray, resumed: int,
            computed: bool, cog_report: dict, timings: dict) -> dict:
    """The job record (``job.json``)."""
    scene, opts, bundle = job.scene, run.options, run.bundle
    cy, cx = job.chunks
    transform, crs = scene.rio.transform(), scene.rio.crs
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    px_area_m2 = abs(transform.a * transform.e - transform.b * transform.d)
    metres = bool(crs and crs.is_projected and crs.linear_units.lower() in ("metre", "meter", "m"))
    per_class = []
    for c in bundle.classes:
        n = int(totals[c.value])
        per_class.append({"value": c.value, "name": c.name, "colour": c.colour,
                          "pixels": n, "fraction": n / (ny * nx),
                          "hectares": (n * px_area_m2 / 1e4) if metres else None})
    total_t, t_predict = timings["total"], timings["predict"]
    return record_mask({
        "status": "complete",
        "created": _now(),
        "scene": ident,
        "output": {"dir": str(job.final), "zarr": "classes.zarr",
                   "cog": "classes.tif" if opts.cog else None,
                   "quicklook": "quicklook.png" if (opts.cog and opts.quicklook) else None,
                   "cog_validation": cog_report, **map_record(opts, "output")},
        "model": {"path": str(bundle.path), "sha256": bundle.sha256,
                  "contract": bundle.contract.to_dict(), "metrics": metrics_summary(bundle.path)},
        "parameters": {"chunks": [cy, cx], "probabilities": opts.probabilities,
                       "batch_size": run.batch_size, **map_record(opts),
                       "overview_resampling": opts.overview_resampling, "resumed_chunks": resumed},
        "cluster": run.cluster,
        "engine": {"asked": delivery_options(opts), "workers": run.engine},
        "statistics": {"pixels": ny * nx, "nodata_pixels": int(totals[OUTPUT_NODATA]),
                       "classified_pixels": int(totals[:OUTPUT_NODATA].sum()),
                       "pixel_area_m2": px_area_m2, "classes": per_class},
        "timings_s": timings,
        "throughput_mpx_s": {"end_to_end": ny * nx / 1e6 / max(total_t, 1e-9),
                             "predict": (ny * nx - resumed * cy * cx) / 1e6 / max(t_predict, 1e-9)
                             if computed else None},
        "versions": library_versions(),
        "host": {"client": socket.gethostname(), "python": platform.python_version()},
    }, job.mask, totals[N_COUNTS:])


def _task_error(exc: BaseException, job: _SceneJob) -> S2DaskError:
    if isinstance(exc, S2DaskError):  # one line from the worker: which chunk, which input
        return type(exc)(f"scene {job.source}: {redact(str(exc))}; finished chunks are kept in "
                         f"{job.partial}: rerun with --resume")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return StorageError(f"writing the output of {job.source} failed: "
                            f"{exc.strerror or exc}{where}; "
                            f"free space or fix permissions, then rerun with --resume "
                            f"(finished chunks are kept in {job.partial})")
    text = redact(" ".join(str(exc).split())[:300])
    return JobError(f"classifying {job.source} failed in a worker: {type(exc).__name__}: {text}; "
                    f"finished chunks are kept in {job.partial}, rerun with --resume")
