"""Make or join a Dask cluster, and keep one model per worker process.

The model reaches workers through :class:`ModelPlugin`, a ``WorkerPlugin`` registered on
the client: the scheduler hands it to every worker, including workers that join or are
restarted later, and each worker process builds the Keras model once and caches it by
its sha256. Tasks carry only a :class:`ModelRef` (hash, path, batch size), so the model
is never pickled into a task graph.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ClusterError, ModelError

__all__ = [
    "ModelRef",
    "ModelPlugin",
    "get_predictor",
    "build_counts",
    "configure_threads",
    "connect",
    "make_security",
    "local_cluster_size",
    "cluster_summary",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the per-process model cache

_CACHE: dict[tuple[str, int], Any] = {}
_BUILDS: collections.Counter = collections.Counter()
_CACHE_LOCK = threading.Lock()
_THREADS_SET: dict[str, int] = {}


@dataclass(frozen=True)
class ModelRef:
    """The small identifier of a model that tasks carry (never the model itself)."""

    sha256: str
    path: str
    batch_size: int


def build_counts() -> dict[str, int]:
    """How many times each model (by sha256) was built in this process (for tests, records)."""
    return dict(_BUILDS)


def configure_threads(tf_threads: int) -> int:
    """Limit the deep-learning backend's own thread pools in this process.

    Dask runs ``nthreads`` tasks at once in a worker; each forward pass may itself use
    ``tf_threads`` threads, so ``nthreads x tf_threads`` should not exceed the cores.
    Must run before the backend starts its runtime (a worker plugin's ``setup`` does);
    later calls are ignored.
    """
    tf_threads = max(1, int(tf_threads))
    # JAX would otherwise preallocate most of the GPU's memory in every worker process
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if "backend" in _THREADS_SET:
        return _THREADS_SET["backend"]
    from .model import _require_keras

    keras = _require_keras()

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # several workers may share a GPU node: take GPU memory as needed, not all at once
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # runtime already initialised in this process
            tf_threads = tf.config.threading.get_intra_op_parallelism_threads() or tf_threads
    elif backend == "torch":
        import torch

        torch.set_num_threads(tf_threads)
    _THREADS_SET["backend"] = tf_threads
    return tf_threads


def _install(sha256: str, batch_size: int, build) -> Any:
    key = (sha256, int(batch_size))
    with _CACHE_LOCK:
        pred = _CACHE.get(key)
        if pred is None:
            pred = build()
            _CACHE[key] = pred
            _BUILDS[sha256] += 1
        return pred


def get_predictor(ref: ModelRef):
    """The cached predictor of ``ref`` in this process, built on first use.

    On a worker with :class:`ModelPlugin` the model is already there. Elsewhere (the
    threaded scheduler, a worker that missed the plugin) it is loaded once from
    ``ref.path`` and its sha256 checked.

    Raises
    ------
    ModelError
        If the model file at ``ref.path`` no longer matches ``ref.sha256``.
    """
    key = (ref.sha256, int(ref.batch_size))
    pred = _CACHE.get(key)
    if pred is not None:
        return pred

    def build():
        from .model import load_model

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

    def __init__(self, handle, *, batch_size: int, tf_threads: int | None = None,
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

        def build():
            from .model import check_model_shape
            from .predict import Predictor

            model = self.handle.build()
            check_model_shape(model, self.handle.contract, where=f"model {self.handle.sha256[:12]}")
            return Predictor(model, self.handle.contract, batch_size=self.batch_size)

        _install(self.handle.sha256, self.batch_size, build)


def host_thread_counts(client) -> dict[str, int]:
    """``{host: total Dask threads}`` over the cluster's current workers."""
    counts: dict[str, int] = collections.Counter()
    for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
        host = info.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]
        counts[host] += int(info.get("nthreads", 1))
    return dict(counts)


# ---------------------------------------------------------------- clusters


