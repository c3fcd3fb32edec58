import json

import pandas as pd
import pytest

from analysis.results import find_runs, load_records, load_runs
from sim.app.cli import main
from sim.common.errors import MoesimError


def _run(d, overrides, metrics):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path):
    for i, (cache, p99) in enumerate([("lru", 2.0), ("lifo", 1.5), ("belady", 1.0)]):
        _run(tmp_path / str(i), [f"policy.cache={cache}", "seed=3"],
             {"ttft_s": {"p99": p99, "p50": p99 / 2}, "requests_completed": 10,
              "results": [{"policy": cache, "capacity_frac": f, "hit_rate": f * p99}
                          for f in (0.25, 0.5)]})
    return tmp_path


def test_load_runs_flattens_metrics_and_parses_overrides(sweep):
    df = load_runs(sweep)
    assert list(df["policy.cache"]) == ["lru", "lifo", "belady"]
    assert list(df["ttft_s.p99"]) == [2.0, 1.5, 1.0]
    assert (df["seed"] == 3).all() and pd.api.types.is_integer_dtype(df["seed"])
    assert "results" not in df.columns


def test_load_records_expands_lists(sweep):
    df = load_records(sweep)
    assert len(df) == 6
    assert df.loc[(df.policy == "lifo") & (df.capacity_frac == 0.5), "hit_rate"].item() == 0.75


def test_report_writes_table_markdown_and_plot(sweep, capsys):
    out = sweep / "rep"
    rc = main(["report", str(sweep), "--records", "results", "--x", "capacity_frac",
               "--y", "hit_rate", "--hue", "policy", "--out", str(out)])
    assert rc == 0
    assert (out / "plot.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "Regenerate: `moesim report" in md
    header = next(line for line in md.splitlines() if line.startswith("| "))
    assert header == "| run | policy.cache | seed | capacity_frac | policy | hit_rate |"
    assert sum(1 for line in md.splitlines() if "| belady |" in line) == 2
    assert len(pd.read_csv(out / "table.csv")) == 6


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.json" in err
    with pytest.raises(MoesimError):
        find_runs(tmp_path / "missing")


def test_report_unknown_column(sweep, capsys):
    assert main(["report", str(sweep), "--x", "nope", "--y", "ttft_s.p99"]) == 2
    assert "column 'nope'" in capsys.readouterr().err


def test_runs_sharing_an_x_value_are_not_averaged(tmp_path, capsys):
    """all-resident and lru both have policy.cache=lru: two bars, never one mean."""
    from analysis.plots import resolve_repeats

    for name, hit in (("all-resident", 1.0), ("lru", 0.09)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"hit_rate": hit}))
        (d / "config.json").write_text(json.dumps({"label": name, "config": {
            "policy": {"cache": "lru"}, "cluster": {"expert_budget_fraction": 1.0 if hit == 1 else 0.5}}}))
    (tmp_path / "broken" / ".hydra").mkdir(parents=True)  # a run without metrics
    df = load_runs(tmp_path)
    df["x"] = "lru"
    d, hue, ylabel = resolve_repeats(df, "x", "hit_rate", None)
    assert hue == "label" and sorted(d["_y"]) == [0.09, 1.0] and ylabel == "hit_rate"
    assert [f["label"] for f in df.attrs["failed"]] == ["broken"]
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "broken" in md and "| all-resident |" in md and "| lru |" in md


def test_repeats_over_seeds_are_a_named_mean(tmp_path):
    from analysis.plots import resolve_repeats

    rows = [{"policy.cache": "lru", "seed": s, "hit_rate": h, "label": f"s{s}"}
            for s, h in ((0, 0.4), (1, 0.6))]
    df = pd.DataFrame(rows)
    df.attrs["config_columns"] = ["policy.cache", "seed"]
    d, _, ylabel = resolve_repeats(df, "policy.cache", "hit_rate", None)
    assert d["_y"].tolist() == [0.5] and "mean over 2 seeds" in ylabel
