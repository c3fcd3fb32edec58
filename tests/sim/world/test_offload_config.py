"""The offloading facts by hand: stored bytes of quantised experts, the host link a PCIe slot and
pageable memory leave, an expert computed on the host CPU, and the settings that are refused."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from sim.common.errors import ConfigError
from sim.cost.analytic import AnalyticCost
from sim.serving.plan import check_config
from sim.world.config import HardwareConfig, ModelConfig, SimConfig, register_configs, to_sim_config
from sim.world.model import dense_weight_bytes, expert_bytes, layer_weight_bytes
from sim.world.offload_config import (
    PCIE_X16_BYTES_PER_S,
    HostConfig,
    OffloadConfig,
    check_offload,
    host_link_bytes_per_s,
)


def _cfg(*overrides):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return to_sim_config(compose("sim", overrides=list(overrides)))


def test_quantised_expert_bytes_by_hand():
    m = _cfg("model=mixtral-8x7b", "quant=hqq-2bit").model
    assert (m.expert_bits, m.dense_bits, m.dequant) == (2.6, 4.5, "fused")
    # 3 x 4096 x 14336 parameters at 2.6 bits: 57,252,249.6 bytes (vs 352,321,536 in bf16)
    assert expert_bytes(m) == 57252249
    assert expert_bytes(ModelConfig()) == 3 * 4096 * 14336 * 2
    # dense: attention at 4.5 bits, embeddings and LM head in bf16
    att = 4096 * (32 + 2 * 8) * 128 + 32 * 128 * 4096
    assert dense_weight_bytes(m) == int(att * 32 * 4.5 / 8 + 2 * 32000 * 4096 * 2)
    assert layer_weight_bytes(m) == int(att * 4.5 / 8) + 8 * 57252249


def test_host_link_pcie_slot_and_pageable_memory():
    off = OffloadConfig()
    gen4_card = 25e9
    assert host_link_bytes_per_s(gen4_card, HostConfig(), off) == 25e9  # no host: the card's link
    gen3 = HostConfig(name="h", pcie_gen=3)
    assert host_link_bytes_per_s(gen4_card, gen3, off) == PCIE_X16_BYTES_PER_S[3] == 12e9
    assert host_link_bytes_per_s(gen4_card, HostConfig(name="h", pcie_gen=4, pcie_lanes=8), off) == 12.5e9
    assert host_link_bytes_per_s(gen4_card, HostConfig(name="h", pcie_gen=5), off) == 25e9  # card caps
    pageable = OffloadConfig(host_memory="pageable")
    assert host_link_bytes_per_s(gen4_card, HostConfig(name="h", pcie_gen=3, pageable_fraction=0.5),
                                 pageable) == 6e9


def test_an_expert_on_the_host_cpu_by_hand():
    cfg = _cfg("model=mixtral-8x7b", "quant=hqq-2bit", "host=desktop-pcie4", "hardware=a100-80gb")
    cost = AnalyticCost(cfg.model, cfg.hardware, host=cfg.host, offload=cfg.offload)
    # one token: 2 x 3 x 4096 x 14336 = 352 MFLOP at 2.05 TFLOP/s x 0.5 = 0.344 ms; the 57.25 MB
    # expert streamed at 51.2 GB/s x 0.6 = 1.864 ms: memory bound
    one, many = cost.cpu_expert_s([1, 64]).tolist()
    assert one == pytest.approx(57252249.6 / (51.2e9 * 0.6))
    assert many == pytest.approx(64 * 2 * 3 * 4096 * 14336 / (2.05e12 * 0.5))  # 22 ms: compute bound
    assert cost.cpu_expert_s([0]).tolist() == [0.0]
    # the hidden state there and back: 2 x (10 us + 8,192 B / 25 GB/s)
    assert cost.cpu_transfer_s(1) == pytest.approx(2 * (10e-6 + 4096 * 2 / 25e9))
    assert cost.cpu_transfer_s(0) == 0.0


def test_dequantisation_reads():
    m = ModelConfig(expert_bits=4.0, dense_bits=4.0, dequant="unpack")
    hw = HardwareConfig()
    unpack = AnalyticCost(m, hw)
    # unpacked: the 0.5 stored bytes, then 2 written and 2 read in bf16 per parameter
    assert unpack._expert_read == 0.5 + 4.0 and unpack.dense_read == 4.5
    fused = AnalyticCost(ModelConfig(expert_bits=4.0, dequant="fused", dequant_efficiency=0.5), hw)
    assert fused._expert_read == 1.0 and fused.dense_read == 2.0  # dense stays bf16
    plain = AnalyticCost(ModelConfig(), hw)
    assert plain._expert_read == 2.0 and plain.dense_read == 2.0


@pytest.mark.parametrize("offload,host,cache,msg", [
    (OffloadConfig(expert_exec="gpu"), HostConfig(), "lru", "offload.expert_exec='gpu'"),
    (OffloadConfig(host_memory="swap"), HostConfig(), "lru", "offload.host_memory='swap'"),
    (OffloadConfig(expert_exec="cpu"), HostConfig(name="h", memory_bytes_per_s=1, flops_per_s={"avx2": 1}),
     "lru", "needs policy.cache=static"),
    (OffloadConfig(expert_exec="cpu"), HostConfig(), "static", "choose a host"),
    (OffloadConfig(expert_exec="auto"), HostConfig(name="h", memory_bytes_per_s=1, flops_per_s={"avx2": 1},
                                                   isa="amx"), "static", "host.isa='amx'"),
    (OffloadConfig(), HostConfig(flops_per_s={"avx2": float("nan")}), "lru", "host.flops_per_s.avx2=nan"),
    (OffloadConfig(), HostConfig(flops_per_s={"amx": -5.0}), "lru", "host.flops_per_s.amx=-5.0"),
    (OffloadConfig(layer_streaming=True, expert_exec="cpu"),
     HostConfig(name="h", memory_bytes_per_s=1, flops_per_s={"avx2": 1}), "static", "layer_streaming"),
])
def test_settings_that_cannot_be_modelled_are_one_line(offload, host, cache, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        check_offload(offload, host, cache)


def test_check_config_refuses_cpu_experts_with_replicated_placement_and_two_cache_sizes():
    cfg = _cfg("policy.cache=static", "offload.expert_exec=cpu", "host=desktop-pcie4",
               "policy.placement=eplb")
    with pytest.raises(ConfigError, match="every expert on one GPU"):
        check_config(cfg)
    cfg = _cfg("cluster.experts_per_layer=2", "cluster.expert_budget_bytes=1000000000")
    with pytest.raises(ConfigError, match="give one"):
        check_config(cfg)
    ok = _cfg("policy.cache=static", "offload.expert_exec=cpu", "host=server-spr")
    assert isinstance(ok, SimConfig) and check_config(ok).expert_parallel == 8


def test_host_memory_must_hold_the_experts_the_gpu_does_not():
    # Mixtral in bf16: 256 experts of 352 MB = 90.2 GB; one A100 holding 10 % (25 experts,
    # 8.8 GB): 81.4 GB left for a Colab host of 12.7 GB
    cfg = _cfg("model=mixtral-8x7b", "hardware=a100-80gb", "cluster=1x1", "host=colab-t4",
               "cluster.expert_budget_fraction=0.1")
    with pytest.raises(ConfigError, match=r"13 GB of memory cannot hold the offloaded weights \(81\.4 GB\)"):
        check_config(cfg)
    # in 2.6 bits the same 231 experts take 13.2 GB: still too much; 4 per layer on the GPU fits
    cfg = _cfg("model=mixtral-8x7b", "quant=hqq-2bit", "hardware=a100-80gb", "cluster=1x1",
               "host=colab-t4", "cluster.experts_per_layer=4")
    assert check_config(cfg).expert_parallel == 1


def test_an_eager_engine_pays_its_layer_overhead_once_per_layer():
    cfg = _cfg("model=mixtral-8x7b", "hardware=a100-80gb", "engine=hf-generate")
    assert cfg.engine.layer_overhead_s == 1.0e-3
    from sim.cost import make_cost_model

    eager = make_cost_model("analytic", cfg.model, cfg.hardware, engine=cfg.engine)
    graphs = make_cost_model("analytic", cfg.model, cfg.hardware)
    assert eager.attention_s(0, 1, 100, 1) - graphs.attention_s(0, 1, 100, 1) == pytest.approx(1.0e-3)
    assert eager.attention_s(0, 0, 0, 1) == 0.0  # no token, no layer


def test_the_replay_and_the_simulator_price_a_quantised_expert_the_same(tmp_path):
    """One fact, two drivers: ``moesim cache model=... quant=...`` moves the bytes the simulator's
    plan copies (57,252,249 per 2.6-bit Mixtral expert)."""
    from types import SimpleNamespace

    from sim.world.facts import expert_bytes_of_trace

    m = _cfg("model=mixtral-8x7b", "quant=hqq-2bit").model
    meta = SimpleNamespace(model="mixtral-8x7b", extra={})
    assert expert_bytes_of_trace(meta, m) == expert_bytes(m) == 57252249
    assert expert_bytes_of_trace(meta, None) == 3 * 4096 * 14336 * 2  # the trace's model: bf16
