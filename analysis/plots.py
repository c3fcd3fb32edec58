"""Small, readable comparison plots (matplotlib, Agg backend). Each plot carries the command that
regenerates it as a caption, so a figure found alone still says where it came from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, caption: str | None = None) -> None:
    """Save atomically (temp file + rename), with an optional caption line at the bottom."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=7, color="0.35", ha="left", va="bottom")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _plt().close(fig)


def line_plot(df: pd.DataFrame, x: str, y: str, hue: str | None, path: str | Path,
              title: str = "", caption: str | None = None) -> None:
    """One line per value of ``hue`` (or one line), points sorted by ``x``; means over repeats."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=True))
    categorical_x = not pd.api.types.is_numeric_dtype(df[x])
    for name, g in groups:
        agg = g.groupby(x, sort=True)[y].mean()
        xs = [str(v) for v in agg.index] if categorical_x else agg.index
        ax.plot(xs, agg.values, marker="o", label=None if name is None else str(name))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    if hue is not None:
        ax.legend(title=hue, fontsize=8)
    save_figure(fig, path, caption)
