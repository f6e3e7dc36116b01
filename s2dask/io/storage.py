"""Where inputs and outputs live: local paths, or object stores through fsspec.

How a URL is reached (protocol, fsspec options, GDAL configuration, :func:`is_remote`) is in
:mod:`s2dask.io.remote`, re-exported here (``s2dask.io.storage.fs_for`` etc.).

:func:`check_output_location` and :func:`check_input_location` run before a job starts,
so that a missing bucket, missing credentials or a read-only directory is one clear line
rather than a failure deep inside a Dask task. Nothing here carries secrets: the returned
options name endpoints and regions only; credentials stay in each process's environment.

Every writer of the package goes through this module: :class:`Location` (a picklable path
or URL with its filesystem operations; whether it is remote is decided here and nowhere
else), :func:`atomic_write_bytes` and its text/JSON siblings and :func:`staged_file` (never
a half-written file: temporary file and rename locally, one PUT on an object store),
:func:`put_file` and :func:`commit_dir` (a finished folder moved into place; an old one is
replaced only on overwrite and removed after).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from ..errors import OutputExistsError, StorageError
from .records import json_default
from .remote import (
    S3_PROTOCOLS,
    bucket_of,
    endpoint_of,
    fs_for,
    gdal_env_for,
    is_remote,
    join,
    local_path,
    protocol_of,
    storage_options_for,
)
from .retry import RetryPolicy, retries_off, single_layer

__all__ = ["is_remote", "protocol_of", "join", "storage_options_for", "gdal_env_for", "fs_for",
           "check_output_location", "check_input_location", "Location", "as_location",
           "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "staged_file", "staged_dir",
           "put_file", "commit_dir", "FileStat", "stat", "vsi_to_url", "remote_env", "open_array"]

# ----------------------------------------------------------------------------------- checks


def _check_credentials(url: str) -> None:
    """Raise if no AWS credentials can be found for an ``s3://`` URL (and it is not anonymous)."""
    if protocol_of(url) not in S3_PROTOCOLS or storage_options_for(url).get("anon"):
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
    endpoint = endpoint_of(os.environ) if protocol_of(url) in S3_PROTOCOLS else None
    return f" at {endpoint}" if endpoint else ""


def _error(exc: BaseException, url: str, action: str) -> StorageError:
    """Turn a filesystem or botocore exception into one :class:`StorageError` line."""
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    name = type(exc).__name__
    low = text.lower()
    bucket = bucket_of(url) if is_remote(url) else None
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

    Parameters
    ----------
    url
        The output directory or ``s3://`` prefix (``--out``).

    Raises
    ------
    StorageError
        With one line naming the location and how to fix it: bucket does not exist, no
        credentials, credentials rejected, permission denied, endpoint unreachable, path
        is a file, directory not writable.
    """
    text = os.fspath(url)
    if not is_remote(text):
        path = local_path(text)
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
    _checkbucket_of(fs, text)
    probe = posixpath.join(path.rstrip("/"), f".s2dask-write-test-{uuid.uuid4().hex}")
    try:
        fs.pipe_file(probe, b"")
    except Exception as exc:
        raise _error(exc, text, "write to") from None
    try:
        fs.rm_file(probe)
    except Exception as exc:
        raise _error(exc, text, "delete from") from None


def _checkbucket_of(fs, url: str) -> None:
    """Raise a clear error when the bucket (or container) of ``url`` does not exist."""
    bucket = bucket_of(url)
    if not bucket:
        raise StorageError(f"{url} names no bucket: use {protocol_of(url)}://BUCKET/PREFIX")
    try:
        if protocol_of(url) in S3_PROTOCOLS:
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

    Parameters
    ----------
    url
        The input's path or ``s3://`` URL.

    Raises
    ------
    StorageError
        With one line: file or directory not found, not readable, bucket does not exist,
        no object at the URL, no credentials, permission denied, endpoint unreachable.
    """
    text = os.fspath(url)
    if not is_remote(text):
        path = local_path(text)
        if not path.exists():
            raise StorageError(f"input {text} does not exist: check the path")
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise StorageError(f"input {text} is not readable (permission denied): fix its permissions")
        return
    _check_credentials(text)
    fs, path = fs_for(text, fresh=True)
    _checkbucket_of(fs, text)
    try:
        found = fs.exists(path)
    except Exception as exc:
        raise _error(exc, text, "read") from None
    if not found:
        raise StorageError(f"no object or prefix {text}{_where(text)}: check the URL "
                           f"(list the bucket with: aws s3 ls {posixpath.dirname(text.rstrip('/'))}/)")


