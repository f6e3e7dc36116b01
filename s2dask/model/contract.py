"""The input contract of a model bundle (``model.json``): typed, validated, and nothing else.

What a model takes (bands in order, the scale and nodata of their values) and what it
gives (classes with values, names and colours; the output nodata value) is checked here,
once, for every path: training writes it, :func:`s2dask.model.bundle.load_model` reads it, jobs,
writers and metrics use its attributes. No deep-learning import: a client validates a
bundle without loading a backend.

:meth:`InputContract.from_dict` and :meth:`InputContract.to_dict` round-trip today's
``model.json`` exactly (keys, order and values), so bundles written before still load
and a bundle written again has the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ModelError
from ..scene.bands import canonical_bands

__all__ = [
    "CONTRACT_VERSION",
    "OUTPUT_NODATA",
    "MAX_CLASSES",
    "DEFAULT_COLOURS",
    "MODEL_FILE",
    "CONTRACT_FILE",
    "ClassInfo",
    "InputContract",
    "class_infos",
    "normalise_classes",
    "check_model_size",
]

CONTRACT_VERSION = 1
#: class value written where a pixel has no prediction (nodata in any input band)
OUTPUT_NODATA = 255
#: class values must fit in uint8 next to the nodata value
MAX_CLASSES = 254
#: a qualitative palette used when a class table gives no colours
DEFAULT_COLOURS = (
    "#808080", "#e31a1c", "#33a02c", "#b2df8a", "#1f78b4", "#ff7f00",
    "#6a3d9a", "#fdbf6f", "#a6cee3", "#fb9a99", "#cab2d6", "#ffff99",
)
MODEL_FILE = "model.keras"
CONTRACT_FILE = "model.json"
_REQUIRED = ("contract_version", "bands", "classes", "input_scale", "input_nodata",
             "output_nodata", "model_sha256")
# the keys the dataclass types, in the order save_bundle writes them
_KNOWN = ("contract_version", "bands", "input_scale", "input_offset", "input_nodata", "classes",
          "output_nodata", "model_file", "model_sha256", "versions")


@dataclass(frozen=True)
class ClassInfo:
    """One output class of a model."""

    #: the class value written in class maps (0..254)
    value: int
    #: its name
    name: str
    #: its colour, ``#rrggbb``
    colour: str
    #: a longer description, where a class table gives one (not written when absent)
    description: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClassInfo":
        """A class from ``{"value", "name", "colour"[, "description"]}`` (no validation)."""
        return cls(int(data["value"]), str(data.get("name", data["value"])),
                   str(data.get("colour") or ""), data.get("description"))

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "name", "colour"}`` (and ``"description"`` when set), as in ``model.json``."""
        out: dict[str, Any] = {"value": self.value, "name": self.name, "colour": self.colour}
        if self.description is not None:
            out["description"] = self.description
        return out


def class_infos(classes: Iterable[ClassInfo | Mapping[str, Any]]) -> tuple[ClassInfo, ...]:
    """Classes given as :class:`ClassInfo` or as dicts, as :class:`ClassInfo` (no validation)."""
    return tuple(c if isinstance(c, ClassInfo) else ClassInfo.from_dict(c) for c in classes)


def normalise_classes(classes: Sequence[ClassInfo | Mapping[str, Any]]) -> tuple[ClassInfo, ...]:
    """Validate a class table and fill in default names and colours.

    Raises
    ------
    ModelError
        If there are fewer than 2 or more than :data:`MAX_CLASSES` classes, a value is not
        an integer in 0..254, or a value is listed twice.
    """
    if len(classes) > MAX_CLASSES:
        raise ModelError(
            f"{len(classes)} classes cannot be written as uint8 next to nodata {OUTPUT_NODATA}: "
            f"use at most {MAX_CLASSES} classes"
        )
    if len(classes) < 2:
        raise ModelError(f"a classifier needs at least 2 classes, the contract lists {len(classes)}")
    out = []
    seen = set()
    for i, c in enumerate(classes):
        c = c.to_dict() if isinstance(c, ClassInfo) else c
        try:
            value = int(c["value"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"class entry {i} has no integer 'value': {c!r}") from None
        if not 0 <= value <= 254:
            raise ModelError(f"class value {value} does not fit uint8 below nodata 255: use 0..254")
        if value in seen:
            raise ModelError(f"class value {value} is listed twice in the class table")
        seen.add(value)
        colour = str(c.get("colour") or DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)])
        out.append(ClassInfo(value, str(c.get("name", value)), colour, c.get("description")))
    return tuple(out)


