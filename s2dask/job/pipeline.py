"""Run a batch's scenes with two in flight, so the cluster never idles between scenes.

Scenes of a batch used to run one after another: while a scene's COG and quick-look were
written and the next scene was laid out, the workers waited. :func:`run_pipelined` overlaps
them: scene ``k + 1``'s chunk tasks are submitted as soon as scene ``k``'s are, and scene
``k`` is then finished (its chunks awaited, its COG task, record and commit) while ``k + 1``
computes. The scheduler runs tasks of an earlier submission first (Dask orders them by
submission), so ``k + 1``'s chunks fill the workers exactly when ``k``'s run out; ``k``'s
COG task is submitted with a higher priority so it goes next, not after all of ``k + 1``.

Bounds: at most two scenes have tasks on the cluster; scene ``k + 2`` is submitted only
once scene ``k`` is committed or failed. ``items`` may be lazy (the job opens and checks
each scene when asked): the item after the one just submitted is asked for before the
previous one is finished, so its preparation overlaps the computation. Memory stays
bounded by chunks: every worker still runs one chunk per thread, the extra scene only adds
queued task descriptions.

Failures stay per scene: a scene whose submission or finish fails is reported to
``failed`` and the others go on (``failed`` re-raises to stop the batch, as a single-scene
job does). On an interrupt (or any error ``failed`` re-raises) every scene still in flight
is cancelled.

This module knows nothing about scenes or outputs: :mod:`s2dask.job.run` gives it the stages.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from ..errors import S2DaskError

__all__ = ["run_pipelined", "MAX_IN_FLIGHT"]

#: scenes with tasks on the cluster at once
MAX_IN_FLIGHT = 2

Item = TypeVar("Item")
Flight = TypeVar("Flight")
_END = object()  # no more items


def run_pipelined(
    items: Iterable[Item],
    *,
    submit: Callable[[Item, Flight | None], Flight],
    finish: Callable[[Flight], None],
    cancel: Callable[[Flight], None],
    failed: Callable[[Item, S2DaskError], None],
) -> None:
    """Submit each item's tasks, then finish the previous item while this one computes.

    Parameters
    ----------
    items
        What to run, in order (the job's prepared scenes).
    submit
        ``submit(item, previous)``: queue the item's tasks on the cluster and return its
        in-flight handle; ``previous`` is the handle of the item still in flight (or
        ``None``), whose tasks run before this one's.
    finish
        ``finish(flight)``: wait for a flight's tasks and complete it (records its result).
    cancel
        ``cancel(flight)``: drop a flight's tasks (on an interrupt or a re-raised error).
    failed
        ``failed(item, error)``: record an item's failure; re-raise to stop the batch.

    Raises
    ------
    S2DaskError
        Whatever ``failed`` re-raises (the in-flight items are cancelled first).
    """
    pending: tuple[Item, Flight] | None = None
    queue = iter(items)
    try:
        item = next(queue, _END)
        while item is not _END:
            try:
                flight = submit(item, pending[1] if pending else None)
            except S2DaskError as exc:
                failed(item, exc)
                item = next(queue, _END)
                continue
            # the following item is made ready (a scene opened and checked) now, while this
            # one's tasks and the previous one's compute, not after the previous one finished
            following = next(queue, _END)
            if pending is not None:
                done, pending = pending, (item, flight)
                _finish_one(done, finish, failed)
            else:
                pending = (item, flight)
            item = following
        if pending is not None:
            done, pending = pending, None
            _finish_one(done, finish, failed)
    except BaseException:
        if pending is not None:
            cancel(pending[1])
        raise


def _finish_one(done: tuple, finish: Callable, failed: Callable) -> None:
    item, flight = done
    try:
        finish(flight)
    except S2DaskError as exc:
        failed(item, exc)
