"""Splitting a labelled table: train / validation / test (random, pixel, block, group) and
K cross-validation folds grouped the same ways.

Why the grouped splits: the tutorial's points were rasterised from polygons on a 2.5 m grid,
so about 16 points share each 10 m pixel and its exact spectrum; a random split puts copies
of one pixel on both sides. ``pixel`` keeps every pixel on one side, ``block`` whole square
map blocks, ``group`` whole labelled features (``feature_id`` of a table from
``s2dask sample``). :class:`Split` counts the leakage; :func:`fold_indices` gives K disjoint
test folds. The public names are re-exported by :mod:`s2dask.training.samples`.

A table is anything shaped like :class:`s2dask.training.samples.Samples` (:class:`LabelledRows`); this
module does not import :mod:`s2dask.training.samples`, which imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import SamplesError

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLIT_METHODS",
    "Folds",
    "LabelledRows",
    "Split",
    "fold_indices",
    "split_samples",
]

SPLIT_METHODS = ("random", "pixel", "block", "group")
#: the tutorial's protocol: 75 % train, 12 % validation, 13 % test
DEFAULT_FRACTIONS = (0.75, 0.12, 0.13)
_SIDES = ("train", "val", "test")


class LabelledRows(Protocol):
    """What splitting needs of a table; :class:`s2dask.training.samples.Samples` is one."""

    X: np.ndarray
    y: np.ndarray
    xy: np.ndarray | None
    classes: list[dict]
    source: str | None
    groups: np.ndarray | None
    group_column: str | None

    def __len__(self) -> int: ...

    @property
    def class_values(self) -> list[int]: ...

    def class_counts(self, index: np.ndarray | None = None) -> dict[int, int]: ...


@dataclass
class Split:
    """Train / validation / test row indices and what they mean for an honest accuracy.

    ``info`` (JSON-ready) holds the method, fractions, seed, counts per side and per
    class, unique pixels per side, and the leakage: test pixels that also have points
    in train, and test rows whose exact spectrum also occurs in train.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.info["method"]

    @property
    def description(self) -> str:
        """One paragraph: what the split means for the honesty of the test figure."""
        return self.info["explanation"]

    def __getitem__(self, side: str) -> np.ndarray:
        return {"train": self.train, "val": self.val, "test": self.test}[side]



# --------------------------------------------------------------------------- splitting


def _pixel_keys(xy: np.ndarray, size: float) -> np.ndarray:
    """One int64 key per row: the ``size`` x ``size`` cell (floor(x/size), floor(y/size))."""
    cells = np.floor(xy / float(size)).astype("int64")
    _, keys = np.unique(cells, axis=0, return_inverse=True)
    return keys.reshape(-1)


