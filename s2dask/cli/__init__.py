"""The command line: argument parsing only.

:mod:`~s2dask.cli.main` builds the parser and dispatches each subcommand to the library;
:mod:`~s2dask.cli.maps` adds the map-product subcommands and options,
:mod:`~s2dask.cli.args` the shared argument types, and :mod:`~s2dask.cli.demo` runs the
main job end to end on data the project makes itself. This is the only layer that turns an
:class:`~s2dask.errors.S2DaskError` into one line on stderr and exit code 2.

The top layer: may import every other.
"""

from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
