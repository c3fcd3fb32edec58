import re
import subprocess
import sys
from pathlib import Path

POLICIES = Path(__file__).resolve().parents[3] / "sim" / "policies"


def test_policies_import_without_simpy_or_torch():
    """Every policy module, in every kind folder, imports with simpy, torch and triton blocked;
    the registry loads every public one (helpers, ``_*.py``, are imported here by name)."""
    helpers = sorted(".".join(("sim", "policies", *f.relative_to(POLICIES).with_suffix("").parts))
                     for f in POLICIES.glob("*/_*.py") if f.name != "__init__.py")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('simpy', 'torch', 'triton'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import sim.policies as p\n"
        "from sim.policies._registry import _load_all\n"
        "_load_all()\n"
        "registered = ' '.join(sorted(m for m in sys.modules if m.startswith('sim.policies.')))\n"
        f"import importlib\nfor m in {helpers!r}: importlib.import_module(m)\n"
        "print(registered)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    files = {".".join(("sim", "policies", *f.relative_to(POLICIES).with_suffix("").parts))
             for f in POLICIES.rglob("*.py") if f.name != "__init__.py"}
    kinds = {f.parent.name for f in POLICIES.glob("*/*.py")}
    assert {"cache", "prefetch", "placement", "scheduler", "router"} <= kinds
    public = {m for m in files if not m.rsplit(".", 1)[1].startswith("_")}
    assert public <= loaded, public - loaded


def test_registry_rejects_unknown_name():
    import pytest

    from sim.common.errors import ConfigError
    from sim.policies import CACHE

    with pytest.raises(ConfigError, match="unknown cache policy 'nope'.*lru"):
        CACHE.get("nope")


def test_lru_evicts_least_recent_and_breaks_ties_by_id():
    from sim.policies import CACHE

    c = CACHE.make("lru", capacity=2, num_keys=8)
    assert c.access(0, [3, 1]) == ([1, 3], [])
    assert c.access(1, [3]) == ([], [])
    assert c.access(2, [5]) == ([5], [1])
    assert c.resident == {3, 5}
    c2 = CACHE.make("lru", capacity=2, num_keys=8)
    c2.access(0, [4, 2])
    assert c2.access(1, [7]) == ([7], [2])  # equal last use: smallest id goes


