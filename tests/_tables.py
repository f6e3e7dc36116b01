"""Helpers that write small labelled tables into tmp_path for the samples/train tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
NAMES = {1: "Road", 2: "Building", 3: "Tree", 4: "Grass", 5: "Water"}


def separable_table(
    n_pixels_per_class: int = 40,
    *,
    classes: tuple[int, ...] = (1, 2, 3),
    points_per_pixel: int = 4,
    noise: float = 40.0,
    seed: int = 0,
    bands: list[str] = BANDS,
) -> pd.DataFrame:
    """A table like the tutorial's: ``points_per_pixel`` points share each 10 m pixel's spectrum.

    Each class has its own mean spectrum (well separated), pixels are laid out on a grid of
    10 m cells (class c in its own band of rows, so blocks mix few classes), and every value
    is a positive integer DN (no nodata 0).
    """
    rng = np.random.default_rng(seed)
    rows = []
    width = 20  # pixels per grid row
    for k, c in enumerate(classes):
        centre = 800 + 900 * k + 300 * np.arange(len(bands)) * ((k % 2) * 2 - 1) / len(bands)
        for i in range(n_pixels_per_class):
            spectrum = np.round(np.clip(centre + rng.normal(0, noise, len(bands)), 1, None))
            # pixels of all classes interleave along x so spatial blocks hold several classes
            col = (i * len(classes) + k) % width
            row = (i * len(classes) + k) // width
            x0, y0 = 677770 + 10 * col, 4764060 - 10 * row
            for j in range(points_per_pixel):
                rows.append({
                    "x": x0 + 2.5 * (j % 2) + 1.25,
                    "y": y0 + 2.5 * (j // 2) + 1.25,
                    "Class_ID": c,
                    **dict(zip(bands, spectrum.astype(int))),
                    "Description": NAMES.get(c, f"class {c}"),
                })
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, path: Path) -> Path:
    """Write CSV or Parquet by suffix; return the path."""
    path = Path(path)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def buffalo_dir() -> Path:
    """Where the tutorial's Buffalo data lives (``S2DASK_SAMPLE_DATA`` or ../shared/data)."""
    root = os.environ.get("S2DASK_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    return Path(root) / "buffalo"
