"""The discrete-event driver: the SimPy :class:`~.simulation.Simulation` (one process per replica,
arrivals, faults) around the serving World, the metrics it writes (:mod:`.metrics`), the run and
its directory (:mod:`.run`) and the Chrome trace. The only wing that imports simpy. Imports
``sim.serving`` and the wings below; not ``sim.replay`` or ``realrun`` (the other drivers) or
``sim.app``.
"""