# ----------------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class Location:
    """A local path or an object-store URL, and the filesystem operations s2dask needs there.

    Picklable (the URL and its fsspec options travel; the filesystem is made again where it
    is used), so Dask tasks carry it. ``options`` default to :func:`storage_options_for`
    ``(url)`` computed where the location is made (the client, for a job's outputs).
    """

    url: str
    #: fsspec ``storage_options`` (``None`` for a local path)
    options: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", os.fspath(self.url))
        if self.options is None and is_remote(self.url):
            object.__setattr__(self, "options", storage_options_for(self.url))

    def __str__(self) -> str:
        return self.url
    @property
    def remote(self) -> bool:
        """Whether this is an object-store URL (the one test of "remote" in s2dask)."""
        return is_remote(self.url)

    @property
    def fs(self):
        """The fsspec filesystem of a remote location (fsspec caches the instance).

        With options from :meth:`s2dask.io.retry.RetryPolicy.storage_options` its own retry
        loops are off (:func:`s2dask.io.retry.single_layer`): the caller retries.
        """
        fs = fs_for(self.url, storage_options=self.options)[0]
        return single_layer(fs) if retries_off(self.options) else fs

    @property
    def name(self) -> str:
        """The last path component."""
        base = posixpath if self.remote else os.path
        return base.basename(self.url.rstrip("/"))

    def join(self, *parts: str) -> "Location":
        """The location of ``parts`` below this one (same options)."""
        return Location(join(self.url, *parts), self.options)

    def sibling(self, name: str) -> "Location":
        """The location ``name`` next to this one."""
        base = posixpath if self.remote else os.path
        return Location(base.join(base.dirname(self.url.rstrip("/")), name), self.options)

    def exists(self) -> bool:
        return self.fs.exists(self.url) if self.remote else os.path.exists(self.url)

    def makedirs(self) -> None:
        """Create the directory (and its parents) locally; object stores have no directories."""
        if not self.remote:
            os.makedirs(self.url, exist_ok=True)

    def rm(self) -> None:
        """Remove the file or folder (recursively), if it exists."""
        if self.remote:
            if self.fs.exists(self.url):
                self.fs.rm(self.url, recursive=True)
        elif os.path.isdir(self.url):
            shutil.rmtree(self.url)
        elif os.path.exists(self.url):
            os.unlink(self.url)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.url) if self.remote else Path(self.url).read_bytes()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def list(self, pattern: str = "*") -> list["Location"]:
        """The entries of this folder whose names match ``pattern`` (none if it is absent)."""
        if not self.remote:
            return [Location(str(p)) for p in Path(self.url).glob(pattern)]
        fs = self.fs
        if not fs.exists(self.url):
            return []
        scheme = self.url.split("://", 1)[0]
        return [Location(f"{scheme}://{p}", self.options)
                for p in fs.glob(self.url.rstrip("/") + "/" + pattern)]


def as_location(where: "Location | str | os.PathLike", options: dict | None = None) -> Location:
    """``where`` as a :class:`Location`.

    Parameters
    ----------
    where
        A path, URL or :class:`Location` (returned as it is).
    options
        fsspec options of a new remote location (default: from the environment).
    """
    if isinstance(where, Location):
        return where
    return Location(os.fspath(where), options)


