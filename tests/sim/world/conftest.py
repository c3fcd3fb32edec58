"""Fixtures of the world tests."""

from __future__ import annotations

import numpy as np
import pytest

from sim.serving.testing import random_pool


@pytest.fixture
def pool():
    """The routing pool of the network tests: 3 layers x 8 experts, top-2, 4 entries of 40 tokens."""
    return random_pool(3, 8, 2, entries=4, tokens=40, rng=np.random.default_rng(0))
