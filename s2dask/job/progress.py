"""The one progress display of s2dask (client side): tqdm bars, drawn only on a terminal.

Every long step (the chunks of ``classify``, the reads of ``sample``, the epochs of
``train``, hence the demo) shows its progress through :class:`Progress`; when stderr is not
a terminal (a log file, a pipe, CI) nothing is drawn, so logs never hold an endless line.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

__all__ = ["Progress", "show_progress", "gather", "epoch_callback"]


def show_progress(requested: bool | None = None) -> bool:
    """Whether to draw: ``requested`` if given, else whether stderr is a terminal."""
    if requested is not None:
        return bool(requested)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class Progress:
    """A tqdm bar of ``total`` steps on stderr; only counts when disabled.

    Parameters
    ----------
    total
        Steps (chunks, epochs) in all.
    label
        What is shown before the bar (the scene id, "training").
    enabled
        Draw (``None``: when stderr is a terminal).
    unit
        The steps' name.
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None, *, unit: str = "chunk"):
        from tqdm.auto import tqdm

        self.total, self.label = total, label
        self.enabled = show_progress(enabled) and total > 0
        self.done = 0
        self._bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=True,
                         dynamic_ncols=True, disable=not self.enabled)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more steps done (with optional figures shown after the bar)."""
        self.done += n
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        """End the bar (idempotent)."""
        self._bar.close()


def gather(client: Any, futures: Sequence[Any], label: str, enabled: bool | None = None) -> list:
    """The results of ``futures`` in order, with a bar of how many are done.

    Raises
    ------
    Exception
        The first task error, as ``client.gather`` would.
    """
    from distributed.client import as_completed

    bar = Progress(len(futures), label, enabled, unit="task")
    try:
        if bar.enabled:
            for _ in as_completed(futures):
                bar.update()
    finally:
        bar.close()
    return client.gather(futures)


def epoch_callback(epochs: int, label: str = "training", enabled: bool | None = None):
    """A Keras callback that advances one bar per epoch, showing loss and validation loss."""
    from ..model.backend import require_keras

    keras = require_keras()
    bar_holder: dict[str, Progress] = {}

    class _Bar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            bar_holder["bar"] = Progress(epochs, label, enabled, unit="epoch")

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            bar_holder["bar"].update(1, **{k: f"{v:.4f}" for k, v in logs.items()
                                           if k in ("loss", "val_loss", "val_accuracy")})

        def on_train_end(self, logs=None):
            bar_holder["bar"].close()

    return _Bar()
