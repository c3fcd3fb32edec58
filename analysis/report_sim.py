"""The simulated runs' part of a report (``moesim sim`` runs and sweeps, ``moesim demo``): what
differs between the runs, their metrics in human units with the SLO stated, an overview per run
labelled by the keys that vary, latency CDFs, and (when the runs vary it) hit rate, latency and
fidelity against expert memory and SLO attainment against request rate.

Every run has a *policy* (:func:`run_policies`) and every plot colours a run by it
(:func:`analysis.style.color`), so two LRU runs of a sweep are the same blue everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.explain import bottleneck_sentence
from analysis.plots import compare_plot, is_share, pyplot, save_figure
from analysis.report_doc import Report
from analysis.style import COLORS, POLICY_KEYS, color, label, short_label
from analysis.units import axis_unit, human_seconds, sig, unit_of

#: metrics shown in the runs table (when present), in this order
KEY_METRICS = ["hit_rate", "routing_fidelity", "h2d_bytes", "fetch_stall_s", "ttft_s.p50",
               "ttft_s.p99", "tpot_s.p50", "e2e_s.p50", "e2e_s.p90", "tokens_per_s",
               "slo_attainment", "sim_time_s"]
BUDGET = "cluster.expert_budget_fraction"
RATE = "workload.rate_rps"


def run_policies(df: pd.DataFrame) -> list[str]:
    """Each run's policy, the name its colour comes from: a run a driver named after a known
    policy keeps that name (the demo's ``lru``, ``emoe-predict``); otherwise its cache policy,
    with ``+prefetcher`` when it prefetches, read from its config (``policy.*`` columns)."""
    out = []
    for _, row in df.iterrows():
        if str(row.get("label")) in COLORS:
            out.append(str(row["label"]))
            continue
        cache = row.get("policy.cache")
        pre = row.get("policy.prefetch")
        if isinstance(cache, str):
            out.append(cache + (f"+{pre}" if isinstance(pre, str) and pre != "none" else ""))
            continue
        other = next((row.get(k) for k in POLICY_KEYS if isinstance(row.get(k), str)), None)
        out.append(str(other if other is not None else row.get("label")))
    return out


def run_names(df: pd.DataFrame, varying: list[str]) -> list[str]:
    """Short run names for tables and tick labels: a driver's name (no ``=`` in it) as it is,
    else the values of the keys that vary between the runs (``lru, memory 0.25``)."""
    labels = [str(v) for v in df["label"]]
    if all("=" not in lab for lab in labels) or not varying:
        return labels
    names = [short_label({k: row[k] for k in varying if k in row.index})
             for _, row in df.iterrows()]
    return names if len(set(names)) == len(names) else labels


def slo_text(df: pd.DataFrame) -> str | None:
    """The SLO the runs were held to (``slo.ttft_s``, ``slo.tpot_s`` of metrics.json), when it
    is one for all runs: ``TTFT <= 2 s and TPOT <= 200 ms``."""
    cols = ("slo.ttft_s", "slo.tpot_s")
    if not all(c in df.columns for c in cols):
        return None
    pairs = {(float(a), float(b)) for a, b in zip(df[cols[0]], df[cols[1]])}
    if len(pairs) != 1:
        return None
    ttft, tpot = pairs.pop()
    return f"TTFT <= {human_seconds(ttft, True)} and TPOT <= {human_seconds(tpot, True)}"


def why_sentences(df: pd.DataFrame, explain: Any = None) -> list[tuple[str, str]]:
    """(run, sentence) per run that has one: ``explain(metrics)`` when given (``analysis.explain``'s
    ``bottleneck_sentence`` through :func:`run_why`), else the run's optional ``why`` field of
    metrics.json. An empty sentence (nothing to say) is left out."""
    if explain is not None:
        from analysis.results import read_metrics

        out = [(n, explain(read_metrics(Path(d)))) for n, d in zip(df["_name"], df["run_dir"])]
        return [(n, w) for n, w in out if w]
    if "why" not in df.columns:
        return []
    return [(n, str(w)) for n, w in zip(df["_name"], df["why"]) if isinstance(w, str) and w]


def run_why(metrics: dict[str, Any]) -> str:
    """A run's sentence: its own ``why`` field where it has one, else the bottleneck named from
    its figures (:func:`analysis.explain.bottleneck_sentence`); "" for a run whose metrics lack
    those figures (written before them, or not a simulator run)."""
    why = metrics.get("why")
    if isinstance(why, str) and why:
        return why
    try:
        return bottleneck_sentence(metrics)
    except ValueError:
        return ""


def sim_section(rep: Report, df: pd.DataFrame) -> None:
    from sim.common.files import atomic_write_bytes

    rep.h("Simulated runs")
    config = [c for c in df.attrs.get("config_columns", []) if c in df.columns
              and not c.startswith(("output.", "hydra"))
              and df[c].astype(str).nunique() > 1]  # varying among these runs
    df = df.copy()
    df.attrs["config_columns"] = config
    df["_policy"] = run_policies(df)
    df["_name"] = run_names(df, config)
    metrics = [c for c in KEY_METRICS if c in df.columns]
    slo = slo_text(df)
    rep.p(f"{len(df)} runs. Every metric of every run is in `table.csv`; sizes in decimal units "
          f"(1 GB = 10^9 bytes)." + (f" SLO attainment is the share of requests that met the "
                                     f"SLO: {slo} (serving.ttft_slo_s, serving.tpot_slo_s)."
                                     if slo else ""))
    if config:
        rep.h("What differs between the runs", 3)
        rep.table(df[["_name", *config]].rename(columns={"_name": "run"}), fold_constant=False)
    rep.h("Metrics", 3)
    shown = df[["_name", *metrics]].rename(columns={"_name": "run"})
    if slo is None and "slo.ttft_s" in df.columns:
        shown.insert(len(shown.columns) - ("sim_time_s" in metrics), "SLO", [
            f"TTFT <= {human_seconds(a, True)}, TPOT <= {human_seconds(b, True)}"
            for a, b in zip(df["slo.ttft_s"], df["slo.tpot_s"])])
    rep.table(shown)
    rep.why(why_sentences(df, run_why))  # the bottleneck, from analysis.explain
    atomic_write_bytes(df.drop(columns=["_name", "_policy"]).to_csv(index=False).encode(),
                       rep.out / "table.csv")
    overview(rep, df, slo)
    cdfs(rep, df)
    if BUDGET in df.columns and df[BUDGET].nunique() > 1:
        _against_memory(rep, df)
    if RATE in df.columns and df[RATE].nunique() > 1:
        hue = "_policy" if not df.duplicated(subset=["_policy", RATE]).any() else "_name"
        compare_plot(df, RATE, "slo_attainment", hue, rep.out / "slo_vs_rate.png",
                     title="SLO attainment against request rate", caption=rep.command,
                     xlabel="request rate (requests/s)", policy=dict(zip(df[hue], df["_policy"])),
                     ylabel="SLO attainment" + (f" ({slo})" if slo else ""),
                     legend="policy" if hue == "_policy" else "run")
        rep.figure("slo_vs_rate.png", "SLO attainment against request rate, one line per "
                   "policy" + (f"; SLO: {slo}." if slo else "."))


def _against_memory(rep: Report, df: pd.DataFrame) -> None:
    """Hit rate, latency and (where some run reroutes) fidelity against expert memory: one line
    per policy, or per run setting when more than the policy and the memory vary."""
    others = [c for c in df.attrs["config_columns"] if c != BUDGET and not c.startswith("policy.")]
    if not df.duplicated(subset=["_policy", BUDGET]).any():
        df = df.assign(_series=df["_policy"])
    else:
        df = df.assign(_series=[short_label({"policy.name": p, **{k: r[k] for k in others}})
                                for p, (_, r) in zip(df["_policy"], df.iterrows())])
        if df.duplicated(subset=["_series", BUDGET]).any():
            return  # no one line per series; the runs table holds the numbers
    if not df.duplicated(subset=["_series"]).any():
        return  # no series has two memories (the demo: one run per approach)
    plots = [("hit_rate", "hit rate"), ("e2e_s.p50", "end-to-end latency p50 (s)")]
    if "routing_fidelity" in df.columns and (df["routing_fidelity"] < 1).any():
        plots.append(("routing_fidelity", "routing fidelity (share of choices served as routed)"))
    for y, what in plots:
        if y not in df.columns:
            continue
        name = f"{y.split('.')[0]}_vs_memory.png"
        compare_plot(df, BUDGET, y, "_series", rep.out / name,
                     title=f"{what} against expert memory", caption=rep.command,
                     xlabel="expert memory (share of the experts on the GPU)", ylabel=what,
                     policy=dict(zip(df["_series"], df["_policy"])), legend="policy")
        rep.figure(name, f"{what[0].upper() + what[1:]} against expert memory (eMoE's Fig. 2 "
                         f"view), one line per policy.")


PANELS = (("hit_rate", "expert hit rate (%)"), ("h2d_bytes", "bytes copied"),
          ("ttft_s.p50", "TTFT p50"), ("tpot_s.p50", "TPOT p50"),
          ("e2e_s.p90", "end-to-end latency p90"), ("slo_attainment", "SLO attainment (%)"))


def _panel_scale(col: str, values: pd.Series) -> tuple[str, float]:
    """A panel's unit and factor: % for shares, the unit of its largest value for bytes and
    times (``TB``, ``ms``)."""
    if is_share(col):
        return "", 100.0
    kind = unit_of(col)
    if kind in ("bytes", "s"):
        unit, factor = axis_unit(kind, float(values.abs().max()) if len(values) else 0.0)
        return f" ({unit})", factor
    return "", 1.0


def overview_figure(df: pd.DataFrame, slo: str | None = None):
    """Bars per run of the key metrics, coloured by policy (``_policy``), named by ``_name``;
    the figure (None when no metric is there)."""
    panels = [(c, t) for c, t in PANELS if c in df.columns]
    if not panels:
        return None
    plt = pyplot()
    names = [str(v) for v in df["_name"]]
    longest = max(len(n) for n in names)
    ncol = 3 if len(names) * max(longest, 4) <= 60 else (2 if len(names) * longest <= 110 else 1)
    nrow = (len(panels) + ncol - 1) // ncol
    rotate = len(names) * longest > 90 / ncol * 1.6
    fig, axes = plt.subplots(nrow, ncol, figsize=(11, (3.0 + 0.06 * longest * rotate) * nrow + 0.5),
                             squeeze=False)
    colours = [color(p) for p in df["_policy"]]
    for ax, (col, title) in zip(axes.flat, panels):
        unit, factor = _panel_scale(col, df[col].astype(float))
        vals = df[col].astype(float) * factor
        title += unit
        ax.bar(range(len(names)), vals, color=colours, edgecolor="white")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                           fontsize=8)
        if col == "slo_attainment" and slo:
            title += f"\n({slo})"
        ax.set_title(title, fontsize=9)
        top = float(vals.max()) if len(vals) and vals.max() == vals.max() else 1.0
        ax.set_ylim(0, 110 if is_share(col) else max(top, 1e-9) * 1.15)
        ax.grid(alpha=0.3, axis="y")
        for i, v in enumerate(vals):
            ax.text(i, v, sig(v), ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    from matplotlib.patches import Patch

    policies = list(dict.fromkeys(df["_policy"]))
    fig.legend([Patch(color=color(p)) for p in policies], [label(p) for p in policies],
               loc="upper center", ncol=min(len(policies), 6), fontsize=8, frameon=False,
               title="colour = policy", title_fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    return fig


def overview(rep: Report, df: pd.DataFrame, slo: str | None) -> None:
    fig = overview_figure(df, slo)
    if fig is None:
        return
    save_figure(fig, rep.out / "overview.png", rep.command)
    rep.figure("overview.png", "Hit rate, bytes copied, latency and SLO attainment per run "
               "(one colour per policy).")


def cdfs(rep: Report, df: pd.DataFrame) -> None:
    import numpy as np

    tables = []
    for _, row in df.iterrows():
        path = Path(row["run_dir"]) / "requests.parquet"
        if path.is_file():
            tables.append((str(row["_name"]), str(row["_policy"]),
                           pd.read_parquet(path, columns=["ttft_s", "e2e_s"])))
    if not tables:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    dashes = ("-", "--", ":", "-.")
    for ax, col, what in ((axes[0], "ttft_s", "time to first token (s)"),
                          (axes[1], "e2e_s", "end-to-end latency (s)")):
        seen: dict[str, int] = {}
        for j, (name, policy, t) in enumerate(tables):
            v = np.sort(t[col].dropna().to_numpy())
            k = seen[policy] = seen.get(policy, -1) + 1  # runs of one policy: one colour, dashes
            if len(v):
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=name,
                        color=color(policy), linestyle=dashes[k % len(dashes)],
                        linewidth=2.2 - 0.25 * min(j, 4), zorder=2 + j)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel(what + " (log scale above 0.1)")
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("latency CDFs (colour = policy)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, rep.out / "latency_cdf.png", rep.command)
    rep.figure("latency_cdf.png", "Latency CDFs per run (further left is better).")

