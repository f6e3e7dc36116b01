"""Command line: argument parsing only.

Every subcommand calls the library. :class:`~s2dask.errors.S2DaskError` is turned into
one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from . import __version__
from .errors import S2DaskError

Handler = Callable[[argparse.Namespace], int | None]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# --------------------------------------------------------------------------- train / evaluate
# (section owned by the training feature: samples.py, train.py)


def _add_train(sub: argparse._SubParsersAction) -> None:
    pass  # filled in by the training feature


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    pass  # filled in by the training feature


# --------------------------------------------------------------------------- scenes
# (section owned by the scene feature: scene.py)


def _add_grid_to_raster(sub: argparse._SubParsersAction) -> None:
    pass  # filled in by the scene feature


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    pass  # filled in by the scene feature


# --------------------------------------------------------------------------- classify / demo
# (section owned by the job feature: job.py, demo.py)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    pass  # filled in by the job feature


def _add_demo(sub: argparse._SubParsersAction) -> None:
    pass  # filled in by the job feature


# --------------------------------------------------------------------------- parser and entry point

_ADDERS = (_add_demo, _add_train, _add_evaluate, _add_grid_to_raster, _add_inspect, _add_classify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2dask",
        description="Classify whole Sentinel-2 scenes with Keras models on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"s2dask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``s2dask`` command line; return the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except S2DaskError as exc:
        print(f"s2dask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"s2dask {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
