"""``ApplyMasksUDF``: virtual detectors — the sum of each frame under each mask
(LiberTEM's ``libertem.udf.masks.ApplyMasksUDF``)."""

from __future__ import annotations

import numpy as np

from . import UDF
from ._builtin import BuiltinUDF

__all__ = ["ApplyMasksUDF"]


def _evaluate(mask_factories, sig_shape) -> np.ndarray:
    """The masks as an ``(n, rows, cols)`` array."""
    if callable(mask_factories):
        stack = np.asarray(mask_factories())
        if stack.ndim == 2:
            stack = stack[np.newaxis]
    else:
        stack = np.stack([np.asarray(f() if callable(f) else f) for f in mask_factories])
    if hasattr(stack, "todense"):
        stack = np.asarray(stack.todense())
    if stack.shape[1:] != tuple(sig_shape):
        raise ValueError(
            f"the masks have shape {stack.shape[1:]}, the frames are {tuple(sig_shape)}"
        )
    return stack


class ApplyMasksUDF(BuiltinUDF):
    """Sum of each frame weighted by each mask.

    Parameters
    ----------
    mask_factories : callable or list of callables
        Each returns a 2-D mask of the frame's shape (e.g. ``lambda:
        stemflow.masks.circular(...)``); a single callable may return a stack.
    use_sparse, mask_count, mask_dtype, preferred_dtype, backends, shifts
        Accepted as in LiberTEM; ``shifts`` is not offered.

    Results
    -------
    intensity : nav buffer, extra_shape ``(masks,)``, float64
        Binary masks (bool, or only 0 and 1) run in the Rust engine as exact integer sums;
        weighted masks run as a NumPy dot product per partition.

    Raises
    ------
    ValueError
        A mask whose shape differs from the frames'.
    NotImplementedError
        ``shifts`` given.
    """

    def __init__(
        self,
        mask_factories,
        use_sparse=None,
        mask_count=None,
        mask_dtype=None,
        preferred_dtype=None,
        backends=None,
        shifts=None,
    ):
        if shifts is not None:
            raise NotImplementedError("ApplyMasksUDF(shifts=...) is not offered")
        super().__init__(
            mask_factories=mask_factories,
            use_sparse=use_sparse,
            mask_count=mask_count,
            mask_dtype=mask_dtype,
            preferred_dtype=preferred_dtype,
            backends=backends,
            shifts=shifts,
        )
        self._masks = None

    def _stack(self, sig_shape) -> np.ndarray:
        if self._masks is None or self._masks.shape[1:] != tuple(sig_shape):
            self._masks = _evaluate(self.params.mask_factories, sig_shape)
        return self._masks

    def _binary(self, sig_shape) -> bool:
        m = self._stack(sig_shape)
        return m.dtype == bool or bool(np.isin(m, (0, 1)).all())

    def _describe(self, nav_shape, sig_shape, dtype):
        m = self._stack(sig_shape)
        return {"kind": "masks", "masks": [np.ascontiguousarray(x != 0) for x in m]}

    def _python_fallback(self, nav_shape, sig_shape, dtype):
        if self._binary(sig_shape):
            return None
        return _WeightedMasksUDF(masks=self._stack(sig_shape))

    def _results(self, raw, nav_shape, sig_shape, roi):
        n = len(raw)
        cols = [np.asarray(raw[f"m{i}"][3], dtype=np.float64) for i in range(n)]
        stack = np.stack(cols, axis=-1)
        return {
            "intensity": self._wrap("nav", stack, nav_shape, roi, unit="counts", extra_shape=(n,))
        }


class _WeightedMasksUDF(UDF):
    """Weighted masks, as a NumPy UDF (``intensity``: nav, ``(masks,)``, float64)."""

    def __init__(self, masks):
        super().__init__(masks=masks)

    def get_preferred_input_dtype(self):
        return np.float64

    def get_result_buffers(self):
        return {
            "intensity": self.buffer(
                kind="nav", dtype="float64", extra_shape=(len(self.params.masks),)
            )
        }

    def process_partition(self, partition):
        flat = partition.reshape(partition.shape[0], -1)
        weights = self.params.masks.reshape(len(self.params.masks), -1).astype(np.float64)
        self.results.intensity[:] = flat @ weights.T
