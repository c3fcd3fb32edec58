"""The reports of ``moesim experiment emoe`` and ``moesim experiment huang``: the paper's figure
beside ours first, then one section per part with its table and figures (one colour per policy,
:mod:`analysis.style`; every figure carries the command that regenerates it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.plots import command_line, pyplot, save_figure
from analysis.report import Report
from analysis.style import MARKERS, color, label, line_style


def _lines(ax: Any, df: pd.DataFrame, x: str, y: str, hue: str, logx: bool = False) -> None:
    """One line per ``hue`` value in its policy's colour; each its own marker, smaller and on top
    of the one before, so lines that coincide (every demand-loading policy at fidelity 1) all
    stay visible."""
    for j, (name, g) in enumerate(df.groupby(hue, sort=False)):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], marker=MARKERS[j % len(MARKERS)], markersize=max(3.0, 8.0 - 1.2 * j),
                zorder=2 + j, label=label(name), **line_style(name))
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)


def _fig(rep: Report, name: str, caption: str, draw: Any, ncols: int = 1,
         size: tuple[float, float] = (6.4, 4.0)) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=size, squeeze=False)
    draw(*axes[0])
    fig.tight_layout()
    save_figure(fig, rep.out / name, rep.command)
    rep.figure(name, caption)


def _section(rep: Report, title: str, rows: list[dict[str, Any]], note: str | None = None
             ) -> pd.DataFrame:
    """A part's heading, its note (if any) and its table of ``rows``; the table's frame."""
    rep.h(title)
    if note is not None:
        rep.p(note)
    df = pd.DataFrame(rows)
    rep.table(df)
    return df


def _finish(rep: Report, out: Path, title: str) -> Path:
    from sim.common.files import atomic_write_bytes

    md = out / "report.md"
    atomic_write_bytes(rep.markdown().encode(), md)
    atomic_write_bytes(rep.html(title).encode(), out / "report.html")
    return md


def _start(res: dict[str, Any], out: Path, title: str) -> Report:
    """A report in ``out`` (created) headed by the title, the command, the routing and the
    paper-against-ours table."""
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out, command_line())
    rep.h(title, 1)
    rep.p(f"Regenerate: `{rep.command}`")
    src = res["source"]
    rep.p(("Routing: " + src) if res.get("real") else ("**Routing: " + src + ".** Give "
          "trace.path=FILE (e.g. DeepSeek-V2-Lite imported from ../shared/data) for real routing."))
    rep.h("Paper against ours")
    rep.table(pd.DataFrame(res["paper_vs_ours"]))
    return rep


def _slo_note(sims: Path) -> str:
    """The SLO the scheduler runs were held to, from their metrics.json (``slo``), as a
    sentence; empty when no run recorded one."""
    import json

    from analysis.units import human_seconds

    slos = set()
    for path in sorted(sims.glob("*/metrics.json")):
        slo = json.loads(path.read_text()).get("slo") or {}
        if "ttft_s" in slo and "tpot_s" in slo:
            slos.add((float(slo["ttft_s"]), float(slo["tpot_s"])))
    if len(slos) != 1:
        return ""
    ttft, tpot = slos.pop()
    return (f" SLO attainment: the share of requests with TTFT <= {human_seconds(ttft, True)} "
            f"and TPOT <= {human_seconds(tpot, True)} (serving.ttft_slo_s, serving.tpot_slo_s).")


# ------------------------------------------------------------------------------------------------
def write_emoe_report(res: dict[str, Any], out: Path) -> Path:
    rep = _start(res, out, "eMoE (Tairin et al.) reproduced")
    rep.p("Differences in setting: eMoE ran Mixtral/OpenMoE on 4x A100-40GB and measured output "
          "similarity; here DeepSeek-V2-Lite (64 experts, top-6) on one simulated A100-40GB. "
          "'Routing fidelity' is the share of expert choices served by the expert the trace chose; "
          "a rerouted choice is not necessarily a wrong output, so fidelity is a pessimistic "
          "stand-in for their accuracy. The simulator does not reroute: latency comes from "
          "predict-and-load runs, fidelity from the cache replay with rerouting (no loads once the "
          "cache is full). The trace has one task ('unknown'), so task-aware loading reduces to "
          "load-weighted prediction of one task.")
    mem = res.get("memory")
    if mem:
        sims = _section(rep, "Expert memory against latency and routing fidelity", mem["sims"])
        ref = sims[sims["policy"].isin(["all-resident", "on-demand"])]
        curve = sims[~sims["policy"].isin(["all-resident", "on-demand"])]

        def draw(ax: Any, ax2: Any) -> None:
            _lines(ax, curve, "budget", "e2e_p50_s", "policy")
            for _, r in ref.iterrows():
                ax.scatter([r["budget"]], [r["e2e_p50_s"]], s=60, marker="*",
                           color=color(r["policy"]), label=r["policy"], zorder=3)
            ax.set_xlabel("expert memory (share of the experts on the GPU)")
            ax.set_ylabel("end-to-end latency p50 (s)")
            ax.set_ylim(bottom=0)
            ax.set_xlim(0, 1.05)
            ax.set_title("latency (simulator)", fontsize=10)
            ax.legend(fontsize=8)
            rp = pd.DataFrame(mem["replay"])
            rp = rp[rp["series"].str.endswith("-reroute")]
            ax2.axhspan(0.937, 0.998, color="0.85", label="eMoE's accuracy, 93.7-99.8 %")
            _lines(ax2, rp, "capacity_frac", "routing_fidelity", "series")
            ax2.set_xlabel("expert memory (share of each layer's experts)")
            ax2.set_ylabel("routing fidelity")
            ax2.set_ylim(0, 1.02)
            ax2.set_xlim(0, 1.05)
            ax2.set_title("routing fidelity (cache replay, rerouting)", fontsize=10)
            ax2.legend(fontsize=8, loc="lower right")
        _fig(rep, "memory.png", "eMoE's Fig. 2 view: latency against expert memory (left, "
             "simulated, predict-and-load) and routing fidelity when absent experts are "
             "rerouted (right, cache replay).", draw, 2, (11, 4.2))
        rp = pd.DataFrame(mem["replay"])
        rep.table(rp[[c for c in ("series", "capacity_frac", "hit_rate", "routing_fidelity",
                                  "loads", "h2d_bytes") if c in rp.columns]])
    per = res.get("period")
    if per:
        rows = _section(rep, "Prediction period p", per["rows"])

        def draw_p(ax: Any, ax1: Any, ax2: Any) -> None:
            from matplotlib.ticker import NullFormatter

            # fidelity (rerouting) and hit rate (loading) are different quantities: own panels
            for a, col, what, c in ((ax, "routing_fidelity", "routing fidelity (reroute)",
                                     color("emoe-reroute")),
                                    (ax1, "sim_hit_rate", "hit rate (predict-and-load)",
                                     color("emoe")),
                                    (ax2, "e2e_p50_s", "end-to-end latency p50 (s)",
                                     color("emoe"))):
                a.plot(rows["period"], rows[col], marker="o", color=c)
                a.axvline(40, color="0.5", linestyle=":", label="eMoE's p = 40")
                a.set_xscale("log")
                a.set_xticks(rows["period"].tolist())
                a.set_xticklabels([str(p) for p in rows["period"]])
                a.xaxis.set_minor_formatter(NullFormatter())
                a.set_xlabel("prediction period p (prompts between predictions)")
                a.set_ylabel(what)
                a.set_ylim(0, 1.02 if a is not ax2 else None)
                a.grid(alpha=0.3)
            ax2.set_ylim(bottom=0)
            ax.legend(fontsize=8, loc="lower left")
        _fig(rep, "period.png", "Prediction period: routing fidelity when rerouting (left), hit "
             "rate when loading (middle), simulated latency (right). The simulator does not "
             "charge the predictor's own run time, which is what makes small p costly in the "
             "paper.", draw_p, 3, (13, 3.8))
    sch = res.get("scheduler")
    if sch:
        c = sch["constants"] or {}
        note = (f"eMoE's constants profiled on the simulated system (FCFS at the lowest rate): "
                f"c = {c.get('per_token_s', 0) * 1e3:.3f} ms per processed token (GPU busy time / "
                f"tokens), dE = {c.get('load_latency_s', 0) * 1e3:.3f} ms expert-fetch stall per "
                f"iteration. `emoe-literal`: the algorithm read literally (a request already past "
                f"its SLO stops all admission) with the old 1 ms default."
                + _slo_note(out.parent / "scheduler" / "sim"))
        rows = _section(rep, "SLO-aware scheduling under rising load", sch["rows"], note)

        def draw_s(ax: Any, ax2: Any) -> None:
            for name, g in rows.groupby("scheduler", sort=False):
                g = g.sort_values("rate_rps")
                st = {"color": color("emoe_sched" if name == "emoe" else name)}
                if name == "emoe-literal":
                    st = {"color": color("emoe_sched"), "linestyle": "--"}
                ax.plot(g["rate_rps"], g["e2e_mean_s"], marker="o", label=name, **st)
                ax2.plot(g["rate_rps"], g["slo_attainment"], marker="o", label=name, **st)
            ax.set_xlabel("request rate (requests/s)")
            ax.set_ylabel("end-to-end latency, mean (s)")
            ax.set_ylim(bottom=0)
            ax2.set_xlabel("request rate (requests/s)")
            ax2.set_ylabel("SLO attainment")
            ax2.set_ylim(0, 1.02)
            for a in (ax, ax2):
                a.grid(alpha=0.3)
            ax2.legend(fontsize=8, loc="lower left")
        _fig(rep, "scheduler.png", "Schedulers under rising load, all experts resident: mean "
             "latency (left) and SLO attainment (right).", draw_s, 2, (11, 4.0))
    return _finish(rep, out, "moesim experiment emoe")


# ------------------------------------------------------------------------------------------------
def write_huang_report(res: dict[str, Any], out: Path) -> Path:
    rep = _start(res, out, "Huang et al. (NeurIPS 2024) reproduced")
    rep.p("Differences in setting: Huang et al. ran a 52B LM MoE (512 experts, top-2) and NLLB "
          "(128 experts) on 8x V100; here DeepSeek-V2-Lite's routing (64 experts, top-6). No GPU "
          "was used: gating times are the analytic cost model's estimate.")
    cache = res.get("cache")
    if cache:
        rep.h("Expert buffering: LIFO against LRU, FIFO and Belady")
        df = pd.DataFrame(cache["records"])
        rep.table(df[["mode", "policy", "capacity_frac", "hit_rate", "gap_to_belady_hit_rate"]])

        def draw(ax: Any, ax2: Any) -> None:
            for a, mode in ((ax, "batch"), (ax2, "plain")):
                d = df[df["mode"] == mode]
                _lines(a, d, "capacity_frac", "hit_rate", "policy")
                a.set_ylim(0, 1.02)
                a.set_xlim(0, 1)
                a.set_xlabel("experts resident per layer (share)")
                a.set_ylabel("hit rate")
                bs = cache["batch_size"]
                a.set_title(f"batch setting (Huang: union of {bs} tokens, experts in id order)"
                            if mode == "batch" else "per token", fontsize=9)
            ax2.legend(fontsize=8, loc="lower right")
        _fig(rep, "buffering.png", "Hit rate against expert memory; Belady dashed black.",
             draw, 2, (11, 4.0))
    pl = res.get("placement")
    if pl:
        df = _section(rep, "Load balancing: placement against contiguous", pl["rows"],
                      pl["metric_note"])

        def draw_p(ax: Any) -> None:
            import numpy as np

            x = np.arange(len(df))
            for j, (col, what) in enumerate((("batch_max_share_worst", "worst batch"),
                                             ("batch_max_share_mean", "mean over batches"),
                                             ("max_share", "whole test half"))):
                ax.bar(x + (j - 1) * 0.27, df[col], width=0.26, label=what,
                       color=[color(p) for p in df["policy"]], alpha=(1.0, 0.65, 0.35)[j],
                       edgecolor="black", linewidth=0.4)
            ax.axhline(1.0 / pl["num_gpus"], color="black", linestyle=":", linewidth=1,
                       label=f"perfect balance 1/{pl['num_gpus']}")
            ax.set_xticks(x)
            ax.set_xticklabels(df["policy"])
            ax.set_ylabel("busiest GPU's share of the tokens")
            ax.set_ylim(0, max(0.3, float(df["batch_max_share_worst"].max()) * 1.3))
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            ax.grid(alpha=0.3, axis="y")
        _fig(rep, "placement.png", "Busiest GPU's share of a layer's tokens (Huang's 'max "
             "device load'): worst batch, mean over batches, whole test half.", draw_p, 1,
             (8.5, 4.0))
    ga = res.get("gating")
    if ga:
        df = _section(rep, "Dynamic against static-capacity gating (cost-model estimate)",
                      ga["rows"], ga["note"])

        def draw_g(ax: Any) -> None:
            ax.plot(df["batch_tokens"], df["static_ms"], marker="o", color="#d62728",
                    label=f"static capacity (factor {ga['capacity_factor']:g}, padded)")
            ax.plot(df["batch_tokens"], df["dynamic_ms"], marker="o", color="#1f77b4",
                    label="dynamic (tokens sorted by expert, no padding, no drops)")
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(df["batch_tokens"].tolist(), [str(b) for b in df["batch_tokens"]])
            ax.xaxis.set_minor_formatter(NullFormatter())
            for axis in (ax.yaxis,):
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(ScalarFormatter())
            ax.set_xlabel("tokens per batch")
            ax.set_ylabel("expert FFN time, one layer (ms, estimate)")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        _fig(rep, "gating.png", "Cost-model ESTIMATE (no GPU): expert FFN time of one MoE layer "
             "under static-capacity and dynamic gating, on the trace's real expert counts.",
             draw_g, 1, (6.4, 4.0))
    return _finish(rep, out, "moesim experiment huang")
