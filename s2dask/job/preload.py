"""What the fork server of an embedded cluster imports once for all its worker processes.

:func:`s2dask.job.cluster.start_fork_server` names this module in the server's preload list:
every worker process is then forked with distributed, numpy, GDAL (rasterio), the worker
side (:mod:`s2dask.job.worker`) and OpenVINO already in memory, instead of importing them
itself. OpenVINO comes through :func:`s2dask.model.openvino_ir.import_openvino` (no import-time
telemetry: a fork from a thread in the server would be reaped by it with a warning).
Imported by nothing else.

The server itself leaves at once when the client is gone: it holds no files and nobody reads
its exit code, but a normal interpreter exit would tear down everything it imported (about
0.3 s, during which it still holds the client's stdout and stderr open, so a pipe reading
the CLI's output waits for it). Its worker processes never run this: a fork server's
children leave with ``os._exit`` after their work.
"""

from __future__ import annotations

import atexit
import os
import sys

import distributed  # noqa: F401
import numpy  # noqa: F401

from ..model.openvino_ir import import_openvino
from . import worker  # noqa: F401
from .cluster import FORK_SERVER_PARENT_ENV

try:
    import_openvino()
except ImportError:  # pragma: no cover - openvino is a core dependency
    pass

_SERVER_PID = os.getpid()


def _leave_now() -> None:
    """The server's exit: flush, then leave without the interpreter's teardown. Registered
    after the imports above, it runs before their own exit handlers, which have nothing to
    do in the server (no client, no cluster, no file of its own). A process forked from it
    is left alone."""
    if os.getpid() == _SERVER_PID:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(0)


# only in the fork server: the child of the process that started it, importing this
if os.environ.get(FORK_SERVER_PARENT_ENV) == str(os.getppid()):
    atexit.register(_leave_now)
