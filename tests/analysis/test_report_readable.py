"""Reports a person can read (issue 22): human units, tables that fit the page, the SLO stated,
a sweep's runs named by what varies, one colour per policy in every plot, routing fidelity never
drawn as a hit rate, hit rate against memory when the runs vary memory, one sentence per run
where a run says why. Each test names what the code before the fix did."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import analysis.plots as plots
import analysis.report as report
from analysis.report import write_report
from analysis.report_doc import TABLE_WIDTH_PX, Report, column_width_px, split_columns
from analysis.report_sim import overview_figure, run_names, run_policies, why_sentences
from analysis.results import load_runs
from analysis.style import COLORS, color, policy_of
from analysis.units import format_cell, human_bytes, human_seconds


def _sim_metrics(hit: float, h2d: float, e2e: float, **extra) -> dict:
    return {"kind": "sim", "hit_rate": hit, "routing_fidelity": 1.0, "h2d_bytes": h2d,
            "fetch_stall_s": 162.8, "ttft_s": {"p50": 0.03097, "p99": 38.68},
            "tpot_s": {"p50": 1.137, "p90": 1.5}, "e2e_s": {"p50": e2e, "p90": 2 * e2e},
            "tokens_per_s": 38.9, "slo_attainment": 0.008333, "sim_time_s": 168.0,
            "slo": {"ttft_s": 2.0, "tpot_s": 0.2}, **extra}


def _sweep(root, runs):
    """Hydra-like run folders: .hydra/overrides.yaml and metrics.json."""
    for i, (overrides, metrics) in enumerate(runs):
        d = root / str(i)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (d / "metrics.json").write_text(json.dumps(metrics))
    return root


@pytest.fixture
def memory_sweep(tmp_path):
    """LRU and LIFO at two memories: labels are the full override strings."""
    runs = []
    for cache in ("lru", "lifo"):
        for frac, hit in ((0.25, 0.1), (0.5, 0.4)):
            hit += 0.2 * (cache == "lifo")
            runs.append(([f"policy.cache={cache}", f"cluster.expert_budget_fraction={frac}",
                          "workload.num_requests=20"],
                         _sim_metrics(hit, 4.071e12 * (1 - hit), 20 - 10 * hit)))
    return _sweep(tmp_path / "sweep", runs)


def test_units_are_human():
    assert human_bytes(4.071e12) == "4.07 TB" and human_bytes(12_457_082_880) == "12.5 GB"
    assert human_bytes(0) == "0 B" and human_bytes(352e6) == "352 MB"
    assert human_seconds(0.03097) == "31.0 ms" and human_seconds(168.0) == "168 s"
    assert human_seconds(2.0, trim=True) == "2 s" and human_seconds(0.2, trim=True) == "200 ms"
    assert human_seconds(25e-6) == "25.0 us"
    cells = {"h2d_bytes": (4.071e12, "4.07 TB"), "ttft_s.p50": (1.786, "1.79 s"),
             "e2e_p50_s": (0.4098, "410 ms"), "static_ms": (12.5, "12.5 ms"),
             "tokens_per_s": (204.6, "204.6"), "hit_rate": (0.3218, "32.2 %"),
             "slo_attainment": (0.008333, "0.8 %"), "loads": (1346538, "1,346,538"),
             "capacity_frac": (0.25, "0.25"), "workload.rate_rps": (4.0, "4"),
             "policy": ("lru", "lru")}
    assert {c: format_cell(c, v) for c, (v, _) in cells.items()} == \
        {c: want for c, (_, want) in cells.items()}
    assert format_cell("hit_rate", float("nan")) == ""


def test_runs_table_in_human_units_fits_and_states_the_slo(memory_sweep):
    """Before: ``4.071e+12`` in the table, one 16-column table 1,348 px wide, no SLO."""
    md = write_report(memory_sweep, memory_sweep / "report", "moesim report X").read_text()
    assert not re.search(r"\de[+-]\d", md) and "| 3.66 TB | 19.0 s |" in md
    assert "ttft_s.p50 31.0 ms" in md
    assert "SLO: TTFT <= 2 s and TPOT <= 200 ms" in md
    assert "Same in every row: routing_fidelity 100.0 %" in md  # constant: into the caption
    html = (memory_sweep / "report" / "report.html").read_text()
    assert "e2e_<wbr>s.<wbr>p50" in html  # headers may wrap
    rep = Report(memory_sweep, "x")  # every part of a wide table estimated inside the page
    rep.table(load_runs(memory_sweep).drop(columns=["run_dir"]), fold_constant=False)
    parts = [b[1] for b in rep.blocks if b[0] == "table"]
    assert len(parts) > 1
    for df in parts:
        assert sum(column_width_px(str(c), df[c].astype(str).tolist())
                   for c in df.columns) <= TABLE_WIDTH_PX


def test_wide_tables_split_and_keep_their_first_column():
    df = pd.DataFrame({"run": ["a", "b"], **{f"metric_number_{i}_s": [0.5, 1.5] for i in range(30)}})
    parts = split_columns(df, TABLE_WIDTH_PX)
    assert len(parts) > 1 and all(p.columns[0] == "run" for p in parts)
    assert [c for p in parts for c in p.columns[1:]] == list(df.columns[1:])


def test_sweep_runs_are_named_by_what_varies_and_coloured_by_policy(memory_sweep):
    """Before: bar labels were the whole override strings (overlapping each other and the panel
    titles), and the two LRU runs had two colours (a hash of the label)."""
    df = load_runs(memory_sweep)
    varying = ["policy.cache", "cluster.expert_budget_fraction"]
    df["_name"] = run_names(df, varying)
    df["_policy"] = run_policies(df)
    assert df["_name"].tolist() == ["lru, memory 0.25", "lru, memory 0.5", "lifo, memory 0.25",
                                    "lifo, memory 0.5"]
    assert df["_policy"].tolist() == ["lru", "lru", "lifo", "lifo"]
    fig = overview_figure(df, "TTFT <= 2 s and TPOT <= 200 ms")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = []
    for ax in fig.axes:
        if not ax.axison:
            continue
        bars = [p.get_facecolor() for p in ax.patches]
        assert bars[0] == bars[1] != bars[2] == bars[3]  # one colour per policy
        assert [t.get_text() for t in ax.get_xticklabels()] == df["_name"].tolist()
        boxes += [t.get_window_extent(r) for t in ax.get_xticklabels()]
        boxes.append(ax.title.get_window_extent(r))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    plots.pyplot().close(fig)


def test_one_palette_maps_policies_to_colours():
    a = "policy.cache=lru cluster.expert_budget_fraction=0.25 workload.num_requests=20"
    b = "policy.cache=lru cluster.expert_budget_fraction=0.5 workload.num_requests=20"
    assert policy_of(a) == "lru" and color(a) == color(b) == color("lru") == COLORS["lru"]
    assert color("keep_predicted+emoe_a") == COLORS["keep_predicted"]
    assert color("policy.cache=belady") == "#000000"
    assert color("somebody-new") == color("somebody-new")


def _spy_colours(monkeypatch) -> list:
    """The simulator report's plots, each as (y, {series: its colour}), as they are drawn."""
    import analysis.report_sim as report_sim

    calls = []
    real = plots.compare_plot

    def spy(df, x, y, hue, path, **kw):
        calls.append((y, {h: color(kw["policy"].get(h, h)) for h in df[hue]}))
        return real(df, x, y, hue, path, **kw)

    monkeypatch.setattr(report_sim, "compare_plot", spy)
    return calls


