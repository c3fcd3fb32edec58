"""The compiled kernels of the batcher (sim/serving/compiled_batching.py) against their numpy
references (sim/serving/batching.py): each kernel on random inputs (preemption's zero contexts,
zero and negative allocations, completions, NaN and set first-token times, repeated requests),
examples worked out by hand, batchers driven side by side with and without them, and whole runs
whose metrics.json is the same with the kernels from the first iteration and without them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.serving.walk as walk_mod
from sim.common.errors import MoesimError
from sim.engine.metrics import compute_metrics, metrics_json
from sim.engine.simulation import Simulation
from sim.policies import SCHEDULER
from sim.serving.batching import Batcher, allocate
from sim.serving.binding import bind
from sim.serving.state import ReplicaState, Requests, Tallies
from sim.serving.testing import StubCost, random_pool, random_run, tiny_config, workload
from sim.world.config import ServingConfig

kern = pytest.importorskip("sim.serving.compiled_batching", reason="numba is not installed")


def _requests(prompt, output, arrival=None) -> Requests:
    R = len(prompt)
    return Requests(request_id=[f"r{i}" for i in range(R)], task=["a", "b"] * (R // 2) + ["a"] * (R % 2),
                    arrival_s=np.asarray(arrival if arrival is not None else np.arange(R) * 1e-3,
                                         dtype=np.float64),
                    prompt=np.asarray(prompt, dtype=np.int64), output=np.asarray(output, dtype=np.int64),
                    offset=np.zeros(R, dtype=np.int64), length=np.ones(R, dtype=np.int64))


def _random_state(rng, R):
    """Requests mid-run: some prefilling (context short of the prompt), some decoding (context
    one short of prompt + generated: they generate on any token), some preempted (context 0)."""
    prompt = rng.integers(1, 40, size=R)
    output = rng.integers(1, 8, size=R)
    req = _requests(prompt, output)
    req.generated[:] = rng.integers(0, output)  # below the output: still running
    full = prompt + req.generated
    kind = rng.integers(0, 3, size=R)
    req.ctx[:] = np.where(kind == 0, rng.integers(0, prompt + 1), np.where(kind == 1, full - 1, 0))
    req.ctx[:] = np.maximum(req.ctx, 0)
    seen = rng.random(R) < 0.5
    req.first_token_s[seen] = rng.uniform(0, 5, size=int(seen.sum()))
    req.completions[:] = rng.integers(0, 2, size=R)
    req.processed[:] = rng.integers(0, 100, size=R)
    return req


def _arrays(req):
    return [a.copy() for a in (req.ctx, req.generated, req.first_token_s, req.finish_s,
                               req.completions, req.processed)]


def _same(xs, ys):
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(xs, ys, strict=True))


# -- kernel against reference -----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_pending_alloc_equals_allocate(seed):
    """Random running sets and budgets (0, below, above the pending sum), contexts past the
    prompt (negative pending: kept, as numpy keeps it): the same tokens and sum."""
    rng = np.random.default_rng(seed)
    req = _random_state(rng, int(rng.integers(1, 60)))
    if seed % 4 == 0:
        req.ctx[:] += rng.integers(0, 3, size=len(req))  # some past their context
    run = rng.permutation(len(req))[:int(rng.integers(1, len(req) + 1))]
    for budget in (0, 1, int(rng.integers(1, 200)), 10**6):
        want = allocate(req.prompt[run] + req.generated[run] - req.ctx[run], budget)
        got, used = kern.pending_alloc(run, req.prompt, req.generated, req.ctx, budget)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        assert type(used) is int and used == int(want.sum())


def test_pending_alloc_by_hand():
    """Pending 5, 3, 4 (prompt + generated - ctx) in a budget of 7: 5, 2, 0 tokens."""
    req = _requests([5, 6, 4], [2, 2, 2])
    req.generated[:] = [0, 1, 0]
    req.ctx[:] = [0, 4, 0]
    alloc, used = kern.pending_alloc(np.array([0, 1, 2]), req.prompt, req.generated, req.ctx, 7)
    assert alloc.tolist() == [5, 2, 0] and used == 7


@pytest.mark.parametrize("seed", range(60))
def test_finish_arrays_equals_numpy(seed):
    """Random iterations' ends (zero and negative allocations, completions, first tokens, every
    third with repeated requests): the same arrays, finished requests and KV."""
    rng = np.random.default_rng(seed)
    R = int(rng.integers(1, 50))
    req = _random_state(rng, R)
    B = int(rng.integers(0, R + 1))
    batch = rng.permutation(R)[:B]
    if seed % 3 == 0 and B:
        batch = rng.choice(batch, size=B)
    pend = req.prompt[batch] + req.generated[batch] - req.ctx[batch]
    alloc = np.where(rng.random(B) < 0.2, rng.integers(-2, 1, size=B), np.maximum(pend, 1))
    alloc = np.where(rng.random(B) < 0.2, rng.integers(1, 3, size=B), alloc)  # partial chunks
    now = float(rng.uniform(5, 9))
    ref = ReplicaState(index=0, gpus=[0], kv_used=10**6)
    b = Batcher(req, ServingConfig(), SCHEDULER.make("fcfs"), 10**9, Tallies(1, 1, 1, 1))
    before = _arrays(req)
    want = b._finish_arrays(ref, batch, alloc, now)
    want_arrays = _arrays(req)
    for a, x in zip((req.ctx, req.generated, req.first_token_s, req.finish_s, req.completions,
                     req.processed), before, strict=True):
        a[:] = x
    fin, added, freed, rest = kern.finish_arrays(batch, alloc, req.ctx, req.generated, req.prompt,
                                                 req.output, req.first_token_s, req.finish_s,
                                                 req.completions, now)
    assert _same(_arrays(req), want_arrays)
    assert fin.dtype == want.dtype and fin.tolist() == want.tolist()
    assert 10**6 + added - freed == ref.kv_used
    assert rest.tolist() == ([i for i in batch.tolist() if i not in set(fin.tolist())]
                             if len(fin) else [])


def test_finish_arrays_by_hand():
    """Request 0 prefills 3 of its 5 prompt tokens (ctx 3 < 5: no token); 1 decodes (ctx 5 -> 6
    = 4 prompt + 2 generated: generated 3 = its output, so it finishes and frees its 6 KV
    tokens); 2 ends its prompt (ctx 2 -> 3: its first token at now = 2.5, not finished: output 2);
    3 gets no token. KV added: 3 + 1 + 1 = 5."""
    req = _requests([5, 4, 3, 2], [4, 3, 2, 2])
    req.ctx[:] = [0, 5, 2, 2]
    req.generated[:] = [0, 2, 0, 0]
    req.first_token_s[1] = 1.0
    batch, alloc = np.array([0, 1, 2, 3]), np.array([3, 1, 1, 0])
    fin, added, freed, rest = kern.finish_arrays(batch, alloc, req.ctx, req.generated, req.prompt,
                                                 req.output, req.first_token_s, req.finish_s,
                                                 req.completions, 2.5)
    assert req.ctx.tolist() == [3, 6, 3, 2] and req.generated.tolist() == [0, 3, 1, 0]
    assert fin.tolist() == [1] and (added, freed) == (5, 6) and rest.tolist() == [0, 2, 3]
    assert req.first_token_s[[1, 2]].tolist() == [1.0, 2.5] and np.isnan(req.first_token_s[[0, 3]]).all()
    assert req.finish_s[1] == 2.5 and req.completions.tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("seed", range(10))
def test_begin_arrays_equals_numpy(seed):
    """``processed[batch] += alloc`` (repeated requests: numpy's buffered add, the last wins)."""
    rng = np.random.default_rng(seed)
    processed = rng.integers(0, 100, size=30)
    batch = rng.integers(0, 30, size=int(rng.integers(0, 40)))
    alloc = rng.integers(-1, 9, size=len(batch))
    want = processed.copy()
    want[batch] += alloc
    assert kern.begin_arrays(processed, batch, alloc) == int(alloc.sum())
    assert processed.tolist() == want.tolist()


# -- batchers side by side --------------------------------------------------------------------
def _drive_pair(seed, scheduler):
    """Two batchers over the same random requests, one with the kernels from its first
    iteration: every iteration's batch, tokens, KV, queues and arrays compared."""
    rng = np.random.default_rng(seed)
    R = int(rng.integers(1, 30))
    prompt, output = rng.integers(1, 30, size=R), rng.integers(1, 12, size=R)
    arrival = np.sort(rng.uniform(0, 0.01, size=R))
    kv = int(prompt.max() + output.max() + rng.integers(1, 60))
    s = ServingConfig(token_budget=int(rng.integers(1, 48)), max_batch_requests=int(rng.integers(1, 9)),
                      scheduler_window=int(rng.integers(1, 9)))
    sides = []
    for compiled in (False, True):
        req = _requests(prompt, output, arrival)
        b = Batcher(req, s, SCHEDULER.make(scheduler), kv, Tallies(1, 1, 1, 1), scheduler)
        b.compile_after = 1 if compiled else 10**9
        sides.append((req, b, ReplicaState(index=0, gpus=[0], waiting=list(range(R)))))
    now, steps = 0.0, 0
    while sides[0][2].running or sides[0][2].waiting:
        seen = []
        for req, b, rep in sides:
            try:
                batch, alloc = b.form(rep, now)
            except MoesimError as exc:  # (emoe may admit nothing: the same error on both sides)
                seen.append(str(exc))
                continue
            b.begin(rep, batch, alloc)
            assert batch.tolist() == rep.running
            fin = b.finish(rep, batch, alloc, now + 1.0)
            key, arr = b._run_cache.get(0, ([], np.zeros(0, dtype=np.int64)))
            assert arr.dtype == np.int64 and arr.tolist() == key  # the cache is its list's array
            seen.append((batch.tolist(), alloc.tolist(), fin.tolist(), rep.kv_used, rep.kv_peak,
                         list(rep.running), list(rep.waiting), _arrays(req), b.tallies))
        if isinstance(seen[0], str) or isinstance(seen[1], str):
            assert seen[0] == seen[1]
            break
        (*x, ax, tx), (*y, ay, ty) = seen
        assert x == y and _same(ax, ay) and tx == ty
        now += 1.0
        steps += 1
        assert steps < 10_000
    assert sides[1][1].kern is kern and sides[0][1].kern is None
    return sides[0][1].tallies


@pytest.mark.parametrize("scheduler", ["fcfs", "spf", "emoe"])
@pytest.mark.parametrize("seed", range(25))
def test_batchers_with_and_without_kernels_agree(seed, scheduler):
    """Random queues under tight KV (preemptions, recomputes), small budgets (chunked prefill),
    small windows and batches: the same decisions and arrays, iteration by iteration."""
    _drive_pair(seed, scheduler)


def test_drives_preempt_and_chunk():
    """The side-by-side drives above reach preemption and chunked prefill (not only decodes)."""
    preempted = sum(_drive_pair(seed, "fcfs").preemptions for seed in range(25))
    assert preempted > 0


def test_the_scheduler_sees_fresh_views():
    """Every window the scheduler sees (a new one, or the one it saw last time) carries each
    waiting request's generated tokens, a request that ran and was preempted back included (the
    views are refreshed only for those). Here 4
    requests of 3 prompt tokens in 13 KV tokens, windows of 2: [0, 1] admitted, then [2, 3]; 2
    is preempted back after its prompt (1 token); 1 comes back after 4 tokens."""
    req = _requests([3, 3, 3, 3], [6, 6, 6, 6])
    s = ServingConfig(token_budget=64, max_batch_requests=4, scheduler_window=2)
    fcfs = SCHEDULER.make("fcfs")
    checked = []

    class Spy(type(fcfs)):
        def admit(self, now_s, waiting, running, token_budget):
            checked.append([(v.index, v.done_tokens, int(req.generated[v.index])) for v in waiting])
            return super().admit(now_s, waiting, running, token_budget)

    b = Batcher(req, s, Spy(), 13, Tallies(1, 1, 1, 1))
    rep = ReplicaState(index=0, gpus=[0], waiting=[0, 1, 2, 3])
    now = 0.0
    while rep.running or rep.waiting:
        batch, alloc = b.form(rep, now)
        b.begin(rep, batch, alloc)
        now += 1.0
        b.finish(rep, batch, alloc, now)
    assert [[i for i, _, _ in w] for w in checked[:2]] == [[0, 1], [2, 3]]
    assert checked[4][0] == (1, 4, 4)  # preempted after 3 + 1 tokens, then 4 generated: fresh
    new = [w for k, w in enumerate(checked)
           if k == 0 or [i for i, _, _ in w] != [i for i, _, _ in checked[k - 1]]]
    assert len(new) >= 4 and all(d == g for w in checked for _, d, g in w)
    assert len(checked) > len(new)  # (unchanged windows were seen again)


# -- whole runs -------------------------------------------------------------------------------
def _run(cfg, compiled: bool, seed: int, n: int, tokens: int):
    wl, pool, binding, rng = random_run(cfg, seed, n, tokens)
    s = Simulation(cfg, wl, pool, binding, StubCost(a2a_s=0.0003), rng)
    s.batcher.compile_after = 1 if compiled else 10**9
    s.run()
    assert (s.batcher.kern is not None) == compiled
    return metrics_json(compute_metrics(s))


@st.composite
def scenarios(draw):
    gpus = draw(st.sampled_from([1, 2, 4]))
    return dict(gpus=gpus, ep=draw(st.sampled_from([e for e in (1, 2, 4) if gpus % e == 0])),
                kv=draw(st.integers(16, 80)), token_budget=draw(st.integers(1, 24)),
                max_batch=draw(st.integers(1, 8)), window=draw(st.integers(1, 8)),
                scheduler=draw(st.sampled_from(["fcfs", "spf", "emoe"])),
                seed=draw(st.integers(0, 50)), n=draw(st.integers(1, 20)),
                tokens=draw(st.integers(2, 9)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_runs_same_metrics(s):
    """Random tiny clusters and queues (tight KV: preemptions; small budgets, batches and windows;
    the three schedulers): metrics.json with the batcher's kernels from the first iteration
    equals the numpy's (a run the simulator rejects is rejected with the kernels too)."""
    def make():
        cfg = tiny_config(layers=2, experts=4, top_k=2, gpus_per_node=s["gpus"], ep=s["ep"],
                          budget_fraction=0.5, kv_tokens=s["kv"], token_budget=s["token_budget"],
                          max_batch=s["max_batch"])
        cfg.serving.scheduler_window = s["window"]
        cfg.policy.scheduler = s["scheduler"]
        return cfg

    args = (s["seed"], s["n"], s["tokens"])
    try:
        want = _run(make(), False, *args)
    except Exception as exc:
        with pytest.raises(type(exc)):
            _run(make(), True, *args)
        return
    assert _run(make(), True, *args) == want


def test_a_run_with_preemptions_same_metrics():
    """A 25-token KV cache under 20 requests: preempted twice (12 tokens recomputed), the same
    metrics.json with and without the kernels."""
    import json

    def make():
        return tiny_config(layers=2, experts=4, top_k=2, kv_tokens=25, token_budget=8, max_batch=8)

    want = _run(make(), False, 1, 20, 5)
    m = json.loads(want)
    assert (m["preemptions"], m["tokens_recomputed"]) == (2, 12)
    assert _run(make(), True, 1, 20, 5) == want


@pytest.mark.parametrize("recovery", [0.01, 0.2])
def test_a_run_with_faults_same_metrics(recovery):
    """GPU 0 (replica 0 of two) fails at 0.05 s: its running requests lose their KV and move to
    replica 1's queue (the batcher's running array is rebuilt from the emptied list), and come
    back: the same metrics.json with and without the kernels."""
    from sim.world.config import FaultConfig

    out = []
    for compiled in (False, True):
        cfg = tiny_config(layers=2, experts=4, top_k=1, gpus_per_node=2, ep=1, budget_fraction=0.5,
                          kv_tokens=60, token_budget=8, max_batch=4)
        cfg.cluster.faults = [FaultConfig(time_s=0.05, gpu=0, recovery_s=recovery)]
        rng = np.random.default_rng(0)
        pool = random_pool(2, 4, 1, entries=3, tokens=9, rng=rng)
        wl = workload([0.0, 0.0, 0.01, 0.02, 0.03, 0.06, 0.07, 0.3], [10, 4, 12, 7, 3, 9, 5, 6],
                      [20, 9, 14, 3, 25, 8, 11, 4])
        s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
        s.batcher.compile_after = 1 if compiled else 10**9
        s.run()
        m = compute_metrics(s)
        assert m["requests_rerouted"] > 0 and m["requests_completed"] == 8
        out.append(metrics_json(m))
    assert out[0] == out[1]


def test_kernels_imported_at_the_walks_threshold(monkeypatch):
    """The batcher takes the walk's threshold (:data:`sim.serving.walk.COMPILE_AFTER`, read when
    it is built) and imports its kernels on that iteration, not before."""
    monkeypatch.setattr(walk_mod, "COMPILE_AFTER", 3)
    req = _requests([4, 4, 4], [5, 5, 5])
    b = Batcher(req, ServingConfig(token_budget=4), SCHEDULER.make("fcfs"), 100, Tallies(1, 1, 1, 1))
    rep = ReplicaState(index=0, gpus=[0], waiting=[0, 1, 2])
    seen = []
    while rep.running or rep.waiting:
        batch, alloc = b.form(rep, 0.0)
        seen.append(b.kern is not None)
        b.begin(rep, batch, alloc)
        b.finish(rep, batch, alloc, 1.0)
    assert b.compile_after == 3 and seen[:3] == [False, False, True] and all(seen[2:])
