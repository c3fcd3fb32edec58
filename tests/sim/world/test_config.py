"""Config tests: every model/hardware composes with cited values; unknown keys are rejected;
the benchmark preset composes; a run writes its outputs and the same seed gives the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from sim.app.cli import main as cli_main
from sim.world.config import SimConfig, register_configs, to_sim_config
from sim.world.model import expert_bytes, kv_bytes_per_token

CONF = Path(__file__).resolve().parents[3] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))


def _compose(overrides):
    register_configs()
    with initialize_config_module("conf", version_base="1.3"):
        return to_sim_config(compose("sim", overrides=overrides))


def test_required_models_and_hardware_are_there():
    want = {"mixtral-8x7b", "mixtral-8x22b", "deepseek-v2-lite", "qwen3-30b-a3b", "deepseek-v3"}
    assert want <= set(MODELS)
    assert {"h100-sxm", "h200", "a100-40gb"} <= set(HARDWARE) and len(HARDWARE) >= 4


@pytest.mark.parametrize("name", MODELS)
def test_model_configs_compose_and_cite_a_source(name):
    cfg = _compose([f"model={name}"])
    m = cfg.model
    assert m.name == name and m.source and m.top_k <= m.num_experts
    assert expert_bytes(m) > 0 and kv_bytes_per_token(m) > 0


def test_published_model_numbers():
    mix = _compose(["model=mixtral-8x7b"]).model
    assert (mix.num_layers, mix.num_experts, mix.top_k, mix.hidden_size, mix.expert_intermediate_size) == \
        (32, 8, 2, 4096, 14336)
    assert expert_bytes(mix) == 3 * 4096 * 14336 * 2
    ds = _compose(["model=deepseek-v2-lite"]).model
    assert (ds.num_layers, ds.num_experts, ds.top_k, ds.shared_experts) == (26, 64, 6, 2)
    v3 = _compose(["model=deepseek-v3"]).model
    assert (v3.num_layers, v3.num_experts, v3.top_k, v3.hidden_size) == (58, 256, 8, 7168)


@pytest.mark.parametrize("name", HARDWARE)
def test_hardware_constants_are_cited(name):
    hw = _compose([f"hardware={name}"]).hardware
    text = (CONF / "hardware" / f"{name}.yaml").read_text()
    assert hw.source and text.lstrip().startswith("#")
    # consumer cards included (T4: 65 TFLOP/s, 8 GB on an RTX 2080, PCIe 3)
    assert hw.memory_bytes >= 8 * 10**9 and hw.bf16_flops > 1e13 and hw.host_link_bytes_per_s > 1e10
    assert hw.pcie_gen in (3, 4, 5)


def test_unknown_key_and_wrong_type_are_rejected():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        _compose(["model.bogus=1"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        _compose(["seed=notanint"])


def test_bench_preset():
    cfg = _compose(["experiment=bench_azure_mixtral", "workload.path=x.csv"])
    assert isinstance(cfg, SimConfig)
    assert cfg.model.name == "mixtral-8x7b" and cfg.hardware.name == "h100-sxm"
    assert (cfg.cluster.nodes, cfg.cluster.gpus_per_node, cfg.cluster.expert_parallel) == (1, 8, 8)
    assert cfg.cluster.expert_budget_fraction == 0.5
    assert (cfg.policy.cache, cfg.policy.prefetch, cfg.policy.placement, cfg.policy.scheduler) == \
        ("lru", "none", "contiguous", "fcfs")


ARGS = ["model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1", "workload.num_requests=12",
        "workload.rate_rps=8", "workload.prompt_tokens_mean=64", "workload.output_tokens_mean=8",
        "trace.pool_size=4", "trace.pool_tokens=256", "cluster.expert_budget_fraction=0.5"]


@pytest.mark.slow
def test_sim_run_writes_outputs_and_same_seed_same_bytes(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli_main(["sim", *ARGS, "seed=3", f"hydra.run.dir={a}",
                     "output.chrome_trace=trace.json", "output.chrome_trace_end_s=0.5"]) == 0
    assert "requests completed" in capsys.readouterr().out
    assert cli_main(["sim", *ARGS, "seed=3", f"hydra.run.dir={b}"]) == 0
    assert cli_main(["sim", *ARGS, "seed=4", "workload.max_requests=5", f"hydra.run.dir={c}"]) == 0
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    m = json.loads((a / "metrics.json").read_text())
    mc = json.loads((c / "metrics.json").read_text())
    assert m["requests_completed"] == 12 and mc["requests_completed"] == 5
    assert "wall_time_s" not in m and "wall_time_s" in json.loads((a / "run_info.json").read_text())
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(m[key]) >= {"p50", "p90", "p99"}
    for key in ("slo_attainment", "tokens_per_s", "peak_expert_bytes_per_gpu", "hit_rate", "h2d_bytes",
                "load_imbalance", "routing_fidelity", "sim_time_s"):
        assert key in m
    req = pq.read_table(a / "requests.parquet").to_pandas()
    assert len(req) == 12 and (req["completions"] == 1).all()
    trace = json.loads((a / "trace.json").read_text())
    cats = {e.get("cat") for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"compute", "copy"} <= cats
    assert all(e["ts"] < 0.5e6 + 1 for e in trace["traceEvents"] if e["ph"] == "X" and
               e["name"] == "attention L0")  # iterations that start in the window


def test_bad_workload_path_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # run_hydra turns the MoesimError into exit status 2
        cli_main(["sim", *ARGS, f"hydra.run.dir={tmp_path}", "workload.path=/nonexistent.csv"])
    assert exc.value.code == 2
    assert "workload.path=/nonexistent.csv: no such file" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("override,message", [
    ("policy.cache=nope", "unknown cache policy 'nope'"),
    ("cluster.expert_budget_fraction=2", "expected a fraction in (0, 1]"),
    ("cluster.expert_budget_fraction=0", "expected a fraction in (0, 1]"),
    ("policy.scheduler=nope", "unknown scheduler policy 'nope'"),
])
def test_impossible_configs_are_one_line_errors(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exc:
        cli_main(["sim", *ARGS, f"hydra.run.dir={tmp_path}", override])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "metrics.json").exists()


def test_single_run_composes_once_and_sweeps_still_ask_hydra(tmp_path, monkeypatch):
    """A single run skips Hydra's mode probe (one composition, not two), runs in RUN mode, and
    leaves ``Hydra.get_mode`` as it found it; ``-m`` still goes through Hydra's own probe."""
    import yaml
    from hydra._internal.hydra import Hydra

    calls = []
    original = Hydra.compose_config

    def counting(self, *a, **k):
        calls.append(k.get("run_mode"))
        return original(self, *a, **k)

    monkeypatch.setattr(Hydra, "compose_config", counting)
    get_mode = Hydra.get_mode
    assert cli_main(["sim", *ARGS, "workload.max_requests=2", f"hydra.run.dir={tmp_path / 'one'}"]) == 0
    assert len(calls) == 1 and Hydra.get_mode is get_mode
    hydra_yaml = yaml.safe_load((tmp_path / "one/.hydra/hydra.yaml").read_text())
    assert hydra_yaml["hydra"]["mode"] == "RUN"
    calls.clear()
    assert cli_main(["sim", "-m", *ARGS, "workload.max_requests=2", "seed=1,2",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 0
    assert len(calls) >= 2 and Hydra.get_mode is get_mode  # the probe, the sweep, its jobs
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) >= ["0", "1"]
