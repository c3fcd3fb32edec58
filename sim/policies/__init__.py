"""Pure policies (cache, prefetch, placement, scheduling, routing) shared by sim, the replay and
realrun, one folder per kind (``cache/``, ``prefetch/``, ``placement/``, ``scheduler/``,
``router/``), one module per registered name.

Never import simpy or torch here or in any policy module (tests/sim/policies/test_policies_pure.py checks).
Imports ``sim.predictor``, ``sim.cost``, ``traces``, ``sim.world`` and ``sim.common`` only: never
``sim.serving`` or a driver.
"""

from sim.policies.base import CACHE, PLACEMENT, PREFETCH, ROUTER, SCHEDULER

__all__ = ["CACHE", "PLACEMENT", "PREFETCH", "ROUTER", "SCHEDULER"]
