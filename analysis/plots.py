"""Small, readable comparison plots (matplotlib, Agg backend). Each plot carries the command that
regenerates it as a caption, so a figure found alone still says where it came from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display): the one place the backend
    is chosen; every plot of the project gets pyplot from here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_plt = pyplot


def command_line() -> str:
    """The ``moesim`` command that is running, as a user would type it again (without the
    ``hydra.run.dir`` / ``hydra.sweep.dir`` overrides, which only say where outputs go)."""
    import shlex
    import sys

    argv = list(sys.argv)
    head = argv[0] if argv and argv[0].startswith("moesim") else "moesim"
    rest = [a for a in argv[1:] if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    return " ".join([head, *(shlex.quote(a) for a in rest)])


def save_figure(fig, path: str | Path, caption: str | None = None) -> None:
    """Save ``fig`` as a PNG atomically, with the command that regenerates it as a caption
    (default: :func:`command_line`; ``caption=""`` for none). No timestamps or version strings
    go into the file, so the same command gives the same bytes."""
    import io

    from sim.files import atomic_write_bytes

    caption = command_line() if caption is None else caption
    if caption:
        fig.text(0.01, -0.01, caption, fontsize=6.5, color="0.35", ha="left", va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    atomic_write_bytes(buf.getvalue(), path)


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
