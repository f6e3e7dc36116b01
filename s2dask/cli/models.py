"""Command line for models made elsewhere: ``s2dask bundle`` (argument parsing only).

``s2dask.cli.main`` calls :func:`add_subcommands` with its subparsers; the subcommand sets
``handler`` like the others, so an :class:`~s2dask.errors.S2DaskError` becomes one line on
stderr and exit code 2. ``s2dask inspect MODEL_DIR`` prints a bundle's card
(:func:`print_card`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_subcommands", "is_bundle", "print_card"]


def is_bundle(path: str) -> bool:
    """Whether ``path`` is a model bundle directory (it holds ``model.json``)."""
    return Path(path, "model.json").is_file()


def print_card(path: str) -> int:
    """Print a bundle's model card (``s2dask inspect MODEL_DIR``)."""
    from ..model.bundle import load_model
    from ..model.card import format_card

    bundle = load_model(path, check_keras=False)
    for key, value in format_card(bundle.contract, bundle.path):
        print(f"{key:<20} {value}")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from ..model.card import format_card, read_mlm
    from ..model.foreign import bundle

    if args.mlm:
        given = {k: getattr(args, k) for k in ("model", "bands", "classes", "mean", "std", "scale", "offset",
                                               "clip")
                 if getattr(args, k) is not None}
        if given:
            raise_usage(f"--mlm reads the model, bands, classes and scaling from the item: drop "
                        f"{', '.join('--' + k if k != 'model' else 'MODEL' for k in given)}")
        kwargs = read_mlm(args.mlm)
    else:
        missing = [n for n, v in (("MODEL", args.model), ("--bands", args.bands), ("--classes", args.classes))
                   if v is None]
        if missing:
            raise_usage(f"give {', '.join(missing)} (or --mlm ITEM.json)")
        kwargs = dict(model=args.model, bands=args.bands, classes=args.classes, mean=args.mean,
                      std=args.std, scale=args.scale, offset=args.offset, clip=args.clip)
    result = bundle(out=args.out, outputs=args.outputs, input_nodata=args.input_nodata,
                    receptive_field=args.receptive_field, check=args.check,
                    overwrite=args.overwrite, unsafe=args.unsafe, **kwargs)
    print(f"wrote {result.path} (model.keras, model.json, mlm.json)")
    checked = (result.contract.extra.get("precision_check") or {}).get("bf16") or {}
    if checked.get("checked"):
        print(f"  bf16 check: {checked['agreement']:.3%} of {checked['pixels']} pixels as in float32 "
              f"({'within' if checked['within_bar'] else 'beyond'} the bar: jobs run "
              f"{'bf16' if checked['within_bar'] else 'float32'} by default)")
    for key, value in format_card(result.contract, result.path)[1:]:
        print(f"  {key:<18} {value}")
    return 0


def raise_usage(message: str) -> None:
    from ..errors import ParameterError

    raise ParameterError(message)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Add ``bundle`` to the ``s2dask`` parser."""
    p = sub.add_parser(
        "bundle",
        help="turn a model made elsewhere (.keras, Keras 2 .h5, SavedModel, STAC MLM item) into a bundle",
        description="Turn a trained Keras model made elsewhere (R keras, tf.keras, Keras 3) into a "
        "model bundle that classify, evaluate and load_model accept. Scaling applied outside the "
        "model (--mean/--std z-scores, --scale/--offset) and a softmax for logits are folded into "
        "the bundle, so it takes raw Sentinel-2 digital numbers. Writes MODEL_DIR/ with model.keras, "
        "model.json (contract and card) and mlm.json (a STAC MLM item).",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="a Keras 3 .keras file, a Keras 2 .h5 file or a TensorFlow SavedModel directory")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the bundle directory to write")
    p.add_argument("--bands", default=None, metavar="B02,B03,...",
                   help="the model's input bands in order (B2 and B02 alike)")
    p.add_argument("--classes", default=None, metavar="classes.csv",
                   help="CSV of value,name[,colour]; row i names output unit i, its value is what maps hold")
    p.add_argument("--mean", default=None, metavar="m1,...,mN",
                   help="per-band means of a z-score applied outside the model (R: "
                   "attr(scale(x), 'scaled:center'))")
    p.add_argument("--std", default=None, metavar="s1,...,sN",
                   help="per-band standard deviations of that z-score (R: attr(scale(x), 'scaled:scale'))")
    p.add_argument("--scale", type=float, default=None, metavar="S",
                   help="multiply band values by S before the model (e.g. 0.0001 for reflectance models)")
    p.add_argument("--offset", type=float, default=None, metavar="O",
                   help="then add O (before the z-score when both are given)")
    p.add_argument("--clip", default=None, metavar="MIN,MAX",
                   help="clip raw band values to [MIN, MAX] first (either may be empty: 0, or ,10000)")
    p.add_argument("--outputs", choices=("probabilities", "logits"), default="probabilities",
                   help="what the output units hold (default probabilities; logits get a softmax)")
    p.add_argument("--receptive-field", type=int, default=None, metavar="N",
                   help="a fully-convolutional model's receptive field edge in pixels (each chunk is "
                   "read with a halo of N // 2); derived from the layers when omitted")
    p.add_argument("--check", default=None, metavar="SCENE",
                   help="check OpenVINO bf16 against float32 on a window of SCENE and record it: jobs' "
                   "--precision auto then keeps float32 if bf16 changed more than 0.2%% of the classes")
    p.add_argument("--input-nodata", type=float, default=0, metavar="V",
                   help="the band value that marks a missing pixel (default 0)")
    p.add_argument("--mlm", default=None, metavar="ITEM.json",
                   help="read model, bands, classes and value scaling from a STAC MLM item instead")
    p.add_argument("--unsafe", action="store_true",
                   help="allow layers that need unsafe deserialisation (Lambda, custom classes): "
                   "only for files you trust, loading them runs their code")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    p.set_defaults(handler=_cmd_bundle)
