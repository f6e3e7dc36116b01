"""Client side: notice that the Dask scheduler is gone, or was never a Dask scheduler.

A job waits for its chunk futures. When the scheduler process dies (SIGKILL, a node lost,
a pod rescheduled), distributed's client tries to reconnect and its futures never finish:
the job would wait until the client gives up, or forever when no TCP reset arrives.
:class:`SchedulerWatch` bounds that wait: the client's own state (a closed comm turns it to
``connecting``) and a cheap identity call every few seconds tell whether the scheduler
answers; after ``timeout`` seconds without an answer :meth:`SchedulerWatch.check` raises
one :class:`~s2dask.errors.JobError` line that names the scheduler, says that the finished
chunks are kept, and gives the ``--resume`` command. :func:`completed` is the job's wait
loop with the watch built in.

:func:`check_scheduler` runs before a job: an address where something answers that does
not speak Dask's protocol (a web server, a dashboard port, another service) is refused
with one line (exit 2) instead of a long hang or a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Iterable, Iterator

from ..errors import ClusterError, JobError, ParameterError

__all__ = ["SchedulerWatch", "completed", "check_scheduler", "check_timeout",
           "DEFAULT_SCHEDULER_TIMEOUT", "DEFAULT_RESUME"]

#: seconds without an answer from the scheduler before a job stops
DEFAULT_SCHEDULER_TIMEOUT = 60.0
#: how the watch's line says to finish a job when it is given no exact command
DEFAULT_RESUME = "rerun the same command with --resume"
_LOST_STATES = ("connecting", "closing", "closed", "failed")


def _scheduler_address(client) -> str:
    try:
        return str(client.scheduler.address)
    except Exception:
        return "(unknown address)"


def check_timeout(timeout: Any) -> None:
    """Refuse a scheduler timeout that is not a positive number of seconds.

    Raises
    ------
    ParameterError
        One line, with an example.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ParameterError(f"the scheduler timeout must be a positive number of seconds, "
                             f"got {timeout!r}: use for example --scheduler-timeout 60")


def _quiet_client_logs() -> int:
    """The client's own tracebacks of failed reconnects would bury the job's one line.

    They start the moment the connection drops, before any watch notices; the job reports
    a lost scheduler itself. ``S2DASK_DEBUG=1`` keeps them. Returns the level before.
    """
    logger = logging.getLogger("distributed.client")
    level = logger.level
    if not os.environ.get("S2DASK_DEBUG"):
        logger.setLevel(logging.CRITICAL)
    return level


class SchedulerWatch:
    """Tracks whether a client's scheduler answers; raises once it has not for ``timeout`` s.

    Parameters
    ----------
    client
        A connected ``distributed.Client``.
    timeout
        Seconds without an answer before :meth:`check` raises (default 60).
    resume
        The command that finishes the job on a new scheduler, for the error line
        (``s2dask classify ... --resume``).
    kept
        Where the finished chunks are kept, for the error line.
    probe_every
        Seconds between identity calls (default ``min(5, timeout / 4)``).

    Raises
    ------
    ParameterError
        If ``timeout`` is not a positive number.
    """

    def __init__(self, client, *, timeout: float = DEFAULT_SCHEDULER_TIMEOUT,
                 resume: str = DEFAULT_RESUME, kept: str | None = None,
                 probe_every: float | None = None):
        check_timeout(timeout)
        self.client, self.timeout, self.resume, self.kept = client, float(timeout), resume, kept
        self.address = _scheduler_address(client)
        self.probe_every = probe_every if probe_every is not None else min(5.0, self.timeout / 4)
        self.last_ok = time.monotonic()
        self._last_probe = 0.0

    def _probe(self) -> bool:
        """One identity call with a short timeout; whether the scheduler answered."""
        client = self.client
        try:
            client.sync(client.scheduler.identity, callback_timeout=max(1.0, self.probe_every))
            return True
        except Exception:
            return False

    def alive(self) -> bool:
        """Whether the scheduler answers now (cheap: probes at most every ``probe_every`` s)."""
        now = time.monotonic()
        if getattr(self.client, "status", "running") in _LOST_STATES:
            _quiet_client_logs()
            return False
        if now - self._last_probe < self.probe_every:
            return True
        self._last_probe = now
        return self._probe()

    def check(self) -> None:
        """Raise :class:`JobError` once the scheduler has not answered for ``timeout`` s.

        Raises
        ------
        JobError
            One line: the scheduler's address, how long it has been silent, that the
            finished chunks are kept (and where), and the ``--resume`` command.
        """
        now = time.monotonic()
        if self.alive():
            self.last_ok = now
            return
        silent = now - self.last_ok
        if silent >= self.timeout:
            where = f" in {self.kept}" if self.kept else ""
            raise _lost(f"the Dask scheduler {self.address} is gone (no answer for "
                        f"{silent:.0f} s): the finished chunks are kept{where}; start a "
                        f"scheduler and workers, then finish the job with: {self.resume}")


