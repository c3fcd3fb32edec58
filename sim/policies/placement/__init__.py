"""Expert placement policies, one module per registered name; ``_greedy`` holds the per-layer
greedy assignment shared by ``greedy`` and ``anticorr``."""
