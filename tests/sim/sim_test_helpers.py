"""Helpers shared by the tests/sim tests (imported as ``from tests.sim.sim_test_helpers import ...``, like
tests/traces/cli_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest


def slot_counts(plan, L, G):
    """(L, G) number of expert replicas each GPU holds per layer; checks every replica lists >= 1
    distinct GPUs."""
    s = np.zeros((L, G), dtype=np.int64)
    for l in range(L):
        for gpus in plan.replicas[l]:
            assert len(set(gpus)) == len(gpus) >= 1
            for g in gpus:
                s[l, g] += 1
    return s


def assert_log(got, want):
    """A Recorder's events equal the wanted (name, kind, gpu, start, end) rows, in order, the times
    to 1e-12."""
    assert [e[:3] for e in got] == [w[:3] for w in want]
    for g, w in zip(got, want):
        assert g[3:] == pytest.approx(w[3:], abs=1e-12), (g, w)
