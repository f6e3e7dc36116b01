"""Models: what a bundle is and how its forward pass runs.

The input contract a bundle carries (:mod:`~s2dask.model.contract`), building, saving and
loading bundles (:mod:`~s2dask.model.bundle`), the deep-learning backend
(:mod:`~s2dask.model.backend`, the only module that imports Keras' backends), OpenVINO IR
(:mod:`~s2dask.model.openvino_ir`), the inference engines (:mod:`~s2dask.model.engines`)
and the prediction of one block of pixels (:mod:`~s2dask.model.blocks`).

May import :mod:`s2dask.scene` (the band table), :mod:`s2dask.io` and :mod:`s2dask.errors`.
"""
