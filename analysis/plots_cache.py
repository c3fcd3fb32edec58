"""Plots for ``moesim cache`` (hit rate vs expert memory) and ``moesim placement`` (GPU load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.plots import save_figure


def plot_hit_rate(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Hit rate against the fraction of each layer's experts resident, one line per policy."""
    from analysis.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["policy"] for r in results):
        rs = sorted((r for r in results if r["policy"] == name), key=lambda r: r["capacity_frac"])
        style = dict(color="black", linestyle="--", linewidth=2) if name == "belady" else {}
        ax.plot([r["capacity_frac"] for r in rs], [r["hit_rate"] for r in rs], marker="o",
                label=name + (" (oracle)" if name == "belady" else ""), **style)
    ax.set_xlabel("experts resident per layer (fraction)")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_placement(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Max/mean GPU load (planning half, test half, test per batch), bars per placement policy."""
    import numpy as np

    from analysis.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["policy"] for r in results]
    x = np.arange(len(names))
    bars = [("train_max_over_mean", "planning half (aggregate)"),
            ("test_max_over_mean", "test half (aggregate)"),
            ("test_batch_max_over_mean", "test half (per batch)")]
    top = 1.0
    for j, (key, label) in enumerate(bars):
        vals = [r[key] for r in results]
        top = max(top, *vals)
        ax.bar(x + (j - 1) * 0.27, vals, width=0.27, label=label)
    ax.set_ylim(0.9, top * 1.05)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("max / mean GPU load (per layer, averaged)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)