def test_sweep_varying_memory_gets_hit_rate_against_memory(memory_sweep, monkeypatch):
    """Before: latency and fidelity against memory only (the fidelity a flat 1.0), no hit
    rate; series coloured by the hash of a label."""
    calls = _spy_colours(monkeypatch)
    md = write_report(memory_sweep, memory_sweep / "report", "moesim report X").read_text()
    assert "hit_rate_vs_memory.png" in md and "routing_fidelity_vs_memory" not in md
    assert (memory_sweep / "report" / "hit_rate_vs_memory.png").stat().st_size > 5000
    assert [y for y, _ in calls] == ["hit_rate", "e2e_s.p50"]
    assert calls[0][1] == {"lru": COLORS["lru"], "lifo": COLORS["lifo"]}


def test_replay_fidelity_is_never_a_hit_rate(tmp_path, monkeypatch):
    """Before: eMoE-reroute's fidelity was drawn as a hit rate beside LRU's, with a
    gap_to_belady, and the flat fidelity line of LRU hid behind LIFO's."""
    results = []
    for frac, (lru, lifo, bel, fid) in ((0.25, (0.47, 0.41, 0.67, 0.28)),
                                        (0.5, (0.73, 0.63, 0.88, 0.53))):
        for pol, hit in (("lru", lru), ("lifo", lifo), ("belady", bel)):
            results.append({"policy": pol, "capacity_frac": frac, "hit_rate": hit,
                            "gap_to_belady_hit_rate": bel - hit, "routing_fidelity": 1.0,
                            "loads": 1000, "h2d_bytes": 1.7e10})
        results.append({"policy": "emoe-reroute", "capacity_frac": frac, "hit_rate": fid,
                        "gap_to_belady_hit_rate": bel - fid, "routing_fidelity": fid,
                        "loads": 7, "h2d_bytes": 1.2e8})
    run = tmp_path / "replay"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"kind": "cache_replay", "results": results}))
    calls = []
    real = plots.compare_plot

    def spy(df, x, y, hue, path, **kw):
        calls.append((y, set(df[hue])))
        return real(df, x, y, hue, path, **kw)

    monkeypatch.setattr(report, "compare_plot", spy)
    md = write_report(run, tmp_path / "rep", "moesim report X").read_text()
    hit_table = md.split("## Cache replay")[1].split("![")[0]
    assert "emoe-reroute" not in hit_table and "gap_to_belady_hit_rate" in hit_table
    fid_section = md.split("### Rerouting")[1]
    assert "| emoe-reroute | 0.25 | 28.0 % |" in fid_section.replace("capacity |", "")
    assert dict(calls)["hit_rate"] == {"lru", "lifo", "belady"}
    assert dict(calls)["routing_fidelity"] == {"emoe-reroute"}
    assert "demand-loading policy (lru, lifo, belady) has fidelity 1" in md


