"""One world, three drivers: the simulator, the cache replay and realrun count the same.

- The simulator's recorded cache calls, served again by the replay driver (``replay_log``), give
  exactly the simulator's hits, misses, evictions and bytes, for every online cache policy
  (priority and keep_predicted included), at three capacities (one where the old rounding rules
  disagreed: 0.25 of 10 experts), with next-layer and per-request prefetch, and across a fault.
- The drivers size an expert with the same bytes. (realrun against ``moesim cache mode=batch``,
  and the one slot rule in all three drivers: tests/realrun/test_cross_driver_batch.py.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.policies import CACHE
from sim.replay.cache import replay_log
from sim.serving.binding import bind
from sim.serving.cache_log import CacheLog
from sim.serving.testing import StubCost, random_pool, tiny_config, workload
from sim.world.config import FaultConfig, ModelConfig
from sim.world.facts import CacheCounts, expert_bytes_of_trace, model_for_trace
from sim.world.model import expert_bytes
from traces.format import TraceMeta

ONLINE = [n for n in CACHE.names() if not CACHE.get(n).requires_future]
# 2 GPUs x (2 layers x 5 experts): 10 keys per GPU; 0.25 -> 2 slots (floor; half-up said 3)
FRACTIONS = [0.25, 0.5, 0.7]


def _wl(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, 0.05, n)).tolist()
    return workload(arrival, rng.integers(1, 12, n).tolist(), rng.integers(1, 6, n).tolist())


def _run_logged(cache: str, frac: float, prefetch: str = "none", faults=(), ep: int = 2,
                gpus: int = 2, requests: int = 12, prefetch_args=None):
    cfg = tiny_config(layers=2, experts=10, top_k=2, gpus_per_node=gpus, ep=ep,
                      budget_fraction=frac, token_budget=16, max_batch=4)
    cfg.policy.cache, cfg.policy.prefetch = cache, prefetch
    if prefetch_args is not None:
        cfg.policy.prefetch_args = dict(prefetch_args)
    cfg.cluster.faults = list(faults)
    rng = np.random.default_rng(0)
    pool = random_pool(2, 10, 2, entries=6, tokens=24, rng=rng)
    wl = _wl(requests)
    log = CacheLog()
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng, cache_log=log)
    sim.run()
    return sim, compute_metrics(sim), log


def _replayed(sim, log) -> dict[int, CacheCounts]:
    p = sim.cfg.policy
    out = {}
    for rep in sim.replicas:
        for st in rep.states:
            if st.cache is not None:
                out[st.gpu] = replay_log(log.events.get(st.gpu, []), p.cache, st.capacity,
                                         sim.plan.L * sim.plan.E, p.cache_args)
    return out


@pytest.mark.parametrize("frac", FRACTIONS)
@pytest.mark.parametrize("cache", ONLINE)
def test_replaying_the_simulators_cache_calls_counts_the_same(cache, frac):
    sim, m, log = _run_logged(cache, frac)
    replayed = _replayed(sim, log)
    assert replayed, "no GPU had a cache"
    for rep in sim.replicas:
        for st in rep.states:
            if st.cache is not None:
                assert replayed[st.gpu] == st.counts(), (cache, frac, st.gpu)
    total = CacheCounts.total(replayed.values())
    assert total.accesses > 0 and total.misses > 0
    assert (m["hits"], m["misses"], m["evictions"]) == (total.hits, total.misses, total.evictions)
    assert m["h2d_bytes"] == total.loads * m["expert_bytes"]


@pytest.mark.parametrize("cache,prefetch", [("lru", "emoe_l"), ("lifo", "similarity"),
                                            ("keep_predicted", "emoe_a"), ("priority", "emoe_a"),
                                            ("keep_predicted", "none")])
def test_cross_driver_with_prefetch(cache, prefetch):
    # eMoE-A predicts every 4 requests here (the first prediction at request 4: none before)
    args = {"period": 4} if prefetch == "emoe_a" else None
    sim, m, log = _run_logged(cache, 0.5, prefetch, prefetch_args=args)
    total = CacheCounts.total(_replayed(sim, log).values())
    # the replay has no clock: a prefetched expert in flight when needed is a hit there
    assert total.late_prefetch_hits == 0
    assert (m["hits"] + m["late_prefetch_hits"], m["misses"], m["prefetched"],
            m["prefetch_skipped"]) == (total.hits, total.misses, total.prefetched,
                                       total.prefetch_skipped)
    assert m["accesses"] == total.accesses == (m["hits"] + m["late_prefetch_hits"] + m["misses"]
                                               + m["rerouted"])
    assert m["h2d_bytes"] == total.loads * m["expert_bytes"]
    kinds = {e[0] for evs in log.events.values() for e in evs}
    if CACHE.get(cache).uses_prediction:
        assert "predict" in kinds  # the simulator hands the cache the predicted set
    if CACHE.get(cache).uses_requests:
        assert "begin" in kinds  # ... and tells it a request started
    if prefetch != "none":
        assert m["prefetched"] > 0 and "insert" in kinds


def test_cross_driver_across_a_fault():
    fault = FaultConfig(time_s=0.02, gpu=1, recovery_s=0.01)
    sim, m, log = _run_logged("lru", 0.5, faults=[fault], ep=1, gpus=2)
    assert m["faults"] and any(e[0] == "reset" for evs in log.events.values() for e in evs)
    total = CacheCounts.total(_replayed(sim, log).values())
    assert (m["hits"], m["misses"]) == (total.hits, total.misses)


def test_simulator_calls_the_per_request_hooks():
    """Before, the simulator never called begin_request / set_predicted: priority ranked like
    LFU and keep_predicted acted as LRU. Now every request reaching a replica resets priority's
    per-request counts on each of its caching GPUs, and keep_predicted gets eMoE-A's set."""
    sim, m, log = _run_logged("priority", 0.5)
    gpus = [st.gpu for rep in sim.replicas for st in rep.states if st.cache is not None]
    begins = {g: [e[1] for e in log.events[g] if e[0] == "begin"] for g in gpus}
    assert all(b == list(range(sim.R)) for b in begins.values())
    sim, m, log = _run_logged("keep_predicted", 0.5)
    for st in sim.replicas[0].states:
        sets = [e[2] for e in log.events[st.gpu] if e[0] == "predict"]
        assert len(sets) == sim.R
        # before the first prediction (request 0: nothing observed) the predicted set is empty
        # (it named every expert before, and the simulator loaded them all for 40 requests)
        assert sets[0] == ()
        assert st.cache.predicted == frozenset(sets[-1])


