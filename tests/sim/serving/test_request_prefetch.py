"""eMoE's predict-and-load (issue 21, defect 1): the request prefetch loads, on each GPU, the
predicted set that fits its slots (ranked across layers: ``fit_predicted``), in one insert, once
per prediction, and nothing before the first prediction. Before, each request inserted each
layer's whole plan with its own insert (every expert for the first 40 requests), each layer's
insert evicting what the earlier layers' inserts had just loaded."""

from __future__ import annotations

import numpy as np

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.policies._predictor import fit_predicted
from sim.serving.binding import bind
from sim.serving.cache_log import CacheLog
from sim.serving.testing import StubCost, random_pool, tiny_config, workload


def test_predicted_set_loaded_once_per_prediction_in_one_insert():
    # one GPU, 2 layers x 10 experts, 10 slots; eMoE-A reruns every 4 requests, 4 experts a
    # layer: the set that fits is all 8; 12 requests 1 s apart (each served before the next)
    cfg = tiny_config(layers=2, experts=10, top_k=2, budget_fraction=0.5, token_budget=16)
    cfg.policy.cache, cfg.policy.prefetch = "keep_predicted", "emoe_a"
    cfg.policy.prefetch_args = {"period": 4, "set_size": 4}
    rng = np.random.default_rng(0)
    pool = random_pool(2, 10, 2, entries=6, tokens=24, rng=rng)
    wl = workload([float(i) for i in range(12)], [6] * 12, [3] * 12)
    log = CacheLog()
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng, cache_log=log)
    sim.run()
    m = compute_metrics(sim)
    st = sim.replicas[0].states[0]
    ev = log.events[st.gpu]
    predicts = [e[2] for e in ev if e[0] == "predict"]
    inserts = [e for e in ev if e[0] == "insert"]
    # requests 0-3: no prediction (nothing observed at request 0's rerun), so no load
    assert predicts[:4] == [()] * 4 and all(len(p) == 8 for p in predicts[4:])
    # predictions at requests 4 and 8; each loaded once, whole, in one insert protecting itself
    assert sim.walk.pred.predictor.reruns == 2
    assert len(inserts) <= 2 and [e[2] for e in inserts] == sorted(set(predicts[4:]), key=predicts.index)
    assert all(e[3] == e[2] for e in inserts)
    # what the insert loads stays: the predicted set is resident after each load
    assert st.cache.predicted <= st.cache.resident
    assert m["prefetched"] <= 8 * len(inserts) and m["prefetch_skipped"] == 0
    assert m["prefetch"]["evicted_unused"] == 0  # keep_predicted never evicts a predicted key
    # the last set is fit_predicted's of the last plan (every layer's first, then second, ...)
    plan = sim.walk.pred.predictor.on_request.__self__._plan
    assert predicts[-1] == tuple(sorted(fit_predicted([(l * 10 + plan[l]).tolist() for l in range(2)],
                                                      st.capacity)))
