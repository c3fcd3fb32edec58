"""moesim's simulator side, in wings, bottom to top: ``common`` (errors, atomic files), ``world``
(config schema, model sizes, shared facts, topology, network), ``cost``, ``predictor``,
``policies`` (pure decisions), ``serving`` (the world a driver runs, no simpy), the drivers
``engine`` (SimPy) and ``replay`` (no timing), and ``app`` (the ``moesim`` command line). Each wing
imports only the wings below it; ``traces`` sits between ``world`` and ``cost``, ``realrun`` beside
the drivers (docs/ARCHITECTURE.md; tests/test_import_graph.py checks it). Nothing else lives
directly in ``sim/`` but this file and ``__main__.py``.
"""
