"""Accuracy and area you can report: Olofsson et al. (2014) stratified estimators.

Reference: Olofsson, Foody, Herold, Stehman, Woodcock, Wulder (2014), "Good practices for
estimating area and assessing accuracy of land change", Remote Sensing of Environment 148:42-57.
With strata = mapped classes, ``W_i`` = mapped area proportion of class i, ``n_ij`` = sample
count mapped i and referenced j, ``n_i.`` its row total:

* error matrix in area proportions   ``p_ij = W_i n_ij / n_i.``                     (eq. 4)
* overall accuracy  ``O = sum_j p_jj``, ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)``  (eq. 1, 5)
* user's accuracy   ``U_i = p_ii / p_i.``, ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)``       (eq. 2, 6)
* producer's accuracy ``P_j = p_jj / p_.j`` with the variance of eq. 7
* area proportion   ``p_.k = sum_i W_i n_ik / n_i.``,
  ``S(p_.k) = sqrt(sum_i W_i^2 (n_ik/n_i.)(1 - n_ik/n_i.) / (n_i. - 1))``                (eq. 9, 10)
* area ``A_k = A p_.k`` (hectares), 95% interval ``+- 1.96 A S(p_.k)``                    (eq. 11)

Every interval here is ``+- 1.96 SE`` (normal approximation, as in the paper). A variance
needs ``n_i. >= 2`` in every stratum it sums over; where a stratum has fewer, the intervals
that involve it are reported as missing with a message naming the class.

:func:`design` (in :mod:`s2dask.maps.design`, re-exported here) draws the stratified random sample
to label; :func:`assess` reads the map and the labelled points, chunk-wise, and returns (and
writes) an :class:`Assessment`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ParameterError, SamplesError
from ..io.storage import atomic_write_text
from .design import allocate, design
from .layers import DEFAULT_CHUNK, RasterSource, check_output, open_map, write_atomically

__all__ = ["Z95", "Assessment", "estimate", "allocate", "design", "assess"]

Z95 = 1.96
"""Normal quantile of the 95% intervals (the paper's)."""


def _nan_to_none(a) -> list:
    return [None if (v is None or not np.isfinite(v)) else float(v) for v in np.ravel(a)]


@dataclass
class Assessment:
    """The stratified estimates of one map against one reference sample (NaN = not estimable)."""

    classes: list[dict]
    """``[{"value", "name"}]``: the rows (map) and columns (reference) of the matrices."""
    counts: np.ndarray
    """``(K, K)`` sample counts, rows = map class, columns = reference class."""
    mapped_pixels: np.ndarray
    """``(K,)`` pixels mapped as each class (the strata sizes)."""
    pixel_area_m2: float
    """Area of one pixel."""
    proportions: np.ndarray
    """``(K, K)`` error matrix in area proportions ``p_ij``."""
    overall: float
    overall_ci: float
    users: np.ndarray
    users_ci: np.ndarray
    producers: np.ndarray
    producers_ci: np.ndarray
    area_ha: np.ndarray
    """Error-adjusted area of each class (hectares)."""
    area_ci_ha: np.ndarray
    """Half-width of its 95% interval (hectares)."""
    messages: list[str] = field(default_factory=list)
    """Per-class notes (too few points for an interval ...)."""
    sources: dict = field(default_factory=dict)
    """Where the map and the reference came from."""

    @property
    def mapped_ha(self) -> np.ndarray:
        """Mapped (pixel-count) area of each class, hectares."""
        return self.mapped_pixels * self.pixel_area_m2 / 1e4

    @property
    def n_points(self) -> int:
        """Reference points used."""
        return int(self.counts.sum())

    def to_dict(self) -> dict:
        """A JSON-ready record (missing values as null)."""
        rows = []
        for i, c in enumerate(self.classes):
            rows.append({
                "value": c["value"], "name": c["name"],
                "reference_points_mapped": int(self.counts[i].sum()),
                "mapped_pixels": int(self.mapped_pixels[i]), "mapped_ha": float(self.mapped_ha[i]),
                "estimated_ha": _nan_to_none([self.area_ha[i]])[0],
                "estimated_ha_ci95": _nan_to_none([self.area_ci_ha[i]])[0],
                "users_accuracy": _nan_to_none([self.users[i]])[0],
                "users_accuracy_ci95": _nan_to_none([self.users_ci[i]])[0],
                "producers_accuracy": _nan_to_none([self.producers[i]])[0],
                "producers_accuracy_ci95": _nan_to_none([self.producers_ci[i]])[0],
            })
        k = len(self.classes)
        return {
            "method": "stratified estimators of Olofsson et al. (2014), RSE 148:42-57; "
                      "strata = mapped classes; intervals = +- 1.96 SE",
            "sources": self.sources, "n_points": self.n_points,
            "pixel_area_m2": self.pixel_area_m2,
            "total_mapped_ha": float(self.mapped_ha.sum()),
            "overall_accuracy": _nan_to_none([self.overall])[0],
            "overall_accuracy_ci95": _nan_to_none([self.overall_ci])[0],
            "classes": rows,
            "error_matrix_counts": self.counts.astype(int).tolist(),
            "error_matrix_proportions": np.asarray(_nan_to_none(self.proportions)).reshape(k, k).tolist(),
            "messages": list(self.messages),
        }

    def format_table(self) -> str:
        """A plain-text report: error matrix in area proportions, accuracies and areas."""
        names = [c["name"] for c in self.classes]
        w = max(8, *(len(n) for n in names)) + 1

        def pm(v, ci, fmt):
            if not np.isfinite(v):
                return "n/a"
            return f"{v:{fmt}} +- {ci:{fmt}}" if np.isfinite(ci) else f"{v:{fmt}} (no CI)"

        lines = ["Accuracy and area, Olofsson et al. (2014) stratified estimators, 95% intervals",
                 f"map: {self.sources.get('map', '?')}   reference: {self.sources.get('reference', '?')} "
                 f"({self.n_points} points)   pixel: {self.pixel_area_m2:g} m2", "",
                 "Error matrix in area proportions (rows = map, columns = reference)",
                 " " * w + "".join(f"{n[:9]:>10}" for n in names) + f"{'total':>10}"]
        for i, n in enumerate(names):
            row = "".join(f"{v:10.4f}" for v in self.proportions[i])
            lines.append(f"{n:<{w}}{row}{self.proportions[i].sum():10.4f}")
        lines.append(f"{'total':<{w}}" + "".join(f"{v:10.4f}" for v in self.proportions.sum(0))
                     + f"{self.proportions.sum():10.4f}")
        lines += ["", f"Overall accuracy: {pm(self.overall, self.overall_ci, '.3f')}", "",
                  f"{'class':<{w}}{'points':>7}  {'user':>16}  {'producer':>16}  {'mapped ha':>12}  "
                  f"{'estimated ha':>24}"]
        for i, n in enumerate(names):
            lines.append(f"{n:<{w}}{int(self.counts[i].sum()):>7}  "
                         f"{pm(self.users[i], self.users_ci[i], '.3f'):>16}  "
                         f"{pm(self.producers[i], self.producers_ci[i], '.3f'):>16}  "
                         f"{self.mapped_ha[i]:>12.1f}  {pm(self.area_ha[i], self.area_ci_ha[i], '.1f'):>24}")
        if self.messages:
            lines += ["", "Notes:"] + [f"- {m}" for m in self.messages]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> None:
        """Mapped vs estimated area per class, with the 95% intervals, as a PNG (Figure API)."""
        from matplotlib.figure import Figure

        k = len(self.classes)
        x = np.arange(k)
        fig = Figure(figsize=(max(6.0, 1.3 * k + 2), 4.2), dpi=110)
        ax = fig.subplots()
        ax.bar(x - 0.2, self.mapped_ha, 0.4, label="mapped (pixel count)", color="#9e9e9e")
        est = np.nan_to_num(self.area_ha)
        err = np.where(np.isfinite(self.area_ci_ha), self.area_ci_ha, 0)
        positive = self.mapped_ha[self.mapped_ha > 0]
        log = positive.size > 1 and positive.max() / positive.min() > 20  # small classes visible
        lower = np.minimum(err, est * 0.999) if log else err
        ax.bar(x + 0.2, est, 0.4, yerr=[lower, err], capsize=4, label="estimated (95% interval)",
               color="#1f77b4")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(x, [c["name"] for c in self.classes], rotation=20, ha="right")
        ax.set_ylabel("area (ha, log scale)" if log else "area (ha)")
        ax.set_title(f"Mapped vs error-adjusted area ({self.n_points} reference points)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")


def _variances(n: np.ndarray, W: np.ndarray, N: np.ndarray):
    """Standard errors of U, O, P and p_.k (eq. 5-7, 10); NaN where a stratum has < 2 points."""
    ni = n.sum(1)
    strata = W > 0
    q = np.divide(n, ni[:, None], out=np.zeros_like(n, dtype="float64"), where=ni[:, None] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = np.where(ni > 1, ni - 1, np.nan)
        U = np.diag(q)
        se_u = np.sqrt(U * (1 - U) / den)
        all_ok = bool((ni[strata] > 1).all())
        se_o = np.sqrt(np.nansum(W ** 2 * U * (1 - U) / den)) if all_ok else np.nan
        term = np.where(strata[:, None], W[:, None] ** 2 * q * (1 - q) / den[:, None], 0.0)
        se_p = np.sqrt(term.sum(0)) if all_ok else np.full(len(W), np.nan)
        Nj = (N[:, None] * q).sum(0)
        P = np.divide((W * U), (W[:, None] * q).sum(0))
        var_P = np.full(len(W), np.nan)
        if all_ok:
            for j in range(len(W)):
                own = N[j] ** 2 * (1 - P[j]) ** 2 * U[j] * (1 - U[j]) / den[j] if strata[j] else 0.0
                other = sum(N[i] ** 2 * q[i, j] * (1 - q[i, j]) / den[i]
                            for i in range(len(W)) if i != j and strata[i])
                var_P[j] = (own + P[j] ** 2 * other) / Nj[j] ** 2
    return se_u, se_o, np.sqrt(var_P), se_p


def estimate(counts: np.ndarray, mapped_pixels: Sequence[int], *, pixel_area_m2: float,
             classes: Sequence[dict] | None = None, sources: dict | None = None) -> Assessment:
    """The Olofsson et al. (2014) estimates from a sample error matrix and the strata sizes.

    Parameters
    ----------
    counts
        ``(K, K)`` sample counts, rows = map class, columns = reference class.
    mapped_pixels
        ``(K,)`` pixels mapped as each class.
    pixel_area_m2
        Area of one pixel in square metres.
    classes
        ``[{"value", "name"}]`` for the K classes (default ``0..K-1``).

    Raises
    ------
    SamplesError
        If a mapped class (a stratum) has no reference point at all: its pixels cannot be
        apportioned, so no estimate is unbiased.
    ParameterError
        If the shapes disagree.
    """
    n = np.asarray(counts, dtype="float64")
    N = np.asarray(mapped_pixels, dtype="float64")
    k = len(N)
    if n.shape != (k, k):
        raise ParameterError(f"the error matrix must be {k} x {k} (one row/column per class), got {n.shape}")
    classes = list(classes) if classes is not None else [{"value": i, "name": str(i)} for i in range(k)]
    ni = n.sum(1)
    empty = [c["name"] for c, Ni, m in zip(classes, N, ni) if Ni > 0 and m == 0]
    if empty:
        raise SamplesError(f"map class {empty[0]!r} has mapped pixels but no reference point (nor: "
                           f"{', '.join(empty[1:]) or 'no other'}); the stratified estimators need "
                           "points in every mapped class (2+ for intervals): add some (s2dask design)")
    W = N / N.sum()
    q = np.divide(n, ni[:, None], out=np.zeros_like(n), where=ni[:, None] > 0)
    p = W[:, None] * q
    with np.errstate(divide="ignore", invalid="ignore"):
        users = np.where(ni > 0, np.diag(p) / p.sum(1), np.nan)
        producers = np.diag(p) / p.sum(0)
    se_u, se_o, se_pa, se_p = _variances(n, W, N)
    area_total_ha = N.sum() * pixel_area_m2 / 1e4
    messages = []
    for c, Ni, m in zip(classes, N, ni):
        if Ni > 0 and m < 2:
            messages.append(f"class {c['name']!r}: only {int(m)} reference point in its stratum, so no "
                            "interval for its user's accuracy, nor for the overall accuracy, producer's "
                            "accuracies and areas (they sum over every stratum); add points there")
        if Ni == 0 and n[:, classes.index(c)].sum() > 0:
            messages.append(f"class {c['name']!r} is in the reference but never mapped: its area comes "
                            "only from other classes' omission errors")
    return Assessment(
        classes=classes, counts=n.astype("int64"), mapped_pixels=N.astype("int64"),
        pixel_area_m2=float(pixel_area_m2), proportions=p, overall=float(np.trace(p)),
        overall_ci=Z95 * se_o, users=users, users_ci=Z95 * se_u, producers=producers,
        producers_ci=Z95 * se_pa, area_ha=p.sum(0) * area_total_ha, area_ci_ha=Z95 * se_p * area_total_ha,
        messages=messages, sources=dict(sources or {}))


# --------------------------------------------------------------------------- assessment


def _read_reference(path: Path, label: str, src: RasterSource):
    """``(x, y, labels)`` of the reference points, in the map's CRS."""
    import pandas as pd

    if not path.exists():
        raise SamplesError(f"reference file {path} does not exist; pass a point file (GPKG, GeoJSON, "
                           "Shapefile) or a CSV with x, y in the map's CRS")
    if path.suffix.lower() in (".csv", ".txt"):
        df = pd.read_csv(path)
        lower = {c.lower(): c for c in df.columns}
        if "x" not in lower or "y" not in lower:
            raise SamplesError(f"{path} has no x and y columns (it has: {', '.join(map(str, df.columns))}); "
                               "a CSV reference needs x, y in the map's CRS")
        xs, ys = df[lower["x"]].to_numpy("float64"), df[lower["y"]].to_numpy("float64")
    else:
        import pyogrio

        try:
            df = pyogrio.read_dataframe(path)
        except Exception as exc:  # pyogrio raises its own DataSourceError family
            raise SamplesError(f"cannot read reference {path}: {' '.join(str(exc).split())[:160]}; "
                               "pass a GPKG, GeoJSON, Shapefile or CSV") from None
        geom = df.geometry
        if len(df) and not (geom.geom_type == "Point").all():
            raise SamplesError(f"{path} holds {geom.geom_type[geom.geom_type != 'Point'].iloc[0]} "
                               "geometries; reference samples must be points")
        if df.crs is not None and src.crs is not None and df.crs != src.crs:
            df = df.to_crs(src.crs)  # points without a CRS are taken to be in the map's
        xs, ys = df.geometry.x.to_numpy("float64"), df.geometry.y.to_numpy("float64")
    if label not in df.columns:
        others = [str(c) for c in df.columns if c != "geometry"]
        raise SamplesError(f"{path} has no label column {label!r} (it has: {', '.join(others)}); "
                           "pass the column holding the reference classes with --label")
    return xs, ys, df[label]


def _match_labels(labels, classes: list[dict], source: Path, label: str) -> tuple[np.ndarray, int]:
    """Reference labels (class values or names) to class values; ``(values, n_unlabelled)``."""
    import pandas as pd

    by_name = {c["name"]: c["value"] for c in classes}
    values = {c["value"] for c in classes}
    s = pd.Series(labels).reset_index(drop=True)
    missing = s.isna() | (s.astype("string").str.strip() == "")
    out = np.full(len(s), -1, dtype="int64")
    unknown: dict[str, int] = {}
    for i, v in s[~missing].items():
        text = str(v).strip()
        num = None
        try:
            f = float(text)
            num = int(f) if f.is_integer() else None
        except ValueError:
            pass
        if text in by_name:
            out[i] = by_name[text]
        elif num is not None and num in values:
            out[i] = num
        else:
            unknown[text] = unknown.get(text, 0) + 1
    if unknown:
        first = next(iter(unknown))
        table = ", ".join(f"{c['value']}={c['name']}" for c in classes)
        raise SamplesError(f"reference class {first!r} ({unknown[first]} points in column {label!r} of "
                           f"{source}) is not in the map's class table ({table})"
                           + (f"; also unknown: {', '.join(list(unknown)[1:6])}" if len(unknown) > 1 else "")
                           + "; relabel those points with the map's class values or names")
    return out, int(missing.sum())


def _scan_map(src: RasterSource, rows: np.ndarray, cols: np.ndarray, chunk: int):
    """One chunk-wise pass: mapped pixels per class, and the map value under each point."""
    totals: dict[int, int] = {}
    at_points = np.full(len(rows), -1, dtype="int64")
    on_data = np.zeros(len(rows), dtype=bool)
    for (y0, y1, x0, x1), block, valid in src.blocks(chunk):
        vals, cnt = np.unique(block[valid], return_counts=True)
        for v, c in zip(vals, cnt):
            totals[int(v)] = totals.get(int(v), 0) + int(c)
        inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        r, c = rows[inside] - y0, cols[inside] - x0
        at_points[inside] = block[r, c]
        on_data[inside] = valid[r, c]
    return totals, at_points, on_data


def _check_outputs(out: str | os.PathLike | None, overwrite: bool) -> tuple[Path, Path] | None:
    if out is None:
        return None
    js = Path(out)
    png = js.with_suffix(".png")
    for p in (js, png):
        check_output(p, overwrite)
    return js, png


def assess(map: str | os.PathLike, reference: str | os.PathLike, *, label: str,
           out: str | os.PathLike | None = None, chunk: int = DEFAULT_CHUNK,
           overwrite: bool = False) -> Assessment:
    """Assess a class map against labelled reference points, with Olofsson et al. (2014).

    The map is read once, window by window: each window adds to the mapped pixel count of each
    class and gives the map class under the points inside it. Points without a label (empty
    cell) are ignored and counted in a note; every other problem is refused before anything is
    written.

    Parameters
    ----------
    map
        Job output folder (``classes.tif`` + ``job.json``) or a single-band class raster
        (class names from its metadata when present, values otherwise).
    reference
        Point file (GPKG, GeoJSON, Shapefile; reprojected to the map's CRS, points without a
        CRS taken to be in it) or CSV with ``x``, ``y`` in the map's CRS.
    label
        Column of the reference class: class values or class names of the map's table.
    out
        ``assessment.json`` to write (with ``assessment.png`` next to it); None writes nothing.
    chunk
        Window edge of the chunk-wise reads (pixels).
    overwrite
        Replace existing outputs.

    Returns
    -------
    Assessment
        ``print(result.format_table())`` for the report.

    Raises
    ------
    SamplesError
        If the label column is missing, points fall outside the map or on its nodata, a
        reference class is not in the map's class table, or a mapped class has no point.
    SceneError
        If the map cannot be read.
    OutputExistsError
        If an output exists and ``overwrite`` is False (checked first).
    """
    paths = _check_outputs(out, overwrite)
    src, table = open_map(map)
    reference = Path(reference)
    xs, ys, labels = _read_reference(reference, label, src)
    rows, cols = src.rowcol(xs, ys)
    outside = (rows < 0) | (rows >= src.shape[0]) | (cols < 0) | (cols >= src.shape[1]) | ~np.isfinite(xs + ys)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise SamplesError(f"{int(outside.sum())} of {len(xs)} reference points fall outside the map "
                           f"(e.g. x={xs[i]:.2f}, y={ys[i]:.2f}; map bounds {_bounds(src)}, {src.crs}); "
                           "check the points' CRS or drop those points")
    totals, at_points, on_data = _scan_map(src, rows, cols, chunk)
    if not on_data.all():
        i = int(np.flatnonzero(~on_data)[0])
        raise SamplesError(f"{int((~on_data).sum())} reference points fall on nodata pixels of the map "
                           f"(e.g. x={xs[i]:.2f}, y={ys[i]:.2f}); they are outside the mapped population: "
                           "drop them")
    classes = [dict(c) for c in (table or [])]
    known = {c["value"] for c in classes}
    classes += [{"value": v, "name": str(v)} for v in sorted(totals) if v not in known]
    ref_values, unlabelled = _match_labels(labels, classes, reference, label)
    used = ref_values >= 0
    present = sorted({v for v, c in totals.items() if c > 0} | set(ref_values[used].tolist()))
    classes = [c for c in classes if c["value"] in present]
    index = {c["value"]: i for i, c in enumerate(classes)}
    k = len(classes)
    counts = np.zeros((k, k), dtype="int64")
    np.add.at(counts, ([index[int(v)] for v in at_points[used]], [index[int(v)] for v in ref_values[used]]), 1)
    mapped = np.array([totals.get(c["value"], 0) for c in classes], dtype="int64")
    result = estimate(counts, mapped, pixel_area_m2=src.pixel_area_m2, classes=classes,
                      sources={"map": str(map), "reference": str(reference), "label": label,
                               "crs": str(src.crs), "map_shape": list(src.shape)})
    if unlabelled:
        result.messages.append(f"{unlabelled} reference points without a label in {label!r} were ignored")
    if not src.metric:
        result.messages.append(f"the map's CRS ({src.crs}) is not in metres: 'ha' figures are in CRS units^2 / 1e4")
    if paths:
        _write_outputs(result, *paths)
    return result


def _bounds(src: RasterSource) -> str:
    t, (ny, nx) = src.transform, src.shape
    xs = [t.c, t.c + t.a * nx]
    ys = [t.f, t.f + t.e * ny]
    return f"x {min(xs):.2f}..{max(xs):.2f}, y {min(ys):.2f}..{max(ys):.2f}"


def _write_outputs(result: Assessment, js: Path, png: Path) -> None:
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    write_atomically(png, result.plot, overwrite=True, suffix=".png")
    atomic_write_text(js, text)
