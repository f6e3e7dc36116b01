"""s2dask.job.memory: the chunk-size rule measured by benchmarks/memory.py, and its one-line refusal."""

from __future__ import annotations

import pytest

from s2dask.errors import ParameterError
from s2dask.job.memory import (
    OPENVINO_BASELINE_BYTES,
    baseline_for,
    check_chunks_fit,
    fit_chunks,
    max_chunk_edge,
    task_bytes,
)

GIB = 2**30


def test_max_chunk_edge_from_the_memory_limit():
    assert max_chunk_edge(1.5 * GIB, 10) == 1024  # the small workers: default 2048 too big
    assert max_chunk_edge(2 * GIB, 10) == 2816
    assert max_chunk_edge(4 * GIB, 10) == 6144
    assert max_chunk_edge(4 * GIB, 10, threads_per_worker=2) < max_chunk_edge(4 * GIB, 10)
    assert max_chunk_edge(4 * GIB, 10, probabilities=True, n_classes=20) < max_chunk_edge(4 * GIB, 10)
    assert max_chunk_edge(1 * GIB, 10) == 0  # not even the model fits
    assert max_chunk_edge(None, 10) is None and max_chunk_edge(0, 10) is None
    # the rule is monotonic in the chunk and the bands
    assert task_bytes(2048, 10) > task_bytes(1024, 10) > task_bytes(1024, 4)


def _workers(limit, nthreads=1, n=2):
    return {f"tcp://127.0.0.1:{4000 + i}": {"memory_limit": int(limit), "nthreads": nthreads}
            for i in range(n)}


def test_check_chunks_fit_refuses_with_the_largest_that_fits():
    check_chunks_fit(2048, _workers(4 * GIB), 10)
    check_chunks_fit(1024, _workers(1.5 * GIB), 10)
    check_chunks_fit(8192, _workers(0), 10)  # no memory limit: nothing to check
    with pytest.raises(ParameterError) as err:
        check_chunks_fit(2048, {**_workers(4 * GIB), "tcp://x:1": {"memory_limit": int(1.5 * GIB),
                                                                    "nthreads": 1}}, 10)
    msg = str(err.value)
    assert msg == ("chunks of 2048 x 2048 pixels do not fit workers with a memory limit of 1.50 GiB "
                   "and 1 thread(s): the largest that fits is --chunks 1024 (or give the workers "
                   "more memory)")
    with pytest.raises(ParameterError, match=r"at least 1\.5 GiB"):
        check_chunks_fit(256, _workers(1 * GIB), 10)


def test_baseline_depends_on_the_engine():
    assert baseline_for("openvino") == OPENVINO_BASELINE_BYTES < baseline_for("tensorflow")
    assert baseline_for(None) == baseline_for("auto") == baseline_for("tensorflow")  # unknown: the larger
    assert max_chunk_edge(1.5 * GIB, 10, baseline_bytes=baseline_for("openvino")) == 3328
    check_chunks_fit(2048, _workers(1.5 * GIB), 10, baseline_bytes=baseline_for("openvino"))


def test_fit_chunks_caps_automatic_chunks_and_checks_given_ones():
    from types import SimpleNamespace as NS

    bundle = NS(bands=list(range(10)), classes=list(range(5)))
    tf, ov = NS(probabilities=False), NS(probabilities=False, engine="openvino")
    small = _workers(1.5 * GIB)
    assert fit_chunks((2048, 2048), small, bundle, tf, given=False) == (1024, 1024)
    assert fit_chunks((512, 512), small, bundle, tf, given=False) == (512, 512)
    assert fit_chunks((2048, 2048), _workers(0), bundle, tf, given=False) == (2048, 2048)  # no limit
    assert fit_chunks((2048, 2048), small, bundle, ov, given=False) == (2048, 2048)
    with pytest.raises(ParameterError, match="largest that fits is --chunks 1024"):
        fit_chunks((2048, 2048), small, bundle, tf, given=True)
    with pytest.raises(ParameterError, match="cannot hold the model"):
        fit_chunks((2048, 2048), _workers(1 * GIB), bundle, tf, given=False)
