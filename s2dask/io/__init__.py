"""Storage and records: the bottom layer.

Where inputs and outputs live (local paths or object stores through fsspec), atomic
writes and commits (:mod:`~s2dask.io.storage`), retries with backoff for object-store
requests (:mod:`~s2dask.io.retry`), URL handling (:mod:`~s2dask.io.remote`) and what the
files s2dask writes are made of (:mod:`~s2dask.io.records`).

Imports only :mod:`s2dask.errors`; every other layer may import it.
"""
