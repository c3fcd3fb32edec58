"""The published suite's contract (benchmarks/published/rows.csv) and arithmetic, without a
simulation: every row has every column, the offloaded flag agrees with the setting, at most 10 % of
the offloaded rows are excluded, every group's baseline shares model, hardware, host and workload,
the metrics are known; the ratio of ratios and the decode_tok_s time worked by hand."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "published" / "run.py"
_spec = importlib.util.spec_from_file_location("published_run", RUN)
pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pr)  # (puts the suite's folder on sys.path: its rooms below)
import suite_figures as sf  # noqa: E402
import suite_rows as sr  # noqa: E402

ROWS = sr.read_rows(RUN.parent / "rows.csv")


def _row(**kw) -> dict[str, str]:
    """A valid resident row (a copy of the suite's first), fields replaced by ``kw``."""
    r = dict(ROWS[0])
    r.update({k: str(v) for k, v in kw.items()})
    return r


def _off(**kw) -> dict[str, str]:
    base = dict(offloaded="yes", suite="offload", overrides="cluster.experts_per_layer=4")
    base.update(kw)
    return _row(**base)


def test_rows_csv_keeps_the_contract():
    with open(RUN.parent / "rows.csv", newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == sr.COLUMNS
    sr.check_rows(ROWS)
    assert all(all(r[c] is not None for c in sr.COLUMNS) for r in ROWS)
    assert {r["metric"] for r in ROWS} <= set(sr.METRICS)
    off = [r for r in ROWS if r["offloaded"] == "yes"]
    assert sum(1 for r in off if r["excluded"]) <= 0.10 * len(off)


def test_the_first_suite_is_selectable_as_its_50_rows():
    serving = [r for r in ROWS if r["suite"] == "serving"]
    assert len(serving) == 50 and [r["id"] for r in serving] == [r["id"] for r in ROWS[:50]]
    assert {r["id"] for r in serving if r["offloaded"] == "yes"} == \
        {"moeinf_a5000_mixtral", "moeinf_a5000_deepseek", "moeinf_a5000_qwen3"}


def test_mixtral_offloading_table2_is_whole():
    mo = [r for r in ROWS if r["source"] == "https://arxiv.org/abs/2312.17238"]
    assert len(mo) == 32 and len({r["group"] for r in mo}) == 8
    for g in {r["group"] for r in mo}:
        members = [r for r in mo if r["group"] == g]
        # the full algorithm is the baseline, and each ablation is slower than it
        assert members[0]["id"].endswith("_full") and len(members) == 4
        assert all(float(m["measured"]) <= float(members[0]["measured"]) for m in members)
    assert {r["hardware"] for r in mo} == {"a100-80gb", "rtx-3080-mobile", "rtx-3060", "t4"}


@pytest.mark.parametrize("kw, offloaded", [
    (dict(expert_budget="fill"), True),
    (dict(expert_budget="0.5"), True),
    (dict(expert_budget="1.0"), False),
    (dict(overrides="cluster.experts_per_layer=2"), True),
    (dict(overrides="cluster.experts_per_layer=0"), False),
    (dict(overrides="offload.layer_streaming=true"), True),
    (dict(overrides="offload.layer_streaming=false"), False),
    (dict(overrides="offload.expert_exec=cpu"), True),
    (dict(overrides="offload.expert_exec=auto"), True),
    (dict(overrides="offload.expert_exec=copy"), False),
    (dict(overrides="cluster.expert_budget_fraction=0.99"), True),
    (dict(overrides="cluster.expert_budget_fraction=1.0"), False),
    (dict(overrides="cluster.expert_budget_bytes=1000"), True),
    (dict(overrides="cluster.expert_budget_bytes=0"), False),
    (dict(overrides="quant=hqq-2bit host=desktop-pcie3"), False),
    (dict(), False),
])
def test_setting_offloaded(kw, offloaded):
    assert sr.setting_offloaded(_row(**kw)) is offloaded


def test_a_flag_that_disagrees_with_the_setting_is_refused_naming_the_row():
    with pytest.raises(sr.SuiteError, match=r"row bad: offloaded=no disagrees"):
        sr.check_rows([_row(id="bad", overrides="offload.layer_streaming=true")])
    with pytest.raises(sr.SuiteError, match=r"row bad: offloaded=yes disagrees"):
        sr.check_rows([_row(id="bad", offloaded="yes")])
    sr.check_rows([_off(id="good")])


@pytest.mark.parametrize("kw, message", [
    (dict(metric="tokens_per_s"), "unknown metric"),
    (dict(offloaded="maybe"), "offloaded must be yes or no"),
    (dict(suite="other"), "suite must be"),
    (dict(measured="0"), "measured must be > 0"),
    (dict(measured="n/a"), "could not convert"),
    (dict(overrides="quant"), "not key=value"),
    (dict(overrides="a=1 a=2"), "given twice"),
    (dict(excluded="host not stated"), "only offloaded rows may be excluded"),
])
def test_bad_fields_are_one_error_naming_the_row(kw, message):
    with pytest.raises(sr.SuiteError, match=rf"^row x: .*{message}"):
        sr.check_rows([_row(id="x", **kw)])


def test_missing_column_and_duplicate_id():
    r = _row(id="x")
    del r["group"]
    with pytest.raises(sr.SuiteError, match=r"row x: missing columns \['group'\]"):
        sr.check_rows([r])
    with pytest.raises(sr.SuiteError, match="row y: id given twice"):
        sr.check_rows([_row(id="y"), _row(id="y")])


def test_excluded_share_is_at_most_ten_percent():
    ok = [_off(id=f"r{i}", excluded="host not stated" if i == 0 else "") for i in range(10)]
    sr.check_rows(ok)  # 1 of 10
    bad = [_off(id=f"r{i}", excluded="host not stated" if i < 2 else "") for i in range(10)]
    with pytest.raises(sr.SuiteError, match="2 of 10 offloaded rows excluded"):
        sr.check_rows(bad)


@pytest.mark.parametrize("field, value", [
    ("model", "mixtral-8x22b"), ("hardware", "t4"), ("batch", "2"), ("input_len", "64"),
    ("output_len", "64"), ("metric", "tpot_s"), ("gpus", "2"),
    ("overrides", "cluster.experts_per_layer=4 host=desktop-pcie4"),
])
def test_a_group_shares_model_hardware_host_and_workload(field, value):
    b = _off(id="b", group="g", overrides="cluster.experts_per_layer=4 host=desktop-pcie3")
    same = _off(id="s", group="g", overrides="cluster.experts_per_layer=2 host=desktop-pcie3")
    sr.check_rows([b, same])  # the policy (k) may differ
    other = dict(same, id="o", **{field: value})
    with pytest.raises(sr.SuiteError, match="row o: group g shares .* baseline b"):
        sr.check_rows([b, same, other])


def test_an_excluded_baseline_excludes_its_group():
    b = _off(id="b", group="g", excluded="host not stated")
    m = _off(id="m", group="g")
    rows = [b, m] + [_off(id=f"r{i}") for i in range(20)]
    with pytest.raises(sr.SuiteError, match="row m: group g's baseline b is excluded"):
        sr.check_rows(rows)
    # a member may be excluded alone (its ratio of ratios is then not computed)
    sr.check_rows([m, dict(b, group="g")] + [_off(id=f"r{i}") for i in range(20)])


def test_published_figures_as_times():
    # decode_tok_s: 2.5 tokens/s is 0.4 s per token
    assert sr.published_s(_row(metric="decode_tok_s", measured="2.5")) == pytest.approx(0.4)
    # out_tok_s_per_gpu: 64 sequences x 128 tokens at 1024 tok/s/GPU on 2 GPUs = 4 s
    assert sr.published_s(_row(metric="out_tok_s_per_gpu", measured="1024", batch="64",
                               output_len="128", gpus="2")) == pytest.approx(4.0)
    assert sr.published_s(_row(metric="tpot_s", measured="0.02")) == pytest.approx(0.02)


def test_ratio_of_ratios_by_hand():
    # group g: baseline b 2 tok/s published (0.5 s), moesim 0.4 s; row r 1 tok/s (1.0 s), moesim
    # 1.2 s: moesim slows by 3x where the source slowed by 2x -> 1.5. Group h: baseline only.
    res = [dict(id="b", group="g", measured=0.5, moesim=0.4),
           dict(id="x", group="", measured=1.0, moesim=1.0),
           dict(id="r", group="g", measured=1.0, moesim=1.2),
           dict(id="s", group="g", measured=0.25, moesim=0.2),
           dict(id="h1", group="h", measured=3.0, moesim=2.0)]
    rr = sf.ratio_of_ratios(res)
    assert rr == pytest.approx({"b": 1.0, "r": 1.5, "s": 1.0, "h1": 1.0})


def test_summaries_count_bands_sources_and_groups():
    res = [dict(id="a", suite="serving", offloaded="no", ratio=1.1, source="https://x.org/p",
                group="", measured=1.0, moesim=1.1),
           dict(id="b", suite="serving", offloaded="no", ratio=0.5, source="https://x.org/p",
                group="", measured=1.0, moesim=0.5),
           dict(id="c", suite="offload", offloaded="yes", ratio=2.0, group="g", measured=1.0,
                moesim=2.0, source="https://github.com/o/r/blob/abc/f.csv"),
           dict(id="d", suite="offload", offloaded="yes", ratio=2.2, group="g", measured=1.0,
                moesim=2.2, source="https://github.com/o/r/blob/def/g.csv"),
           dict(id="e", suite="offload", offloaded="yes", ratio=3.0, group="g", measured=1.0,
                moesim=3.0, source="https://arxiv.org/abs/1")]
    lines = sf.summaries(res, sf.ratio_of_ratios(res))
    assert lines[0] == ("serving suite (the first 50 rows): 2 rows, median |ratio - 1| = 0.300, "
                        "1 outside [0.67, 1.5]")
    assert lines[1] == ("offloaded (not excluded): 3 rows from 2 sources, median |ratio - 1| = "
                        "1.200, 3 outside [0.67, 1.5]")
    # d: 2.2 / 2.0 = 1.1 inside [0.85, 1.18]; e: 1.5 outside; the baseline c is not counted
    assert lines[2] == ("groups: 1, 1 of 2 non-baseline rows (50%) with ratio of ratios in "
                        "[0.85, 1.18]")


def test_band_edges_and_source_key():
    assert sf.band_stats([0.67, 1.5, 0.669, 1.51]) == (pytest.approx(0.4155), 2)  # |r-1| 0.33 0.331 0.5 0.51
    assert sf.source_key("https://github.com/efeslab/fiddler/blob/1bf8/x.csv") == \
        "github.com/efeslab/fiddler"
    assert sf.source_key("https://arxiv.org/abs/2312.17238/") == "arxiv.org/abs/2312.17238"


def test_row_overrides_come_last():
    ov = pr.base_overrides(_off(overrides="cluster.experts_per_layer=4 engine=none"))
    assert ov[-2:] == ["cluster.experts_per_layer=4", "engine=none"]
    assert ov[0] == f"model={ROWS[0]['model']}"


def test_an_unknown_override_key_is_an_error_naming_the_row():
    r = _row(id="typo", overrides="cluster.no_such_key=1")
    with pytest.raises(sr.SuiteError, match=r"^row typo: .*no_such_key"):
        from hydra import initialize_config_module

        from sim.world.config import register_configs

        register_configs()
        with initialize_config_module(config_module="conf", version_base="1.3"):
            pr.compose_row(r)


def test_check_mode_exits_2_with_one_line_on_a_bad_csv(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "rows.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sr.COLUMNS)
        w.writeheader()
        w.writerow(_row(id="flag", offloaded="yes"))
    monkeypatch.setattr("sys.argv", ["run.py", "--check", "--rows", str(bad)])
    assert pr.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: row flag: offloaded=yes disagrees")