def _lost(message: str) -> JobError:
    """The job's error when its scheduler is gone: ``scheduler_lost`` tells the job not to
    cancel futures or start other scenes (nobody would answer)."""
    error = JobError(message)
    error.scheduler_lost = True  # type: ignore[attr-defined]
    return error


def completed(client, futures: Iterable, *, timeout: float = DEFAULT_SCHEDULER_TIMEOUT,
              resume: str = DEFAULT_RESUME, kept: str | None = None,
              poll: float = 0.2, tasks: Any = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(future, value)`` as ``futures`` finish, like ``distributed.as_completed``,
    with a watch.

    ``value`` is the future's result, or its exception when it erred
    (``future.status == "error"``); it is fetched under the watch too, so that a scheduler
    killed while a result is on its way ends in the same one line as one killed between
    tasks, not in a traceback of the client's closed connection.

    Parameters
    ----------
    client
        The client the futures belong to.
    futures
        The futures to wait for.
    timeout, resume, kept
        See :class:`SchedulerWatch`.
    poll
        Seconds between looks at the futures while none is ready.
    tasks
        A :class:`s2dask.job.taskwatch.TaskWatch` of these futures: a task that never finishes
        is retried elsewhere, then ends the wait in its one line (``None``: no bound).

    Raises
    ------
    JobError
        When the scheduler has not answered for ``timeout`` seconds, or answers again
        having lost the job's tasks, or (``tasks``) a task stayed stuck after its retries.
    """
    watch = SchedulerWatch(client, timeout=timeout, resume=resume, kept=kept)
    level = _quiet_client_logs()  # while waiting; left quiet once the scheduler is gone
    try:
        yield from _wait(client, futures, watch, resume=resume, kept=kept, poll=poll, tasks=tasks)
    except GeneratorExit:
        logging.getLogger("distributed.client").setLevel(level)
        raise
    logging.getLogger("distributed.client").setLevel(level)


def _wait(client, futures: Iterable, watch: SchedulerWatch, *, resume: str, kept: str | None,
          poll: float, tasks: Any = None) -> Iterator[tuple[Any, Any]]:
    from distributed import as_completed

    pending = as_completed(list(futures), loop=client.loop)
    lost = 0  # futures the client cancelled itself: its scheduler connection broke
    while True:
        if pending.has_ready():
            for fut in pending.next_batch(block=False):
                value = _LOST if fut.status == "cancelled" else _value(fut, watch, poll=poll)
                if value is _LOST:
                    lost += 1
                else:
                    if tasks is not None:
                        tasks.finished(fut.key)
                    yield fut, value
            continue
        if pending.is_empty() and not lost:
            return
        if lost and getattr(client, "status", None) == "running" and watch._probe():
            raise _lost(f"the Dask scheduler {watch.address} lost {lost} of the job's tasks "
                        "(it restarted, or they were cancelled): the finished chunks are kept"
                        f"{f' in {kept}' if kept else ''}; finish the job with: {resume}")
        watch.check()
        if tasks is not None:
            tasks.check()
        time.sleep(poll)


#: :func:`_value` of a future the client cancelled while its value was being fetched
_LOST = object()


def _value(fut, watch: SchedulerWatch, *, poll: float) -> Any:
    """A finished future's result (an erred one's exception), fetched from its worker through
    the scheduler. A fetch that fails for the connection (a closed comm, a timeout: both
    ``OSError``) is retried while the watch lets it (its one line once the scheduler has not
    answered for its timeout); a future the client cancelled meanwhile, on losing the
    scheduler, is :data:`_LOST`, counted by :func:`_wait` with the others it cancelled."""
    from concurrent.futures import CancelledError

    while True:
        try:
            if fut.status == "error":
                return fut.exception(timeout=watch.probe_every)
            return fut.result(timeout=watch.probe_every)
        except (OSError, CancelledError):
            if fut.status == "cancelled":
                return _LOST
            watch.check()
            time.sleep(poll)


# ------------------------------------------------------------------------ before a job


async def _identity(address: str, timeout: float, security) -> dict:
    from distributed.comm import connect
    from distributed.security import Security

    # no Security given: Dask's own TLS configuration (DASK_DISTRIBUTED__COMM__TLS__*) applies
    kwargs = (security if security is not None else Security()).get_connection_args("client")
    comm = await connect(address, timeout=timeout, **kwargs)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await asyncio.wait_for(comm.read(), timeout)
    finally:
        comm.abort()


def check_scheduler(address: str, *, timeout: float = 10.0, security=None) -> dict:
    """Check that a Dask scheduler answers at ``address``; return its identity.

    Speaks Dask's own protocol (a handshake, then the ``identity`` call) with a bounded
    wait, in a private event loop, so that it works from any thread.

    Parameters
    ----------
    address
        ``tcp://host:port`` or ``tls://host:port``.
    timeout
        Seconds for the whole check.
    security
        ``distributed.Security`` for ``tls://``.

    Raises
    ------
    ClusterError
        One line: nothing answers there, or what answers is not a Dask scheduler (a web
        server, a dashboard, another service, a Dask worker).
    """
    port_hint = ("check the address and port (a Dask scheduler listens on 8786 by default; "
                 "8787 is its web dashboard)")
    _check_listening(address, timeout, port_hint)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = asyncio.run(asyncio.wait_for(_identity(address, timeout, security),
                                                           timeout + 1))
        except BaseException as exc:  # reported below, in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="s2dask-check-scheduler")
    worker.start()
    worker.join(timeout + 5)
    value, exc = result.get("value"), result.get("error")
    if exc is None and worker.is_alive():
        exc = TimeoutError()
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "timed out" in str(exc).lower():
        tls = " (or it is a tls:// scheduler: give tls:// and the TLS files)" \
            if address.startswith("tcp://") else ""
        raise ClusterError(f"something listens at {address} but did not answer Dask's handshake "
                           f"within {timeout:g} s: it is not a Dask scheduler{tls}; {port_hint}")
    if exc is not None and _speaks_tls(address, timeout):
        return {}  # a TLS scheduler this client cannot talk to: connect() says how to fix it
    if exc is not None:
        raise ClusterError(f"{address} answers but is not a Dask scheduler (it does not speak "
                           f"Dask's protocol: {type(exc).__name__}): {port_hint}")
    if not isinstance(value, dict) or value.get("type") != "Scheduler":
        kind = value.get("type") if isinstance(value, dict) else type(value).__name__
        raise ClusterError(f"{address} answers but is not a Dask scheduler (it is a {kind}): "
                           f"{port_hint}")
    return value


def _speaks_tls(address: str, timeout: float) -> bool:
    """Whether what listens at ``address`` answers a TLS handshake (a ``tls://`` scheduler
    reached without certificates, or as ``tcp://``): then the connection error, not "not
    Dask", is the message that helps."""
    import socket
    import ssl

    from distributed.comm.addressing import parse_address, parse_host_port

    host, port = parse_host_port(parse_address(address)[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                return True  # the handshake completed
    except ssl.SSLError as exc:  # the server answered with a TLS alert: it speaks TLS
        return "ALERT" in str(exc).upper()
    except OSError:
        return False


def _check_listening(address: str, timeout: float, hint: str) -> None:
    """A plain TCP connect first: "nothing listens" is a different fix from "not Dask"."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc)
    except ValueError as exc:
        raise ClusterError(f"{address} is not a scheduler address ({exc}): use tcp://HOST:PORT "
                           "or tls://HOST:PORT") from None
    if scheme not in ("tcp", "tls"):
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise ClusterError(f"nothing listens at {address} (connection refused): start the "
                           f"scheduler, or {hint}") from None
    except OSError as exc:
        raise ClusterError(f"cannot reach {address} ({exc.strerror or type(exc).__name__}): "
                           f"{hint}, and the network") from None
