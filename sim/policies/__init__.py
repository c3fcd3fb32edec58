"""Pure policies (cache, prefetch, placement, scheduling) shared by sim, the replay and realrun.

Never import simpy or torch here or in any policy module (tests/sim/test_policies_pure.py checks).
"""

from sim.policies.base import CACHE, PLACEMENT, PREFETCH, SCHEDULER

__all__ = ["CACHE", "PLACEMENT", "PREFETCH", "SCHEDULER"]