def _assign_groups(groups: np.ndarray, y: np.ndarray, values: list[int],
                   fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Side (0 train, 1 val, 2 test) per row; each group goes wholly to one side.

    Groups are visited in random order and each goes to the side whose per-class shortfall,
    weighted by the group's class mix, is largest; so every side ends near its fraction of
    every class. Then a class missing from train is brought in by moving the val/test group
    holding most of it.
    """
    uniq, inv = np.unique(groups, return_inverse=True)
    n_groups, n_classes = len(uniq), len(values)
    cls = np.searchsorted(np.asarray(values), y)
    counts = np.zeros((n_groups, n_classes), dtype="float64")
    np.add.at(counts, (inv, cls), 1.0)
    totals = counts.sum(axis=0)
    target = np.outer(np.asarray(fractions), totals)  # (3, C)
    current = np.zeros_like(target)
    side = np.empty(n_groups, dtype="int64")
    for g in rng.permutation(n_groups):
        mix = counts[g] / counts[g].sum()
        shortfall = ((target - current) / np.maximum(totals, 1.0)) @ mix
        s = int(np.argmax(shortfall))
        side[g] = s
        current[s] += counts[g]
    for c in range(n_classes):
        if current[0, c] == 0 and totals[c] > 0:
            g = int(np.argmax(np.where(side != 0, counts[:, c], -1.0)))
            current[side[g]] -= counts[g]
            current[0] += counts[g]
            side[g] = 0
    return side[inv]


def _explain(method: str, info: dict, *, pixel_size: float, block_size: float) -> str:
    leak = info.get("leakage") or {}
    if method == "random":
        if leak.get("test_pixels_in_train") is not None and info["pixels"]["test"]:
            k, n = leak["test_pixels_in_train"], info["pixels"]["test"]
            return (
                f"random split of points: {100 * k / n:.1f}% of test pixels ({k} of {n} "
                f"{pixel_size:g} m pixels) also have points in train, and "
                f"{leak['test_rows_spectrum_in_train_pct']:.1f}% of test rows have an identical "
                "spectrum in train; the test accuracy therefore partly measures recall of seen "
                "pixels and is optimistic. Use --split pixel or --split block for an honest "
                "estimate on unseen pixels or areas."
            )
        return (
            "random split of rows: rows with identical spectra can fall on both sides "
            f"({leak.get('test_rows_spectrum_in_train_pct', 0):.1f}% of test rows have an identical "
            "spectrum in train), which makes the test accuracy optimistic; give x,y coordinates "
            "and use --split pixel or block for an honest estimate."
        )
    if method == "group":
        return (
            f"group split on {info.get('group_column')!r}: all rows of a group (a labelled "
            "feature: the pixels of one polygon) are on one side, so no feature has pixels on "
            "both sides; neighbouring features are still spatially correlated (--split block "
            "is stricter); stratified by class as far as the groups allow."
        )
    if method == "pixel":
        return (
            f"pixel-grouped split: all points of a {pixel_size:g} m pixel are on one side, so "
            "every test pixel is unseen in training (0 leaked pixels); neighbouring pixels are "
            "still spatially correlated, so this is an estimate for new pixels inside the mapped "
            "areas; --split block is stricter."
        )
    return (
        f"spatial block split: whole {block_size:g} m x {block_size:g} m blocks go to one side, "
        "so test points come from areas the model never saw except along block edges; this is "
        "the closest estimate of accuracy on a new area (class proportions per side follow the "
        "blocks and are only approximately stratified)."
    )


def split_samples(
    samples: LabelledRows,
    *,
    method: str = "random",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    pixel_size: float = 10.0,
    block_size: float = 250.0,
    group_column: str | None = "feature_id",
) -> Split:
    """Split a table into train / validation / test rows.

    Parameters
    ----------
    samples
        A table from :func:`~s2dask.training.samples.read_samples`.
    method
        ``"random"``: the tutorial's protocol, points stratified by class (sklearn
        ``train_test_split`` twice). ``"pixel"``: the same proportions, but all points of a
        ``pixel_size`` pixel stay on one side. ``"block"``: square ``block_size`` map blocks
        go wholly to one side, as stratified as the blocks allow, every class in train.
        ``"group"``: the same with the table's groups (``Samples.groups``, read from
        ``group_column``: the labelled feature of each row); the info counts groups per
        side and class and warns about classes with too few groups for a test side.
    fractions
        Train, validation and test fractions (positive; normalised to sum to 1).
    seed
        Seed of the shuffle: the same seed gives the same indices.
    pixel_size
        Pixel size in map units (metres) for the pixel split and the leakage count.
    block_size
        Block side in map units (metres) for the block split.
    group_column
        The group column the group split expects (``Samples.group_column``); None accepts
        whatever column the groups were read from.

    Returns
    -------
    Split

    Raises
    ------
    SamplesError
        If the method is unknown, fractions are invalid, pixel/block is asked for without
        coordinates, there are too few samples (or pixels/blocks) for three sides, a side
        ends up empty, or train lacks a class.
    """
    if method not in SPLIT_METHODS:
        raise SamplesError(f"unknown split method {method!r}: use one of {', '.join(SPLIT_METHODS)}")
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) <= 0:
        raise SamplesError(
            f"split fractions must be three positive numbers (train, val, test), got {fractions!r}"
        )
    fr = tuple(f / sum(fr) for f in fr)
    if pixel_size <= 0 or block_size <= 0:
        raise SamplesError(f"pixel_size and block_size must be positive, got {pixel_size}, {block_size}")
    n = len(samples)
    y = samples.y
    values = samples.class_values
    where = samples.source or "the samples"
    if method in ("pixel", "block") and samples.xy is None:
        raise SamplesError(
            f"--split {method} needs x,y coordinates but {where} has none: add x and y columns "
            "(map metres) or use --split random"
        )
    counts = samples.class_counts()
    if n < 3 * len(values) or min(counts.values()) < 3:
        small = min(counts, key=counts.get)
        raise SamplesError(
            f"too few samples for a train/val/test split: {where} has {n} rows and class "
            f"{small} has only {counts[small]}; give at least 3 samples of every class (many more "
            "for a meaningful test)"
        )
    idx = np.arange(n)
    if method == "random":
        from sklearn.model_selection import train_test_split

        try:
            train, rest = train_test_split(idx, train_size=fr[0], stratify=y, random_state=seed)
            val, test = train_test_split(rest, train_size=fr[1] / (fr[1] + fr[2]),
                                         stratify=y[rest], random_state=seed)
        except ValueError as exc:
            raise SamplesError(
                f"too few samples for a stratified {fr[0]:.0%}/{fr[1]:.0%}/{fr[2]:.0%} split of "
                f"{where} ({n} rows; per class {counts}): {str(exc).splitlines()[0]} Add samples, "
                "or drop rare classes"
            ) from None
        group_count = None
    else:
        groups, unit = _group_keys(samples, method, pixel_size, block_size, group_column)
        group_count = int(groups.max()) + 1
        if group_count < 3:
            raise SamplesError(
                f"too few {unit} for a {method} split of {where}: the points fall in "
                f"{group_count}; need at least 3 (use a smaller --block-size, more samples or "
                "--split random)"
            )
        rng = np.random.default_rng(seed)
        side = _assign_groups(groups, y, values, fr, rng)
        train, val, test = (np.flatnonzero(side == s) for s in range(3))
        for name, part in zip(_SIDES, (train, val, test)):
            if len(part) == 0:
                raise SamplesError(
                    f"the {method} split of {where} left the {name} side empty ({group_count} "
                    f"{unit} in all): use a smaller --block-size, more samples or --split random"
                )
    missing = [v for v in values if not np.any(y[train] == v)]
    if missing:
        raise SamplesError(
            f"the {method} split of {where} has no training samples of class(es) "
            f"{', '.join(map(str, missing))}: add samples of them, use a smaller --block-size or "
            "--split random"
        )
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    info = _split_info(samples, method, fr, seed, train, val, test,
                       pixel_size=pixel_size, block_size=block_size, groups=group_count)
    if method != "random":
        _group_report(info, samples, groups, (train, val, test))
    return Split(train, val, test, info)


def _group_keys(samples: LabelledRows, method: str, pixel_size: float, block_size: float,
                group_column: str | None) -> tuple[np.ndarray, str]:
    """Group code (0..G-1) per row for the pixel, block or group method, and the unit's name."""
    where = samples.source or "the samples"
    if method == "pixel":
        return _pixel_keys(samples.xy, pixel_size), "pixels"
    if method == "block":
        return _pixel_keys(samples.xy, block_size), f"{block_size:g} m blocks"
    want = group_column or samples.group_column or "feature_id"
    if samples.groups is None or (group_column and str(samples.group_column).lower() != group_column.lower()):
        raise SamplesError(
            f"--split group needs a group column {want!r} but {where} has none: sample the labels "
            "with 's2dask sample' (it writes feature_id), name the column with --group-column, or "
            "use --split block"
        )
    _, codes = np.unique(samples.groups.astype(str) if samples.groups.dtype == object else samples.groups,
                         return_inverse=True)
    return codes.reshape(-1), f"groups ({samples.group_column})"


