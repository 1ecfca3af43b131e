"""Side-by-side image of phantom patches and real stain patches (the colour-tuning check in the README)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .layout import Layout
from .render import render_region

# stain -> (file code in shared/data/kidney-stains, caption); MASSON has no counterpart there: Sirius Red is the
# closest collagen stain
REAL_PATCHES = {
    "PAS": ("02", "PAS"),
    "HE": ("01", "H&E (01)"),
    "MASSON": ("32", "Sirius Red (no Masson in set)"),
    "PASM": ("03", "Jones silver"),
    "CD68": ("16", "CD68"),
    "CD34": ("39", "CD34"),
}


def comparison_grid(layout: Layout, real_dir: str | os.PathLike[str], *, stains: tuple[str, ...] = tuple(REAL_PATCHES),
                    patch: int = 400, glomerulus: int = 0) -> np.ndarray:
    """Rows of ``[phantom | real]`` patches at the same scale (phantom at ``layout.mpp``; the real patches are
    about 0.5 um/px judging by their ~8 um nuclei), centred near glomerulus ``glomerulus``."""
    g = layout.glomeruli[glomerulus]
    x, y = int(g.cx - patch * 0.35), int(g.cy - patch * 0.35)
    rows = []
    for stain in stains:
        code, caption = REAL_PATCHES[stain]
        real = np.asarray(Image.open(Path(real_dir) / f"orig_patch_stain_{code}.png").convert("RGB"))
        cy, cx = (real.shape[0] - patch) // 2, (real.shape[1] - patch) // 2
        pair = np.full((patch + 24, 2 * patch + 8, 3), 255, np.uint8)
        pair[24:, :patch] = render_region(layout, stain, x, y, patch, patch)
        pair[24:, patch + 8:] = real[cy:cy + patch, cx:cx + patch]
        img = Image.fromarray(pair)
        draw = ImageDraw.Draw(img)
        draw.text((4, 6), f"phantom {stain}", fill=(0, 0, 0))
        draw.text((patch + 12, 6), f"real {caption} ({code})", fill=(0, 0, 0))
        rows.append(np.asarray(img))
    half = -(-len(rows) // 2)
    left, right = rows[:half], rows[half:]
    while len(right) < len(left):
        right.append(np.full_like(rows[0], 255))
    gap = np.full((rows[0].shape[0], 16, 3), 255, np.uint8)
    return np.concatenate([np.concatenate([a, gap, b], axis=1) for a, b in zip(left, right)], axis=0)


def main() -> None:
    """Regenerate ``docs/images/phantom-vs-real.jpg`` (``python -m wsi_pipeline.synth.compare [OUT] [REAL_DIR]``)."""
    import sys

    from .layout import make_layout

    root = Path(__file__).resolve().parents[2]
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "images" / "phantom-vs-real.jpg"
    real = Path(sys.argv[2]) if len(sys.argv) > 2 else root.parent / "shared" / "data" / "kidney-stains"
    img = Image.fromarray(comparison_grid(make_layout(4096, seed=3), real))
    img.thumbnail((1400, 1400))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, quality=85)
    print(out)


if __name__ == "__main__":
    main()

__all__ = ["REAL_PATCHES", "comparison_grid", "main"]
