"""The eMoE expert predictor: per-token and per-prompt (eMoE-A) models, baselines, evaluation.

torch is imported only in this package (model, token, prompt, checkpoint, runtime), never in
sim.policies at import time. ``moesim predictor train|eval`` is :mod:`sim.app.predictor_cmd`.
Imports ``sim.cost``, ``traces``, ``sim.world`` and ``sim.common`` only (below the policies, which
use its runtime).
"""
