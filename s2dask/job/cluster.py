"""Client side: make or join a Dask cluster, and describe it.

:func:`connect` joins a running scheduler (TCP or TLS, :func:`make_security`) or starts
an embedded ``LocalCluster`` sized by :func:`local_cluster_size`, its worker processes
forked from a server that has imported the worker side once (:func:`start_fork_server`);
:func:`cluster_summary`
and :func:`host_thread_counts` describe it for job records and thread sizing. Nothing
here runs on workers: the model plugin, the per-process model cache and the task
functions are in :mod:`s2dask.job.worker`.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ClusterError
from ..model.backend import worker_devices

__all__ = [
    "close_cluster",
    "cluster_kind",
    "connect",
    "prepare_connect",
    "make_security",
    "local_cluster_size",
    "cluster_summary",
    "host_thread_counts",
    "register_plugin",
    "start_fork_server",
]

log = logging.getLogger(__name__)


#: what the fork server imports once, so that each worker process starts with it in memory
WORKER_PRELOAD = ("s2dask.job.preload",)
#: the pid of the process that started the fork server, as the server finds it in its
#: environment: how :mod:`s2dask.job.preload` knows it is being imported by that very server
FORK_SERVER_PARENT_ENV = "S2DASK_FORK_SERVER_PARENT"
_METHOD_KEY = "distributed.worker.multiprocessing-method"
#: the configuration of the jemalloc that pyarrow's library carries (read when it loads)
_ARROW_JEMALLOC_ENV = "JE_ARROW_MALLOC_CONF"


def start_fork_server() -> bool:
    """Start embedded workers from a fork server that has the worker side imported.

    Worker processes of a ``LocalCluster`` are spawned by default: each new interpreter
    imports distributed, numpy, rasterio and :mod:`s2dask.job.worker` (and OpenVINO) again,
    about two core-seconds apiece, all competing for the same cores as the client's own
    imports. A ``forkserver`` imports them once, in a single-threaded server process,
    and forks every worker (and every worker a nanny restarts) from it. Sets
    ``distributed.worker.multiprocessing-method`` to ``forkserver`` for this process and
    starts the server now, in the background, so that the server's imports overlap the
    caller's. Idempotent.

    Nothing changes where the user chose a start method (the
    ``DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD`` environment variable, or a
    configured value other than ``spawn``), or where the platform has no fork server.

    What the server imports is :mod:`s2dask.job.preload` (OpenVINO included; TensorFlow never:
    it is not safe to fork once imported). It forks with no other thread running: the
    background thread of the jemalloc in pyarrow's library (loaded with pandas) is turned
    off by ``JE_ARROW_MALLOC_CONF=background_thread:false`` unless that variable is set.

    Returns
    -------
    bool
        Whether the embedded workers will be forked from the server.
    """
    import multiprocessing
    import multiprocessing.forkserver

    import dask
    import distributed  # noqa: F401  (its configuration: the start method, the nanny's environment)

    method = dask.config.get(_METHOD_KEY, "spawn")
    if method == "forkserver":
        return True
    if (os.environ.get("DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD") or method != "spawn"
            or "forkserver" not in multiprocessing.get_all_start_methods()):
        return False
    # the server is the parent of every worker: give it the environment a nanny would set
    # before spawning one (one thread for OpenMP/BLAS pools; memory trimming)
    env = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.setdefault("PYTHONHASHSEED", "6640")  # as a nanny sets it for its workers
    # one thread in the server when it forks: pyarrow (imported by pandas) loads a jemalloc
    # that starts a background purging thread, whose state a fork would leave undefined in
    # every worker (Arrow's default pool is mimalloc: that jemalloc is not used for data)
    os.environ.setdefault(_ARROW_JEMALLOC_ENV, "background_thread:false")
    os.environ[FORK_SERVER_PARENT_ENV] = str(os.getpid())
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    dask.config.set({_METHOD_KEY: "forkserver"})
    multiprocessing.forkserver.ensure_running()
    return True


def host_thread_counts(client) -> dict[str, int]:
    """``{host: total Dask threads}`` over the cluster's current workers.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    """
    counts: dict[str, int] = collections.Counter()
    for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
        host = info.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]
        counts[host] += int(info.get("nthreads", 1))
    return dict(counts)


