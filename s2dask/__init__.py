"""s2dask: classify whole Sentinel-2 scenes with Keras models on Dask.

The public API is imported lazily so that ``import s2dask`` stays quick: TensorFlow,
Dask and GDAL are loaded by the functions that need them.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("s2dask")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "S2DaskError",
    "open_scene",
    "grid_to_raster",
    "read_samples",
    "split_samples",
    "fold_indices",
    "sample",
    "train",
    "evaluate",
    "load_model",
    "ModelBundle",
    "bundle",
    "classify",
    "predict",
    "mosaic",
]

_LAZY = {
    "S2DaskError": "s2dask.errors",
    "open_scene": "s2dask.scene",
    "grid_to_raster": "s2dask.scene.grid",
    "read_samples": "s2dask.training.samples",
    "split_samples": "s2dask.training.samples",
    "fold_indices": "s2dask.training.samples",
    "sample": "s2dask.training.labels",
    "train": "s2dask.training.train",
    "evaluate": "s2dask.training.train",
    "load_model": "s2dask.model.bundle",
    "ModelBundle": "s2dask.model.bundle",
    "bundle": "s2dask.model.foreign",
    "classify": "s2dask.job.run",
    "predict": "s2dask.job.predict_xr",
    "mosaic": "s2dask.maps.mosaic",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 's2dask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
