"""Argument types shared by the command line modules (``s2dask.cli``, ``s2dask.cli.maps``).

Each is an ``argparse`` ``type=``: it turns the text into a value or raises
:class:`argparse.ArgumentTypeError`, whose message argparse prints as the usage error.
"""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "chunk_size", "metres"]


def _parse(text: str, parse, what: str):
    """``parse(text)``, or the usage error ``'<text>' is not <what>``."""
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def chunk_size(text: str) -> int:
    """``--chunks`` of classify, checked here: a bad value is refused before a cluster starts."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid chunks={text!r}: chunk size must be a positive integer")
    return value


def metres(text: str) -> float:
    value = _parse(text, float, "a number of metres")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 metres, got {text}")
    return value
