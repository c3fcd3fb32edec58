"""HostExperts (sim/serving/offload.py) on its own: which misses go to the link and which to the
host CPU under each rule, and the GPU's expert time it rewrites, with round-number costs."""

from __future__ import annotations

import numpy as np
import pytest

from sim.serving.offload import HostExperts
from sim.world.offload_config import OffloadConfig


class Cost:
    """Copies: 1 ms latency + 2 ms per 100-byte expert; host: 1 ms + 1 ms per token per expert;
    hidden states there and back 0.5 ms; GPU: 0.1 ms per token (summed per group)."""

    host_link_latency_s = 0.001

    def copy_s(self, nbytes):
        return self.host_link_latency_s + nbytes / 50_000.0

    def cpu_expert_s(self, tokens):
        t = np.asarray(tokens, dtype=np.float64)
        return np.where(t > 0, 0.001 + 0.001 * t, 0.0)

    def cpu_transfer_s(self, tokens):
        return 0.0005 if tokens > 0 else 0.0

    def moe_s(self, tokens, group, groups):
        return np.bincount(np.asarray(group), weights=np.asarray(tokens, dtype=np.float64) * 1e-4,
                           minlength=groups)


def _h(mode, max_tokens=32):
    return HostExperts(Cost(), OffloadConfig(expert_exec=mode, cpu_max_tokens=max_tokens), 100, 3)


def test_copy_time_is_the_bytes_at_the_link_rate_without_the_latency():
    assert _h("cost").copy_s == pytest.approx(0.002)


def test_cpu_and_auto_rules():
    tokens = np.array([0, 5, 1, 3])
    assert _h("cpu").split([1, 3], tokens, 100) == ([], [1, 3])
    assert _h("auto", 32).split([1, 3], tokens, 31) == ([], [1, 3])  # under the threshold: CPU
    assert _h("auto", 32).split([1, 3], tokens, 32) == ([1, 3], [])  # at it: copied


def test_cost_rule_heaviest_first_to_the_sooner_resource():
    # copy 2 ms each after a 1 ms link latency; host 1 ms + 1 ms per token
    # heaviest first: key 1 (5 tokens): link 1+2 = 3 <= host 6 -> link (link at 3 ms)
    # key 3 (3 tokens): link 3+2 = 5 > host 4 -> CPU (host at 4 ms)
    # key 2 (2 tokens): link 5 <= host 4+3 = 7 -> link (link at 5)
    # key 4 (1 token): link 7 > host 4+2 = 6 -> CPU (host at 6)
    tokens = np.array([0, 5, 2, 3, 1])
    assert _h("cost").split([4, 3, 2, 1], tokens, 100) == ([1, 2], [3, 4])
    # one expert: with 1 token the host (2 ms) beats the link (3 ms); with 2 tokens they tie at
    # 3 ms and the tie goes to the link
    assert _h("cost").split([1], np.array([0, 2]), 100) == ([1], [])
    assert _h("cost").split([1], np.array([0, 1]), 100) == ([], [1])
    # ties in tokens: the smaller key first
    assert _h("cost").split([2, 1], np.array([0, 2, 2]), 100) == ([1], [2])


def test_host_time_and_the_rewritten_gpu_time():
    h = _h("cpu")
    tokens = np.array([4, 2, 0, 30, 0, 0])  # keys 0..5; layer 0 = keys 0-2, layer 1 = keys 3-5

    class Serve:
        def __init__(self, layer, miss):
            self.layer, self.miss = layer, miss

    class Other:
        pass

    class St:
        cpu_experts = 0
        cpu_s = 0.0
        host_excess_s = 0.0

    comp = [[9.0, 9.0], [9.0, 9.0]]
    states = [St(), St()]
    need = [[{0, 1}, {3}], [set(), set()]]
    other = Other()
    empty = []
    got = list(h.run(iter([Serve(0, [[1], None]), other, Serve(1, [[3], empty])]), Serve,
                     tokens, comp, states, need, 36))
    assert got[1] is other  # other decisions pass unchanged, and the walk goes on after them
    assert [d.layer for d in (got[0], got[2])] == [0, 1]
    assert got[0].miss == [[], None] and got[2].miss[1] is empty  # untouched where no miss
    # layer 0, GPU 0: key 1 on the host: 0.5 ms + (1 + 2) ms = 3.5 ms; the GPU computes key 0's
    # 4 tokens (0.4 ms): the layer's experts take max(0.4, 3.5) ms
    assert comp[0] == [pytest.approx(0.0035), 9.0]
    # layer 1: key 3 (30 tokens) on the host: 0.5 + 31 ms; the GPU computes nothing there
    assert comp[1] == [pytest.approx(0.0315), 9.0]
    assert states[0].cpu_experts == 2 and states[0].cpu_s == pytest.approx(0.0035 + 0.0315)
    # the layers took this much longer than the GPU's own experts (0.4 ms at layer 0, 0 at 1)
    assert states[0].host_excess_s == pytest.approx((0.0035 - 0.0004) + 0.0315)
    assert states[1].cpu_experts == 0 and h.by_layer == [1, 1, 0]
    # the GPU's part is the larger: its own experts' time stands
    comp = [[0.0, 0.0]]
    need = [[{0, 3}], [set()]]
    tokens = np.array([100, 0, 0, 1])
    list(h.run(iter([Serve(0, [[3], None])]), Serve, tokens, comp, [St(), St()], need, 101))
    assert comp[0][0] == pytest.approx(0.01)  # key 0's 100 tokens at 0.1 ms, over 2.5 ms on the host


def test_cost_rule_books_the_host_queue_across_experts():
    """The host's queue adds up: keys 1 (5 tokens) link at 3 ms, 3 (3) host at 4 ms, 2 (2) link
    at 5 ms, 4 (1) host at 4 + 2 = 6 ms; key 5 (1 token): the link at 5 + 2 = 7 ms beats the host
    at 6 + 2 = 8 ms (were the host's queue only its last expert, 2 + 2 = 4 ms would win)."""
    tokens = np.array([0, 5, 2, 3, 1, 1])
    assert _h("cost").split([5, 4, 3, 2, 1], tokens, 100) == ([1, 2, 5], [3, 4])


def test_a_gpu_without_misses_leaves_the_next_gpus_split():
    """GPU 0 misses nothing at the layer; GPU 1's miss (key 2, 3 tokens) still goes to the host
    (1 ms + 3 ms, and 0.5 ms of hidden states) and its layer time becomes 4.5 ms."""
    h = _h("cpu")

    class Serve:
        def __init__(self, layer, miss):
            self.layer, self.miss = layer, miss

    class St:
        cpu_experts = 0
        cpu_s = 0.0
        host_excess_s = 0.0

    comp = [[1.0, 0.0]]
    states = [St(), St()]
    got = list(h.run(iter([Serve(0, [[], [2]])]), Serve, np.array([0, 0, 3]), comp, states,
                     [[set()], [{2}]], 3))
    assert got[0].miss == [[], []]
    assert comp[0] == [1.0, pytest.approx(0.0045)]
    assert states[1].cpu_experts == 1 and states[0].cpu_experts == 0 and h.by_layer == [1, 0, 0]