def _group_report(info: dict, samples: LabelledRows, groups: np.ndarray, parts: Sequence[np.ndarray]) -> None:
    """Groups per side and class, and warnings for classes with too few groups."""
    if info["method"] == "group":
        info["group_column"] = samples.group_column
    names = {int(c["value"]): c["name"] for c in samples.classes}
    info["groups_per_side"] = {
        side: {str(v): int(len(np.unique(groups[p][samples.y[p] == v]))) for v in samples.class_values}
        for side, p in zip(_SIDES, parts)
    }
    warnings = []
    for v in samples.class_values:
        n = int(len(np.unique(groups[samples.y == v])))
        if n < len(parts):
            warnings.append(f"class {v} ({names[v]}) falls in only {n} group(s): too few for a "
                            f"train, a validation and a test side, so its test figures are "
                            f"{'missing' if info['groups_per_side']['test'][str(v)] == 0 else 'from one group'}; "
                            "label more features of it")
    info["warnings"] = warnings
    if warnings:
        info["explanation"] += " Warning: " + " ".join(warnings)


def _split_info(samples: LabelledRows, method: str, fr, seed: int, train, val, test, *,
                pixel_size: float, block_size: float, groups: int | None) -> dict:
    parts = dict(zip(_SIDES, (train, val, test)))
    info: dict = {
        "method": method,
        "fractions": [round(f, 6) for f in fr],
        "seed": int(seed),
        "pixel_size": float(pixel_size),
        "counts": {s: len(p) for s, p in parts.items()},
        "class_counts": {s: {str(k): v for k, v in samples.class_counts(p).items()}
                         for s, p in parts.items()},
    }
    if method == "block":
        info["block_size"] = float(block_size)
        info["groups"] = groups
    elif method == "pixel":
        info["groups"] = groups
    leakage: dict = {}
    if samples.xy is not None:
        keys = _pixel_keys(samples.xy, pixel_size)
        px = {s: set(np.unique(keys[p]).tolist()) for s, p in parts.items()}
        info["pixels"] = {s: len(v) for s, v in px.items()}
        leaked = px["test"] & px["train"]
        leakage["test_pixels_in_train"] = len(leaked)
        leakage["test_pixels_in_train_pct"] = round(100 * len(leaked) / max(len(px["test"]), 1), 2)
        leakage["test_rows_in_train_pixels"] = int(np.isin(keys[test], list(leaked)).sum())
        leakage["val_pixels_in_train"] = len(px["val"] & px["train"])
    else:
        info["pixels"] = None
        leakage["test_pixels_in_train"] = None
    X = np.ascontiguousarray(samples.X)
    seen = {X[i].tobytes() for i in train}
    dup = sum(X[i].tobytes() in seen for i in test)
    leakage["test_rows_spectrum_in_train"] = int(dup)
    leakage["test_rows_spectrum_in_train_pct"] = round(100 * dup / max(len(test), 1), 2)
    info["leakage"] = leakage
    absent = [str(v) for v in samples.class_values if samples.class_counts(test)[v] == 0]
    info["classes_absent_from_test"] = absent
    info["explanation"] = _explain(method, info, pixel_size=pixel_size, block_size=block_size)
    if absent:
        info["explanation"] += (f" Class(es) {', '.join(absent)} have no test samples, so the "
                                "test figures say nothing about them.")
    return info


