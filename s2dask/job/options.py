"""The options of a whole-scene job (:func:`s2dask.job.run.classify`), validated once.

Client side. One frozen dataclass, so a job's options travel and compare as one value;
every field is also a keyword of :func:`s2dask.classify`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ParameterError
from ..io.retry import RetryPolicy
from ..maps.outputs import map_options
from ..model.engines import check_options
from ..scene.bands import canonical_bands
from ..scene.graph import chunk_pair
from ..scene.mask import MaskSpec, parse_mask_option
from .taskwatch import DEFAULT_TASK_RETRIES, check_task_timeout
from .watch import DEFAULT_SCHEDULER_TIMEOUT, check_timeout

__all__ = ["JobOptions"]


@dataclass(frozen=True)
class JobOptions:
    """How :func:`classify` runs; every field is also a keyword of :func:`classify`.

    Raises
    ------
    ParameterError
        On construction, if ``chunks`` or ``batch_size`` is not positive, or both
        ``overwrite`` and ``resume`` are asked for.
    """

    #: spatial chunk edge in pixels, or ``(y, x)``; ``None``: 2048, or smaller for a scene
    #: of fewer than 4 such chunks. Memory per task scales with it.
    chunks: int | tuple[int, int] | None = None
    #: also write per-class probabilities (uint8 percent) to the Zarr store
    probabilities: bool = False
    #: replace existing outputs (the old one is removed only once the new one is complete)
    overwrite: bool = False
    #: finish an interrupted job: only chunks without a marker are computed
    resume: bool = False
    #: pixels per forward call (``None``: the engine's default, Keras 8192, OpenVINO 2048)
    batch_size: int | None = None
    #: threads of a task's forward pass (``None``: the cores / the Dask threads per host)
    tf_threads: int | None = None
    #: ``auto|keras|openvino`` and ``auto|fp32|bf16``, resolved on each worker (s2dask.model.engines)
    engine: str = "auto"
    precision: str = "auto"
    #: write the COG (and the quick-look)
    cog: bool = True
    #: draw the quick-look PNG
    quicklook: bool = True
    #: COG overview resampling, ``"mode"`` or ``"nearest"``
    overview_resampling: str = "mode"
    #: draw a progress bar (``None``: when stderr is a terminal)
    progress: bool | None = None
    #: the cluster to join when no client is given (else an embedded LocalCluster starts)
    scheduler: str | None = None
    #: a scheduler file to join instead of an address
    scheduler_file: str | None = None
    #: ``distributed.Security`` for a TLS cluster (:func:`s2dask.job.cluster.make_security`)
    security: Any = None
    #: workers and threads of the embedded LocalCluster (``None``: one 1-thread worker per core)
    workers: int | None = None
    threads_per_worker: int | None = None
    #: embedded cluster of one worker per GPU (dask-cuda)
    gpu: bool = False
    #: seconds to wait for a scheduler
    connect_timeout: float = 20.0
    #: uncertainty layers (``entropy``, ``margin``, ``least``); N x N smoothing window (odd; None: none)
    uncertainty: tuple[str, ...] = ()
    smooth: int | None = None
    #: ``"scl"``, ``"none"`` or a mask raster (non-zero = invalid); ``None``: the SCL where the scene has one
    mask: str | None = None
    #: SCL classes masked (``"0,1,3,8,9,10"``; ``None``: :data:`s2dask.scene.mask.DEFAULT_MASK_CLASSES`)
    mask_classes: str | tuple[int, ...] | None = None
    #: STAC items: the DN offset their data carry (-1000 or 0), for items that do not say it
    boa_add_offset: int | None = None
    #: the scenes' bands in stored order, for GeoTIFFs without band descriptions (never guessed)
    bands: tuple[str, ...] | None = None
    #: an area of interest (a polygon layer in any CRS): only the chunks it touches are computed
    aoi: str | None = None
    #: retries of a failed storage request (None: $S2DASK_RETRIES or 5); seconds without an answer
    #: from the scheduler before the job stops; the --resume command of error lines; the memory
    #: limit of each worker of the embedded LocalCluster (None: Dask's "auto")
    retries: int | None = None
    scheduler_timeout: float = DEFAULT_SCHEDULER_TIMEOUT
    resume_command: str | None = None
    memory_limit: str | float | None = None
    #: seconds a chunk task may run before it is retried on another worker (``None``: 10 x the
    #: job's median chunk time, at least 60 s); retries of such a chunk before the job stops
    task_timeout: float | None = None
    task_retries: int = DEFAULT_TASK_RETRIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "uncertainty", map_options(self.uncertainty, self.smooth))
        if self.chunks is not None:
            object.__setattr__(self, "chunks", chunk_pair(self.chunks, error=ParameterError))
        if self.batch_size is not None and int(self.batch_size) <= 0:
            raise ParameterError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.overwrite and self.resume:
            raise ParameterError("--overwrite and --resume exclude each other: choose one")
        check_options(self.engine, self.precision)
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(canonical_bands(self.bands)))
        self.mask_spec()
        RetryPolicy.of(self.retries)  # a negative or odd number of retries: one line, now
        check_timeout(self.scheduler_timeout)
        check_task_timeout(self.task_timeout, self.task_retries)

    def mask_spec(self) -> MaskSpec:
        """``mask`` and ``mask_classes`` parsed (raises ParameterError)."""
        return parse_mask_option(self.mask, classes=self.mask_classes)

    @classmethod
    def build(cls, options: "JobOptions | None" = None, **keywords: Any) -> "JobOptions":
        """``options`` (default: the defaults) with ``keywords`` replacing fields.

        Raises
        ------
        TypeError
            If a keyword is not a field.
        ParameterError
            If a value is invalid.
        """
        return dataclasses.replace(options or cls(), **keywords) if keywords else options or cls()
