"""The chunk ledger of a job's partial output: which chunks are done, and their class counts.

Each prediction task leaves ``<partial>/chunks/<iy>_<ix>.json`` (written atomically) once
its region of the Zarr store is written: the chunk's position, its class counts, its storage
retries and the seconds of its steps. A
resumed job computes only chunks without a marker and sums the counts of the others;
before that, :func:`check_resumable` refuses a partial output made with other settings.
The ledger belongs to the partial output only: :func:`clear_ledger` removes it from a
committed one.
Markers are written on workers and read on the client.
"""

from __future__ import annotations

import json
from typing import Any, Collection, Mapping

import numpy as np

from ..errors import OutputExistsError
from ..io.records import json_text_default
from ..io.retry import RetryCounter
from ..io.storage import Location, atomic_write_text
from ..scene.mask import MASK_CODES

__all__ = ["N_COUNTS", "N_MASK_CODES", "N_TOTALS", "PARAMS_FILE", "MARKERS_DIR", "TASK_STEPS",
           "write_marker", "read_marker", "read_ledger", "check_resumable", "clear_ledger",
           "chunk_totals", "recorded_chunks", "chunk_id"]

#: bincount length: every uint8 class value, 255 = nodata
N_COUNTS = 256
#: mask codes counted per chunk (:data:`s2dask.scene.mask.MASK_CODES`)
N_MASK_CODES = len(MASK_CODES)
#: what a prediction task returns and a marker holds: class counts, then mask code counts
N_TOTALS = N_COUNTS + N_MASK_CODES
#: the settings a partial output was made with (compared on resume)
PARAMS_FILE = "params.json"
#: the folder of chunk markers inside a partial output
MARKERS_DIR = "chunks"
#: a prediction task's steps whose seconds a marker records: reading (and decoding) the
#: chunk, the model (mask codes, forward pass, outputs), writing its region
TASK_STEPS = ("read", "model", "write")


def write_marker(markers: Location, chunk: tuple[int, int], y: tuple[int, int], x: tuple[int, int],
                 counts: np.ndarray, mask_counts: np.ndarray | None = None, *,
                 retries: RetryCounter | None = None,
                 seconds: Mapping[str, float | None] | None = None) -> None:
    """Record chunk ``(iy, ix)`` (rows ``y``, columns ``x``) as done with its class ``counts``
    (and its mask code counts).

    ``retries``: the storage retries the chunk needed (its reads and writes), recorded as
    ``"retries"`` (a number) and ``"retry_reasons"`` (the first few, e.g. ``"503 SlowDown"``).
    ``seconds``: how long the task's steps took (``read``, ``model``, ``write``; ``None``
    where not known), recorded as ``"seconds"``.

    Raises
    ------
    StorageError
        If the marker cannot be written.
    """
    iy, ix = chunk
    record: dict[str, Any] = {
        "chunk": [iy, ix], "y": list(y), "x": list(x),
        "counts": {str(v): int(c) for v, c in enumerate(counts) if c},
        "mask_counts": [int(c) for c in (mask_counts if mask_counts is not None else ())]}
    if retries is not None:
        record["retries"] = retries.retries
        record["retry_reasons"] = list(retries.reasons)
    if seconds is not None:
        record["seconds"] = {k: (None if v is None else round(float(v), 4)) for k, v in seconds.items()}
    text = json.dumps(record)
    atomic_write_text(markers.join(f"{chunk_id(iy, ix)}.json"), text)


def read_marker(text: str) -> np.ndarray:
    """The class counts then mask code counts (``N_TOTALS`` int64) recorded in a marker's text."""
    data = json.loads(text)
    counts = np.zeros(N_TOTALS, dtype="int64")
    for v, c in data["counts"].items():
        counts[int(v)] = c
    mask = data.get("mask_counts") or []
    counts[N_COUNTS:N_COUNTS + len(mask)] = mask
    return counts


def chunk_id(iy: int, ix: int) -> str:
    """``"iy_ix"``: how the ledger names chunk ``(iy, ix)`` (its marker is ``iy_ix.json``)."""
    return f"{iy}_{ix}"


def _marker_chunk(marker: Location) -> str:
    """The :func:`chunk_id` of a marker."""
    return marker.name[:-len(".json")]


