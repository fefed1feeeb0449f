"""layers.png: the per-layer statistics of ``--layer-stats`` over the steps, one line per layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import write_atomically

HEALTHY_UPDATE_RATIO = 1e-3  # Karpathy's rule of thumb for ‖Δθ‖/‖θ‖ per step


def plot_layer_stats(stats: dict, path) -> Path:
    """Four panels over the training steps: activation mean, activation std, gradient norm and
    update-to-weight ratio (the last two log-scaled, for layers with parameters), one line per layer.

    ``stats`` is ``LayerStats.as_dict()`` (metrics.json's ``layer_stats``). Colours come from
    matplotlib's tab10/tab20 palettes, which stay apart on screen and in print; past ten layers
    the line style changes too, so every layer has its own look and its legend entry.
    """
    steps = np.array(stats["steps"], dtype=float)
    layers = stats["layers"]
    figure = Figure(figsize=(12, 7.5))
    figure.subplots_adjust(left=0.07, right=0.76, bottom=0.08, top=0.92, wspace=0.25, hspace=0.35)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    panels = [(axes[0, 0], "activation_mean", "Activation mean", False),
              (axes[0, 1], "activation_std", "Activation std", False),
              (axes[1, 0], "grad_norm", "Gradient norm ‖∂L/∂θ‖", True),
              (axes[1, 1], "update_ratio", "Update / weight ‖Δθ‖/‖θ‖", True)]
    palette = _palette(len(layers))
    for ax, key, title, logarithmic in panels:
        for layer, (colour, style) in zip(layers, palette):
            values = layer.get(key)
            if values is None:
                continue
            series = np.array([np.nan if v is None else v for v in values], dtype=float)
            if logarithmic:
                series[series <= 0] = np.nan  # no place on a log axis
            ax.plot(steps, series, style, color=colour, label=layer["name"], linewidth=1.4)
        if logarithmic and ax.lines:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="training step")
        ax.grid(alpha=0.3)
    ratio_axes = axes[1, 1]
    ratio_axes.axhline(HEALTHY_UPDATE_RATIO, color="0.3", linestyle=":", linewidth=1)
    ratio_axes.annotate("~1e-3: healthy", (0.01, HEALTHY_UPDATE_RATIO), xycoords=("axes fraction", "data"),
                        fontsize=8, color="0.3", va="bottom")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(0.775, 0.5), fontsize=8, title="layer",
                  frameon=False)
    figure.suptitle(f"Inside training: per-layer statistics every {stats['every']} steps")
    write_atomically(Path(path), lambda stream: figure.savefig(stream, format="png", dpi=100))
    return Path(path)


def _palette(count: int) -> list[tuple[object, str]]:
    """(colour, line style) for ``count`` lines: tab10 first, then tab20's lighter shades, dashed."""
    from matplotlib import colormaps

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    looks = [(tab10(i), "-") for i in range(10)]
    looks += [(tab20(2 * i + 1), "--") for i in range(10)]
    looks += [(tab10(i), ":") for i in range(10)]
    return [looks[i % len(looks)] for i in range(count)]
