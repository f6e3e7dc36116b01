"""A job's start-up: the embedded cluster starts and gets the model while the client is busy.

Before the first chunk runs, a ``classify`` process imports its libraries, starts a
LocalCluster (a scheduler and one worker process per core), delivers the model to every
worker (each builds its predictor once) and opens and checks its scenes. The worker
processes work in parallel with the client: :class:`ClusterStart` starts the cluster and
delivers the model in a background thread, begun by the CLI before it imports the
job's heavier libraries; :func:`s2dask.job.run.classify` takes it as its ``client`` and
owns it from then on.

:class:`Timeline` keeps the moments (seconds since the process started) that
``job.json`` records under ``timings_s.startup``; :func:`first_task_start` finds when the
first task of a scene started on a worker (Dask's task stream).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClusterError
from .cluster import close_cluster, connect, host_thread_counts, prepare_connect, register_plugin

__all__ = ["Timeline", "Delivery", "ClusterStart", "deliver_model", "deliver_for_job", "delivery_options",
           "connect_options", "first_task_start", "startup_timings"]


def _process_start() -> float:
    """When this process started (epoch seconds)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # pragma: no cover - psutil is a dependency of distributed
        return time.time()


class Timeline:
    """Moments of a job's start-up, in seconds since ``origin``: ``"process"`` (its start: the
    CLI's) or ``"call"`` (now: a ``classify`` call in a longer-lived process)."""

    def __init__(self, origin: str = "process") -> None:
        self.origin = origin
        self.t0 = _process_start() if origin == "process" else time.time()
        self.marks: dict[str, float] = {}

    def mark(self, name: str, when: float | None = None) -> None:
        """Record ``name`` now (or at epoch ``when``); the first mark of a name stays."""
        self.marks.setdefault(name, round((time.time() if when is None else when) - self.t0, 3))

    def record(self) -> dict[str, Any]:
        """The origin and the marks in order of time (what ``job.json`` stores)."""
        return {"since": f"{self.origin} start", **dict(sorted(self.marks.items(), key=lambda kv: kv[1]))}


@dataclass(frozen=True)
class Delivery:
    """A model delivered to a cluster's workers with some engine options."""

    ref: Any  # s2dask.job.worker.ModelRef
    #: ``{worker address: engine record}`` (engine, precision, device, batch size, threads, source)
    engines: dict = field(default_factory=dict)
    #: the options it was delivered with: engine, precision, batch_size, tf_threads
    params: tuple = ()

    @property
    def batch_size(self) -> int | None:
        """The workers' batch size when they all use the same, else ``None``."""
        sizes = {rec.get("batch_size") for rec in self.engines.values()}
        return sizes.pop() if len(sizes) == 1 else None


def deliver_model(client, bundle, *, engine: str = "auto", precision: str = "auto",
                  batch_size: int | None = None, tf_threads: int | None = None) -> Delivery:
    """Register the model plugin (every worker resolves its engine and builds its predictor)
    and collect what each worker runs.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    bundle
        A :class:`s2dask.model.bundle.ModelBundle` (validated; no backend needed).
    engine, precision, batch_size, tf_threads
        The job's options.

    Raises
    ------
    S2DaskError
        If a worker cannot build the model with these options.
    """
    from .worker import ModelPlugin, ModelRef, engine_record

    plugin = ModelPlugin(bundle.handle(), batch_size=batch_size, tf_threads=tf_threads,
                         host_threads=host_thread_counts(client), engine=engine, precision=precision)
    register_plugin(client, plugin)  # a model the workers cannot build fails here (again on churn)
    ref = ModelRef.of(bundle, batch_size, engine, precision)
    try:
        engines = {addr: rec for addr, rec in client.run(engine_record, ref).items() if rec}
    except Exception:  # a worker leaving at this moment must not fail the job
        engines = {}
    try:
        client.get_task_stream(start=time.time())  # starts the scheduler's task stream
    except Exception:  # pragma: no cover - diagnostics only
        pass
    return Delivery(ref, engines, (engine, precision, batch_size, tf_threads))


_DELIVERY_KEYS = ("engine", "precision", "batch_size", "tf_threads")


def deliver_for_job(client, bundle, options, starter: "ClusterStart | None" = None) -> Delivery:
    """The model on every worker with a job's options: what ``starter`` delivered in the
    background if it matches, else delivered now (:func:`deliver_model`)."""
    want = delivery_options(options)
    delivery = starter.delivered(bundle.sha256, want) if starter is not None else None
    return delivery or deliver_model(client, bundle, **want)


def delivery_options(options) -> dict:
    """The model-delivery options of a :class:`s2dask.job.run.JobOptions`."""
    return {k: getattr(options, k) for k in _DELIVERY_KEYS}