def read_ledger(markers: Location) -> tuple[set[str], np.ndarray]:
    """``({"iy_ix", ...}, summed class and mask code counts)`` of the chunks already done."""
    done: set[str] = set()
    totals = np.zeros(N_TOTALS, dtype="int64")
    for marker in markers.list("*.json"):
        done.add(_marker_chunk(marker))
        totals += read_marker(marker.read_text())
    return done, totals


def check_resumable(partial: Location, markers: Location, want: Mapping[str, Any]) -> int:
    """Refuse to resume ``partial`` unless its settings equal ``want``; return chunks done.

    Parameters
    ----------
    partial
        The unfinished output folder (holding :data:`PARAMS_FILE`).
    markers
        Its folder of chunk markers.
    want
        This run's values of the settings that must not change (model hash, chunks, scene).

    Raises
    ------
    OutputExistsError
        If the parameters are unreadable or one of ``want`` differs.
    """
    try:
        params = json.loads(partial.join(PARAMS_FILE).read_text())
    except (OSError, ValueError):
        raise OutputExistsError(f"the unfinished output {partial} has no readable params.json, so "
                                "it cannot be resumed: pass --overwrite to start again") from None
    for key, value in want.items():
        if json.loads(json.dumps(params.get(key), default=json_text_default)) != \
                json.loads(json.dumps(value, default=json_text_default)):
            raise OutputExistsError(f"cannot resume {partial}: its {key} differs from this run's; "
                                    "pass --overwrite to start again with the new settings")
    return len(markers.list("*.json"))


def chunk_totals(markers: Location, *, kept: Collection[str] = ()) -> tuple[dict, dict]:
    """The storage retries of every finished chunk and the task time of this run's, summed for
    the job record (one pass over the markers).

    Parameters
    ----------
    markers
        The partial output's folder of chunk markers.
    kept
        The chunks (``"iy_ix"``) a resumed run found finished: their retries count (they are
        the output's), their task time does not (another run spent it).

    Returns
    -------
    tuple of dict
        The retries: ``{"total", "chunks_retried", "max_per_chunk", "reasons"}`` (``reasons``:
        up to 5 distinct ones). The task time: :data:`TASK_STEPS` seconds summed over this
        run's chunks that recorded them (``None`` where none did), ``"chunks"`` counted,
        ``"read_chunks"``, the chunks whose read time is known (a read fused into the task),
        and ``"kept_chunks"``, the finished chunks of ``kept`` left out.
    """
    total = retried = most = 0
    reasons: list[str] = []
    steps: dict[str, float | None] = dict.fromkeys(TASK_STEPS)
    chunks = read_chunks = kept_chunks = 0
    for marker in markers.list("*.json"):
        data = json.loads(marker.read_text())
        n = int(data.get("retries") or 0)
        total, retried, most = total + n, retried + (n > 0), max(most, n)
        reasons += [r for r in data.get("retry_reasons") or [] if r not in reasons][:5 - len(reasons)]
        if _marker_chunk(marker) in kept:
            kept_chunks += 1
            continue
        seconds = data.get("seconds") or {}
        chunks += bool(seconds)
        read_chunks += seconds.get("read") is not None
        for step in TASK_STEPS:
            if seconds.get(step) is not None:
                steps[step] = (steps[step] or 0.0) + float(seconds[step])
    retries = {"total": total, "chunks_retried": retried, "max_per_chunk": most, "reasons": reasons}
    return retries, {**{k: None if v is None else round(v, 3) for k, v in steps.items()},
                     "chunks": chunks, "read_chunks": read_chunks, "kept_chunks": kept_chunks}


def recorded_chunks(partial: Location) -> tuple[int, int] | None:
    """The chunks an unfinished output was made with (its ``params.json``), if readable."""
    try:
        chunks = json.loads(partial.join(PARAMS_FILE).read_text()).get("chunks")
        return (int(chunks[0]), int(chunks[1]))
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return None


def clear_ledger(output: Location) -> None:
    """Remove the resume bookkeeping (markers and parameters) from a finished output.

    Called once the output is committed: a complete output holds its data and its record
    only. A removal that fails leaves the output complete (and is not an error).
    """
    for item in (output.join(MARKERS_DIR), output.join(PARAMS_FILE)):
        try:
            if item.exists():
                item.rm()
        except OSError:
            pass
