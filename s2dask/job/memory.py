"""How large a chunk a worker can take: the memory rule, measured, and its check.

A prediction task holds its chunk's bands (uint16), the float32 batches of the forward
pass, the class/confidence (and probability) outputs and Zarr's encode buffers; a worker
process also holds Python, Dask, the deep-learning backend and the compiled model before
any task runs. Measured with ``benchmarks/memory.py`` (one single-threaded worker process,
synthetic 10-band uint16 COGs, the tutorial's 10 -> 4x200 -> 5 MLP, TensorFlow 2.21 CPU,
batch 8192; peak RSS sampled every 20 ms, minus the RSS after a warm-up job)::

    chunk edge   peak - baseline   per chunk pixel
         256         78 MB            1195 B
         512         84 MB             322 B
        1024         82 MB              78 B
        2048        260 MB              62 B

    baseline (worker after the model is built): 1.05 GiB

Up to 1024 the task's peak is a floor of ~80 MB that does not grow with the chunk (batch
buffers of the forward pass, backend scratch, Zarr/COG code paths); from 1024 to 2048 it
grows by 57 bytes per added chunk pixel (10 bands: ~5.3 B per band and pixel for the
uint16 block and its harmonised copy, ~4 B for the uint8 outputs and their encode
buffers). The rule takes both at their worst: 85 MB + 57 B/px (at 2048: 324 MB, 64 MB
above the measurement). Probabilities add one byte per class and pixel, twice (the array
and its Zarr encode buffer; estimated, not measured). The rule keeps
``baseline + threads x task`` under :data:`TARGET_FRACTION` (0.8) of the worker's memory
limit: Dask's pause threshold, so a worker never stops taking tasks for our own chunks,
and 15 % below its terminate threshold (0.95). With 1.5 GiB workers (1 thread) the
largest edge is 1024; with 2 GiB, 2816; with 4 GiB, 6144.

The baseline depends on the engine (:func:`baseline_for`). ``benchmarks/memory.py
--engine-baseline`` builds the model in a fresh process with a worker's imports and runs
one warm batch: 0.28 GiB with OpenVINO from the bundle's stored IR (TensorFlow never
imported), 0.88 GiB with TensorFlow. The Dask worker adds 0.17 GiB to the latter (1.05 GiB
measured in a worker), so an OpenVINO worker's baseline is taken as 0.45 GiB: the largest
edge is then 3328 at 1.5 GiB, 4352 at 2 GiB, 6912 at 4 GiB (2048 even at 1 GiB).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ParameterError

__all__ = ["auto_chunks", "max_chunk_edge", "check_chunks_fit", "fit_chunks", "fit_scene_chunks",
           "task_bytes",
           "baseline_for", "DEFAULT_CHUNKS",
           "BASELINE_BYTES", "OPENVINO_BASELINE_BYTES",
           "TASK_FIXED_BYTES", "BYTES_PER_PIXEL_BAND", "BYTES_PER_PIXEL_OUTPUT",
           "TARGET_FRACTION"]

#: RSS of a worker process once the backend and the model are loaded (measured 1.05 GiB)
BASELINE_BYTES = int(1.05 * 2**30)
#: RSS of a worker process that predicts with OpenVINO and never imports TensorFlow
#: (0.28 GiB measured with s2dask.model.engines + the worker's 0.17 GiB; see the module text)
OPENVINO_BASELINE_BYTES = int(0.45 * 2**30)
#: per task, independent of the chunk size (batch buffers, backend scratch; measured)
TASK_FIXED_BYTES = 85_000_000
#: per chunk pixel and input band (uint16 block and copies; measured at 10 bands)
BYTES_PER_PIXEL_BAND = 5.3
#: per chunk pixel for the outputs (classes, confidence, counts) and their encode buffers
BYTES_PER_PIXEL_OUTPUT = 4
#: the share of a worker's memory limit the rule lets baseline + tasks use
TARGET_FRACTION = 0.8
_MIN_EDGE = 256
#: spatial chunk edge when none is given (smaller for small scenes: see auto_chunks)
DEFAULT_CHUNKS = 2048
_MIN_AUTO_CHUNKS = 256


def auto_chunks(ny: int, nx: int) -> tuple[int, int]:
    """2048, halved (down to 256) until the scene has at least 4 chunks.

    A scene smaller than one chunk would otherwise be a single task and leave all but one
    worker idle (benchmarks/scaling.py: 0.42 vs 0.75 Mpx/s on 2048^2 with 2 workers). It
    depends on the scene's shape only, so a resumed job finds the same chunks.
    """
    c = DEFAULT_CHUNKS
    while c > _MIN_AUTO_CHUNKS and -(-ny // c) * -(-nx // c) < 4:
        c //= 2
    return c, c


def baseline_for(engine: str | None) -> int:
    """A worker's RSS before tasks for the ``engine`` its model runs on.

    ``"openvino"``: :data:`OPENVINO_BASELINE_BYTES`; anything else (``"tensorflow"``,
    ``"auto"``, ``None``: the engine is not known yet) the larger TensorFlow figure.
    """
    return OPENVINO_BASELINE_BYTES if str(engine or "").lower() == "openvino" else BASELINE_BYTES


def task_bytes(edge: int | tuple[int, int], n_bands: int, *, probabilities: bool = False,
               n_classes: int = 0) -> int:
    """Peak bytes one prediction task adds to its worker for a chunk of ``edge`` pixels.

    Parameters
    ----------
    edge
        Chunk edge in pixels, or ``(y, x)``.
    n_bands
        Input bands the model reads.
    probabilities
        Whether the task also writes per-class probabilities.
    n_classes
        The model's classes (needed with ``probabilities``).
    """
    cy, cx = (edge, edge) if isinstance(edge, int) else edge
    per_px = BYTES_PER_PIXEL_BAND * n_bands + BYTES_PER_PIXEL_OUTPUT
    if probabilities:
        per_px += 2 * max(n_classes, 1)
    return int(TASK_FIXED_BYTES + per_px * cy * cx)


def max_chunk_edge(memory_limit_bytes: int | float | None, n_bands: int, *,
                   probabilities: bool = False, n_classes: int = 0, threads_per_worker: int = 1,
                   baseline_bytes: int = BASELINE_BYTES, fraction: float = TARGET_FRACTION,
                   multiple: int = 256) -> int | None:
    """The largest chunk edge (a multiple of ``multiple``) whose tasks fit a worker.

    ``baseline + threads_per_worker x task_bytes(edge) <= fraction x memory_limit``.

    Parameters
    ----------
    memory_limit_bytes
        The worker's memory limit (``client.scheduler_info()["workers"][w]["memory_limit"]``);
        ``None`` or 0 (no limit): ``None`` is returned.
    n_bands
        Input bands.
    probabilities, n_classes
        As for :func:`task_bytes`.
    threads_per_worker
        Tasks that run at once in one worker process.
    baseline_bytes, fraction
        The worker's RSS before tasks, and the share of the limit to use.
    multiple
        Round down to a multiple of this (Zarr/COG tiles are 256 or 512).

    Returns
    -------
    int or None
        The edge, ``0`` when not even ``multiple`` fits, ``None`` without a limit.
    """
    if not memory_limit_bytes:
        return None
    threads = max(int(threads_per_worker), 1)
    room = fraction * float(memory_limit_bytes) - baseline_bytes - threads * TASK_FIXED_BYTES
    per_px = BYTES_PER_PIXEL_BAND * n_bands + BYTES_PER_PIXEL_OUTPUT
    if probabilities:
        per_px += 2 * max(n_classes, 1)
    if room <= 0:
        return 0
    edge = int(math.sqrt(room / (threads * per_px)))
    return (edge // multiple) * multiple


def check_chunks_fit(chunks: int | tuple[int, int], workers: dict, n_bands: int, *,
                     probabilities: bool = False, n_classes: int = 0,
                     baseline_bytes: int = BASELINE_BYTES) -> None:
    """Refuse, before compute, a chunk size too large for the smallest worker.

    Parameters
    ----------
    chunks
        The chunk edge (or ``(y, x)``) the job will use.
    workers
        ``client.scheduler_info()["workers"]``: each entry's ``memory_limit`` (bytes, 0 for
        none) and ``nthreads`` are used.
    n_bands, probabilities, n_classes
        As for :func:`task_bytes`.
    baseline_bytes
        The workers' RSS before tasks (:func:`baseline_for`).

    Raises
    ------
    ParameterError
        One line: the chunk size, the worker's memory limit, and the largest edge that fits
        (or that the workers need more memory).
    """
    cy, cx = (chunks, chunks) if isinstance(chunks, int) else chunks
    worst = None
    for info in workers.values():
        limit = info.get("memory_limit") or 0
        if not limit:
            continue
        threads = int(info.get("nthreads") or 1)
        need = baseline_bytes + threads * task_bytes((cy, cx), n_bands,
                                                     probabilities=probabilities, n_classes=n_classes)
        if need > TARGET_FRACTION * limit and (worst is None or limit < worst[0]):
            worst = (limit, threads)
    if worst is None:
        return
    limit, threads = worst
    edge = max_chunk_edge(limit, n_bands, probabilities=probabilities, n_classes=n_classes,
                          threads_per_worker=threads, baseline_bytes=baseline_bytes, multiple=256)
    gib = limit / 2**30
    if not edge:
        need = (baseline_bytes + threads * task_bytes(_MIN_EDGE, n_bands)) / TARGET_FRACTION / 2**30
        need = math.ceil(need * 10) / 10  # rounded up: the advice must fit
        raise ParameterError(f"workers with a memory limit of {gib:.2f} GiB and {threads} thread(s) "
                             f"cannot hold the model and a {_MIN_EDGE}-pixel chunk: give the "
                             f"workers at least {need:.1f} GiB (--memory-limit) or fewer threads")
    raise ParameterError(f"chunks of {cy} x {cx} pixels do not fit workers with a memory limit of "
                         f"{gib:.2f} GiB and {threads} thread(s): the largest that fits is "
                         f"--chunks {edge} (or give the workers more memory)")


def fit_chunks(chunks: tuple[int, int], workers: dict, bundle: Any, options: Any, *,
               given: bool) -> tuple[int, int]:
    """The chunks a job uses on ``workers``: automatic ones made to fit, given ones checked.

    Parameters
    ----------
    chunks
        ``(y, x)``: the user's (``given``) or the automatic choice.
    workers
        ``client.scheduler_info()["workers"]`` (``memory_limit``, ``nthreads``).
    bundle
        The model bundle (its ``bands`` and ``classes``).
    options
        The job's options (``probabilities``; ``engine`` where there is one: the baseline).
    given
        Whether the user chose ``chunks`` (then they are refused if too large, never changed).

    Returns
    -------
    tuple of int
        ``chunks``, or for automatic chunks each edge capped at the largest that fits the
        smallest worker (a multiple of 256).

    Raises
    ------
    ParameterError
        Given chunks that do not fit, or workers too small for any chunk (one line each).
    """
    n_bands = len(bundle.bands)
    kw = dict(probabilities=bool(getattr(options, "probabilities", False)),
              n_classes=len(bundle.classes),
              baseline_bytes=baseline_for(getattr(options, "engine", None)))
    if given:
        check_chunks_fit(chunks, workers, n_bands, **kw)
        return chunks
    cap = None
    for info in workers.values():
        edge = max_chunk_edge(info.get("memory_limit") or 0, n_bands,
                              threads_per_worker=int(info.get("nthreads") or 1), **kw)
        if edge is not None:
            cap = edge if cap is None else min(cap, edge)
    if cap is None or cap >= max(chunks):
        return chunks
    if cap == 0:
        check_chunks_fit(_MIN_EDGE, workers, n_bands, **kw)  # raises: the workers are too small
    return (min(chunks[0], cap), min(chunks[1], cap))


def fit_scene_chunks(jobs: Any, client: Any, bundle: Any, options: Any, *, reopen: Any) -> None:
    """Give each of a job's scenes chunks that fit the cluster's workers (:func:`fit_chunks`).

    ``jobs`` have ``chunks``, ``chunks_from`` (``"given"``, ``"auto"``; ``"recorded"``: a
    resumed output, kept), ``where`` and ``scene``; a scene whose automatic chunks shrink is
    opened again with ``reopen(where, bundle, options, chunks, where=where)[0]`` (the job's
    checked open; no pixel reads).

    Raises
    ------
    ParameterError
        Given chunks too large for the workers (one line with the largest that fits).
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    for job in (j for j in jobs if j.chunks_from != "recorded"):
        chunks = fit_chunks(job.chunks, workers, bundle, options, given=job.chunks_from == "given")
        if chunks != job.chunks:
            job.scene, job.chunks = reopen(job.where, bundle, options, chunks, where=job.where)[0], chunks

