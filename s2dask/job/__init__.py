"""Jobs: whole scenes classified on a Dask cluster, with a record, resumable.

Client side: the job itself (:mod:`~s2dask.job.run`: prepare, start, run, finish, record,
commit), its validated options (:mod:`~s2dask.job.options`), the prediction graph
(:mod:`~s2dask.job.graph`), the chunk ledger (:mod:`~s2dask.job.ledger`), batches with two
scenes in flight (:mod:`~s2dask.job.pipeline`), start-up overlapped with opening scenes
(:mod:`~s2dask.job.startup`), the scheduler watch (:mod:`~s2dask.job.watch`), chunk sizes
(:mod:`~s2dask.job.memory`), progress bars (:mod:`~s2dask.job.progress`) and the cluster
(:mod:`~s2dask.job.cluster`). Worker side: :mod:`~s2dask.job.worker` (the model plugin and the
tasks) and :mod:`~s2dask.job.preload` (what the fork server imports once).

May import :mod:`s2dask.maps`, :mod:`s2dask.model`, :mod:`s2dask.scene`, :mod:`s2dask.io`
and :mod:`s2dask.errors`.
"""
