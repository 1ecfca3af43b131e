"""Tissue component fields: for any level-0 points, how much of each tissue component is there (0..1).

Pure and pointwise in the coordinates, so a tile computed alone equals the same tile of a whole render.
Tubules are an anisotropic Worley (cellular) pattern; glomeruli and arteries come from the layout and replace the
tubules they overlap; nuclei and macrophages are jittered-grid points validated by the field at their centre.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import noise
from .layout import Artery, Glomerulus, Layout
from .noise import fbm, lattice, uniform

# noise.smoothstep is elementwise numpy, so its edges may be arrays too (here: per-pixel radii and widths); its
# hints say float. The same function, typed for that use.
smoothstep = cast(Callable[[float | np.ndarray, float | np.ndarray, np.ndarray], np.ndarray], noise.smoothstep)

COMPONENTS = ("cyto", "brush", "bm", "nuc", "inter", "rbc", "mesangium", "scler", "muscle", "collagen", "macro",
              "endo", "tissue")
C = {name: i for i, name in enumerate(COMPONENTS)}

_K_TUB, _K_NUC, _K_MAC, _K_CAP, _K_GNUC = 11, 23, 31, 41, 53
_OFFSETS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


def _norm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``hypot(a, b)`` for the per-pixel paths: libm's hypot is many times slower, and no input here is near
    overflow."""
    return np.sqrt(a * a + b * b)


