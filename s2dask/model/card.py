"""A bundle's model card: what kind of model it is, and a STAC item in the Machine Learning
Model (MLM) extension (``mlm.json``) so that a bundle can be catalogued; and the reverse, the
arguments of :func:`s2dask.model.foreign.bundle` read from an MLM item.

No deep-learning import: a card is read and written from the contract alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelError
from .contract import InputContract

__all__ = ["MLM_FILE", "MLM_SCHEMA", "CLASSIFICATION_SCHEMA", "card", "mlm_item", "read_mlm",
           "format_card"]

MLM_FILE = "mlm.json"
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
#: the card of a bundle written by ``s2dask train`` (its scaling is inside the model)
TRAIN_CARD = {"kind": "pixel", "window": 1, "receptive_field": 1, "halo": 0,
              "scaling": "inside the model (Normalization layer)", "outputs": "probabilities",
              "source_format": "s2dask train"}


def card(contract: InputContract | Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's card: ``model.json``'s ``card`` entry, or that of a trained MLP."""
    data = contract.to_dict() if isinstance(contract, InputContract) else dict(contract)
    return dict(data.get("card") or TRAIN_CARD)


def mlm_item(contract: InputContract | Mapping[str, Any], *, created: str | None = None) -> dict:
    """A STAC item (MLM and classification extensions) describing a bundle's model.

    The model asset (``model.keras``) takes raw digital numbers: any scaling is folded into
    it, so ``value_scaling`` is null and the folded scaling is recorded as
    ``s2dask:folded_scaling``.
    """
    data = contract.to_dict() if isinstance(contract, InputContract) else dict(contract)
    c = card(data)
    bands, classes = list(data["bands"]), list(data["classes"])
    created = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    versions = data.get("versions") or {}
    shape_in = [-1, len(bands)] if c.get("kind", "pixel") == "pixel" else [-1, -1, -1, len(bands)]
    order_in = ["batch", "bands"] if len(shape_in) == 2 else ["batch", "height", "width", "bands"]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA, CLASSIFICATION_SCHEMA],
        "id": f"s2dask-model-{data['model_sha256'][:12]}",
        "geometry": None,
        "properties": {
            "datetime": created,
            "mlm:name": f"s2dask-{c.get('kind', 'pixel')}-{data['model_sha256'][:12]}",
            "mlm:architecture": c.get("architecture") or ("MLP" if c.get("kind") == "pixel" else "CNN"),
            "mlm:tasks": ["classification"],
            "mlm:framework": "keras",
            "mlm:framework_version": versions.get("keras", ""),
            "mlm:accelerator": "amd64",
            "mlm:accelerator_constrained": False,
            "mlm:input": [{
                "name": "Sentinel-2 bands",
                "bands": bands,
                "input": {"shape": shape_in, "dim_order": order_in, "data_type": "float32"},
                "value_scaling": None,
                "nodata": data.get("input_nodata"),
            }],
            "mlm:output": [{
                "name": "classes",
                "tasks": ["classification"],
                "result": {"shape": [-1, len(classes)], "dim_order": ["batch", "class"],
                           "data_type": "float32"},
                "classification:classes": [
                    {"value": k["value"], "name": k["name"],
                     **({"color_hint": k["colour"].lstrip("#")} if k.get("colour") else {})}
                    for k in classes],
            }],
            "s2dask:kind": c.get("kind", "pixel"),
            "s2dask:receptive_field": c.get("receptive_field", 1),
            "s2dask:halo": c.get("halo", 0),
            "s2dask:folded_scaling": c.get("scaling"),
            "s2dask:outputs": c.get("outputs", "probabilities"),
        },
        "links": [],
        "assets": {
            "model": {"href": data.get("model_file", "model.keras"),
                      "type": "application/octet-stream; application=keras",
                      "title": "Keras 3 model taking raw Sentinel-2 digital numbers",
                      "roles": ["mlm:model"], "mlm:artifact_type": "keras.saving.save_model",
                      "file:checksum": "1220" + data["model_sha256"]},
            "contract": {"href": "model.json", "type": "application/json", "roles": ["metadata"]},
        },
    }


def _scalar(value: Any, n: int, what: str, where: Any) -> list[float]:
    vals = value if isinstance(value, list) else [value] * n
    if len(vals) != n:
        raise ModelError(f"{where}: value_scaling {what} has {len(vals)} values for {n} bands")
    return [float(v) for v in vals]


