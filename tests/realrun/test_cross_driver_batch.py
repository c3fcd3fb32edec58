"""realrun and the cache replay count the same: realrun's replay and ``moesim cache mode=batch``
give identical counts on the same trace, batch size and capacity, for every online cache policy
(the one batch semantics, :func:`sim.world.facts.batch_executions`), and all three drivers size a cache
with the one slot rule."""

from __future__ import annotations

import numpy as np
import pytest

from sim.policies import CACHE
from sim.replay.cache import layer_capacity, replay_batch
from sim.world.facts import cache_slots
from tests.sim.test_cross_driver import FRACTIONS, _run_logged
from traces.format import RoutingTrace, TraceMeta, make_tokens

ONLINE = [n for n in CACHE.names() if not CACHE.get(n).requires_future]


# ------------------------------------------------------------------------------------------------
def _trace(T: int = 24, L: int = 2, E: int = 10, K: int = 2, seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    ex = np.argsort(rng.random((T, L, E)) ** 2 * (1 + np.arange(E)), axis=2)[:, :, :K]
    rid = np.arange(T) // 10
    pos = np.arange(T) % 10
    return RoutingTrace(ex.astype(np.int16), None, make_tokens(rid, pos, "prefill", "chat"),
                        TraceMeta("tiny", L, E, K))


@pytest.mark.parametrize("frac", FRACTIONS)
@pytest.mark.parametrize("cache", ONLINE)
def test_realrun_counts_equal_the_batch_replay(cache, frac):
    from realrun.runner import RealMoE, RealrunConfig

    tr = _trace()
    batch = 8
    rep = replay_batch(tr, cache, frac, batch)
    cfg = RealrunConfig(hidden=8, intermediate=8, cache_policy=cache, capacity_frac=frac,
                        batch_tokens=batch, block_size=16)
    moe = RealMoE(cfg, tr.num_layers, tr.num_experts, tr.top_k)
    m, _ = moe.run_trace(tr)
    assert moe.capacity == rep.capacity == layer_capacity(frac, tr.num_experts)
    eb = moe.caches[0].expert_bytes
    want = rep.counts.record(eb)
    got = {k: m[k] for k in want}
    assert got == want, (cache, frac)
    assert m["h2d_bytes"] == sum(c.stats.bytes for c in moe.caches)


@pytest.mark.slow
def test_realrun_and_replay_agree_on_a_real_trace():
    """DeepSeek-V2-Lite's recorded routing (its first 48 tokens, first 4 MoE layers: the
    interpreted kernels are slow), at a capacity where the slot rules used to differ."""
    from tests.conftest import shared_path
    from traces.importers import import_moe_beyond_csv

    root = shared_path("routing", "deepseek-v2-lite")
    tr = import_moe_beyond_csv([min(root.glob("prompt_*_data.csv"))])
    L = 4
    tr = RoutingTrace(np.ascontiguousarray(tr.experts[:48, :L]), None, tr.tokens.iloc[:48],
                      TraceMeta(tr.meta.model, L, tr.num_experts, tr.top_k))
    from realrun.runner import RealMoE, RealrunConfig

    for cache in ("lifo", "lru"):
        rep = replay_batch(tr, cache, 0.3, 16)
        cfg = RealrunConfig(hidden=8, intermediate=8, cache_policy=cache, capacity_frac=0.3,
                            batch_tokens=16, block_size=16)
        moe = RealMoE(cfg, L, tr.num_experts, tr.top_k)
        m, _ = moe.run_trace(tr)
        assert rep.misses > 0
        assert (m["hits"], m["misses"], m["evictions"]) == (rep.hits, rep.misses,
                                                            rep.counts.evictions)


def test_one_slot_rule_for_every_driver():
    from realrun.runner import RealMoE, RealrunConfig

    # 10 experts at 0.25: floor 2 (the engine's old rule), half-up 3 (the replay's), round 2
    assert cache_slots(0.25, 10) == layer_capacity(0.25, 10) == 2
    moe = RealMoE(RealrunConfig(hidden=4, intermediate=4, capacity_frac=0.25), 1, 10, 2)
    assert moe.capacity == 2
    sim, _, _ = _run_logged("lru", 0.25)
    assert [st.capacity for st in sim.replicas[0].states] == [2, 2]