# --------------------------------------------------------------------------- cross-validation folds


@dataclass
class Folds:
    """K disjoint test folds for cross-validation: every row is in exactly one test fold.

    Attributes
    ----------
    test
        ``k`` sorted row-index arrays, the test rows of each fold.
    info
        JSON-ready: method, k, seed, rows / class counts / groups per class of each fold,
        and ``warnings`` (classes in fewer groups than folds, classes absent from a fold's
        training part).
    groups
        Group code per row (pixel, block or group; the row itself for ``random``).
    y
        Class value per row.
    """

    test: list[np.ndarray]
    info: dict
    groups: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.test)

    def train(self, i: int) -> np.ndarray:
        """Every row outside test fold ``i`` (sorted)."""
        return np.setdiff1d(np.arange(len(self.y)), self.test[i], assume_unique=True)

    def train_val(self, i: int, *, val_fraction: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Split the rows outside fold ``i`` into train and validation (early stopping), with
        the fold's own grouping, stratified, every class present in train kept in train."""
        rest = self.train(i)
        values = sorted(int(v) for v in np.unique(self.y[rest]))
        side = _assign_groups(self.groups[rest], self.y[rest], values, (1 - val_fraction, val_fraction),
                              np.random.default_rng(seed))
        return rest[side == 0], rest[side == 1]


def fold_indices(
    samples: LabelledRows,
    *,
    method: str = "group",
    k: int = 5,
    seed: int = 0,
    pixel_size: float = 10.0,
    block_size: float = 250.0,
    group_column: str | None = "feature_id",
) -> Folds:
    """K disjoint test folds, grouped like :func:`split_samples` and stratified by class.

    Parameters
    ----------
    samples
        A table from :func:`~s2dask.training.samples.read_samples`.
    method
        ``"random"`` (stratified K-fold of rows), ``"pixel"``, ``"block"`` or ``"group"``:
        every pixel, block or group goes wholly to one fold. Groups are placed largest
        first, each into the fold whose per-class shortfall (weighted by the group's class
        mix) is largest, ties to the fold with fewest rows; so folds are stratified as far as
        the groups allow.
    k
        Number of folds (>= 2).
    seed
        Seed of the order in which equal-sized groups are placed.
    pixel_size, block_size, group_column
        As for :func:`split_samples`.

    Returns
    -------
    Folds

    Raises
    ------
    SamplesError
        If the method is unknown, ``k`` < 2, the table lacks coordinates or groups the
        method needs, or there are fewer rows or groups than folds.
    """
    if method not in SPLIT_METHODS:
        raise SamplesError(f"unknown fold method {method!r}: use one of {', '.join(SPLIT_METHODS)}")
    if int(k) != k or k < 2:
        raise SamplesError(f"cross-validation needs at least 2 folds, got --folds {k!r}")
    where = samples.source or "the samples"
    if method in ("pixel", "block") and samples.xy is None:
        raise SamplesError(f"--folds with --split {method} needs x,y coordinates but {where} has none: "
                           "add x and y columns or use --split random")
    n, values = len(samples), samples.class_values
    if method == "random":
        groups, unit = np.arange(n), "rows"
    else:
        groups, unit = _group_keys(samples, method, pixel_size, block_size, group_column)
    n_groups = int(groups.max()) + 1
    if n_groups < k:
        raise SamplesError(f"{where} has {n_groups} {unit}, fewer than the {k} folds asked for: "
                           "use fewer --folds or a finer grouping")
    rng = np.random.default_rng(seed)
    fold = _fold_of_groups(groups, samples.y, values, k, rng)
    test = [np.flatnonzero(fold == i) for i in range(k)]
    empty = [i for i, t in enumerate(test) if not len(t)]
    if empty:
        raise SamplesError(f"the {unit} of {where} could not fill all {k} folds (fold(s) "
                           f"{', '.join(map(str, empty))} empty): use fewer --folds")
    return Folds(test, _fold_info(samples, method, k, seed, groups, test), groups, samples.y)


def _fold_of_groups(groups: np.ndarray, y: np.ndarray, values: list[int], k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Fold per row: groups largest first, each to the fold short of most of its classes."""
    uniq, inv = np.unique(groups, return_inverse=True)
    cls = np.searchsorted(np.asarray(values), y)
    counts = np.zeros((len(uniq), len(values)))
    np.add.at(counts, (inv.reshape(-1), cls), 1.0)
    totals = np.maximum(counts.sum(axis=0), 1.0)
    size = counts.sum(axis=1)
    current = np.zeros((k, len(values)))
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-size[order], kind="stable")]
    side = np.empty(len(uniq), dtype="int64")
    for g in order:
        need = ((totals / k - current) / totals) @ (counts[g] / size[g])
        rows_short = (size.sum() / k - current.sum(axis=1)) / size.sum()
        s = int(np.argmax(need + 1e-6 * rows_short))
        side[g] = s
        current[s] += counts[g]
    return side[inv.reshape(-1)]


def _fold_info(samples: LabelledRows, method: str, k: int, seed: int, groups: np.ndarray,
               test: list[np.ndarray]) -> dict:
    names = {int(c["value"]): c["name"] for c in samples.classes}
    folds = []
    for t in test:
        folds.append({
            "rows": int(len(t)),
            "class_counts": {str(v): n for v, n in samples.class_counts(t).items()},
            "groups_per_class": {str(v): int(len(np.unique(groups[t][samples.y[t] == v])))
                                 for v in samples.class_values},
        })
    warnings = []
    for v in samples.class_values:
        held = [i for i, f in enumerate(folds) if f["class_counts"][str(v)]]
        if len(held) < k:
            warnings.append(f"class {v} ({names[v]}) is in only {len(held)} of the {k} test folds "
                            "(too few groups): its per-class figures average over those folds only")
        if len(held) == 1:
            warnings.append(f"class {v} ({names[v]}) has no training rows when fold {held[0]} is the "
                            "test fold: that fold's model cannot predict it")
    return {"method": method, "k": int(k), "seed": int(seed), "groups": int(groups.max()) + 1,
            "folds": folds, "warnings": warnings}
