"""Cost models: the analytic roofline's limits, the table model's interpolation, its range report
and its CSV checks (with a hand-written example profile)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.cost import AnalyticCost, CostModel, make_cost_model
from sim.cost.table import TableCost, read_profile
from sim.world.config import HardwareConfig, ModelConfig
from sim.world.model import expert_bytes

MIX = ModelConfig()  # Mixtral-8x7B defaults
H100 = HardwareConfig()

# A hand-written profile in the documented layout (values are round, not measured).
PROFILE = """op,device,dtype,tokens,experts,hidden,intermediate,bytes,time_s
expert,h100-sxm,bf16,1,0,4096,14336,0,0.0002
expert,h100-sxm,bf16,64,0,4096,14336,0,0.0003
expert,h100-sxm,bf16,256,0,4096,14336,0,0.0008
expert,h100-sxm,bf16,64,0,2048,1408,0,0.00001
gate,h100-sxm,bf16,64,8,4096,0,0,0.00001
copy,h100-sxm,bf16,0,0,0,0,1000000,0.00003
copy,h100-sxm,bf16,0,0,0,0,100000000,0.002
"""


def test_analytic_roofline_limits():
    c = AnalyticCost(MIX, H100)
    assert isinstance(c, CostModel)
    t1, t_big, t0 = c.expert_s(np.array([1, 100_000, 0]))
    # one token: weight-read bound
    assert t1 == pytest.approx(H100.kernel_latency_s + expert_bytes(MIX) / (H100.hbm_bytes_per_s * 0.8),
                               rel=1e-3)
    # many tokens: compute bound, linear in tokens
    flops = 2 * 3 * 4096 * 14336 * 100_000
    assert t_big == pytest.approx(H100.kernel_latency_s + flops / (H100.bf16_flops * 0.6), rel=1e-6)
    assert t0 == 0.0
    assert c.copy_s(55e9) == pytest.approx(1.0 + H100.host_link_latency_s)
    assert c.all_to_all_s(1e9, 1, False) == 0.0
    assert c.all_to_all_s(1e9, 8, True) > c.all_to_all_s(1e9, 8, False) > 0


def test_table_interpolates_and_reports_out_of_range(tmp_path):
    p = tmp_path / "h100.csv"
    p.write_text(PROFILE)
    t = TableCost.from_csv(p, AnalyticCost(MIX, H100))
    got = t.expert_s(np.array([0, 1, 64, 160, 256]))
    assert got.tolist() == pytest.approx([0.0, 0.0002, 0.0003, 0.00055, 0.0008])
    assert t.report() == {"out_of_range": {}, "fallback": {}}
    big = t.expert_s(np.array([512]))
    assert big[0] == pytest.approx(0.0016)  # scaled per token from the last point, and counted
    assert t.report()["out_of_range"] == {"expert": 1}
    # unmeasured op: analytic fallback, counted
    assert t.attention_s(10, 0, 55, 1) == AnalyticCost(MIX, H100).attention_s(10, 0, 55, 1)
    assert t.report()["fallback"] == {"attention": 1}
    # copy bandwidth from the largest measured copy
    assert t.host_link_bytes_per_s == pytest.approx(5e10)


def test_table_rejects_bad_rows(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(PROFILE.replace("expert,h100-sxm,bf16,64,0,4096,14336,0,0.0003",
                                 "expert,h100-sxm,bf16,64,0,4096,14336,0,-1"))
    with pytest.raises(ConfigError, match=r"bad.csv: row 3: time_s .* expected a positive number"):
        read_profile(p)
    p.write_text("op,device,time_s\nexpert,h100-sxm,1\n")
    with pytest.raises(ConfigError, match="missing columns"):
        read_profile(p)
    p.write_text(PROFILE.replace("gate,", "gatex,"))
    with pytest.raises(ConfigError, match="row 6: op 'gatex'"):
        read_profile(p)
    p.write_text(PROFILE)
    with pytest.raises(ConfigError, match="no rows for device='a100-40gb'"):
        TableCost.from_csv(p, AnalyticCost(MIX, HardwareConfig(name="a100-40gb")))


def test_make_cost_model_names():
    with pytest.raises(ConfigError, match="cost_table"):
        make_cost_model("table", MIX, H100, "")
    with pytest.raises(ConfigError, match="unknown cost model"):
        make_cost_model("magic", MIX, H100)


def test_sim_reports_table_out_of_range_in_metrics(tmp_path):
    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Simulation
    from sim.serving.binding import bind
    from sim.serving.testing import random_pool, tiny_config, workload

    cfg = tiny_config(layers=2, experts=4, top_k=1)
    csv = tmp_path / "stub.csv"
    csv.write_text("op,device,dtype,tokens,experts,hidden,intermediate,bytes,time_s\n"
                   "expert,stub,bf16,1,0,1,1,0,0.001\nexpert,stub,bf16,2,0,1,1,0,0.0015\n")
    cost = make_cost_model("table", cfg.model, cfg.hardware, str(csv))
    pool = random_pool(2, 4, 1, entries=2, tokens=30, rng=np.random.default_rng(0))
    wl = workload([0.0, 0.0], [20, 20], [3, 3])
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)), cost,
                     np.random.default_rng(0))
    sim.run()
    m = compute_metrics(sim)
    assert m["cost_model"]["out_of_range"]["expert"] > 0  # 40 prompt tokens over 4 experts > 2
    assert m["cost_model"]["fallback"]["attention"] > 0