def test_anticorr_pairs_anticorrelated_experts_and_splits_correlated_ones():
    """Huang et al.'s cost by hand: 2 GPUs of 2 slots, one layer, two batches with loads
    [0, 3, 2, 3] and [0, 2, 3, 2]. Expert 0 is constant (correlation 0), 1 and 3 move together
    (+1), 2 against both (-1); totals 0, 5, 5, 5 of 15. Heaviest first (ties smaller id): 1 -> GPU
    0 (cost 0 on both); 2: GPU 0 costs 5/15 - 0.5 < 0 (GPU 1), so it joins 1; GPU 0 is full, so
    3 and 0 go to GPU 1. The plain greedy (no correlation) puts 2 on GPU 1 and 3 on GPU 0."""
    import warnings

    import numpy as np

    from sim.policies import PLACEMENT

    hist = np.array([[[0, 3, 2, 3]], [[0, 2, 3, 2]]])  # (B=2, L=1, E=4)
    p = PLACEMENT.make("anticorr", num_gpus=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant expert's correlation is 0, without a warning
        p.fit_history(hist)
    assert [g for (g,) in p.place(hist.sum(axis=0)).replicas[0]] == [1, 0, 0, 1]
    greedy = PLACEMENT.make("greedy", num_gpus=2)
    assert [g for (g,) in greedy.place(hist.sum(axis=0)).replicas[0]] == [1, 0, 1, 0]


def test_rebalance_replans_every_period_batches():
    """period 3: the third, sixth and ninth observed batches replan, the others return None."""
    import numpy as np

    from sim.policies import PLACEMENT

    p = PLACEMENT.make("rebalance", num_gpus=2, window=4, period=3)
    p.place(np.array([[4.0, 3.0, 2.0, 1.0]]))
    got = [p.observe(np.array([[1.0, 2.0, 3.0, 4.0]])) is not None for _ in range(9)]
    assert got == [False, False, True] * 3


def test_rebalance_adds_the_moves_of_every_replan():
    """window 1, period 1 (every batch replans on itself), greedy on 2 GPUs: loads
    [10, 9, 1, 1] give owners [0, 1, 1, 0], [1, 1, 10, 9] give [1, 0, 0, 1]; each switch moves
    all four experts, so two replans move 4 + 4."""
    import numpy as np

    from sim.policies import PLACEMENT

    a, b = np.array([[10.0, 9.0, 1.0, 1.0]]), np.array([[1.0, 1.0, 10.0, 9.0]])
    p = PLACEMENT.make("rebalance", num_gpus=2, window=1, period=1)
    assert [g for (g,) in p.place(a).replicas[0]] == [0, 1, 1, 0]
    assert [g for (g,) in p.observe(b).replicas[0]] == [1, 0, 0, 1]
    assert p.moved == 4
    assert [g for (g,) in p.observe(a).replicas[0]] == [0, 1, 1, 0]
    assert p.moved == 8 and [g for (g,) in p.current.replicas[0]] == [0, 1, 1, 0]


def test_rebalance_arguments_checked():
    import pytest

    from sim.common.errors import ConfigError
    from sim.policies import PLACEMENT

    p = PLACEMENT.make("rebalance", num_gpus=2, window=1, period=1)  # the smallest accepted
    assert (p.window, p.period) == (1, 1)
    for window, period in ((0, 1), (1, 0)):
        with pytest.raises(ConfigError, match=f"^rebalance: window and period must be >= 1, "
                                              f"got {window}, {period}$"):
            PLACEMENT.make("rebalance", num_gpus=2, window=window, period=period)
    with pytest.raises(ConfigError, match="^rebalance: inner policy cannot be rebalance$"):
        PLACEMENT.make("rebalance", num_gpus=2, inner="rebalance")


def test_exhaustive_ties_go_to_the_first_owner_vector():
    """Four equal experts on 2 GPUs: every split two and two has maximum load 2; the first in
    lexicographic order (expert 0 on GPU 0) is [0, 0, 1, 1]. Loads [3, 1, 2, 2]: 4 is the best
    maximum, reached first by [0, 0, 1, 1]."""
    import numpy as np

    from sim.policies import PLACEMENT
    from sim.policies.placement.exhaustive import best_layer

    assert best_layer(np.array([1.0, 1.0, 1.0, 1.0]), 2) == (2.0, [0, 0, 1, 1])
    p = PLACEMENT.make("exhaustive", num_gpus=2)
    plan = p.place(np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 2.0, 2.0]]))
    assert [[g for (g,) in row] for row in plan.replicas] == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_exhaustive_keeps_equal_expert_counts_and_its_limits():
    """Loads [3, 1, 1, 1] on 2 GPUs of 2 experts: the best maximum is 4 ([0, 0, 1, 1]: 3 + 1 and
    1 + 1); three experts on one GPU (max 3) is not a placement. A layer of exactly
    ``max_experts`` experts is searched, one more is refused; E must be a multiple of G."""
    import numpy as np
    import pytest

    from sim.common.errors import ConfigError
    from sim.policies import PLACEMENT
    from sim.policies.placement.exhaustive import best_layer

    assert best_layer(np.array([3.0, 1.0, 1.0, 1.0]), 2) == (4.0, [0, 0, 1, 1])
    assert best_layer(np.array([3.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 3) == (4.0, [0, 0, 1, 1, 2, 2])
    p = PLACEMENT.make("exhaustive", num_gpus=2, max_experts=4)
    assert [g for (g,) in p.place(np.array([[3, 1, 1, 1]])).replicas[0]] == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match=r"^exhaustive placement over 6 experts is too large "
                                          r"\(max_experts=4\)$"):
        p.place(np.ones((1, 6)))
    with pytest.raises(ConfigError, match="^exhaustive placement needs experts 3 to be a "
                                          "multiple of GPUs 2$"):
        p.place(np.ones((1, 3)))


def test_rebalance_replans_before_any_placement():
    """Without a first ``place``, the first replan moves nothing (there was no placement)."""
    import numpy as np

    from sim.policies import PLACEMENT

    p = PLACEMENT.make("rebalance", num_gpus=2, window=2, period=1)
    new = p.observe(np.array([[10.0, 9.0, 1.0, 1.0]]))
    assert [g for (g,) in new.replicas[0]] == [0, 1, 1, 0] and p.moved == 0


def test_anticorr_weight_trades_correlation_against_load():
    """The history of the test above with ``weight`` 0.1 (totals 0, 5, 5, 5 of 15; 1 and 3
    correlated +1, 2 against both): 1 -> GPU 0; 2: GPU 0 costs 5/15 - 0.1 > 0 (GPU 1), so GPU 1;
    3: GPU 0 costs 5/15 + 0.1, GPU 1 5/15 - 0.1, so GPU 1; 0 fills GPU 0."""
    import numpy as np

    from sim.policies import PLACEMENT

    hist = np.array([[[0, 3, 2, 3]], [[0, 2, 3, 2]]])
    p = PLACEMENT.make("anticorr", num_gpus=2, weight=0.1)
    p.fit_history(hist)
    assert [g for (g,) in p.place(hist.sum(axis=0)).replicas[0]] == [0, 0, 1, 1]


def test_greedy_adds_each_expert_to_its_gpu_load_and_honours_slots():
    """Huang et al.'s greedy by hand. Loads [4, 3, 2, 2, 1, 0], 2 GPUs of 3: 0 -> GPU 0 (4),
    1 -> 1 (3), 2 -> 1 (5), 3 -> 0 (6), 4 -> 1 (6, full), 5 -> 0. With 3 slots each, loads
    [4, 1, 1, 1] put 1, 2, 3 on GPU 1 (1, 2, 3 < 4); with the default 2 slots 3 goes to GPU 0."""
    import numpy as np

    from sim.policies import PLACEMENT
    from sim.policies.placement._greedy import greedy_layer

    p = PLACEMENT.make("greedy", num_gpus=2)
    assert [g for (g,) in p.place(np.array([[4, 3, 2, 2, 1, 0]])).replicas[0]] == [0, 1, 1, 0, 1, 0]
    assert greedy_layer(np.array([4.0, 1.0, 1.0, 1.0]), 2, slots=3) == [0, 1, 1, 1]
    assert greedy_layer(np.array([4.0, 1.0, 1.0, 1.0]), 2) == [0, 1, 1, 0]


def test_eplb_replicas_by_hand():
    """3 GPUs of 2 slots, 3 experts, loads [2, 1, 1], 3 redundant: replication gives 0 a second
    copy (2 per copy the most), a third (1, 1, 1: the smaller id), then 1 (0 is on every GPU):
    counts [3, 2, 1], per copy 2/3, 1/2, 1. Packing heaviest per copy first: 2 -> GPU 0; the
    copies of 0 -> GPU 1, GPU 2, GPU 0 (each to a GPU without one); 1 -> GPU 1 (2/3 < 5/3), and
    the other 1 to GPU 2, the one with room that has none."""
    import numpy as np

    from sim.policies import PLACEMENT
    from sim.policies.placement.eplb import replicate

    p = PLACEMENT.make("eplb", num_gpus=3, num_redundant=3)
    assert p.place(np.array([[2, 1, 1]])).replicas[0] == [(0, 1, 2), (1, 2), (0,)]
    # per copy: [6, 4, 1] -> 0 gets a second copy, then [3, 4, 1] -> 1 does
    assert replicate(np.array([6.0, 4.0, 1.0]), 5, 3).tolist() == [2, 2, 1]


def test_eplb_default_redundancy_fills_the_last_slot_row():
    """num_redundant None: R = (-E) mod G, or G when G divides E. 4 experts on 3 GPUs: R = 2,
    2 slots each; on 2 GPUs: R = 2, 3 slots each."""
    import numpy as np

    from sim.policies import PLACEMENT

    load = np.array([[4.0, 3.0, 2.0, 1.0]])
    for G, slots in ((3, 2), (2, 3)):
        plan = PLACEMENT.make("eplb", num_gpus=G).place(load)
        assert plan.slots_used().tolist() == [slots] * G


def test_eplb_and_pack_refuse_what_does_not_fit():
    import numpy as np
    import pytest

    from sim.common.errors import ConfigError
    from sim.policies import PLACEMENT
    from sim.policies.placement.eplb import pack

    with pytest.raises(ConfigError, match="^eplb: experts 4 \\+ redundant 1 must be a multiple of "
                                          "GPUs 2, and both of nodes 1$"):
        PLACEMENT.make("eplb", num_gpus=2, num_redundant=1).place(np.ones((1, 4)))
    for nodes in (0, 3):
        with pytest.raises(ConfigError, match=f"^eplb: num_gpus 4 must be a multiple of num_nodes "
                                              f"{nodes}$"):
            PLACEMENT.make("eplb", num_gpus=4, num_nodes=nodes)
    with pytest.raises(ConfigError, match="^packing 3 items into 1 bins of 2 slots$"):
        pack(np.ones(3), np.arange(3), 1, 2)
    # heaviest first: weights [1, 3, 2] into 2 bins of 2 -> 1 to bin 0, 2 to bin 1, 0 to bin 1
    assert pack(np.array([1.0, 3.0, 2.0]), np.arange(3), 2, 2) == [[1], [2, 0]]


def test_contiguous_blocks_with_a_remainder_and_fewer_experts_than_gpus():
    """10 experts on 4 GPUs: blocks of 3, 3, 2, 2 (the first E mod G GPUs one more); 2 experts on
    4 GPUs: expert e on GPU e * 4 // 2, so 0 and 2."""
    import numpy as np

    from sim.policies import PLACEMENT

    p = PLACEMENT.make("contiguous", num_gpus=4)
    assert [g for (g,) in p.place(np.ones((1, 10))).replicas[0]] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert [g for (g,) in p.place(np.ones((2, 2))).replicas[1]] == [0, 2]


def test_placement_gpu_load_over_batches_and_slots_as_integers():
    """2 layers x 3 experts on 2 GPUs: layer 0 puts 0, 1 on GPU 0 and 2 on both (half each),
    layer 1 puts 0 on GPU 1 and 1, 2 on GPU 0. Batch loads [[2, 4, 6], [1, 1, 2]] give GPU loads
    [[2 + 4 + 3, 3], [1 + 2, 1]] = [[9, 3], [3, 1]]: max / mean 1.5 in both layers. Slots used:
    GPU 0 holds 3 + 2 replicas, GPU 1 1 + 1."""
    import numpy as np

    from sim.policies.base import Placement

    plan = Placement(num_gpus=2, replicas=[[(0,), (0,), (0, 1)], [(1,), (0,), (0,)]])
    load = np.array([[[2.0, 4.0, 6.0], [1.0, 1.0, 2.0]]] * 2)  # (B=2, L=2, E=3)
    assert plan.gpu_load(load).tolist() == [[[9.0, 3.0], [3.0, 1.0]]] * 2
    assert plan.imbalance(load).tolist() == [[1.5, 1.5]] * 2
    used = plan.slots_used()
    assert used.tolist() == [5, 2] and used.dtype.kind == "i"


def test_prefetch_default_next_layer_is_an_empty_index():
    """The base policy prefetches nothing for the next layer: an empty integer array, usable as an
    index like any policy's answer."""
    import numpy as np

    from sim.policies.base import PrefetchContext, PrefetchPolicy

    got = PrefetchPolicy(2, 4, 1).next_layer(PrefetchContext(), 0, np.array([1]))
    assert np.arange(4)[got].tolist() == [] and got.dtype.kind == "i"


def test_routers_built_without_arguments():
    from sim.policies import ROUTER
    from sim.policies._registry import NoArgs
    from sim.policies.router.least_loaded import LeastLoadedRouter
    from sim.policies.router.round_robin import RoundRobinRouter

    rr, ll = RoundRobinRouter(), LeastLoadedRouter()
    assert rr.cfg == NoArgs() and ll.cfg == NoArgs() and ROUTER.make("round_robin").cfg == NoArgs()
    assert [rr.pick([0, 2, 5], [0, 0, 0]) for _ in range(4)] == [0, 2, 5, 0]
    assert ll.pick([0, 2, 5], [3, 1, 1]) == 2


def test_placement_share_refuses_a_wrong_shape_or_gpu():
    """The share check names what is wrong: a placement of 1 layer x 2 experts asked as 2 layers
    (or 3 experts); an expert with no GPU, or on GPU 2 of 2."""
    import numpy as np
    import pytest

    from sim.common.errors import ConfigError
    from sim.policies.base import Placement

    plan = Placement(num_gpus=2, replicas=[[(0,), (1,)]])
    assert plan.share().tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    with pytest.raises(ConfigError, match=r"^placement policy '\?' returned a placement of the "
                                          r"wrong shape \(expected 2 layers x 2 experts on 2 GPUs\)$"):
        plan.share(2, 2)
    with pytest.raises(ConfigError, match=r"^placement policy 'greedy' returned a placement of the "
                                          r"wrong shape \(expected 1 layers x 3 experts on 2 GPUs\)$"):
        plan.share(1, 3, name="greedy")
    with pytest.raises(ConfigError, match="wrong shape"):
        plan.gpu_load(np.ones((2, 2)))
    for gpus in ((), (0, 2)):
        bad = Placement(num_gpus=2, replicas=[[(0,), gpus]])
        with pytest.raises(ConfigError, match=rf"^placement puts layer 0 expert 1 on GPUs "
                                              rf"{re.escape(str(gpus))}, expected 1\+ of 0..1$"):
            bad.share()


def test_fcfs_counts_a_resumed_requests_generated_tokens():
    """Budget 10: A (4 prompt + 4 generated) leaves 2, so B (3) is admitted and overruns it; C is
    not. A scheduler built without arguments has the empty config."""
    from sim.policies._registry import NoArgs
    from sim.policies.base import RequestView
    from sim.policies.scheduler.fcfs import FCFSScheduler

    views = [RequestView(i, float(i), p, d, 10.0, "t", float("inf"))
             for i, (p, d) in enumerate([(4, 4), (3, 0), (3, 0)])]
    s = FCFSScheduler()
    assert isinstance(s.cfg, NoArgs)
    assert s.admit(0.0, views, [], 10) == [0, 1]


def test_placement_and_prefetch_policies_built_without_arguments():
    import pytest

    from sim.common.errors import ConfigError
    from sim.policies import PLACEMENT
    from sim.policies._registry import NoArgs
    from sim.policies.base import PrefetchPolicy
    from sim.policies.placement.greedy import GreedyPlacement

    assert isinstance(GreedyPlacement(2).cfg, NoArgs) and isinstance(PrefetchPolicy(2, 4, 1).cfg, NoArgs)
    with pytest.raises(ConfigError, match="^num_gpus must be positive, got 0$"):
        PLACEMENT.make("greedy", num_gpus=0)


def test_placement_share_of_a_gpu_listed_twice():
    """A replica tuple (0, 0) lists GPU 0 twice: each listing takes half, GPU 0 computes all."""
    from sim.policies.base import Placement

    assert Placement(num_gpus=2, replicas=[[(0, 0)]]).share().tolist() == [[[1.0, 0.0]]]
