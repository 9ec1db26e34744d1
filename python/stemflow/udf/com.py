"""``CoMUDF``: centre of mass and the derived field, magnitude, divergence and curl
(LiberTEM's ``libertem.udf.com.CoMUDF`` with ``CoMParams``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._builtin import BuiltinUDF

__all__ = ["CoMParams", "CoMUDF", "RegressionOptions"]


class RegressionOptions:
    """Regression of the shift field (only ``NO_REGRESSION`` is offered)."""

    NO_REGRESSION = -1


class CoMParams(NamedTuple):
    """Parameters of :class:`CoMUDF`, in LiberTEM's convention (pixel ``i``'s centre at
    coordinate ``i``).

    Attributes
    ----------
    cy, cx : float or None
        Reference position (usually the unscattered beam), pixels; None: ``sig // 2``.
    r : float
        Radius of the disk that is weighed, pixels (inf: the whole frame).
    ri : float
        Inner radius (only 0 is offered).
    scan_rotation : float
        Rotation between scan and detector, degrees.
    flip_y : bool
        Flip the detector's y axis before rotating.
    regression : int
        Only ``RegressionOptions.NO_REGRESSION``.
    """

    cy: float | None = None
    cx: float | None = None
    r: float = float("inf")
    ri: float | None = 0.0
    scan_rotation: float = 0.0
    flip_y: bool = False
    regression: int = RegressionOptions.NO_REGRESSION


def _gradient(a, axis):
    """``numpy.gradient`` along ``axis``, 0 where that axis has a single position."""
    if a.shape[axis] < 2:
        return np.zeros_like(a)
    return np.gradient(a, axis=axis)


def _correct(y, x, scan_rotation, flip_y):
    """Flip then rotate the shifts (LiberTEM's convention: y first, degrees)."""
    if flip_y:
        y = -y
    a = math.radians(scan_rotation)
    c, s = math.cos(a), math.sin(a)
    return c * y + s * x, -s * y + c * x


class CoMUDF(BuiltinUDF):
    """Centre of mass of each frame inside a disk, minus the reference position.

    Results (nav buffers, float64, pixels; NaN outside the ROI)
    ----------------------------------------------------------
    field : extra_shape ``(2,)`` — the shift ``(y, x)`` after flip and rotation
    field_y, field_x, magnitude, divergence, curl
    raw_shifts : ``(2,)`` — the shift before correction; raw_com : ``(2,)`` — the centre

    Frames whose disk holds no counts get a zero shift (as in LiberTEM).

    Raises
    ------
    NotImplementedError
        ``ri`` other than 0, or a regression.
    """

    def __init__(self, com_params: CoMParams | None = None):
        if com_params is None:
            com_params = CoMParams()
        if com_params.ri not in (None, 0, 0.0):
            raise NotImplementedError("CoMUDF with an inner radius (ri) is not offered")
        if com_params.regression != RegressionOptions.NO_REGRESSION:
            raise NotImplementedError("CoMUDF regression is not offered")
        super().__init__(com_params=com_params)

    @classmethod
    def with_params(
        cls,
        *,
        cy=None,
        cx=None,
        r=float("inf"),
        ri=0.0,
        scan_rotation=0.0,
        flip_y=False,
        regression=RegressionOptions.NO_REGRESSION,
    ) -> CoMUDF:
        """A CoMUDF from keyword parameters (see :class:`CoMParams`)."""
        return cls(
            CoMParams(
                cy=cy,
                cx=cx,
                r=r,
                ri=ri,
                scan_rotation=scan_rotation,
                flip_y=flip_y,
                regression=regression,
            )
        )

    def _centre(self, sig_shape):
        p = self.params.com_params
        cy = sig_shape[0] // 2 if p.cy is None else p.cy
        cx = sig_shape[1] // 2 if p.cx is None else p.cx
        return float(cy), float(cx)

    def _describe(self, nav_shape, sig_shape, dtype):
        cy, cx = self._centre(sig_shape)
        # The engine's pixel centres are at index + 0.5: the same disk and shifts.
        r = min(float(self.params.com_params.r), math.hypot(*sig_shape) + 2.0)
        return {"kind": "com", "cx": cx + 0.5, "cy": cy + 0.5, "r": r}

    def _results(self, raw, nav_shape, sig_shape, roi):
        p = self.params.com_params
        cy, cx = self._centre(sig_shape)
        x = np.asarray(raw["x"][3], dtype=np.float64)
        y = np.asarray(raw["y"][3], dtype=np.float64)
        processed = np.ones(nav_shape, bool) if roi is None else roi
        # An empty disk: no shift (the engine gives NaN).
        x = np.where(processed & np.isnan(x), 0.0, x)
        y = np.where(processed & np.isnan(y), 0.0, y)
        fy, fx = _correct(y, x, p.scan_rotation, p.flip_y)
        field = np.stack([fy, fx], axis=-1)
        out = {
            "field": ("nav", field, (2,)),
            "field_y": ("nav", fy, ()),
            "field_x": ("nav", fx, ()),
            "magnitude": ("nav", np.sqrt(fy**2 + fx**2), ()),
            "divergence": ("nav", _gradient(fy, 0) + _gradient(fx, 1), ()),
            "curl": ("nav", _gradient(fy, 1) - _gradient(fx, 0), ()),
            "raw_shifts": ("nav", np.stack([y, x], axis=-1), (2,)),
            "raw_com": ("nav", np.stack([y + cy, x + cx], axis=-1), (2,)),
        }
        return {
            k: self._wrap(kind, v, nav_shape, roi, unit="pixels", extra_shape=extra)
            for k, (kind, v, extra) in out.items()
        }
