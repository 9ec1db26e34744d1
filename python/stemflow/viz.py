"""Live plots of results while a run goes on (``run_udf(..., plots=True)``).

In Jupyter (an IPython kernel with matplotlib), one figure per 2-D result — nav results
as scan images, sig results as detector images — with a colour bar and the unit, redrawn
from the engine's snapshots at most every 0.5 s on the caller's thread (the engine keeps
running on its own threads meanwhile). Elsewhere, a progress line on stderr.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .udf import UDFException


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class LivePlots:
    """The plots of one run.

    Parameters
    ----------
    plan : the run's UDFs (``stemflow.api._Plan``)
    which : True (every 2-D result) or a list of ``(udf index, buffer name)`` pairs
    backend : "jupyter", "matplotlib" (figures without display, for tests) or "text"
    """

    def __init__(self, plan, which, backend: str):
        self.plan = plan
        self.which = which
        self.backend = backend
        self.last = 0.0
        self.figures = {}
        self.handles = {}
        self.updates = 0
        self.t0 = time.monotonic()

    @classmethod
    def make(cls, plots, plan) -> LivePlots:
        backend = "jupyter" if _in_jupyter() else "text"
        if isinstance(plots, str):
            backend = plots
            plots = True
        return cls(plan, plots, backend)

    def _selected(self, res):
        for i, bufs in enumerate(res.buffers):
            for name, w in bufs.items():
                if self.which is not True and (i, name) not in self.which:
                    continue
                try:
                    data = w.data
                except UDFException:  # a buffer without values yet
                    continue
                if data.ndim == 2 and w.kind in ("nav", "sig"):
                    yield (i, name), w, data

    def update(self, res, final: bool = False) -> None:
        """Redraws from ``res`` (:class:`stemflow.api.UDFResults`), at most every 0.5 s
        unless ``final``."""
        now = time.monotonic()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        self.updates += 1
        if self.backend == "text":
            done = res.frames_processed
            sys.stderr.write(
                f"stemflow: {done} frames, {done / max(now - self.t0, 1e-9):,.0f} frames/s"
                + ("\n" if final else "\r")
            )
            sys.stderr.flush()
            return
        import matplotlib

        if self.backend == "matplotlib":
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        for key, w, data in self._selected(res):
            if key not in self.figures:
                fig, ax = plt.subplots(figsize=(4, 4))
                shown = np.where(np.isfinite(data), data, np.nan).astype(np.float64)
                im = ax.imshow(
                    shown, cmap="gray" if w.kind == "nav" else "viridis", interpolation="nearest"
                )
                bar = fig.colorbar(im, ax=ax)
                bar.set_label(w.unit or "value")
                label = "scan" if w.kind == "nav" else "detector"
                ax.set_title(f"{type(self.plan.udfs[key[0]]).__name__}: {key[1]} ({label})")
                self.figures[key] = (fig, im)
                if self.backend == "jupyter":
                    from IPython.display import display

                    self.handles[key] = display(fig, display_id=True)
            fig, im = self.figures[key]
            finite = data[np.isfinite(data)]
            im.set_data(data)
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                im.set_clim(lo, hi if hi > lo else lo + 1)
            if self.backend == "jupyter":
                self.handles[key].update(fig)
        if final and self.backend == "jupyter":
            import matplotlib.pyplot as plt

            for fig, _ in self.figures.values():
                plt.close(fig)
