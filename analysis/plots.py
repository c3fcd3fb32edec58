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

    from sim.common.files import atomic_write_bytes

    caption = command_line() if caption is None else caption
    if caption:
        fig.text(0.01, -0.01, caption, fontsize=6.5, color="0.35", ha="left", va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    atomic_write_bytes(buf.getvalue(), path)


SHARES = ("hit_rate", "slo_attainment", "routing_fidelity", "f1", "precision", "recall",
          "accuracy", "fraction", "share")


def is_share(name: str) -> bool:
    """A quantity in [0, 1] whose axis starts at zero."""
    return any(t in str(name).lower() for t in SHARES)


def resolve_repeats(df: pd.DataFrame, x: str, y: str, hue: str | None
                    ) -> tuple[pd.DataFrame, str | None, str]:
    """Rows that share (hue, x) are never averaged silently: if they differ only in ``seed``
    they are aggregated (mean, error bars = one standard deviation; the axis label says so),
    otherwise each run keeps its own series (``hue`` becomes the run's ``label``).
    Returns (df with ``_y``, ``_err``, ``_n``), the hue column, the y-axis label."""
    keys = [c for c in (hue, x) if c]
    d = df.dropna(subset=[y]).copy()
    if not d.duplicated(subset=keys).any():
        d["_y"], d["_err"], d["_n"] = d[y], 0.0, 1
        return d, hue, y
    config = [c for c in df.attrs.get("config_columns", []) if c in d.columns and c not in keys]
    by_seed = "seed" in d.columns and not any(
        g[[c for c in config if c != "seed"]].astype(str).nunique().gt(1).any()
        for _, g in d.groupby(keys, sort=False)) and d.groupby(keys)["seed"].nunique().gt(1).all()
    if by_seed:
        agg = d.groupby(keys, sort=True)[y].agg(["mean", "std", "count"]).reset_index()
        agg = agg.rename(columns={"mean": "_y", "std": "_err", "count": "_n"}).fillna({"_err": 0.0})
        n = int(agg["_n"].min())
        return agg, hue, f"{y}: mean over {n} seeds (bars: 1 sd)"
    if "label" in d.columns and not d.duplicated(subset=["label", x]).any():
        d["_y"], d["_err"], d["_n"] = d[y], 0.0, 1
        return d, "label", y
    from sim.common.errors import MoesimError

    raise MoesimError(f"several runs share {', '.join(keys)} and differ in more than the seed; "
                      f"give --hue to tell them apart")


def compare_plot(df: pd.DataFrame, x: str, y: str, hue: str | None, path: str | Path,
                 title: str = "", caption: str | None = None, xlabel: str | None = None,
                 ylabel: str | None = None, policy: dict | None = None,
                 legend: str | None = None, draw=None) -> None:
    """``y`` against ``x``: bars when ``x`` is categorical (or has one value), lines when it is
    numeric; each ``hue`` value coloured by its policy (``policy[value]``, else the value itself,
    :func:`analysis.style.color`), so series of one policy share a colour and differ in marker
    and dashes; series that coincide stay visible (markers shrink and dashes change from one
    series to the next); no silent averaging (:func:`resolve_repeats`); the y axis starts at
    zero for shares, bars and any quantity that cannot be negative."""
    import numpy as np

    from analysis.style import MARKERS, line_style
    from analysis.style import label as style_label

    policy = policy or {}

    d, hue, ylab = resolve_repeats(df, x, y, hue)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 4.2))
    groups = [(None, d)] if hue is None else list(d.groupby(hue, sort=False))
    xs_all = list(dict.fromkeys(d[x].tolist()))
    numeric = pd.api.types.is_numeric_dtype(d[x]) and len(xs_all) > 1
    if numeric:
        seen: dict[str, int] = {}
        for j, (name, g) in enumerate(groups):
            g = g.sort_values(x)
            pol = policy.get(name, name if name is not None else y)
            st = line_style(pol)
            k = seen[st["color"]] = seen.get(st["color"], -1) + 1
            if k and "linestyle" not in st:
                st["linestyle"] = ("-", "--", ":", "-.")[k % 4]
            ax.errorbar(g[x], g["_y"], yerr=g["_err"] if g["_err"].any() else None,
                        marker=MARKERS[j % len(MARKERS)], markersize=max(3.0, 8.0 - 1.2 * j),
                        capsize=3, zorder=2 + j, label=None if name is None else style_label(name),
                        **st)
        if is_share(y):  # room above 1.0, where a reference line may run
            ax.set_ylim(0, max(1.0, float(d["_y"].max())) * 1.05)
        elif float(d["_y"].min()) >= 0:  # a latency of 20.4 s against 21.2 s: not a cliff
            ax.set_ylim(bottom=0)
    else:
        width = 0.8 / max(1, len(groups))
        pos = np.arange(len(xs_all))
        for j, (name, g) in enumerate(groups):
            vals = [g.loc[g[x] == v, "_y"] for v in xs_all]
            errs = [g.loc[g[x] == v, "_err"] for v in xs_all]
            h = [float(v.iloc[0]) if len(v) else np.nan for v in vals]
            e = [float(v.iloc[0]) if len(v) else 0.0 for v in errs]
            st = line_style(policy.get(name, name if name is not None else ""))
            ax.bar(pos + (j - (len(groups) - 1) / 2) * width, h, width=width * 0.95,
                   yerr=e if any(e) else None, capsize=3, color=st["color"],
                   hatch="//" if st.get("linestyle") == "--" else None, edgecolor="white",
                   label=None if name is None else style_label(name))
        ax.set_xticks(pos)
        ax.set_xticklabels([str(v) for v in xs_all], rotation=20 if len(xs_all) > 4 else 0,
                           ha="right" if len(xs_all) > 4 else "center", fontsize=8)
        ax.set_ylim(bottom=0)
        if is_share(y):
            ax.set_ylim(0, max(1.0, float(np.nanmax(d["_y"])) * 1.05))
    if draw is not None:  # a reference the caller adds (a line every other policy sits on)
        draw(ax)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or ylab)
    ax.set_title(title or f"{y} vs {x}", fontsize=10)
    ax.grid(alpha=0.3, axis="y" if not numeric else "both")
    if hue is not None:
        ax.legend(title=legend or hue, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path, caption)


def line_plot(df: pd.DataFrame, x: str, y: str, hue: str | None, path: str | Path,
              title: str = "", caption: str | None = None) -> None:
    """Kept for callers of the old name: :func:`compare_plot` (bars for categorical x, no silent
    averaging)."""
    compare_plot(df, x, y, hue, path, title=title, caption=caption)
