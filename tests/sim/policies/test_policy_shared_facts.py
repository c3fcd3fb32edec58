"""Facts the simulator and the replays share, written once in the policies wing, each run through
every caller: a cache policy's array form (``CachePolicy.array_form``), the request predictor and
the predicted set that fits (sim/policies/_predictor.py), a placement's GPU load
(``Placement.gpu_load`` / ``imbalance``)."""

from __future__ import annotations

import numpy as np
import pytest

import sim.policies._predictor as predictor_mod
import sim.replay.cache
import sim.serving.assemble
import sim.serving.prediction
from sim.engine.simulation import Simulation
from sim.policies.base import CACHE, PLACEMENT, Placement, max_over_mean
from sim.policies.cache.keep_predicted import KeepPredictedCache
from sim.policies.cache.lru import LRUCache
from sim.policies.prefetch.emoe_a import EMoEAPrefetch
from sim.replay.cache import replay_plain
from sim.replay.placement import evaluate_load
from sim.serving.binding import bind
from sim.serving.lru_arrays import (
    KeepStore,
    StampedKeepPredicted,
    StampedLRU,
    StampStore,
    array_form,
)
from sim.serving.static_arrays import StampedStatic, StaticStore
from sim.serving.step_arrays import (
    ArrayMode,
    CountedLFU,
    FifoStore,
    LfuStore,
    LifoStore,
    StampedFIFO,
    StampedLIFO,
)
from sim.serving.testing import StubCost, random_pool, routing_trace, tiny_config, workload


def _simulation(cache: str, prefetch: str = "none", arrays: bool = True, ep: int = 4,
                arrivals=(0.0, 0.001, 0.002, 0.003), prefetch_args=None) -> Simulation:
    cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=ep, ep=ep, budget_fraction=0.5,
                      token_budget=24)
    cfg.policy.cache, cfg.policy.prefetch, cfg.policy.cache_arrays = cache, prefetch, arrays
    if prefetch_args is not None:
        cfg.policy.prefetch_args = dict(prefetch_args)
    rng = np.random.default_rng(0)
    pool = random_pool(3, 4, 2, entries=3, tokens=9, rng=rng)
    wl = workload(list(arrivals), [5, 7, 3, 6], [2, 3, 1, 2])
    return Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(a2a_s=0.0003), rng)


# -- array forms -------------------------------------------------------------------------------
class _SecondChanceLRU(LRUCache):
    """An LRU subclass with its own rule (hits do not move): the stamps must not serve it."""

    _touch_hits = False


def test_array_form_is_declared_and_never_inherited():
    assert LRUCache.array_form == "stamps"
    assert array_form(LRUCache) == (StampStore, StampedLRU)
    for cls in (_SecondChanceLRU, StampedLRU):
        assert issubclass(cls, LRUCache)
        assert cls.array_form is None and array_form(cls) is None, cls
    # keep_predicted declares its own: LRU's stamps beside its pins, which only the compiled
    # walk serves (sim/serving/prefetch_walk.py)
    assert array_form(KeepPredictedCache) == (KeepStore, StampedKeepPredicted)
    for cls in (StampedFIFO, StampedLIFO, CountedLFU):  # the array caches declare none either
        assert cls.array_form is None and array_form(cls) is None, cls
    assert {n: CACHE.get(n).array_form for n in CACHE.names() if CACHE.get(n).array_form} == {
        "lru": "stamps", "fifo": "fifo_stamps", "lifo": "lifo_stamps", "lfu": "lfu_counts",
        "keep_predicted": "keep_stamps", "static": "static_set"}
    assert array_form(CACHE.get("fifo")) == (FifoStore, StampedFIFO)
    assert array_form(CACHE.get("lifo")) == (LifoStore, StampedLIFO)
    assert array_form(CACHE.get("lfu")) == (LfuStore, CountedLFU)
    assert array_form(CACHE.get("static")) == (StaticStore, StampedStatic)
    assert StampedStatic.array_form is None


@pytest.mark.parametrize("cache", ["lru", "keep_predicted", "fifo", "priority"])
def test_the_simulator_takes_the_arrays_from_the_flag(cache):
    on = _simulation(cache)
    form = array_form(CACHE.get(cache))
    assert on.arrays == (form is not None) == (cache in ("lru", "fifo", "keep_predicted"))
    assert all(isinstance(st.cache, form[1] if form else ArrayMode) == (form is not None)
               for st in on.replicas[0].states if st.cache is not None)
    assert not _simulation(cache, arrays=False).arrays


