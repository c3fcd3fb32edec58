"""The serving World on a real device: an expert cache with real host-to-device copies driven by
the simulator's own policy objects, Triton MoE layers, calibration of the table cost model. A
driver beside ``sim.engine`` and ``sim.replay`` (imports ``sim.serving`` and below, and
``kernels``; never the other drivers); only ``sim.app`` imports it.
"""
