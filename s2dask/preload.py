"""What the fork server of an embedded cluster imports once for all its worker processes.

:func:`s2dask.cluster.start_fork_server` names this module in the server's preload list:
every worker process is then forked with distributed, numpy, GDAL (rasterio), the worker
side (:mod:`s2dask.worker`) and OpenVINO already in memory, instead of importing them
itself. OpenVINO comes through :func:`s2dask.openvino_ir.import_openvino` (no import-time
telemetry: a fork from a thread in the server would be reaped by it with a warning).
Imported by nothing else.
"""

from __future__ import annotations

import distributed  # noqa: F401
import numpy  # noqa: F401

from . import worker  # noqa: F401
from .openvino_ir import import_openvino

try:
    import_openvino()
except ImportError:  # pragma: no cover - openvino is a core dependency
    pass
