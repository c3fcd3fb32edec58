"""The report of a run or sweep directory: ``report.md`` and ``report.html`` with every plot that
the directory's results support, the tables, the failed runs, and beside each figure the command
that regenerates it.

What is drawn depends on what the runs hold (each plot only where its data is present):

- simulator runs (``moesim sim``, ``moesim demo``): per run, bars of hit rate, bytes moved,
  TTFT and TPOT; latency CDFs from ``requests.parquet``; latency against expert memory (eMoE's
  Fig. 2 view) with routing fidelity when ``cluster.expert_budget_fraction`` varies; SLO
  attainment against request rate per scheduler when ``workload.rate_rps`` varies;
- cache replays (``moesim cache``, the demo's ``replay/``): hit rate against expert memory per
  policy, Belady dashed black (bars when one memory is compared), routing fidelity where a
  policy reroutes;
- placements (``moesim placement``): max/mean GPU load per placement, aggregate and per batch.

Every policy keeps its colour (:mod:`analysis.style`). Rows that share an x value are never
averaged silently (:func:`analysis.plots.resolve_repeats`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.plots import compare_plot, is_share, pyplot, save_figure
from analysis.style import color, label, line_style

#: metrics shown in the runs table (when present), in this order
KEY_METRICS = ["hit_rate", "routing_fidelity", "h2d_bytes", "fetch_stall_s", "ttft_s.p50",
               "ttft_s.p99", "tpot_s.p50", "e2e_s.p50", "e2e_s.p90", "tokens_per_s",
               "slo_attainment", "sim_time_s"]


class Report:
    """Blocks (headings, text, tables, figures) rendered as Markdown and as HTML."""

    def __init__(self, out: Path, command: str) -> None:
        self.out, self.command, self.blocks = out, command, []

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, df: pd.DataFrame) -> None:
        self.blocks.append(("table", df))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("fig", name, caption))

    def markdown(self) -> str:
        lines: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                lines += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "table":
                lines += [_md_table(b[1]), ""]
            else:
                lines += [f"![{b[2]}]({b[1]})", "", f"*{b[2]}* Regenerate: `{self.command}`", ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        body: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline_code(b[1])}</p>")
            elif b[0] == "table":
                body.append(b[1].to_html(index=False, border=0, classes="t",
                                         float_format=lambda v: f"{v:.4g}", na_rep=""))
            else:
                body.append(f'<figure><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}">'
                            f"<figcaption>{html.escape(b[2])} Regenerate: "
                            f"<code>{html.escape(self.command)}</code></figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
                 "img{max-width:100%}table.t{border-collapse:collapse;font-size:12px}"
                 "table.t td,table.t th{border-bottom:1px solid #ddd;padding:2px 6px;"
                 "text-align:right}figcaption{font-size:12px;color:#555}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
                + "\n</body></html>\n")


def _inline_code(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        rows.append("| " + " | ".join(_fmt(v) for v in rec) + " |")
    return "\n".join(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------------------------
def write_report(root: str | Path, out: str | Path, command: str, title: str = "") -> Path:
    """Write ``out/report.md`` and ``out/report.html`` (and their PNGs) for ``root``; returns
    the Markdown path."""
    from analysis.results import find_failed, find_runs, load_runs, read_metrics
    from sim.common.files import atomic_write_bytes

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out, command)
    rep.h(title or f"Report on {root}", 1)
    rep.p(f"Regenerate this report: `{command}`")
    runs = [r for r in find_runs(root) if out not in r.parents]
    kinds: dict[str, list[Path]] = {}
    for r in runs:
        kinds.setdefault(str(read_metrics(r).get("kind", "sim")), []).append(r)
    if "sim" in kinds:
        df = load_runs(root)
        df = df[df["run_dir"].isin([str(r) for r in kinds["sim"]])].reset_index(drop=True)
        df.attrs.update(load_runs(root).attrs)
        _sim_section(rep, df)
    if "cache_replay" in kinds:
        _replay_section(rep, kinds["cache_replay"])
    if "placement" in kinds:
        _placement_section(rep, kinds["placement"])
    failed = find_failed(root)
    rep.h("Failed or unfinished runs")
    if failed:
        rep.table(pd.DataFrame(failed)[["label", "run_dir", "error"]])
    else:
        rep.p(f"None: all {len(runs)} runs under `{root}` wrote their metrics.")
    md = out / "report.md"
    atomic_write_bytes(rep.markdown().encode(), md)
    atomic_write_bytes(rep.html(title or str(root)).encode(), out / "report.html")
    return md


def _series(df: pd.DataFrame) -> str:
    """The column naming a run's policy: a varying policy key, else the run's label."""
    for c in ("policy.cache", "policy.scheduler", "policy.prefetch", "policy.placement"):
        if c in df.attrs.get("config_columns", []) and c in df.columns and \
                not df.duplicated(subset=[c]).any():
            return c
    return "label"


def _sim_section(rep: Report, df: pd.DataFrame) -> None:
    rep.h("Simulated runs")
    config = [c for c in df.attrs.get("config_columns", []) if c in df.columns
              and not c.startswith(("output.", "hydra"))
              and df[c].astype(str).nunique() > 1]  # varying among these runs
    df.attrs["config_columns"] = config
    metrics = [c for c in KEY_METRICS if c in df.columns]
    rep.p(f"{len(df)} runs. Config columns are the keys that differ between runs; every metric "
          f"is in `table.csv`.")
    rep.table(df[["label", *config[:8], *metrics]])
    from sim.common.files import atomic_write_bytes

    atomic_write_bytes(df.to_csv(index=False).encode(), rep.out / "table.csv")
    s = _series(df)
    _overview(rep, df, s)
    _cdfs(rep, df, s)
    budget = "cluster.expert_budget_fraction"
    if budget in df.columns and df[budget].nunique() > 1:
        overrides = df.attrs.get("overrides", [])
        hue = next((c for c in ("policy.cache", "policy.prefetch", "policy.scheduler")
                    if c in overrides), "label")
        if df.duplicated(subset=[hue, budget]).any() or not df.duplicated(subset=[hue]).any():
            return  # no series with two memories (the demo: one run per approach)
        for y, what in (("e2e_s.p50", "end-to-end latency p50 (s)"),
                        ("routing_fidelity", "routing fidelity")):
            if y in df.columns:
                compare_plot(df, budget, y, hue, rep.out / f"{y.split('.')[0]}_vs_memory.png",
                             title=f"{what} against expert memory", caption=rep.command,
                             xlabel="expert memory (share of the experts on the GPU)",
                             ylabel=what)
                rep.figure(f"{y.split('.')[0]}_vs_memory.png", f"{what} against expert memory "
                           f"(eMoE's Fig. 2 view), one line per policy.")
    if "workload.rate_rps" in df.columns and df["workload.rate_rps"].nunique() > 1:
        hue = "policy.scheduler" if "policy.scheduler" in df.columns else None
        compare_plot(df, "workload.rate_rps", "slo_attainment", hue, rep.out / "slo_vs_rate.png",
                     title="SLO attainment against request rate", caption=rep.command,
                     xlabel="request rate (requests/s)", ylabel="SLO attainment")
        rep.figure("slo_vs_rate.png", "SLO attainment against request rate, per scheduler.")


def _overview(rep: Report, df: pd.DataFrame, s: str) -> None:
    panels = [(c, t) for c, t in (("hit_rate", "expert hit rate"), ("h2d_bytes", "bytes copied (GB)"),
                                  ("ttft_s.p50", "TTFT p50 (s)"), ("tpot_s.p50", "TPOT p50 (s)"),
                                  ("e2e_s.p90", "end-to-end p90 (s)"),
                                  ("slo_attainment", "SLO attainment")) if c in df.columns]
    if not panels:
        return
    plt = pyplot()
    ncol = 3
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(10, 3.1 * nrow), squeeze=False)
    names = [str(v) for v in df[s]]
    for ax, (col, title) in zip(axes.flat, panels):
        vals = df[col].astype(float) / (1e9 if col == "h2d_bytes" else 1.0)
        ax.bar(range(len(names)), vals, color=[color(n) for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05 if is_share(col) else None)
        ax.grid(alpha=0.3, axis="y")
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("per run (one colour per policy)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, rep.out / "overview.png", rep.command)
    rep.figure("overview.png", "Hit rate, bytes copied, latency and SLO attainment per run.")


def _cdfs(rep: Report, df: pd.DataFrame, s: str) -> None:
    import numpy as np

    tables = []
    for _, row in df.iterrows():
        path = Path(row["run_dir"]) / "requests.parquet"
        if path.is_file():
            tables.append((str(row[s]), pd.read_parquet(path, columns=["ttft_s", "e2e_s"])))
    if not tables:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, what in ((axes[0], "ttft_s", "time to first token (s)"),
                          (axes[1], "e2e_s", "end-to-end latency (s)")):
        for name, t in tables:
            v = np.sort(t[col].dropna().to_numpy())
            if len(v):
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label(name),
                        **line_style(name))
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel(what + " (log scale above 0.1)")
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("latency CDFs", fontsize=10)
    fig.tight_layout()
    save_figure(fig, rep.out / "latency_cdf.png", rep.command)
    rep.figure("latency_cdf.png", "Latency CDFs per run (further left is better).")


def _replay_section(rep: Report, runs: list[Path]) -> None:
    from analysis.results import load_records

    rep.h("Cache replay: hit rate against expert memory")
    frames = []
    for r in runs:
        d = load_records(r, "results")
        frames.append(d)
    df = pd.concat(frames, ignore_index=True)
    hue = "policy"
    if df.duplicated(subset=["policy", "capacity_frac"]).any():
        df["policy_run"] = df["run"].astype(str) + ": " + df["policy"].astype(str)
        hue = "policy_run"
    df.attrs["config_columns"] = []
    cols = [c for c in ("run", "policy", "capacity_frac", "capacity", "hit_rate",
                        "gap_to_belady_hit_rate", "routing_fidelity", "loads", "h2d_bytes")
            if c in df.columns]
    rep.table(df[cols])

    def against_memory(y: str, name: str, title: str, ylabel: str, caption: str) -> None:
        compare_plot(df, "capacity_frac", y, hue, rep.out / name, title=title,
                     caption=rep.command, xlabel="experts resident per layer (share)",
                     ylabel=ylabel)
        rep.figure(name, caption)

    against_memory("hit_rate", "hit_rate_vs_memory.png",
                   "hit rate against expert memory (Belady: dashed black)", "hit rate",
                   "Hit rate against expert memory per policy, with Belady's optimal curve.")
    if "routing_fidelity" in df.columns and (df["routing_fidelity"] < 1).any():
        against_memory("routing_fidelity", "fidelity_vs_memory.png",
                       "routing fidelity (share of expert choices served as routed)",
                       "routing fidelity", "Routing fidelity: a rerouting policy trades it "
                       "for loads (1.0 for every demand-loading policy).")
        if "loads" in df.columns:
            against_memory("loads", "loads_vs_memory.png",
                           "expert loads (host-to-device copies)", "expert loads",
                           "Expert loads: what rerouting saves.")


def _placement_section(rep: Report, runs: list[Path]) -> None:
    from analysis.results import load_records

    rep.h("Placement: max / mean GPU load (held-out half)")
    df = pd.concat([load_records(r, "results") for r in runs], ignore_index=True)
    df = df[df.get("skipped").isna()] if "skipped" in df.columns else df
    cols = [c for c in ("run", "policy", "train_max_over_mean", "test_max_over_mean",
                        "test_batch_max_over_mean", "moved_experts") if c in df.columns]
    rep.table(df[cols])
    long = df.melt(id_vars=["policy"], value_vars=[c for c in cols if "max_over_mean" in c],
                   var_name="measure", value_name="max_over_mean")
    long.attrs["config_columns"] = []
    compare_plot(long, "policy", "max_over_mean", "measure", rep.out / "placement.png",
                 title="max / mean GPU load per placement (1.0 = perfect balance)",
                 caption=rep.command, xlabel="placement", ylabel="max / mean GPU load")
    rep.figure("placement.png", "Max/mean GPU load per placement: planning half, test half, "
               "test half per batch.")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
