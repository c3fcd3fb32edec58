"""Results of runs and sweeps into pandas, plots and the report. Imports only ``sim.common``: it
reads run directories and takes numbers, not the simulator's objects or trace files (the commands
in ``sim.app`` compute what it draws). Only ``sim.app`` imports it.
"""