# ------------------------------------------------------------------------------------------------
# shared facts
# ------------------------------------------------------------------------------------------------
def test_one_expert_size_for_every_driver():
    m = model_for_trace("deepseek-ai/DeepSeek-V2-Lite-Chat")
    assert m.name == "deepseek-v2-lite"
    assert expert_bytes(m) == 3 * 2048 * 1408 * 2
    meta = TraceMeta("DeepSeek-V2-Lite-Chat", 26, 64, 6)
    assert expert_bytes_of_trace(meta) == expert_bytes(m)
    assert expert_bytes_of_trace(meta, model="mixtral-8x7b") == 3 * 4096 * 14336 * 2
    assert expert_bytes_of_trace(meta, override=10) == 10
    captured = dataclasses.replace(meta, model="my-own-moe", extra={"expert_bytes": 1234})
    assert expert_bytes_of_trace(captured) == 1234
    for name in ("qwen3-30b-a3b", "deepseek-v3"):  # the old replay table lacked these
        assert expert_bytes_of_trace(dataclasses.replace(meta, model=name)) > 0
    from sim.common.errors import ConfigError

    with pytest.raises(ConfigError, match="model=NAME or expert_bytes"):
        expert_bytes_of_trace(dataclasses.replace(meta, model="unknown-model"))
    assert isinstance(m, ModelConfig)


def test_cache_log_file_from_the_cli_replays_to_the_simulators_counts(tmp_path):
    """`moesim sim output.cache_log=true` writes cache_log.parquet; read back and served again by
    the replay driver, it counts what that run's metrics.json says."""
    import json

    from sim.app.cli import main as moesim
    from sim.serving.cache_log import read_cache_log

    out = tmp_path / "run"
    rc = moesim(["sim", "model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1",
                 "workload.num_requests=4", "trace.pool_size=2", "trace.pool_tokens=256",
                 "cluster.expert_budget_fraction=0.5", "policy.cache=lifo", "output.cache_log=true",
                 "output.print_summary=false", f"hydra.run.dir={out}"])
    assert rc in (0, None)
    m = json.loads((out / "metrics.json").read_text())
    events = read_cache_log(out / "cache_log.parquet")
    assert list(events) == [0]
    slots = m["expert_budget_bytes_per_gpu"][0] // m["expert_bytes"]
    got = replay_log(events[0], "lifo", slots, 26 * 64)
    assert m["misses"] > 0
    assert (got.hits, got.misses, got.evictions) == (m["hits"], m["misses"], m["evictions"])
