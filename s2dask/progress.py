"""The progress display of a job: a one-line terminal bar of chunks done (client side)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A one-line terminal progress bar of chunks done.

    Parameters
    ----------
    total
        Chunks in the scene.
    label
        What is shown before the bar (the scene id).
    enabled
        Draw on stderr; otherwise only count.
    """

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.done = 0
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more chunks done and redraw the bar."""
        self.done += n
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} chunks  {rate:.2f} chunks/s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
