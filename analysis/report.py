"""The report of a run or sweep directory: ``report.md`` and ``report.html`` with every plot that
the directory's results support, the tables, the failed runs, and beside each figure the command
that regenerates it.

What is drawn depends on what the runs hold (each plot only where its data is present):

- simulator runs (``moesim sim``, ``moesim demo``; :mod:`analysis.report_sim`): what differs
  between the runs, their metrics in human units with the SLO stated, bars per run (named by the
  keys that vary), latency CDFs; hit rate and latency against expert memory (eMoE's Fig. 2 view,
  fidelity too where a run reroutes) when ``cluster.expert_budget_fraction`` varies; SLO
  attainment against request rate when ``workload.rate_rps`` varies;
- cache replays (``moesim cache``, the demo's ``replay/``): hit rate against expert memory per
  demand-loading policy, Belady dashed black; a rerouting policy's routing fidelity in its own
  table and plot (it has no hit rate);
- placements (``moesim placement``): max/mean GPU load per placement, aggregate and per batch.

Every policy keeps its colour in every plot (:func:`analysis.style.color`, through
:func:`analysis.style.policy_of` for a run named by its overrides). Tables
(:mod:`analysis.report_doc`) are in human units, fold constant columns into a caption and are
split to fit a 1,400 px window. Rows that share an x value are never
averaged silently (:func:`analysis.plots.resolve_repeats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.plots import compare_plot
from analysis.report_doc import Report


# ------------------------------------------------------------------------------------------------
def write_report(root: str | Path, out: str | Path, command: str, title: str = "") -> Path:
    """Write ``out/report.md`` and ``out/report.html`` (and their PNGs) for ``root``; returns
    the Markdown path."""
    from analysis.report_sim import sim_section
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
        sim_section(rep, df)
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


def _replay_section(rep: Report, runs: list[Path]) -> None:
    """Hit rate against memory for the policies that load what they miss; a policy that
    reroutes absent experts instead (eMoE's predict-and-reroute) has no hit rate to show: its
    share of choices served as routed is its routing *fidelity*, tabled and plotted apart."""
    from analysis.results import load_records

    rep.h("Cache replay: hit rate against expert memory")
    df = pd.concat([load_records(r, "results") for r in runs], ignore_index=True)
    df["_policy"] = df["policy"].astype(str)
    hue = "policy"
    if df.duplicated(subset=["policy", "capacity_frac"]).any():
        df["policy_run"] = df["run"].astype(str) + ": " + df["policy"].astype(str)
        hue = "policy_run"
    df.attrs["config_columns"] = []
    colours = dict(zip(df[hue], df["_policy"]))
    fid = df["routing_fidelity"] if "routing_fidelity" in df.columns else pd.Series(1.0, df.index)
    rerouting = set(df.loc[fid < 1, hue])
    loading, rerouted = df[~df[hue].isin(rerouting)], df[df[hue].isin(rerouting)]
    rep.table(loading[[c for c in ("policy", "run", "capacity_frac", "capacity", "hit_rate",
                                   "gap_to_belady_hit_rate", "loads", "h2d_bytes")
                       if c in df.columns]])

    def against_memory(d: pd.DataFrame, y: str, name: str, title: str, ylabel: str,
                       caption: str, draw: Any = None) -> None:
        compare_plot(d, "capacity_frac", y, hue, rep.out / name, title=title,
                     caption=rep.command, xlabel="experts resident per layer (share)",
                     ylabel=ylabel, policy=colours, legend="policy", draw=draw)
        rep.figure(name, caption)

    against_memory(loading, "hit_rate", "hit_rate_vs_memory.png",
                   "hit rate against expert memory (Belady: dashed black)", "hit rate",
                   "Hit rate against expert memory per policy that loads what it misses, with "
                   "Belady's optimal curve.")
    if len(rerouted):
        rep.h("Rerouting: routing fidelity, not a hit rate", 3)
        demand = ", ".join(dict.fromkeys(loading["policy"].astype(str)))
        rep.p(f"A rerouting policy serves an absent expert's tokens by a resident expert instead "
              f"of loading it: nothing misses, and what it gives up is routing fidelity (the "
              f"share of expert choices served by the expert the router chose). Every "
              f"demand-loading policy ({demand}) has fidelity 1.")
        rep.table(rerouted[[c for c in ("policy", "run", "capacity_frac", "capacity",
                                        "routing_fidelity", "loads", "h2d_bytes")
                            if c in df.columns]])

        def reference(ax: Any) -> None:
            ax.axhline(1.0, color="0.45", linestyle=(0, (1, 2)), linewidth=1.5, zorder=1,
                       label=f"demand loading: {demand}")
        against_memory(rerouted, "routing_fidelity", "fidelity_vs_memory.png",
                       "routing fidelity: share of expert choices served as routed",
                       "routing fidelity", "Routing fidelity of the rerouting "
                       "policies (dotted: 1.0, every demand-loading policy).", reference)
    if "loads" in df.columns and len(rerouted):
        against_memory(df, "loads", "loads_vs_memory.png", "expert loads (host-to-device "
                       "copies) against expert memory", "expert loads", "Expert loads of every "
                       "policy: what rerouting saves.")


def _placement_section(rep: Report, runs: list[Path]) -> None:
    from analysis.results import load_records

    rep.h("Placement: max / mean GPU load (held-out half)")
    df = pd.concat([load_records(r, "results") for r in runs], ignore_index=True)
    df = df[df.get("skipped").isna()] if "skipped" in df.columns else df
    cols = [c for c in ("policy", "run", "train_max_over_mean", "test_max_over_mean",
                        "test_batch_max_over_mean", "moved_experts") if c in df.columns]
    rep.table(df[cols])
    names = {"train_max_over_mean": "planning half", "test_max_over_mean": "test half",
             "test_batch_max_over_mean": "test half, per batch"}
    long = df.melt(id_vars=["policy"], value_vars=[c for c in cols if "max_over_mean" in c],
                   var_name="measure", value_name="max_over_mean")
    long["measure"] = long["measure"].map(names)
    long.attrs["config_columns"] = []
    compare_plot(long, "measure", "max_over_mean", "policy", rep.out / "placement.png",
                 title="max / mean GPU load per placement (1.0 = perfect balance)",
                 caption=rep.command, xlabel="measure", ylabel="max / mean GPU load")
    rep.figure("placement.png", "Max/mean GPU load per placement (one colour per policy): "
               "planning half, test half, test half per batch.")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