# -- the request predictor -----------------------------------------------------------------------
def test_request_predictor_rule():
    dims = dict(num_layers=2, num_experts=4, top_k=1)
    planner = predictor_mod.PREFETCH.make("emoe_task", **dims)
    next_layer = predictor_mod.PREFETCH.make("emoe_l", **dims)
    assert predictor_mod.request_predictor("lru", planner, dims) is planner
    assert predictor_mod.request_predictor("keep_predicted", planner, dims) is planner
    assert predictor_mod.request_predictor("lru", next_layer, dims) is None
    assert predictor_mod.request_predictor("lru", None, dims) is None
    fallback = predictor_mod.request_predictor("keep_predicted", next_layer, dims, period=3)
    assert isinstance(fallback, EMoEAPrefetch) and fallback.cfg.period == 3
    assert isinstance(predictor_mod.request_predictor("keep_predicted", None, dims), EMoEAPrefetch)


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapped(*args, **kw):
        out = real(*args, **kw)
        calls.append((args, kw, out))
        return out

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("prefetch", ["none", "emoe_task", "emoe_l"])
def test_the_simulator_asks_request_predictor(monkeypatch, prefetch):
    calls = _spy(monkeypatch, sim.serving.assemble, "request_predictor")
    s = _simulation("keep_predicted", prefetch)
    assert len(calls) == 1 and calls[0][0][:2] == ("keep_predicted", s.prefetch)
    assert s.walk.pred.predictor is calls[0][2]
    want = s.prefetch if prefetch == "emoe_task" else None
    assert (isinstance(s.walk.pred.predictor, EMoEAPrefetch) if want is None
            else s.walk.pred.predictor is want)


def _trace():
    rng = np.random.default_rng(5)
    ex = np.array([[rng.permutation(6)[:2] for _ in range(2)] for _ in range(24)])  # (T, L, K)
    return routing_trace(ex, num_experts=6, request_of=[f"r{t // 6}" for t in range(24)])


def test_the_replay_asks_request_predictor(monkeypatch):
    calls = _spy(monkeypatch, sim.replay.cache, "request_predictor")
    replay_plain(_trace(), "keep_predicted", 0.5)
    assert len(calls) == 2  # one predictor per layer pass
    assert all(a[:2] == ("keep_predicted", None) and isinstance(out, EMoEAPrefetch)
               for a, _, out in calls)
    calls.clear()
    replay_plain(_trace(), "keep_predicted", 0.5, prefetch="emoe_task")
    assert all(out is a[1] and out is not None for a, _, out in calls) and len(calls) == 2


# -- the predicted set that fits -------------------------------------------------------------------
def test_fit_predicted_takes_rank_by_rank_up_to_the_slots():
    fit = predictor_mod.fit_predicted
    layers = [[10, 11, 12], [20], [30, 31]]
    assert fit(layers, 0) == []
    assert fit(layers, 4) == [10, 20, 30, 11]
    assert fit(layers, 99) == [10, 20, 30, 11, 31, 12]
    assert fit([[7, 3, 5]], 2) == [7, 3]  # one layer (the replay's cache): its first slots
    assert fit([], 3) == []


def test_the_simulator_fits_the_predicted_set(monkeypatch):
    calls = _spy(monkeypatch, sim.serving.prediction, "fit_predicted")
    # eMoE-A predicts at request 2 (period 2), once requests 0 and 1 are served (arrivals 1 s apart)
    s = _simulation("keep_predicted", "emoe_a", arrays=False, arrivals=(0.0, 1.0, 2.0, 3.0),
                    prefetch_args={"period": 2})
    s.run()
    assert calls
    for (per_layer, slots), _, out in calls:
        assert len(out) <= slots
        assert all(k // 4 == l_keys[0] // 4 for l_keys in per_layer for k in l_keys)  # a layer each
    predicted = {st.gpu: st.cache.predicted for st in s.replicas[0].states if st.cache is not None}
    assert any(predicted.values())


def test_the_replay_fits_the_predicted_set(monkeypatch):
    calls = _spy(monkeypatch, sim.replay.cache, "fit_predicted")
    replay_plain(_trace(), "keep_predicted", 0.5)
    assert calls and all(len(a[0]) == 1 and a[1] == 3 and out == a[0][0][:3] for a, _, out in calls)


# -- a placement's GPU load ----------------------------------------------------------------------
def test_gpu_load_and_imbalance_by_hand():
    # layer 0: expert 0 on GPU 0, expert 1 on GPUs 0 and 1 (halves); layer 1: both on GPU 1
    p = Placement(num_gpus=2, replicas=[[(0,), (0, 1)], [(1,), (1,)]])
    load = np.array([[4.0, 6.0], [0.0, 0.0]])
    assert p.gpu_load(load).tolist() == [[7.0, 3.0], [0.0, 0.0]]
    assert p.imbalance(load).tolist() == [7.0 / 5.0, 1.0]  # an empty layer counts as 1
    batches = np.stack([load, 2 * load, np.array([[0.0, 2.0], [1.0, 1.0]])])  # (B, L, E)
    assert p.gpu_load(batches, p.share()).tolist() == [
        [[7.0, 3.0], [0.0, 0.0]], [[14.0, 6.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 2.0]]]
    assert p.imbalance(batches).tolist() == [[1.4, 1.0], [1.4, 1.0], [1.0, 2.0]]
    assert max_over_mean(np.array([[3.0, 1.0], [0.0, 0.0]])).tolist() == [1.5, 1.0]


def test_placement_evaluation_scores_with_the_placements_own_gpu_load():
    rng = np.random.default_rng(2)
    load = rng.integers(0, 50, size=(3, 8)).astype(np.float64)
    out = evaluate_load(load, ["greedy", "eplb"], 4, {"eplb": {"num_redundant": 4}})
    for rec in out["results"]:
        pol = PLACEMENT.make(rec["policy"], num_gpus=4, **rec["kwargs"])
        im = max_over_mean(pol.place(load).gpu_load(load))
        assert rec["train_max_over_mean"] == float(im.mean())
        assert rec["train_worst_layer"] == float(im.max())