def check_model_size(n_inputs: int | None, n_outputs: int | None, *, bands: int, classes: int,
                     where: Any, hint: str = "") -> None:
    """Refuse a model whose input/output sizes disagree with its bands and classes.

    ``None`` sizes (unknown without loading the model) are not checked.

    Raises
    ------
    ModelError
        ``"<where> has N inputs but its contract names M bands"`` (or outputs / classes).
    """
    if n_inputs is not None and n_inputs != bands:
        raise ModelError(f"{where} has {n_inputs} inputs but its contract names {bands} bands{hint}")
    if n_outputs is not None and n_outputs != classes:
        raise ModelError(f"{where} has {n_outputs} outputs but its contract names {classes} "
                         f"classes{hint}")


@dataclass(frozen=True)
class InputContract:
    """What a model takes and gives: the content of a bundle's ``model.json``."""

    #: the contract format's version (:data:`CONTRACT_VERSION`)
    contract_version: int
    #: canonical band names in the model's input order
    bands: tuple[str, ...]
    #: the classes in the model's output order
    classes: tuple[ClassInfo, ...]
    #: sha256 of the model file
    model_sha256: str
    #: ``"dn"``: raw L1C/L2A digital numbers with no baseline offset (reflectance x 10000)
    input_scale: str = "dn"
    #: added to the band values before the model (always 0 today)
    input_offset: float = 0
    #: the band value that marks a missing pixel (``None``: none)
    input_nodata: float | None = 0
    #: the class value of pixels without a prediction
    output_nodata: int = OUTPUT_NODATA
    #: the model file inside the bundle
    model_file: str = MODEL_FILE
    #: library versions at training time
    versions: Mapping[str, str] = field(default_factory=dict)
    #: provenance beyond the typed fields (training data, split, training parameters ...)
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the keys present in ``model.json``, in order (``to_dict`` writes them back so)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Any, *, where: Any = "model.json") -> "InputContract":
        """Validate a ``model.json`` object.

        Raises
        ------
        ModelError
            If it is not an object, lacks a required key, has another contract version,
            a bad band list or class table, or an output nodata other than 255.
        """
        if not isinstance(data, Mapping):
            raise ModelError(f"{where} is not a JSON object: re-create the bundle with 's2dask train'")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ModelError(
                f"{where} lacks {', '.join(missing)}: the contract is incomplete; re-create the "
                "bundle with 's2dask train'"
            )
        if data["contract_version"] != CONTRACT_VERSION:
            raise ModelError(
                f"{where} has contract_version {data['contract_version']!r}, this s2dask reads "
                f"{CONTRACT_VERSION}: upgrade s2dask or re-train"
            )
        try:
            bands = canonical_bands(data["bands"])
        except Exception as exc:
            raise ModelError(f"{where}: bad band list: {exc}") from None
        classes = normalise_classes(data["classes"])
        if data["output_nodata"] != OUTPUT_NODATA:
            raise ModelError(f"{where}: output_nodata must be {OUTPUT_NODATA}")
        typed = {k: data[k] for k in _KNOWN if k in data and k not in ("bands", "classes")}
        extra = {k: v for k, v in data.items() if k not in _KNOWN}
        return cls(bands=tuple(bands), classes=classes, extra=extra, keys=tuple(data), **typed)

    def to_dict(self) -> dict[str, Any]:
        """The ``model.json`` object: the keys it was read with, in their order."""
        known = {
            "contract_version": self.contract_version, "bands": list(self.bands),
            "input_scale": self.input_scale, "input_offset": self.input_offset,
            "input_nodata": self.input_nodata, "classes": [c.to_dict() for c in self.classes],
            "output_nodata": self.output_nodata, "model_file": self.model_file,
            "model_sha256": self.model_sha256, "versions": dict(self.versions),
        }
        keys = self.keys or (*_KNOWN, *self.extra)
        return {k: known[k] if k in known else self.extra[k] for k in keys}

    @property
    def class_values(self) -> list[int]:
        """The class values in output order."""
        return [c.value for c in self.classes]

    def check_model_size(self, n_inputs: int | None, n_outputs: int | None, *, where: Any,
                         hint: str = "") -> None:
        """:func:`check_model_size` against this contract's bands and classes.

        Raises
        ------
        ModelError
            If a size disagrees.
        """
        check_model_size(n_inputs, n_outputs, bands=len(self.bands), classes=len(self.classes),
                         where=where, hint=hint)
