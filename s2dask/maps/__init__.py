"""Maps: what a prediction becomes, and what is done with a class map afterwards.

Zarr and COG writers (:mod:`~s2dask.maps.writers`), chunk-wise readers of written maps
(:mod:`~s2dask.maps.layers`), the map products a task derives from one forward pass
(:mod:`~s2dask.maps.outputs`), uncertainty layers (:mod:`~s2dask.maps.uncertainty`),
seamless smoothing (:mod:`~s2dask.maps.smooth`) with chunks read with a halo
(:mod:`~s2dask.maps.halo`), and accuracy assessment: sampling design
(:mod:`~s2dask.maps.design`) and Olofsson estimators (:mod:`~s2dask.maps.accuracy`).

May import :mod:`s2dask.model`, :mod:`s2dask.scene`, :mod:`s2dask.io` and :mod:`s2dask.errors`.
"""
