"""Markdown tables for docs/reproduction-segmentation-real.md from the benchmark JSON (numbers are never typed).

    python scripts/seg_real_tables.py ABLATION_ROW=DIR ... > tables.md
    python scripts/seg_real_tables.py --stains RECIPE=DIR ... > table3.md

Each ``NAME=DIR`` is a ``scripts/eval-segmenter-real.sh`` output folder (``cv/``, ``phantom-model/``, ``phantom-*/``,
``kidney-stains/``); with ``--stains``, a ``scripts/eval-virtual-stains.sh`` output folder (one sub-folder per
virtual stain), and the table has one row per stain and a column group per recipe.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def stain_table(runs: dict[str, Path]) -> None:
    """Table 3: pooled CV scores of each recipe's fold models on each virtual stain folder they were scored on."""
    stains = sorted({p.parent.name for root in runs.values() for p in root.glob("*/results.json")},
                    key=lambda n: (n.replace("~colour", "").replace("@3", ""), n))
    print("| virtual stain | " + " | ".join(f"{n}: TP / FP / FN | F1 | Dice" for n in runs) + " |")
    print("|---|" + "---|---|---|" * len(runs))
    for stain in stains:
        cells = []
        for root in runs.values():
            res = _load(root / stain / "results.json")
            p = res["pooled"] if res else None
            cells.append("- | - | -" if p is None else
                         f"{p['tp']} / {p['fp']} / {p['fn']} | **{_f(p['f1'])}** | {_f(p['dice'])}")
        print(f"| {stain} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--stains"]:
        stain_table({name: Path(folder) for name, _, folder in (a.partition("=") for a in argv[1:])})
        return
    runs = {name: Path(folder) for name, _, folder in (a.partition("=") for a in argv)}
    print("| recipe | CV folds | glomeruli | precision | recall | **F1** | pixel Dice | per-fold F1 | phantom PAS F1 (held-out slides) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, root in runs.items():
        cv = _load(root / "cv" / "results.json")
        ph = _load(root / "phantom-PAS" / "results.json")
        if cv is None:
            continue
        p = cv["pooled"]
        folds = ", ".join(_f(v["f1"]) for v in cv.get("per_fold", {}).values()) or "(all 24 tiles held out)"
        print(f"| {name} | {len(cv.get('per_fold', {})) or '-'} | {p['truth']} | {_f(p['precision'])} | {_f(p['recall'])} | "
              f"**{_f(p['f1'])}** | {_f(p['dice'])} | {folds} | {_f(ph['pooled']['f1']) if ph else '-'} |")
    print()
    for name, root in runs.items():
        rows = []
        for stain in ("PAS", "HE", "MASSON", "PASM", "CD68", "CD34"):
            res = _load(root / f"phantom-{stain}" / "results.json")
            if res is not None:
                p = res["pooled"]
                rows.append(f"| {stain} | {len(res['seeds'])} | {p['tp'] + p['fn']} | {p['tp']} / {p['fp']} / {p['fn']} | "
                            f"**{_f(p['f1'])}** | {_f(p['dice_mean'])} |")
        if rows:
            print(f"Held-out phantom slides (4096 px, seeds 31-35 PAS, 31-32 others), {name}:\n")
            print("| phantom stain | slides | glomeruli | TP / FP / FN | F1 | area Dice |\n|---|---|---|---|---|---|")
            print("\n".join(rows) + "\n")
        ks = _load(root / "kidney-stains" / "results.json")
        if ks is not None:
            print(f"Unlabelled real stain patches (`kidney-stains`, 0.5 um/px assumed), {name}:\n")
            print("| patch | stain recognised | glomeruli found | areas (um^2) |\n|---|---|---|---|")
            for r in ks["images"]:
                print(f"| {r['name']} | {r['stain_recognised']} | {r['glomeruli']} | "
                      f"{', '.join(str(a) for a in r['areas_um2']) or '-'} |")
            print()


if __name__ == "__main__":
    main(sys.argv[1:])