def _worley(u: np.ndarray, v: np.ndarray, cell: float, key: tuple[int, ...], *, stretch: float = 1.0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cellular pattern in the metric that shrinks u by ``stretch`` (cells elongated along u).

    Returns (distance to own site, distance to the cell border, both in the stretched metric; the border distance
    in real pixels, so bands along borders keep one width; cell row; cell column).
    """
    us = u / np.float32(stretch)
    ci, cj = np.floor(v / cell).astype(np.int64), np.floor(us / cell).astype(np.int64)
    ju, jv, i0, j0 = lattice(key, ci, cj)
    nrows, ncols = ju.shape
    # site tables, flattened: one take() per neighbour instead of a two-array fancy index
    su = ((np.arange(ncols)[None, :] + j0 + 0.5 + 0.75 * (ju - 0.5)) * cell).astype(np.float32)
    sv = ((np.arange(nrows)[:, None] + i0 + 0.5 + 0.75 * (jv - 0.5)) * cell).astype(np.float32)
    tpu, tpv = su.ravel(), sv.ravel()
    base = (ci - i0) * ncols + (cj - j0)
    steps = [di * ncols + dj for di, dj in _OFFSETS]
    best_d2 = np.full(u.shape, np.inf, np.float32)
    best_k = np.zeros(u.shape, np.uint8)
    d2s = []
    for k, step in enumerate(steps):
        idx = base + step
        d2, dv = tpu.take(idx), tpv.take(idx)
        d2 -= us
        d2 *= d2
        dv -= v
        dv *= dv
        d2 += dv
        d2s.append(d2)
        m = d2 < best_d2  # strict: the first of equal sites wins
        np.copyto(best_d2, d2, where=m)
        best_k[m] = k
    own = base + np.take(np.array(steps), best_k)
    # distance to the bisector with site n: (d2_n - d2_own) / (2 |site_n - site_own|), in the stretched metric,
    # and over the real-space length of the same normal (nu / stretch, nv) for real pixels. The reciprocal
    # lengths depend only on the pair of sites: tabulated per own cell and relative offset (-2..2 cells).
    inv, inv_real = _pair_reciprocals(su, sv, stretch)
    ncell = su.size
    rel = np.array([[(dn - dk + 2) * 5 + (en - ek + 2) for dn, en in _OFFSETS] for dk, ek in _OFFSETS], np.int64)
    edge = np.full(u.shape, np.inf, np.float32)
    edge_real = np.full(u.shape, np.inf, np.float32)
    with np.errstate(invalid="ignore"):
        for n, d2 in enumerate(d2s):
            pair = rel[:, n].take(best_k) * ncell + own
            d2 -= best_d2  # the own site: 0 * inf = NaN, which fmin skips
            np.fmin(edge, d2 * inv.take(pair), out=edge)
            np.fmin(edge_real, d2 * inv_real.take(pair), out=edge_real)
    offs_i = np.array([di for di, _ in _OFFSETS], np.int64)
    offs_j = np.array([dj for _, dj in _OFFSETS], np.int64)
    return np.sqrt(best_d2), edge, edge_real, ci + offs_i.take(best_k), cj + offs_j.take(best_k)


def _pair_reciprocals(su: np.ndarray, sv: np.ndarray, stretch: float) -> tuple[np.ndarray, np.ndarray]:
    """``1 / (2 |s_other - s_own|)`` in the stretched and in the real metric for every site of the ``(rows, cols)``
    tables and every other site -2..2 cells away, flat as ``[relative offset * cells + own cell]`` (pairs that
    leave the table: NaN, never read; the own site: inf)."""
    # every site's 5 x 5 neighbourhood as a view of the NaN-padded tables: (rows, cols, 5, 5)
    wu = sliding_window_view(np.pad(su, 2, constant_values=np.nan), (5, 5))
    wv = sliding_window_view(np.pad(sv, 2, constant_values=np.nan), (5, 5))
    nu, nv = wu - su[:, :, None, None], wv - sv[:, :, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.float32(0.5) / _norm(nu, nv)
        inv_real = np.float32(0.5) / _norm(nu / np.float32(stretch), nv)
    inv, inv_real = (np.ascontiguousarray(a.transpose(2, 3, 0, 1)) for a in (inv, inv_real))
    return inv.ravel(), inv_real.ravel()


def _per_cell(i: np.ndarray, j: np.ndarray, value: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """``value(i, j)`` (a pure function of the cell) at each point's cell ``(i, j)``: evaluated once per cell of
    the points' bounding table, then gathered. Cells span many pixels, so this is far cheaper than hashing every
    point, and gives the same values."""
    i0, j0 = int(i.min()), int(j.min())
    ti = np.arange(i0, int(i.max()) + 1)[:, None]
    tj = np.arange(j0, int(j.max()) + 1)[None, :]
    table = np.broadcast_to(value(ti, tj), (ti.shape[0], tj.shape[1])).ravel()
    return table.take((i - i0) * tj.shape[1] + (j - j0))


def tubule_field(layout: Layout, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Tubule geometry at points: border distance ``e`` (px), normalised radius ``rn`` (0 centre, 1 border),
    interstitium width, lumen fraction and proximal flag of the owning tubule."""
    ca, sa = np.float32(np.cos(layout.tubule_angle)), np.float32(np.sin(layout.tubule_angle))
    u = x * ca + y * sa
    v = -x * sa + y * ca
    d1, es, e, ti, tj = _worley(u, v, layout.um(36), (layout.seed, _K_TUB), stretch=2.4)
    rn = d1 / (d1 + es + 1e-6)
    fib = fbm(x, y, scale=layout.um(400), key=layout.seed * 31 + 5, octaves=1)
    wi = layout.um(1.5) * (1 + 6 * fib**4)
    lumen = 0.35 + 0.3 * _per_cell(ti, tj, lambda i, j: uniform(layout.seed, _K_TUB, i, j, 2))
    lumen = lumen + 0.12 * (fbm(x, y, scale=layout.um(6), key=layout.seed * 31 + 9, octaves=1) - 0.5)
    proximal = _per_cell(ti, tj, lambda i, j: uniform(layout.seed, _K_TUB, i, j, 3)) < 0.7
    return {"e": e, "rn": rn, "wi": wi, "lumen": lumen, "proximal": proximal}


def _tubule_components(layout: Layout, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    t = tubule_field(layout, x, y)
    e, rn, wi, lumen = t["e"], t["rn"], t["wi"], t["lumen"]
    bm_w = layout.um(1.0)
    inter = smoothstep(wi + 1, wi - 1, e)
    bm = smoothstep(wi - 1, wi, e) * smoothstep(wi + bm_w + 1, wi + bm_w, e)
    epi = smoothstep(wi + bm_w, wi + bm_w + 1, e) * smoothstep(lumen - 0.02, lumen + 0.02, rn)
    lum = 1 - smoothstep(lumen - 0.02, lumen + 0.02, rn)
    tex = fbm(x, y, scale=layout.um(3), key=layout.seed * 31 + 13)
    brush = t["proximal"] * smoothstep(lumen - 0.02, lumen + 0.02, rn) * smoothstep(lumen + 0.1, lumen + 0.06, rn)
    out[C["inter"]] += inter
    out[C["endo"]] += inter * smoothstep(0.35, 0.6, fbm(x, y, scale=layout.um(15), key=layout.seed * 31 + 21, octaves=1))
    out[C["bm"]] += bm
    out[C["cyto"]] += epi * (0.75 + 0.5 * tex) + lum * 0.15 * (tex > 0.55)
    out[C["brush"]] += brush * (0.6 + 0.6 * tex)


def _cell_table(y: np.ndarray, x: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cell indices of every point, and the (rows, cols) grids of all cells within one cell of the points."""
    ci, cj = np.floor(y / cell).astype(np.int64), np.floor(x / cell).astype(np.int64)
    ti = np.arange(ci.min() - 1, ci.max() + 2)[:, None]
    tj = np.arange(cj.min() - 1, cj.max() + 2)[None, :]
    return ci, cj, ti + 0 * tj, tj + 0 * ti


def _nuclei(layout: Layout, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """Tubular epithelial and interstitial nuclei: jittered grid, kept where the tubule field says so.

    Validity and shape are decided once per grid cell (a pure function of the cell), then gathered per pixel.
    """
    cell = layout.um(8.5)
    ci, cj, ti, tj = _cell_table(y, x, cell)
    key = (layout.seed, _K_NUC, ti, tj)
    px = (tj + 0.5 + 0.8 * (uniform(*key, 0) - 0.5)) * cell
    py = (ti + 0.5 + 0.8 * (uniform(*key, 1) - 0.5)) * cell
    t = tubule_field(layout, px, py)
    epi = ((t["e"] > t["wi"] + layout.um(3.0)) & (t["e"] < t["wi"] + layout.um(8.0)) & (t["rn"] > t["lumen"] + 0.1)
           & (uniform(*key, 2) < 0.95))  # a basal row of nuclei
    inter = (t["e"] < t["wi"]) & (uniform(*key, 3) < 0.5)
    keep = (epi | inter) & ~_occupied(layout, px, py)
    ang = uniform(*key, 4) * np.float32(np.pi)
    r = np.where(epi, layout.um(3.3) * (0.85 + 0.3 * uniform(*key, 5)), layout.um(1.9))
    rx, ry = r * np.where(epi, 1.15, 2.2), r  # long axis <= 4.4 um = 0.52 cell
    # per-cell tables, flat and float32, gathered with one take() each
    f32 = lambda a: np.asarray(a, np.float32).ravel()  # noqa: E731
    tx, ty, tcos, tsin = f32(px), f32(py), f32(np.cos(ang)), f32(np.sin(ang))
    tirx, tiry, tkeep = f32(1 / rx), f32(1 / np.broadcast_to(ry, rx.shape)), f32(keep)
    ncols = ti.shape[1]
    base = (ci - ti[0, 0]) * ncols + (cj - tj[0, 0])
    dens = np.zeros(x.shape, np.float32)
    # nuclei reach at most 0.52 cell from a centre jittered within [0.1, 0.9]: the 2x2 cells of the pixel's
    # quadrant hold every nucleus that can cover it
    si = np.where(y / cell - ci < 0.5, -ncols, ncols)
    sj = np.where(x / cell - cj < 0.5, -1, 1)
    for idx in (base, base + si, base + sj, base + si + sj):
        dx, dy = x - tx.take(idx), y - ty.take(idx)
        c, s = tcos.take(idx), tsin.take(idx)
        u = (dx * c + dy * s) * tirx.take(idx)
        v = (dy * c - dx * s) * tiry.take(idx)
        dens = np.maximum(dens, tkeep.take(idx) * smoothstep(1.0, 0.8, np.sqrt(u * u + v * v)))
    _add_textured(out[C["nuc"]], dens, x, y, 0.65, 0.5, scale=layout.um(1.2), key=layout.seed * 31 + 17)
    out[C["cyto"]] *= 1 - dens


def _add_textured(plane: np.ndarray, dens: np.ndarray, x: np.ndarray, y: np.ndarray, base: float, gain: float, *,
                  scale: float, key: int) -> None:
    """``plane += dens * (base + gain * fbm(x, y))``, with the fine texture evaluated only where ``dens > 0``
    (sparse cells: most pixels would add zero)."""
    where = dens > 0
    if not where.any():
        return
    if gain == 1.0:  # the same float operations as ``base + fbm`` written out
        plane[where] += dens[where] * (base + fbm(x[where], y[where], scale=scale, key=key))
    else:
        plane[where] += dens[where] * (base + gain * fbm(x[where], y[where], scale=scale, key=key))


def _macrophages(layout: Layout, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    cell = layout.um(30)
    ci, cj, ti, tj = _cell_table(y, x, cell)
    key = (layout.seed, _K_MAC, ti, tj)
    # centres jittered within [0.25, 0.75] of a 30 um cell and radius <= 6.6 um: a macrophage stays in its cell
    px = (tj + 0.5 + 0.5 * (uniform(*key, 0) - 0.5)) * cell
    py = (ti + 0.5 + 0.5 * (uniform(*key, 1) - 0.5)) * cell
    t = tubule_field(layout, px, py)
    keep = (((t["e"] < 2 * t["wi"]) | _near_glomerulus(layout, px, py)) & (uniform(*key, 2) < 0.35)
            & ~_occupied(layout, px, py))
    r = layout.um(5.5) * (0.8 + 0.4 * uniform(*key, 3))
    idx = (ci - ti[0, 0]) * ti.shape[1] + (cj - tj[0, 0])
    tx, ty = np.asarray(px, np.float32).ravel(), np.asarray(py, np.float32).ravel()
    tir, tkeep = np.asarray(1 / r, np.float32).ravel(), np.asarray(keep, np.float32).ravel()
    dens = tkeep.take(idx) * smoothstep(1.0, 0.75, _norm(x - tx.take(idx), y - ty.take(idx)) * tir.take(idx))
    _add_textured(out[C["macro"]], dens, x, y, 0.4, 1.0, scale=layout.um(1.0), key=layout.seed * 31 + 19)


def _occupied(layout: Layout, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    occ = np.zeros(np.shape(px), bool)
    for g in layout.glomeruli:
        occ |= np.hypot(px - g.cx, py - g.cy) < g.radius * 1.12
    for a in layout.arteries:
        occ |= np.hypot(px - a.cx, py - a.cy) < a.radius * 1.1
    return occ


def _near_glomerulus(layout: Layout, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    near = np.zeros(np.shape(px), bool)
    for g in layout.glomeruli:
        d = np.hypot(px - g.cx, py - g.cy)
        near |= (d > g.radius * 1.1) & (d < g.radius * 1.6)
    return near


def _glomerulus(layout: Layout, g: Glomerulus, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    dx, dy = x - g.cx, y - g.cy
    rr, th = _norm(dx, dy), np.arctan2(dy, dx)
    rbc_ = g.capsule_radius(th)
    rim = layout.um(4)
    cover = smoothstep(rbc_ + rim + 1, rbc_ + rim - 1, rr)
    if not cover.any():
        return
    out[:-1] *= 1 - cover  # the glomerulus replaces the tubules it overlaps (keeps the tissue channel)
    bm_w = layout.um(4.0 if g.cls == "gs" else 1.5)
    rt = g.tuft_radius(th)
    capsule = smoothstep(rbc_ - bm_w - 1, rbc_ - bm_w, rr) * smoothstep(rbc_ + 1, rbc_, rr)
    outside = smoothstep(rbc_, rbc_ + 1, rr) * cover
    out[C["inter"]] += outside
    out[C["endo"]] += outside * 0.2
    out[C["bm"]] += capsule
    parietal = smoothstep(rbc_ - bm_w - layout.um(2.5), rbc_ - bm_w - layout.um(1.5), rr) * (1 - capsule) * (
        rr < rbc_)
    out[C["cyto"]] += parietal * 0.5
    if g.cls == "gs":  # periglomerular fibrosis and a collagen-filled Bowman's space
        out[C["collagen"]] += outside * 0.8 + capsule * 0.6
        space = smoothstep(rt, rt + 2, rr) * smoothstep(rbc_ - bm_w, rbc_ - bm_w - 2, rr)
        out[C["collagen"]] += space * 0.55 * fbm(x, y, scale=layout.um(8), key=g.label + 997)
    tuft = smoothstep(rt + 1, rt - 1, rr)
    if g.cls == "gs":
        s = np.ones_like(rr)
    elif g.cls == "ss":
        dth = np.abs((th - g.sector + np.pi) % (2 * np.pi) - np.pi)
        s = smoothstep(g.sector_width, g.sector_width * 0.7, dth) * smoothstep(0.2, 0.4, rr / rt)
    else:
        s = np.zeros_like(rr)
    d1, e, _, ci, cj = _worley(dx, dy, layout.um(9), (layout.seed, _K_CAP, g.label))
    rn = d1 / (d1 + e + 1e-6)
    lumen = 1 - smoothstep(0.52, 0.6, rn)
    wall = smoothstep(0.52, 0.6, rn) * smoothstep(0.76, 0.68, rn)
    mes = smoothstep(0.68, 0.76, rn)
    has_rbc = _per_cell(ci, cj, lambda i, j: uniform(layout.seed, _K_CAP, g.label, i, j, 7)) < 0.35
    live = tuft * (1 - s)
    tex = fbm(x, y, scale=layout.um(2.5), key=g.label * 13 + 5)
    out[C["rbc"]] += live * lumen * has_rbc
    out[C["bm"]] += live * wall
    out[C["endo"]] += live * (wall + 0.3 * lumen)
    out[C["mesangium"]] += live * mes * (0.6 + 0.6 * tex)
    out[C["scler"]] += tuft * s * (0.75 + 0.5 * tex)
    # glomerular nuclei (endothelial, mesangial, podocytes): dense jittered grid, sparse in sclerosis
    cell = layout.um(6.5)
    gi, gj, ti, tj = _cell_table(dy, dx, cell)
    key = (layout.seed, _K_GNUC, g.label, ti, tj)
    tab_x = ((tj + 0.5 + 0.8 * (uniform(*key, 0) - 0.5)) * cell).astype(np.float32).ravel()
    tab_y = ((ti + 0.5 + 0.8 * (uniform(*key, 1) - 0.5)) * cell).astype(np.float32).ravel()
    tab_keep = (uniform(*key, 2) < 0.4).astype(np.float32).ravel()
    ncols = ti.shape[1]
    base = (gi - ti[0, 0]) * ncols + (gj - tj[0, 0])
    dens = np.zeros(x.shape, np.float32)
    for di, dj in _OFFSETS:
        idx = base + (di * ncols + dj)
        d = _norm(dx - tab_x.take(idx), dy - tab_y.take(idx)) * np.float32(1 / layout.um(2.7))
        dens = np.maximum(dens, tab_keep.take(idx) * smoothstep(1.0, 0.75, d))
    out[C["nuc"]] += tuft * dens * (1 - 0.85 * s) * (0.7 + 0.4 * tex)


def _artery(layout: Layout, a: Artery, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    rr = _norm(x - a.cx, y - a.cy)
    wob = 1 + 0.04 * (fbm(x, y, scale=layout.um(20), key=int(a.cx) + 3) - 0.5)
    rr = rr / wob
    rim = layout.um(6)
    cover = smoothstep(a.radius + rim + 1, a.radius + rim - 1, rr)
    if not cover.any():
        return
    out[:-1] *= 1 - cover
    r_endo, r_iel, r_media = a.lumen + layout.um(1.5), a.lumen + layout.um(3.0), a.lumen + (a.radius - a.lumen) * 0.7
    band = lambda r0, r1: smoothstep(r0 - 1, r0, rr) * smoothstep(r1 + 1, r1, rr)  # noqa: E731
    lumen = smoothstep(a.lumen + 1, a.lumen - 1, rr)
    out[C["rbc"]] += lumen * (fbm(x, y, scale=layout.um(6), key=int(a.cy) + 7) > 0.6)
    out[C["endo"]] += band(a.lumen, r_endo)
    out[C["bm"]] += band(r_endo, r_iel) * 1.3
    media = band(r_iel, r_media)
    stripes = 0.5 + 0.5 * np.sin(rr / layout.um(1.6) + 3 * fbm(x, y, scale=layout.um(12), key=int(a.cx) + 9))
    out[C["muscle"]] += media
    out[C["nuc"]] += media * smoothstep(0.85, 0.97, stripes) * (fbm(x, y, scale=layout.um(5), key=11) > 0.45)
    out[C["collagen"]] += band(r_media, a.radius)
    out[C["inter"]] += band(a.radius, a.radius + rim)


def components(layout: Layout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Component amounts ``(len(COMPONENTS), *x.shape)`` float32 at level-0 points ``(x, y)``."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(y, np.float32))
    out = np.zeros((len(COMPONENTS), *x.shape), np.float32)
    edge = layout.um(25) * (fbm(x, y, scale=layout.um(120), key=layout.seed * 31 + 3, octaves=1) - 0.5)
    inside = smoothstep(layout.um(3), -layout.um(3), layout.core_distance(x, y) + edge)
    if not inside.any():
        return out
    _tubule_components(layout, x, y, out)
    _nuclei(layout, x, y, out)
    _macrophages(layout, x, y, out)
    x0, x1, y0, y1 = float(x.min()), float(x.max()), float(y.min()), float(y.max())
    for g in layout.glomeruli:
        reach = g.radius * 1.3
        if g.cx + reach >= x0 and g.cx - reach <= x1 and g.cy + reach >= y0 and g.cy - reach <= y1:
            _glomerulus(layout, g, x, y, out)
    for a in layout.arteries:
        reach = a.radius * 1.3
        if a.cx + reach >= x0 and a.cx - reach <= x1 and a.cy + reach >= y0 and a.cy - reach <= y1:
            _artery(layout, a, x, y, out)
    out[C["tissue"]] = 1.0
    out *= inside
    return out


def tissue_possible(layout: Layout, x0: float, y0: float, x1: float, y1: float) -> bool:
    """Cheap conservative test: may the box ``[x0, x1) x [y0, y1)`` touch tissue?"""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_diag = float(np.hypot(x1 - x0, y1 - y0)) / 2
    d = float(layout.core_distance(np.array(cx), np.array(cy)))
    return d - half_diag < layout.core_radius * 0.15 + layout.um(20)


__all__ = ["COMPONENTS", "components", "tissue_possible", "tubule_field"]
