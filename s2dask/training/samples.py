"""Labelled pixel tables: read and validate (splitting and folds live in :mod:`s2dask.training.splits`).

A table has one row per labelled point: band columns (any alias: ``B2`` or ``B02``),
an integer label column, optionally ``x``/``y`` map coordinates and a class-name column.
The defaults fit the tutorial's ``point_data.csv`` (``Class_ID`` 1..5, names from
``Description``).

Why three splits: the tutorial's points were rasterised from polygons on a 2.5 m grid,
so about 16 points share each 10 m pixel and its exact spectrum. A random split of points
puts copies of one pixel on both sides, and test accuracy then partly measures memory.
``pixel`` keeps every pixel on one side; ``block`` keeps whole square map blocks on one
side, which is closest to applying the model to a new area; ``group`` keeps whole labelled
features (the ``feature_id`` of a table written by ``s2dask sample``) on one side, so the
pixels of one polygon never sit on both sides. :class:`Split` counts the leakage so the
report can say how honest its figure is. :func:`fold_indices` gives K disjoint test folds
grouped the same ways, for cross-validation. Both are defined in :mod:`s2dask.training.splits` and
re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SamplesError
from ..io.records import sha256_file
from ..model.contract import DEFAULT_COLOURS
from ..scene.bands import DEFAULT_BANDS, band_columns, canonical_bands
from .splits import DEFAULT_FRACTIONS, SPLIT_METHODS, Folds, Split, fold_indices, split_samples

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLIT_METHODS",
    "TABLE_CONTRACT_KEY",
    "Folds",
    "Samples",
    "Split",
    "fold_indices",
    "read_class_table",
    "read_samples",
    "split_samples",
    "table_contract",
]

#: Parquet schema-metadata key holding the contract of a table written by ``s2dask sample``
#: (JSON: ``label``, ``name_column``, ``group_column``, ``bands``, ``scene_id``, ``crs``)
TABLE_CONTRACT_KEY = b"s2dask"
_CSV_SUFFIXES = (".csv", ".txt", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass
class Samples:
    """A validated labelled table.

    Attributes
    ----------
    X
        ``(N, B)`` float32 raw band values, columns in ``bands`` order.
    y
        ``(N,)`` int64 class values (as in the table, e.g. 1..5).
    xy
        ``(N, 2)`` float64 map coordinates, or None when the table has none.
    bands
        Canonical band names (``B02`` ...), the order of ``X``'s columns.
    classes
        ``[{"value", "name", "colour"}]`` for every class value present, sorted by value.
    source
        The file the table was read from (None for tables built in memory).
    sha256
        sha256 of the file's bytes (None for tables built in memory).
    label
        The label column's name.
    groups
        ``(N,)`` group of each row (e.g. the labelled feature it comes from), or None.
    group_column
        The column ``groups`` was read from.
    """

    X: np.ndarray
    y: np.ndarray
    xy: np.ndarray | None
    bands: list[str]
    classes: list[dict]
    source: str | None = None
    sha256: str | None = None
    label: str = "Class_ID"
    groups: np.ndarray | None = None
    group_column: str | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def class_values(self) -> list[int]:
        """Class values in output order."""
        return [int(c["value"]) for c in self.classes]

    def class_counts(self, index: np.ndarray | None = None) -> dict[int, int]:
        """Samples per class value (of the rows in ``index``, or all rows)."""
        y = self.y if index is None else self.y[index]
        return {v: int((y == v).sum()) for v in self.class_values}

    def subset(self, index: np.ndarray) -> Samples:
        """The rows in ``index`` (same bands and classes)."""
        return Samples(self.X[index], self.y[index], None if self.xy is None else self.xy[index],
                       list(self.bands), list(self.classes), self.source, self.sha256, self.label,
                       None if self.groups is None else self.groups[index], self.group_column)



# --------------------------------------------------------------------------- reading


def _read_table(path: Path):
    import pandas as pd

    name = path.name.lower()
    if not path.exists():
        raise SamplesError(f"samples file {path} does not exist: give a CSV or Parquet table")
    if path.is_dir():
        raise SamplesError(f"samples path {path} is a directory: give a CSV or Parquet file")
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        if name.endswith(_CSV_SUFFIXES):
            return pd.read_csv(path, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, pd.errors.ParserError) as exc:
        # pyarrow's ArrowInvalid / ArrowIOError / ArrowTypeError derive from these builtins
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SamplesError(
            f"cannot read samples file {path} ({type(exc).__name__}: {first}): "
            "give a readable CSV (header row, comma-separated) or Parquet table"
        ) from None
    raise SamplesError(
        f"samples file {path} has an unsupported extension: use .csv (or .csv.gz) or .parquet"
    )


def _numeric_column(df, col: str, path: Path, *, what: str) -> np.ndarray:
    """The column as float64; refuse missing or non-numeric values naming the first bad row."""
    import pandas as pd

    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        line = f" (line {i + 2} of the file)" if not path.name.lower().endswith(_PARQUET_SUFFIXES) else ""
        if pd.isna(raw.iloc[i]):
            raise SamplesError(
                f"{path}: {what} column {col!r} has a missing value at row {i + 1}{line} "
                f"({int(bad.sum())} bad rows in all): fill or drop rows with missing values"
            )
        raise SamplesError(
            f"{path}: {what} column {col!r} has a non-numeric value {str(raw.iloc[i])!r} at row "
            f"{i + 1}{line} ({int(bad.sum())} bad rows in all): "
            + ("labels must be integer class values; pick the integer class column with --label"
               if what == "label" else "fix or drop those rows")
        )
    return values.to_numpy(dtype="float64")


def _find_band_columns(columns: Sequence[str], bands: list[str], path: Path) -> list[str]:
    by_band = band_columns(columns)
    missing = [b for b in bands if b not in by_band]
    if missing:
        present = ", ".join(sorted(by_band)) or "none"
        raise SamplesError(
            f"{path} has no column for band(s) {', '.join(missing)} (band columns found: {present}; "
            f"all columns: {', '.join(map(str, columns))}): add the columns or choose bands with "
            "--bands"
        )
    out = []
    for b in bands:
        cols = by_band[b]
        if len(cols) > 1:
            raise SamplesError(
                f"{path} has several columns for band {b} ({', '.join(cols)}): keep one of them"
            )
        out.append(cols[0])
    return out


def _find_column(columns: Sequence[str], name: str) -> str | None:
    if name in columns:
        return name
    folded = [c for c in columns if str(c).lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def read_class_table(path: str | os.PathLike) -> dict[int, dict]:
    """Read a class table CSV: a value column (``value``, ``id`` or ``Class_ID``), a name
    column (``name``, ``Description`` or ``Class``) and optionally ``colour``/``color``.

    Returns
    -------
    dict
        ``{value: {"value", "name", "colour"}}`` (colour None when not given).

    Raises
    ------
    SamplesError
        If the file cannot be read or lacks a value column, or a value is not an integer.
    """
    import pandas as pd

    path = Path(path)
    df = _read_table(path)
    cols = [str(c) for c in df.columns]
    vcol = next((c for n in ("value", "id", "class_id") if (c := _find_column(cols, n))), None)
    if vcol is None:
        raise SamplesError(
            f"class table {path} has no value column (columns: {', '.join(cols)}): "
            "name the integer class column 'value', 'id' or 'Class_ID'"
        )
    ncol = next((c for n in ("name", "description", "class") if (c := _find_column(cols, n))), None)
    ccol = next((c for n in ("colour", "color") if (c := _find_column(cols, n))), None)
    values = _numeric_column(df, vcol, path, what="class value")
    if not np.all(values == np.round(values)):
        raise SamplesError(f"class table {path}: column {vcol!r} must hold integer class values")
    out: dict[int, dict] = {}
    for i, v in enumerate(values.astype(int)):
        if int(v) in out:
            raise SamplesError(f"class table {path} lists class value {v} twice: list each once")
        name = str(df[ncol].iloc[i]) if ncol else str(v)
        colour = df[ccol].iloc[i] if ccol else None
        out[int(v)] = {"value": int(v), "name": name,
                       "colour": None if colour is None or pd.isna(colour) else str(colour)}
    return out


def table_contract(path: str | os.PathLike) -> dict:
    """The contract a Parquet table written by ``s2dask sample`` carries ({} for others).

    Parameters
    ----------
    path
        A samples table; only Parquet files carry a contract.

    Returns
    -------
    dict
        ``label``, ``name_column``, ``group_column``, ``bands``, ``scene_id``, ``crs`` ...
        or an empty dict.
    """
    import json

    if not Path(path).name.lower().endswith(_PARQUET_SUFFIXES) or not Path(path).is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        return dict(json.loads(meta[TABLE_CONTRACT_KEY])) if TABLE_CONTRACT_KEY in meta else {}
    except (OSError, ValueError, TypeError):  # unreadable: _read_table says why
        return {}


def read_samples(
    path: str | os.PathLike,
    *,
    label: str | None = None,
    bands: Sequence[str] | str | None = None,
    name_column: str | None = "Description",
    x: str | None = "x",
    y: str | None = "y",
    class_table: str | os.PathLike | None = None,
    min_classes: int = 2,
    group_column: str | None = "feature_id",
) -> Samples:
    """Read and validate a labelled table (CSV or Parquet).

    Parameters
    ----------
    path
        ``.csv`` (also ``.csv.gz``) or ``.parquet`` table, one row per labelled point.
    label
        The integer class column (values 0..254). Default: the column named by the table's
        contract (a Parquet table written by ``s2dask sample``), else ``Class_ID``.
    bands
        Bands to use, any alias (``B2`` or ``B02``); default the tutorial's ten
        (:data:`s2dask.scene.bands.DEFAULT_BANDS`).
    name_column
        Column holding a class's name (the most frequent name per value is used); ignored
        when absent or when ``class_table`` is given. When it is absent, the name column
        named by the table's contract is used.
    x, y
        Map coordinate columns (metres); the coordinates are kept when both exist.
    class_table
        Optional CSV naming (and colouring) each class value; every label value in the
        table must be listed.
    min_classes
        Refuse tables with fewer distinct classes (training needs 2).
    group_column
        Column of row groups for ``split_samples(method="group")`` (``feature_id``, the
        labelled feature of each row in a table written by ``s2dask sample``); kept in
        ``Samples.groups`` when present, ignored when absent.

    Returns
    -------
    Samples

    Raises
    ------
    SamplesError
        If the file is missing, unreadable or of an unsupported type; a band or the label
        column is missing; a value is missing or non-numeric; a label is not an integer
        in 0..254; there are fewer than ``min_classes`` classes; or a label value is not in
        the class table.
    BandError
        If a requested band name is not a Sentinel-2 band.
    """
    path = Path(path)
    df = _read_table(path)
    columns = [str(c) for c in df.columns]
    df.columns = columns
    if len(df) == 0:
        raise SamplesError(f"samples file {path} has no rows: give a table with labelled points")
    want = canonical_bands(bands) if bands is not None else list(DEFAULT_BANDS)
    contract = table_contract(path)
    if label is None:
        label = contract.get("label") or "Class_ID"
    if contract.get("name_column") and name_column and _find_column(columns, name_column) is None:
        name_column = contract["name_column"]
    label_col = _find_column(columns, label)
    if label_col is None:
        raise SamplesError(
            f"{path} has no label column {label!r} (columns: {', '.join(columns)}): "
            "name the class column with --label"
        )
    band_cols = _find_band_columns(columns, want, path)
    X = np.column_stack([_numeric_column(df, c, path, what="band") for c in band_cols])
    yv = _numeric_column(df, label_col, path, what="label")
    if not np.all(yv == np.round(yv)) or yv.min() < 0 or yv.max() > 254:
        i = int(np.flatnonzero((yv != np.round(yv)) | (yv < 0) | (yv > 254))[0])
        raise SamplesError(
            f"{path}: label column {label_col!r} has value {yv[i]!r} at row {i + 1}: class values "
            "must be integers 0..254 (255 marks nodata in class maps)"
        )
    yv = yv.astype("int64")
    values = sorted(int(v) for v in np.unique(yv))
    if len(values) < min_classes:
        raise SamplesError(
            f"{path}: label column {label_col!r} holds only {len(values)} class(es) "
            f"({', '.join(map(str, values))}): a classifier needs at least {min_classes}; "
            "add samples of other classes or pick another --label column"
        )
    xy = None
    xcol = _find_column(columns, x) if x else None
    ycol = _find_column(columns, y) if y else None
    if xcol and ycol:
        xy = np.column_stack([_numeric_column(df, xcol, path, what="coordinate"),
                              _numeric_column(df, ycol, path, what="coordinate")])

    if class_table is not None:
        table = read_class_table(class_table)
        absent = [v for v in values if v not in table]
        if absent:
            hint = ""
            if all(v - 1 in table for v in values):
                hint = " (the table looks zero-based: its values are the labels minus 1)"
            raise SamplesError(
                f"class table {class_table} lacks label value(s) {', '.join(map(str, absent))} found "
                f"in {path} column {label_col!r} (table values: "
                f"{', '.join(map(str, sorted(table)))}){hint}: list every label value in the table"
            )
        classes = [dict(table[v]) for v in values]
    else:
        ncol = _find_column(columns, name_column) if name_column else None
        classes = []
        for v in values:
            name = str(v)
            if ncol is not None:
                names = df.loc[yv == v, ncol].dropna().astype(str)
                if len(names):
                    name = names.value_counts().index[0]
            classes.append({"value": v, "name": name, "colour": None})
    for i, c in enumerate(classes):
        if not c.get("colour"):
            c["colour"] = DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
    gcol = _find_column(columns, group_column) if group_column else None
    groups = df[gcol].to_numpy() if gcol else None
    if groups is not None and df[gcol].isna().any():
        raise SamplesError(f"{path}: group column {gcol!r} has missing values: fill them or drop those rows")
    return Samples(
        X=X.astype("float32"), y=yv, xy=xy, bands=want, classes=classes,
        source=str(path), sha256=sha256_file(path), label=label_col, groups=groups, group_column=gcol,
    )