def register_plugin(client, plugin, *, attempts: int = 3) -> None:
    """``client.register_plugin(plugin)``, again when a worker left while it was delivered.

    The scheduler keeps the plugin for workers that join later and sends it to every
    current worker; a worker retired or lost at that moment makes the broadcast fail with
    a closed connection although the others have it. Registering again is harmless (the
    model plugin builds each model once per process).

    Raises
    ------
    ClusterError
        If the connection keeps failing ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        try:
            client.register_plugin(plugin)
            return
        except OSError as exc:  # distributed's CommClosedError: a worker went away
            if attempt == attempts:
                raise ClusterError(f"could not deliver the model to the workers of "
                                   f"{client.scheduler.address}: {' '.join(str(exc).split())[:200]}; "
                                   "workers keep leaving: check their logs") from None
            log.info("a worker left while the model was delivered (%s): again", exc)


# ---------------------------------------------------------------- clusters


def local_cluster_size(workers: int | None = None, threads_per_worker: int | None = None, *,
                       device: str = "cpu") -> tuple[int, int]:
    """Workers and threads for an embedded LocalCluster on this machine.

    The default is one single-threaded worker process per core: each task's forward
    pass then gets one backend thread and no core runs two compute threads. Where the
    machine has a GPU (``device="gpu"``) it is one worker with a thread per core: the
    threads read, decode and write chunks while the GPU predicts, and the model is loaded
    and compiled for the GPU once, not in every process (16 processes each starting JAX
    on one GPU took 51 s before the first chunk; benchmarks/gpu_tile.py).

    Parameters
    ----------
    workers, threads_per_worker
        What the user asked for (``None``: derived from the cores).
    device
        ``"cpu"`` or ``"gpu"``: what this machine computes on
        (:func:`s2dask.model.engines.detect_device`).
    """
    from dask.system import CPU_COUNT

    cores = max(1, CPU_COUNT)
    if workers is None and threads_per_worker is None:
        return (1, cores) if device == "gpu" else (cores, 1)
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

    Parameters
    ----------
    ca_file, cert, key
        The cluster's CA certificate and the client's certificate and key (all or none).
    require_encryption
        Refuse unencrypted connections (default: yes).

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


def cluster_kind(scheduler: str | None = None, scheduler_file: str | None = None,
                 gpu: bool = False) -> str:
    """What :func:`connect` does with these options: ``"remote"`` (join a running
    scheduler), ``"gpu"`` (start dask-cuda) or ``"embedded"`` (start a LocalCluster)."""
    if scheduler or scheduler_file:
        return "remote"
    return "gpu" if gpu else "embedded"


def prepare_connect(*, scheduler: str | None = None, scheduler_file: str | None = None,
                    gpu: bool = False, dashboard: bool = True, **_: Any) -> None:
    """Import now what :func:`connect` with the same keywords will import, and start the
    fork server of an embedded cluster.

    Python's module locks can fail two threads importing modules of one package at once
    (dask's modules import each other: a ``KeyError: 'dask'`` in the caller's import of
    ``dask.array``, in about one ``classify`` start in four). So
    :class:`s2dask.job.startup.ClusterStart`'s thread calls this while its caller waits: it
    imports distributed (and starts the fork server, whose own imports run in another
    process), and for a local cluster also what the scheduler's event-loop thread would
    import when its HTTP server starts: the routes of ``distributed.scheduler.http.routes``
    and the bokeh dashboard. Takes :func:`connect`'s keywords (the others are ignored).
    """
    import importlib

    import dask
    import distributed  # noqa: F401

    kind = cluster_kind(scheduler, scheduler_file, gpu)
    # connect's own s2dask imports too: imported by its thread while the caller imports
    # s2dask.job.run, they would be two threads importing modules of one package at once
    from ..model import engines  # noqa: F401
    from . import watch  # noqa: F401

    if kind == "remote":
        return
    if kind == "embedded":
        start_fork_server()
    names = list(dask.config.get("distributed.scheduler.http.routes", []) or [])
    if dashboard:
        names.append("distributed.dashboard.scheduler")
    dlog = logging.getLogger("distributed")
    level = dlog.level
    dlog.setLevel(max(level, logging.WARNING))  # distributed.http.proxy logs at import (INFO)
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:  # no bokeh: distributed serves no dashboard either
                pass
    finally:
        dlog.setLevel(level)


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
        Start a ``dask_cuda.LocalCUDACluster`` (one worker per GPU, by default with the
        cores shared out among them as threads) instead.

    Raises
    ------
    ClusterError
        If nothing listens at ``scheduler`` or what answers there is not a Dask scheduler
        (:func:`s2dask.job.watch.check_scheduler`), if the scheduler cannot be reached,
        refuses the connection (TLS), or the
        scheduler file is missing, or ``gpu`` is asked without dask-cuda.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler and scheduler_file:
        raise ClusterError("give either --scheduler or --scheduler-file, not both")
    kind = cluster_kind(scheduler, scheduler_file, gpu)
    if kind == "remote":
        where = scheduler or f"scheduler file {scheduler_file}"
        if scheduler_file and not Path(scheduler_file).is_file():
            raise ClusterError(f"scheduler file {scheduler_file} does not exist: start the cluster "
                               "first (cluster/local/start.sh) or give --scheduler ADDRESS")
        if scheduler:  # something that answers but is not a Dask scheduler: one line, now
            from .watch import check_scheduler

            check_scheduler(scheduler, timeout=timeout, security=security)
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
    if kind == "gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise ClusterError("--gpu needs dask-cuda: pip install 's2dask[gpu]'") from None
        from dask.system import CPU_COUNT
        from dask_cuda.utils import get_n_gpus

        # a GPU worker's threads read, decode and write chunks while its GPU predicts
        threads = threads_per_worker or max(1, CPU_COUNT // max(1, get_n_gpus()))
        cluster = LocalCUDACluster(threads_per_worker=threads,
                                   dashboard_address=":0" if dashboard else None)
        return Client(cluster), cluster
    from ..model.engines import detect_device

    n, t = local_cluster_size(workers, threads_per_worker, device=detect_device())
    start_fork_server()
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


def cluster_summary(client) -> dict:
    """Address, workers, threads, memory and devices of the cluster, for job records.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    """
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


def close_cluster(client, cluster=None, *, timeout: float = 60) -> None:
    """Close a client and the embedded cluster it was made with, never failing the caller.

    A job's outputs are committed before this runs, so a worker that is slow to stop (a
    nanny's kill timing out on a loaded machine) is logged, not raised.
    """
    try:
        if client is not None:
            client.close(timeout=timeout if client.status == "running" else 5)
    except (TimeoutError, OSError) as exc:
        log.warning("the client did not close cleanly: %s", exc or type(exc).__name__)
    try:
        if cluster is not None:
            cluster.close(timeout=timeout)
    except (TimeoutError, OSError) as exc:
        log.warning("the embedded cluster did not stop cleanly: %s", exc or type(exc).__name__)