def connect_options(options) -> dict:
    """The :func:`s2dask.job.cluster.connect` keywords of a :class:`s2dask.job.run.JobOptions`."""
    o = options
    return {"scheduler": o.scheduler, "scheduler_file": o.scheduler_file, "security": o.security,
            "timeout": o.connect_timeout, "workers": o.workers,
            "threads_per_worker": o.threads_per_worker, "gpu": o.gpu,
            "memory_limit": o.memory_limit or "auto"}


class ClusterStart:
    """Start an embedded cluster (and deliver a model to it) in a background thread.

    Returns once the thread has imported what the cluster start needs
    (:func:`s2dask.job.cluster.prepare_connect`): from then on the caller may import its own
    libraries.

    Parameters
    ----------
    model
        The bundle directory to deliver once the cluster is up (``None``: deliver nothing).
    delivery
        ``engine``, ``precision``, ``batch_size``, ``tf_threads`` for :func:`deliver_model`.
    timeline
        Where to mark ``cluster_up`` and ``model_delivered``.
    **connect_kwargs
        For :func:`s2dask.job.cluster.connect` (``workers``, ``threads_per_worker``, ``gpu``,
        ``scheduler``... ).
    """

    def __init__(self, model: str | None = None, *, delivery: dict | None = None,
                 timeline: Timeline | None = None, **connect_kwargs: Any):
        self.timeline = timeline or Timeline()
        self._model, self._delivery_kw = model, dict(delivery or {})
        self._connect_kw = connect_kwargs
        self._out: tuple | None = None
        self._error: BaseException | None = None
        self.bundle = None
        self.delivery: Delivery | None = None
        self._taken = self._cancelled = False
        self._imported = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s2dask-cluster-start", daemon=True)
        self._thread.start()
        self._imported.wait()

    def _run(self) -> None:
        try:
            try:
                prepare_connect(**self._connect_kw)
            finally:
                self._imported.set()
            self._out = connect(**self._connect_kw)
            self.timeline.mark("cluster_up")
            if self._model is not None and not self._cancelled:
                from ..model.bundle import load_model

                self.bundle = load_model(self._model, check_keras=False)
                self.delivery = deliver_model(self._out[0], self.bundle, **self._delivery_kw)
                self.timeline.mark("model_delivered")
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    @classmethod
    def for_job(cls, model, options) -> "ClusterStart":
        """The start of a :func:`s2dask.job.run.classify` call given no client (timeline from now)."""
        return cls(model, delivery=delivery_options(options), timeline=Timeline("call"),
                   **connect_options(options))

    def __enter__(self) -> "ClusterStart":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def delivered(self, sha256: str, options: dict) -> Delivery | None:
        """The delivery made in the background if it was of this model with these options."""
        d = self.delivery
        ok = d is not None and d.ref.sha256 == sha256 and d.params == tuple(options.get(k) for k in
                                                                          _DELIVERY_KEYS)
        return d if ok else None

    def result(self) -> tuple[Any, Any]:
        """``(client, cluster)`` once started; the caller owns (and closes) them from now on.

        Raises
        ------
        ClusterError
            If the cluster could not start.
        S2DaskError
            If the model could not be delivered (the cluster is closed then).
        """
        self.timeline.mark("scenes_checked")  # the job asks for its cluster once they are
        self._thread.join()
        if self._out is None:
            raise self._error if self._error is not None else ClusterError("the cluster did not start")
        if self._error is not None:
            self.close()
            raise self._error
        self._taken = True
        return self._out

    def close(self) -> None:
        """Close what was started unless :meth:`result` handed it over (waits for the start,
        not for a model delivery that has not begun)."""
        self._cancelled = not self._taken
        self._thread.join()
        if self._out is not None and not self._taken:
            client, cluster = self._out
            self._out = None
            close_cluster(client, cluster)


def first_task_start(client, since: float) -> float | None:
    """Epoch seconds at which the first task that started after ``since`` began computing.

    From the scheduler's task stream (started by :func:`deliver_model`); ``None`` if it
    has no such task.
    """
    try:
        stream = client.get_task_stream(start=since)
    except Exception:  # pragma: no cover - diagnostics only
        return None
    starts = [s["start"] for t in stream for s in t.get("startstops", ())
              if s.get("action") == "compute" and s.get("start", 0) >= since]
    return min(starts) if starts else None


def startup_timings(timeline: Timeline | None, client, since: float) -> dict:
    """``{"startup": {moment: seconds since the process started}}`` for a job's first scene
    (``first_chunk``: its first task started after ``since``); ``{}`` afterwards or without
    a timeline."""
    if timeline is None or "first_chunk" in timeline.marks:
        return {}
    first = first_task_start(client, since)
    if first is not None:
        timeline.mark("first_chunk", first)
    return {"startup": timeline.record()}
