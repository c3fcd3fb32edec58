"""Plots for ``moesim cache`` (hit rate vs expert memory) and ``moesim placement`` (GPU load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.plots import save_figure


def plot_hit_rate(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Hit rate against the fraction of each layer's experts resident, one line per policy
    (Belady dashed black); bars, one per policy, when a single memory is compared."""
    from analysis.plots import pyplot

    plt = pyplot()

    from analysis.style import color, label, line_style

    names = list(dict.fromkeys(r["policy"] for r in results))
    fracs = sorted({r["capacity_frac"] for r in results})
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(fracs) == 1:  # one memory compared: a category per policy, so bars
        vals = [next(r["hit_rate"] for r in results if r["policy"] == n) for n in names]
        bars = ax.bar(range(len(names)), vals, color=[color(n) for n in names],
                      hatch=None, edgecolor="white")
        for b, n in zip(bars, names):
            if n == "belady":
                b.set_hatch("//")
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=20, ha="right",
                      fontsize=8)
        ax.set_xlabel(f"cache policy ({fracs[0]:g} of each layer's experts resident)")
    else:
        for name in names:
            rs = sorted((r for r in results if r["policy"] == name),
                        key=lambda r: r["capacity_frac"])
            ax.plot([r["capacity_frac"] for r in rs], [r["hit_rate"] for r in rs], marker="o",
                    label=label(name), **line_style(name))
        ax.set_xlabel("experts resident per layer (fraction)")
        ax.legend(fontsize=8)
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_placement(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Max/mean GPU load (planning half, test half, test per batch with replicas sharing equally
    and with each batch's tokens split across the replicas), bars per placement policy in its
    colour (:func:`analysis.style.color`), one shade per measure."""
    import numpy as np

    from analysis.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["policy"] for r in results]
    x = np.arange(len(names))
    bars = [("train_max_over_mean", "planning half (aggregate)"),
            ("test_max_over_mean", "test half (aggregate)"),
            ("test_batch_max_over_mean", "test half (per batch, equal share)"),
            ("test_batch_split_max_over_mean", "test half (per batch, tokens split)")]
    bars = [b for b in bars if all(b[0] in r for r in results)]
    w = 0.8 / len(bars)
    top = 1.0
    from analysis.style import color

    shades = (1.0, 0.7, 0.45, 0.25)  # one colour per placement policy; the measure is its shade
    for j, (key, label) in enumerate(bars):
        vals = [r[key] for r in results]
        top = max(top, *vals)
        ax.bar(x + (j - (len(bars) - 1) / 2) * w, vals, width=w, color=[color(n) for n in names],
               alpha=shades[j], edgecolor="black", linewidth=0.4)
        ax.bar([np.nan], [np.nan], color="0.3", alpha=shades[j], edgecolor="black",
               linewidth=0.4, label=label)  # the legend's swatch of this measure
    ax.set_ylim(0.9, top * 1.05)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("max / mean GPU load (per layer, averaged)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: covers no bar
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
