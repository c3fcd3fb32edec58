"""The world a driver runs, without simpy: the cluster plan, the run state, binding requests to
their routing, continuous batching, the layer walk (decisions) with its token counts, costs and
timing, prediction and prefetch, faults as pure state changes, links, the cache log, and the
assembly of it all into one World that the SimPy engine wraps and realrun drives. Imports
``sim.policies``, ``sim.predictor``, ``sim.cost``, ``traces``, ``sim.world``, ``sim.common``; never a
driver (``sim.engine``, ``sim.replay``, ``realrun``) or ``sim.app``.
"""
