"""The per-prompt predictor at serving time, for the eMoE policy (torch stays in sim.predictor).

Shape legend: h finished prompts, L MoE layers, E experts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sim.predictor import checkpoint
from sim.predictor.prompt import predict_next


class PromptRuntime:
    """Loads a checkpoint's per-prompt model; ``predict(history)`` -> (L, E) scores."""

    def __init__(self, directory: str | Path, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(int(threads))
        _, self.model, self.baselines, self.config = checkpoint.load(directory)
        self.num_layers = int(self.config["prompt_model"]["num_layers"])
        self.num_experts = int(self.config["prompt_model"]["num_experts"])
        self.history = int(self.config["prompt_model"]["history"])
        self.set_size = int(self.config["prompt_set_size"])

    def predict(self, history: np.ndarray) -> np.ndarray:
        """history (h, L, E) finished prompts' activation shares, oldest first -> (L, E)."""
        return predict_next(self.model, history[-self.history:])

    def measure_call_s(self, reps: int = 5) -> float:
        """Mean wall time of one prediction from a full history (this machine, now)."""
        h = np.full((self.history, self.num_layers, self.num_experts), 1.0 / self.num_experts,
                    dtype=np.float32)
        self.predict(h)
        t0 = time.perf_counter()
        for _ in range(reps):
            self.predict(h)
        return (time.perf_counter() - t0) / reps