def test_series_that_coincide_stay_visible(tmp_path, monkeypatch):
    """Two policies on the same values: different markers, the later one smaller and on top."""
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, caption=None: figs.append(fig))
    df = pd.DataFrame({"policy": ["lru", "lru", "lifo", "lifo"], "x": [0.25, 0.5, 0.25, 0.5],
                       "routing_fidelity": [1.0] * 4})
    plots.compare_plot(df, "x", "routing_fidelity", "policy", tmp_path / "f.png")
    lines = [ln for ln in figs[0].axes[0].get_lines() if len(ln.get_xdata()) == 2]
    assert len(lines) == 2
    assert lines[0].get_marker() != lines[1].get_marker()
    assert lines[1].get_zorder() > lines[0].get_zorder()
    assert lines[1].get_markersize() < lines[0].get_markersize()
    assert lines[0].get_color() == COLORS["lru"] and lines[1].get_color() == COLORS["lifo"]
    assert figs[0].axes[0].get_ylim()[1] > 1.0  # a line at 1.0 is not on the frame
    plots.pyplot().close(figs[0])


def test_one_sentence_per_run_reads_the_why_field(tmp_path):
    """The place analysis.explain plugs into: a run's ``why`` (or ``explain(metrics)``) is one
    line under the comparison."""
    root = _sweep(tmp_path / "s", [(["policy.cache=lru"], _sim_metrics(0.1, 1e12, 5.0, why=
                                     "LRU waits on the link: 163 s of fetch stalls.")),
                                   (["policy.cache=lifo"], _sim_metrics(0.3, 1e12, 4.0))])
    md = write_report(root, root / "report", "moesim report X").read_text()
    assert "- **lru**: LRU waits on the link: 163 s of fetch stalls." in md
    assert "**lifo**" not in md
    df = load_runs(root)
    df["_name"] = run_names(df, ["policy.cache"])
    assert why_sentences(df, explain=lambda m: f"hit {m['hit_rate']}") == [
        ("lru", "hit 0.1"), ("lifo", "hit 0.3")]


def test_placement_bars_take_the_policy_colours(tmp_path, monkeypatch):
    import analysis.plots_cache as plots_cache

    figs = []
    monkeypatch.setattr(plots_cache, "save_figure", lambda fig, path: figs.append(fig))
    rows = [{"policy": p, "train_max_over_mean": 1.2, "test_max_over_mean": 1.3,
             "test_batch_max_over_mean": 1.5} for p in ("contiguous", "greedy", "eplb")]
    plots_cache.plot_placement(rows, tmp_path / "p.png")
    from matplotlib.colors import to_hex

    drawn = [to_hex(b.get_facecolor()) for b in figs[0].axes[0].patches if b.get_height() > 0]
    assert drawn[:3] == [COLORS["contiguous"], COLORS["greedy"], COLORS["eplb"]]
    plots.pyplot().close(figs[0])


def test_report_with_records_prints_human_units(tmp_path, capsys):
    """``moesim report DIR --records results``: before, ``h2d_bytes`` printed as 2.33e+13."""
    from sim.app.cli import main

    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"kind": "cache_replay", "results": [
        {"policy": "lru", "capacity_frac": 0.25, "hit_rate": 0.4732, "h2d_bytes": 23297132593152}]}))
    assert main(["report", str(run), "--records", "results", "--x", "capacity_frac",
                 "--y", "h2d_bytes", "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| r | 0.25 | 23.3 TB |" in md
    assert pd.read_csv(tmp_path / "o" / "table.csv")["h2d_bytes"].item() == 23297132593152


def test_memory_plots_keep_policy_colours_when_more_varies(tmp_path, monkeypatch):
    """LRU at two rates and two memories: one line per (policy, rate), both LRU blue."""
    runs = [(["policy.cache=lru", f"cluster.expert_budget_fraction={f}", f"workload.rate_rps={r}"],
             _sim_metrics(f / r, 1e12, r * f)) for r in (2, 4) for f in (0.25, 0.5)]
    root = _sweep(tmp_path / "s", runs)
    calls = _spy_colours(monkeypatch)
    write_report(root, root / "report", "moesim report X")
    got = dict(calls)
    assert got["hit_rate"] == {"lru, rate 2": COLORS["lru"], "lru, rate 4": COLORS["lru"]}
    assert got["slo_attainment"] == {f"memory {f}, rate {r}": COLORS["lru"]  # what varies
                                     for f in (0.25, 0.5) for r in (2, 4)}
