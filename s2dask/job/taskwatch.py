"""Client side: notice a chunk task that never finishes, retry it on another worker, then stop.

The scheduler watch (:mod:`s2dask.job.watch`) covers a scheduler that stops answering. A
worker can answer and still never finish its task: a read stuck on a network file system, a
wedged GPU. :class:`TaskWatch` bounds that wait. Every worker's heartbeat tells the
scheduler how long each of its tasks has been executing (``WorkerState.executing``); every
few seconds the watch asks the scheduler for those of the job's tasks (one small call,
:func:`executing_tasks`) and compares each with a bound: ``--task-timeout`` when given, else
:data:`TASK_TIMEOUT_FACTOR` times the job's own median chunk time, at least
:data:`TASK_TIMEOUT_MIN` seconds (before any chunk has finished:
``TASK_TIMEOUT_FACTOR * TASK_TIMEOUT_MIN``). A task over its bound has its worker restarted
(its nanny starts a fresh process; a worker without a nanny is removed), which stops the
stuck thread and sends the task to the workers still running (:func:`retry_elsewhere`). After ``retries`` such retries of one chunk the job stops with one
:class:`~s2dask.errors.JobError` line: which chunk, how long, where, that the finished
chunks are kept and the ``--resume`` command.

:func:`executing_tasks` and :func:`retry_elsewhere` run on the scheduler (through
``Client.run_on_scheduler``), which therefore needs s2dask importable, as every recipe under
``cluster/`` has it; where it has not, the watch says so once in the log and stands aside.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any, Hashable

from ..errors import JobError, ParameterError

__all__ = ["TaskWatch", "check_task_timeout", "executing_tasks", "retry_elsewhere",
           "TASK_TIMEOUT_FACTOR", "TASK_TIMEOUT_MIN", "DEFAULT_TASK_RETRIES"]

log = logging.getLogger(__name__)

#: a task is stuck past this many times the job's median chunk time ...
TASK_TIMEOUT_FACTOR = 10.0
#: ... and never before this many seconds
TASK_TIMEOUT_MIN = 60.0
#: retries of a stuck chunk on other workers before the job stops
DEFAULT_TASK_RETRIES = 2


def check_task_timeout(timeout: Any, retries: Any = DEFAULT_TASK_RETRIES) -> None:
    """Refuse a task timeout that is not ``None`` or a positive number of seconds, and a
    negative or non-integer number of retries.

    Raises
    ------
    ParameterError
        One line, with an example.
    """
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ParameterError(f"the task timeout must be a positive number of seconds, got {timeout!r}: "
                             "use for example --task-timeout 600 (or leave it out: 10 x the median "
                             "chunk time, at least 60 s)")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ParameterError(f"task retries must be a whole number >= 0, got {retries!r}")


# ------------------------------------------------------------------------ on the scheduler


def _owners(ts: Any, wanted: set, depth: int = 8) -> list:
    """The tasks of ``wanted`` that ``ts`` is, or that depend on it (a few levels up)."""
    if ts in wanted:
        return [ts]
    found, frontier, seen = [], [ts], {ts}
    for _ in range(depth):
        step = []
        for t in frontier:
            for d in t.dependents:
                if d not in seen:
                    seen.add(d)
                    (found if d in wanted else step).append(d)
        if found or not step:
            return found
        frontier = step
    return found


def executing_tasks(dask_scheduler: Any, client: str) -> list[tuple[Hashable, str, float, list]]:
    """Scheduler side: ``(key, worker, seconds executing, [keys of the client's futures it
    is for])`` of every task executing on a worker for the futures of ``client`` (from the
    workers' last heartbeats)."""
    cs = dask_scheduler.clients.get(client)
    wanted = set(cs.wants_what) if cs is not None else set()
    rows = []
    for address, ws in dask_scheduler.workers.items():
        for ts, seconds in ws.executing.items():
            owners = _owners(ts, wanted) if wanted else []
            if owners:
                rows.append((ts.key, address, float(seconds), [o.key for o in owners]))
    return rows


def retry_elsewhere(dask_scheduler: Any, worker: str) -> bool:
    """Scheduler side: restart ``worker`` in the background (its nanny starts a fresh process;
    a worker without a nanny is removed). The stuck thread goes with the old process and its
    tasks go back to the scheduler, which gives them to the workers still running (no
    restriction is added: one would leave the task without a worker if those went too).
    Whether ``worker`` was still there."""
    if worker not in dask_scheduler.workers:
        return False
    asyncio.ensure_future(dask_scheduler.restart_workers(
        [worker], wait_for_workers=False, on_error="return",
        stimulus_id=f"s2dask-stuck-task-{time.time()}"))
    return True


# ------------------------------------------------------------------------ on the client


class TaskWatch:
    """Bounds how long a job's chunk tasks may execute; see the module docstring.

    Parameters
    ----------
    client
        The job's ``distributed.Client``.
    labels
        ``{future key: "chunk y=0:512 x=512:1024 of SCENE"}``: the futures watched, named for
        the error line.
    timeout
        Seconds a task may execute; ``None``: :data:`TASK_TIMEOUT_FACTOR` x the median chunk
        time, at least :data:`TASK_TIMEOUT_MIN`.
    retries
        Retries of a stuck chunk on other workers before the job stops.
    resume, kept
        The ``--resume`` command and where the finished chunks are, for the error line.
    every
        Seconds between looks at the scheduler (``None``: a quarter of the bound, 1 to 5 s;
        each look is one line in the scheduler's log at INFO).

    Raises
    ------
    ParameterError
        If ``timeout`` or ``retries`` is invalid (:func:`check_task_timeout`).
    """

    def __init__(self, client: Any, labels: dict[Hashable, str], *, timeout: float | None = None,
                 retries: int = DEFAULT_TASK_RETRIES, resume: str, kept: str | None = None,
                 every: float | None = None):
        check_task_timeout(timeout, retries)
        self.client, self.labels, self.timeout, self.retries = client, dict(labels), timeout, retries
        self.resume, self.kept, self.every = resume, kept, every
        self.durations: list[float] = []  # seconds of each finished chunk seen executing
        self.attempts: dict[Hashable, int] = {}  # stuck-and-retried count per chunk
        self._started: dict[tuple[Hashable, str], float] = {}  # (key, worker) -> start (client clock)
        self._chunk_start: dict[Hashable, float] = {}
        self._acted: dict[tuple[Hashable, str], float] = {}  # when its worker was restarted
        self._last = 0.0
        self._off = False

    def bound(self) -> float:
        """Seconds a task may execute now."""
        if self.timeout is not None:
            return float(self.timeout)
        if not self.durations:
            return TASK_TIMEOUT_FACTOR * TASK_TIMEOUT_MIN
        return max(TASK_TIMEOUT_MIN, TASK_TIMEOUT_FACTOR * statistics.median(self.durations))

    def finished(self, key: Hashable) -> None:
        """A watched future finished: its time counts towards the median."""
        start = self._chunk_start.pop(key, None)
        if start is not None:
            self.durations.append(time.monotonic() - start)

    def check(self) -> None:
        """Look at the job's executing tasks (at most every ``every`` s); retry one over its
        bound on another worker, or stop the job when it has no retries left.

        Raises
        ------
        JobError
            One line when a chunk stayed over its bound ``retries + 1`` times.
        """
        now = time.monotonic()
        every = self.every if self.every is not None else min(5.0, max(1.0, self.bound() / 4))
        if self._off or now - self._last < every:
            return
        self._last = now
        rows = self._run(executing_tasks, client=self.client.id)
        if rows is None:
            return
        now = time.monotonic()
        for key, worker, seconds, owners in rows:
            owners = [o for o in owners if o in self.labels]
            if not owners:
                continue
            start = self._started.setdefault((key, worker), now - seconds)
            for owner in owners:
                self._chunk_start.setdefault(owner, start)
            elapsed, bound = now - start, self.bound()
            # over its bound; or still there a bound (at least 30 s) after its worker was told
            # to restart (a restart that failed): then once more, as a further attempt
            acted = self._acted.get((key, worker))
            if elapsed > bound and (acted is None or now - acted > max(30.0, bound)):
                self._acted[(key, worker)] = now
                self._stuck(key, worker, owners[0], elapsed, bound)

    def _stuck(self, key: Hashable, worker: str, chunk: Hashable, elapsed: float, bound: float) -> None:
        n = self.attempts[chunk] = self.attempts.get(chunk, 0) + 1
        self._chunk_start.pop(chunk, None)  # a retry is timed afresh
        self._run(retry_elsewhere, worker=worker)  # frees the worker, also when the job stops
        if n > self.retries:
            rule = (f"--task-timeout {bound:g} s" if self.timeout is not None else
                    f"{TASK_TIMEOUT_FACTOR:g} x the median chunk time"
                    f"{f' of {statistics.median(self.durations):.1f} s' if self.durations else ''}, "
                    f"at least {TASK_TIMEOUT_MIN:g} s")
            where = f" in {self.kept}" if self.kept else ""
            raise JobError(f"{self.labels[chunk]} did not finish: it ran for {elapsed:.0f} s on worker "
                           f"{worker}, over its bound ({rule}), after {self.retries} retries on other "
                           f"workers; the finished chunks are kept{where}; check what holds it there (a "
                           "read stuck on a network file system, a wedged GPU) or raise --task-timeout, "
                           f"then finish the job with: {self.resume}")
        log.warning("%s ran for %.0f s on worker %s (bound %.0f s): retrying it on another worker "
                    "(%d of %d), that worker restarts", self.labels[chunk], elapsed, worker, bound,
                    n, self.retries)

    def _run(self, function, **kwargs):
        """``function`` on the scheduler, bounded in time; ``None`` when it did not answer (the
        scheduler watch judges that) or failed there, for instance without s2dask (the watch
        then says so once and stands aside)."""
        client = self.client
        try:
            return client.sync(client._run_on_scheduler, function, callback_timeout=2.0, **kwargs)
        except (ImportError, AttributeError, TypeError, NameError) as exc:  # not the code it needs
            self._off = True
            log.warning("the task watch is off: the scheduler could not run s2dask's %s (%s: %s); "
                        "install s2dask where the scheduler runs", function.__name__,
                        type(exc).__name__, exc)
        except Exception:
            pass  # slow, gone or closing: the scheduler watch decides
        return None
