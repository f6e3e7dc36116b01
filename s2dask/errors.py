"""The exceptions s2dask raises on bad input or a failed job.

Every error a user can cause derives from :class:`S2DaskError`. Each subclass also
inherits the builtin it resembles, so ``except ValueError`` keeps working for callers
who do not know s2dask. Only :mod:`s2dask.cli` catches them, to print one line and
exit with code 2.

Messages say what is wrong, which input, and how to fix it, on one line.
"""

from __future__ import annotations

__all__ = [
    "S2DaskError",
    "SamplesError",
    "BandError",
    "ModelError",
    "SceneError",
    "OutputExistsError",
    "ClusterError",
    "StorageError",
    "JobError",
    "ParameterError",
    "detached",
]


class S2DaskError(Exception):
    """Base class of every error s2dask reports to a user."""

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


def detached(exc: BaseException) -> BaseException:
    """``exc`` without its causes, so that it survives the trip from a worker to the client.

    distributed pickles a task's exception with its whole ``__cause__``/``__context__``
    chain; one cause that does not unpickle (botocore's ``ClientError`` does not) turns the
    error into a plain ``Exception("StorageError(...)")`` on the client, and the one-line
    message is lost. Task functions raise their :class:`S2DaskError` through this: the
    message already says what the cause was.
    """
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    return exc.with_traceback(None)


class SamplesError(S2DaskError, ValueError):
    """A labelled pixel table is unusable (missing column, bad values, too few samples)."""


class BandError(S2DaskError, ValueError):
    """A band name is unknown, missing from an input, or duplicated."""


class ModelError(S2DaskError, ValueError):
    """A model bundle is missing, corrupt, tampered with, or violates its contract."""


class SceneError(S2DaskError, ValueError):
    """A scene cannot be opened or its rasters disagree (CRS, grid, bands)."""


class OutputExistsError(S2DaskError, FileExistsError):
    """An output already exists and neither overwrite nor resume was asked for."""


class ClusterError(S2DaskError, ConnectionError):
    """A Dask cluster cannot be reached or refused the connection."""


class StorageError(S2DaskError, OSError):
    """Reading or writing an output location failed (permissions, disk full, bucket)."""


class JobError(S2DaskError, RuntimeError):
    """A classification job failed for a reason other than its inputs."""


class ParameterError(S2DaskError, ValueError):
    """An option has an impossible value (chunk size <= 0, unknown method ...)."""


class AreaError(S2DaskError, ValueError):
    """An area of interest (``--aoi``) or the maps of a mosaic are unusable (no polygons, no CRS,
    different class tables)."""


class AreaMissError(AreaError):
    """The area of interest misses a scene entirely: in a batch the scene is skipped."""
