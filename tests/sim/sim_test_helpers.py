"""Helpers shared by the tests/sim tests (imported as ``from sim_test_helpers import ...``, like
tests/traces/cli_helpers.py)."""

from __future__ import annotations

import numpy as np


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
