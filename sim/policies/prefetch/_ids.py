"""Ranking helper shared by the predictors."""

from __future__ import annotations

import numpy as np


def top_ids(score: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` ids with the largest positive score, larger score first, ties smaller id first."""
    order = np.lexsort((np.arange(len(score)), -score))  # (E,)
    order = order[score[order] > 0]
    return order[:n].astype(np.int64)
