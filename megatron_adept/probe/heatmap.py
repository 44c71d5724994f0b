"""The paper's Figure 2: unit importance of every layer as a heatmap, layer scores beside it.

Each column (unit kind) is divided by its largest value, so the colours show which layers
matter most for each kind of unit even though norms and projections differ by orders of
magnitude; the bars are the layer scores of the probe method, selected layers highlighted.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_adept.checkpoint.atomic import temp_sibling
from megatron_adept.models.units import UNIT_NAMES
from megatron_adept.probe.scores import LayerScores


def plot_importance(scores: LayerScores, path: str | Path, title: str = "") -> None:
    """Write the figure as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = [u for u in UNIT_NAMES if any(u in row for row in scores.unit_scores)]
    grid = np.array([[row.get(u, np.nan) for u in units] for row in scores.unit_scores])
    column_max = np.nanmax(grid, axis=0)
    grid = grid / np.where(column_max > 0, column_max, 1.0)
    layers = np.arange(scores.num_layers)

    fig, (heat, bars) = plt.subplots(
        1,
        2,
        figsize=(11, 3.0 + 0.25 * scores.num_layers),
        sharey=True,
        gridspec_kw={"width_ratios": [3, 1]},
        layout="constrained",
    )
    image = heat.imshow(grid, aspect="auto", cmap="viridis", origin="lower", vmin=0, vmax=1)
    heat.set_xticks(range(len(units)), units, rotation=45, ha="right")
    heat.set_yticks(layers)
    heat.set_ylabel("layer (0-based)")
    heat.set_title("unit importance, mean |θ·∂L/∂θ| / column max")
    fig.colorbar(image, ax=heat, fraction=0.04)
    colors = ["tab:red" if i in scores.selected else "tab:gray" for i in layers]
    bars.barh(layers, scores.layer_scores, color=colors)
    bars.axvline(0, color="black", linewidth=0.5)
    bars.set_title(f"layer importance ({scores.method})\nred: {scores.k} selected")
    fig.suptitle(title)
    tmp = temp_sibling(Path(path))
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
