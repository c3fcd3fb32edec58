"""PNG plots of a routing trace: popularity heatmap, reuse-distance CDF, cross-layer transitions.

The plots take the numbers (:class:`TracePlotData`), not the trace: analysis reads no trace format
and imports nothing of ``traces`` (the layering, tests/test_import_graph.py). ``moesim trace stats
FILE --plots DIR`` (:mod:`sim.app.trace_cmd`) computes them with :mod:`traces.stats`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TracePlotData:
    """What :func:`write_plots` draws of one routing trace."""

    model: str
    layer_ids: list[int]  # (L,) the model's layer number of each MoE layer of the trace
    num_experts: int
    top_k: int
    num_requests: int
    num_tokens: int
    popularity_share: np.ndarray  # (L, E) share of the layer's tokens routed to each expert
    #: reuse-distance summary (traces.stats.reuse_stats): histogram (E,), median, cold, num_accesses
    reuse: dict[str, Any]
    #: layer l -> (E, E) P(expert at l+1 | expert at l), for the pairs :func:`transition_layers` picks
    transitions: dict[int, np.ndarray]


def transition_layers(num_layers: int) -> list[int]:
    """The layers ``l`` whose transition ``l -> l+1`` is drawn: up to four, evenly spaced."""
    if num_layers < 2:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, num_layers - 2, min(4, num_layers - 1))})


def _save(fig: Any, path: Path) -> None:
    from analysis.plots import save_figure

    save_figure(fig, path)


def write_plots(data: TracePlotData, out_dir: str | os.PathLike) -> list[Path]:
    """Write popularity.png, reuse_distance_cdf.png and transitions.png into ``out_dir``."""
    from analysis.plots import pyplot

    plt = pyplot()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = data
    L, E, K = len(m.layer_ids), m.num_experts, m.top_k
    title = f"{m.model}: {m.num_requests} requests, {m.num_tokens} tokens"
    written = []

    # popularity heatmap (layer x expert), share of the layer's tokens
    share = m.popularity_share  # (L, E)
    fig, ax = plt.subplots(figsize=(max(6, E * 0.12 + 2), max(4, L * 0.18 + 1.5)))
    im = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert id")
    ax.set_ylabel("MoE layer")
    step = max(1, L // 13)
    ax.set_yticks(range(0, L, step), [str(m.layer_ids[i]) for i in range(0, L, step)])
    fig.colorbar(im, ax=ax, label=f"share of tokens routed to expert (uniform = {K / E:.3f})")
    ax.set_title(f"Expert popularity per layer\n{title}", fontsize=9)
    p = out / "popularity.png"
    _save(fig, p)
    plt.close(fig)
    written.append(p)

    # reuse-distance CDF
    rd = m.reuse
    hist = np.asarray(rd["histogram"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    if hist.sum() > 0:
        cdf = np.cumsum(hist) / hist.sum()
        ax.step(np.arange(E), cdf, where="post", label="non-cold accesses")
        ax.axvline(rd["median"], color="grey", ls="--", lw=0.8, label=f"median {rd['median']:.0f}")
    ax.set_xlabel("reuse distance (distinct experts at the layer since the last use, same request)")
    ax.set_ylabel("CDF")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, E - 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Reuse distance ({rd['cold']} cold of {rd['num_accesses']} accesses)\n{title}", fontsize=9)
    p = out / "reuse_distance_cdf.png"
    _save(fig, p)
    plt.close(fig)
    written.append(p)

    # transition heatmaps P(e' at l+1 | e at l) for up to four layer pairs
    if L >= 2:
        pairs = sorted(m.transitions)
        fig, axes = plt.subplots(1, len(pairs), figsize=(4.8 * len(pairs), 4.4), squeeze=False,
                                 layout="constrained")
        Ps = [m.transitions[l] for l in pairs]
        vmax = max(float(P.max()) for P in Ps) or 1.0  # one colour scale for every panel
        for ax, l, P in zip(axes[0], pairs, Ps):
            im = ax.imshow(P, cmap="magma", interpolation="nearest", vmin=0, vmax=vmax)
            ax.set_title(f"layer {m.layer_ids[l]} -> {m.layer_ids[l + 1]}", fontsize=9)
            ax.set_xlabel(f"expert at layer {m.layer_ids[l + 1]}")
            ax.set_ylabel(f"expert at layer {m.layer_ids[l]}")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8,
                     label="P(next-layer expert | expert), one scale for all panels")
        shown = ", ".join(f"{m.layer_ids[l]}->{m.layer_ids[l + 1]}" for l in pairs)
        fig.suptitle(f"P(next-layer expert | expert) (uniform = {1 / E:.3f}); layer pairs shown: "
                     f"{shown} ({len(pairs)} of the {L - 1} adjacent pairs, evenly spaced)\n{title}",
                     fontsize=9)
        p = out / "transitions.png"
        _save(fig, p)
        plt.close(fig)
        written.append(p)
    return written
