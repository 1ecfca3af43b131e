"""Counter-based randomness: every value is a pure function of (seed, key, integer coordinates).

This is what lets any region of a phantom be rendered on its own and still match a whole-slide render.
"""

from __future__ import annotations

import numpy as np

_M1, _M2, _M3 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35), np.uint32(0x9E3779B1)


def _u32(a: np.ndarray | int) -> np.ndarray:
    return (np.asarray(a, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)


def hash32(*keys: np.ndarray | int) -> np.ndarray:
    """Avalanche hash (murmur3 finaliser chain) of integer arrays, broadcast together, as uint32.

    Each round works at the broadcast shape of the keys hashed so far, so scalar leading keys cost one scalar
    round and ``(1, w)`` / ``(h, 1)`` coordinates one row / column round before the full-size ones.
    """
    h: np.ndarray = np.zeros((), np.uint32)
    with np.errstate(over="ignore"):
        for k in keys:
            h = h ^ (_u32(k) * _M3)
            h = h ^ (h >> np.uint32(16))
            h = h * _M1
            h = h ^ (h >> np.uint32(13))
            h = h * _M2
            h = h ^ (h >> np.uint32(16))
    return np.asarray(h, np.uint32)


def uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform float32 in [0, 1) from the hash of ``keys``."""
    return (hash32(*keys) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def lattice(key: tuple[int, ...] | int, i: np.ndarray, j: np.ndarray, *, margin: tuple[int, int] = (1, 1)
            ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Uniform values on the integer lattice cells covering ``i`` (rows) and ``j`` (cols), plus ``margin`` cells.

    Returns ``(table_a, table_b, i0, j0)``: two independent uniforms per cell, and the table origin. Hashing the
    small table and gathering per point is much cheaper than hashing every point.
    """
    keys = key if isinstance(key, tuple) else (key,)
    ti, tj = _cells(i, j, margin)
    return uniform(*keys, ti, tj, 0), uniform(*keys, ti, tj, 1), int(ti[0, 0]), int(tj[0, 0])


def _cells(i: np.ndarray, j: np.ndarray, margin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row ``(n, 1)`` and column ``(1, m)`` indices of the lattice cells covering ``i, j`` plus ``margin``."""
    ti = np.arange(int(i.min()) - margin[0], int(i.max()) + margin[0] + 1)[:, None]
    tj = np.arange(int(j.min()) - margin[1], int(j.max()) + margin[1] + 1)[None, :]
    return ti, tj


def _lattice_values(key: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The first table of :func:`lattice` (all value noise needs) without hashing the second."""
    ti, tj = _cells(i, j, (1, 1))
    return uniform(key, ti, tj, 0), int(ti[0, 0]), int(tj[0, 0])


def value_noise(x: np.ndarray, y: np.ndarray, *, scale: float, key: int) -> np.ndarray:
    """Smooth value noise in [0, 1) with feature size ``scale`` (level-0 pixels), evaluated at points ``(x, y)``."""
    xs, ys = _grid_axes(x, y)
    if xs is not None and ys is not None:
        return _value_noise_grid(xs, ys, scale=scale, key=key)
    fx, fy = x / np.float32(scale), y / np.float32(scale)
    ix, iy = np.floor(fx), np.floor(fy)
    tx, ty = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    if ix.size and 4 * ix.size < (int(iy.max()) - int(iy.min()) + 3) * (int(ix.max()) - int(ix.min()) + 3):
        # few points spread wide (e.g. only the pixels a sparse feature covers): hash their corners directly
        v00, v10 = uniform(key, iy, ix, 0), uniform(key, iy, ix + 1, 0)
        v01, v11 = uniform(key, iy + 1, ix, 0), uniform(key, iy + 1, ix + 1, 0)
    else:
        tab, i0, j0 = _lattice_values(key, iy, ix)
        a, b = iy - i0, ix - j0
        v00, v10, v01, v11 = tab[a, b], tab[a, b + 1], tab[a + 1, b], tab[a + 1, b + 1]
    return (v00 * (1 - tx) + v10 * tx) * (1 - ty) + (v01 * (1 - tx) + v11 * tx) * ty


def _grid_axes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(1, w)`` and ``(h, 1)`` axes when the points are a grid (``x`` varies along columns only, ``y`` along
    rows only, as the broadcast views :func:`numpy.broadcast_arrays` makes of them); else ``(None, None)``."""
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        if x.ndim == 2 and y.ndim == 2 and x.shape[0] == 1 and y.shape[1] == 1:
            return x, y
        return None, None
    if (x.strides[0] == 0 or x.shape[0] == 1) and (y.strides[1] == 0 or y.shape[1] == 1):
        return x[:1], y[:, :1]
    return None, None


def _value_noise_grid(x: np.ndarray, y: np.ndarray, *, scale: float, key: int) -> np.ndarray:
    """:func:`value_noise` on the grid ``x (1, w) x y (h, 1)``: interpolate along x once per lattice row, then
    along y. The same float32 operations in the same order as the pointwise path, so the same bits, for a
    fraction of the full-size work."""
    fx, fy = x / np.float32(scale), y / np.float32(scale)
    ix, iy = np.floor(fx), np.floor(fy)
    tx, ty = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    tab, i0, j0 = _lattice_values(key, iy, ix)
    b = (ix - j0)[0]
    rows = tab[:, b] * (1 - tx) + tab[:, b + 1] * tx  # (lattice rows, w): the x-interpolation of every row
    a = (iy - i0)[:, 0]
    return rows[a] * (1 - ty) + rows[a + 1] * ty


def fbm(x: np.ndarray, y: np.ndarray, *, scale: float, key: int, octaves: int = 2) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers (halving scale, halving weight), normalised to [0, 1)."""
    total = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    weight, norm = 1.0, 0.0
    for o in range(octaves):
        total += np.float32(weight) * value_noise(x, y, scale=scale / 2**o, key=key + 7919 * o)
        norm += weight
        weight *= 0.5
    return total / np.float32(norm)


def smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (``e0 > e1`` gives a falling step)."""
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0).astype(np.float32)
    return t * t * (3 - 2 * t)


def gaussian_noise(x: np.ndarray, y: np.ndarray, *, key: int) -> np.ndarray:
    """Per-pixel zero-mean, unit-variance noise at integer pixels ``(x, y)``, 3 channels.

    Triangular (sum of two uniforms): two hashes per pixel, each split into three 10-bit uniforms.
    """
    total = np.zeros((*np.broadcast_shapes(x.shape, y.shape), 3), np.float32)
    for k in range(2):
        h = hash32(key + k, x, y)
        for c in range(3):
            total[..., c] += ((h >> np.uint32(10 * c)) & np.uint32(1023)).astype(np.float32)
    return (total * np.float32(1 / 1024.0) - np.float32(1.0)) * np.float32(np.sqrt(6.0))


__all__ = ["lattice", "fbm", "gaussian_noise", "hash32", "smoothstep", "uniform", "value_noise"]