def local_cluster_size(workers: int | None = None, threads_per_worker: int | None = None) -> tuple[int, int]:
    """Workers and threads for an embedded LocalCluster on this machine.

    The default is one single-threaded worker process per core: each task's forward
    pass then gets one backend thread and no core runs two compute threads.
    """
    from dask.system import CPU_COUNT

    cores = max(1, CPU_COUNT)
    if workers is None and threads_per_worker is None:
        return cores, 1
    if workers is None:
        return max(1, cores // threads_per_worker), threads_per_worker
    if threads_per_worker is None:
        return workers, max(1, cores // workers)
    return workers, threads_per_worker


def make_security(*, ca_file: str | None = None, cert: str | None = None, key: str | None = None,
                  require_encryption: bool | None = None):
    """A ``distributed.Security`` from certificate files, or ``None`` to use Dask's config.

    Without files, Dask's own configuration applies (``distributed.comm.tls.*`` in a YAML
    file or ``DASK_DISTRIBUTED__COMM__TLS__*`` environment variables).

    Raises
    ------
    ClusterError
        If only some of the files are given, or one does not exist.
    """
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if not any(given.values()):
        return None
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise ClusterError(f"TLS needs all of --tls-ca-file, --tls-cert and --tls-key; missing {', '.join(missing)}")
    for flag, path in given.items():
        if not Path(path).is_file():
            raise ClusterError(f"{flag} {path} does not exist: give the certificate files the cluster was started with")
    from distributed.security import Security

    return Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key,
                    require_encryption=True if require_encryption is None else require_encryption)


def connect(
    scheduler: str | None = None,
    *,
    scheduler_file: str | None = None,
    security=None,
    timeout: float = 20.0,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = "auto",
    gpu: bool = False,
    dashboard: bool = True,
):
    """Return ``(client, cluster_or_None)``: join an existing cluster or start a local one.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``, ``tls://...``).
    scheduler_file
        A scheduler file written by ``dask scheduler --scheduler-file``.
    security
        ``distributed.Security`` for TLS (see :func:`make_security`).
    timeout
        Seconds to wait for the scheduler before giving up (no hang).
    workers, threads_per_worker
        Size of the embedded cluster when neither address nor file is given.
    gpu
        Start a ``dask_cuda.LocalCUDACluster`` (one worker per GPU) instead.

    Raises
    ------
    ClusterError
        If the scheduler cannot be reached, refuses the connection (TLS), or the
        scheduler file is missing, or ``gpu`` is asked without dask-cuda.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler and scheduler_file:
        raise ClusterError("give either --scheduler or --scheduler-file, not both")
    if scheduler or scheduler_file:
        where = scheduler or f"scheduler file {scheduler_file}"
        if scheduler_file and not Path(scheduler_file).is_file():
            raise ClusterError(f"scheduler file {scheduler_file} does not exist: start the cluster "
                               "first (cluster/local/start.sh) or give --scheduler ADDRESS")
        kwargs: dict[str, Any] = {"timeout": timeout}
        if security is not None:
            kwargs["security"] = security
        failure = None
        try:
            with dask.config.set({"distributed.comm.timeouts.connect": f"{timeout}s"}):
                client = Client(scheduler, scheduler_file=scheduler_file, **kwargs)
        except Exception as exc:  # OSError, TimeoutError, TLS errors ...
            failure = _connect_message(where, exc, timeout)
        if failure is not None:
            # The half-built Client still owns a loop thread. Collect it here, now that the
            # traceback is gone: left to the garbage collector, its __del__ may run inside the
            # next Client's __init__ and deadlock on the loop runner's lock (hangs forever).
            import gc

            gc.collect()
            raise ClusterError(failure)
        return client, None
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise ClusterError("--gpu needs dask-cuda: pip install 's2dask[gpu]'") from None
        cluster = LocalCUDACluster(threads_per_worker=threads_per_worker or 1,
                                   dashboard_address=":0" if dashboard else None)
        return Client(cluster), cluster
    n, t = local_cluster_size(workers, threads_per_worker)
    # a failed task is reported once, by the job, as one line; the workers' own tracebacks
    # of it would bury that line (S2DASK_DEBUG=1 keeps them)
    quiet = logging.CRITICAL if not os.environ.get("S2DASK_DEBUG") else logging.WARNING
    cluster = LocalCluster(n_workers=n, threads_per_worker=t, processes=True,
                           memory_limit=memory_limit, silence_logs=quiet,
                           dashboard_address=":0" if dashboard else None)
    return Client(cluster), cluster


def _connect_message(where: str, exc: Exception, timeout: float) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    low = text.lower()
    if "ssl" in low or "tls" in low or "certificate" in low:
        hint = ("the scheduler requires TLS: pass --tls-ca-file, --tls-cert and --tls-key (or set "
                "DASK_DISTRIBUTED__COMM__TLS__* ) with certificates signed by the cluster's CA")
    elif "timed out" in low or isinstance(exc, TimeoutError):
        hint = (f"no answer within {timeout:g} s: check the address and that the scheduler is running "
                "(a tls:// scheduler also times out a tcp:// client)")
    else:
        hint = "check the address and that the scheduler is running"
    return f"cannot connect to {where}: {text[:200]}; {hint}"


def worker_devices() -> dict:
    """The deep-learning backend of this process and the accelerators it sees."""
    from .model import _require_keras

    backend = _require_keras().backend.backend()
    gpus: list[str] = []
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        elif backend == "jax":
            import jax

            gpus = [str(d) for d in jax.devices() if d.platform != "cpu"]
        elif backend == "torch":
            import torch

            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver is reported as no device, not as a failed job
        gpus = []
    return {"backend": backend, "gpus": gpus, "tf_threads": _THREADS_SET.get("backend")}


def cluster_summary(client) -> dict:
    """Address, workers, threads, memory and devices of the cluster, for job records."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    try:
        devices = client.run(worker_devices)
    except Exception:  # a worker leaving at this moment must not fail the job
        devices = {}
    return {
        "devices": devices,
        "scheduler": info.get("address") or client.scheduler.address,
        "dashboard": getattr(client, "dashboard_link", None),
        "workers": len(workers),
        "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
        "memory_limit_bytes": sum(int(w.get("memory_limit") or 0) for w in workers.values()),
        "hosts": sorted({w.get("host", "") for w in workers.values()}),
    }
