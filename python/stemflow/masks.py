"""Mask factories with LiberTEM's names and conventions (``libertem.masks``).

Coordinates are LiberTEM's: pixel ``(x, y)`` has its centre at ``(x, y)``; a frame is
``imageSizeY`` rows × ``imageSizeX`` columns. Each function returns a 2-D array of shape
``(imageSizeY, imageSizeX)``; pass it to :class:`stemflow.udf.masks.ApplyMasksUDF` in a
factory (``lambda: circular(...)``). Binary masks run in the Rust engine as exact
integer sums.
"""

from __future__ import annotations

import numpy as np

__all__ = ["circular", "polygon", "rectangular", "ring"]


def _grid(imageSizeX: int, imageSizeY: int):
    y, x = np.ogrid[0:imageSizeY, 0:imageSizeX]
    return y, x


def circular(
    centerX: float,
    centerY: float,
    imageSizeX: int,
    imageSizeY: int,
    radius: float,
    antialiased: bool = False,
) -> np.ndarray:
    """A disk: pixels whose centre lies within ``radius`` of ``(centerX, centerY)``.

    Returns
    -------
    numpy.ndarray of bool, shape ``(imageSizeY, imageSizeX)``

    Raises
    ------
    NotImplementedError
        For ``antialiased=True`` (weighted edges are not offered).
    """
    if antialiased:
        raise NotImplementedError("antialiased masks are not offered; give antialiased=False")
    y, x = _grid(imageSizeX, imageSizeY)
    return (x - centerX) ** 2 + (y - centerY) ** 2 <= radius * radius


def ring(
    centerX: float,
    centerY: float,
    imageSizeX: int,
    imageSizeY: int,
    radius: float,
    radius_inner: float,
    antialiased: bool = False,
) -> np.ndarray:
    """A ring: inside the disk of ``radius``, outside the disk of ``radius_inner``.

    Returns
    -------
    numpy.ndarray of bool, shape ``(imageSizeY, imageSizeX)``
    """
    outer = circular(centerX, centerY, imageSizeX, imageSizeY, radius, antialiased)
    inner = circular(centerX, centerY, imageSizeX, imageSizeY, radius_inner, antialiased)
    return outer & ~inner


def rectangular(
    X: int, Y: int, Width: int, Height: int, imageSizeX: int, imageSizeY: int
) -> np.ndarray:
    """Rows ``Y..Y+Height`` and columns ``X..X+Width`` (negative sizes extend the other
    way), clipped to the frame.

    Returns
    -------
    numpy.ndarray of bool, shape ``(imageSizeY, imageSizeX)``
    """
    m = np.zeros((imageSizeY, imageSizeX), dtype=bool)
    x0, x1 = sorted((X, X + Width))
    y0, y1 = sorted((Y, Y + Height))
    m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return m


def polygon(
    centerX: float, centerY: float, imageSizeX: int, imageSizeY: int, vertices
) -> np.ndarray:
    """Pixels whose centre lies inside the polygon ``vertices`` (``(y, x)`` pairs relative
    to ``(centerY, centerX)``; even-odd rule).

    Returns
    -------
    numpy.ndarray of bool, shape ``(imageSizeY, imageSizeX)``
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3:
        raise ValueError("a polygon needs at least 3 (y, x) vertices")
    py = v[:, 0] + centerY
    px = v[:, 1] + centerX
    y, x = np.mgrid[0:imageSizeY, 0:imageSizeX]
    inside = np.zeros((imageSizeY, imageSizeX), dtype=bool)
    n = len(v)
    for i in range(n):
        j = (i - 1) % n
        yi, xi, yj, xj = py[i], px[i], py[j], px[j]
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < xcross)
    return inside
