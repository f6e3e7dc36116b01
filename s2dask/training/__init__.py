"""Training: from labels to a model bundle, single-node, with honest reports.

Labels from vector files (:mod:`~s2dask.training.vector`) sampled from a scene
(:mod:`~s2dask.training.labels`, which reads on the cluster), labelled pixel tables
(:mod:`~s2dask.training.samples`), leakage-aware splits (:mod:`~s2dask.training.splits`),
cross-validation (:mod:`~s2dask.training.crossval`), training and evaluation
(:mod:`~s2dask.training.train`) and their metrics and plots (:mod:`~s2dask.training.metrics`).

May import every layer below it: :mod:`s2dask.job` (the cluster and progress bars for
sampling), :mod:`s2dask.model`, :mod:`s2dask.scene`, :mod:`s2dask.io`, :mod:`s2dask.errors`.
"""
