"""PNG plots for reports/ (rendered offline with matplotlib's Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WEIGHT_GROUPS = {
    "encoder self-attention": lambda name: name.startswith("encoder.") and ".self_attn." in name,
    "decoder masked self-attention": lambda name: name.startswith("decoder.") and ".self_attn." in name,
    "encoder-decoder attention": lambda name: ".cross_attn." in name,
    "feed-forward": lambda name: ".ffn." in name,
    "output layer": lambda name: name.startswith("output."),
}


def plot_grad_norms(history: list[tuple[int, dict[str, float]]], path: Path) -> None:
    """Plot, per weight group, the L2 norm of the group's gradients (root of the summed squares) over steps."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step, norms in history:
        for group, belongs in WEIGHT_GROUPS.items():
            squares = [value**2 for name, value in norms.items() if belongs(name)]
            if squares:
                series[group].append((step, sum(squares) ** 0.5))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for group, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, label=group)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_yscale("log")
    ax.set_title("Gradient norm per weight group")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
