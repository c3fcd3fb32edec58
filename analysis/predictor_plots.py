"""The predictor's plots (``moesim predictor eval``): the per-prompt prediction's F1 against
its staleness (the prediction period p)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.plots import pyplot, save_figure


def plot_staleness(curve: list[dict[str, Any]], path: Path) -> None:
    """F1 of the predictor, of copying the previous prompt and of the most popular experts
    against the prediction period (``curve``: the ``staleness`` records of metrics.json)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    p = [r["period"] for r in curve]
    ax.plot(p, [r["f1"] for r in curve], "o-", label="predictor (eMoE-A)")
    ax.plot(p, [r["previous_prompt_f1"] for r in curve], "s--", label="copy previous prompt")
    ax.plot(p, [r["popular_f1"] for r in curve], ":", label="most popular")
    ax.set_xscale("log")
    ax.set_xticks(p, [str(v) for v in p])  # every p as a plain number, not 10^x
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_xlabel("prediction period p (prompts)")
    ax.set_ylabel("per-layer set F1")
    ax.set_title("per-prompt prediction vs staleness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
