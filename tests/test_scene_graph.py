"""The scene graph builder against a fake block reader: no files, no IO (as stackstac's tests)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from s2dask.errors import ParameterError, SceneError
from s2dask.scene.graph import block_graph, chunk_pair
from s2dask.scene.reader import BlockReader


@dataclass(frozen=True)
class FakeReader:
    """Each pixel holds ``band * 1e6 + row * 1e3 + col``; records nothing, reads nothing."""

    n_bands: int = 3
    dtype: str = "float64"

    def __call__(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        b, y, x = np.meshgrid(np.arange(self.n_bands), np.arange(y0, y0 + height),
                              np.arange(x0, x0 + width), indexing="ij")
        return (b * 1e6 + y * 1e3 + x).astype(self.dtype)


def test_graph_has_one_task_per_chunk_and_assembles_the_reader_blocks():
    reader = FakeReader()
    assert isinstance(reader, BlockReader)
    arr = block_graph(reader, height=250, width=130, chunks=(100, 64))
    assert arr.shape == (3, 250, 130) and arr.dtype == np.float64
    assert arr.chunks == ((3,), (100, 100, 50), (64, 64, 2))
    assert len(arr.__dask_graph__()) == 3 * 3  # one task per spatial chunk, all bands in each
    got = arr.compute(scheduler="sync")
    np.testing.assert_array_equal(got, reader(0, 0, 250, 130))
    # the reader travels in the graph: it must survive pickling (distributed workers)
    assert pickle.loads(pickle.dumps(reader)) == reader


def test_graph_name_follows_the_data_identity():
    a = block_graph(FakeReader(), height=10, width=10, chunks=(5, 5), token=("f", 1))
    b = block_graph(FakeReader(), height=10, width=10, chunks=(5, 5), token=("f", 2))
    assert a.name != b.name  # a changed input file gets a new graph, never cached results
    assert a.name == block_graph(FakeReader(), height=10, width=10, chunks=(5, 5), token=("f", 1)).name


@pytest.mark.parametrize("chunks", [0, -3, (0, 5), (5,), True, "2048", 2.5])
def test_chunk_pair_refuses_what_is_not_a_positive_size(chunks):
    with pytest.raises(SceneError, match="chunk size must be a positive integer"):
        chunk_pair(chunks)
    with pytest.raises(ParameterError, match="invalid chunks="):
        chunk_pair(chunks, error=ParameterError)


def test_chunk_pair_accepts_one_size_or_a_pair():
    assert chunk_pair(512) == (512, 512)
    assert chunk_pair((256, 1024)) == (256, 1024)
    assert chunk_pair(np.int64(64)) == (64, 64)