# ----------------------------------------------------------------------------------- atomic writes


def _rename(src: str, dst: str) -> None:
    """The one local rename of s2dask (atomic within a filesystem; replaces a file at ``dst``)."""
    os.replace(src, dst)


@contextlib.contextmanager
def staged_file(dst: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to local ``dst``; rename it to ``dst`` if the block succeeds.

    Whatever writes the file (GDAL, pandas, matplotlib) writes the temporary path, so a
    reader never sees ``dst`` half-written; on an exception the temporary file is removed
    and ``dst`` is left as it was. ``suffix`` ends the temporary name (a writer that picks
    its format from the extension needs it).

    Parameters
    ----------
    dst
        The local file to write.
    suffix
        The end of the temporary name.

    Raises
    ------
    OSError
        If the rename fails; whatever the block raises passes through.
    """
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        _rename(os.fspath(tmp), os.fspath(dst))
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(dst: str | os.PathLike, *, overwrite: bool, appeared: str) -> Iterator[Path]:
    """Yield a new temporary folder next to local ``dst``; commit it to ``dst`` (:func:`commit_dir`)
    if the block succeeds, remove it if not.

    Parameters
    ----------
    dst
        The local folder to write (its parent is created).
    overwrite, appeared
        As for :func:`commit_dir`.

    Raises
    ------
    OutputExistsError
        If ``dst`` appeared meanwhile and ``overwrite`` is false; whatever the block raises
        passes through.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        commit_dir(tmp, dst, overwrite=overwrite, appeared=appeared)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(dst: "Location | str | os.PathLike", data: bytes) -> None:
    """Write ``data`` to ``dst`` so that it is either absent, as before, or complete.

    Local: a temporary file in the same folder, then a rename. Object store: one PUT
    (atomic by itself).

    Parameters
    ----------
    dst
        The file's path, URL or :class:`Location`.
    data
        Its whole content.

    Raises
    ------
    StorageError
        If the write fails (disk full, permission denied, bucket unreachable).
    """
    loc = as_location(dst)
    if loc.remote:
        try:
            loc.fs.pipe_file(loc.url, data)
        except Exception as exc:
            raise StorageError(f"cannot write {loc.url}: {exc}") from None
        return
    try:
        with staged_file(loc.url) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise StorageError(f"cannot write {loc.url}: {exc.strerror or exc}; check free space and "
                           "permissions") from None


def atomic_write_text(dst: "Location | str | os.PathLike", text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text (raises :class:`StorageError` likewise)."""
    atomic_write_bytes(dst, text.encode())


def atomic_write_json(dst: "Location | str | os.PathLike", data: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] = json_default) -> None:
    """:func:`atomic_write_bytes` of ``data`` as JSON with a final newline (raises likewise)."""
    atomic_write_text(dst, json.dumps(data, indent=indent, default=default) + "\n")


def put_file(local: str | os.PathLike, dst: "Location | str | os.PathLike") -> None:
    """Move a complete local file to ``dst``: a rename locally, one upload to an object store.

    Parameters
    ----------
    local
        The finished file (on the same filesystem as ``dst`` when ``dst`` is local).
    dst
        Where it belongs.

    Raises
    ------
    OSError
        If the rename or the upload fails.
    """
    loc = as_location(dst)
    if loc.remote:
        loc.fs.put_file(os.fspath(local), loc.url)
    else:
        _rename(os.fspath(local), loc.url)


def _move_dir(src: Location, dst: Location) -> None:
    if src.remote:  # copy then delete: object stores have no rename (not atomic)
        fs = src.fs
        fs.copy(src.url.rstrip("/") + "/", dst.url.rstrip("/") + "/", recursive=True)
        fs.rm(src.url, recursive=True)
    else:
        _rename(src.url, dst.url)


def commit_dir(partial: "Location | str | os.PathLike", final: "Location | str | os.PathLike", *,
               overwrite: bool, appeared: str) -> None:
    """Move a complete folder ``partial`` to ``final``; replace an old one only with overwrite.

    An existing ``final`` is first moved aside (``.<name>.old-<id>``), the new folder takes
    its place, and only then is the old one removed; if the move fails, the old one is
    put back.

    Parameters
    ----------
    partial, final
        The finished folder and where it belongs (same filesystem or bucket).
    overwrite
        Whether an existing ``final`` may be replaced.
    appeared
        The message of the error raised when ``final`` exists and ``overwrite`` is false.

    Raises
    ------
    OutputExistsError
        If ``final`` exists and ``overwrite`` is false.
    StorageError
        If the move fails (the old output, if any, is back in place).
    """
    partial, final = as_location(partial), as_location(final)
    old = None
    exists = final.exists()
    if exists and not overwrite:
        raise OutputExistsError(appeared)
    try:
        if exists:
            old = final.sibling(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            _move_dir(final, old)
        _move_dir(partial, final)
    except OSError as exc:
        if old is not None and not final.exists():
            _move_dir(old, final)
        raise StorageError(f"cannot move {partial.url} to {final.url}: {exc.strerror or exc}") from None
    if old is not None:
        try:
            old.rm()
        except OSError:
            pass


# ----------------------------------------------------------------------------------- GDAL and Zarr


class FileStat(NamedTuple):
    """Size and version of a file: what makes a changed input get a new graph name."""

    size: int
    version: int | str  # the modification time in ns locally; the object's ETag remotely


def vsi_to_url(path: str) -> str | None:
    """The URL of a GDAL ``/vsis3/`` (``s3://``) or ``/vsicurl/`` (``https://``) path; ``None`` otherwise."""
    if path.startswith("/vsis3/"):
        return "s3://" + path[len("/vsis3/"):]
    if path.startswith("/vsicurl/"):
        return path[len("/vsicurl/"):]
    return None


def remote_env(path: str, policy: RetryPolicy | None = None) -> dict[str, str]:
    """GDAL options for reading a ``/vsis3/`` or ``/vsicurl/`` path; none for local files.

    Endpoint and region (:func:`gdal_env_for`), and GDAL's own retries of failed HTTP
    requests (:meth:`s2dask.io.retry.RetryPolicy.gdal_env`; ``policy`` default: from
    ``S2DASK_RETRIES``/``S2DASK_RETRY_DELAY``, else 5 retries).
    """
    url = vsi_to_url(path)
    if url is None:
        return {}
    return {**gdal_env_for(url), **(policy or RetryPolicy.from_env()).gdal_env()}


def stat(path: str | os.PathLike) -> FileStat:
    """:class:`FileStat` of a local file, or of a ``/vsis3/`` or ``/vsicurl/`` object (size and ETag,
    stable across processes; an HTTP server's HEAD answer for ``/vsicurl/``)."""
    url = vsi_to_url(os.fspath(path))
    if url is None:
        st = os.stat(path)
        return FileStat(st.st_size, st.st_mtime_ns)
    fs, key = fs_for(url)
    info = fs.info(key)
    return FileStat(int(info["size"]), str(info.get("ETag", "")).strip('"'))


def open_array(store: "Location | str | os.PathLike", name: str):
    """Open array ``name`` of a Zarr group for writing, locally or on an object store."""
    import zarr

    loc = as_location(store)
    if loc.remote and retries_off(loc.options):  # the caller retries: one layer (s2dask.io.retry)
        from zarr.storage import FsspecStore

        fs, path = fs_for(loc.url, storage_options={**(loc.options or {}), "asynchronous": True})
        return zarr.open_array(store=FsspecStore(single_layer(fs), path=path), path=name, mode="r+",
                               zarr_format=3)  # s2dask's stores: one metadata GET, not three
    if loc.remote:
        return zarr.open_array(store=loc.url, path=name, mode="r+", storage_options=loc.options)
    return zarr.open_array(store=loc.url, path=name, mode="r+")