def read_mlm(path: str | os.PathLike) -> dict[str, Any]:
    """The arguments of :func:`~s2dask.model.foreign.bundle` from an MLM item.

    Reads the model asset (role ``mlm:model``, href relative to the item), the bands of the
    first ``mlm:input``, its ``value_scaling`` (``z-score``, ``scale``, ``offset``,
    ``min-max``, ``clip``, ``clip-min``, ``clip-max``; applied in order, a clip moved to the
    raw values it bounds) and the ``classification:classes`` of the first ``mlm:output``.

    Raises
    ------
    ModelError
        If the item is not MLM, lacks a model asset, bands or classes, or asks for a value
        scaling s2dask cannot fold into the model (``processing``, a clip after a z-score).
    """
    path = Path(path)
    try:
        item = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"MLM item {path} cannot be read ({exc}): give a STAC item JSON file") from None
    props = item.get("properties") or {}
    inputs, outputs = props.get("mlm:input") or [], props.get("mlm:output") or []
    if not inputs or not outputs:
        raise ModelError(f"{path} is not an MLM item (no mlm:input / mlm:output): give a STAC item "
                         "with the Machine Learning Model extension")
    assets = [a for a in (item.get("assets") or {}).values() if "mlm:model" in (a.get("roles") or [])]
    if not assets:
        raise ModelError(f"{path} has no asset with role mlm:model: the model file is not named")
    href = assets[0]["href"]
    if "://" in href and not href.startswith("file://"):
        raise ModelError(f"{path}'s model asset {href} is remote: download it and point the href at "
                         "the local file (s2dask never loads weights from the internet at run time)")
    model = (path.parent / href.removeprefix("file://")).resolve()
    bands = [b["name"] if isinstance(b, dict) else str(b) for b in inputs[0].get("bands") or []]
    if not bands:
        raise ModelError(f"{path}: mlm:input has no bands: name the model's input bands in order")
    classes = [{"value": int(k["value"]), "name": str(k.get("name", k["value"])),
                **({"colour": "#" + k["color_hint"].lstrip("#")} if k.get("color_hint") else {})}
               for k in outputs[0].get("classification:classes") or []]
    if not classes:
        raise ModelError(f"{path}: mlm:output has no classification:classes")
    out: dict[str, Any] = {"model": model, "bands": bands, "classes": classes}
    scale, offset = 1.0, 0.0
    mean = std = None
    lo, hi = None, None  # clipping bounds in raw units (clipping commutes with x * a + b, a > 0)
    for step in inputs[0].get("value_scaling") or []:
        kind, n = step.get("type"), len(bands)
        if mean is not None:
            raise ModelError(f"{path}: value_scaling after a z-score cannot be folded into one step")
        if kind in ("clip", "clip-min", "clip-max"):
            if scale <= 0:
                raise ModelError(f"{path}: a clip after a negative scale cannot be folded into the bundle")
            if kind != "clip-max" and step.get("minimum") is not None:
                raw = (float(step["minimum"]) - offset) / scale
                lo = raw if lo is None else max(lo, raw)
            if kind != "clip-min" and step.get("maximum") is not None:
                raw = (float(step["maximum"]) - offset) / scale
                hi = raw if hi is None else min(hi, raw)
        elif kind == "z-score":
            mean = _scalar(step["mean"], n, "mean", path)
            std = _scalar(step["stddev"], n, "stddev", path)
        elif kind == "scale":  # x / value
            scale, offset = scale / float(step["value"]), offset / float(step["value"])
        elif kind == "offset":  # x - value
            offset -= float(step["value"])
        elif kind == "min-max":  # (x - min) / (max - min)
            lo, hi = float(step["minimum"]), float(step["maximum"])
            scale, offset = scale / (hi - lo), (offset - lo) / (hi - lo)
        else:
            raise ModelError(f"{path}: value_scaling {kind!r} cannot be folded into the bundle "
                             "(z-score, scale, offset, min-max and clip can)")
    if (scale, offset) != (1.0, 0.0):
        out["scale"], out["offset"] = scale, offset
    if mean is not None:
        out["mean"], out["std"] = mean, std
    if (lo, hi) != (None, None):
        out["clip"] = (lo, hi)
    return out


def format_card(contract: InputContract, path: Any) -> list[tuple[str, str]]:
    """``(key, value)`` lines that ``s2dask inspect MODEL_DIR`` prints."""
    c = card(contract)
    scaling = c.get("scaling")
    if isinstance(scaling, dict):
        clip = scaling.get("clip")
        parts = [f"clip to [{clip[0]}, {clip[1]}]" if clip else "",
                 f"x * {scaling['scale']:g}" if scaling.get("scale") is not None else "",
                 f"+ {scaling['offset']:g}" if scaling.get("offset") is not None else "",
                 "z-score per band" if scaling.get("mean") is not None else ""]
        scaling = " ".join(p for p in parts if p) or "none"
    return [
        ("model", str(path)),
        ("kind", f"{c.get('kind', 'pixel')} (receptive field {c.get('receptive_field', 1)}, "
                 f"halo {c.get('halo', 0)})"),
        ("bands", " ".join(contract.bands)),
        ("classes", ", ".join(f"{k.value}={k.name}" for k in contract.classes)),
        ("input nodata", str(contract.input_nodata)),
        ("scaling", str(scaling)),
        ("outputs", str(c.get("outputs", "probabilities"))),
        ("source", f"{c.get('source_format')}"
                   + (f" {c['source_file']} (sha256 {c['source_sha256'][:12]}...)"
                      if c.get("source_sha256") else "")),
        ("bf16 check", _check_line(contract)),
        ("model sha256", contract.model_sha256),
    ]


def _check_line(contract: InputContract) -> str:
    check = ((contract.extra.get("precision_check") or {}).get("bf16")) or {}
    if not check.get("checked"):
        return check.get("why") or "none (--precision auto uses bf16 where the CPU has it)"
    if "agreement" in check:
        what = f"{check['agreement']:.3%} of the classes of {check.get('on', 'a check scene')} as in float32"
    else:
        what = f"test OA {check.get('test_oa_minus_fp32', 0.0):+.4f} against float32"
    return f"{what}: jobs run {'bf16' if check.get('within_bar') else 'float32'} by default"
