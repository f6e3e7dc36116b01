"""``python -m s2dask.cli``: the command line, as the ``s2dask`` console script runs it."""

from .main import run

run()
