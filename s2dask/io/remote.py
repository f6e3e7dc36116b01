"""URLs of inputs and outputs: local path or object store, and how each library reaches it.

Object storage is reached two ways, configured from the same standard environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO, Ceph or a test server):

* fsspec (``s3fs``) for Zarr stores, JSON records and quicklooks:
  :func:`fs_for` and :func:`storage_options_for`;
* GDAL (rasterio opens ``s3://`` as ``/vsis3/``) for GeoTIFF/COG scenes:
  :func:`gdal_env_for`, to be used as ``rasterio.Env(**gdal_env_for(url))``.

:func:`is_remote` is the one test of "remote" in s2dask. Nothing here carries secrets: the
returned options name endpoints and regions only; credentials stay in each process's
environment. :mod:`s2dask.io.storage` re-exports all of this and builds on it.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..errors import StorageError

__all__ = ["protocol_of", "is_remote", "local_path", "join", "bucket_of", "endpoint_of",
           "region_of", "storage_options_for", "gdal_env_for", "fs_for", "S3_PROTOCOLS"]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: the protocols read with s3fs and GDAL /vsis3/
S3_PROTOCOLS = ("s3", "s3a")
_S3 = S3_PROTOCOLS
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


def local_path(url: str | os.PathLike) -> Path:
    """The local path of a path or ``file://`` URL (``~`` expanded)."""
    text = os.fspath(url)
    if protocol_of(text) in ("file", "local") and _SCHEME.match(text):
        text = text.split("://", 1)[1]
    return Path(text).expanduser()


def join(url: str | os.PathLike, *parts: str) -> str:
    """Join path components onto a local path or URL with the right separator."""
    if is_remote(url):
        return posixpath.join(os.fspath(url).rstrip("/"), *parts)
    return os.fspath(local_path(url).joinpath(*parts))


def bucket_of(url: str) -> str:
    """The bucket (or container) of an object-store URL."""
    return urlsplit(os.fspath(url)).netloc


def endpoint_of(env: Mapping[str, str]) -> str | None:
    """The custom S3 endpoint named in ``env`` (MinIO, a test server), if any."""
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def region_of(env: Mapping[str, str]) -> str | None:
    """The AWS region named in ``env``, if any."""
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
    if endpoint_of(env):
        client_kwargs["endpoint_url"] = endpoint_of(env)
    if region_of(env):
        client_kwargs["region_name"] = region_of(env)
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
    endpoint = endpoint_of(env)
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts["AWS_S3_ENDPOINT"] = (parts.netloc + parts.path).rstrip("/")
        opts["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        if env.get(key):
            opts[key] = env[key]
    if region_of(env):
        opts["AWS_REGION"] = region_of(env)
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
        text = os.fspath(local_path(text).resolve())
    try:
        return fsspec.core.url_to_fs(text, **options)
    except ImportError as exc:
        extra = "s3" if protocol_of(url) in _S3 else None
        hint = f"pip install 's2dask[{extra}]'" if extra else f"install the fsspec package for {protocol_of(url)}://"
        raise StorageError(f"{url} needs a package that is missing ({exc}): {hint}") from None
    except ValueError as exc:
        raise StorageError(f"cannot use {url}: {exc}; give a local path or an s3:// URL") from None
