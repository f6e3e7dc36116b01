"""Single-node training and the evaluation report.

:func:`train` reads a labelled table, splits it (random / pixel / block), trains the
tutorial's MLP (normalisation of the training split inside the model), writes the model
bundle atomically and scores the test split through the bundle's own prediction path.
:func:`evaluate` applies a bundle to another labelled table and writes the same report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelError, OutputExistsError, S2DaskError, SamplesError
from ..io.storage import atomic_write_json, atomic_write_text, staged_dir
from ..job.progress import epoch_callback
from ..model.backend import require_keras
from ..model.bundle import build_model, load_model, save_bundle
from ..model.engines import PRECISION_CHECK_KEY, PRECISION_OA_BAR
from ..model.openvino_ir import export_ir
from ..scene.bands import canonical_bands
from .crossval import cross_validate, format_cv_report
from .metrics import classification_metrics, format_report, plot_confusion, plot_history
from .samples import (
    DEFAULT_FRACTIONS,
    SPLIT_METHODS,
    Samples,
    Split,
    fold_indices,
    read_samples,
    split_samples,
)

__all__ = [
    "AUTO_SPLIT",
    "DEFAULTS",
    "OPTIMIZERS",
    "default_split",
    "classification_metrics",
    "evaluate",
    "format_report",
    "train",
]

OPTIMIZERS = ("adam", "sgd", "rmsprop")
#: how training and evaluate score a bundle: float32 Keras, the reference every engine and
#: precision is compared against (jobs default to engine/precision "auto")
SCORING = {"engine": "keras", "precision": "fp32"}

#: Defaults, measured on the Buffalo table (random split, 2 CPU cores): Adam at 1e-3 with
#: batches of 64 converges in about 90 epochs (under a minute) to a test OA above 0.99;
#: early stopping on validation loss with patience 10 ends the run once it stalls.
DEFAULTS = {
    "epochs": 100,
    "batch_size": 64,
    "units": (200, 200, 200, 200),
    "dropout": (0.2, 0.2, 0.1, 0.1),
    "l1": 1e-5,
    "l2": 1e-4,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "early_stopping": 10,
    "class_weight": None,
}


# --------------------------------------------------------------------------- training


#: ``split="auto"``: the split without leakage that the table allows (see :func:`default_split`)
AUTO_SPLIT = "auto"


def default_split(data: Samples) -> str:
    """The leak-free split a table allows: ``group``, else ``pixel``, else ``random``.

    ``group`` (whole labelled features on one side) when the table has groups
    (``feature_id`` from ``s2dask sample``) and every class spans at least 3 of them;
    ``pixel`` (no pixel on two sides) when it has x,y coordinates; ``random`` only for a
    table without coordinates, where no grouping is possible (its report says it leaks).
    """
    if data.groups is not None:
        per_class = [len(np.unique(data.groups[data.y == v])) for v in data.class_values]
        if min(per_class) >= 3:
            return "group"
    return "pixel" if data.xy is not None else "random"


def _check_params(*, split, epochs, batch_size, units, dropout, optimizer, learning_rate,
                  early_stopping, class_weight, l1, l2) -> None:
    if split not in (*SPLIT_METHODS, AUTO_SPLIT):
        raise SamplesError(f"unknown split {split!r}: use one of {AUTO_SPLIT}, {', '.join(SPLIT_METHODS)}")
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ModelError(f"epochs and batch size must be positive, got {epochs} and {batch_size}")
    if not units or any(int(u) < 1 for u in units):
        raise ModelError(f"units must list at least one positive layer width, got {units!r}")
    if dropout and (len(dropout) != len(units) or any(not 0 <= d < 1 for d in dropout)):
        raise ModelError(
            f"dropout must give one rate in [0, 1) per hidden layer ({len(units)} layers), got "
            f"{list(dropout)!r}"
        )
    if optimizer not in OPTIMIZERS:
        raise ModelError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if not learning_rate > 0:
        raise ModelError(f"learning rate must be positive, got {learning_rate}")
    if early_stopping is not None and int(early_stopping) < 0:
        raise ModelError(f"early-stopping patience must be >= 0, got {early_stopping}")
    if class_weight not in (None, "balanced"):
        raise ModelError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    if l1 < 0 or l2 < 0:
        raise ModelError(f"l1 and l2 must be >= 0, got {l1} and {l2}")


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputExistsError(f"{out} exists and is not a directory: choose another --out")
        if not overwrite:
            raise OutputExistsError(
                f"model directory {out} already exists: choose another --out or pass --overwrite "
                "to replace it once the new model is complete"
            )


def _log(verbose: int, text: str) -> None:
    if verbose:
        print(text, flush=True)


def _resolve_samples(samples, *, label, bands, name_column, class_table, x, y,
                     group_column="feature_id") -> Samples:
    if isinstance(samples, Samples):
        if bands is None:
            return samples
        want = canonical_bands(bands)
        missing = [b for b in want if b not in samples.bands]
        if missing:
            raise SamplesError(f"the samples lack band(s) {', '.join(missing)} (they have "
                               f"{', '.join(samples.bands)}): choose bands among those")
        cols = [samples.bands.index(b) for b in want]
        return Samples(samples.X[:, cols], samples.y, samples.xy, want, samples.classes,
                       samples.source, samples.sha256, samples.label, samples.groups,
                       samples.group_column)
    return read_samples(samples, label=label, bands=bands, name_column=name_column,
                        class_table=class_table, x=x, y=y, group_column=group_column)


def train(
    samples: str | os.PathLike | Samples,
    out_dir: str | os.PathLike,
    *,
    label: str | None = None,
    bands: Sequence[str] | str | None = None,
    name_column: str | None = "Description",
    class_table: str | os.PathLike | None = None,
    x: str | None = "x",
    y: str | None = "y",
    split: str = AUTO_SPLIT,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    units: Sequence[int] = DEFAULTS["units"],
    dropout: Sequence[float] = DEFAULTS["dropout"],
    l1: float = DEFAULTS["l1"],
    l2: float = DEFAULTS["l2"],
    optimizer: str = DEFAULTS["optimizer"],
    learning_rate: float = DEFAULTS["learning_rate"],
    early_stopping: int | None = DEFAULTS["early_stopping"],
    class_weight: str | None = DEFAULTS["class_weight"],
    block_size: float = 250.0,
    pixel_size: float = 10.0,
    input_nodata: float | None = 0,
    overwrite: bool = False,
    verbose: int = 1,
    group_column: str = "feature_id",
    folds: int | None = None,
) -> dict:
    """Train the tutorial's MLP on a labelled table and write a model bundle.

    The bundle (``model.keras``, ``model.json``, the OpenVINO IR ``model.xml``/``model.bin``,
    ``metrics.json``, ``training.png``, ``confusion.png``) is built in a temporary directory next to ``out_dir`` and renamed
    into place only when complete; on failure nothing is left behind.

    Parameters
    ----------
    samples
        A CSV/Parquet table (see :func:`s2dask.training.samples.read_samples`) or a :class:`Samples`.
    out_dir
        The model directory to create.
    label, bands, name_column, class_table, x, y
        Passed to :func:`~s2dask.training.samples.read_samples` (``label`` None: the column a table
        written by ``s2dask sample`` names, else ``Class_ID``).
    split
        ``"auto"`` (default: ``group`` or ``pixel``, the leak-free split the table allows, see
        :func:`default_split`), ``"random"`` (the tutorial's protocol, leaky on point data),
        ``"pixel"``, ``"block"`` or ``"group"`` (whole labelled features, ``group_column``);
        see :func:`~s2dask.training.samples.split_samples`.
    fractions
        Train / validation / test fractions (default 0.75 / 0.12 / 0.13).
    seed
        Seeds the split, the weight initialisation, dropout and shuffling.
    epochs, batch_size
        Maximum epochs and mini-batch size.
    units, dropout, l1, l2
        Hidden layer widths, their dropout rates and the L1/L2 kernel regularisation.
    optimizer, learning_rate
        ``"adam"``, ``"sgd"`` (momentum 0.9) or ``"rmsprop"`` and its learning rate.
    early_stopping
        Patience in epochs on validation loss (best weights restored); 0/None trains all
        ``epochs``.
    class_weight
        ``"balanced"`` weights classes inversely to their training frequency; None does not.
    block_size, pixel_size
        Block side (block split) and pixel size (pixel split, leakage count), in metres.
    input_nodata
        Band value that marks a missing pixel at prediction time (0 for Sentinel-2 DNs).
    overwrite
        Replace an existing ``out_dir`` (only after the new bundle is complete).
    verbose
        0 silent, 1 a line per epoch and the test report.
    group_column
        Column of groups for ``split="group"`` (``feature_id`` in tables from ``s2dask sample``).
    folds
        Cross-validation first: K models on K disjoint test folds grouped like ``split``
        (:func:`~s2dask.training.splits.fold_indices`, :func:`~s2dask.training.crossval.cross_validate`); their
        spread goes to ``metrics.json["cross_validation"]``. The bundle is then fitted on the
        usual train/validation part of all data, as without ``folds``.

    Returns
    -------
    dict
        The test metrics written to ``metrics.json`` (with ``cross_validation`` when ``folds``).

    Raises
    ------
    OutputExistsError
        If ``out_dir`` exists and ``overwrite`` is false (checked before anything else).
    SamplesError
        If the table is unusable or cannot be split.
    ModelError
        If a training parameter is invalid.
    StorageError
        If the finished bundle cannot be moved into place.
    """
    out = Path(out_dir).absolute()
    _check_out_dir(out, overwrite)
    units = tuple(int(u) for u in units)
    dropout = tuple(float(d) for d in (dropout or ()))
    class_weight = None if class_weight in (None, "none", "None") else class_weight
    early_stopping = int(early_stopping or 0)
    _check_params(split=split, epochs=epochs, batch_size=batch_size, units=units, dropout=dropout,
                  optimizer=optimizer, learning_rate=learning_rate, early_stopping=early_stopping,
                  class_weight=class_weight, l1=l1, l2=l2)
    data = _resolve_samples(samples, label=label, bands=bands, name_column=name_column,
                            class_table=class_table, x=x, y=y, group_column=group_column)
    if split == AUTO_SPLIT:
        split = default_split(data)
        _log(verbose, f"split: {split} (the default: the leak-free split this table allows; "
                      "--split random is the tutorial's protocol)")
    parts = split_samples(data, method=split, fractions=fractions, seed=seed,
                          pixel_size=pixel_size, block_size=block_size, group_column=group_column)
    cv_folds = None if not folds else fold_indices(
        data, method=split, k=folds, seed=seed, pixel_size=pixel_size, block_size=block_size,
        group_column=group_column)
    names = ", ".join(f"{c['value']}={c['name']}" for c in data.classes)
    _log(verbose, f"samples: {data.source or 'in memory'}: {len(data)} rows, bands "
                  f"{','.join(data.bands)}, classes {names}")
    _log(verbose, f"split {split}: train {len(parts.train)}, val {len(parts.val)}, "
                  f"test {len(parts.test)} rows")

    fit = dict(epochs=int(epochs), batch_size=int(batch_size), units=units, dropout=dropout, l1=l1,
               l2=l2, optimizer=optimizer, learning_rate=float(learning_rate),
               early_stopping=early_stopping, class_weight=class_weight, input_nodata=input_nodata)
    with staged_dir(out, overwrite=overwrite,
                    appeared=f"model directory {out} appeared during training: choose another "
                             "--out or pass --overwrite") as tmp:
        cv = None
        if cv_folds is not None:
            cv = _cross_validate(tmp, data, cv_folds, out=out, fractions=fractions, seed=seed,
                                 verbose=verbose, fit=fit)
        metrics = _train_into(tmp, data, parts, out=out, seed=seed, verbose=verbose, **fit)
        if cv is not None:
            metrics["cross_validation"] = cv
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _log(verbose, format_report(metrics, title=f"test split ({split})"))
    if cv is not None:
        _log(verbose, format_cv_report(cv, final=cv["final_model"]))
    _log(verbose, f"model written to {out}")
    return metrics


def _train_into(tmp: Path, data: Samples, parts: Split, *, out: Path, seed: int, epochs: int,
                batch_size: int, units, dropout, l1, l2, optimizer: str, learning_rate: float,
                early_stopping: int, class_weight, input_nodata, verbose: int,
                check_bf16: bool = True) -> dict:
    """Fit one model on ``parts`` into the bundle folder ``tmp`` and score its test part;
    ``check_bf16``: also :func:`bf16_check` it (the final model; not the fold models)."""
    keras = require_keras()  # quiet import; ModelError with the install hint if missing

    keras.utils.set_random_seed(int(seed))
    values = data.class_values
    index = {v: i for i, v in enumerate(values)}
    y_idx = np.array([index[int(v)] for v in data.y], dtype="int64")
    Xtr, ytr = data.X[parts.train], y_idx[parts.train]
    Xva, yva = data.X[parts.val], y_idx[parts.val]
    model = build_model(len(data.bands), len(values), mean=Xtr.mean(axis=0, dtype="float64"),
                        variance=Xtr.var(axis=0, dtype="float64"), units=units, dropout=dropout,
                        l1=l1, l2=l2, seed=seed)
    opt = {
        "adam": lambda: keras.optimizers.Adam(learning_rate),
        "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate),
    }[optimizer]()
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    weights = None
    if class_weight == "balanced":
        counts = np.bincount(ytr, minlength=len(values)).astype(float)
        weights = {i: float(len(ytr) / (len(values) * c)) for i, c in enumerate(counts) if c > 0}
    callbacks = []
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=early_stopping, restore_best_weights=True))
    if verbose:  # one tqdm bar of epochs on a terminal, nothing per epoch in a log
        callbacks.append(epoch_callback(epochs, "training"))
    t0 = time.perf_counter()
    hist = model.fit(Xtr, ytr, validation_data=(Xva, yva), epochs=epochs, batch_size=batch_size,
                     shuffle=True, class_weight=weights, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    epochs_run = len(history.get("loss", []))
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else epochs_run
    _log(verbose, f"trained {epochs_run} epoch(s) in {seconds:.1f} s; "
                  + (f"kept epoch {best_epoch} (val_loss {history['val_loss'][best_epoch - 1]:.4f})"
                     if early_stopping and history.get("val_loss") else "kept the last epoch"))

    split_info = dict(parts.info)
    extra = {
        "training_data": {"path": data.source, "sha256": data.sha256, "rows": len(data),
                          "label": data.label},
        "split": {k: v for k, v in split_info.items() if k != "explanation"},
        "training": {
            "seed": int(seed), "epochs": epochs, "batch_size": batch_size, "units": list(units),
            "dropout": list(dropout), "l1": l1, "l2": l2, "optimizer": optimizer,
            "learning_rate": learning_rate, "early_stopping_patience": early_stopping,
            "class_weight": class_weight or None, "loss": "sparse_categorical_crossentropy",
            "normalisation": "training split mean/variance inside the model",
        },
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "training_seconds": round(seconds, 2),
    }
    save_bundle(model, tmp, bands=data.bands, classes=data.classes, input_nodata=input_nodata,
                extra=extra)
    # the OpenVINO IR beside model.keras: CPU workers then load it without TensorFlow
    try:
        export_ir(tmp, keras_model=model)
    except ModelError as exc:  # the bundle still works: workers use Keras or convert it
        _log(verbose, f"no OpenVINO IR in the bundle: {exc}")
    # score through the bundle's own prediction path, in float32 (the reference precision:
    # metrics do not depend on whether the machine has bf16 matrix units)
    bundle = load_model(tmp)
    pred = bundle.predict(data.X[parts.test], **SCORING)
    metrics = classification_metrics(data.y[parts.test], pred, bundle.classes)
    metrics = {
        "evaluated_on": "test split",
        **metrics,
        "split": split_info,
        "model_sha256": bundle.sha256,
        "samples": {"path": data.source, "sha256": data.sha256},
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "training_seconds": round(seconds, 2),
        "final": {k: v[-1] for k, v in history.items()},
    }
    if check_bf16:
        metrics["precision"] = bf16_check(bundle, data.X[parts.test], data.y[parts.test], pred,
                                          metrics["overall_accuracy"])
        # workers' auto precision keeps float32 for a model that bf16 moved beyond the bar
        contract = json.loads((tmp / "model.json").read_text())
        contract[PRECISION_CHECK_KEY] = metrics["precision"]
        atomic_write_json(tmp / "model.json", contract)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "history.json").write_text(json.dumps(history) + "\n")
    plot_history(history, tmp / "training.png", best_epoch=best_epoch if early_stopping else None,
                 title=f"{out.name}: training ({parts.method} split), "
                       f"{'weights of epoch ' + str(best_epoch) + ' kept' if early_stopping else f'{epochs_run} epochs'}")
    plot_confusion(metrics, tmp / "confusion.png", title=f"{out.name}, test ({parts.method} split)")
    return metrics


def bf16_check(bundle, x: np.ndarray, y: np.ndarray, reference: np.ndarray, oa: float) -> dict:
    """The test split through OpenVINO in bf16 (the default engine on CPUs with bf16 matrix
    units) against the float32 reference: ``{"bf16": {...}}`` with its test OA, the change
    from float32, the share of rows classified alike and whether the change is within
    :data:`PRECISION_OA_BAR`; ``checked`` false (and why) where this machine cannot run it.
    """
    try:
        got = bundle.predict(x, engine="openvino", precision="bf16")
    except S2DaskError as exc:  # no OpenVINO, or no bf16 instructions on this CPU
        return {"bf16": {"checked": False, "why": str(exc)}}
    oa16 = float(classification_metrics(y, got, bundle.classes)["overall_accuracy"])
    return {"bf16": {"checked": True, "test_oa": oa16, "test_oa_minus_fp32": oa16 - float(oa),
                     "agreement_with_fp32": float((got == reference).mean()) if len(got) else 1.0,
                     "within_bar": abs(oa16 - float(oa)) <= PRECISION_OA_BAR,
                     "bar": PRECISION_OA_BAR}}


def _cross_validate(tmp: Path, data: Samples, folds, *, out: Path, fractions, seed: int,
                    verbose: int, fit: dict) -> dict:
    """K fold models, each trained and scored through a bundle in a scratch folder of ``tmp``."""
    fr = [float(f) for f in fractions]
    val_fraction = fr[1] / (fr[0] + fr[1])

    def fit_score(part: Split, fold_seed: int) -> dict:
        if not len(part.val):
            raise SamplesError(f"fold {part.info['fold'] + 1} left no rows for validation: use fewer "
                               "--folds or a finer grouping")
        scratch = tmp / f"fold-{part.info['fold']}"
        scratch.mkdir()
        try:
            return _train_into(scratch, data, part, out=out, seed=fold_seed, verbose=0,
                               check_bf16=False, **fit)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    _log(verbose, f"cross-validation: {len(folds)} {folds.info['method']} folds, one model each")
    cv = cross_validate(data, folds, fit_score, val_fraction=val_fraction, seed=seed,
                        log=(lambda line: _log(verbose, line)))
    cv["final_model"] = ("final model: fitted on the train/validation part of the usual "
                         f"{folds.info['method']} split of all data (seed {seed}); its test figures "
                         "come from that split's test part, the fold figures from the fold models")
    return cv


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model_dir: str | os.PathLike,
    samples: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    label: str | None = None,
    verbose: int = 1,
) -> dict:
    """Apply a model bundle to a labelled table and report the same metrics as training.

    Parameters
    ----------
    model_dir
        A bundle written by :func:`train`; it is validated (sha256, safe mode) first.
    samples
        A CSV/Parquet table with the model's bands (any alias) and a label column.
    out
        Optional JSON file to write the metrics to.
    label
        The label column (None: the one a table from ``s2dask sample`` names, else ``Class_ID``).
    verbose
        0 silent, 1 print the report.

    Returns
    -------
    dict
        The metrics (also written to ``out`` when given).

    Raises
    ------
    ModelError
        If the bundle is missing, incomplete, tampered with or unloadable.
    SamplesError
        If the table lacks the model's bands or the label column, or has bad values.
    StorageError
        If ``out`` cannot be written.
    """
    bundle = load_model(model_dir)
    data = read_samples(samples, label=label, bands=bundle.bands, name_column=None, x=None, y=None,
                        min_classes=1)
    pred = bundle.predict(data.X, **SCORING)
    metrics = classification_metrics(data.y, pred, bundle.classes)
    metrics = {
        "evaluated_on": "table",
        **metrics,
        "model_dir": str(Path(model_dir)),
        "model_sha256": bundle.sha256,
        "samples": {"path": data.source, "sha256": data.sha256},
    }
    if verbose:
        print(format_report(metrics, title=f"evaluation of {model_dir} on {samples}"), flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
        if verbose:
            print(f"metrics written to {out}", flush=True)
    return metrics

