"""Which stain is this slide? A rule on the optical-density colours of its tissue pixels.

Each tissue pixel (OD magnitude > 0.25) is assigned to the nearest of six absorbance directions (hematoxylin, pink =
eosin / PAS magenta, DAB brown, neutral grey-black, picric yellow, aniline blue); the shares of each, plus the share
of *dark neutral* pixels (OD > 1.2 in a grey direction: silver deposits), decide:

==============  ===========================================================================================
``SILVER``      dark neutral >= 0.12 and DAB < 0.2 (Jones / PASM: black basement membranes)
``SIRIUS_RED``  DAB + yellow >= 0.5, hematoxylin < 0.05, neutral < 0.2 (picro-Sirius: yellow tissue, red collagen)
``IHC_DAB``     DAB >= 0.06 and hematoxylin + neutral >= 0.3 (pale hematoxylin counterstain, brown marker)
``TRICHROME``   aniline blue >= 0.1 (Masson: blue collagen)
``HE``          pink / (pink + hematoxylin) >= 0.75
``PAS``         the rest of the hematoxylin + pink/magenta slides
==============  ===========================================================================================

The thresholds were set on the eleven real ``kidney-stains`` patches, the AIDPATH PAS tiles and the phantom's six
stains (``tests/test_stain_recognise.py`` lists every one). PAS and H&E share their colours (the PAS of one lab is
bluish, another's magenta, H&E pink), so that pair is told apart by the pink share alone and is the least certain
call: ``margin`` says how far the deciding share was from its threshold.

>>> guess = recognise_stain(np.full((64, 64, 3), 255, np.uint8))
>>> guess.stain, guess.reason
('UNKNOWN', 'too few tissue pixels (0 < 500)')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dyes import unit
from .od import check_rgb, rgb_to_od

STAINS = ("PAS", "HE", "SILVER", "SIRIUS_RED", "TRICHROME", "IHC_DAB", "UNKNOWN")
#: share name -> dye of :mod:`.dyes` whose absorbance direction defines it
_DIRECTIONS = {"hematoxylin": "hematoxylin", "pink": "pink", "dab": "dab", "neutral": "silver", "yellow": "picric",
               "blue": "aniline_blue"}
_UNIT = np.array([unit(d) for d in _DIRECTIONS.values()])
MIN_PIXELS = 500


@dataclass(frozen=True)
class StainGuess:
    """The recognised stain, the colour shares it was decided on, and how clear the call was."""

    stain: str
    margin: float  # distance of the deciding share from its threshold (0 = on the edge)
    reason: str
    shares: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"stain": self.stain, "margin": round(self.margin, 3), "reason": self.reason,
                "shares": {k: round(v, 3) for k, v in self.shares.items()}}


def colour_shares(image: np.ndarray, *, mask: np.ndarray | None = None) -> tuple[dict[str, float], int]:
    """Share of tissue pixels nearest to each absorbance direction, plus ``dark_neutral``; and the pixel count."""
    od = rgb_to_od(check_rgb(image)).reshape(-1, 3)
    if mask is not None:
        od = od[np.asarray(mask, bool).reshape(-1)]
    mag = np.linalg.norm(od, axis=1)
    keep = mag > 0.25
    od, mag = od[keep], mag[keep]
    if len(od) == 0:
        return {k: 0.0 for k in [*_DIRECTIONS, "dark_neutral"]}, 0
    cos = (od / mag[:, None]) @ _UNIT.T
    near = np.bincount(np.argmax(cos, axis=1), minlength=len(_UNIT)) / len(od)
    shares = {k: float(v) for k, v in zip(_DIRECTIONS, near)}
    shares["dark_neutral"] = float(((mag > 1.2) & (cos[:, 3] > 0.98)).mean())
    return shares, len(od)


def recognise_stain(image: np.ndarray, *, mask: np.ndarray | None = None) -> StainGuess:
    """The stain of an RGB uint8 image (a slide thumbnail; ``mask`` = its tissue pixels), by the rule above."""
    s, n = colour_shares(image, mask=mask)
    if n < MIN_PIXELS:
        return StainGuess("UNKNOWN", 0.0, f"too few tissue pixels ({n} < {MIN_PIXELS})", s)
    if s["dark_neutral"] >= 0.12 and s["dab"] < 0.2:
        return StainGuess("SILVER", s["dark_neutral"] - 0.12, "dark neutral (silver) deposits", s)
    if s["dab"] + s["yellow"] >= 0.5 and s["hematoxylin"] < 0.05 and s["neutral"] < 0.2:
        return StainGuess("SIRIUS_RED", s["dab"] + s["yellow"] - 0.5, "yellow tissue without hematoxylin", s)
    if s["dab"] >= 0.06 and s["hematoxylin"] + s["neutral"] >= 0.3:
        return StainGuess("IHC_DAB", s["dab"] - 0.06, "brown (DAB) on a pale hematoxylin counterstain", s)
    if s["blue"] >= 0.1:
        return StainGuess("TRICHROME", s["blue"] - 0.1, "aniline-blue collagen", s)
    pink = s["pink"] / max(s["pink"] + s["hematoxylin"], 1e-9)
    if pink >= 0.75:
        return StainGuess("HE", pink - 0.75, "pink-dominated hematoxylin + eosin colours", s)
    return StainGuess("PAS", 0.75 - pink, "hematoxylin + magenta colours (PAS and H&E overlap)", s)


__all__ = ["MIN_PIXELS", "STAINS", "StainGuess", "colour_shares", "recognise_stain"]
