"""Routing traces and workloads: the Parquet format (:mod:`.format`), importers, capture from a
HuggingFace model, statistics, and the fitted routing generator (``synth*``). Of ``sim`` it
imports only ``sim.common`` and ``sim.world``; the simulator's wings above import it.
"""
