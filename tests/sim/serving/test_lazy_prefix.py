"""The pool's prefix counts are built when due (sim/serving/token_counts.py PoolPrefix): once the
key-by-key counting they save has cost PREFIX_RENT of their entries, or when the walk loads its
kernels. Worked by hand on a three-row pool; whole runs give the same metrics.json whenever they
are built, or never."""

from __future__ import annotations

import numpy as np
import pytest

import sim.serving.token_counts as token_counts
import sim.serving.walk as walk_mod
from sim.serving.testing import tiny_config
from sim.serving.token_counts import PoolPrefix, pool_prefix_counts
from tests.sim.sim_test_helpers import run_tiny

#: 3 pool rows of 2 keys each (a layer-slot each), 4 keys
POOL = np.array([[0, 2], [1, 3], [0, 3]], dtype=np.int16)


def test_due_once_the_counting_has_cost_their_entries():
    """4 rows of prefix counts x 4 keys = 16 entries: 3 tokens (6 keys counted) leave them
    unbuilt, 5 more (16 in all) make them due; then nothing more is charged."""
    p = PoolPrefix(POOL, 4)
    assert p.rent == 16.0 and p.counts is None
    p.charge(np.array([1, 2]))
    assert p.counted == 6 and p.counts is None
    p.charge(np.array([5]))
    assert p.counted == 16 and p.rent is None
    np.testing.assert_array_equal(p.counts, [[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1],
                                             [2, 1, 1, 2]])
    p.charge(np.array([100]))
    assert p.counted == 16


def test_one_entry_short_is_not_due(monkeypatch):
    monkeypatch.setattr(token_counts, "PREFIX_RENT", 0.5)  # 8 entries
    p = PoolPrefix(POOL, 4)
    p.charge(np.array([3]))  # 6
    assert p.counts is None
    p.charge(np.array([0, 0]))  # nothing counted
    assert p.counts is None and p.counted == 6
    p.charge(np.array([1]))  # 8: due
    np.testing.assert_array_equal(p.counts, pool_prefix_counts(POOL, 4))


def test_build_now_off_and_too_large(monkeypatch):
    p = PoolPrefix(POOL, 4)
    p.build()
    np.testing.assert_array_equal(p.counts, pool_prefix_counts(POOL, 4))
    built = p.counts
    p.build()  # (once)
    assert p.counts is built
    off = PoolPrefix(POOL, 4, on=False)
    off.charge(np.array([10**6]))
    off.build()
    assert off.counts is None and off.counted == 0
    monkeypatch.setattr(token_counts, "PREFIX_MAX_ENTRIES", 15)  # 16 entries do not fit
    big = PoolPrefix(POOL, 4)
    big.charge(np.array([8]))
    assert big.counts is None and big.rent is None  # never: counted key by key throughout
    big.charge(np.array([8]))
    assert big.counted == 16


def _run(rent: float, compile_after: int | None = None, monkeypatch=None):
    monkeypatch.setattr(token_counts, "PREFIX_RENT", rent)
    if compile_after is not None:
        monkeypatch.setattr(walk_mod, "COMPILE_AFTER", compile_after)
    built_at = []
    real = PoolPrefix.build

    def build(self):
        if self.rent is not None:
            built_at.append(walk.walked)
        real(self)

    monkeypatch.setattr(PoolPrefix, "build", build)
    cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=2, ep=2, budget_fraction=0.5,
                      token_budget=8)
    walk = None

    import sim.serving.walk as w

    real_init = w.LayerWalk.__init__

    def init(self, *a, **k):
        nonlocal walk
        real_init(self, *a, **k)
        walk = self

    monkeypatch.setattr(w.LayerWalk, "__init__", init)
    sim_, metrics = run_tiny(cfg, 3, n=4)
    monkeypatch.undo()
    return sim_, metrics, built_at


def test_whole_runs_alike_whenever_built(monkeypatch):
    """A tiny run at the default rent never builds them; at rent 0 from the first iteration;
    at a small rent some iterations in; at the kernels' load (COMPILE_AFTER 3) at the third:
    the same metrics.json each time."""
    s_never, m_never, at = _run(token_counts.PREFIX_RENT, monkeypatch=monkeypatch)
    assert at == [] and s_never.walk.prefix is None
    pp = s_never.walk.pool_prefix
    assert 0 < pp.counted < pp.rent  # it counted key by key, never enough
    s0, m0, at0 = _run(0.0, monkeypatch=monkeypatch)
    assert at0 == [1] and s0.walk.prefix is not None
    s_mid, m_mid, at_mid = _run(0.2, monkeypatch=monkeypatch)
    assert len(at_mid) == 1 and 1 < at_mid[0] < s_mid.walk.walked
    s_k, m_k, at_k = _run(10.0, compile_after=3, monkeypatch=monkeypatch)
    assert at_k == [3] and s_k.walk.walked > 3
    assert m_never == m0 == m_mid == m_k


def test_arrays_off_never_builds(monkeypatch):
    monkeypatch.setattr(token_counts, "PREFIX_RENT", 0.0)
    cfg = tiny_config(layers=2, experts=4, top_k=1, gpus_per_node=2, ep=2)
    cfg.policy.cache_arrays = False
    sim_, _ = run_tiny(cfg, 0)
    assert sim_.walk.prefix is None and sim_.walk.pool_prefix.counted == 0


@pytest.mark.parametrize("rent", [0.0, 0.2])
def test_charge_sees_only_the_tokens_counted(rent, monkeypatch):
    """What is charged is each iteration's tokens x L*K (here 3 layers x top-2 = 6 keys a
    token), summed until built."""
    s, _, at = _run(rent, monkeypatch=monkeypatch)
    pp = s.walk.pool_prefix
    assert pp.rent is None and pp.counted % 6 == 0 and pp.counted >= rent * pp.counts.size
