"""A Dask worker preload for tests: one chunk's scene read never finishes.

Load it into real worker processes with ``DASK_DISTRIBUTED__WORKER__PRELOAD='["_hang"]'`` and
this folder on ``PYTHONPATH``; then ``S2DASK_TEST_HANG=Y0,X0`` makes the read of the window
whose top-left pixel is ``(Y0, X0)`` sleep for ever. With ``S2DASK_TEST_HANG_ONCE=FILE`` only
the first read to create ``FILE`` hangs (one chunk on one worker); every hang appends the
worker's pid to ``S2DASK_TEST_HANG_LOG`` when set. Nothing of s2dask itself is replaced: the
reader is wrapped, the job and its watch run as they do.
"""

from __future__ import annotations

import os
import time


def _claim() -> bool:
    once = os.environ.get("S2DASK_TEST_HANG_ONCE")
    if not once:
        return True
    try:
        fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def dask_setup(worker) -> None:
    spec = os.environ.get("S2DASK_TEST_HANG")
    if not spec:
        return
    y0, x0 = (int(v) for v in spec.split(","))
    from s2dask.scene.reader import RasterReader

    read = RasterReader.__call__

    def hanging(self, y, x, height, width):
        if (y, x) == (y0, x0) and _claim():
            log = os.environ.get("S2DASK_TEST_HANG_LOG")
            if log:
                with open(log, "a") as f:
                    f.write(f"{os.getpid()}\n")
            while True:
                time.sleep(1)
        return read(self, y, x, height, width)

    RasterReader.__call__ = hanging
