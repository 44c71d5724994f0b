"""The paper's Figure 2: unit importance per layer as a heatmap, layer importance beside it."""

from __future__ import annotations

from pathlib import Path

from megatron_adept.models.units import UNIT_NAMES


def plot_importance(
    unit_scores: list[dict[str, float]],
    layer_scores: list[float],
    selected: list[int],
    path: str | Path,
    title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = [u for u in UNIT_NAMES if any(u in row for row in unit_scores)]
    grid = np.array([[row.get(u, np.nan) for u in units] for row in unit_scores])
    column_max = np.nanmax(grid, axis=0)
    grid = grid / np.where(column_max > 0, column_max, 1.0)
    layers = len(layer_scores)
    fig, (heat, bars) = plt.subplots(
        1, 2, figsize=(10, 0.3 * layers + 2), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    image = heat.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
    heat.set_xticks(range(len(units)), units, rotation=45, ha="right")
    heat.set_ylabel("layer")
    heat.set_title("unit importance (mean |θ·∂L/∂θ|, per unit max = 1)")
    fig.colorbar(image, ax=heat, fraction=0.04)
    colors = ["tab:red" if i in selected else "tab:blue" for i in range(layers)]
    bars.barh(range(layers), layer_scores, color=colors)
    bars.set_title("layer importance (red: expanded)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
