"""The prediction graph of one scene (client side): one task per chunk of the output.

Each task (:func:`s2dask.job.worker.predict_and_store`) gets its chunk of the scene, predicts it,
writes its region of the Zarr store and returns its counts. With ``--smooth N`` (or any
neighbourhood computation) each task gets its chunk plus a halo of ``N // 2`` pixels instead
(:func:`s2dask.maps.halo.halo_array`) and still writes only its chunk. The tasks carry small,
picklable descriptions only: the model's :class:`~s2dask.job.worker.ModelRef`, the output
locations, the chunk mask (:class:`~s2dask.scene.mask.ChunkMask`) and the map extras
(:class:`~s2dask.maps.outputs.MapSpec`).
"""

from __future__ import annotations

import uuid
from typing import Any

import dask.array as da
import numpy as np

from ..errors import ParameterError
from ..io.retry import RetryPolicy
from ..io.storage import Location
from ..maps.halo import halo_array
from ..maps.outputs import map_spec
from .ledger import N_TOTALS
from .worker import ModelRef, predict_and_store

__all__ = ["prediction_graph"]


def prediction_graph(scene: Any, *, chunks: tuple[int, int], ref: ModelRef, store: Location,
                     markers: Location, options: Any, mask: Any, name: str) -> np.ndarray:
    """One task per chunk: each predicts, writes its region and returns its counts.

    Parameters
    ----------
    scene
        The ``(band, y, x)`` scene DataArray (its ``nodata`` attribute pads the halo).
    chunks
        ``(cy, cx)``: the output's chunks, one task each.
    ref, store, markers
        The model, the partial output's Zarr group and its ledger folder.
    options
        The job's :class:`~s2dask.job.run.JobOptions` (``probabilities``, ``uncertainty``, ``smooth``).
    mask
        The chunk mask (:class:`~s2dask.scene.mask.ChunkMask`) or None.
    name
        Names the graph's keys (the scene id).

    Returns
    -------
    numpy.ndarray
        The ``(ny, nx)`` grid of the tasks' delayed results.
    """
    data = scene.data
    target = da.core.normalize_chunks((data.shape[0], *chunks), data.shape)
    if ref.stride > 1 and (chunks[0] % ref.stride or chunks[1] % ref.stride):
        raise ParameterError(f"chunks {chunks[0]} x {chunks[1]} are not multiples of the model's stride "
                             f"{ref.stride}: give --chunks a multiple of {ref.stride}")
    maps = map_spec(uncertainty=options.uncertainty, smooth=options.smooth, chunks=chunks,
                    shape=data.shape[1:], model_halo=ref.halo)
    if maps is not None and maps.halo:  # each task reads its chunk plus a halo
        data = halo_array(data, chunks=chunks, halo=maps.halo, fill=scene.attrs.get("nodata", 0))
    elif data.chunks != target:  # every task must own whole Zarr chunks
        data = data.rechunk(target)
    nyb, nxb = len(data.chunks[1]), len(data.chunks[2])
    counts = da.map_blocks(
        predict_and_store, data, ref=ref, store=store, markers=markers,
        probabilities=options.probabilities, mask=mask, maps=maps, dtype="int64",
        retry=RetryPolicy.of(getattr(options, "retries", None)),
        chunks=((1,), (1,) * nyb, (1,) * nxb, (N_TOTALS,)), new_axis=3,
        meta=np.empty((0, 0, 0, 0), dtype="int64"),
        name=f"s2dask-predict-{name}-{uuid.uuid4().hex[:8]}",
    )
    return counts.to_delayed(optimize_graph=True).reshape(nyb, nxb)
