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


def plot_cross_attention(
    weights: list, source_pieces: list[str], output_pieces: list[str], path: Path, title: str
) -> None:
    """Plot encoder-decoder attention as heatmaps, one per decoder layer, averaged over heads.

    ``weights`` contains one (heads, output length, source length) array per layer. Rows are output tokens
    (the token predicted at that step) and columns are source tokens.
    """
    layers = len(weights)
    width = max(4.0, 0.35 * len(source_pieces) + 2)
    height = max(3.0, 0.3 * len(output_pieces) + 1.5)
    fig, axes = plt.subplots(1, layers, figsize=(width * layers, height), squeeze=False)
    for index, (ax, layer_weights) in enumerate(zip(axes[0], weights)):
        image = ax.imshow(layer_weights.mean(axis=0), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(source_pieces)), source_pieces, rotation=90, fontsize=8)
        ax.set_yticks(range(len(output_pieces)), output_pieces, fontsize=8)
        ax.set_title(f"decoder layer {index}")
        ax.set_xlabel("source token")
        if index == 0:
            ax.set_ylabel("output token")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
