"""What the published suite reports: each policy group's ratio of ratios, the per-source and
in-band summaries, and the two plots (moesim against published; ratio of ratios per group)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from suite_rows import BAND, RR_BAND


def ratio_of_ratios(results: list[dict]) -> dict[str, float]:
    """Per row id in a group: (moesim_r / moesim_b) / (published_r / published_b), b the group's
    first row (both as times): 1 where moesim moves by as much as the source when the policy
    changes. Rows without a group are absent."""
    base: dict[str, dict] = {}
    out: dict[str, float] = {}
    for r in results:
        if not r["group"]:
            continue
        b = base.setdefault(r["group"], r)
        out[r["id"]] = (r["moesim"] / b["moesim"]) / (r["measured"] / b["measured"])
    return out


def source_key(url: str) -> str:
    """One source per paper or repository: github.com/OWNER/REPO, else host + path."""
    u = urlparse(url)
    parts = [p for p in u.path.split("/") if p]
    if u.netloc.endswith("github.com") and len(parts) >= 2:
        return f"{u.netloc}/{parts[0]}/{parts[1]}"
    return u.netloc + u.path.rstrip("/")


def band_stats(ratios: list[float], lo: float = BAND[0], hi: float = BAND[1]) -> tuple[float, int]:
    """(median |ratio - 1|, count outside [lo, hi])."""
    a = np.asarray(ratios, dtype=float)
    return float(np.median(np.abs(a - 1.0))), int(((a < lo) | (a > hi)).sum())


def summaries(results: list[dict], rr: dict[str, float]) -> list[str]:
    """The suite's three summary lines (sections with no rows are left out)."""
    lines = []
    serving = [r["ratio"] for r in results if r["suite"] == "serving"]
    if serving:
        med, out = band_stats(serving)
        lines.append(f"serving suite (the first 50 rows): {len(serving)} rows, median |ratio - 1| "
                     f"= {med:.3f}, {out} outside {list(BAND)}")
    off = [r for r in results if r["offloaded"] == "yes"]
    if off:
        med, out = band_stats([r["ratio"] for r in off])
        n_src = len({source_key(r["source"]) for r in off})
        lines.append(f"offloaded (not excluded): {len(off)} rows from {n_src} sources, median "
                     f"|ratio - 1| = {med:.3f}, {out} outside {list(BAND)}")
    firsts = {r["group"]: r["id"] for r in reversed(results) if r["group"]}
    members = [v for k, v in rr.items() if k not in firsts.values()]
    if members:
        inside = sum(1 for v in members if RR_BAND[0] <= v <= RR_BAND[1])
        lines.append(f"groups: {len(firsts)}, {inside} of {len(members)} non-baseline rows "
                     f"({inside / len(members):.0%}) with ratio of ratios in {list(RR_BAND)}")
    return lines


def plot(results: list[dict], path: Path) -> None:
    from analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = {"batch_latency_s": "o", "tpot_s": "s", "ttft_s": "^", "e2e_s": "D",
               "out_tok_s_per_gpu": "v", "decode_tok_s": "P"}
    for metric, mk in markers.items():
        sel = [r for r in results if r["metric"] == metric]
        if sel:
            ax.scatter([r["measured"] for r in sel], [r["moesim"] for r in sel], marker=mk,
                       label=metric)
    lo = min(min(r["measured"], r["moesim"]) for r in results) / 1.5
    hi = max(max(r["measured"], r["moesim"]) for r in results) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.plot([lo, hi], [lo * 1.5, hi * 1.5], "k:", lw=0.6, label="x 1.5 / 0.67")
    ax.plot([lo, hi], [lo / 1.5, hi / 1.5], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="published (s)", ylabel="moesim (s)",
           title="moesim (analytic) vs published measurements")
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "python benchmarks/published/run.py OUT", fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_groups(results: list[dict], path: Path) -> None:
    """Each grouped row's published time ratio to its baseline against moesim's (y = x: moesim
    moves as the source does when the policy changes)."""
    from analysis.plots import pyplot

    base: dict[str, dict] = {}
    pts: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r["group"]:
            b = base.setdefault(r["group"], r)
            pts.setdefault(r["group"], []).append((r["measured"] / b["measured"],
                                                   r["moesim"] / b["moesim"]))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for g, p in pts.items():
        ax.scatter([x for x, _ in p], [y for _, y in p], label=g, s=18)
    vals = [v for p in pts.values() for xy in p for v in xy]
    lo, hi = min(vals) / 1.3, max(vals) * 1.3
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.plot([lo, hi], [lo * RR_BAND[1], hi * RR_BAND[1]], "k:", lw=0.6, label="x 1.18 / 0.85")
    ax.plot([lo, hi], [lo * RR_BAND[0], hi * RR_BAND[0]], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="published: row time / baseline time",
           ylabel="moesim: row time / baseline time", title="policy groups: ratio of ratios")
    ax.legend(fontsize=6, ncol=2)
    fig.text(0.01, 0.01, "python benchmarks/published/run.py OUT", fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
