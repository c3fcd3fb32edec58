"""The compiled per-iteration scalars (sim/cost/compiled_analytic.py) give the cost model's bits:
on the shipped models and hardware, and on random models, parallel layouts and batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.cost import AnalyticCost, Parallel
from sim.cost.analytic import ATTENTION_TILE_TOKENS, kv_read_tokens
from sim.world.config import HardwareConfig, ModelConfig

ca = pytest.importorskip("sim.cost.compiled_analytic")
CONF = Path(__file__).resolve().parents[3] / "conf"


def _model(name: str) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml")))


def _hardware(name: str) -> HardwareConfig:
    return HardwareConfig(**OmegaConf.to_container(OmegaConf.load(CONF / "hardware" / f"{name}.yaml")))


def _reference(cost: AnalyticCost, start: np.ndarray, alloc: np.ndarray, shards: int):
    """What fused_walk computed with the cost model's methods before the kernel."""
    T = int(alloc.sum())
    pairs = int(sum(a * s + a * (a + 1) // 2 for s, a in zip(start.tolist(), alloc.tolist())))
    kv = kv_read_tokens(start, alloc)
    decode = int((alloc == 1).sum())
    prefill = T - decode
    attn = cost.attention_s(prefill, decode, pairs, shards, kv_tokens=kv) + \
        cost.layer_collectives_s(T)
    return (T, pairs, kv, decode, attn, cost.gate_s(T),
            cost.iteration_s(prefill, decode, pairs, kv, len(alloc)))


def _same(cost: AnalyticCost, start: np.ndarray, alloc: np.ndarray, shards: int) -> None:
    got = ca.batch_costs(start, alloc, ATTENTION_TILE_TOKENS, ca.cost_params(cost), shards)
    want = _reference(cost, start, alloc, shards)
    assert got[:4] == want[:4]
    for g, w in zip(got[4:], want[4:]):  # the same bits, not merely close
        assert np.float64(g).tobytes() == np.float64(w).tobytes(), (g, w)


def _batch(rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    start = rng.integers(0, 40_000, B).astype(np.int64)
    alloc = np.where(rng.random(B) < 0.7, 1, rng.integers(0, 9000, B)).astype(np.int64)
    return start, alloc


def test_hand_worked_decode_token_on_one_gpu():
    # one request at position 9 decodes one token on one H100, Mixtral: T = 1, pairs = 1 * 9 + 1,
    # KV read: one tile over 9 cached tokens plus its own = 10
    m, hw = ModelConfig(), HardwareConfig()
    cost = AnalyticCost(m, hw)
    T, pairs, kv, decode, attn, gate, pre = ca.batch_costs(
        np.array([9]), np.array([1]), ATTENTION_TILE_TOKENS, ca.cost_params(cost), 1)
    assert (T, pairs, kv, decode) == (1, 10, 10, 1)
    flops_s = hw.bf16_flops * hw.flops_efficiency
    hbm_s = hw.hbm_bytes_per_s * hw.hbm_efficiency
    # gate: 2 * 1 * 4096 * 8 FLOPs against 4096 * 8 * 2 weight bytes + 4096 * 2 activation bytes
    g = hw.kernel_latency_s + max(2.0 * 4096 * 8 / flops_s, (4096 * 8 * 2 + 4096 * 2) / hbm_s)
    assert gate == pytest.approx(g, rel=1e-15)
    assert attn > 0 and pre > 0


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v3", "deepseek-v2-lite",
                                   "qwen3-30b-a3b", "mixtral-8x22b"])
@pytest.mark.parametrize("hw", ["h100-sxm", "a100-80gb", "rtx-4090"])
def test_shipped_models_bit_for_bit(model, hw):
    rng = np.random.default_rng(len(model) * 7 + len(hw))
    m = _model(model)
    for par, shards in [(Parallel(), 1), (Parallel(gpus=8), 8), (Parallel(gpus=8, tp=2), 8),
                        (Parallel(gpus=16, tp=4, inter_node=True), 16)]:
        cost = AnalyticCost(m, _hardware(hw), par, engine_overhead_s=2.5e-3)
        for B in (1, 3, 64, 256):
            _same(cost, *_batch(rng, B), shards)


def test_random_models_bit_for_bit():
    rng = np.random.default_rng(11)
    for _ in range(60):
        m = dataclasses.replace(
            ModelConfig(), hidden_size=int(rng.integers(64, 9000)),
            num_experts=int(rng.integers(2, 300)), dense_layers=int(rng.integers(0, 4)),
            dense_intermediate_size=int(rng.integers(0, 20000)), vocab_size=int(rng.integers(1000, 200000)),
            shared_experts=int(rng.integers(0, 3)), num_heads=int(rng.integers(1, 129)),
            num_kv_heads=int(rng.integers(1, 17)), head_dim=int(rng.integers(16, 257)),
            dtype=str(rng.choice(["bf16", "fp8", "fp16"])),
            expert_bits=float(rng.choice([0.0, 4.25])), dense_bits=float(rng.choice([0.0, 4.25, 8.5])),
            dequant=str(rng.choice(["none", "unpack", "fused"])),
            dequant_efficiency=float(rng.uniform(0.3, 1.0)))
        hw = dataclasses.replace(HardwareConfig(), kernel_latency_s=float(rng.uniform(0, 2e-5)),
                                 bf16_flops=float(rng.uniform(1e13, 2e15)),
                                 hbm_bytes_per_s=float(rng.uniform(3e11, 8e12)),
                                 iteration_overhead_s=float(rng.uniform(0, 1e-2)))
        gpus = int(rng.choice([1, 2, 4, 8, 16, 64]))
        tp = int(rng.choice([t for t in (1, 2, 4, 8) if gpus % t == 0]))
        par = Parallel(gpus=gpus, tp=tp, inter_node=bool(rng.integers(0, 2)))
        cost = AnalyticCost(m, hw, par, engine_overhead_s=float(rng.uniform(0, 1e-3)),
                            layer_overhead_s=float(rng.choice([0.0, 3e-5])))
        for B in (1, 2, 17, 300):
            _same(cost, *_batch(rng, B), int(rng.integers(1, 2 * gpus + 1)))


def test_empty_batch_costs_nothing():
    cost = AnalyticCost(ModelConfig(), HardwareConfig())
    out = ca.batch_costs(np.array([5, 7]), np.array([0, 0]), ATTENTION_TILE_TOKENS,
                         ca.cost_params(cost), 8)
    assert out == (0, 0, 0, 0, 0.0, 0.0, 0.0)
