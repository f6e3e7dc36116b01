"""Retry with backoff for object-store reads and writes: one mechanism, one layer per request.

Object stores answer ``503 SlowDown`` under load, drop connections mid-transfer and time
out; those are *transient* and worth retrying. A missing object, a refused permission or
rejected credentials are *permanent*: retrying only delays the one line the user needs.
:func:`classify_error` tells them apart from the exception types of botocore, aiobotocore,
s3fs, fsspec and aiohttp, the builtin ``OSError`` family, and the texts of GDAL errors as
rasterio raises them (``HTTP response code: 503``, ``Connection reset``, ``timed out``).

Which layer retries (measured with ``tests/_faulty_proxy.py`` in front of moto, GDAL 3.10,
s3fs/aiobotocore 2026.9/3.10; see ``tests/test_retry.py``):

* **GDAL** (``/vsis3/`` reads of scenes): GDAL 3.10 does not retry by default
  (``GDAL_HTTP_MAX_RETRY=0``: one 503 fails the read). With :meth:`RetryPolicy.gdal_env`
  it retries each failing HTTP range request itself (codes 429/500/502/503/504 and curl
  errors such as a reset connection), doubling the delay. That is the right grain: a chunk
  window is tens of range requests, and retrying the whole window when 1 request in 10
  fails would succeed with probability ``0.9**40`` (1.5 %) per attempt. So GDAL is the
  only layer that retries these reads; :func:`read_with_retry` runs the read once,
  counts GDAL's retries (its "Retrying again" warnings in this thread) and classifies a
  final failure.
* **fsspec/s3fs** (Zarr region writes, chunk markers, records): today's defaults stack
  two layers: botocore (legacy mode, 5 attempts) inside s3fs's own loop (5 attempts on
  ``SlowDown`` and connection errors). One persistent 503 becomes **25 requests over
  38 s**, none of them visible. :meth:`RetryPolicy.storage_options` turns botocore's
  layer off (``total_max_attempts=1``) and :func:`single_layer` turns s3fs's off, so that
  :func:`call_with_retry` around the (idempotent) region write and marker PUT is the one
  layer: each retry is counted once, the total is bounded by ``retries + 1`` attempts.

Nothing here prints or stores credentials: error lines go through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple, TypeVar

from ..errors import ParameterError, S2DaskError, StorageError
from .remote import protocol_of

__all__ = [
    "RetryPolicy",
    "RetryCounter",
    "classify_error",
    "call_with_retry",
    "read_with_retry",
    "count_gdal_retries",
    "single_layer",
    "redact",
    "ReadNote",
    "note_read",
    "take_read",
    "retries_off",
    "TRANSIENT",
    "PERMANENT",
    "OTHER",
]

T = TypeVar("T")
TRANSIENT, PERMANENT, OTHER = "transient", "permanent", "other"

#: S3 error codes (``Error.Code``) that are worth retrying, and those that never are
_TRANSIENT_CODES = {"slowdown", "throttling", "throttlingexception", "requestlimitexceeded",
                    "toomanyrequestsexception", "requesttimeout", "requesttimeoutexception",
                    "internalerror", "serviceunavailable", "requestthrottled",
                    "bandwidthlimitexceeded", "provisionedthroughputexceededexception",
                    "500", "502", "503", "504", "429"}
_MISSING_CODES = {"nosuchkey", "nosuchbucket", "nosuchupload", "notfound", "404"}
_DENIED_CODES = {"accessdenied", "allaccessdisabled", "403", "forbidden"}
_CREDENTIAL_CODES = {"invalidaccesskeyid", "signaturedoesnotmatch", "expiredtoken",
                     "invalidtoken", "tokenrefreshrequired", "unrecognizedclientexception"}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}

#: exception class names (anywhere in the MRO) of the storage libraries, no imports needed
_TRANSIENT_TYPES = {
    # botocore / aiobotocore
    "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteReadError", "HTTPClientError", "ProxyConnectionError",
    # aiohttp
    "ClientConnectionError", "ClientPayloadError", "ServerDisconnectedError", "ServerTimeoutError",
    "ClientOSError",
    # fsspec, http.client, urllib3
    "FSTimeoutError", "IncompleteRead", "RemoteDisconnected", "ProtocolError",
}
_PERMANENT_TYPES = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                    "UnknownCredentialError", "NoSuchKey", "NoSuchBucket"}

_STATUS_RE = re.compile(r"(?:response code|error code|status(?: code)?|http)[:= ]+(\d{3})\b")
_TRANSIENT_TEXT = ("slowdown", "slow down", "reduce your request rate", "throttl",
                   "service unavailable", "serviceunavailable", "internal error", "internalerror",
                   "bad gateway", "gateway timeout", "requesttimeout", "timed out", "timeout",
                   "connection reset", "connection was reset", "connection aborted",
                   "connection refused", "broken pipe", "server disconnected",
                   "connection closed", "incomplete read", "response ended prematurely",
                   "recv failure", "send failure", "empty reply from server",
                   "http error code: 0")
_MISSING_TEXT = ("nosuchkey", "nosuchbucket", "does not exist", "no such file", "not found")
_DENIED_TEXT = ("accessdenied", "access denied", "forbidden", "permission denied")
_CREDENTIAL_TEXT = ("invalidaccesskeyid", "signaturedoesnotmatch", "expiredtoken",
                    "access key id you provided", "signature we calculated",
                    "security token included in the request is", "unable to locate credentials")


# ---------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure (picklable; travels to workers).

    Attributes
    ----------
    retries
        Retries after the first attempt (0 = try once). At most ``retries + 1`` attempts.
    base_delay
        Seconds before the first retry; doubled after each (exponential backoff).
    max_delay
        Ceiling of one delay, in seconds.
    jitter
        Fraction of each delay drawn at random (``0.5``: between half and all of it), so
        that workers throttled together do not retry together.
    """

    retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        try:
            retries = int(self.retries)
        except (TypeError, ValueError):
            retries = -1
        if retries < 0 or retries != self.retries:
            raise ParameterError(f"the number of retries must be an integer >= 0, got "
                                 f"{self.retries!r}: use for example --retries 5 (0 turns retries off)")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ParameterError(f"the retry {name.replace('_', ' ')} must be a number of "
                                     f"seconds >= 0, got {value!r}")
        if not 0 <= self.jitter <= 1:
            raise ParameterError(f"the retry jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), with jitter."""
        full = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        r = (rng or random).random()
        return full * (1 - self.jitter * r)

    def gdal_env(self) -> dict[str, str]:
        """GDAL options that make ``/vsis3/`` (and ``/vsicurl/``) retry each failing request.

        ``GDAL_HTTP_MAX_RETRY`` and ``GDAL_HTTP_RETRY_DELAY`` (GDAL doubles the delay after
        each retry); GDAL's default ``GDAL_HTTP_RETRY_CODES`` (429, 500, 502, 503, 504, plus
        curl errors like a reset connection) are the transient ones. Use inside
        ``rasterio.Env(**policy.gdal_env())`` where the file is read.
        """
        return {"GDAL_HTTP_MAX_RETRY": str(self.retries),
                "GDAL_HTTP_RETRY_DELAY": f"{self.base_delay:g}"}

    def storage_options(self, url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """fsspec options for ``url`` with botocore's own retries off (``s3://`` only).

        With :func:`single_layer` on the filesystem, :func:`call_with_retry` is then the
        only layer that retries, so each retry is counted once and never multiplied.
        Other protocols: ``options`` unchanged.
        """
        out = dict(options or {})
        if protocol_of(url) in ("s3", "s3a"):
            config = dict(out.get("config_kwargs") or {})
            config["retries"] = {"total_max_attempts": 1, "mode": "standard"}
            out["config_kwargs"] = config
        return out

    @classmethod
    def of(cls, retries: int | None, env: Mapping[str, str] | None = None) -> "RetryPolicy":
        """:meth:`from_env` with ``retries`` (``--retries``) replacing its number, if given.

        Raises
        ------
        ParameterError
            If ``retries`` or a value in the environment is negative or not a number.
        """
        policy = cls.from_env(env)
        return policy if retries is None else cls(retries, policy.base_delay, policy.max_delay,
                                                  policy.jitter)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RetryPolicy":
        """``S2DASK_RETRIES`` / ``S2DASK_RETRY_DELAY`` from the environment, else defaults.

        Raises
        ------
        ParameterError
            If a value is not a number or is negative.
        """
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        for key, name, kind in (("S2DASK_RETRIES", "retries", int),
                                ("S2DASK_RETRY_DELAY", "base_delay", float)):
            if env.get(key, "") != "":
                try:
                    kwargs[name] = kind(env[key])
                except ValueError:
                    raise ParameterError(f"{key}={env[key]!r} is not a number: use for example "
                                         f"{key}={'5' if kind is int else '0.5'}") from None
        return cls(**kwargs)


@dataclass
class RetryCounter:
    """Retries made for one unit of work (a chunk); picklable, so a task can return it.

    Attributes
    ----------
    retries
        Retries made so far, by whichever layer retried (counted once).
    reasons
        Short reasons of the first few retries (``"503 SlowDown"``), for the record.
    """

    retries: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, n: int = 1, reason: str = "") -> None:
        self.retries += n
        if reason and len(self.reasons) < 5:
            self.reasons.append(reason[:120])


# ---------------------------------------------------------------------------- classifying


def _code_and_status(exc: BaseException) -> tuple[str, int | None]:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return "", None
    code = str((response.get("Error") or {}).get("Code") or "").lower()
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, int(status) if isinstance(status, int) else None


def _verdict_of(exc: BaseException) -> tuple[str, str]:
    """``(verdict, why)`` for one exception, without looking at its cause."""
    names = {k.__name__ for k in type(exc).__mro__}
    code, status = _code_and_status(exc)
    if code or status:
        if code in _CREDENTIAL_CODES:
            return PERMANENT, "credentials"
        if code in _MISSING_CODES or status == 404:
            return PERMANENT, "missing"
        if code in _DENIED_CODES or status == 403:
            return PERMANENT, "denied"
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return TRANSIENT, ""
    if names & _PERMANENT_TYPES:
        return PERMANENT, "credentials" if "Credential" in " ".join(names) else "missing"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return PERMANENT, "missing"
    if isinstance(exc, PermissionError):
        return PERMANENT, "denied"
    if names & _TRANSIENT_TYPES or isinstance(exc, (ConnectionError, TimeoutError)):
        return TRANSIENT, ""
    if isinstance(exc, OSError) and exc.errno in (errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT,
                                                  errno.ECONNRESET, errno.ECONNABORTED):
        return TRANSIENT, ""  # s3fs turns SlowDown / 503 into OSError(EBUSY)
    return _verdict_of_text(" ".join(str(exc).split()).lower())


def _verdict_of_text(low: str) -> tuple[str, str]:
    statuses = {int(s) for s in _STATUS_RE.findall(low)}
    if any(t in low for t in _CREDENTIAL_TEXT):
        return PERMANENT, "credentials"
    if 404 in statuses or any(t in low for t in _MISSING_TEXT):
        return PERMANENT, "missing"
    if 403 in statuses or any(t in low for t in _DENIED_TEXT):
        return PERMANENT, "denied"
    if statuses & _TRANSIENT_STATUS or any(t in low for t in _TRANSIENT_TEXT):
        return TRANSIENT, ""
    return OTHER, ""


def classify_error(exc: BaseException) -> str:
    """``"transient"``, ``"permanent"`` or ``"other"`` for a storage exception.

    The exception and its causes (``__cause__``/``__context__``, a few levels) are looked
    at; the first that is not ``"other"`` decides. ``"other"`` (a bug, a bad value, an
    :class:`~s2dask.errors.S2DaskError` already explained) is never retried.
    """
    return _classify(exc)[0]


def _classify(exc: BaseException) -> tuple[str, str]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 6:
        seen.add(id(cur))
        if getattr(cur, "retry_final", False):
            return OTHER, ""  # this module's own verdict: never retried again
        if not isinstance(cur, S2DaskError):  # an S2DaskError wrapping a cause: look inside
            verdict = _verdict_of(cur)
            if verdict[0] != OTHER:
                return verdict
        cur = cur.__cause__ or cur.__context__
    return OTHER, ""


# ---------------------------------------------------------------------------- redaction


_QUERY_SECRETS = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+", re.I)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with credentials removed: secret values from the environment and signed URLs.

    The values of ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and
    ``AWS_ACCESS_KEY_ID`` (when at least 8 characters) become ``***``, as do the
    ``X-Amz-Signature`` / ``X-Amz-Credential`` / ``X-Amz-Security-Token`` of presigned URLs.
    """
    env = os.environ if env is None else env
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = env.get(key) or ""
        if len(value) >= 8:
            text = text.replace(value, "***")
    return _QUERY_SECRETS.sub(r"\1***", text)


def _short(exc: BaseException) -> str:
    cur: BaseException | None = exc
    for _ in range(4):  # s3fs raises OSError from botocore's ClientError: the code is inside
        if cur is None:
            break
        response = getattr(cur, "response", None)
        if isinstance(response, Mapping) and response.get("Error"):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or ""
            return f"{status} {response['Error'].get('Code') or ''}".strip()
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(exc).split())[:160] or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")


def _final(error: StorageError) -> StorageError:
    error.retry_final = True  # type: ignore[attr-defined]
    return error


def _permanent_error(exc: BaseException, why: str, what: str, action: str) -> StorageError:
    return _final(_permanent(exc, why, what, action))


def _permanent(exc: BaseException, why: str, what: str, action: str) -> StorageError:
    reason = _short(exc)
    if why == "credentials":
        return StorageError(f"the storage rejected the credentials when trying to {action} {what} "
                            f"({reason}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
                            "AWS_SESSION_TOKEN (not retried)")
    if why == "denied":
        return StorageError(f"permission denied to {action} {what} ({reason}): fix the bucket "
                            "policy or the credentials' permissions (not retried)")
    return StorageError(f"cannot {action} {what}: it does not exist ({reason}); check the URL "
                        "(not retried)")


# ---------------------------------------------------------------------------- retrying


def call_with_retry(fn: Callable[..., T], *args: Any, policy: RetryPolicy, what: str,
                    action: str = "read", counter: RetryCounter | None = None,
                    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                    **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``; retry transient failures with backoff, up to a bound.

    ``fn`` must be idempotent (a read, a whole-object PUT, a Zarr region write).

    Parameters
    ----------
    fn
        What to call.
    policy
        How many retries and how long to wait (:class:`RetryPolicy`).
    what
        Names the input or output in error lines (``"window y=0:512 x=0:512 of s3://b/t.tif"``).
    action
        The verb for error lines: ``"read"``, ``"write"``.
    counter
        Gets one count per retry (and a short reason), for the job's record.
    sleep, rng
        For tests: the sleep function and the random stream of the jitter.

    Returns
    -------
    The value of ``fn``.

    Raises
    ------
    StorageError
        At once for a permanent failure (missing object, permission denied, rejected
        credentials), with its own line; after ``policy.retries + 1`` attempts for a
        transient one, naming ``what`` and the attempts.
    Exception
        Anything else ``fn`` raises (not a storage failure), unchanged and not retried.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            verdict, why = _classify(exc)
            if verdict == PERMANENT:
                raise _permanent_error(exc, why, what, action) from exc
            if verdict != TRANSIENT:
                raise
            if attempt > policy.retries:
                raise _exhausted(exc, what, action, attempt) from exc
            if counter is not None:
                counter.add(1, _short(exc))
            sleep(policy.delay(attempt, rng))


def _exhausted(exc: BaseException, what: str, action: str, attempts: int) -> StorageError:
    plural = "s" if attempts != 1 else ""
    return _final(StorageError(f"could not {action} {what}: {attempts} attempt{plural} failed with "
                        f"transient errors (last: {_short(exc)}); the storage is overloaded or "
                        "unreachable: retry later or allow more retries (S2DASK_RETRIES)"))


class _GdalRetryFilter(logging.Filter):
    """Counts (and drops) GDAL's "Retrying again" warnings made in one thread."""

    def __init__(self, counter: RetryCounter, thread: int):
        super().__init__()
        self.counter, self.thread, self.seen = counter, thread, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        text = record.getMessage()
        if "Retrying again in" not in text:
            return True
        self.seen += 1
        m = re.search(r"(?:HTTP error code|response code):? *(\d+)", text)
        self.counter.add(1, f"GDAL HTTP {m.group(1)}" if m else "GDAL retry")
        return False


@contextlib.contextmanager
def count_gdal_retries(counter: RetryCounter) -> Iterator[_GdalRetryFilter]:
    """Count GDAL's own HTTP retries made by this thread into ``counter``.

    GDAL reports each retry as a warning (``HTTP error code: 503 - URL. Retrying again in
    0.5 secs``), which rasterio passes to the ``rasterio._env`` logger in the calling
    thread; they are counted and kept out of the worker's log.
    """
    logger = logging.getLogger("rasterio._env")
    filt = _GdalRetryFilter(counter, threading.get_ident())
    old_level = logger.level
    if not logger.isEnabledFor(logging.WARNING):
        logger.setLevel(logging.WARNING)
    logger.addFilter(filt)
    try:
        yield filt
    finally:
        logger.removeFilter(filt)
        logger.setLevel(old_level)


def read_with_retry(fn: Callable[..., T], *args: Any, policy: RetryPolicy, what: str,
                    counter: RetryCounter | None = None, **kwargs: Any) -> T:
    """Run a GDAL read once with GDAL retrying each failed HTTP request itself.

    The one retry layer for GDAL reads is GDAL (:meth:`RetryPolicy.gdal_env` is applied
    here); this counts its retries into ``counter`` and turns a final failure into one
    line, so a retry is neither counted twice nor multiplied by an outer loop.

    Parameters
    ----------
    fn
        The read, e.g. a block reader's ``__call__``; it runs inside ``rasterio.Env``.
    policy, what, counter
        As for :func:`call_with_retry`.

    Raises
    ------
    StorageError
        At once for a permanent failure; for a transient one after GDAL's retries, naming
        ``what`` and the attempts made.
    """
    import rasterio

    counter = RetryCounter() if counter is None else counter
    before = counter.retries
    with count_gdal_retries(counter), rasterio.Env(**policy.gdal_env()):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            verdict, why = _classify(exc)
            if verdict == PERMANENT:
                raise _permanent_error(exc, why, what, "read") from exc
            if verdict == TRANSIENT:
                raise _exhausted(exc, what, "read", counter.retries - before + 1) from exc
            raise


def single_layer(fs: Any) -> Any:
    """Turn off s3fs's own retry loop on ``fs`` (one attempt per call); return ``fs``.

    s3fs retries ``SlowDown`` and connection errors 5 times in each call, inside botocore's
    own retries; with :meth:`RetryPolicy.storage_options` and this, :func:`call_with_retry`
    is the only layer. Other filesystems are returned unchanged.
    """
    if type(fs).__name__ == "S3FileSystem" and hasattr(fs, "retries"):
        fs.retries = 1
    return fs


def retries_off(options: Mapping[str, Any] | None) -> bool:
    """Whether fsspec ``options`` come from :meth:`RetryPolicy.storage_options` (botocore's
    retries off): a filesystem made with them gets :func:`single_layer` as well, and every
    call on it is wrapped in :func:`call_with_retry`."""
    retries = ((options or {}).get("config_kwargs") or {}).get("retries") or {}
    return retries.get("total_max_attempts") == 1


# ------------------------------------------------------------ from a chunk's read to its marker

_LAST_READ = threading.local()


class ReadNote(NamedTuple):
    """What a chunk's read leaves for its prediction task: its retries and how long it took."""

    counter: RetryCounter
    #: seconds the read took (opening, fetching and decoding every band); ``None``: not known
    seconds: float | None = None


def note_read(window: tuple[int, int, int, int], counter: RetryCounter, seconds: float) -> None:
    """Leave the retries and duration of reading ``window`` (y0, x0, height, width) for this
    thread's next task.

    Dask fuses a chunk's read into its prediction task, so both run in one thread, one
    after the other: the prediction task picks the note up with :func:`take_read` and
    records it in the chunk's marker with its own retries and timings.
    """
    _LAST_READ.value = (tuple(window), ReadNote(counter, seconds))


def take_read(window: tuple[int, int, int, int]) -> ReadNote:
    """The note :func:`note_read` left for ``window`` in this thread (consumed), or an empty
    one (a read of another window, or none: its retries and time are not attributed here)."""
    left = getattr(_LAST_READ, "value", None)
    _LAST_READ.value = None
    if left is not None and left[0] == tuple(window):
        return left[1]
    return ReadNote(RetryCounter())
