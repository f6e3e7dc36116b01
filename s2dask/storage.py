"""Where inputs and outputs live: local paths, or object stores through fsspec.

Object storage is reached two ways, configured from the same standard environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO, Ceph or a test server):

* fsspec (``s3fs``) for Zarr stores, JSON records and quicklooks:
  :func:`fs_for` and :func:`storage_options_for`;
* GDAL (rasterio opens ``s3://`` as ``/vsis3/``) for GeoTIFF/COG scenes:
  :func:`gdal_env_for`, to be used as ``rasterio.Env(**gdal_env_for(url))``.

:func:`check_output_location` and :func:`check_input_location` run before a job starts,
so that a missing bucket, missing credentials or a read-only directory is one clear line
rather than a failure deep inside a Dask task. Nothing here carries secrets: the returned
options name endpoints and regions only; credentials stay in each process's environment.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .errors import StorageError

__all__ = [
    "is_remote",
    "protocol_of",
    "join",
    "storage_options_for",
    "gdal_env_for",
    "fs_for",
    "check_output_location",
    "check_input_location",
]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_S3 = ("s3", "s3a")
_TRUE = ("1", "yes", "true", "on")


def protocol_of(url: str | os.PathLike) -> str:
    """The URL scheme in lower case (``"s3"``, ``"gs"``, ...), ``"file"`` for a local path."""
    m = _SCHEME.match(os.fspath(url))
    return m.group(1).lower() if m else "file"


def is_remote(url: str | os.PathLike) -> bool:
    """Whether ``url`` names an object store or other non-local location (``s3://...``).

    Local paths, ``file://`` URLs and Windows drive letters are not remote.
    """
    return protocol_of(url) not in ("file", "local")


def _local_path(url: str | os.PathLike) -> Path:
    text = os.fspath(url)
    if protocol_of(text) in ("file", "local") and _SCHEME.match(text):
        text = text.split("://", 1)[1]
    return Path(text).expanduser()


def join(url: str | os.PathLike, *parts: str) -> str:
    """Join path components onto a local path or URL with the right separator."""
    if is_remote(url):
        return posixpath.join(os.fspath(url).rstrip("/"), *parts)
    return os.fspath(_local_path(url).joinpath(*parts))


def _bucket(url: str) -> str:
    return urlsplit(os.fspath(url)).netloc


def _endpoint(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def _region(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def storage_options_for(url: str | os.PathLike, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec ``storage_options`` for ``url``, from the environment (no secrets).

    For ``s3://``: ``client_kwargs.endpoint_url`` from ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``, ``client_kwargs.region_name`` from ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, and ``anon=True`` when ``AWS_NO_SIGN_REQUEST=YES``. Credentials
    are left to botocore's usual chain in each process. Other protocols: ``{}``.

    Parameters
    ----------
    url
        The location (``s3://bucket/prefix``, a local path ...).
    env
        The environment to read (default ``os.environ``).
    """
    env = os.environ if env is None else env
    if protocol_of(url) not in _S3:
        return {}
    client_kwargs: dict[str, Any] = {}
    if _endpoint(env):
        client_kwargs["endpoint_url"] = _endpoint(env)
    if _region(env):
        client_kwargs["region_name"] = _region(env)
    options: dict[str, Any] = {}
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    if str(env.get("AWS_NO_SIGN_REQUEST", "")).lower() in _TRUE:
        options["anon"] = True
    return options


def gdal_env_for(url: str | os.PathLike, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """GDAL configuration options to read ``url`` with rasterio: ``rasterio.Env(**opts)``.

    For ``s3://`` with a custom endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
    e.g. ``http://127.0.0.1:9000``): ``AWS_S3_ENDPOINT`` (``host:port``), ``AWS_HTTPS``
    (``YES``/``NO`` from the URL scheme) and ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style
    requests, as MinIO and test servers need). Values already set as ``AWS_S3_ENDPOINT``,
    ``AWS_HTTPS`` or ``AWS_VIRTUAL_HOSTING`` win. Also ``AWS_REGION`` and
    ``AWS_NO_SIGN_REQUEST`` when set. Every remote URL gets
    ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` (no directory listing per open). Local
    paths: ``{}``. Credentials are not included: GDAL and rasterio read them from the
    environment of the process that opens the file (a Dask worker needs them too).

    Parameters
    ----------
    url
        The location to read.
    env
        The environment to read (default ``os.environ``); call this where the file is
        opened, so that a worker's own environment applies.
    """
    env = os.environ if env is None else env
    if not is_remote(url):
        return {}
    opts: dict[str, str] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    if protocol_of(url) not in _S3:
        return opts
    endpoint = _endpoint(env)
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts["AWS_S3_ENDPOINT"] = (parts.netloc + parts.path).rstrip("/")
        opts["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        if env.get(key):
            opts[key] = env[key]
    if _region(env):
        opts["AWS_REGION"] = _region(env)
    if str(env.get("AWS_NO_SIGN_REQUEST", "")).lower() in _TRUE:
        opts["AWS_NO_SIGN_REQUEST"] = "YES"
    return opts


def fs_for(url: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
           fresh: bool = False):
    """Return ``(filesystem, path)``: the fsspec filesystem for ``url`` and the path within it.

    Parameters
    ----------
    url
        A local path or URL (``s3://bucket/prefix``).
    storage_options
        fsspec options; default :func:`storage_options_for` ``(url)``.
    fresh
        Bypass fsspec's instance cache (pick up changed credentials or environment).

    Raises
    ------
    StorageError
        If the protocol is unknown or its fsspec package is not installed.
    """
    import fsspec.core

    options = dict(storage_options_for(url) if storage_options is None else storage_options)
    if fresh and is_remote(url):
        options["skip_instance_cache"] = True
    text = os.fspath(url)
    if not is_remote(text):
        text = os.fspath(_local_path(text).resolve())
    try:
        return fsspec.core.url_to_fs(text, **options)
    except ImportError as exc:
        extra = "s3" if protocol_of(url) in _S3 else None
        hint = f"pip install 's2dask[{extra}]'" if extra else f"install the fsspec package for {protocol_of(url)}://"
        raise StorageError(f"{url} needs a package that is missing ({exc}): {hint}") from None
    except ValueError as exc:
        raise StorageError(f"cannot use {url}: {exc}; give a local path or an s3:// URL") from None


# ----------------------------------------------------------------------------------- checks


def _check_credentials(url: str) -> None:
    """Raise if no AWS credentials can be found for an ``s3://`` URL (and it is not anonymous)."""
    if protocol_of(url) not in _S3 or storage_options_for(url).get("anon"):
        return
    try:
        import botocore.session
    except ImportError:
        raise StorageError(f"{url} needs s3fs: pip install 's2dask[s3]'") from None
    try:
        creds = botocore.session.Session().get_credentials()
    except Exception as exc:  # a broken profile or config file
        raise StorageError(f"cannot read AWS credentials for {url}: {' '.join(str(exc).split())}; "
                           "fix AWS_PROFILE / ~/.aws/config or set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY") from None
    if creds is None or not creds.access_key:
        raise StorageError(f"no AWS credentials found for {url}: set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES "
                           "for a public bucket")


def _where(url: str) -> str:
    endpoint = _endpoint(os.environ) if protocol_of(url) in _S3 else None
    return f" at {endpoint}" if endpoint else ""


def _error(exc: BaseException, url: str, action: str) -> StorageError:
    """Turn a filesystem or botocore exception into one :class:`StorageError` line."""
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    name = type(exc).__name__
    low = text.lower()
    bucket = _bucket(url) if is_remote(url) else None
    if name == "NoCredentialsError" or "unable to locate credentials" in low:
        return StorageError(f"no AWS credentials found for {url}: set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    if isinstance(exc, FileNotFoundError) and bucket and ("bucket" in low or action == "bucket"):
        return StorageError(f"bucket {bucket!r} does not exist{_where(url)}: create it or fix "
                            f"the URL {url}")
    if isinstance(exc, PermissionError) or "accessdenied" in low or "forbidden" in low:
        rejected = ("invalidaccesskeyid", "signaturedoesnotmatch", "access key id you provided",
                    "signature we calculated", "security token", "expiredtoken")
        if any(r in low for r in rejected):
            return StorageError(f"the credentials were rejected when trying to {action} {url}: check "
                                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN")
        return StorageError(f"permission denied to {action} {url} ({text}): use a location you may "
                            f"{action} or fix its permissions")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") \
            or "could not connect" in low or "connect timeout" in low:
        return StorageError(f"cannot reach the storage endpoint for {url}{_where(url)} ({text}): check "
                            "AWS_ENDPOINT_URL and the network")
    return StorageError(f"cannot {action} {url}: {text}")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor) if path.anchor else Path.cwd()


def _probe_local_dir(directory: Path, url: str) -> None:
    probe = directory / f".s2dask-write-test-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise StorageError(f"output directory {directory} is not writable ({why}) for --out {url}: "
                           "choose another directory or fix its permissions") from None


def check_output_location(url: str | os.PathLike) -> None:
    """Check that outputs can be written under ``url`` before a job starts; create nothing.

    Local: the path is a directory or does not exist yet, and its nearest existing
    ancestor is a directory where a file can be created (a probe file is written and
    removed). Remote: the protocol's package is installed, credentials are found
    (``s3://``), the bucket exists, and a probe object
    ``<url>/.s2dask-write-test-<uuid>`` can be written and deleted.

    Raises
    ------
    StorageError
        With one line naming the location and how to fix it: bucket does not exist, no
        credentials, credentials rejected, permission denied, endpoint unreachable, path
        is a file, directory not writable.
    """
    text = os.fspath(url)
    if not is_remote(text):
        path = _local_path(text)
        if path.exists() and not path.is_dir():
            raise StorageError(f"--out {text} is a file, not a directory: give a directory for the outputs")
        base = _nearest_existing(path)
        if not base.is_dir():
            raise StorageError(f"cannot create --out {text}: {base} is a file, not a directory; "
                               "give a path under a directory")
        _probe_local_dir(base, text)
        return
    _check_credentials(text)
    fs, path = fs_for(text, fresh=True)
    _check_bucket(fs, text)
    probe = posixpath.join(path.rstrip("/"), f".s2dask-write-test-{uuid.uuid4().hex}")
    try:
        fs.pipe_file(probe, b"")
    except Exception as exc:
        raise _error(exc, text, "write to") from None
    try:
        fs.rm_file(probe)
    except Exception as exc:
        raise _error(exc, text, "delete from") from None


def _check_bucket(fs, url: str) -> None:
    """Raise a clear error when the bucket (or container) of ``url`` does not exist."""
    bucket = _bucket(url)
    if not bucket:
        raise StorageError(f"{url} names no bucket: use {protocol_of(url)}://BUCKET/PREFIX")
    try:
        if protocol_of(url) in _S3:
            fs.call_s3("head_bucket", Bucket=bucket)
        elif not fs.exists(bucket):
            raise FileNotFoundError(bucket)
    except FileNotFoundError as exc:
        raise _error(exc, url, "bucket") from None
    except PermissionError:
        # HEAD needs s3:ListBucket, which write-only credentials lack, and a 403 to HEAD
        # carries no reason: the probe write or the read that follows tells what is wrong
        return
    except Exception as exc:
        raise _error(exc, url, "reach the bucket of") from None


def check_input_location(url: str | os.PathLike) -> None:
    """Check that ``url`` (a scene file, a band folder or a Zarr store) exists and is readable.

    Raises
    ------
    StorageError
        With one line: file or directory not found, not readable, bucket does not exist,
        no object at the URL, no credentials, permission denied, endpoint unreachable.
    """
    text = os.fspath(url)
    if not is_remote(text):
        path = _local_path(text)
        if not path.exists():
            raise StorageError(f"input {text} does not exist: check the path")
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise StorageError(f"input {text} is not readable (permission denied): fix its permissions")
        return
    _check_credentials(text)
    fs, path = fs_for(text, fresh=True)
    _check_bucket(fs, text)
    try:
        found = fs.exists(path)
    except Exception as exc:
        raise _error(exc, text, "read") from None
    if not found:
        raise StorageError(f"no object or prefix {text}{_where(text)}: check the URL "
                           f"(list the bucket with: aws s3 ls {posixpath.dirname(text.rstrip('/'))}/)")
